"""InstDisc and the shared memory bank: NCE test vectors, Z frozen after the first batch,
negative sampling, bank writes at the gathered indices, 8 devices vs 1, the command line."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from ssl_jax import losses, memory_bank, optim, parallel
from ssl_jax.data import augment
from ssl_jax.errors import ConfigError
from ssl_jax.methods import instdisc
import test_train
from test_config import load
from test_main import smoke_run

BATCH, BANK = 16, 40
# Dataset indices of the two steps' global batches: 8 rows are written twice.
STEP_INDICES = (np.arange(0, 32, 2), np.arange(16, 48, 2) % BANK)

pytestmark = pytest.mark.usefixtures("fast_compiles")


def on_devices(fn, count=1, in_specs=P(), out_specs=P()):
  """`fn` inside shard_map over `count` devices (the losses use collectives over AXIS)."""
  mesh = parallel.make_mesh(jax.devices()[:count])
  return jax.jit(jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs,
                               check_vma=False))


# ------------------------------------------------------------------------ losses

def test_nce_at_h_one_half_and_hand_computed_values():
  """METHODS.md §1.6 (a) all P = K/n: (K + 1) ln 2; (c) P_pos 1e-2, P_neg 1e-7."""
  n, k = 1_281_167, 4096
  at_half = memory_bank.nce_loss(jnp.full((1, k + 1), np.log(k / n)), n)
  assert float(at_half[0]) == pytest.approx(2839.824, rel=1e-6)
  log_p = jnp.log(jnp.array([[1e-2] + [1e-7] * k]))
  assert float(memory_bank.nce_loss(log_p, n)[0]) == pytest.approx(0.405526, rel=1e-5)


def test_nce_at_zero_scores_estimates_z_equal_to_n():
  """METHODS.md §1.6 (b): s = 0 everywhere gives Z = n, P = 1/n and ln(K+1) + K ln(1+1/K)."""
  k = 4096
  bank = jnp.tile(jnp.eye(8)[:1], (BANK, 1))
  f = jnp.tile(jnp.eye(8)[1:2], (4, 1))            # orthogonal to every row: s = 0
  negatives = jnp.zeros((4, k), jnp.int32)

  def run(bank, f, negatives):
    return memory_bank.loss(f, bank, jnp.arange(4), negatives, jnp.float32(-1.0),
                            objective="nce", temperature=0.07)
  loss, z, positive = on_devices(run)(bank, f, negatives)
  assert float(loss) == pytest.approx(9.3179, abs=1e-4)
  assert float(z) == pytest.approx(BANK, rel=1e-6) and float(positive) == 0.0


def test_z_is_frozen_once_set():
  """Given a stored Z the loss uses it, whatever the scores, and returns it unchanged."""
  rng = np.random.default_rng(0)
  bank = losses.l2_normalize(jnp.asarray(rng.normal(size=(BANK, 8)), jnp.float32))
  f = bank[:4]
  negatives = jnp.asarray(rng.integers(0, BANK, (4, 5)), jnp.int32)

  def run(z):
    return memory_bank.loss(f, bank, jnp.arange(4), negatives, z, objective="nce",
                            temperature=0.1)
  loss, z, _ = on_devices(run)(jnp.float32(123.0))
  assert float(z) == 123.0
  s = np.einsum("bkd,bd->bk", np.asarray(bank)[np.c_[np.arange(4), negatives]], f)
  expected = memory_bank.nce_loss(jnp.asarray(s / 0.1 - np.log(123.0)), BANK).mean()
  assert float(loss) == pytest.approx(float(expected), rel=1e-5)


def test_z_estimate_is_the_mean_over_the_global_batch():
  s = np.random.default_rng(1).normal(size=(16, 5)).astype(np.float32)
  z = on_devices(lambda s: memory_bank.estimate_z(s, 0.5, BANK), 8, in_specs=P(parallel.AXIS))(s)
  assert float(z) == pytest.approx(BANK * np.exp(s / 0.5).mean(), rel=1e-5)


def test_full_softmax_and_sampled_softmax():
  rng = np.random.default_rng(2)
  bank = losses.l2_normalize(jnp.asarray(rng.normal(size=(6, 4)), jnp.float32))
  f = losses.l2_normalize(jnp.asarray(rng.normal(size=(3, 4)), jnp.float32))
  index = jnp.array([4, 0, 2])
  full, _, _ = memory_bank.loss(f, bank, index, None, -1.0, objective="full", temperature=0.1)
  logits = np.asarray(f) @ np.asarray(bank).T / 0.1
  expected = np.log(np.exp(logits).sum(1)) - logits[np.arange(3), index]
  assert float(full) == pytest.approx(expected.mean(), rel=1e-5)
  collapsed = jnp.tile(f[:1], (6, 1))                 # every logit equal: ln(K + 1)
  sampled, _, _ = memory_bank.loss(f[:1], collapsed, index[:1], jnp.zeros((1, 4095), jnp.int32),
                                   -1.0, objective="softmax", temperature=0.07)
  assert float(sampled) == pytest.approx(np.log(4096), rel=1e-6)


def test_gradients_reach_the_embeddings_not_the_bank():
  rng = np.random.default_rng(3)
  bank = losses.l2_normalize(jnp.asarray(rng.normal(size=(BANK, 8)), jnp.float32))
  f = losses.l2_normalize(jnp.asarray(rng.normal(size=(4, 8)), jnp.float32))
  negatives = jnp.asarray(rng.integers(0, BANK, (4, 6)), jnp.int32)

  def grads(f, bank):
    fn = lambda f, bank: memory_bank.loss(f, bank, jnp.arange(4), negatives, jnp.float32(50.0),
                                          objective="nce", temperature=0.1)[0]
    return jax.grad(fn, argnums=(0, 1))(f, bank)
  g_f, g_bank = on_devices(grads)(f, bank)
  assert float(jnp.abs(g_f).max()) > 0
  np.testing.assert_array_equal(g_bank, 0)


# ------------------------------------------------------------- bank and sampling

def test_bank_init_is_uniform_with_unit_norm_only_on_average():
  bank = np.asarray(memory_bank.init_bank(jax.random.key(0), 4000, 128))
  bound = np.sqrt(3 / 128)
  assert np.abs(bank).max() <= bound and np.abs(bank).max() > 0.99 * bound
  norms = np.linalg.norm(bank, axis=1)
  assert norms.mean() == pytest.approx(1.0, abs=0.01) and norms.std() > 0.02


def test_write_is_momentum_then_renormalise_at_the_indices():
  rng = np.random.default_rng(4)
  bank = rng.normal(size=(10, 3)).astype(np.float32)
  f = rng.normal(size=(2, 3)).astype(np.float32)
  new = np.asarray(memory_bank.write(jnp.asarray(bank), jnp.array([7, 2]), jnp.asarray(f), 0.5))
  for row, i in zip(f, (7, 2)):
    mixed = 0.5 * bank[i] + 0.5 * row
    np.testing.assert_allclose(new[i], mixed / np.linalg.norm(mixed), rtol=1e-6)
  untouched = [i for i in range(10) if i not in (7, 2)]
  np.testing.assert_array_equal(new[untouched], bank[untouched])


def test_negatives_are_uniform_with_replacement_and_independent_of_device_count():
  def draw(rng):
    return memory_bank.draw_negatives(rng, 3, 2, 50, 2000)
  rng = jax.random.key(5)
  on_8 = np.asarray(on_devices(draw, 8, out_specs=P(parallel.AXIS))(rng))
  on_1 = np.asarray(on_devices(lambda r: memory_bank.draw_negatives(r, 3, 16, 50, 2000))(rng))
  np.testing.assert_array_equal(on_8, on_1)     # each global row draws its own negatives
  assert on_1.min() == 0 and on_1.max() == 49
  counts = np.bincount(on_1.ravel(), minlength=50)
  assert np.abs(counts / counts.mean() - 1).max() < 0.15   # 640 expected per index
  assert len(np.unique(on_1[0])) < 2000                    # repeats: with replacement
  assert not (on_1[0] == on_1[1]).all()


# ------------------------------------------------------------------ the real step

def tiny_config(name="instdisc"):
  c = load(name).get_config("smoke")
  c.batch_size, c.image_size = BATCH, 16
  c.augment.update(color_prob=0.0, gray_prob=0.0)   # not under test here; compiles faster
  # Residual branches start at zero: with the original's unit BN scales the float rounding
  # of cross-device BN sums, amplified by the NCE's exp(s / 0.07), exceeds these tolerances.
  c.model.zero_init_residual = "all"
  c.run.update(steps_per_epoch=10, total_steps=100, num_train_examples=BANK)
  return c


def image_batch(step):
  return test_train.random_batch(BATCH, seed=step, index=STEP_INDICES[step])


def run_steps(config, devices):
  return test_train.run_steps(config, devices, image_batch)


def step_view(state, step, method, config):
  """The augmented view the step computes for `image_batch(step)` (same keys)."""
  aug_rng, _ = jax.random.split(jax.random.fold_in(state.rng, state.step))
  augment_batch = jax.jit(augment.augment_batch, static_argnums=3)
  return augment_batch(jax.random.fold_in(aug_rng, 0), image_batch(step)["image"],
                       np.arange(BATCH), method.views(config)[0])


def assert_bank_written(before, after, indices, embeddings, momentum=0.5):
  mixed = momentum * before[indices] + (1 - momentum) * embeddings
  np.testing.assert_allclose(after[indices], mixed / np.linalg.norm(mixed, axis=1, keepdims=True),
                             atol=2e-5)
  untouched = np.setdiff1d(np.arange(len(before)), indices)
  np.testing.assert_array_equal(after[untouched], before[untouched])


@pytest.fixture(scope="module")
def runs():
  assert jax.device_count() == 8
  config = tiny_config()
  return config, run_steps(config, jax.devices()), run_steps(config, jax.devices()[:1])


@jax.jit
def _embed(variables, view):
  (_, z), _ = instdisc.network(tiny_config()).apply(variables, view, train=True,
                                                    mutable=["batch_stats"])
  return losses.l2_normalize(z)


def embeddings(config, state, step):
  """This step's embeddings, computed plainly: BN over the whole batch of 16."""
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  return np.asarray(_embed(variables, step_view(state, step, instdisc, config)))


