"""SwAV: Sinkhorn codes and the swapped-prediction loss against METHODS.md §9.6, Sinkhorn
over 8 devices, the queue, frozen and normalised prototypes, LARC, multi-crop views, 8
devices vs 1, and the command line."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from ssl_jax import optim, parallel
from ssl_jax.errors import ConfigError
from ssl_jax.methods import swav
from ssl_jax.state import TrainState
from test_config import load
from test_main import smoke_run
from test_train import one_step, random_batch

pytestmark = pytest.mark.usefixtures("fast_compiles")

S = jnp.array([[.9, .1, 0], [.8, .3, .1], [.2, .1, .7], [0, .5, .5]])


def smoke_config(**swav_fields):
  config = load("swav").get_config("smoke")
  config.batch_size = 16
  config.swav.update(dict(dict(queue_length=16), **swav_fields))
  return config


# ---------------------------------------------------------------- codes and loss

def test_uniform_scores_collapse_to_log_k():
  """Equal scores: q = 1/K and a uniform prediction, loss ln 3000 = 8.006368 (README)."""
  scores = [jnp.zeros((4, 3000))] * 8
  codes = [swav.sinkhorn(scores[a], 0.05, 3) for a in (0, 1)]
  np.testing.assert_allclose(codes[0], 1 / 3000, rtol=1e-5)
  loss = swav.swapped_prediction_loss(scores, codes, (0, 1), 0.1)
  assert float(loss) == pytest.approx(8.006368, rel=1e-6)


def test_sinkhorn_example():
  """B = 4, K = 3, eps 0.05, 3 iterations: each code sums to 1; prototype marginals only
  approximately uniform after 3 iterations (METHODS.md §9.6)."""
  q = np.asarray(swav.sinkhorn(S, 0.05, 3))
  expected = [[0.999045, 9.517e-4, 2.998e-6], [0.722290, 0.277592, 1.184e-4],
              [2.303e-7, 2.639e-4, 0.999736], [5.241e-9, 0.977251, 0.022749]]
  np.testing.assert_allclose(q, expected, rtol=2e-3, atol=1e-6)
  np.testing.assert_allclose(q.sum(1), 1.0, rtol=1e-6)
  np.testing.assert_allclose(q.sum(0), [1.721, 1.256, 1.023], atol=1e-3)


def test_swapped_prediction_example_and_gradients():
  """The same S for both crops, tau 0.1: 0.527944; no gradient into the codes."""
  q = swav.sinkhorn(S, 0.05, 3)
  loss = swav.swapped_prediction_loss([S, S], [q, q], (0, 1), 0.1)
  assert float(loss) == pytest.approx(0.527944, rel=1e-5)
  grad_q = jax.grad(lambda q: swav.swapped_prediction_loss([S, S], [q, q], (0, 1), 0.1))(q)
  np.testing.assert_array_equal(grad_q, 0)


def test_loss_averages_over_other_crops_then_assignment_crops():
  rng = np.random.default_rng(0)
  scores = [jnp.asarray(rng.normal(size=(4, 5)), jnp.float32) for _ in range(4)]
  codes = [jax.nn.softmax(jnp.asarray(rng.normal(size=(4, 5)))) for _ in range(2)]
  ce = lambda q, s: -np.mean(np.sum(q * jax.nn.log_softmax(s / 0.1), -1))  # noqa: E731
  expected = np.mean([np.mean([ce(codes[i], scores[v]) for v in range(4) if v != a])
                      for i, a in enumerate((0, 1))])
  loss = swav.swapped_prediction_loss(scores, codes, (0, 1), 0.1)
  assert float(loss) == pytest.approx(expected, rel=1e-5)


def sharded_codes(devices, scores, queue, kernel, use_queue, config):
  mesh = parallel.make_mesh(devices)
  fn = functools.partial(swav.assign_codes, config=config)
  fn = jax.jit(jax.shard_map(fn, mesh=mesh, in_specs=(P(parallel.AXIS), P(), P(), P()),
                             out_specs=P(parallel.AXIS), check_vma=False))
  return np.asarray(fn(scores, queue, kernel, use_queue))


@pytest.mark.parametrize("use_queue", [False, True])
def test_sinkhorn_on_8_devices_equals_1_device(use_queue):
  """Row sums all-reduced, columns local, B = global columns (queue rows included)."""
  config = smoke_config()
  rng = np.random.default_rng(0)
  unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)  # noqa: E731
  kernel = unit(rng.normal(size=(7, 8))).T.astype(np.float32)      # (dim 8, K 7)
  z = unit(rng.normal(size=(16, 8))).astype(np.float32)
  queue = unit(rng.normal(size=(32, 8))).astype(np.float32)
  scores = z @ kernel
  one, eight = (sharded_codes(d, scores, queue, kernel, use_queue, config)
                for d in (jax.devices()[:1], jax.devices()))
  np.testing.assert_allclose(eight, one, rtol=1e-5, atol=1e-7)
  expected = swav.sinkhorn(np.concatenate([queue @ kernel, scores]) if use_queue else scores,
                           0.05, 3)[-16:]
  np.testing.assert_allclose(one, expected, rtol=1e-5, atol=1e-7)


# ----------------------------------------------------- queue, prototypes, optimizer

def test_queue_is_fifo_and_used_once_full():
  queue, used = jnp.zeros((2, 6, 1)), []
  for t in range(4):   # global batches of 2 rows, filled with t + 1
    used.append(bool(swav.queue_in_use(queue)))
    queue = swav.push(queue, jnp.full((2, 2, 1), t + 1.0))
  np.testing.assert_array_equal(queue[0, :, 0], [4, 4, 3, 3, 2, 2])   # newest on top
  assert used == [False, False, False, True]   # the last row is non-zero from step 3


def test_update_pushes_only_after_the_start_epoch_and_normalises_prototypes():
  config = smoke_config(queue_length=4, queue_start_epoch=1)
  config.run.steps_per_epoch = 3
  params = {"prototypes": {"kernel": jnp.full((3, 5), 2.0)}, "head": {"w": jnp.ones(2)}}
  state = TrainState(step=jnp.int32(0), params=params, batch_stats={}, opt_state=(),
                     method_state=dict(queue=jnp.zeros((2, 4, 3))), rng=jax.random.key(0))
  aux = dict(batch_stats={}, embeddings=jnp.ones((2, 2, 3)))
  before = swav.update(state, params, aux, 2, config=config)
  after = swav.update(state, params, aux, 3, config=config)
  np.testing.assert_array_equal(before.method_state["queue"], 0)
  np.testing.assert_array_equal(after.method_state["queue"][:, :2], 1)
  np.testing.assert_array_equal(after.method_state["queue"][:, 2:], 0)
  kernel = after.params["prototypes"]["kernel"]
  np.testing.assert_allclose(np.linalg.norm(kernel, axis=0), 1.0, rtol=1e-6)


def test_no_queue_leaves_no_zero_size_array():
  """queue_length 0: no queue in the state (orbax refuses to save a zero-size array)."""
  config = smoke_config(queue_length=0)
  variables = jax.eval_shape(lambda: swav.init(jax.random.key(0), config, None))
  assert variables["method_state"] == {}
  params = {"prototypes": {"kernel": jnp.full((3, 5), 2.0)}}
  state = TrainState(step=jnp.int32(0), params=params, batch_stats={}, opt_state=(),
                     method_state={}, rng=jax.random.key(0))
  assert swav.update(state, params, dict(batch_stats={}), 0, config=config).method_state == {}


def test_prototypes_frozen_for_the_first_epoch_and_larc_moves_nothing():
  config = smoke_config(freeze_prototypes_epochs=1.0)
  config.run.steps_per_epoch = 4
  grads = {"prototypes": {"kernel": jnp.ones((3, 5))}, "head": {"kernel": jnp.ones(2)}}
  frozen = swav.adjust_grads(grads, jnp.int32(3), config=config)
  trained = swav.adjust_grads(grads, jnp.int32(4), config=config)
  np.testing.assert_array_equal(frozen["prototypes"]["kernel"], 0)
  np.testing.assert_array_equal(frozen["head"]["kernel"], 1)
  np.testing.assert_array_equal(trained["prototypes"]["kernel"], 1)
  # LARC leaves a zero gradient at zero, without weight decay: frozen = PyTorch's grad None.
  tx = optim.make_optimizer(config.optimizer, 0.5)
  params = {"prototypes": {"kernel": jnp.full((3, 5), 0.3)}, "head": {"kernel": jnp.ones(2)}}
  updates, _ = tx.update(frozen, tx.init(params), params)
  np.testing.assert_array_equal(updates["prototypes"]["kernel"], 0)
  assert float(jnp.abs(updates["head"]["kernel"]).max()) > 0


@pytest.mark.parametrize("wd, trust", [(0.0, 0.005), (1e-4, 0.0049975)])
def test_larc_trust_ratio(wd, trust):
  """w = [3, 4], g = [0.6, 0.8]: eta |w| / (|g| + wd |w|) (METHODS.md §14.1), on a bias
  too (LARC adapts every parameter); first step = -lr * trust * (g + wd w)."""
  tx = optim.scale_by_larc(1e-3, wd)
  w, g = jnp.array([3.0, 4.0]), jnp.array([0.6, 0.8])
  params = {"bias": w}
  updates, _ = tx.update({"bias": g}, tx.init(params), params)
  np.testing.assert_allclose(updates["bias"], trust * (g + wd * w), rtol=1e-5)


# ------------------------------------------------------------------ views, config

def test_multi_crop_views_and_size_groups():
  config = load("swav").get_config()
  views = swav.views(config)
  assert [v.size for v in views] == [224, 224] + [96] * 6
  assert views[0].crop_scale == (0.14, 1.0) and views[2].crop_scale == (0.05, 0.14)
  assert views[0].brightness_impl == "multiplicative" and views[0].hue == pytest.approx(0.2)
  crops = [jnp.zeros((2, s, s, 3)) for s in (32, 32, 16, 16, 16)]
  assert [len(g) for g in swav.size_groups(crops)] == [2, 3]


def test_architecture_follows_the_original():
  config = load("swav").get_config()
  params = jax.eval_shape(lambda: swav.init(jax.random.key(0), config, None))["params"]
  assert params["prototypes"]["kernel"].shape == (128, 3000)
  assert set(params["prototypes"]) == {"kernel"}                  # no bias
  head = params["head"]
  assert head["Dense_0"]["kernel"].shape == (2048, 2048) and "bias" in head["Dense_0"]
  assert head["Dense_1"]["kernel"].shape == (2048, 128) and "bias" in head["Dense_1"]


def test_init_as_the_original_for_larc():
  """No tensor LARC would step unadapted where the original does not: BN scales 1 (also
  each block's last BN), non-zero head biases, unit-norm prototypes."""
  params = swav.init(jax.random.key(0), smoke_config(), None)["params"]
  flat = {jax.tree_util.keystr(p): x for p, x in jax.tree_util.tree_leaves_with_path(params)}
  scales = [x for k, x in flat.items() if "'scale'" in k]
  assert scales and all(np.all(x == 1) for x in scales)
  assert all(np.abs(params["head"][d]["bias"]).max() > 0 for d in ("Dense_0", "Dense_1"))
  np.testing.assert_allclose(np.linalg.norm(params["prototypes"]["kernel"], axis=0), 1.0,
                             rtol=1e-6)


def test_queue_length_must_be_a_multiple_of_the_global_batch():
  config = smoke_config(queue_length=40)
  with pytest.raises(ConfigError, match="config.swav.queue_length=40"):
    swav.validate(config, 8)


# ------------------------------------------------------------------- whole step

@pytest.fixture(scope="module")
def runs():
  """Two steps with a queue of one global batch: filled by step 1, used in step 2; no
  colour ops, to keep the compile short."""
  config = smoke_config()
  config.augment.update(color_prob=0.0, gray_prob=0.0)
  batch = random_batch()
  return [one_step(config, devices, batch) for devices in (jax.devices()[:1], jax.devices())]


def test_8_devices_equal_1_device(runs):
  (s1, m1), (s8, m8) = runs
  assert float(m1["queue_in_use"]) == 1.0
  np.testing.assert_allclose(m8["loss"], m1["loss"], rtol=1e-5, atol=1e-6)
  for a, b in zip(jax.tree.leaves(s1.params), jax.tree.leaves(s8.params)):
    # unit BN scales (as the original): rounding of the global BN sums reaches ~3e-5
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=5e-5)
  np.testing.assert_allclose(s8.method_state["queue"], s1.method_state["queue"], atol=1e-5)


