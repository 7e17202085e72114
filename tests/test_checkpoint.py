"""Checkpoints: kill -9 and resume, a corrupt latest checkpoint, a non-finite loss."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import one_device_env
from ssl_jax import checkpoint, config as config_lib, parallel
from ssl_jax.errors import ConfigError
from ssl_jax.evaluate import workdir as workdir_lib
from ssl_jax.methods import simclr
from ssl_jax.state import TrainState

ROOT = os.path.join(os.path.dirname(__file__), "..")
STEPS, EVERY = 40, 5
RUN = ["--config=configs/simclr_v2.py:smoke", f"--config.num_steps={STEPS}",
       f"--config.checkpoint.every_steps={EVERY}", "--config.eval.random_init=False",
       "--config.eval.plots=False", "--config.tensorboard=False"]
# The CLI with the method's loss multiplied by NaN from step NAN_FROM_STEP (0-based) on.
POISONED_MAIN = """
import os
import jax.numpy as jnp
from absl import app
from ssl_jax import main
from ssl_jax.methods import simclr
from ssl_jax.state import TrainState
loss_fn, first_bad = simclr.loss_fn, int(os.environ["NAN_FROM_STEP"])
def poisoned(params, state, batch, rng, step, *, config):
  loss, aux = loss_fn(params, state, batch, rng, step, config=config)
  return loss * jnp.where(step >= first_bad, jnp.nan, 1.0), aux
simclr.loss_fn = poisoned
app.run(main.main)
"""
# The CLI with every asynchronous checkpoint write failing in the background, as on a full
# disk or an unwritable checkpoints/ (root ignores permissions, so it is injected here).
FAILING_SAVES_MAIN = """
from absl import app
from orbax.checkpoint._src.path import atomicity
from ssl_jax import main
async def full_disk(*args, **kwargs):
  raise OSError(28, "No space left on device")
