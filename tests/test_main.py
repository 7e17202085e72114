"""The command line, end to end, as a user runs it."""
import json
import math
import os
import socket
import subprocess
import sys

import pytest

from conftest import ONE_THREAD_PER_OP

ROOT = os.path.join(os.path.dirname(__file__), "..")


def run_cli(*args, timeout=600, unset=(), fast_compiles=True):
  """`python -m ssl_jax.main *args` on one CPU device, as a user has. `fast_compiles`:
  without XLA's optimisation passes, which take most of a 3-step run's time, and with one
  thread per op (conftest.py says why)."""
  env = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu")
  if fast_compiles:
    env.update(JAX_DISABLE_MOST_OPTIMIZATIONS="1", XLA_FLAGS=ONE_THREAD_PER_OP)
  for name in unset:
    env.pop(name, None)
  return subprocess.run([sys.executable, "-m", "ssl_jax.main", *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=timeout)


def smoke_run(name, workdir, dataset, *args, positive_loss=True):
  """`configs/<name>.py:smoke` through the CLI on `dataset` (conftest's small_dataset; plots
  and TensorBoard off unless `args` say otherwise): asserts a clean run of 3 finite losses,
  positive unless `positive_loss` is False (a negative cosine starts near 0, either side),
  and a kNN result; returns the metrics."""
  proc = run_cli(f"--config=configs/{name}.py:smoke", f"--workdir={workdir}",
                 f"--config.dataset=packed:{dataset}", "--config.eval.plots=False",
                 "--config.tensorboard=False", *args)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert not any(f.startswith("events.out") for f in os.listdir(workdir))
  assert "step 3/3" in proc.stdout and "kNN top-1" in proc.stdout
  lines = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert [l["step"] for l in lines[:3]] == [1, 2, 3]
  assert all(math.isfinite(l["loss"]) and (l["loss"] > 0 or not positive_loss)
             for l in lines[:3])
  result = json.loads((workdir / "eval.json").read_text())
  assert 0.0 < result["knn_top1"] <= 1.0 and 0.0 < result["knn_top1_random_init"] <= 1.0
  return lines


def leftovers_of_an_earlier_run(workdir):
  """What a run left after its checkpoints were deleted and it was killed: its metrics, a
  lock of its (dead) process, and the offline evaluation of its checkpoint."""
  workdir.mkdir()
  (workdir / "metrics.jsonl").write_text('{"step": 1, "loss": 9.0}\n{"step": 2, "loss": 8.0}\n')
  dead = subprocess.Popen(["true"])
  dead.wait()
  (workdir / "lock").write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname()}))
  (workdir / "eval.json").write_text(json.dumps({"linear": {"protocol": "linear", "top1": 0.3}}))
  return dead.pid


def test_simclr_v1_smoke_run_through_the_cli(tmp_path, small_dataset):
  smoke_run("simclr_v1", tmp_path, small_dataset)


def test_smoke_run_through_the_cli(tmp_path):
  """The README's kind of run, as a user types it, into a workdir an earlier run left."""
  workdir = tmp_path / "run"
  dead = leftovers_of_an_earlier_run(workdir)
  proc = run_cli("--config=configs/simclr_v2.py:smoke", f"--workdir={workdir}", "--config.seed=1",
                 unset=["TF_CPP_MIN_LOG_LEVEL"], fast_compiles=False)   # as a user runs it
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "step 3/3" in proc.stdout and "img/s" in proc.stdout and "ETA" in proc.stdout
  # The first screen: a short header, not the config, and no library start-up notices.
  before = [l for l in proc.stdout.split("compiling the training step...")[0].strip().splitlines()
            if not l.startswith("No checkpoint in")]   # the restart notice, checked below
  assert len(before) == 4 and before[0].startswith("simclr | 3 steps = 0.0 epochs of 156 | "
                                                   "global batch 32 on 1 cpu device(s)")
  assert "5,000 training / 1,000 eval images" in before[1] and "ResNet-18" in before[2]
  assert before[3] == f"  workdir  {workdir} (the whole config: {workdir}/config.json)"
  assert "oneDNN" not in proc.stderr and "libtpu" not in proc.stderr, proc.stderr[:2000]
  saved = json.loads((workdir / "config.json").read_text())
  assert saved["seed"] == 1 and saved["method"] == "simclr"
  assert saved["run"]["total_steps"] == 3   # written once the run is accepted
  # The earlier run's log is kept aside, its stale lock taken over, its evaluation kept.
  assert (f"No checkpoint in {workdir}/checkpoints: training starts from step 0 (the earlier "
          f"metrics.jsonl is now {workdir}/metrics.jsonl.1)") in proc.stdout
  assert (workdir / "metrics.jsonl.1").read_text().count("loss") == 2
  assert f"taking over the stale lock of process {dead}" in proc.stderr
  assert not (workdir / "lock").exists()
  assert json.loads((workdir / "eval.json").read_text())["linear"]["top1"] == 0.3
  lines = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert [l["step"] for l in lines[:3]] == [1, 2, 3]
  assert all(l["loss"] > 0 for l in lines[:3])
  result = json.loads((workdir / "eval.json").read_text())
  assert 0.0 < result["knn_top1"] <= 1.0 and 0.0 < result["knn_top1_random_init"] <= 1.0
  assert result["protocol"] == "knn" and result["k"] == 200
  assert "kNN top-1" in proc.stdout and "random init" in proc.stdout
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(workdir))


