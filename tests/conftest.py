"""Test set-up: 8 emulated CPU devices, set before JAX is imported anywhere."""
import os

# The emulated devices are threads; on a loaded 2-core machine one may reach a collective
# long after the others, so allow more than XLA's default 40 s before it aborts.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8"
                           " --xla_cpu_collective_call_terminate_timeout_seconds=900")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# XLA's CPU client runs each device's share of a step on a pool of max(cores, devices)
# threads; with steps queued asynchronously (no host sync between them) on a machine of one
# or two cores, that pool deadlocks inside the first collective. Four threads per emulated
# device keep queued steps moving (tested on one core with 5,000 queued steps).
os.environ.setdefault("PJRT_NPROC", "32")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


import pytest  # noqa: E402  (after XLA_FLAGS is set)


@pytest.fixture(scope="module")
def fast_compiles():
  """For modules of tiny steps, where XLA's optimisation passes would dominate run time."""
  import jax  # pylint: disable=import-outside-toplevel
  previous = jax.config.read("jax_disable_most_optimizations")
  jax.config.update("jax_disable_most_optimizations", True)
  yield
  jax.config.update("jax_disable_most_optimizations", previous)
