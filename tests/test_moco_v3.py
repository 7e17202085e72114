"""MoCo v3: the loss against METHODS.md's values, the momentum encoder, 8 devices = 1 device."""
import math
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import test_train
from test_main import smoke_run
from test_train import max_diff
from jax.sharding import PartitionSpec as P

from ssl_jax import config as config_lib, ema, optim, parallel
from ssl_jax.errors import ConfigError
from ssl_jax.methods import moco_v3

sys.path.insert(0, "configs")
import moco_v3 as moco_v3_config  # noqa: E402  pylint: disable=wrong-import-position

pytestmark = pytest.mark.usefixtures("fast_compiles")   # tiny programs: compiles dominate


def symmetric_loss(q1, q2, k1, k2, tau, axis_name=None):
  return (moco_v3.contrastive_loss(q1, k2, tau, axis_name)
          + moco_v3.contrastive_loss(q2, k1, tau, axis_name))


@pytest.mark.parametrize("n, tau, expected", [
    (256, 1.0, 18.207468),                                       # METHODS.md §12.6
    (256, 0.2, 4 * 0.2 * math.log(1 + 255 * math.exp(-5.0))),
])
def test_identical_positives_and_orthogonal_negatives(n, tau, expected):
  eye = jnp.eye(n) * 3.0   # scale does not matter: the loss normalises
  assert float(symmetric_loss(eye, eye, eye, eye, tau)) == pytest.approx(expected, rel=1e-5)


def test_collapse_gives_4_tau_log_n():
  ones = jnp.ones((64, 8))
  for tau in (0.2, 1.0):
    assert float(symmetric_loss(ones, ones, ones, ones, tau)) == pytest.approx(
        4 * tau * math.log(64), rel=1e-5)


def test_loss_is_cross_entropy_times_two_tau():
  q, k = jax.random.normal(jax.random.key(0), (2, 6, 5))
  qn = q / np.linalg.norm(q, axis=1, keepdims=True)
  kn = k / np.linalg.norm(k, axis=1, keepdims=True)
  for tau in (0.2, 1.0):
    logits = np.asarray(qn @ kn.T / tau, np.float64)
    ce = np.mean(np.log(np.exp(logits).sum(1)) - np.diag(logits))
    assert float(moco_v3.contrastive_loss(q, k, tau, None)) == pytest.approx(2 * tau * ce,
                                                                              rel=1e-5)


def test_keys_carry_no_gradient():
  q, k = jax.random.normal(jax.random.key(0), (2, 6, 5))
  grad_q, grad_k = jax.grad(moco_v3.contrastive_loss, argnums=(0, 1))(q, k, 0.2, None)
  assert np.all(grad_k == 0) and np.any(grad_q != 0)


def test_gathered_keys_with_row_offsets_equal_one_device():
  q1, q2, k1, k2 = jax.random.normal(jax.random.key(0), (4, 16, 8))
  mesh = parallel.make_mesh()
  sharded = jax.shard_map(
      lambda *xs: jax.lax.pmean(symmetric_loss(*xs, 0.2, parallel.AXIS), parallel.AXIS),
      mesh=mesh, in_specs=(P(parallel.AXIS),) * 4, out_specs=P(), check_vma=False)
  np.testing.assert_allclose(sharded(q1, q2, k1, k2), symmetric_loss(q1, q2, k1, k2, 0.2),
                             rtol=1e-5)


def test_momentum_schedule():
  values = [float(ema.cosine_momentum(t, 100, 0.99)) for t in (0, 50, 100)]
  np.testing.assert_allclose(values, [0.99, 0.995, 1.0], atol=1e-7)


def test_original_heads_and_views():
  vit = moco_v3_config.get_config()
  r50 = moco_v3_config.get_config("resnet50")
  assert (vit.model.name, vit.model.width, vit.model.num_heads, vit.model.patch_size) == (
      "vit", 384, 12, 16)
  assert vit.model.frozen_patch_embed and vit.model.pos_embed == "sincos"
  assert (vit.head.num_layers, r50.head.num_layers) == (3, 2)
  assert (vit.predictor.last_bn, r50.predictor.last_bn) == (True, False)
  assert (vit.loss.temperature, r50.loss.temperature) == (0.2, 1.0)
  assert (vit.optimizer.name, vit.optimizer.weight_decay, vit.optimizer.decay_all) == (
      "adamw", 0.1, True)
  assert (r50.optimizer.name, r50.optimizer.base_lr, r50.optimizer.weight_decay) == (
      "lars_byol", 0.3, 1e-6)
  assert optim.scaled_lr(vit.optimizer, vit.batch_size) == pytest.approx(2.4e-3)
  first, second = moco_v3.views(vit)
  assert (first.blur_prob, first.solarize_prob, second.blur_prob, second.solarize_prob) == (
      1.0, 0.0, 0.1, 0.2)
  assert (first.brightness, first.saturation, first.hue) == (0.4, 0.2, 0.1)


