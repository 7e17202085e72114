"""Loss functions on embeddings: plain jnp, tested against hand-computed values."""
import jax
import jax.numpy as jnp

from ssl_jax import parallel


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
  x = x.astype(jnp.float32)
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), eps * eps))


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Per-row CE(logits, label) = logsumexp(logits) - logits[label]."""
  picked = jnp.take_along_axis(logits, labels[:, None], axis=-1)[:, 0]
  return jax.nn.logsumexp(logits, axis=-1) - picked


def blockwise(per_row, rows: tuple, chunk_size: int = 0) -> jax.Array:
  """per_row(*rows) -> (n,) values, computed `chunk_size` rows at a time.

  Each block is recomputed in the backward pass (jax.checkpoint inside lax.map), so that
  a contrastive loss holds one block's logits, chunk_size x keys, instead of n x keys,
  forward and backward. Keys that per_row closes over get their gradients summed over
  the blocks. chunk_size 0 (or >= n) is one dense call. The last block is padded.
  """
  n = rows[0].shape[0]
  if not chunk_size or chunk_size >= n:
    return per_row(*rows)
  blocks = -(-n // chunk_size)

  def split(x):
    x = jnp.pad(x, [(0, blocks * chunk_size - n)] + [(0, 0)] * (x.ndim - 1))
    return x.reshape(blocks, chunk_size, *x.shape[1:])

  values = jax.lax.map(lambda block: jax.checkpoint(per_row)(*block),
                       tuple(split(x) for x in rows))
  return values.reshape(-1)[:n]


def nt_xent(za: jax.Array, zb: jax.Array, temperature: float,
            axis_name: str | None = None, chunk_size: int = 0) -> jax.Array:
  """SimCLR's NT-Xent with the paper's normalisation: mean over all 2N anchors.

  za[i] and zb[i] are two views of one image. With `axis_name`, each device holds its own
  rows and the negatives are gathered from every device (2(N_global - 1) per anchor);
  gradients flow through the gather. The official code returns twice this value (it sums
  the two directions per image); methods.simclr does that. Each device's logits take
  n_local x 2N floats, or chunk_size x 2N with `chunk_size` (see `blockwise`).
  """
  a, b = l2_normalize(za), l2_normalize(zb)
  if axis_name:
    a_all, b_all = parallel.gather(a), parallel.gather(b)
    labels = parallel.first_row(a.shape[0]) + jnp.arange(a.shape[0])
  else:
    a_all, b_all, labels = a, b, jnp.arange(a.shape[0])

  def direction(x, x_all, y_all, labels):
    logits_xy = x @ y_all.T / temperature
    logits_xx = x @ x_all.T / temperature - jax.nn.one_hot(labels, x_all.shape[0]) * 1e9
    return cross_entropy(jnp.concatenate([logits_xy, logits_xx], axis=1), labels)

  def both_directions(a, b, labels):
    return direction(a, a_all, b_all, labels) + direction(b, b_all, a_all, labels)

  return 0.5 * jnp.mean(blockwise(both_directions, (a, b, labels), chunk_size))


def info_nce(q: jax.Array, keys: jax.Array, labels: jax.Array, temperature: float,
             chunk_size: int = 0) -> jax.Array:
  """Per-row CE(q . keys / tau, label): InfoNCE of each query against all keys (e.g. the
  keys gathered from every device), `chunk_size` query rows at a time when set. q and
  keys are used as given (normalise them first)."""
  def per_row(q, labels):
    return cross_entropy(q @ keys.T / temperature, labels)
  return blockwise(per_row, (q, labels), chunk_size)


def info_nce_queue(q: jax.Array, k: jax.Array, queue: jax.Array,
                   temperature: float, chunk_size: int = 0) -> jax.Array:
  """MoCo's per-row InfoNCE: logits [q.k, q.queue_1..K] / tau, the positive at index 0.

  q, k: (N, D) embeddings (normalised here); queue: (K, D) normalised keys. Neither k nor
  the queue gets a gradient, as in MoCo where both come from no_grad / a buffer. The
  logits take N x K floats, or chunk_size x K with `chunk_size` (see `blockwise`).
  """
  q = l2_normalize(q)
  k = jax.lax.stop_gradient(l2_normalize(k))
  queue = jax.lax.stop_gradient(queue.astype(jnp.float32))

  def per_row(q, k):
    positive = jnp.sum(q * k, axis=-1, keepdims=True)
    logits = jnp.concatenate([positive, q @ queue.T], axis=1) / temperature
    return cross_entropy(logits, jnp.zeros(q.shape[0], jnp.int32))
  return blockwise(per_row, (q, k), chunk_size)


def normalized_mse(p: jax.Array, z: jax.Array) -> jax.Array:
  """BYOL's per-row regression loss |p/|p| - z/|z||^2 = 2 - 2 cos(p, z), in [0, 4]."""
  return 2.0 - 2.0 * jnp.sum(l2_normalize(p) * l2_normalize(z), axis=-1)


def negative_cosine(p: jax.Array, z: jax.Array) -> jax.Array:
  """SimSiam's D(p, z) = -cos(p, sg(z)), averaged over the batch; -1 when aligned."""
  z = jax.lax.stop_gradient(z)
  return -jnp.mean(jnp.sum(l2_normalize(p) * l2_normalize(z), axis=-1))
