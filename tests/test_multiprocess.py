"""Real multi-process runs on 127.0.0.1: 2 processes x 2 CPU devices (gloo collectives)
against 1 process x 4 devices, and what happens when a process dies."""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from conftest import ONE_THREAD_PER_OP

ROOT = os.path.join(os.path.dirname(__file__), "..")
# SimCLR: its negatives gathered across processes. Each method's own cross-device terms
# (EMA targets, queues, banks) are checked in-process, 8 devices against 1, in its tests.
CONFIGS = ["configs/simclr_v2.py:smoke"]


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def start(config, workdir, dataset, cache_dir, devices, *args, name="run"):
  """Training: `python -m ssl_jax.main` on `devices` CPU devices."""
  return launch(["ssl_jax.main", f"--config={config}", f"--workdir={workdir}",
                 f"--config.dataset=packed:{dataset}", "--config.eval.plots=False",
                 "--config.eval.random_init=False", "--config.tensorboard=False",
                 # residual branches at zero (BYOL's basic blocks start at one): the float
                 # rounding of cross-process BN sums then stays within the tolerances
                 "--config.model.zero_init_residual=all", *args], workdir, cache_dir, devices,
                name)


def launch(module_and_args, workdir, cache_dir, devices, name):
  env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_DISABLE_MOST_OPTIMIZATIONS="1",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices} {ONE_THREAD_PER_OP}",
             JAX_COMPILATION_CACHE_DIR=cache_dir,
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
  command = [sys.executable, "-m", *module_and_args]
  # Output to a file: a full pipe would block one process and hang the other in a collective.
  log = open(f"{workdir}.{name}.log", "a+")
  process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
  process.log = log
  return process


def output(process) -> str:
  process.log.seek(0)
  return process.log.read()


def start_pair(config, workdir, dataset, cache_dir, *args):
  """Two processes of one run, 2 CPU devices each."""
  return [start(config, workdir, dataset, cache_dir, 2, *flags, *args, name=f"process{i}")
          for i, flags in enumerate(pair_flags())]


def pair_flags():
  address = f"127.0.0.1:{free_port()}"
  return [(f"--coordinator_address={address}", "--num_processes=2", f"--process_id={i}")
          for i in range(2)]


def start_linear_evaluation(workdir, cache_dir, devices, flags=(), name="linear"):
  return launch(["ssl_jax.evaluate", f"--workdir={workdir}", "--protocol=linear",
                 "--epochs=2", *flags], workdir, cache_dir, devices, name)


def finish(processes, timeout=300) -> list[str]:
  for p in processes:
    p.wait(timeout=timeout)
  for p in processes:
    assert p.returncode == 0, output(p)[-3000:]
  return [output(p) for p in processes]


def final_state(workdir) -> dict:
  directory = os.path.join(workdir, "checkpoints")
  step = max(int(d) for d in os.listdir(directory) if d.isdigit())
  path = os.path.join(directory, str(step), "state")
  with ocp.PyTreeCheckpointer() as reader:   # as numpy: the saved shardings span 4 devices
    tree = reader.metadata(path).item_metadata
    as_numpy = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray),
                            getattr(tree, "tree", tree))
    return reader.restore(path, restore_args=as_numpy)