def init(config):
  return jax.jit(lambda key: moco_v3.init(key, config, None))(jax.random.key(0))


@pytest.mark.parametrize("variant", ["resnet50", "cifar10_vit"])
def test_extra_variants_validate(variant):
  config_lib.validate(moco_v3_config.get_config(variant), device_count=8)


def test_init_copies_the_encoder_into_the_momentum_encoder():
  config = moco_v3_config.get_config("smoke")
  variables = init(config)
  target = variables["method_state"]
  assert set(variables["params"]) == {"encoder", "predictor"}
  for a, b in zip(jax.tree.leaves(variables["params"]["encoder"]),
                  jax.tree.leaves(target["params"])):
    np.testing.assert_array_equal(a, b)
  assert jax.tree.structure(target["batch_stats"]) == jax.tree.structure(
      variables["batch_stats"]["encoder"])


# ----------------------------------------------------- the whole step, 1 vs 8 devices

def tiny_config():
  config = moco_v3_config.get_config("smoke")
  config.batch_size = 16
  config.run.total_steps = 4   # the momentum moves from 0.99 to 1 over 4 steps
  # SGD, no warmup: both steps move the weights, in proportion to the gradients (Adam's
  # first step, about lr * sign(g), would turn rounding noise in tiny gradients into
  # differences of 2 lr). Weight decay on everything checks that frozen leaves stay fixed.
  config.optimizer.update(name="sgd", base_lr=0.5, weight_decay=0.1, warmup_epochs=0)
  return config


@pytest.fixture(scope="module")
def runs():
  return test_train.one_and_eight_devices(tiny_config(), test_train.random_batch(),
                                          steps_per_epoch=2, total_steps=4)


def test_eight_devices_equal_one(runs):
  test_train.assert_one_equals_eight(runs, ("loss", "grad_norm", "embedding_std", "momentum"))
  (s1, _), (s8, _) = runs
  for a, b in zip(jax.tree.leaves(s1[-1].batch_stats), jax.tree.leaves(s8[-1].batch_stats)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_momentum_encoder_follows_the_ema_before_each_step(runs):
  (states, metrics), _ = runs
  assert float(metrics[0]["momentum"]) == pytest.approx(0.99)
  # Step t sets target <- m_t target + (1 - m_t) params_t with the params *before* step t.
  for t in (0, 1):
    m = float(ema.cosine_momentum(t, 4, 0.99))
    expected = jax.tree.map(lambda tgt, p: m * tgt + (1 - m) * p,
                            states[t].method_state["params"], states[t].params["encoder"])
    assert max_diff(expected, states[t + 1].method_state["params"]) < 1e-6
  assert max_diff(states[0].params, states[2].params) > 1e-4    # the step trained
  assert max_diff(states[0].method_state["params"], states[2].method_state["params"]) > 0
  # The frozen random patch projection never moves, in either encoder.
  frozen = lambda tree: tree["backbone"]["frozen_patch_embed"]
  assert max_diff(frozen(states[0].params["encoder"]), frozen(states[2].params["encoder"])) == 0
  # m x + (1 - m) x, the original's update too, is x within float32 rounding
  assert max_diff(frozen(states[0].method_state["params"]),
                  frozen(states[2].method_state["params"])) < 1e-6


def test_momentum_encoder_keeps_its_own_batch_norm_statistics(runs):
  (states, _), _ = runs
  before, after = states[0].method_state["batch_stats"], states[2].method_state["batch_stats"]
  assert max_diff(before, after) > 0
  assert max_diff(after, states[2].batch_stats["encoder"]) > 0


def test_encode_gives_backbone_features():
  config = tiny_config()
  variables = init(config)
  feats = moco_v3.encode({"params": variables["params"], "batch_stats": variables["batch_stats"]},
                         jnp.zeros((3, 16, 16, 3)), config)
  assert feats.shape == (3, config.model.width) and feats.dtype == jnp.float32


def test_smoke_run_through_the_cli(tmp_path, small_dataset):
  lines = smoke_run("moco_v3", tmp_path, small_dataset)
  assert lines[0]["momentum"] == pytest.approx(0.99)


def test_config_errors_name_the_field():
  config = moco_v3_config.get_config("smoke")
  config.predictor.hidden_dim = 0
  with pytest.raises(ConfigError, match="config.predictor.hidden_dim=0"):
    config_lib.validate(config)
  config = moco_v3_config.get_config("smoke")
  config.momentum.base = 1.5
  with pytest.raises(ConfigError, match="config.momentum.base=1.5"):
    config_lib.validate(config)
