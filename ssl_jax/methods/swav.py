"""SwAV (Caron et al. 2020), following facebookresearch/swav main_swav.py.

Multi-crop: 2 crops of `config.image_size` and `num_small_crops` small ones. Same-size
crops go through the backbone together (one forward, one BN batch, per resolution), then
all crops through the projection head at once; z = normalize(head(h)) and the scores are z
against 3000 unit-norm prototypes. For each assignment crop, Sinkhorn-Knopp turns the
stop-gradient scores of the global batch (plus, once full, a queue of earlier embeddings
re-scored with the current prototypes) into soft codes q; every other crop predicts q with
softmax(scores / tau). The prototypes are re-normalised after every optimizer step and
frozen during the first `freeze_prototypes_epochs`. Initialisation follows the original
(BN scales 1: config.model.zero_init_residual = "none"; PyTorch's Linear init in the
head): LARC steps a zero-norm tensor by its raw gradient, so tensors that start at 0 here
but not there would train very differently.
"""
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ssl_jax import losses, models, parallel
from ssl_jax.data.augment import View
from ssl_jax.errors import ConfigError
from ssl_jax.methods import common
from ssl_jax.models import inits
from ssl_jax.models.resnet import batch_norm

# SwAV's multicropdataset.py normalises with std 0.228 (not 0.229) for red.
MEAN = (0.485, 0.456, 0.406)
STD = (0.228, 0.224, 0.225)


def size_groups(crops):
  """Consecutive crops of the same size, as the original's `unique_consecutive` split."""
  groups = []
  for x in crops:
    if groups and groups[-1][-1].shape[1:] == x.shape[1:]:
      groups[-1].append(x)
    else:
      groups.append([x])
  return groups


def normalize_input(x):
  return (x.astype(jnp.float32) - jnp.asarray(MEAN)) / jnp.asarray(STD)


class Head(nn.Module):
  """Linear -> BN -> ReLU -> Linear, biases and init as the original's nn.Sequential."""
  hidden_dim: int
  out_dim: int
  dtype: Any = jnp.float32
  axis_name: str | None = None

  @nn.compact
  def __call__(self, h, train: bool = True):
    x = nn.Dense(self.hidden_dim, dtype=self.dtype, param_dtype=jnp.float32,
                 **inits.pytorch_linear(h.shape[-1]))(h)
    x = nn.relu(batch_norm(train, self.axis_name, self.dtype)(x))
    x = nn.Dense(self.out_dim, dtype=self.dtype, param_dtype=jnp.float32,
                 **inits.pytorch_linear(self.hidden_dim))(x)
    return x.astype(jnp.float32)


class Network(nn.Module):
  """Backbone -> Linear-BN-ReLU-Linear -> L2 -> prototypes (no bias): (h, z, scores)."""
  backbone: nn.Module
  head: nn.Module
  num_prototypes: int
  prototype_bias: bool = False   # lightly's SwaVPrototypes: an nn.Linear with its bias

  @nn.compact
  def __call__(self, crops, train: bool = True):
    h = jnp.concatenate([self.backbone(normalize_input(jnp.concatenate(group)), train=train)
                         for group in size_groups(crops)])
    z = losses.l2_normalize(self.head(h, train=train))
    # float32 scores: Sinkhorn exponentiates scores / 0.05.
    scores = nn.Dense(self.num_prototypes, use_bias=self.prototype_bias, dtype=jnp.float32,
                      name="prototypes",
                      **(inits.pytorch_linear(z.shape[-1]) if self.prototype_bias else {}))(z)
    return h, z, scores

  def features(self, x):
    return self.backbone(normalize_input(x), train=False)


def network(config, axis_name=None) -> Network:
  dtype = models.compute_dtype(config.dtype, jax.default_backend())
  backbone = models.backbone(config.model, dtype, axis_name, config.image_size)
  hidden = config.head.hidden_dim or backbone.num_features
  head = Head(hidden, config.head.out_dim, dtype, axis_name)
  return Network(backbone, head, config.swav.num_prototypes, config.swav.prototype_bias)


def views(config) -> list[View]:
  a, s = config.augment, config.swav
  common_args = dict(crop_ratio=tuple(a.crop_ratio), flip=a.flip, color_prob=a.color_prob,
                     brightness_impl=a.brightness_impl, gray_prob=a.gray_prob,
                     blur_prob=a.blur_prob, solarize_prob=a.solarize_prob,
                     **common.view_semantics(config))
  large = View.simclr(config.image_size, a.color_strength, crop_scale=tuple(a.crop_scale),
                      **common_args)
  small = View.simclr(s.small_crop_size, a.color_strength,
                      crop_scale=tuple(s.small_crop_scale), **common_args)
  return [large, large] + [small] * s.num_small_crops


