"""Blockwise contrastive losses: the same values and gradients as the dense ones, with
the logits of only `chunk_size` rows alive at a time."""
import functools

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from ssl_jax import losses, parallel
from ssl_jax.methods import moco_v3


def embeddings(n, d=8, seed=0):
  k1, k2 = jax.random.split(jax.random.key(seed))
  return jax.random.normal(k1, (n, d)), jax.random.normal(k2, (n, d))


pytestmark = pytest.mark.usefixtures("fast_compiles")


def value_and_grads(loss, args, chunk_size):
  fn = jax.value_and_grad(functools.partial(loss, chunk_size=chunk_size), argnums=(0, 1))
  return jax.jit(fn)(*args)


def assert_same_value_and_grads(loss, args, chunk_size):
  dense_value, dense_grads = value_and_grads(loss, args, 0)
  value, grads = value_and_grads(loss, args, chunk_size)
  np.testing.assert_allclose(value, dense_value, rtol=1e-5)
  for g, dense_g in zip(grads, dense_grads):
    np.testing.assert_allclose(g, dense_g, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("chunk_size", [5, 64])   # a padded last block; one dense call
def test_nt_xent_blockwise_equals_dense(chunk_size):
  za, zb = embeddings(12)
  loss = lambda a, b, chunk_size: losses.nt_xent(a, b, 0.3, chunk_size=chunk_size)
  assert_same_value_and_grads(loss, (za, zb), chunk_size)


def test_info_nce_queue_blockwise_equals_dense():
  q, k = embeddings(10)
  queue = losses.l2_normalize(jax.random.normal(jax.random.key(3), (40, 8)))
  loss = lambda q, k, chunk_size: losses.info_nce_queue(q, k, queue, 0.2, chunk_size).mean()
  assert_same_value_and_grads(loss, (q, k), 3)   # k gets no gradient: zeros both ways


def on_8_devices(loss):
  """The global mean of a per-device loss over the `batch` axis of 8 devices."""
  mesh = parallel.make_mesh(jax.devices()[:8])
  per_device = lambda a, b: jax.lax.pmean(loss(a, b), parallel.AXIS)
  return jax.shard_map(per_device, mesh=mesh, in_specs=(P(parallel.AXIS), P(parallel.AXIS)),
                       out_specs=P(), check_vma=False)


@pytest.mark.parametrize("name", ["nt_xent", "moco_v3"])
def test_gathered_blockwise_equals_dense_single_device(name):
  """Each device's rows against the keys of all 8 devices, 3 rows at a time (4 local
  rows: one padded block), against the dense loss of the whole batch on one device."""
  fns = {"nt_xent": lambda a, b, axis, c: losses.nt_xent(a, b, 0.2, axis, c),
         "moco_v3": lambda a, b, axis, c: (moco_v3.contrastive_loss(a, b, 0.2, axis, c) +
                                           moco_v3.contrastive_loss(b, a, 0.2, axis, c))}
  fn = fns[name]
  za, zb = embeddings(32, seed=1)
  single = lambda a, b: fn(a, b, None, 0)
  sharded = on_8_devices(lambda a, b: fn(a, b, parallel.AXIS, 3))
  value, grads = jax.jit(jax.value_and_grad(sharded, argnums=(0, 1)))(za, zb)
  dense_value, dense_grads = jax.jit(jax.value_and_grad(single, argnums=(0, 1)))(za, zb)
  np.testing.assert_allclose(value, dense_value, rtol=1e-5)
  for g, dense_g in zip(grads, dense_grads):
    np.testing.assert_allclose(g, dense_g, rtol=1e-4, atol=1e-6)


def test_blockwise_backward_holds_one_block_of_logits():
  """The compiled gradient's scratch memory: dense keeps n x 2n logits (8 MiB at n=1024),
  64-row blocks a 16th of that."""
  za, zb = embeddings(1024, d=16)

  def temp_bytes(chunk_size):
    grad = jax.jit(jax.grad(functools.partial(losses.nt_xent, temperature=0.1,
                                              chunk_size=chunk_size), argnums=(0, 1)))
    return grad.lower(za, zb).compile().memory_analysis().temp_size_in_bytes

  dense, chunked = temp_bytes(0), temp_bytes(64)
  assert dense >= 1024 * 2048 * 4           # at least one full logits matrix
  assert chunked < dense / 4
