"""EMA schedules and updates (METHODS.md §10.6, §14.2)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssl_jax import ema


@pytest.mark.parametrize("step, expected", [(0, 0.996), (500, 0.998), (1000, 1.0),
                                            (2000, 1.0)])
def test_cosine_momentum_values(step, expected):
  assert float(ema.cosine_momentum(step, 1000, 0.996)) == pytest.approx(expected, abs=1e-7)


def test_cosine_momentum_quarter_and_custom_final():
  # 1 - (1 - 0.99) (1 + cos(pi / 4)) / 2
  assert float(ema.cosine_momentum(250, 1000, 0.99)) == pytest.approx(
      1 - 0.01 * (1 + np.cos(np.pi / 4)) / 2, rel=1e-6)
  assert float(ema.cosine_momentum(1000, 1000, 0.9, final=0.95)) == pytest.approx(0.95)


def test_ema_update_is_the_convex_combination_leaf_by_leaf():
  target = {"a": jnp.array([1.0, 2.0]), "b": {"c": jnp.array(4.0)}}
  online = {"a": jnp.array([3.0, 0.0]), "b": {"c": jnp.array(0.0)}}
  out = ema.ema_update(target, online, 0.75)
  np.testing.assert_allclose(out["a"], [1.5, 1.5])
  np.testing.assert_allclose(out["b"]["c"], 3.0)
  # m = 1 keeps the target, m = 0 copies the online network.
  assert ema.ema_update(target, online, 1.0)["b"]["c"] == 4.0
  np.testing.assert_allclose(ema.ema_update(target, online, 0.0)["a"], online["a"])


def test_no_gradient_flows_through_the_ema_into_the_online_network():
  target, online = jnp.ones(3), jnp.arange(3.0)
  grad = jax.grad(lambda o: jnp.sum(ema.ema_update(target, o, 0.5) ** 2))(online)
  np.testing.assert_array_equal(grad, jnp.zeros(3))
