"""LARS masks and update rule, learning-rate scaling and schedules."""
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from ssl_jax import optim
from ssl_jax.errors import ConfigError


def opt_config(**overrides):
  c = ml_collections.ConfigDict(dict(
      name="lars", base_lr=0.3, lr_scaling="linear", weight_decay=1e-6, momentum=0.9,
      trust_coefficient=1e-3, warmup_epochs=10.0, schedule="cosine"))
  c.update(overrides)
  return c


PARAMS = {"Conv_0": {"kernel": jnp.full((3, 3, 2, 4), 0.5)},
          "BatchNorm_0": {"scale": jnp.ones(4), "bias": jnp.zeros(4)},
          "Dense_0": {"kernel": jnp.full((4, 2), -1.0), "bias": jnp.full(2, 0.1)}}


def test_kernel_mask_excludes_biases_and_norm_parameters():
  mask = optim.kernel_mask(PARAMS)
  assert mask == {"Conv_0": {"kernel": True}, "BatchNorm_0": {"scale": False, "bias": False},
                  "Dense_0": {"kernel": True, "bias": False}}


def test_lars_first_step_matches_simclr_rule():
  """v = lr * trust * (g + wd w) with trust = eta |w| / |g + wd w| on kernels only."""
  lr, wd, eta = 0.5, 1e-2, 1e-3
  tx = optim.make_optimizer(opt_config(weight_decay=wd, trust_coefficient=eta), lr)
  grads = jax.tree.map(lambda p: jnp.full_like(p, 0.2), PARAMS)
  updates, state = tx.update(grads, tx.init(PARAMS), PARAMS)
  w, g = PARAMS["Conv_0"]["kernel"], grads["Conv_0"]["kernel"]
  d = g + wd * w
  trust = eta * jnp.linalg.norm(w) / jnp.linalg.norm(d)
  np.testing.assert_allclose(updates["Conv_0"]["kernel"], -lr * trust * d, rtol=1e-6)
  # Biases and BN parameters: plain momentum SGD, no decay, no trust ratio.
  np.testing.assert_allclose(updates["Dense_0"]["bias"], -lr * 0.2 * np.ones(2), rtol=1e-6)
  np.testing.assert_allclose(updates["BatchNorm_0"]["scale"], -lr * 0.2 * np.ones(4), rtol=1e-6)
  # Second step: the lr sits inside the momentum buffer, v <- 0.9 v + lr * (...).
  updates2, _ = tx.update(grads, state, PARAMS)
  np.testing.assert_allclose(updates2["Dense_0"]["bias"], -lr * 0.2 * 1.9 * np.ones(2),
                             rtol=1e-6)


@pytest.mark.parametrize("rule, batch, expected", [
    ("linear", 4096, 0.3 * 16), ("linear", 512, 0.6), ("sqrt", 4096, 0.3 * 64),
    ("none", 512, 0.3)])
def test_lr_scaling(rule, batch, expected):
  assert optim.scaled_lr(opt_config(lr_scaling=rule), batch) == pytest.approx(expected)


def test_simclr_v2_sqrt_rule_gives_4_8_at_4096():
  assert optim.scaled_lr(opt_config(base_lr=0.075, lr_scaling="sqrt"), 4096) == pytest.approx(4.8)


def test_warmup_cosine_values():
  # 100 steps per epoch, 10 warmup epochs, 100 epochs, peak 0.3 * 1024 / 256 = 1.2.
  schedule = optim.lr_schedule(opt_config(), 1024, 100, 10_000)
  assert float(schedule(0)) == 0.0
  assert float(schedule(500)) == pytest.approx(0.6)
  assert float(schedule(1000)) == pytest.approx(1.2)
  mid = 1000 + 9000 // 2
  assert float(schedule(mid)) == pytest.approx(0.6, rel=1e-4)
  quarter = 1000 + 9000 // 4
  assert float(schedule(quarter)) == pytest.approx(1.2 * 0.5 * (1 + math.cos(math.pi / 4)),
                                                   rel=1e-4)
  assert float(schedule(10_000)) == pytest.approx(0.0, abs=1e-7)


def test_unknown_optimizer_and_rule_are_config_errors():
  with pytest.raises(ConfigError, match="config.optimizer.name"):
    optim.make_optimizer(opt_config(name="adagrad"), 0.1)
  with pytest.raises(ConfigError, match="config.optimizer.lr_scaling"):
    optim.scaled_lr(opt_config(lr_scaling="cubic"), 256)


def test_step_schedule_with_factors_and_the_default_tenfold_steps():
  """lr_steps_factors are factors of the peak from each epoch on (InvaSpread: 0.1, 0.05,
  0.01); without them each step is x0.1 once more (MoCo v1)."""
  steps = opt_config(schedule="steps", warmup_epochs=0, lr_scaling="none", base_lr=0.03,
                     lr_steps_epochs=(2, 3), lr_steps_factors=(0.1, 0.05))
  schedule = optim.lr_schedule(steps, 128, 10, 50)
  assert [float(schedule(s)) for s in (0, 19, 20, 29, 30, 49)] == pytest.approx(
      [0.03, 0.03, 0.003, 0.003, 0.0015, 0.0015])
  steps.lr_steps_factors = ()
  schedule = optim.lr_schedule(steps, 128, 10, 50)
  assert [float(schedule(s)) for s in (19, 20, 30)] == pytest.approx([0.03, 0.003, 0.0003])
  steps.lr_steps_factors = (0.1,)
  with pytest.raises(ConfigError, match="config.optimizer.lr_steps_factors=.0.1,. needs one"):
    optim.lr_schedule(steps, 128, 10, 50)


def test_adam_adds_l2_weight_decay_to_the_gradient():
  """torch.optim.Adam(weight_decay=wd) (lightly's SwAV): the first step is -lr sign(g + wd w)
  for every parameter, biases included (Adam's first step is the sign)."""
  tx = optim.make_optimizer(opt_config(name="adam", weight_decay=0.5), 0.1)
  params = {"w": jnp.array([1.0, -2.0]), "bias": jnp.array([4.0])}
  grads = {"w": jnp.array([-0.2, 0.5]), "bias": jnp.array([-1.0])}
  updates, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(updates["w"], [-0.1, 0.1], rtol=1e-5)      # g + 0.5 w = 0.3, -0.5
  np.testing.assert_allclose(updates["bias"], [-0.1], rtol=1e-5)        # -1 + 2 = 1
