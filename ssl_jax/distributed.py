"""Start-up of JAX's distributed runtime: one process per host (or per GPU), one mesh.

`initialize` must run before anything touches a JAX backend. It connects the processes
when the command line names them (`--coordinator_address`, `--num_processes`,
`--process_id`) or the environment says there are several (a Cloud TPU pod slice, SLURM's
srun, Open MPI's mpirun); otherwise the run stays a single process. After it,
`jax.devices()` lists every device of every process and `parallel.make_mesh()` spans them.

Failure detection: every process sends heartbeats to the coordinator (process 0). When a
process dies, the others notice within `heartbeat_timeout_s` (or sooner, when a collective
loses its peer) and exit with an error instead of waiting forever in a collective.
"""
import importlib.util
import os
import sys

from absl import flags
import jax

# Multi-process runs (see README, "Multi-host training"); Cloud TPU pods, SLURM and Open
# MPI are detected from the environment, so these are for other launchers.
_COORDINATOR = flags.DEFINE_string("coordinator_address", "",
                                   "host:port of process 0, for a multi-process run.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", 0, "Processes in the run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", -1, "This process's index, 0 ... n-1.")
_HEARTBEAT = flags.DEFINE_integer("heartbeat_timeout_s", 100,
                                  "A process silent this long is declared dead and the "
                                  "others stop with an error.")
_INIT_TIMEOUT = flags.DEFINE_integer("init_timeout_s", 300,
                                     "How long to wait for every process to connect.")


def cluster_name() -> str | None:
  """The launcher that started several processes of this job, or None."""
  def count(var):
    try:
      return int(os.environ.get(var, "1"))
    except ValueError:
      return 1
  if count("SLURM_STEP_NUM_TASKS") > 1 or (count("SLURM_NTASKS") > 1 and
                                           "SLURM_STEP_NUM_TASKS" not in os.environ):
    return "SLURM"
  if count("OMPI_COMM_WORLD_SIZE") > 1:
    return "Open MPI"
  hosts = os.environ.get("TPU_PROCESS_ADDRESSES") or os.environ.get("TPU_WORKER_HOSTNAMES")
  if hosts and "," in hosts:
    return "Cloud TPU (GKE)"
  tpu_chip = os.path.exists("/dev/accel0") or os.path.exists("/dev/vfio/0")
  if tpu_chip and importlib.util.find_spec("libtpu") is not None:
    return "Cloud TPU VM"   # one host or a pod slice: jax asks the metadata server which
  return None


def initialize(coordinator_address: str = "", num_processes: int = 0, process_id: int = -1,
               heartbeat_timeout_s: int = 100, init_timeout_s: int = 300) -> str:
  """Connects this process to the others, if there are others; returns what it did."""
  explicit = bool(coordinator_address) or num_processes > 1
  detected = None if explicit else cluster_name()
  if not explicit and detected is None:
    return "single process"
  # Multi-process CPU runs (tests, CPU clusters) need cross-process collectives; gloo
  # ships with jaxlib. Other backends ignore the setting.
  if jax.config.jax_cpu_collectives_implementation is None:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  kwargs = dict(initialization_timeout=init_timeout_s,
                heartbeat_timeout_seconds=heartbeat_timeout_s)
  if explicit:
    missing = [name for name, value in (("--coordinator_address", coordinator_address),
                                        ("--num_processes", num_processes > 0),
                                        ("--process_id", process_id >= 0)) if not value]
    if missing:
      raise ValueError(f"{', '.join(missing)} missing: a multi-process run needs "
                       "--coordinator_address=host:port, --num_processes and --process_id")
    kwargs.update(coordinator_address=coordinator_address, num_processes=num_processes,
                  process_id=process_id)
  jax.distributed.initialize(**kwargs)   # with no address: the launcher's environment
  return (f"process {jax.process_index()} of {jax.process_count()} "
          f"({detected or coordinator_address}), {jax.local_device_count()} local of "
          f"{jax.device_count()} devices")


def barrier(name: str, timeout_s: int = 3600):
  """Returns when every process has called it (at once with one process).

  Through the coordination service, as orbax's barriers are, not a device collective:
  gloo gives up on a collective that processes reach 30 s apart, and one process may
  take longer than that to compile or to import TensorBoard.
  """
  if jax.process_count() == 1:
    return
  from jax._src import distributed as jax_distributed  # pylint: disable=import-outside-toplevel
  jax_distributed.global_state.client.wait_at_barrier(f"ssl_jax:{name}", timeout_s * 1000)


def start_from_flags():
  """Joins the other processes of a multi-process run as the flags or the environment say
  (before any JAX computation); the command lines of training and evaluation call it."""
  try:
    where = initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value,
                       _HEARTBEAT.value, _INIT_TIMEOUT.value)
  except Exception as e:  # pylint: disable=broad-except
    sys.exit(f"error: could not start the distributed run: {str(e).splitlines()[0]}")
  if where != "single process":
    print(f"Distributed run: {where}.", flush=True)
