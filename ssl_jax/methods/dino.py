"""DINO (Caron et al. 2021), following facebookresearch/dino (main_dino.py, utils.py).

The student (backbone + DINO head) sees every crop: 2 global crops and `local_crops_number`
local ones; the teacher, an EMA of the student (0.996 -> 1, per-step cosine, applied after
the optimizer step), sees only the 2 global crops. As the original's MultiCropWrapper, the
backbone runs once per resolution (the global crops together, the local crops together:
one BN batch each, global over devices), the head once on everything.

Loss: for each teacher crop iq and each student crop v != iq, the cross-entropy
-sum_k P_t log P_s with P_s = softmax(g_s / tau_s) and P_t = softmax((g_t - c) / tau_t),
averaged over the batch and over the 2 (2 + L) - 2 terms. tau_t warms up linearly over
epochs (0.04 -> 0.07 over 30 in the recommended setting), indexed by epoch. The centre c
(1 x out_dim) follows the global-batch mean of the teacher's outputs on both global crops
with momentum 0.9, updated after the loss.

Gradients (`adjust_grads`, after the cross-device mean): each parameter tensor's gradient
is clipped to norm `clip_grad`, then the head's last layer gets none during the first
`freeze_last_layer` epochs. The AdamW with a cosine weight decay (0.04 -> 0.4) is
`optim`'s adamw with `weight_decay_end`.
"""
import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ssl_jax import ema, models, parallel
from ssl_jax.data.augment import View
from ssl_jax.errors import ConfigError
from ssl_jax.methods import common
from ssl_jax.models.encoder import normalize_imagenet
from ssl_jax.models.heads import DINOHead
from ssl_jax.models.vit import ViT

NUM_GLOBAL = 2
LAST_LAYER = "last_layer"


class MultiCrop(nn.Module):
  """Backbone once per run of same-sized crops, head once on all: (features, logits)."""
  backbone: nn.Module
  head: DINOHead

  def __call__(self, crops, train: bool = True):
    if not isinstance(crops, (list, tuple)):
      crops = [crops]
    features = [self.backbone(normalize_imagenet(jnp.concatenate(group)), train=train)
                for group in same_size_groups(crops)]
    h = jnp.concatenate(features)
    return h, self.head(h, train=train)

  def features(self, x):
    return self.backbone(normalize_imagenet(x), train=False)


def same_size_groups(crops):
  """Consecutive crops of equal shape, as the original's unique_consecutive on sizes."""
  groups = []
  for crop in crops:
    if groups and groups[-1][-1].shape == crop.shape:
      groups[-1].append(crop)
    else:
      groups.append([crop])
  return groups


def network(config, axis_name=None, teacher: bool = False) -> MultiCrop:
  dtype = models.compute_dtype(config.dtype, jax.default_backend())
  backbone = models.backbone(config.model, dtype, axis_name, config.image_size)
  if teacher and isinstance(backbone, ViT):   # stochastic depth on the student only
    backbone = backbone.clone(drop_path=0.0)
  h = config.head
  head = DINOHead(h.out_dim, h.hidden_dim, h.bottleneck_dim, h.num_layers, h.use_bn,
                  h.norm_last_layer, dtype, axis_name, init_scheme=config.dino.head_init)
  return MultiCrop(backbone, head)


def views(config) -> list[View]:
  """Global 1 (blur 1.0), global 2 (blur 0.1, solarize 0.2), then the local crops (blur 0.5)."""
  d = config.dino
  crops = [common.jitter_view(config, d.color_jitter, blur_prob=blur, solarize_prob=solarize)
           for blur, solarize in zip(d.global_blur_probs, d.global_solarize_probs)]
  local = common.jitter_view(config, d.color_jitter, crop_scale=tuple(d.local_crops_scale),
                             blur_prob=d.local_blur_prob, solarize_prob=0.0)
  local = dataclasses.replace(local, size=d.local_crops_size)
  return crops + [local] * d.local_crops_number