def flat(tree) -> dict:
  return {jax.tree_util.keystr(path): np.asarray(leaf)
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def read_metrics(workdir) -> list[dict]:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


@pytest.mark.parametrize("config", CONFIGS)
def test_two_processes_match_one_process(config, small_dataset, shared_compile_cache, tmp_path):
  dataset, cache_dir = small_dataset, shared_compile_cache   # conftest's, shared by the session
  one, two = str(tmp_path / "one"), str(tmp_path / "two")
  reference = start(config, one, dataset, cache_dir, 4)
  outputs = finish(start_pair(config, two, dataset, cache_dir))
  finish([reference])
  assert "Distributed run: process 1 of 2" in outputs[1]
  assert "step 3/3" in outputs[0] and "step 3/" not in outputs[1]   # progress: process 0
  logged_one, logged_two = read_metrics(one), read_metrics(two)
  assert [l["step"] for l in logged_two] == [l["step"] for l in logged_one]   # written once
  for a, b in zip(logged_one, logged_two):
    for key in a:
      np.testing.assert_allclose(b[key], a[key], rtol=1e-4, atol=1e-5, err_msg=key)
  state_one, state_two = flat(final_state(one)), flat(final_state(two))
  assert state_one.keys() == state_two.keys()
  for key, value in state_one.items():
    np.testing.assert_allclose(state_two[key], value, rtol=1e-4, atol=1e-5, err_msg=key)
  eval_one = json.loads(open(os.path.join(one, "eval.json")).read())
  eval_two = json.loads(open(os.path.join(two, "eval.json")).read())
  assert eval_two["knn_top1"] == pytest.approx(eval_one["knn_top1"], abs=1 / 64)
  if config != CONFIGS[0]:
    return
  # The offline linear evaluation, 2 processes against 1: the same classifier's accuracy.
  outputs = finish([start_linear_evaluation(two, cache_dir, 2, flags, name=f"linear{i}")
                    for i, flags in enumerate(pair_flags())])
  assert "linear (offline)" in outputs[0] and "linear (offline)" not in outputs[1]
  finish([start_linear_evaluation(one, cache_dir, 4)])
  linear_one = json.loads(open(os.path.join(one, "eval.json")).read())["linear"]
  linear_two = json.loads(open(os.path.join(two, "eval.json")).read())["linear"]
  assert linear_two["top1"] == pytest.approx(linear_one["top1"], abs=1 / 64)


def wait_for_checkpoint(workdir, after_step, processes, timeout=300):
  deadline = time.time() + timeout
  while time.time() < deadline:
    assert all(p.poll() is None for p in processes), "a process ended early"
    if latest_checkpoint(workdir) > after_step:
      return
    time.sleep(0.2)
  raise TimeoutError(f"no checkpoint after step {after_step} within {timeout} s")


def latest_checkpoint(workdir) -> int:
  directory = os.path.join(workdir, "checkpoints")
  steps = os.listdir(directory) if os.path.isdir(directory) else []
  return max([int(d) for d in steps if d.isdigit()], default=0)


def test_killed_process_stops_the_other_and_the_rerun_resumes(small_dataset, shared_compile_cache,
                                                              tmp_path):
  """kill -9 of one process: the other stops within seconds. The rerun resumes; then a
  SIGTERM to one process stops both after the same step, with a checkpoint of it."""
  workdir = str(tmp_path / "run")
  args = (CONFIGS[0], workdir, small_dataset, shared_compile_cache, "--config.num_steps=1000",
          "--config.checkpoint.every_steps=2", "--heartbeat_timeout_s=10")
  processes = start_pair(*args)
  wait_for_checkpoint(workdir, 1, processes)
  processes[1].send_signal(signal.SIGKILL)
  killed_at = time.time()
  processes[0].wait(timeout=60)
  assert time.time() - killed_at < 45   # heartbeat timeout 10 s: no hang
  out = output(processes[0])
  assert processes[0].returncode != 0, out[-3000:]
  # Ours when a collective fails first; JAX's own when the heartbeats stop first.
  assert ("lost contact with the other processes" in out or
          "stopped sending heartbeats" in out), out[-3000:]
  processes[1].wait()

  saved = latest_checkpoint(workdir)
  processes = start_pair(*args)   # the same command again
  wait_for_checkpoint(workdir, saved, processes)
  processes[1].send_signal(signal.SIGTERM)
  for p in processes:
    p.wait(timeout=120)
  outs = [output(p) for p in processes]
  assert f"Resuming from the checkpoint of step {saved}" in outs[0]
  stops = [out.split("stopped by SIGTERM after step ")[-1].split(";")[0] for out in outs]
  assert stops[0] == stops[1] and int(stops[0]) == latest_checkpoint(workdir), outs[0][-2000:]
