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


def nt_xent(za: jax.Array, zb: jax.Array, temperature: float,
            axis_name: str | None = None) -> jax.Array:
  """SimCLR's NT-Xent with the paper's normalisation: mean over all 2N anchors.

  za[i] and zb[i] are two views of one image. With `axis_name`, each device holds its own
  rows and the negatives are gathered from every device (2(N_global - 1) per anchor);
  gradients flow through the gather. The official code returns twice this value (it sums
  the two directions per image); methods.simclr does that.
  """
  a, b = l2_normalize(za), l2_normalize(zb)
  if axis_name:
    a_all, b_all = parallel.gather(a), parallel.gather(b)
    labels = parallel.first_row(a.shape[0]) + jnp.arange(a.shape[0])
  else:
    a_all, b_all, labels = a, b, jnp.arange(a.shape[0])
  self_mask = jax.nn.one_hot(labels, a_all.shape[0]) * 1e9

  def direction(x, x_all, y_all):
    logits_xy = x @ y_all.T / temperature
    logits_xx = x @ x_all.T / temperature - self_mask
    return cross_entropy(jnp.concatenate([logits_xy, logits_xx], axis=1), labels)

  return 0.5 * jnp.mean(direction(a, a_all, b_all) + direction(b, b_all, a_all))


def info_nce_queue(q: jax.Array, k: jax.Array, queue: jax.Array,
                   temperature: float) -> jax.Array:
  """MoCo's per-row InfoNCE: logits [q.k, q.queue_1..K] / tau, the positive at index 0.

  q, k: (N, D) embeddings (normalised here); queue: (K, D) normalised keys. Neither k nor
  the queue gets a gradient, as in MoCo where both come from no_grad / a buffer.
  """
  q = l2_normalize(q)
  k = jax.lax.stop_gradient(l2_normalize(k))
  queue = jax.lax.stop_gradient(queue.astype(jnp.float32))
  positive = jnp.sum(q * k, axis=-1, keepdims=True)
  logits = jnp.concatenate([positive, q @ queue.T], axis=1) / temperature
  return cross_entropy(logits, jnp.zeros(q.shape[0], jnp.int32))


def normalized_mse(p: jax.Array, z: jax.Array) -> jax.Array:
  """BYOL's per-row regression loss |p/|p| - z/|z||^2 = 2 - 2 cos(p, z), in [0, 4]."""
  return 2.0 - 2.0 * jnp.sum(l2_normalize(p) * l2_normalize(z), axis=-1)


def negative_cosine(p: jax.Array, z: jax.Array) -> jax.Array:
  """SimSiam's D(p, z) = -cos(p, sg(z)), averaged over the batch; -1 when aligned."""
  z = jax.lax.stop_gradient(z)
  return -jnp.mean(jnp.sum(l2_normalize(p) * l2_normalize(z), axis=-1))