atomicity._create_paths = full_disk
app.run(main.main)
"""


@pytest.fixture(scope="module")
def compile_cache(tmp_path_factory):
  """A persistent XLA cache for the CLI runs of this session: only the first compiles."""
  path = tmp_path_factory.getbasetemp() / "xla_cache"
  path.mkdir(exist_ok=True)
  return str(path)


def cli(workdir, stderr_path, cache, nan_from_step=None, program=None):
  env = one_device_env(cache)
  program = ["-c", program] if program else ["-m", "ssl_jax.main"]
  if nan_from_step is not None:
    program = ["-c", POISONED_MAIN]
    env["NAN_FROM_STEP"] = str(nan_from_step)
  with open(stderr_path, "w") as err:
    return subprocess.Popen([sys.executable, *program, *RUN, f"--workdir={workdir}"],
                            cwd=ROOT, env=env, text=True, stdout=subprocess.PIPE, stderr=err)


def finish(proc, timeout=300):
  out, _ = proc.communicate(timeout=timeout)
  return out


def saved_steps(workdir):
  path = os.path.join(workdir, "checkpoints")
  return sorted(int(d) for d in os.listdir(path) if d.isdigit())


def restore(workdir, read_only=True):
  """The full TrainState of the latest readable checkpoint, replicated on 8 devices."""
  config = workdir_lib.load_config(str(workdir))
  ckpt = checkpoint.Checkpointer(str(workdir), config.checkpoint, read_only=read_only)
  template = workdir_lib.abstract_state(simclr, config, num_classes=10)
  state, step = ckpt.restore_latest(template, parallel.replicated(parallel.make_mesh()))
  return ckpt, state, step


def leaves(state):
  return jax.tree.leaves(jax.device_get(checkpoint._saveable(state)))  # pylint: disable=protected-access


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, compile_cache):
  workdir = tmp_path_factory.mktemp("uninterrupted")
  proc = cli(workdir, workdir / "stderr.txt", compile_cache)
  finish(proc)
  assert proc.returncode == 0, (workdir / "stderr.txt").read_text()[-3000:]
  return workdir


def run_until(proc, step, sig):
  """Sends `sig` when the progress line of `step` appears (smoke logs every step)."""
  seen = []
  for line in proc.stdout:
    seen.append(line)
    if line.startswith(f"step {step}/"):
      proc.send_signal(sig)
      break
  return "".join(seen) + finish(proc)


def test_sigterm_then_kill_9_then_rerun_gives_the_same_state_bitwise(uninterrupted, tmp_path,
                                                                    compile_cache):
  workdir = tmp_path / "interrupted"
  # Preemption: SIGTERM saves the step in progress and exits cleanly.
  proc = cli(workdir, tmp_path / "stderr1.txt", compile_cache)
  run_until(proc, EVERY + 2, signal.SIGTERM)
  err = (tmp_path / "stderr1.txt").read_text()
  assert proc.returncode == 1 and "Traceback" not in err, err[-3000:]
  stopped = int(err.split("stopped by SIGTERM after step ")[1].split(";")[0])
  assert EVERY + 2 <= stopped < 4 * EVERY and saved_steps(workdir)[-1] == stopped
  # Rerun, then SIGKILL: no handler runs, an async save may be half written.
  proc = cli(workdir, tmp_path / "stderr2.txt", compile_cache)
  out = run_until(proc, 5 * EVERY, signal.SIGKILL)
  assert proc.returncode == -9
  assert f"Resuming from the checkpoint of step {stopped}" in out
  assert stopped < saved_steps(workdir)[-1] < STEPS
  # The same command again resumes from the latest complete checkpoint ...
  proc = cli(workdir, tmp_path / "stderr3.txt", compile_cache)
  out = finish(proc)
  assert proc.returncode == 0, (tmp_path / "stderr3.txt").read_text()[-3000:]
  resumed = int(out.split("Resuming from the checkpoint of step ")[1].split()[0])
  assert stopped < resumed < STEPS and resumed % EVERY == 0
  # ... and ends where the uninterrupted run ended: every leaf of the state, bitwise (CPU
  # XLA is deterministic, the batch of step s is a function of (seed, s), and the state,
  # rng included, is restored exactly).
  _, state, step = restore(workdir)
  _, reference, reference_step = restore(uninterrupted)
  assert step == reference_step == STEPS
  for a, b in zip(leaves(state), leaves(reference), strict=True):
    np.testing.assert_array_equal(a, b)
  # metrics.jsonl has each step once: the lines logged after the checkpoint were dropped.
  lines = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert [l["step"] for l in lines if "loss" in l] == list(range(1, STEPS + 1))


def test_corrupt_latest_checkpoint_falls_back_with_a_warning(uninterrupted, tmp_path, capfd):
  workdir = tmp_path / "corrupt"
  shutil.copytree(uninterrupted, workdir)
  previous, latest = saved_steps(workdir)[-2:]
  # A half-written save (orbax's temporary directory) is never taken for a checkpoint ...
  os.makedirs(workdir / "checkpoints" / f"{latest + EVERY}.orbax-checkpoint-tmp-1" / "state")
  # ... and a complete one whose array files were damaged is skipped and moved aside, in
  # one line, next to the copy an earlier set-aside of the same step left.
  for root, _, files in os.walk(workdir / "checkpoints" / str(latest) / "state"):
    for name in files:
      if "ocdbt.process_0" in root:
        with open(os.path.join(root, name), "wb") as f:
          f.write(b"not a checkpoint")
  os.makedirs(workdir / "checkpoints.corrupt" / str(latest))
  capfd.readouterr()
  ckpt, state, step = restore(workdir, read_only=False)
  assert step == previous
  out, err = capfd.readouterr()
  assert out == "" and len(err.strip().splitlines()) == 1, err[-3000:]
  assert err.startswith(f"warning: unreadable checkpoint in {workdir}/checkpoints: step "
                        f"{latest} (")
  assert err.strip().endswith(f"moved to {workdir}/checkpoints.corrupt/{latest}.1; using "
                              f"step {previous}")
  assert os.path.isdir(workdir / "checkpoints.corrupt" / str(latest))
  assert os.path.isdir(workdir / "checkpoints.corrupt" / f"{latest}.1" / "state")
  assert all(np.isfinite(x).all() for x in leaves(state) if x.dtype.kind == "f")
  ckpt.save(latest, state)   # the step can be saved again, as the resumed run will
  ckpt.close()
  assert saved_steps(workdir)[-1] == latest


def test_ctrl_c_asks_to_save_and_stop_like_sigterm_and_twice_stops_at_once():
  with checkpoint.SigtermFlag() as flag:
    assert not flag.reached(1)
    os.kill(os.getpid(), signal.SIGINT)
    assert flag.reached(2) and flag.received == "SIGINT"
    with pytest.raises(KeyboardInterrupt):
      os.kill(os.getpid(), signal.SIGINT)
  assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_checkpoint_of_another_config_is_a_clear_error_and_stays(uninterrupted, tmp_path):
  workdir = tmp_path / "other"
  shutil.copytree(uninterrupted, workdir)
  config = workdir_lib.load_config(str(workdir))
  config.model.width = 1 / 8   # wider layers than the run that saved the checkpoints
  ckpt = checkpoint.Checkpointer(str(workdir), config.checkpoint)
  with pytest.raises(ConfigError, match="saved by a different config .*shape"):
    ckpt.restore_latest(workdir_lib.abstract_state(simclr, config, num_classes=10),
                        parallel.replicated(parallel.make_mesh()))
  ckpt.close()
  assert saved_steps(workdir) == saved_steps(uninterrupted)
  assert not os.path.exists(workdir / "checkpoints.corrupt")


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(uninterrupted, tmp_path,
                                                                  compile_cache):
  del uninterrupted   # run first: it fills the compile cache
  proc = cli(tmp_path, tmp_path / "stderr.txt", compile_cache, nan_from_step=EVERY + 2)
  finish(proc)
  err = (tmp_path / "stderr.txt").read_text()
  assert proc.returncode == 1 and "Traceback" not in err, err[-3000:]
  message = err.strip().splitlines()[-1]
  assert message.startswith(f"error: non-finite loss, grad_norm at step {EVERY + 3}")
  assert f"last good checkpoint, step {EVERY} in" in message and "is intact" in message
  assert saved_steps(tmp_path) == [EVERY]
  _, state, step = restore(tmp_path)
  assert step == EVERY
  assert all(np.isfinite(x).all() for x in leaves(state) if x.dtype.kind == "f")


def test_a_failed_background_write_ends_the_process_at_once(uninterrupted, tmp_path,
                                                            compile_cache):
  del uninterrupted   # run first: it fills the compile cache
  proc = cli(tmp_path, tmp_path / "stderr.txt", compile_cache, program=FAILING_SAVES_MAIN)
  try:
    deadline = time.monotonic() + 600
    while "\nerror: " not in (tmp_path / "stderr.txt").read_text() and proc.poll() is None:
      assert time.monotonic() < deadline
      time.sleep(1)
    proc.wait(timeout=60)   # orbax's threads kept it alive for 300 s after the error
  finally:
    proc.kill()
    proc.communicate()
  err = (tmp_path / "stderr.txt").read_text()
  assert proc.returncode == 1, err[-3000:]
  assert err.strip().splitlines()[-1].startswith(
      f"error: could not write checkpoints in {tmp_path}/checkpoints: OSError: [Errno 28] "
      "No space left on device")


def test_keeps_the_last_k_plus_the_best_and_restores_exactly(tmp_path):
  config = config_lib.base_config().checkpoint
  config.update(keep=2, best_metric="knn_top1")
  mesh = parallel.make_mesh()
  state = jax.device_put(TrainState(
      step=jnp.zeros((), jnp.int32), params={"w": jnp.zeros((4, 3))}, batch_stats={},
      opt_state=(), method_state={"queue": jnp.ones((8, 2))}, rng=jax.random.key(0)),
      parallel.replicated(mesh))
  bump = jax.jit(lambda s: s.replace(step=s.step + 1, params={"w": s.params["w"] + 1}),
                 donate_argnums=0)
  ckpt = checkpoint.Checkpointer(str(tmp_path), config)
  for step, accuracy in zip(range(1, 6), (0.1, 0.5, 0.2, 0.3, 0.1)):
    state = bump(state)
    ckpt.save(step, state, {"knn_top1": accuracy} if step != 4 else {})
  ckpt.close()
  assert saved_steps(tmp_path) == [2, 4, 5]   # the best (0.5) and the last two
  restored, step = checkpoint.Checkpointer(str(tmp_path), config, read_only=True) \
      .restore_latest(state)
  assert step == 5 and int(restored.step) == 5
  np.testing.assert_array_equal(restored.params["w"], np.full((4, 3), 5.0))
  assert jax.random.key_impl(restored.rng) == jax.random.key_impl(state.rng)
  np.testing.assert_array_equal(jax.random.key_data(restored.rng),
                                jax.random.key_data(state.rng))