def num_crops(config) -> int:
  return 2 + config.swav.num_small_crops


def validate(config, device_count=None):
  del device_count   # the global batch already divides by it
  s = config.swav
  if s.prototype_bias and s.queue_length:
    raise ConfigError("config.swav.prototype_bias=True re-scores no queue (the queue's "
                      "scores use the prototypes alone); set config.swav.queue_length=0")
  assign = tuple(s.crops_for_assign)
  if not assign or len(set(assign)) != len(assign) or not all(
      0 <= a < num_crops(config) for a in assign):
    raise ConfigError(f"config.swav.crops_for_assign={assign} must name distinct crops in "
                      f"0..{num_crops(config) - 1}; use (0, 1), the two large crops")
  if s.queue_length < 0 or s.queue_length % config.batch_size:
    rounded = max(s.queue_length, 0) // config.batch_size * config.batch_size
    raise ConfigError(f"config.swav.queue_length={s.queue_length} is not a multiple of the "
                      f"global batch {config.batch_size}; use 0 (no queue) or a multiple, "
                      f"e.g. {rounded} (the original rounds it down)")
  if s.epsilon <= 0 or s.sinkhorn_iterations < 1:
    raise ConfigError(f"config.swav.epsilon={s.epsilon} and config.swav.sinkhorn_iterations="
                      f"{s.sinkhorn_iterations} must be positive (SwAV: 0.05 and 3)")


def init(rng, config, sample_batch):
  del sample_batch  # shapes come from the config
  x = jnp.zeros((2, config.image_size, config.image_size, 3), jnp.float32)
  variables = network(config).init(rng, [x], train=True)
  params = dict(variables["params"])
  params["prototypes"] = normalize_prototypes(params["prototypes"])
  # No queue array without a queue: orbax cannot checkpoint a zero-size array.
  length = config.swav.queue_length
  method_state = dict(queue=jnp.zeros((len(config.swav.crops_for_assign), length,
                                       config.head.out_dim), jnp.float32)) if length else {}
  return dict(params=params, batch_stats=variables["batch_stats"], method_state=method_state)


def normalize_prototypes(prototypes):
  """Unit-norm prototypes: Flax's kernel is (dim, K), so normalise its columns."""
  kernel = prototypes["kernel"]
  return dict(prototypes, kernel=kernel / jnp.linalg.norm(kernel, axis=0, keepdims=True))


def epochs_to_steps(epochs, config) -> int:
  return int(round(epochs * config.run.steps_per_epoch))


# ------------------------------------------------------------------ codes and loss

def sinkhorn(scores, epsilon: float, iterations: int, axis_name=None):
  """Codes for this device's rows of `scores` (B_local, K), normalised over every device.

  Q = exp(scores / eps)^T (K x B); Q /= sum(Q); then `iterations` times: each prototype's
  row to 1/K (row sums over all devices), each sample's column to 1/B (B = global number of
  columns); finally Q *= B so that each sample's code sums to 1. float32 throughout.
  """
  psum = functools.partial(jax.lax.psum, axis_name=axis_name) if axis_name else (lambda x: x)
  devices = jax.lax.axis_size(axis_name) if axis_name else 1
  q = jnp.exp(scores.astype(jnp.float32) / epsilon).T
  k, b = q.shape[0], q.shape[1] * devices
  q = q / psum(jnp.sum(q))
  for _ in range(iterations):
    q = q / psum(jnp.sum(q, axis=1, keepdims=True)) / k
    q = q / jnp.sum(q, axis=0, keepdims=True) / b
  return (q * b).T


def local_queue(queue):
  """This device's slice of the (replicated) global queue: the original keeps one slice of
  queue_length / devices rows per GPU. Only the set of queued rows matters to the codes."""
  rows = queue.shape[0] // jax.lax.axis_size(parallel.AXIS)
  return jax.lax.dynamic_slice_in_dim(queue, jax.lax.axis_index(parallel.AXIS) * rows, rows)


