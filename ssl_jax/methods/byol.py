"""BYOL (Grill et al. 2020), following deepmind-research/byol.

The online network (backbone, projector, predictor) predicts the target network's
projection of the other view; the target (backbone, projector) is an EMA of the online
one, with the momentum rising from `config.byol.base_momentum` to 1 on a per-step cosine.
No negatives. BN is global (cross-replica) in both networks; the target runs BN in train
mode and keeps its own statistics. The views are asymmetric (blur 1.0 / 0.1, solarize
0 / 0.2). The loss is the sum of both directions of 2 - 2 cos(p, sg(z')), in [0, 8].
"""
import flax.linen as nn
import jax
import jax.numpy as jnp

from ssl_jax import ema, losses, models, parallel
from ssl_jax.errors import ConfigError
from ssl_jax.methods import common
from ssl_jax.models import inits
from ssl_jax.models.encoder import Encoder
from ssl_jax.models.heads import MLPHead


class Online(nn.Module):
  """Encoder (backbone + projector) then predictor: returns (h, z, p)."""
  encoder: Encoder
  predictor: MLPHead

  def __call__(self, x, train: bool = True):
    h, z = self.encoder(x, train=train)
    return h, z, self.predictor(z, train=train)

  def features(self, x):
    return self.encoder.features(x)


def encoder(config, axis_name=None) -> Encoder:
  """Backbone + projector: Linear(hidden, bias) -> BN -> ReLU -> Linear(out, no bias)."""
  dtype = models.compute_dtype(config.dtype, jax.default_backend())
  backbone = models.backbone(config.model, dtype, axis_name)
  hidden = (config.head.hidden_dim or backbone.num_features,) * (config.head.num_layers - 1)
  return Encoder(backbone, MLPHead(hidden, config.head.out_dim, hidden_bn=True,
                                   out_bias=False, dtype=dtype, axis_name=axis_name,
                                   init_scheme=inits.head_scheme(config.model.init)))


def online(config, axis_name=None) -> Online:
  dtype = models.compute_dtype(config.dtype, jax.default_backend())
  predictor = MLPHead((config.byol.predictor_hidden_dim,), config.head.out_dim, hidden_bn=True,
                      out_bias=False, dtype=dtype, axis_name=axis_name,
                      init_scheme=inits.head_scheme(config.model.init))
  return Online(encoder(config, axis_name), predictor)


def views(config):
  b = config.byol
  return [common.jitter_view(config, b.color_jitter, blur_prob=blur, solarize_prob=solarize)
          for blur, solarize in zip(b.blur_probs, b.solarize_probs)]


def validate(config, device_count=None):
  del device_count
  b = config.byol
  if len(b.blur_probs) != 2 or len(b.solarize_probs) != 2:
    raise ConfigError(f"config.byol.blur_probs={tuple(b.blur_probs)} and "
                      f"config.byol.solarize_probs={tuple(b.solarize_probs)} need one value "
                      "per view (2 each)")
  if not 0 <= b.base_momentum <= b.final_momentum <= 1:
    raise ConfigError(f"config.byol.base_momentum={b.base_momentum} and final_momentum="
                      f"{b.final_momentum} must satisfy 0 <= base <= final <= 1")
  if b.loss not in LOSSES or b.target_init not in ("random", "copy"):
    raise ConfigError(f"config.byol.loss={b.loss!r} / target_init={b.target_init!r}: use "
                      f"loss in {LOSSES} and target_init 'random' (BYOL) or 'copy' (lightly)")


def init(rng, config, sample_batch):
  del sample_batch  # shapes come from the config
  online_rng, target_rng = jax.random.split(rng)
  variables = common.init_variables(online(config), online_rng, config)
  # As the original: the target starts from its own random weights, not a copy
  # (target_init="copy": lightly's deepcopy of the online backbone and projector).
  target = common.init_variables(encoder(config), target_rng, config)
  if config.byol.target_init == "copy":
    target = dict(params=jax.tree.map(jnp.copy, variables["params"]["encoder"]),
                  batch_stats=jax.tree.map(jnp.copy, variables["batch_stats"]["encoder"]))
  return dict(params=variables["params"], batch_stats=variables["batch_stats"],
              method_state=dict(target_params=target["params"],
                                target_batch_stats=target["batch_stats"]))


def momentum(step, config):
  """base -> final on a per-step cosine (BYOL: 0.996 -> 1; final = base: constant)."""
  b = config.byol
  return ema.cosine_momentum(step, config.run.total_steps, b.base_momentum, b.final_momentum)


# "sum_mse": BYOL's sum over both directions of 2 - 2 cos; "mean_negative_cosine":
# lightly's mean of -cos (the same minimum, 1/4 of the gradient).
LOSSES = ("sum_mse", "mean_negative_cosine")


def symmetric_loss(predictions, targets):
  """mean_batch[l(p1, sg z2') + l(p2, sg z1')]: the sum of both directions, in [0, 8]."""
  p1, p2 = predictions
  z1, z2 = (jax.lax.stop_gradient(z) for z in targets)
  return jnp.mean(losses.normalized_mse(p1, z2) + losses.normalized_mse(p2, z1))


def loss_fn(params, state, batch, rng, step, *, config):
  del rng
  ms = state.method_state
  online_net, target_net = online(config, parallel.AXIS), encoder(config, parallel.AXIS)
  target_params = jax.lax.stop_gradient(ms["target_params"])
  stats, target_stats = state.batch_stats, ms["target_batch_stats"]
  predictions, targets, features = [], [], []
  for x in batch["views"]:   # one forward per view: each view is its own BN batch
    (h, z, p), new = online_net.apply({"params": params, "batch_stats": stats}, x,
                                      train=True, mutable=["batch_stats"])
    (_, z_target), new_target = target_net.apply(
        {"params": target_params, "batch_stats": target_stats}, x, train=True,
        mutable=["batch_stats"])
    stats, target_stats = new["batch_stats"], new_target["batch_stats"]
    predictions.append(p)
    features.append(h)
    targets.append(jax.lax.stop_gradient(z_target))
  if config.byol.loss == "mean_negative_cosine":   # lightly: 0.5 (-cos(p1, z2) - cos(p2, z1))
    loss = 0.5 * (losses.negative_cosine(predictions[0], targets[1]) +
                  losses.negative_cosine(predictions[1], targets[0]))
  else:
    loss = symmetric_loss(predictions, targets)
  metrics = dict(ema_momentum=momentum(step, config), embedding_std=common.embedding_std(z))
  return loss, dict(batch_stats=stats, target_batch_stats=target_stats, features=features[0],
                    metrics=metrics)


def update(state, new_params, aux, step, *, config):
  """target <- m target + (1 - m) online (backbone and projector), m on the cosine."""
  ms = state.method_state
  target = ema.ema_update(ms["target_params"], new_params["encoder"], momentum(step, config))
  return state.replace(batch_stats=aux["batch_stats"],
                       method_state=dict(ms, target_params=target,
                                         target_batch_stats=aux["target_batch_stats"]))


def encode(variables, images, config, features=None):
  return common.encode(online(config), variables, images, config, features)
