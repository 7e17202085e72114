"""BYOL: the symmetric loss, the target network and its EMA, asymmetric views, LARS with
the lr outside the momentum, 8 devices vs 1, and the command line."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from ssl_jax import ema, optim, parallel
from ssl_jax.methods import byol
import test_train
from test_config import load
from test_main import smoke_run

BATCH = 16


pytestmark = pytest.mark.usefixtures("fast_compiles")


# ---------------------------------------------------------------------------- loss

@pytest.mark.parametrize("sign, expected", [(1.0, 0.0), (0.0, 4.0), (-1.0, 8.0)])
def test_symmetric_loss_values(sign, expected):
  """p parallel to z: 0; orthogonal: 2 + 2 = 4; opposite: 4 + 4 = 8 (METHODS.md §10.6)."""
  p = jnp.array([[3.0, 0.0], [0.0, 0.5]])
  z = sign * p if sign else jnp.array([[0.0, 2.0], [1.0, 0.0]])
  assert float(byol.symmetric_loss([p, p], [z, z])) == pytest.approx(expected, abs=1e-6)


def test_loss_sends_no_gradient_to_the_targets():
  p, z = jnp.array([[1.0, 0.2]]), jnp.array([[0.3, 1.0]])
  grads = jax.grad(lambda p, z: byol.symmetric_loss([p, p], [z, z]), argnums=(0, 1))(p, z)
  assert np.abs(grads[0]).max() > 0
  np.testing.assert_array_equal(grads[1], 0)


@pytest.mark.parametrize("step, expected", [(0, 0.996), (500, 0.998), (1000, 1.0)])
def test_momentum_schedule(step, expected):
  c = load("byol").get_config()
  c.run.total_steps = 1000
  assert float(byol.momentum(step, c)) == pytest.approx(expected, abs=1e-7)


# ------------------------------------------------------------- config and network

def test_paper_settings_and_asymmetric_views():
  c = load("byol").get_config()
  assert (c.batch_size, c.optimizer.name, c.optimizer.base_lr) == (4096, "lars_byol", 0.2)
  assert optim.scaled_lr(c.optimizer, c.batch_size) == pytest.approx(3.2)
  assert (c.optimizer.weight_decay, c.optimizer.warmup_epochs) == (1.5e-6, 10)
  view1, view2 = byol.views(c)
  assert (view1.blur_prob, view2.blur_prob) == (1.0, 0.1)
  assert (view1.solarize_prob, view2.solarize_prob) == (0.0, 0.2)
  for v in (view1, view2):
    assert (v.brightness, v.contrast, v.saturation, v.hue) == (0.4, 0.4, 0.2, 0.1)
    assert (v.color_prob, v.gray_prob, v.brightness_impl) == (0.8, 0.2, "additive")


def test_heads_and_target_initialisation():
  c = load("byol").get_config("smoke")
  c.head.hidden_dim, c.byol.predictor_hidden_dim = 48, 40
  variables = jax.jit(lambda rng: byol.init(rng, c, None))(jax.random.key(0))
  params, target = variables["params"], variables["method_state"]["target_params"]
  projector, predictor = params["encoder"]["head"], params["predictor"]
  width = byol.encoder(c).backbone.num_features
  assert projector["Dense_0"]["kernel"].shape == (width, 48) and "bias" in projector["Dense_0"]
  assert projector["Dense_1"]["kernel"].shape == (48, 256) and "bias" not in projector["Dense_1"]
  assert predictor["Dense_0"]["kernel"].shape == (256, 40)
  assert predictor["Dense_1"]["kernel"].shape == (40, 256)
  assert "BatchNorm_0" in variables["batch_stats"]["encoder"]["head"]
  # The target has the online encoder's structure but its own random weights.
  assert jax.tree.structure(target) == jax.tree.structure(params["encoder"])
  kernel = lambda tree: tree["head"]["Dense_0"]["kernel"]
  assert not np.allclose(kernel(target), kernel(params["encoder"]))


def test_lars_byol_keeps_the_lr_outside_the_momentum():
  """Step 1 with lr 1, step 2 with lr 0.5: BYOL's LARS gives 0.5 (0.9 g + g) on step 2;
  SimCLR's (lr inside the buffer) would give 0.9 g + 0.5 g."""
  opt = ml_collections.ConfigDict(dict(name="lars_byol", weight_decay=0.1, momentum=0.9,
                                       trust_coefficient=1e-3))
  tx = optim.make_optimizer(opt, lambda step: jnp.where(step == 0, 1.0, 0.5))
  params = {"Dense_0": {"kernel": jnp.full((2, 2), 2.0), "bias": jnp.ones(2)}}
  grads = jax.tree.map(lambda p: jnp.full_like(p, 0.3), params)
  first, state = tx.update(grads, tx.init(params), params)
  second, _ = tx.update(grads, state, params)
  np.testing.assert_allclose(first["Dense_0"]["bias"], -0.3, rtol=1e-6)   # no decay, no trust
  np.testing.assert_allclose(second["Dense_0"]["bias"], -0.5 * 1.9 * 0.3, rtol=1e-6)
  w, d = params["Dense_0"]["kernel"], grads["Dense_0"]["kernel"] + 0.1 * 2.0
  trust = 1e-3 * jnp.linalg.norm(w) / jnp.linalg.norm(d)
  np.testing.assert_allclose(first["Dense_0"]["kernel"], -trust * d, rtol=1e-5)
  np.testing.assert_allclose(second["Dense_0"]["kernel"], -0.5 * 1.9 * trust * d, rtol=1e-5)


