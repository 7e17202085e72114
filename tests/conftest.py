"""Test set-up: 8 emulated CPU devices, set before JAX is imported anywhere."""
import os

# One thread per op: pytest-xdist runs a test per core, so Eigen's intra-op threads would
# only contend with the other worker (13% less CPU time for the same tests on 2 cores).
ONE_THREAD_PER_OP = "--xla_cpu_multi_thread_eigen=false"
# The emulated devices are threads; on a loaded 2-core machine one may reach a collective
# long after the others, so allow more than XLA's default 40 s before it aborts.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8"
                           " --xla_cpu_collective_call_terminate_timeout_seconds=900 " +
                           ONE_THREAD_PER_OP)
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# XLA's CPU client runs each device's share of a step on a pool of max(cores, devices)
# threads; with steps queued asynchronously (no host sync between them) on a machine of one
# or two cores, that pool deadlocks inside the first collective. Four threads per emulated
# device keep queued steps moving (tested on one core with 5,000 queued steps).
os.environ.setdefault("PJRT_NPROC", "32")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


import pytest  # noqa: E402  (after XLA_FLAGS is set)


def one_device_env(cache_dir: str) -> dict:
  """The environment of a CLI subprocess on one CPU device, as a user has, compiling fast
  (tiny programs) and through the persistent XLA cache `cache_dir`."""
  return dict(os.environ, XLA_FLAGS=ONE_THREAD_PER_OP, JAX_PLATFORMS="cpu",
              JAX_DISABLE_MOST_OPTIMIZATIONS="1", JAX_COMPILATION_CACHE_DIR=cache_dir,
              JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
              JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")


@pytest.fixture(scope="module")
def fast_compiles():
  """For modules of tiny steps, where XLA's optimisation passes would dominate run time."""
  import jax  # pylint: disable=import-outside-toplevel
  previous = jax.config.read("jax_disable_most_optimizations")
  jax.config.update("jax_disable_most_optimizations", True)
  yield
  jax.config.update("jax_disable_most_optimizations", previous)


@pytest.fixture(scope="session")
def small_dataset(tmp_path_factory) -> str:
  """A packed copy of 256 train and 64 test images of the bundled set, every class: CLI
  runs that check training, not accuracy, evaluate kNN on it in a second, not 6,000 images."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  from ssl_jax.data import sources  # pylint: disable=import-outside-toplevel
  path = tmp_path_factory.mktemp("data") / "small.npz"
  with np.load(sources.QUICKSTART_PATH) as full:
    out = {"format": full["format"], "classes": full["classes"]}
    for split, n in (("train", 256), ("test", 64)):
      offsets, data = full[f"{split}.offsets"], full[f"{split}.data"]
      picked = np.linspace(0, len(offsets) - 2, n).astype(int)
      blobs = [data[offsets[i]:offsets[i + 1]] for i in picked]
      out[f"{split}.data"] = np.concatenate(blobs)
      out[f"{split}.offsets"] = np.cumsum([0] + [len(b) for b in blobs]).astype(np.int64)
      out[f"{split}.labels"] = full[f"{split}.labels"][picked]
  np.savez(path, **out)
  return str(path)


@pytest.fixture(scope="session", autouse=True)
def shared_compile_cache(tmp_path_factory):
  """One persistent XLA cache for every subprocess of the session (set after this process
  imported JAX, so only subprocesses use it): a program compiled by one CLI run is loaded,
  not compiled again, by the next run that needs it."""
  path = tmp_path_factory.getbasetemp() / "xla_cache"
  path.mkdir(exist_ok=True)
  os.environ["JAX_COMPILATION_CACHE_DIR"] = str(path)
  os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  yield str(path)
