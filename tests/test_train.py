"""The generic sharded step: 8 devices equal 1 device on the same global batch."""
import sys

import jax
import numpy as np
import pytest

from ssl_jax import methods, optim, parallel, state as state_lib, train

sys.path.insert(0, "configs")
import simclr_v1  # noqa: E402  pylint: disable=wrong-import-position

pytestmark = pytest.mark.usefixtures("fast_compiles")   # tiny programs: compiles dominate


def tiny_config():
  c = simclr_v1.get_config("smoke")
  c.batch_size = 16
  c.image_size = 16
  c.model.width = 1 / 16
  c.augment.blur_prob = 0.5      # exercise every augmentation op
  c.augment.solarize_prob = 0.2
  return c


def random_batch(size=16, seed=0, index=None):
  """`size` random 24 px images with label 0 and index 0..size-1 (or `index`)."""
  rng = np.random.default_rng(seed)
  index = np.arange(size) if index is None else index
  return {"image": rng.integers(0, 256, (size, 24, 24, 3), dtype=np.uint8),
          "label": np.zeros(size, np.int32), "index": np.asarray(index, np.int32)}


def max_diff(a, b):
  """The largest absolute difference between two pytrees of arrays."""
  return max(jax.tree.leaves(jax.tree.map(lambda x, y: np.abs(x - y).max(), a, b)))


def run_steps(config, devices, batch, steps=2, num_classes=0, steps_per_epoch=10,
              total_steps=100):
  """The generic step `steps` times on `devices`: ([state before, after 1, ...], [metrics]).
  `batch` is one batch for every step, or a function of the step (0, 1, ...)."""
  mesh = parallel.make_mesh(devices)
  method = methods.get(config.method)
  schedule = optim.lr_schedule(config.optimizer, config.batch_size, steps_per_epoch,
                               total_steps)
  tx = optim.make_optimizer(config.optimizer, schedule, total_steps=total_steps)
  # As training does: one program (op by op, the first init of a model takes ~20 s).
  state = state_lib.state_initializer(method, config, tx, mesh, num_classes)(jax.random.key(0))
  step = train.make_train_step(method, config, mesh, tx, schedule)
  states, metrics = [jax.device_get(state)], []
  for t in range(steps):
    state, m = step(state, parallel.to_global(batch(t) if callable(batch) else batch, mesh))
    states.append(jax.device_get(state))
    metrics.append(jax.device_get(m))
  return states, metrics


def one_and_eight_devices(config, batch, **kwargs):
  """run_steps on one device and on all eight: ((states, metrics), (states, metrics))."""
  assert jax.device_count() == 8
  return tuple(run_steps(config, devices, batch, **kwargs)
               for devices in (jax.devices()[:1], jax.devices()))


def assert_one_equals_eight(runs, metric_keys):
  """The metrics of every step and the final params and method state agree."""
  (s1, m1), (s8, m8) = runs
  for step, (one, eight) in enumerate(zip(m1, m8)):
    for key in metric_keys:
      np.testing.assert_allclose(eight[key], one[key], rtol=2e-5, err_msg=f"{key}, step {step}")
  assert max_diff(s1[-1].params, s8[-1].params) < 5e-5
  assert max_diff(s1[-1].method_state, s8[-1].method_state) < 5e-5


def assert_states_close(a, b, names=("params", "batch_stats", "method_state"), rtol=1e-4,
                        atol=5e-5):
  """Leaf by leaf, the named fields of two TrainStates agree to the tolerances."""
  for name in names:
    for x, y in zip(jax.tree.leaves(getattr(a, name)), jax.tree.leaves(getattr(b, name))):
      np.testing.assert_allclose(x, y, rtol=rtol, atol=atol, err_msg=name)


def one_step(config, devices, batch, num_classes=0):
  """Two steps (the second uses the first's BN statistics and momentum): (state, metrics)."""
  states, metrics = run_steps(config, devices, batch, num_classes=num_classes)
  return states[-1], metrics[-1]


@pytest.fixture(scope="module")
def runs():
  config = tiny_config()
  batch = random_batch()
  assert jax.device_count() == 8
  return one_step(config, jax.devices()[:1], batch), one_step(config, jax.devices(), batch)


def test_loss_and_metrics_equal(runs):
  (_, m1), (_, m8) = runs
  for key in ("loss", "grad_norm", "embedding_std"):
    np.testing.assert_allclose(m8[key], m1[key], rtol=2e-5, err_msg=key)


def test_params_equal_after_two_steps(runs):
  (s1, _), (s8, _) = runs
  moved = jax.tree.map(lambda a, b: np.abs(a - b).max(), s1.params, s8.params)
  assert max(jax.tree.leaves(moved)) < 5e-5
  # ...and the step really changed the weights.
  init = state_lib.create_state(methods.get("simclr"), tiny_config(),
                            optim.make_optimizer(tiny_config().optimizer, 0.1),
                            jax.random.key(0))
  delta = jax.tree.map(lambda a, b: np.abs(a - b).max(), init.params, s1.params)
  assert max(jax.tree.leaves(delta)) > 1e-4


def test_global_batch_norm_statistics_equal(runs):
  (s1, _), (s8, _) = runs
  for a, b in zip(jax.tree.leaves(s1.batch_stats), jax.tree.leaves(s8.batch_stats)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  assert int(s1.step) == int(s8.step) == 2
