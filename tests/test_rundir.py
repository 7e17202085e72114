"""The workdir's record: one run at a time, a rerun continues the same run, eval.json merges."""
import json
import os
import signal
import socket
import subprocess

import jax
import pytest

from ssl_jax import rundir, train
from ssl_jax.errors import ConfigError
from ssl_jax.evaluate import workdir as workdir_lib
from test_config import load


def smoke_config(name="simclr_v2"):
  return load(name).get_config("smoke")


def write_lock(workdir, pid):
  started = rundir._start_time(pid)  # pylint: disable=protected-access
  holder = {"pid": pid, "host": socket.gethostname(), "started": started,
            "since": "2026-12-01T10:00:00"}
  (workdir / "lock").write_text(json.dumps(holder))


def test_a_second_run_on_a_locked_workdir_stops_with_one_line(tmp_path):
  with rundir.lock(str(tmp_path)):   # this process trains there
    with pytest.raises(ConfigError, match=f"--workdir={tmp_path} is in use by process "
                       f"{os.getpid()} \\(since .*\\); wait for it"):
      train.train_and_evaluate(smoke_config(), str(tmp_path))
  assert os.listdir(tmp_path) == []   # nothing written, and the lock released
  other = subprocess.Popen(["sleep", "60"])   # a run of another process
  try:
    write_lock(tmp_path, other.pid)
    with pytest.raises(ConfigError, match=f"in use by process {other.pid} \\(since "
                       "2026-12-01T10:00:00\\)"):
      with rundir.lock(str(tmp_path)):
        pass
  finally:
    other.send_signal(signal.SIGKILL)
    other.wait()


def test_the_stale_lock_of_a_dead_process_is_taken_over_with_a_message(tmp_path, capsys):
  dead = subprocess.Popen(["true"])
  dead.wait()
  write_lock(tmp_path, dead.pid)
  with rundir.lock(str(tmp_path)):
    assert json.loads((tmp_path / "lock").read_text())["pid"] == os.getpid()
  assert (f"warning: taking over the stale lock of process {dead.pid}, which is no longer "
          "running") in capsys.readouterr().err
  assert not os.path.exists(tmp_path / "lock")
  write_lock(tmp_path, os.getpid())   # this pid, from an earlier life (a restarted container)
  with rundir.lock(str(tmp_path)):
    pass


def test_only_process_0_takes_the_lock(tmp_path, monkeypatch):
  write_lock(tmp_path, os.getpid())
  rundir._HELD.add(str(tmp_path / "lock"))  # pylint: disable=protected-access
  monkeypatch.setattr(jax, "process_index", lambda: 1)
  try:
    with rundir.lock(str(tmp_path)):   # the others follow process 0, which holds it
      pass
  finally:
    rundir._HELD.discard(str(tmp_path / "lock"))  # pylint: disable=protected-access
  assert json.loads((tmp_path / "lock").read_text())["pid"] == os.getpid()


def test_a_rerun_may_extend_and_evaluate_but_not_change_what_is_trained(tmp_path):
  config = smoke_config()
  config.run.total_steps = 3
  rundir.write_config(config, str(tmp_path), {}, 0)
  changed = smoke_config()
  changed.batch_size = 64
  changed.optimizer.base_lr = 0.5
  changed.augment.crop_scale = (0.5, 1.0)
  changed.num_steps = 10   # allowed, but not alone
  with pytest.raises(ConfigError, match=(
      f"--workdir={tmp_path} holds a run of another config \\(augment.crop_scale: "
      r"\[0.08, 1.0\] -> \[0.5, 1.0\], batch_size: 32 -> 64, optimizer.base_lr: 1.0 -> 0.5\); "
      "rerun with that run's config")):
    rundir.check_config(changed, str(tmp_path))
  with pytest.raises(ConfigError, match="method: 'simclr' -> 'byol'"):
    rundir.check_config(smoke_config("byol"), str(tmp_path))
  probe_off = smoke_config()
  probe_off.eval.online_probe = False   # the probe is part of the trained state
  with pytest.raises(ConfigError, match="eval.online_probe: True -> False"):
    rundir.check_config(probe_off, str(tmp_path))
  longer = smoke_config()
  longer.num_steps = 10
  longer.eval.knn_k = 20
  longer.checkpoint.every_steps = 5
  changes = rundir.check_config(longer, str(tmp_path))   # run.total_steps is filled in later
  assert changes == {"checkpoint.every_steps": (1000, 5), "eval.knn_k": (200, 20),
                     "num_steps": (3, 10)}
  rundir.write_config(longer, str(tmp_path), changes, 3)
  assert workdir_lib.load_config(str(tmp_path)).num_steps == 10
  note = json.loads((tmp_path / "config_changes.jsonl").read_text())
  assert note["step"] == 3 and note["changes"]["num_steps"] == {"old": 3, "new": 10}
  assert rundir.check_config(longer, str(tmp_path)) == {}


def test_eval_json_keeps_the_offline_results_and_the_training_result(tmp_path):
  rundir.update_eval(str(tmp_path), {"step": 3, "knn_top1": 0.2, "online_top1": 0.1},
                     training=True)
  workdir_lib.write_result(str(tmp_path), "linear", {"step": 3, "top1": 0.3})
  rundir.update_eval(str(tmp_path), {"step": 6, "knn_top1": 0.25}, training=True)
  assert json.loads((tmp_path / "eval.json").read_text()) == {
      "linear": {"protocol": "linear", "step": 3, "top1": 0.3}, "step": 6, "knn_top1": 0.25}
  assert sorted(os.listdir(tmp_path)) == ["eval.json"]   # no temporary file left
