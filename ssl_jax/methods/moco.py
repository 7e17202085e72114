"""MoCo v1 and v2 (He et al. 2019; Chen et al. 2020b), following facebookresearch/moco.

A query encoder (backbone + head) is trained with InfoNCE: the positive is the key of the
other view, computed by a momentum copy of the encoder, and the negatives are a queue of
K keys from earlier batches (gathered over devices, identical everywhere). v1 and v2
differ in config only: head (Linear 128 vs Linear-ReLU-Linear, no BN), temperature (0.07
vs 0.2), augmentation and lr schedule. `config.moco.symmetric` is the CIFAR demo's
"symmetric" loss (both views as queries, both views' keys pushed). `symmetric_style`
"demo" (colab/moco_cifar10_demo.ipynb): the sum of the two losses, both against the
step's queue; "lightly" (lightly cifar10_benchmark.py @42a6a924 MocoModel.training_step,
lines 322-331; lightly/loss/memory_bank.py): their mean, the second loss against the
queue the first one's keys were already pushed into.

Batch norm is per device as in the original (never global), in BN batches of
`config.moco.bn_batch` images: the query encoder's BN runs on groups of that size of the
local batch, and the key encoder's on groups of a *shuffled* global batch (shuffle BN), so
a query and its key never see the same BN statistics. The original's BN batch is 32 images
on each of 8 GPUs; fixing the BN batch rather than a group count keeps that on any device
count (on one device a batch of 256 runs as 8 groups of 32).
"""
import jax
import jax.numpy as jnp

from ssl_jax import ema, losses, models, parallel
from ssl_jax.errors import ConfigError
from ssl_jax.methods import common
from ssl_jax.models.encoder import Encoder
from ssl_jax.models.heads import MLPHead

# Folded into the step's key: the shuffle is drawn from the replicated state.rng, so every
# device draws the same permutation without communicating.
SHUFFLE_STREAM = 1_000_003
SYMMETRIC_STYLES = ("demo", "lightly")


def network(config) -> Encoder:
  dtype = models.compute_dtype(config.dtype, jax.default_backend())
  backbone = models.backbone(config.model, dtype, None)   # per-device (or per-group) BN
  hidden = (config.head.hidden_dim or backbone.num_features,) * (config.head.num_layers - 1)
  return Encoder(backbone, MLPHead(hidden, config.head.out_dim, dtype=dtype))


def views(config):
  view = common.jitter_view(config, config.moco.color_jitter)
  return [view, view]


def keys_per_step(config) -> int:
  return config.batch_size * (2 if config.moco.symmetric else 1)


def validate(config, device_count=None):
  m = config.moco
  pushed = keys_per_step(config)
  if m.queue_size <= 0 or m.queue_size % pushed:
    raise ConfigError(f"config.moco.queue_size={m.queue_size} is not a multiple of the "
                      f"{pushed} keys pushed per step (global batch"
                      f"{' x 2, symmetric' if m.symmetric else ''}); use a multiple of {pushed}")
  local = config.batch_size // (device_count or 1)
  if m.bn_batch < 1 or local % m.bn_batch:
    raise ConfigError(f"config.moco.bn_batch={m.bn_batch} does not divide the per-device "
                      f"batch of {local}; use a divisor of {local}")
  if m.symmetric_style not in SYMMETRIC_STYLES:
    raise ConfigError(f"config.moco.symmetric_style={m.symmetric_style!r} is unknown; use one "
                      f"of {SYMMETRIC_STYLES}")
  if not 0 <= m.momentum <= 1:
    raise ConfigError(f"config.moco.momentum={m.momentum} must be in [0, 1]")


def bn_groups(config, local_batch: int) -> int:
  """How many BN batches of `config.moco.bn_batch` images the local batch holds."""
  return local_batch // config.moco.bn_batch


def init(rng, config, sample_batch):
  del sample_batch  # shapes come from the config
  net_rng, queue_rng = jax.random.split(rng)
  variables = common.init_variables(network(config), net_rng, config)
  queue = jax.random.normal(queue_rng, (config.moco.queue_size, config.head.out_dim))
  copy = lambda tree: jax.tree.map(jnp.copy, tree)   # own buffers: the state is donated
  return dict(params=variables["params"], batch_stats=variables["batch_stats"],
              method_state=dict(key_params=copy(variables["params"]),
                                key_batch_stats=copy(variables["batch_stats"]),
                                queue=losses.l2_normalize(queue),
                                queue_ptr=jnp.zeros((), jnp.int32)))


def apply_fn(config, params, batch_stats):
  """x -> ((h, z), new batch_stats): the encoder with BN in train mode on x's rows."""
  net = network(config)

  def fn(x):
    out, new = net.apply({"params": params, "batch_stats": batch_stats}, x, train=True,
                         mutable=["batch_stats"])
    return out, new["batch_stats"]
  return fn