def assign_codes(scores, queue, kernel, use_queue, config):
  """Codes of one assignment crop's local rows, with the queue's rows in Sinkhorn once full.

  `queue` (global, may have 0 rows) holds embeddings; they are scored with the current
  prototypes `kernel`. Only the current batch's codes are returned.
  """
  code = functools.partial(sinkhorn, epsilon=config.swav.epsilon,
                           iterations=config.swav.sinkhorn_iterations, axis_name=parallel.AXIS)
  scores = jax.lax.stop_gradient(scores)
  if queue.shape[0] == 0:
    return code(scores)
  queue_scores = local_queue(queue) @ jax.lax.stop_gradient(kernel)
  n = scores.shape[0]
  with_queue = lambda: code(jnp.concatenate([queue_scores, scores]))[-n:]  # noqa: E731
  return jax.lax.cond(use_queue, with_queue, lambda: code(scores))


def swapped_prediction_loss(scores, codes, crops_for_assign, temperature: float):
  """mean over assignment crops a of mean over crops v != a of CE(q_a, softmax(s_v / tau)).

  `scores`: one (B, K) array per crop; `codes`: one (B, K) array per assignment crop.
  """
  total = 0.0
  for q, a in zip(codes, crops_for_assign):
    q = jax.lax.stop_gradient(q)
    others = [v for v in range(len(scores)) if v != a]
    subloss = sum(-jnp.mean(jnp.sum(q * jax.nn.log_softmax(scores[v] / temperature), -1))
                  for v in others)
    total += subloss / len(others)
  return total / len(codes)


def queue_in_use(queue):
  """The original uses its queue once the last row is non-zero, i.e. once it is full."""
  return jnp.any(queue[:, -1] != 0) if queue.shape[1] else jnp.array(False)


def loss_fn(params, state, batch, rng, step, *, config):
  del rng, step
  s = config.swav
  crops = batch["views"]
  n = crops[0].shape[0]
  (h, z, scores), new_vars = network(config, parallel.AXIS).apply(
      {"params": params, "batch_stats": state.batch_stats}, crops, train=True,
      mutable=["batch_stats"])
  per_crop = [scores[i * n:(i + 1) * n] for i in range(len(crops))]
  queue = state.method_state.get("queue", jnp.zeros((len(s.crops_for_assign), 0, 1)))
  use_queue = queue_in_use(queue)
  codes = [assign_codes(per_crop[a], queue[i], params["prototypes"]["kernel"], use_queue,
                        config) for i, a in enumerate(s.crops_for_assign)]
  loss = swapped_prediction_loss(per_crop, codes, s.crops_for_assign, config.loss.temperature)
  z = jax.lax.stop_gradient(z)
  aux = dict(batch_stats=new_vars["batch_stats"], features=jax.lax.stop_gradient(h[:n]),
             metrics=dict(embedding_std=common.embedding_std(z),
                          queue_in_use=use_queue.astype(jnp.float32)))
  if s.queue_length:   # the global batch's embeddings of each assignment crop, to enqueue
    aux["embeddings"] = jnp.stack([parallel.gather(z[a * n:(a + 1) * n])
                                   for a in s.crops_for_assign])
  return loss, aux


def adjust_grads(grads, step, *, config):
  """No prototype gradient during the first epoch(s) (the original sets it to None; LARC
  then leaves a zero gradient untouched, so nothing moves, not even by weight decay)."""
  frozen = step < epochs_to_steps(config.swav.freeze_prototypes_epochs, config)
  prototypes = jax.tree.map(lambda g: jnp.where(frozen, jnp.zeros_like(g), g),
                            grads["prototypes"])
  return dict(grads, prototypes=prototypes)


def push(queue, embeddings):
  """FIFO per assignment crop: the newest global batch on top, the oldest rows dropped."""
  return jnp.concatenate([embeddings, queue[:, :queue.shape[1] - embeddings.shape[1]]], axis=1)


def update(state, new_params, aux, step, *, config):
  """Re-normalise the prototypes; from `queue_start_epoch` on, enqueue this step's z."""
  ms = state.method_state
  params = dict(new_params, prototypes=normalize_prototypes(new_params["prototypes"]))
  if config.swav.queue_length:
    started = step >= epochs_to_steps(config.swav.queue_start_epoch, config)
    ms = dict(ms, queue=jnp.where(started, push(ms["queue"], aux["embeddings"]), ms["queue"]))
  return state.replace(params=params, batch_stats=aux["batch_stats"], method_state=ms)


def encode(variables, images, config, features=None):
  return common.encode(network(config), variables, images, config, features)