@pytest.mark.parametrize("args, message", [
    (["--config=configs/simclr_v2.py:smoke", "--config.loss.temprature=0.3"],
     "error: unknown config field 'temprature'; did you mean 'temperature'?"),
    (["--config=configs/simclr_v2.py:smoke", "--config.nonsense=3"],
     "error: unknown config field 'nonsense'"),
    (["--config=configs/simclr_v2.py:imagenet"], "error: config variant 'imagenet' is unknown"),
    (["--config=configs/no_such_method.py"], "error: config file 'configs/no_such_method.py'"),
    (["--config=configs/simclr_v2.py:smoke", "--config.augment.crop_scale=0.5"],
     "error: config.augment.crop_scale=(0.5,) must be a pair (min, max)"),
])
def test_bad_command_lines_give_one_clear_line(args, message, tmp_path):
  proc = run_cli(*args, f"--workdir={tmp_path}", timeout=120)
  assert proc.returncode != 0
  assert message in proc.stderr
  assert "Traceback" not in proc.stderr


def test_a_run_of_another_config_is_refused_and_leaves_the_record(tmp_path):
  from test_config import load  # pylint: disable=import-outside-toplevel
  record = load("simclr_v2").get_config("smoke").to_json_best_effort(indent=2)
  (tmp_path / "config.json").write_text(record)
  proc = run_cli("--config=configs/byol.py:smoke", f"--workdir={tmp_path}", timeout=120)
  assert proc.returncode == 1 and "Traceback" not in proc.stderr
  message = proc.stderr.strip().splitlines()[-1]
  assert message.startswith(f"error: --workdir={tmp_path} holds a run of another config (")
  assert "method: 'simclr' -> 'byol'" in message and "use a new --workdir" in message
  assert (tmp_path / "config.json").read_text() == record
  assert sorted(os.listdir(tmp_path)) == ["config.json"]


def test_config_error_exits_with_one_line(tmp_path):
  proc = run_cli("--config=configs/simclr_v2.py:smoke", f"--workdir={tmp_path}",
                 "--config.dataset=image_folder:/no/such/dir", timeout=120)
  assert proc.returncode != 0
  assert proc.stderr.strip().splitlines()[-1].startswith("error: ")
  assert "config.dataset" in proc.stderr and "Traceback" not in proc.stderr


def test_a_config_file_that_is_not_python_is_one_line(tmp_path):
  (tmp_path / "config.yaml").write_text("method: simclr\nbatch_size: [256\n")
  proc = run_cli(f"--config={tmp_path / 'config.yaml'}", f"--workdir={tmp_path}", timeout=120)
  assert proc.returncode != 0 and "Traceback" not in proc.stderr
  assert proc.stderr.startswith(f"error: config file '{tmp_path / 'config.yaml'}' is not Python")


def test_help_lists_methods_and_variants_and_a_configs_fields():
  proc = run_cli("--help", timeout=120)
  assert proc.returncode == 0, proc.stderr
  rows = {line.split()[0]: line for line in proc.stdout.splitlines() if line.startswith("  ")}
  for name in ("byol", "cmc", "cpc", "dino", "instdisc", "invaspread", "moco_v1", "moco_v2",
               "moco_v3", "simclr_v1", "simclr_v2", "simsiam", "swav"):
    assert {"cifar10", "quickstart", "smoke"} <= set(rows[name].replace(",", "").split()), name
  assert "SimCLR v2 (Chen et al. 2020c)" in rows["simclr_v2"]
  assert "cifar10_vit, quickstart, resnet50, smoke, vitb16" in rows["dino"]
  assert "--config=configs/simclr_v2.py:quickstart --help" in proc.stdout
  proc = run_cli("--config=configs/simclr_v2.py:quickstart", "--help", timeout=120)
  assert proc.returncode == 0, proc.stderr
  assert "  --config.optimizer.base_lr=1.0" in proc.stdout.splitlines()
  assert "--config.run." not in proc.stdout   # filled in by the training
  assert "  --config.augment.crop_scale=(0.2, 1.0)" in proc.stdout.splitlines()


def test_the_rate_and_eta_start_after_the_compilation(monkeypatch, capsys):
  from ssl_jax import metrics  # pylint: disable=import-outside-toplevel
  clock = [1000.0]
  monkeypatch.setattr(metrics.time, "time", lambda: clock[0])
  progress = metrics.Progress(total_steps=110, start_step=0, global_batch=32,
                              steps_per_epoch=10)
  progress.compiling()
  clock[0] += 90.0   # compiling
  progress.compiled()
  clock[0] += 5.0    # 10 steps at 2 steps/s
  line = progress.line(10, {"loss": 1.0})
  assert "2.00 steps/s | 64 img/s | ETA 0m50s" in line
  progress.restart_clock(10)   # after a kNN monitor at a logged step
  clock[0] += 2.0
  assert "5.00 steps/s" in progress.line(20, {})
  clock[0] += 3.5    # 7 steps at 2 steps/s, then a 30 s monitor between two logged steps
  clock[0] += 30.0
  progress.restart_clock(27)
  clock[0] += 1.5    # 3 steps at 2 steps/s
  assert "2.00 steps/s" in progress.line(30, {})
  assert capsys.readouterr().out == "compiling the training step...\ncompiled in 1m30s\n"
