"""One `batch` mesh axis over every device of every process, and helpers around it."""
import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P

AXIS = "batch"


def make_mesh(devices=None) -> jax.sharding.Mesh:
  """A 1-D mesh over `devices` (default: all devices of all processes)."""
  devices = jax.devices() if devices is None else list(devices)
  # Auto axes: jit/GSPMD reshards inputs as needed; shard_map states the layout explicitly.
  return jax.make_mesh((len(devices),), (AXIS,), devices=devices,
                       axis_types=(jax.sharding.AxisType.Auto,))


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharded(mesh) -> NamedSharding:
  return NamedSharding(mesh, P(AXIS))


def to_global(local_batch: dict, mesh) -> dict:
  """Turns this process's slice of the batch (numpy) into global arrays sharded on `batch`."""
  sharding = batch_sharded(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in local_batch.items()}


def gather(x: jax.Array) -> jax.Array:
  """All devices' rows, in device order; gradients flow back to each device's rows."""
  return jax.lax.all_gather(x, AXIS, axis=0, tiled=True)


def first_row(local_rows: int) -> jax.Array:
  """Index in the global batch of this device's first row."""
  return jax.lax.axis_index(AXIS) * local_rows


def global_mean(x: jax.Array) -> jax.Array:
  return jax.lax.pmean(jnp.mean(x, axis=0), AXIS)


# Multi-process: jax.device_put and np.asarray reach only this process's devices, so arrays
# that every process holds in full go through these instead.

def replicate(tree, mesh):
  """A pytree of arrays with the same value on every process -> replicated over `mesh`."""
  sharding = replicated(mesh)
  if jax.process_count() == 1:
    return jax.device_put(tree, sharding)

  def put(x):
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
      return jax.random.wrap_key_data(put(jax.random.key_data(x)),
                                      impl=jax.random.key_impl(x))
    return jax.make_array_from_process_local_data(sharding, np.asarray(x))
  return jax.tree.map(put, tree)


def shard_rows(x: np.ndarray, mesh) -> jax.Array:
  """`x`, held in full by every process, split by rows over the `batch` axis."""
  sharding = batch_sharded(mesh)
  if jax.process_count() == 1:
    return jax.device_put(x, sharding)
  return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])


def fetch(x: jax.Array) -> np.ndarray:
  """The whole of `x` on every process, even when other processes hold some of its rows."""
  if x.is_fully_addressable or x.is_fully_replicated:
    return np.asarray(x)
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))

