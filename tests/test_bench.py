"""experiments/bench_step.py: configs and overrides as on the training command line, the
JSON record of one real step, and the top ops read from a profiler trace."""
import gzip
import json
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "experiments"))
import bench_step  # noqa: E402  pylint: disable=wrong-import-position


def test_configs_take_overrides_as_the_command_line_does():
  c = bench_step.load_config("configs/instdisc.py:smoke",
                             ["batch_size=16", "augment.crop_scale=(0.2,1.0)"])
  assert c.method == "instdisc" and c.batch_size == 16
  assert tuple(c.augment.crop_scale) == (0.2, 1.0)
  bench_step.fill_run_fields(c, 1000)
  assert (c.run.num_train_examples, c.run.steps_per_epoch, c.run.total_steps) == (1000, 62, 3)
  with pytest.raises(SystemExit, match="unknown config field 'temprature'"):
    bench_step.load_config("configs/simclr_v1.py:smoke", ["loss.temprature=0.3"])
  with pytest.raises(SystemExit, match="batch_size=0 must be an integer >= 1"):
    bench_step.load_config("configs/simclr_v1.py:smoke", ["batch_size=0"])


def test_one_smoke_step_gives_a_full_record(fast_compiles):  # pylint: disable=unused-argument
  # InstDisc: its memory bank has config.run.num_train_examples rows.
  r = bench_step.bench("configs/instdisc.py:smoke", ["seed=1"], steps=2, warmup=1,
                       num_train_examples=256)
  assert r["method"] == "instdisc" and r["variant"] == "smoke"
  assert r["config"] == "configs/instdisc.py:smoke" and r["overrides"] == ["seed=1"]
  assert r["model"] == "resnet18x0.0625-cifar" and r["views"] == "1x16"
  assert r["images_per_step"] == 32 and r["timed_steps"] == 2
  assert r["devices"] == 8 and r["device"] == "cpu" and r["dtype"] == "float32"
  for key in ("step_ms", "images_per_s", "gflop_per_step", "tflops_per_s", "compile_s",
              "step_memory_bytes"):
    assert r[key] > 0, key
  assert r["peak_device_bytes"] is None   # the CPU backend keeps no memory statistics
  json.dumps(r)


def write_trace(path, events):
  with gzip.open(path, "wt") as f:
    json.dump({"traceEvents": events}, f)


def test_top_ops_sum_kernel_time_per_step(tmp_path):
  meta = [{"ph": "M", "pid": 1, "name": "process_name", "args": {"name": "/device:GPU:0"}},
          {"ph": "M", "pid": 1, "tid": 7, "name": "thread_name",
           "args": {"name": "Stream #7(Compute)"}},
          {"ph": "M", "pid": 1, "tid": 8, "name": "thread_name", "args": {"name": "XLA Ops"}},
          {"ph": "M", "pid": 2, "name": "process_name", "args": {"name": "/host:CPU"}}]
  kernels = [{"ph": "X", "pid": 1, "tid": 7, "name": "conv", "dur": 300},
             {"ph": "X", "pid": 1, "tid": 7, "name": "fusion", "dur": 100},
             {"ph": "X", "pid": 1, "tid": 7, "name": "conv", "dur": 500},
             {"ph": "X", "pid": 1, "tid": 8, "name": "conv", "dur": 9000},   # not a kernel
             {"ph": "X", "pid": 2, "tid": 1, "name": "python", "dur": 9000,
              "args": {"hlo_op": "x"}}]
  write_trace(tmp_path / "gpu.json.gz", meta + kernels)
  # 2 steps: conv 800 us = 0.4 ms a step, 8/9 of the kernel time; fusion 0.05 ms, 1/9.
  assert bench_step.top_ops(str(tmp_path / "gpu.json.gz"), 2) == [
      ["conv", 0.4, 0.8889], ["fusion", 0.05, 0.1111]]
  cpu = [{"ph": "X", "pid": 2, "tid": 1, "name": "run", "dur": 50},
         {"ph": "X", "pid": 2, "tid": 2, "name": "copy.1", "dur": 30, "args": {"hlo_op": "copy.1"}},
         {"ph": "X", "pid": 2, "tid": 3, "name": "dot.2", "dur": 10, "args": {"hlo_op": "dot.2"}}]
  write_trace(tmp_path / "cpu.json.gz", meta[3:] + cpu)
  assert bench_step.top_ops(str(tmp_path / "cpu.json.gz"), 1, top=1) == [["copy.1", 0.03, 0.75]]
