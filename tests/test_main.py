"""The command line, end to end, as a user runs it."""
import json
import math
import os
import subprocess
import sys

import pytest

ROOT = os.path.join(os.path.dirname(__file__), "..")


def run_cli(*args, timeout=600):
  env = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu")   # one device, as a user has
  return subprocess.run([sys.executable, "-m", "ssl_jax.main", *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=timeout)


def smoke_run(name, workdir, *args, positive_loss=True):
  """`configs/<name>.py:smoke` through the CLI (plots off unless `args` say otherwise):
  asserts a clean run of 3 finite losses, positive unless `positive_loss` is False (a
  negative cosine starts near 0, either side), and a kNN result; returns the metrics."""
  proc = run_cli(f"--config=configs/{name}.py:smoke", f"--workdir={workdir}",
                 "--config.eval.plots=False", *args)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "step 3/3" in proc.stdout and "kNN top-1" in proc.stdout
  lines = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert [l["step"] for l in lines[:3]] == [1, 2, 3]
  assert all(math.isfinite(l["loss"]) and (l["loss"] > 0 or not positive_loss)
             for l in lines[:3])
  result = json.loads((workdir / "eval.json").read_text())
  assert 0.0 < result["knn_top1"] <= 1.0 and 0.0 < result["knn_top1_random_init"] <= 1.0
  return lines


@pytest.mark.parametrize("config", ["configs/simclr_v1.py:smoke", "configs/simclr_v2.py:smoke"])
def test_smoke_run_through_the_cli(config, tmp_path):
  workdir = tmp_path / "run"
  proc = run_cli(f"--config={config}", f"--workdir={workdir}", "--config.seed=1")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "step 3/3" in proc.stdout and "img/s" in proc.stdout and "ETA" in proc.stdout
  saved = json.loads((workdir / "config.json").read_text())
  assert saved["seed"] == 1 and saved["method"] == "simclr"
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
])
def test_bad_command_lines_give_one_clear_line(args, message, tmp_path):
  proc = run_cli(*args, f"--workdir={tmp_path}", timeout=120)
  assert proc.returncode != 0
  assert message in proc.stderr
  assert "Traceback" not in proc.stderr


def test_config_error_exits_with_one_line(tmp_path):
  proc = run_cli("--config=configs/simclr_v2.py:smoke", f"--workdir={tmp_path}",
                 "--config.dataset=image_folder:/no/such/dir", timeout=120)
  assert proc.returncode != 0
  assert proc.stderr.strip().splitlines()[-1].startswith("error: ")
  assert "config.dataset" in proc.stderr and "Traceback" not in proc.stderr
