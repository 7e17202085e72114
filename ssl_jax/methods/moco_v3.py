"""MoCo v3 (Chen, Xie & He 2021), following facebookresearch/moco-v3.

Query side: q = predictor(projector(backbone(x))); key side: k = projector_m(backbone_m(x))
from the momentum encoder (backbone + projector), a copy at initialisation that follows the
query encoder by a per-step cosine EMA (0.99 -> 1). As in the original, the EMA is applied
inside the step *before* the keys are computed, with the parameters of that step.

Each view goes through the encoders separately, so BN statistics are per view and, with
the `batch` axis, global over devices (SyncBN); the momentum encoder runs BN in train mode
and keeps its own running statistics in `method_state`.

Loss: ctr(q1, k2) + ctr(q2, k1), where ctr is InfoNCE of each local query against the keys
of the whole global batch (gathered without gradient; the positive is the key of the same
global row), multiplied by 2 tau. There is no queue.
"""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ssl_jax import ema, losses, models, parallel
from ssl_jax.data.augment import View
from ssl_jax.errors import ConfigError
from ssl_jax.methods import common
from ssl_jax.models import inits
from ssl_jax.models.encoder import Encoder



class MLP(nn.Module):
  """The original's `_build_mlp`: hidden layers Linear(no bias) -> BN -> ReLU; the output
  Linear(no bias) is followed by BN without scale and shift when `last_bn`."""
  num_layers: int
  hidden_dim: int
  out_dim: int
  last_bn: bool = True
  dtype: Any = jnp.float32
  axis_name: str | None = None

  @nn.compact
  def __call__(self, x, train: bool = True):
    # PyTorch BN: momentum 0.1 (decay 0.9), eps 1e-5; global over `axis_name` (SyncBN).
    def norm(affine):
      return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                          axis_name=self.axis_name if train else None, use_scale=affine,
                          use_bias=affine, dtype=self.dtype, param_dtype=jnp.float32)
    for i in range(self.num_layers):
      last = i == self.num_layers - 1
      x = nn.Dense(self.out_dim if last else self.hidden_dim, use_bias=False,
                   kernel_init=inits.pytorch_kernel, dtype=self.dtype,   # nn.Linear's init
                   param_dtype=jnp.float32)(x)
      if not last:
        x = nn.relu(norm(True)(x))
      elif self.last_bn:
        x = norm(False)(x)
    return x.astype(jnp.float32)


class Network(nn.Module):
  """The query side: encoder (backbone + projector, what the momentum encoder copies) and
  the predictor."""
  encoder: Encoder
  predictor: MLP

  def __call__(self, x, train: bool = True):
    h, z = self.encoder(x, train=train)
    return h, self.predictor(z, train=train)

  def features(self, x):
    return self.encoder.features(x)


def encoder(config, axis_name=None) -> Encoder:
  dtype = models.compute_dtype(config.dtype, jax.default_backend())
  head = config.head
  return Encoder(models.backbone(config.model, dtype, axis_name, config.image_size),
                 MLP(head.num_layers, head.hidden_dim, head.out_dim, True, dtype, axis_name))


def network(config, axis_name=None) -> Network:
  dtype = models.compute_dtype(config.dtype, jax.default_backend())
  pred = config.predictor
  return Network(encoder(config, axis_name),
                 MLP(pred.num_layers, pred.hidden_dim, config.head.out_dim, pred.last_bn,
                     dtype, axis_name))


def validate(config, device_count=None):
  del device_count
  for field in ("head.num_layers", "head.hidden_dim", "head.out_dim", "predictor.num_layers",
                "predictor.hidden_dim"):
    node, name = field.split(".")
    if config[node][name] < 1:
      raise ConfigError(f"config.{field}={config[node][name]} must be >= 1")
  if config.loss.temperature <= 0:
    raise ConfigError(f"config.loss.temperature={config.loss.temperature} must be positive")
  if not 0 <= config.momentum.base <= config.momentum.final <= 1:
    raise ConfigError(f"config.momentum.base={config.momentum.base} and .final="
                      f"{config.momentum.final} need 0 <= base <= final <= 1")


