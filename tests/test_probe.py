"""The online linear probe: learns, ignores unlabelled rows, splits over devices exactly,
and never touches the encoder."""
import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from ssl_jax import parallel, probe
from ssl_jax.evaluate import linear
from test_train import one_step, tiny_config

pytestmark = pytest.mark.usefixtures("fast_compiles")


def probe_config(total_steps=200, lr=0.5):
  return ml_collections.ConfigDict(dict(eval=dict(online_probe=True, probe_lr=lr),
                                        run=dict(total_steps=total_steps)))


def train_probe(features, labels, devices, steps, config):
  mesh = parallel.make_mesh(devices)
  params = {"kernel": jnp.zeros((features.shape[1], 3)), "bias": jnp.zeros((3,))}
  state = {"params": params, "opt_state": probe.optimizer(config).init(params)}
  step = jax.jit(jax.shard_map(functools.partial(probe.train_step, config=config), mesh=mesh,
                               in_specs=(P(), P(parallel.AXIS), P(parallel.AXIS)),
                               out_specs=(P(), P()), check_vma=False))
  x, y = (parallel.to_global({"a": a}, mesh)["a"] for a in (features, labels))
  for _ in range(steps):
    state, metrics = step(state, x, y)
  return jax.device_get(state["params"]), jax.device_get(metrics)


def clusters(n, seed=0):
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, 3, n).astype(np.int32)
  centres = np.eye(3, 8, dtype=np.float32) * 4
  return centres[labels] + rng.normal(size=(n, 8)).astype(np.float32), labels


def test_probe_learns_separable_clusters_and_ignores_unlabelled_rows():
  features, labels = clusters(64)
  params, metrics = train_probe(features, labels, jax.devices(), 60, probe_config(60))
  test_features, test_labels = clusters(500, seed=1)
  assert linear.accuracy(params, test_features, test_labels)["top1"] > 0.95
  assert metrics["online_train_top1"] > 0.95
  # 16 extra rows with label -1 and wild features leave the probe exactly as it was.
  noise = np.random.default_rng(2).normal(size=(16, 8)).astype(np.float32) * 100
  with_unknown, _ = train_probe(np.concatenate([features, noise]),
                                np.concatenate([labels, -np.ones(16, np.int32)]),
                                jax.devices(), 60, probe_config(60))
  for key in params:
    np.testing.assert_allclose(with_unknown[key], params[key], rtol=1e-5, atol=1e-6)


def test_probe_on_eight_devices_equals_one_device():
  features, labels = clusters(64)
  one, _ = train_probe(features, labels, jax.devices()[:1], 5, probe_config(5))
  eight, _ = train_probe(features, labels, jax.devices(), 5, probe_config(5))
  for key in one:
    np.testing.assert_allclose(eight[key], one[key], rtol=1e-5, atol=1e-6)


def test_encoder_steps_are_identical_with_and_without_the_probe():
  rng = np.random.default_rng(0)
  batch = {"image": rng.integers(0, 256, (16, 24, 24, 3), dtype=np.uint8),
           "label": rng.integers(-1, 10, 16).astype(np.int32),
           "index": np.arange(16, dtype=np.int32)}
  (with_probe, metrics), (without, _) = (one_step(tiny_config(), jax.devices(), batch, n)
                                         for n in (10, 0))
  assert with_probe.probe and not without.probe and "online_train_top1" in metrics
  for a, b in zip(jax.tree.leaves(with_probe.params), jax.tree.leaves(without.params)):
    np.testing.assert_array_equal(a, b)
  moved = jax.tree.leaves(jax.tree.map(lambda a: np.abs(a).max(), with_probe.probe["params"]))
  assert max(moved) > 0   # the probe itself trained