def test_bank_rows_take_the_step_embeddings_with_momentum_on_8_devices(runs):
  config, (states, _), _ = runs
  for t in range(2):   # step 2 rewrites 8 of step 1's rows
    assert_bank_written(states[t].method_state["bank"], states[t + 1].method_state["bank"],
                        STEP_INDICES[t], embeddings(config, states[t], t))


def test_z_is_estimated_on_the_first_batch_then_frozen(runs):
  config, (states, metrics), _ = runs
  assert float(states[0].method_state["z"]) == memory_bank.UNSET_Z
  state = states[0]
  negatives = on_devices(lambda r: memory_bank.draw_negatives(r, 0, BATCH, BANK, 64))(state.rng)
  rows = np.asarray(state.method_state["bank"])[np.c_[STEP_INDICES[0], negatives]]
  s = np.einsum("bkd,bd->bk", rows, embeddings(config, state, 0))
  z = float(states[1].method_state["z"])
  assert z == pytest.approx(BANK * np.exp(s / config.loss.temperature).mean(), rel=1e-4)
  assert float(states[2].method_state["z"]) == z
  assert [float(m["nce_z"]) for m in metrics] == pytest.approx([z, z])


def test_8_devices_equal_1_device(runs):
  _, (s8, m8), (s1, m1) = runs
  for a, b in zip(m8, m1):
    for key in ("loss", "grad_norm", "positive_sim"):
      np.testing.assert_allclose(a[key], b[key], rtol=2e-5, err_msg=key)
  test_train.assert_states_close(s8[-1], s1[-1])


