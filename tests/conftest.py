"""Test set-up: 8 emulated CPU devices, set before JAX is imported anywhere."""
import os

# The emulated devices are threads; on a loaded 2-core machine one may reach a collective
# long after the others, so allow more than XLA's default 40 s before it aborts.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8"
                           " --xla_cpu_collective_call_terminate_timeout_seconds=900")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
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