def validate(config, device_count=None):
  del device_count
  d, h = config.dino, config.head
  for field, value in (("head.num_layers", h.num_layers), ("head.hidden_dim", h.hidden_dim),
                       ("head.bottleneck_dim", h.bottleneck_dim), ("head.out_dim", h.out_dim)):
    if value < 1:
      raise ConfigError(f"config.{field}={value} must be >= 1")
  if len(d.global_blur_probs) != NUM_GLOBAL or len(d.global_solarize_probs) != NUM_GLOBAL:
    raise ConfigError(f"config.dino.global_blur_probs={tuple(d.global_blur_probs)} and "
                      f"config.dino.global_solarize_probs={tuple(d.global_solarize_probs)} "
                      "need one value per global crop (2 each)")
  if d.local_crops_number < 0:
    raise ConfigError(f"config.dino.local_crops_number={d.local_crops_number} must be >= 0")
  if config.model.name == "vit" and d.local_crops_size % config.model.patch_size:
    raise ConfigError(f"config.dino.local_crops_size={d.local_crops_size} is not divisible "
                      f"by config.model.patch_size={config.model.patch_size}")
  for field in ("student_temp", "teacher_temp", "warmup_teacher_temp"):
    if d[field] <= 0:
      raise ConfigError(f"config.dino.{field}={d[field]} must be positive")
  opt = config.optimizer
  if opt.name != "adamw" and opt.get("weight_decay_end", opt.weight_decay) != opt.weight_decay:
    raise ConfigError(f"config.optimizer.weight_decay_end={opt.weight_decay_end} only "
                      f"applies to adamw; set it to weight_decay={opt.weight_decay} for "
                      f"{opt.name}")
  for field in ("momentum_teacher", "momentum_teacher_final", "center_momentum"):
    if not 0 <= d[field] <= 1:
      raise ConfigError(f"config.dino.{field}={d[field]} must be in [0, 1]")
  if d.head_init not in ("trunc_normal", "torch") or d.teacher_head not in ("copy", "own_init"):
    raise ConfigError(f"config.dino.head_init={d.head_init!r} / teacher_head="
                      f"{d.teacher_head!r}: use 'trunc_normal' (DINO) or 'torch', and 'copy' "
                      "(DINO) or 'own_init' (lightly)")


def init(rng, config, sample_batch):
  del sample_batch  # shapes come from the config
  variables = common.init_variables(network(config), rng, config, train=False)
  params, stats = variables["params"], variables.get("batch_stats", {})
  # The teacher starts as a copy of the student (teacher_head="own_init": lightly builds the
  # teacher's head anew, with its own random init); the centre at zero.
  copy = lambda tree: jax.tree.map(jnp.array, tree)
  teacher = dict(params=copy(params), batch_stats=copy(stats))
  if config.dino.teacher_head == "own_init":
    own = common.init_variables(network(config), jax.random.fold_in(rng, 1), config,
                                train=False)
    teacher["params"]["head"] = own["params"]["head"]
    if "head" in stats:
      teacher["batch_stats"]["head"] = own["batch_stats"]["head"]
  return dict(params=params, batch_stats=stats,
              method_state=dict(teacher=teacher,
                                center=jnp.zeros((1, config.head.out_dim), jnp.float32)))


# ------------------------------------------------------------------------ schedules

def epoch_of(step, config):
  return jnp.asarray(step) // max(config.run.steps_per_epoch, 1)


def teacher_temperature(step, config):
  """np.linspace(warmup, final, W) over epochs 0..W-1 (both ends included), then final."""
  d = config.dino
  warmup_epochs = d.warmup_teacher_temp_epochs
  epoch = epoch_of(step, config).astype(jnp.float32)
  if warmup_epochs <= 0:
    return jnp.float32(d.teacher_temp)
  ramp = d.warmup_teacher_temp + (d.teacher_temp - d.warmup_teacher_temp) * (
      epoch / max(warmup_epochs - 1, 1))
  return jnp.where(epoch < warmup_epochs, ramp, d.teacher_temp).astype(jnp.float32)


def teacher_momentum(step, config):
  """momentum_teacher -> momentum_teacher_final on a per-step cosine (DINO: 0.996 -> 1;
  final = start: constant, lightly's 0.99)."""
  d = config.dino
  return ema.cosine_momentum(step, config.run.total_steps, d.momentum_teacher,
                             d.momentum_teacher_final)


# ----------------------------------------------------------------------------- loss

def loss_mask(num_teacher: int, num_student: int):
  """(teacher crop, student crop) pairs that count: every pair but a crop with itself."""
  return 1.0 - np.eye(num_teacher, num_student, dtype=np.float32)