def views(config) -> list[View]:
  """The BYOL-style pair: view 1 always blurred; view 2 rarely blurred, sometimes solarized."""
  a = config.augment
  brightness, contrast, saturation, hue = a.jitter
  return [View(config.image_size, crop_scale=tuple(a.crop_scale), crop_ratio=tuple(a.crop_ratio),
               flip=a.flip, color_prob=a.color_prob, brightness=brightness, contrast=contrast,
               saturation=saturation, hue=hue, brightness_impl=a.brightness_impl,
               gray_prob=a.gray_prob, blur_prob=blur, solarize_prob=solarize,
               **common.view_semantics(config))
          for blur, solarize in zip(a.view_blur_prob, a.view_solarize_prob)]


def init(rng, config, sample_batch):
  del sample_batch  # shapes come from the config
  variables = common.init_variables(network(config), rng, config, train=False)
  params, stats = variables["params"], variables["batch_stats"]
  # The momentum encoder starts as a copy of the query encoder.
  copy = lambda tree: jax.tree.map(jnp.array, tree)
  return dict(params=params, batch_stats=stats,
              method_state=dict(params=copy(params["encoder"]),
                                batch_stats=copy(stats["encoder"])))


def contrastive_loss(q, k, temperature: float, axis_name: str | None = parallel.AXIS,
                     chunk_size: int = 0):
  """ctr(q, k): mean over this device's rows of CE(q . k_all / tau, own row), times 2 tau.

  k is normalised and gathered from every device without gradient; the label of local row
  i is its global row. With `axis_name` None the batch is the whole (single-device) batch.
  `chunk_size` > 0 computes the logits that many rows at a time (losses.blockwise).
  """
  q = losses.l2_normalize(q)
  k = jax.lax.stop_gradient(losses.l2_normalize(k))
  rows = jnp.arange(q.shape[0])
  if axis_name:
    k, rows = parallel.gather(k), parallel.first_row(q.shape[0]) + rows
  return 2.0 * temperature * jnp.mean(losses.info_nce(q, k, rows, temperature, chunk_size))


def _run(module, params, stats, x, rng):
  """One train-mode forward of one view; returns (output, updated BN statistics)."""
  out, new_vars = module.apply({"params": params, "batch_stats": stats}, x, train=True,
                               mutable=["batch_stats"], rngs={"dropout": rng})
  return out, new_vars["batch_stats"]


def loss_fn(params, state, batch, rng, step, *, config):
  x1, x2 = batch["views"]
  rngs = jax.random.split(rng, 4)   # drop path, per forward
  query_net = network(config, parallel.AXIS)
  (h1, q1), stats = _run(query_net, params, state.batch_stats, x1, rngs[0])
  (_, q2), stats = _run(query_net, params, stats, x2, rngs[1])

  momentum = ema.cosine_momentum(step, config.run.total_steps, config.momentum.base,
                                 config.momentum.final)
  target = ema.ema_update(state.method_state["params"], params["encoder"], momentum)
  key_net = encoder(config, parallel.AXIS)
  (_, k1), target_stats = _run(key_net, target, state.method_state["batch_stats"], x1, rngs[2])
  (_, k2), target_stats = _run(key_net, target, target_stats, x2, rngs[3])

  tau = config.loss.temperature
  chunk = config.loss.chunk_size
  loss = (contrastive_loss(q1, k2, tau, chunk_size=chunk) +
          contrastive_loss(q2, k1, tau, chunk_size=chunk))
  embedding_std = common.embedding_std(q1)
  return loss, dict(batch_stats=stats, target=dict(params=target, batch_stats=target_stats),
                    features=h1,
                    metrics=dict(momentum=momentum, embedding_std=embedding_std))


def update(state, new_params, aux, step, *, config):
  del new_params, step, config   # the EMA already happened in loss_fn, as in the original
  return state.replace(batch_stats=aux["batch_stats"], method_state=aux["target"])


def encode(variables, images, config, features=None):
  return common.encode(network(config), variables, images, config, features)