# ------------------------------------------------------------------ the real step

def tiny_config():
  c = load("byol").get_config("smoke")
  c.batch_size, c.image_size = BATCH, 16
  c.model.width = 1 / 16
  c.head.hidden_dim, c.byol.predictor_hidden_dim = 32, 32
  c.run.update(steps_per_epoch=10, total_steps=4)
  return c


def run_steps(devices):
  config = tiny_config()
  batch = test_train.random_batch(BATCH)
  return (config, *test_train.run_steps(config, devices, batch))


@pytest.fixture(scope="module")
def runs():
  assert jax.device_count() == 8
  return run_steps(jax.devices()), run_steps(jax.devices()[:1])


def test_8_devices_equal_1_device(runs):
  """Global BN in both networks: the maths do not depend on the device count."""
  (_, s8, m8), (_, s1, m1) = runs
  for a, b in zip(m8, m1):
    for key in ("loss", "grad_norm", "embedding_std", "ema_momentum"):
      np.testing.assert_allclose(a[key], b[key], rtol=2e-5, err_msg=key)
  test_train.assert_states_close(s8[-1], s1[-1])


def test_target_changes_only_by_the_ema(runs):
  (config, states, metrics), _ = runs
  assert [float(m["ema_momentum"]) for m in metrics] == pytest.approx(
      [float(byol.momentum(t, config)) for t in range(len(metrics))])
  for t, (before, after) in enumerate(zip(states, states[1:])):
    expected = ema.ema_update(before.method_state["target_params"], after.params["encoder"],
                              byol.momentum(t, config))
    for a, b in zip(jax.tree.leaves(after.method_state["target_params"]),
                    jax.tree.leaves(expected)):
      np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    # The target's BN statistics moved too: it runs BN in train mode on its own batches.
    moved = jax.tree.map(lambda a, b: np.abs(a - b).max(),
                         before.method_state["target_batch_stats"],
                         after.method_state["target_batch_stats"])
    assert max(jax.tree.leaves(moved)) > 0


def test_loss_has_no_gradient_wrt_the_target(runs):
  (config, states, _), _ = runs
  state = states[1]
  mesh = parallel.make_mesh(jax.devices()[:1])
  x = jnp.asarray(np.random.default_rng(2).uniform(size=(2, BATCH, 16, 16, 3)), jnp.float32)

  def loss(params, target_params):
    ms = dict(state.method_state, target_params=target_params)
    value, _ = byol.loss_fn(params, state.replace(method_state=ms), {"views": [x[0], x[1]]},
                            None, state.step, config=config)
    return value
  grads = jax.jit(jax.shard_map(jax.grad(loss, argnums=(0, 1)), mesh=mesh, in_specs=P(),
                                out_specs=P()))(state.params, state.method_state["target_params"])
  assert max(float(np.abs(g).max()) for g in jax.tree.leaves(grads[0])) > 0
  for g in jax.tree.leaves(grads[1]):
    np.testing.assert_array_equal(g, 0)


def test_smoke_run_through_the_cli(tmp_path, small_dataset):
  lines = smoke_run("byol", tmp_path, small_dataset)
  assert all(l["loss"] <= 8 for l in lines[:3])
  assert lines[0]["ema_momentum"] == pytest.approx(0.97)   # the smoke recipe's base


def test_lightly_options_constant_momentum_copied_target_and_mean_negative_cosine():
  """lightly's BYOL (cifar10): EMA 0.99 at every step (final_momentum = base), the target a
  copy of the online encoder, loss 0.5 (-cos(p1, z2) - cos(p2, z1))."""
  c = load("byol").get_config("smoke")
  c.byol.update(base_momentum=0.99, final_momentum=0.99, target_init="copy",
                loss="mean_negative_cosine")
  c.run.total_steps = 100
  assert [float(byol.momentum(s, c)) for s in (0, 50, 100)] == pytest.approx([0.99] * 3)
  variables = jax.jit(lambda rng: byol.init(rng, c, None))(jax.random.key(0))
  for a, b in zip(jax.tree.leaves(variables["params"]["encoder"]),
                  jax.tree.leaves(variables["method_state"]["target_params"])):
    np.testing.assert_array_equal(a, b)
  c.byol.target_init = "random"
  other = jax.jit(lambda rng: byol.init(rng, c, None))(jax.random.key(0))
  assert max(float(np.abs(a - b).max()) for a, b in zip(
      jax.tree.leaves(other["params"]["encoder"]),
      jax.tree.leaves(other["method_state"]["target_params"]))) > 0


def test_only_the_quickstart_zero_inits_the_basic_blocks():
  """Haiku's BlockV1 zero-inits bottleneck blocks only; BYOL's 190-step quickstart does not
  learn with unit scales in its ResNet-18 (experiments/RESULTS.md, 2026-12-02)."""
  from ssl_jax import config as config_lib  # pylint: disable=import-outside-toplevel
  get_config = load("byol").get_config
  for variant in [None, *set(config_lib.variant_names(get_config)) - {"quickstart", "cifar10"}]:
    assert get_config(variant).model.zero_init_residual == "bottleneck", variant
  assert get_config("quickstart").model.zero_init_residual == "all"