def dino_loss(student_logits, teacher_logits, center, student_temp, teacher_temp,
              num_teacher: int = NUM_GLOBAL):
  """Mean over pairs iq != v of mean_b CE(P_t^iq, P_s^v); rows are grouped by crop.

  student_logits (num_crops * B, K), teacher_logits (num_teacher * B, K), center (1, K).
  """
  batch = teacher_logits.shape[0] // num_teacher
  num_student = student_logits.shape[0] // batch
  k = student_logits.shape[-1]
  log_p = jax.nn.log_softmax(student_logits / student_temp, axis=-1).reshape(
      num_student, batch, k)
  p_t = jax.nn.softmax((teacher_logits - center) / teacher_temp, axis=-1)
  p_t = jax.lax.stop_gradient(p_t).reshape(num_teacher, batch, k)
  cross = -jnp.einsum("ibk,vbk->iv", p_t, log_p, precision=jax.lax.Precision.HIGHEST) / batch
  mask = loss_mask(num_teacher, num_student)
  return jnp.sum(cross * mask) / mask.sum()


def batch_center(teacher_logits):
  """Mean over the global batch (all devices) of the teacher's outputs: (1, K)."""
  return parallel.global_mean(teacher_logits)[None]


def next_center(center, new_batch_center, momentum: float):
  return momentum * center + (1.0 - momentum) * new_batch_center


def _apply(net, params, stats, crops, rng, train=True):
  out, new = net.apply({"params": params, "batch_stats": stats}, crops, train=train,
                       mutable=["batch_stats"], rngs={"dropout": rng})
  return out, new.get("batch_stats", {})


def loss_fn(params, state, batch, rng, step, *, config):
  crops = batch["views"]
  ms = state.method_state
  student, teacher = network(config, parallel.AXIS), network(config, parallel.AXIS, True)
  (h, student_logits), stats = _apply(student, params, state.batch_stats, crops, rng)
  teacher_params = jax.lax.stop_gradient(ms["teacher"]["params"])
  (_, teacher_logits), teacher_stats = _apply(
      teacher, teacher_params, ms["teacher"]["batch_stats"], crops[:NUM_GLOBAL], rng)
  teacher_logits = jax.lax.stop_gradient(teacher_logits)
  temp = teacher_temperature(step, config)
  loss = dino_loss(student_logits, teacher_logits, ms["center"], config.dino.student_temp,
                   temp)
  first = jax.lax.stop_gradient(h[:crops[0].shape[0]])
  p_t = jax.nn.softmax((teacher_logits - ms["center"]) / temp, axis=-1)
  metrics = dict(teacher_temp=temp, momentum=teacher_momentum(step, config),
                 teacher_entropy=-jnp.mean(jnp.sum(p_t * jnp.log(p_t + 1e-12), axis=-1)),
                 embedding_std=common.embedding_std(first))
  return loss, dict(batch_stats=stats, teacher_batch_stats=teacher_stats,
                    batch_center=batch_center(teacher_logits), features=first,
                    metrics=metrics)


def update(state, new_params, aux, step, *, config):
  """Teacher <- m teacher + (1 - m) student (after the step); centre <- its EMA."""
  ms = state.method_state
  teacher = ema.ema_update(ms["teacher"]["params"], new_params, teacher_momentum(step, config))
  center = next_center(ms["center"], aux["batch_center"], config.dino.center_momentum)
  return state.replace(batch_stats=aux["batch_stats"], method_state=dict(
      teacher=dict(params=teacher, batch_stats=aux["teacher_batch_stats"]), center=center))


# ------------------------------------------------------------------------ gradients

def clip_per_tensor(grads, max_norm: float):
  """utils.clip_gradients: each tensor scaled by max_norm / (||g|| + 1e-6) when below 1."""
  def clip(g):
    coef = max_norm / (jnp.linalg.norm(g.ravel()) + 1e-6)
    return g * jnp.minimum(coef, 1.0).astype(g.dtype)
  return jax.tree.map(clip, grads)


def cancel_last_layer(grads, step, config):
  """No gradient for the head's last layer during the first `freeze_last_layer` epochs."""
  frozen = epoch_of(step, config) < config.dino.freeze_last_layer

  def cancel(path, g):
    if any(getattr(key, "key", None) == LAST_LAYER for key in path):
      return jnp.where(frozen, jnp.zeros_like(g), g)
    return g
  return jax.tree_util.tree_map_with_path(cancel, grads)


def adjust_grads(grads, step, *, config):
  if config.dino.clip_grad > 0:
    grads = clip_per_tensor(grads, config.dino.clip_grad)
  return cancel_last_layer(grads, step, config)


def eval_variables(state):
  """The teacher, as the original evaluates (its k-NN and linear evaluation load the
  teacher's weights: it is the better network throughout training)."""
  return dict(state.method_state["teacher"])


def encode(variables, images, config, features=None):
  return common.encode(network(config), variables, images, config, features)
