"""Memory banks and the non-parametric NCE of InstDisc (Wu et al. 2018) and CMC (Tian et al.
2019), following zhirongw/lemniscate.pytorch (lib/NCEAverage.py, NCECriterion.py,
LinearAverage.py) and HobbitLong/CMC (NCE/); METHODS.md §1 and §4.

A bank holds one 128-d row per training example, indexed by the example's dataset
position (`batch["index"]`). Rows start i.i.d. uniform(-sqrt(3/d), sqrt(3/d)) (unit norm
only in expectation), are scored as constants (no gradient), and after the step each
example's row becomes normalize(m * row + (1 - m) * f) with the new embedding f (m = 0.5):
the features and indices of the whole global batch are gathered, so every device writes
the same rows and the bank stays replicated.

Objectives (`objective`):
  "nce"      K indices drawn uniformly with replacement (the positive may be among them),
             the positive in slot 0; P = exp(s / tau) / Z with Z = n * mean(exp(s / tau))
             over the first global batch and then frozen in the state (`z`, -1 until set);
             NCE with noise 1/n and the K negative terms summed, so the loss grows with K.
  "softmax"  cross-entropy over the same K + 1 logits s / tau, label 0 (CMC's
             NCESoftmaxLoss; the CMC repo's InsDis softmax option).
  "full"     cross-entropy over all n rows, label = the example's own row (lemniscate's
             LinearAverage, `--nce-k 0`, the CIFAR README command). O(B x n) per step.

Size and placement: the bank is method state, replicated on every device. ImageNet's
1,281,167 x 128 float32 rows are 655 MB per bank per device (CMC has two: 1.3 GB), which a
16+ GB accelerator holds easily; it is checkpointed with the state. Replicated rather than
sharded over `batch` because each step reads B x (K + 1) random rows (about 1M for B = 256,
K = 4096: most of the bank), so a sharded bank would move a bank-sized all-to-all every step,
while the replicated one only all-gathers the B x 128 new rows. The bank is also the
original's kNN memory (lemniscate's test.py scores test embeddings against it); `encode`
feeds the library's kNN from backbone features instead.

Deviation: lemniscate adds eps = 1e-7 to the NCE denominators; this computes the same
quantities in log space without it (the eps adds about eps * n, 0.13 on ImageNet, to the
loss and changes no gradient measurably).
"""
import jax
import jax.numpy as jnp

from ssl_jax import losses, parallel
from ssl_jax.errors import ConfigError

OBJECTIVES = ("nce", "softmax", "full")
UNSET_Z = -1.0
# Folded into the replicated state.rng with the step: every device draws the same
# negatives for a given global row, whatever the device count.
NEGATIVES_STREAM = 2_000_003


def bank_size(config) -> int:
  n = int(config.run.num_train_examples)
  if n <= 0:
    raise ConfigError("config.run.num_train_examples is 0; train.py fills it from the data "
                      "set (set it yourself when calling init directly)")
  return n


def validate(section: str, fields, objectives=OBJECTIVES):
  """One-line ConfigErrors for the shared fields of `config.<section>`."""
  if fields.objective not in objectives:
    raise ConfigError(f"config.{section}.objective={fields.objective!r} is unknown; use one "
                      f"of {objectives}")
  if fields.objective != "full" and fields.num_negatives < 1:
    raise ConfigError(f"config.{section}.num_negatives={fields.num_negatives} must be >= 1 "
                      f"for objective {fields.objective!r}")
  if not 0 <= fields.memory_momentum < 1:
    raise ConfigError(f"config.{section}.memory_momentum={fields.memory_momentum} must be "
                      "in [0, 1)")


def init_bank(rng, size: int, dim: int) -> jax.Array:
  bound = (3.0 / dim) ** 0.5   # the original's 1 / sqrt(d / 3): variance 1/d per coordinate
  return jax.random.uniform(rng, (size, dim), jnp.float32, -bound, bound)


def write(bank, indices, features, momentum: float) -> jax.Array:
  """Rows at `indices` <- normalize(m * row + (1 - m) * features); indices are distinct."""
  rows = momentum * bank[indices] + (1.0 - momentum) * features.astype(bank.dtype)
  return bank.at[indices].set(losses.l2_normalize(rows))


def draw_negatives(rng, step, local_rows: int, size: int, num_negatives: int) -> jax.Array:
  """(local_rows, K) uniform indices with replacement; a row's draw depends only on (rng,
  step, its global row), so 1 and 8 devices draw the same negatives."""
  key = jax.random.fold_in(jax.random.fold_in(rng, step), NEGATIVES_STREAM)
  rows = parallel.first_row(local_rows) + jnp.arange(local_rows)
  draw = lambda row: jax.random.randint(jax.random.fold_in(key, row), (num_negatives,), 0, size)
  return jax.vmap(draw)(rows)


def scores(bank, indices, features) -> jax.Array:
  """s[b, j] = bank[indices[b, j]] . features[b]; the bank is a constant."""
  rows = jax.lax.stop_gradient(bank)[indices]
  return jnp.einsum("bkd,bd->bk", rows, features.astype(jnp.float32),
                    precision=jax.lax.Precision.HIGHEST)


def estimate_z(s, temperature: float, size: int) -> jax.Array:
  """Z = n * mean(exp(s / tau)) over the global batch's (B, K + 1) scores (equal shards)."""
  return size * jax.lax.pmean(jnp.mean(jnp.exp(s / temperature)), parallel.AXIS)


def frozen_z(z, s, temperature: float, size: int) -> jax.Array:
  """The stored Z once set; while unset, the estimate from this batch (a constant: the
  original's backward treats Z as one)."""
  estimate = jax.lax.stop_gradient(estimate_z(s, temperature, size))
  return jnp.where(z > 0, z, estimate)


def nce_loss(log_p, size: int) -> jax.Array:
  """Per-row NCE loss from log P of shape (B, K + 1), the data sample in slot 0.

  h(P) = P / (P + K/n): -log h(P_pos) - sum_k log(1 - h(P_k)), as softplus in log space.
  """
  log_noise = jnp.log(log_p.shape[1] - 1) - jnp.log(size)    # log(K / n)
  positive = jax.nn.softplus(log_noise - log_p[:, 0])
  negatives = jax.nn.softplus(log_p[:, 1:] - log_noise).sum(axis=-1)
  return positive + negatives


def loss(features, bank, positives, negatives, z, *, objective: str, temperature: float):
  """Mean loss of this device's rows against `bank`, Z after this step, mean positive score.

  features: (B, D) normalised embeddings; positives: (B,) dataset indices; negatives: (B, K)
  from `draw_negatives` (unused by "full"); z: the stored Z (or UNSET_Z).
  """
  if objective == "full":
    logits = features.astype(jnp.float32) @ jax.lax.stop_gradient(bank).T
    per_row = losses.cross_entropy(logits / temperature, positives)
    positive = jnp.take_along_axis(logits, positives[:, None], axis=1)[:, 0]
    return per_row.mean(), z, positive.mean()
  s = scores(bank, jnp.concatenate([positives[:, None], negatives], axis=1), features)
  if objective == "softmax":
    per_row = losses.cross_entropy(s / temperature, jnp.zeros(s.shape[0], jnp.int32))
    return per_row.mean(), z, s[:, 0].mean()
  z = frozen_z(z, s, temperature, bank.shape[0])
  return nce_loss(s / temperature - jnp.log(z), bank.shape[0]).mean(), z, s[:, 0].mean()
