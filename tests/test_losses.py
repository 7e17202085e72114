"""NT-Xent against hand-computed values (METHODS.md §6.6) and a direct reference."""
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from ssl_jax import losses, parallel

pytestmark = pytest.mark.usefixtures("fast_compiles")   # tiny programs: compiles dominate


def partners_identical_others_orthogonal(n, dim=8):
  z = np.eye(dim, dtype=np.float32)[:n] * 3.0   # norms != 1: the loss must normalise
  return jnp.asarray(z), jnp.asarray(z)


@pytest.mark.parametrize("n, temperature, expected", [
    (2, 0.5, math.log(1 + 2 * math.exp(-2))),     # 0.2395448
    (4, 0.1, math.log(1 + 6 * math.exp(-10))),    # 2.72362e-4
])
def test_nt_xent_orthogonal_negatives(n, temperature, expected):
  za, zb = partners_identical_others_orthogonal(n)
  loss = losses.nt_xent(za, zb, temperature)
  # float32 logsumexp of values near 1/temperature: absolute error ~1e-6.
  np.testing.assert_allclose(loss, expected, rtol=1e-5, atol=2e-6)


def test_nt_xent_values_from_the_sheet():
  za, zb = partners_identical_others_orthogonal(2)
  np.testing.assert_allclose(losses.nt_xent(za, zb, 0.5), 0.2395448, rtol=1e-6)
  np.testing.assert_allclose(2 * losses.nt_xent(za, zb, 0.5), 0.4790895, rtol=1e-6)


def test_nt_xent_collapsed_is_ln_2n_minus_1():
  z = jnp.ones((4, 5))
  np.testing.assert_allclose(losses.nt_xent(z, z, 0.1), math.log(7), rtol=1e-6)
  np.testing.assert_allclose(2 * losses.nt_xent(z, z, 0.1), 3.891820, rtol=1e-6)


def reference_nt_xent(za, zb, t):
  """The paper's L = 1/(2N) sum over 2N anchors, written out with loops."""
  z = np.concatenate([za, zb]).astype(np.float64)
  z /= np.linalg.norm(z, axis=1, keepdims=True)
  n2 = len(z)
  total = 0.0
  for i in range(n2):
    j = (i + n2 // 2) % n2
    sims = np.array([z[i] @ z[k] / t for k in range(n2) if k != i])
    total += -(z[i] @ z[j] / t) + np.log(np.exp(sims).sum())
  return total / n2


def test_nt_xent_matches_reference_on_random_embeddings():
  rng = np.random.default_rng(0)
  za, zb = rng.normal(size=(2, 6, 5)).astype(np.float32)
  np.testing.assert_allclose(losses.nt_xent(za, zb, 0.3), reference_nt_xent(za, zb, 0.3),
                             rtol=1e-5)


def test_nt_xent_gathered_over_8_devices_equals_single_device():
  mesh = parallel.make_mesh()
  assert mesh.devices.size == 8
  rng = np.random.default_rng(1)
  za, zb = (jnp.asarray(x) for x in rng.normal(size=(2, 16, 4)).astype(np.float32))

  @jax.jit
  def sharded(za, zb):
    per_device = jax.shard_map(
        lambda a, b: jax.lax.pmean(losses.nt_xent(a, b, 0.2, parallel.AXIS), parallel.AXIS),
        mesh=mesh, in_specs=(P(parallel.AXIS), P(parallel.AXIS)), out_specs=P(),
        check_vma=False)
    return per_device(za, zb)

  single = functools.partial(losses.nt_xent, temperature=0.2)
  np.testing.assert_allclose(sharded(za, zb), single(za, zb), rtol=1e-5)
  g_sharded = jax.grad(sharded, argnums=(0, 1))(za, zb)
  g_single = jax.grad(single, argnums=(0, 1))(za, zb)
  for a, b in zip(g_sharded, g_single):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
