"""InvaSpread: the loss against METHODS.md §2.6 and a transcription of the original's
index layout, detached columns, global negatives on 8 devices vs 1, the lr schedule the
original code really runs, and the command line."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from ssl_jax import optim, parallel
from ssl_jax.methods import invaspread
from test_config import load
from test_main import smoke_run
from test_train import one_step, random_batch

pytestmark = pytest.mark.usefixtures("fast_compiles")


def test_orthogonal_instances_with_identical_partners():
  """METHODS.md §2.6 (a): B = 2, tau = 0.1."""
  z = jnp.eye(128)[:2]
  assert float(invaspread.invaspread_loss(z, z, 0.1)) == pytest.approx(1.8159e-4, rel=1e-4)


@pytest.mark.parametrize("b", [2, 4])
def test_collapse(b):
  """§2.6 (b): every row identical gives ln(2B-1) - (2B-2) ln(1 - 1/(2B-1)); 1.909543 at B=2."""
  z = jnp.ones((b, 16))
  expected = np.log(2 * b - 1) - (2 * b - 2) * np.log(1 - 1 / (2 * b - 1))
  assert float(invaspread.invaspread_loss(z, z, 0.1)) == pytest.approx(expected, rel=1e-5)
  if b == 2:
    assert expected == pytest.approx(1.909543, rel=1e-6)


def original_loss(x, temperature, neg_m):
  """numpy transcription of BatchAverage + BatchCriterion (negM >= 1): for each row, the
  exp-similarities to every other row with the partner first, then the loss."""
  n2 = len(x)
  loss = 0.0
  for i in range(n2):
    partner = (i + n2 // 2) % n2
    others = [j for j in range(n2) if j not in (i, partner)]
    e = np.exp(x[[partner] + others] @ x[i] / temperature)
    z = e[1:].sum() * neg_m + e[0]
    loss -= np.log(e[0] / z) + neg_m * np.log(1 - e[1:] / z).sum()
  return loss / n2


@pytest.mark.parametrize("neg_m", [1.0, 2.0])
def test_matches_the_original_on_random_embeddings(neg_m):
  rng = np.random.default_rng(0)
  z1, z2 = rng.normal(size=(2, 6, 8))
  x = np.concatenate([z1, z2])
  x /= np.linalg.norm(x, axis=1, keepdims=True)
  loss = invaspread.invaspread_loss(jnp.asarray(z1), jnp.asarray(z2), 0.5, neg_m)
  assert float(loss) == pytest.approx(original_loss(x, 0.5, neg_m), rel=1e-5)


def test_columns_are_detached():
  """Only the anchor rows carry gradients (the original's `feat.data`)."""
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(size=(8, 4)), jnp.float32)
  x = x / jnp.linalg.norm(x, axis=1, keepdims=True)
  rows, partners = jnp.arange(8), (jnp.arange(8) + 4) % 8
  loss = lambda a, c: invaspread.batch_criterion(a, c, rows, partners, 0.1).mean()  # noqa: E731
  grad_anchor, grad_columns = jax.grad(loss, argnums=(0, 1))(x, x)
  np.testing.assert_array_equal(grad_columns, 0)
  assert float(jnp.abs(grad_anchor).max()) > 0


def test_global_negatives_on_8_devices_equal_one_batch():
  """Each device's anchors see the gathered batch: the mean over devices of the local
  losses, and their gradients, equal the loss of the whole batch on one device."""
  rng = np.random.default_rng(2)
  z1, z2 = (jnp.asarray(a, jnp.float32) for a in rng.normal(size=(2, 16, 8)))
  mesh = parallel.make_mesh(jax.devices())

  def local(z1, z2):
    value, grads = jax.value_and_grad(invaspread.invaspread_loss, argnums=(0, 1))(
        z1, z2, 0.1, 1.0, parallel.AXIS)
    return jax.lax.pmean(value, parallel.AXIS), grads
  value, grads = jax.jit(jax.shard_map(local, mesh=mesh, in_specs=P(parallel.AXIS),
                                       out_specs=(P(), P(parallel.AXIS))))(z1, z2)
  expected, expected_grads = jax.value_and_grad(invaspread.invaspread_loss, argnums=(0, 1))(
      z1, z2, 0.1)
  assert float(value) == pytest.approx(float(expected), rel=1e-5)
  for g, e in zip(grads, expected_grads):   # local grads are 8x the global mean's
    np.testing.assert_allclose(np.asarray(g) / 8, e, rtol=1e-4, atol=1e-7)


def test_8_devices_equal_1_device():
  config = load("invaspread").get_config("smoke")
  config.batch_size = 16
  batch = random_batch()
  (s1, m1), (s8, m8) = (one_step(config, devices, batch)
                        for devices in (jax.devices()[:1], jax.devices()))
  np.testing.assert_allclose(m8["loss"], m1["loss"], rtol=1e-5)
  for a, b in zip(jax.tree.leaves(s1.params), jax.tree.leaves(s8.params)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_paper_settings_and_the_schedule_the_code_runs():
  """demo_seen.py:160-168 at 29de398 (after "fix lr bug"): x1 below epoch 120, x0.1 on
  [120, 160), x0.05 on [160, 200), x0.01 from 200."""
  c = load("invaspread").get_config()
  assert (c.batch_size, c.loss.temperature, c.head.out_dim, c.num_epochs) == (128, 0.1, 128, 301)
  assert (c.optimizer.name, c.optimizer.weight_decay, c.optimizer.momentum) == ("sgd", 5e-4, 0.9)
  view = invaspread.views(c)[0]
  assert (view.crop_scale, view.color_prob, view.hue, view.gray_prob, view.blur_prob) == (
      (0.2, 1.0), 1.0, 0.4, 0.2, 0.0)
  schedule = optim.lr_schedule(c.optimizer, c.batch_size, 390, 301 * 390)
  epochs = (0, 119, 120, 159, 160, 199, 200, 300)
  assert [float(schedule(e * 390)) for e in epochs] == pytest.approx(
      [0.03, 0.03, 0.003, 0.003, 0.0015, 0.0015, 0.0003, 0.0003])
  assert float(schedule(120 * 390 - 1)) == pytest.approx(0.03)


def test_smoke_run_through_the_cli(tmp_path, small_dataset):
  smoke_run("invaspread", tmp_path, small_dataset)