def test_step_normalises_prototypes_and_fills_the_queue(runs):
  (s1, _), _ = runs
  kernel = s1.params["prototypes"]["kernel"]
  np.testing.assert_allclose(np.linalg.norm(kernel, axis=0), 1.0, rtol=1e-5)
  queue = s1.method_state["queue"]
  assert queue.shape == (2, 16, 128)
  np.testing.assert_allclose(np.linalg.norm(queue, axis=-1), 1.0, rtol=1e-5)


def test_smoke_run_through_the_cli(tmp_path, small_dataset):
  smoke_run("swav", tmp_path, small_dataset)


def test_prototype_bias_is_lightlys_linear_and_refuses_a_queue():
  c = load("swav").get_config("smoke")
  c.swav.update(prototype_bias=True, queue_length=0)
  params = jax.jit(lambda rng: swav.init(rng, c, None))(jax.random.key(0))["params"]
  bias = params["prototypes"]["bias"]
  assert bias.shape == (c.swav.num_prototypes,) and float(np.abs(bias).max()) > 0
  np.testing.assert_allclose(np.linalg.norm(params["prototypes"]["kernel"], axis=0), 1, rtol=1e-5)
  c.swav.queue_length = 64
  with pytest.raises(ConfigError, match="config.swav.prototype_bias=True re-scores no queue"):
    swav.validate(c)