def shuffled_keys(encode, x_local, perm):
  """Shuffle BN: keys of the whole global batch, in its order, from shuffled BN batches.

  Every device gathers the global batch of key images, encodes its slice of the permuted
  batch with `encode(x) -> (keys, aux)`, and the keys are gathered and un-shuffled with
  the inverse permutation. `perm` must be the same on every device.
  """
  n = x_local.shape[0]
  mine = jax.lax.dynamic_slice_in_dim(perm, parallel.first_row(n), n)
  keys, aux = encode(parallel.gather(x_local)[mine])
  return parallel.gather(keys)[jnp.argsort(perm)], aux


def push(queue, ptr, keys):
  """FIFO: writes `keys` over the oldest rows at `ptr` (the queue length is a multiple)."""
  queue = jax.lax.dynamic_update_slice_in_dim(queue, keys.astype(queue.dtype), ptr, axis=0)
  return queue, (ptr + keys.shape[0]) % queue.shape[0]


def key_forward(config, key_params, key_stats, x_k, rng):
  """Normalised keys of the global batch (in its order) and the key encoder's new stats."""
  def encode_keys(x):
    (_, k), new_stats = common.in_groups(apply_fn(config, key_params, key_stats), x,
                                         bn_groups(config, x.shape[0]))
    return losses.l2_normalize(k), new_stats
  if not config.moco.shuffle_bn:
    keys, new_stats = encode_keys(x_k)
    return parallel.gather(keys), new_stats
  global_batch = x_k.shape[0] * jax.lax.axis_size(parallel.AXIS)
  return shuffled_keys(encode_keys, x_k, jax.random.permutation(rng, global_batch))


def loss_fn(params, state, batch, rng, step, *, config):
  del rng   # device-specific; the shuffle must be the same on every device
  ms = state.method_state
  shuffle_rng = jax.random.fold_in(jax.random.fold_in(state.rng, step), SHUFFLE_STREAM)
  view_a, view_b = batch["views"]
  symmetric = config.moco.symmetric
  pairs = [(view_a, view_b), (view_b, view_a)] if symmetric else [(view_a, view_b)]
  stats, key_stats = state.batch_stats, ms["key_batch_stats"]
  key_params = jax.lax.stop_gradient(ms["key_params"])
  # lightly: the second loss sees the queue with the first loss's keys pushed.
  lightly = symmetric and config.moco.symmetric_style == "lightly"
  queue, ptr = ms["queue"], ms["queue_ptr"]
  loss, pushed, positives, features = 0.0, [], [], []
  for i, (x_q, x_k) in enumerate(pairs):
    (h, q), stats = common.in_groups(apply_fn(config, params, stats), x_q,
                                     bn_groups(config, x_q.shape[0]))
    keys_all, key_stats = key_forward(config, key_params, key_stats, x_k,
                                      jax.random.fold_in(shuffle_rng, i))
    keys_all = jax.lax.stop_gradient(keys_all)
    n = x_k.shape[0]
    k = jax.lax.dynamic_slice_in_dim(keys_all, parallel.first_row(n), n)
    loss += losses.info_nce_queue(q, k, queue, config.loss.temperature,
                                  config.loss.chunk_size).mean()
    if lightly:
      queue, ptr = push(queue, ptr, keys_all)
    positives.append(jnp.sum(losses.l2_normalize(q) * k, -1).mean())
    pushed.append(keys_all)
    features.append(h)
  # Per-device BN leaves each device its own running statistics; keep their mean (the
  # original keeps rank 0's), so the state stays replicated.
  mean_stats = lambda tree: jax.lax.pmean(tree, parallel.AXIS)
  metrics = dict(embedding_std=common.embedding_std(q), positive_sim=sum(positives) / len(pairs))
  # Symmetric: the demo pushes the keys of view 1, then those of view 2; lightly those of
  # view 2 (the first loss's keys), then view 1.
  keys = jnp.concatenate(pushed if lightly else pushed[::-1])
  loss = loss / len(pairs) if lightly else loss
  return loss, dict(batch_stats=mean_stats(stats), key_batch_stats=mean_stats(key_stats),
                    keys=keys, features=features[0], metrics=metrics)


def update(state, new_params, aux, step, *, config):
  """EMA of the key encoder towards the new query params, then enqueue this step's keys.

  The original updates the key encoder at the start of the next forward, with the same
  query params, so doing it here gives the same sequence of key encoders.
  """
  del step
  ms = state.method_state
  queue, ptr = push(ms["queue"], ms["queue_ptr"], aux["keys"])
  key_params = ema.ema_update(ms["key_params"], new_params, config.moco.momentum)
  return state.replace(batch_stats=aux["batch_stats"],
                       method_state=dict(ms, key_params=key_params, queue=queue,
                                         queue_ptr=ptr, key_batch_stats=aux["key_batch_stats"]))


EVAL_FEATURES = ("backbone", "embedding")


def encode(variables, images, config, features=None):
  return common.encode(network(config), variables, images, config, features, common.head_output)