# ------------------------------------------------------- configs, schedules, CLI

def test_paper_settings():
  c = load("instdisc").get_config()
  assert (c.instdisc.objective, c.instdisc.num_negatives, c.instdisc.memory_momentum) == (
      "nce", 4096, 0.5)
  assert (c.loss.temperature, c.batch_size, c.head.out_dim) == (0.07, 256, 128)
  view = instdisc.views(c)[0]
  assert (view.color_prob, view.hue, view.gray_prob, view.crop_scale) == (1.0, 0.4, 0.2, (0.2, 1.0))
  lr = optim.lr_schedule(c.optimizer, 256, 100, 20_000)
  assert [float(lr(s)) for s in (0, 11_999, 12_000, 15_999, 16_000)] == pytest.approx(
      [0.03, 0.03, 0.003, 0.003, 0.0003])
  cifar = load("instdisc").get_config("cifar10")
  assert (cifar.instdisc.objective, cifar.loss.temperature) == ("full", 0.1)
  assert optim.scaled_lr(cifar.optimizer, 128) == pytest.approx(0.03)


@pytest.mark.parametrize("field, value, message", [
    ("objective", "nec", r"config.instdisc.objective='nec' is unknown"),
    ("num_negatives", 0, r"config.instdisc.num_negatives=0 must be >= 1"),
    ("memory_momentum", 1.0, r"config.instdisc.memory_momentum=1.0 must be in"),
])
def test_bad_fields_are_config_errors(field, value, message):
  from ssl_jax import config as config_lib
  c = load("instdisc").get_config("smoke")
  c.instdisc[field] = value
  with pytest.raises(ConfigError, match=message):
    config_lib.validate(c, device_count=8)


def test_init_without_the_data_set_size_says_what_to_do():
  with pytest.raises(ConfigError, match="config.run.num_train_examples is 0"):
    instdisc.init(jax.random.key(0), load("instdisc").get_config("smoke"), None)


def test_smoke_run_through_the_cli(tmp_path, small_dataset):
  lines = smoke_run("instdisc", tmp_path, small_dataset)
  assert lines[0]["nce_z"] == lines[2]["nce_z"] > 0
