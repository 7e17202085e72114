"""InvaSpread (Ye et al. 2019), following mangye16/Unsupervised_Embedding_Learning.

Two augmented views of each image go through one ResNet + Linear(128) + L2 normalisation.
Every embedding is an anchor against all other embeddings of the batch (self excluded):
the loss rewards the probability of its partner view (invariance) and log(1 - P) of each
other instance (spreading). The "weights" side of every inner product is detached
(`feat.data` in the original's BatchAverage), so gradients reach each embedding only
through its own anchor row. Negatives come from the global batch, gathered across devices
(stop-gradient, as the original's columns); on one device this is exactly the original.

BN: each view is its own BN batch, global over devices. The original's DataParallel on 4
GPUs normalises 4 chunks of the concatenated [view 1; view 2] batch, so each of its BN
batches also holds one view only (32 images per chunk at batch 128).
"""
import jax
import jax.numpy as jnp

from ssl_jax import losses, models, parallel
from ssl_jax.errors import ConfigError
from ssl_jax.methods import common
from ssl_jax.models.encoder import Encoder
from ssl_jax.models.heads import MLPHead


def network(config, axis_name=None) -> Encoder:
  """ResNet -> Linear(512 -> 128, with bias), as models/resnet_cifar.py's `linear`."""
  dtype = models.compute_dtype(config.dtype, jax.default_backend())
  return Encoder(models.backbone(config.model, dtype, axis_name),
                 MLPHead((), config.head.out_dim, dtype=dtype))


def views(config):
  view = common.jitter_view(config, tuple(config.invaspread.color_jitter))
  return [view, view]


def validate(config, device_count=None):
  del device_count
  if config.invaspread.neg_m <= 0:
    raise ConfigError(f"config.invaspread.neg_m={config.invaspread.neg_m} must be positive "
                      "(the original's --batch-m; 1 = the paper's loss)")
  if config.loss.temperature <= 0:
    raise ConfigError(f"config.loss.temperature={config.loss.temperature} must be positive")


def init(rng, config, sample_batch):
  del sample_batch  # shapes come from the config
  variables = common.init_variables(network(config), rng, config)
  return dict(params=variables["params"], batch_stats=variables["batch_stats"],
              method_state={})


def batch_criterion(anchors, columns, anchor_rows, partner_rows, temperature, neg_m=1.0):
  """Per-anchor InvaSpread loss (BatchAverage + BatchCriterion, negM >= 1 branch).

  anchors: (A, D) normalised embeddings with gradients; columns: (M, D) every embedding
  of the batch (detached here); anchor_rows[a] / partner_rows[a]: the column index of
  anchor a itself (excluded from everything) and of its other view (the positive).
  Returns -[log P+ + neg_m * sum_neg log(1 - P_neg)] per anchor, where
  P_j = e_j / Z, Z = neg_m * sum_neg e + e_pos and e_j = exp(a . sg(x_j) / tau).
  """
  logits = anchors @ jax.lax.stop_gradient(columns).T / temperature       # (A, M)
  cols = jnp.arange(columns.shape[0])
  is_self = cols[None, :] == anchor_rows[:, None]
  is_pos = cols[None, :] == partner_rows[:, None]
  is_neg = ~(is_self | is_pos)
  pos_logit = jnp.sum(jnp.where(is_pos, logits, 0.0), axis=1)
  neg_lse = jax.nn.logsumexp(jnp.where(is_neg, logits, -jnp.inf), axis=1)
  # log Z - pos = softplus(log neg_m + lse_neg - pos): exact when P+ is close to 1.
  log_z_over_pos = jax.nn.softplus(jnp.log(neg_m) + neg_lse - pos_logit)
  log_p_pos = -log_z_over_pos
  p_neg = jnp.exp(jnp.where(is_neg, logits - pos_logit[:, None], -jnp.inf)
                  - log_z_over_pos[:, None])
  log_not_neg = jnp.sum(jnp.where(is_neg, jnp.log1p(-p_neg), 0.0), axis=1)
  return -(log_p_pos + neg_m * log_not_neg)


def invaspread_loss(z1, z2, temperature, neg_m=1.0, axis_name=None):
  """Mean over this device's 2n anchors; the columns are the whole global batch.

  Column layout [view 1 of every image; view 2 of every image], so image i's partner is
  i + N (N = global batch), as the original's GenerateIdx on one device.
  """
  z1, z2 = losses.l2_normalize(z1), losses.l2_normalize(z2)
  n = z1.shape[0]
  if axis_name:
    g1, g2, first = parallel.gather(z1), parallel.gather(z2), parallel.first_row(n)
  else:
    g1, g2, first = z1, z2, 0
  total = g1.shape[0]
  rows = first + jnp.arange(n)
  anchor_rows = jnp.concatenate([rows, rows + total])
  partner_rows = jnp.concatenate([rows + total, rows])
  per_anchor = batch_criterion(jnp.concatenate([z1, z2]), jnp.concatenate([g1, g2]),
                               anchor_rows, partner_rows, temperature, neg_m)
  return per_anchor.mean()


def loss_fn(params, state, batch, rng, step, *, config):
  del rng, step
  net = network(config, parallel.AXIS)
  stats, outputs = state.batch_stats, []
  for x in batch["views"]:   # one BN batch per view, as the original's per-GPU chunks
    out, new = net.apply({"params": params, "batch_stats": stats}, x, train=True,
                         mutable=["batch_stats"])
    stats = new["batch_stats"]
    outputs.append(out)
  (h1, z1), (_, z2) = outputs
  loss = invaspread_loss(z1, z2, config.loss.temperature, config.invaspread.neg_m,
                         parallel.AXIS)
  positive = jnp.sum(losses.l2_normalize(z1) * losses.l2_normalize(z2), axis=-1).mean()
  metrics = dict(embedding_std=common.embedding_std(z1), positive_sim=positive)
  return loss, dict(batch_stats=stats, features=jax.lax.stop_gradient(h1), metrics=metrics)


def update(state, new_params, aux, step, *, config):
  del new_params, step, config
  return state.replace(batch_stats=aux["batch_stats"])


EVAL_FEATURES = ("backbone", "embedding")


def encode(variables, images, config, features=None):
  return common.encode(network(config), variables, images, config, features, common.head_output)
