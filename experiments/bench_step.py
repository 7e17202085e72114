"""Times any method's real jitted train step on synthetic uint8 images, one JSON line a config.

  python experiments/bench_step.py --configs=configs/simclr_v1.py:cifar10,configs/byol.py:cifar10
  python experiments/bench_step.py --configs=configs/simclr_v1.py --override=batch_size=256
  python experiments/bench_step.py --configs=configs/dino.py --override=batch_size=128

`--configs` lists `configs/<method>.py[:variant]`; each `--override=field=value` (repeat the
flag) applies to every config in the list, parsed as `--config.field=value` is by
ssl_jax/main.py. The step is train.make_train_step on a state from state_initializer, as
train.py builds them: the method's views (multi-crop), queues, banks, EMA targets, the online
probe and the on-device augmentation all run. config.run is filled as for a data set of
--num_train_examples images (memory banks have that many rows).

Each line: images/s (an image gives all its views), step ms, XLA's FLOP count of the
compiled step (its analytic per-op count: augmentation, forward, backward, optimizer) and
the TFLOP/s it implies, compile s, and memory: the compiled step's own (XLA's memory
analysis: arguments + outputs + temporaries) and the process's peak where the backend
reports it (device.memory_stats(); None on CPU; the peak of the process so far, so it only
grows along the list). With --profile_dir, a jax.profiler trace of a few more steps goes to
<profile_dir>/<method>_<variant>/ and the line gets the top ops of the trace by time.

Run ../shared/bench/torch_simclr_step.py and torch_dino_step.py in the same session on the
same card to compare (experiments/gpu_session.sh does all of it).
"""
import collections
import glob
import gzip
import json
import os
import sys
import time

from absl import app, flags
import jax
import ml_collections
import numpy as np
from ml_collections import config_flags

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
# pylint: disable=wrong-import-position
from ssl_jax import config as config_lib, methods, models, optim  # noqa: E402
from ssl_jax import parallel, train  # noqa: E402
from ssl_jax.errors import ConfigError  # noqa: E402
from ssl_jax.state import state_initializer  # noqa: E402

flags.DEFINE_list("configs", ["configs/simclr_v1.py:cifar10"],
                  "Comma-separated configs, `configs/<method>.py[:variant]`.")
flags.DEFINE_multi_string("override", [], "`field=value` for every config (repeatable), "
                          "as `--config.field=value` on the training command line.")
flags.DEFINE_integer("steps", 20, "Timed steps.")
flags.DEFINE_integer("warmup", 3, "Untimed steps after compiling.")
flags.DEFINE_integer("num_train_examples", 50_000,
                     "Data set size the run fields (memory banks, schedules) are set for.")
flags.DEFINE_integer("num_classes", 10, "Classes of the online probe (0 = no probe).")
flags.DEFINE_string("profile_dir", "", "Write a jax.profiler trace of each config here.")
flags.DEFINE_integer("profile_steps", 5, "Steps traced with --profile_dir.")
flags.DEFINE_string("out", "", "Also append each JSON line to this file.")
FLAGS = flags.FLAGS


def load_config(spec: str, overrides=()) -> ml_collections.ConfigDict:
  """`path.py[:variant]` with `field=value` overrides, parsed by ml_collections' config_flags
  exactly as `--config=spec --config.field=value` on ssl_jax/main.py's command line, and
  validated; a mistake exits with one line."""
  argv = ["bench", f"--config={spec}", *[f"--config.{o}" for o in overrides]]
  values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "", flag_values=values, lock_config=True,
                                  sys_argv=argv)
  try:
    values(argv)
    config = values.config
    if not isinstance(config, ml_collections.ConfigDict):   # the file failed to load
      config.to_dict()   # raises the loading error
  except Exception as e:  # pylint: disable=broad-except
    # main.py's one-line messages; imported only here, as importing it defines its flags.
    from ssl_jax.main import flag_error_message  # pylint: disable=import-outside-toplevel
    raise SystemExit(f"error: {spec}: {flag_error_message(e)}") from e
  try:
    config_lib.validate(config, jax.device_count())
  except ConfigError as e:
    raise SystemExit(f"error: {spec}: {e}") from e
  return config


def fill_run_fields(config, num_train_examples: int):
  """config.run as train.py fills it for a data set of `num_train_examples` images;
  returns (schedule, optimizer) built the same way."""
  config_lib.fill_run(config, max(num_train_examples // config.batch_size, 1),
                      num_train_examples)
  return optim.for_run(config)


def build(config, mesh, num_train_examples: int, num_classes: int):
  """(method, jitted train step, replicated initial state) for a validated `config`."""
  method = methods.get(config.method)
  schedule, tx = fill_run_fields(config, num_train_examples)
  state = state_initializer(method, config, tx, mesh, num_classes)(jax.random.key(config.seed))
  return method, train.make_train_step(method, config, mesh, tx, schedule), state


def synthetic_batch(config, side: int, num_classes: int, mesh, seed: int = 0) -> dict:
  rng = np.random.default_rng(seed)
  n = config.batch_size
  return parallel.to_global({
      "image": rng.integers(0, 256, (n, side, side, 3), dtype=np.uint8),
      "label": rng.integers(0, max(num_classes, 1), n).astype(np.int32),
      "index": np.arange(n, dtype=np.int32)}, mesh)


def compile_step(step, state, batch):
  """(compiled step, compile seconds, FLOPs of one global step, step's own bytes)."""
  t0 = time.perf_counter()
  compiled = step.lower(state, batch).compile()
  seconds = time.perf_counter() - t0
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops = float((cost or {}).get("flops", 0.0)) * jax.device_count()   # per-device program
  memory = compiled.memory_analysis()
  step_bytes = None if memory is None else int(
      memory.argument_size_in_bytes + memory.output_size_in_bytes +
      memory.temp_size_in_bytes - memory.alias_size_in_bytes)
  return compiled, seconds, flops, step_bytes


def time_steps(compiled, state, batch, steps: int, warmup: int):
  """(state, seconds per step) over `steps` steps after `warmup` untimed ones."""
  metrics = None
  for _ in range(warmup):
    state, metrics = compiled(state, batch)
  jax.block_until_ready(metrics)
  t0 = time.perf_counter()
  for _ in range(steps):
    state, metrics = compiled(state, batch)
  jax.block_until_ready(metrics)
  return state, (time.perf_counter() - t0) / steps


def model_name(m) -> str:
  if m.name == "vit":
    return f"vit-d{m.depth}-w{int(m.width)}-p{m.patch_size}"
  return f"resnet{m.depth}x{m.width:g}" + ("-cifar" if m.cifar_stem else "")


def views_text(views) -> str:
  """e.g. '2x224+10x96'."""
  counts = collections.Counter(v.size for v in views)
  return "+".join(f"{n}x{size}" for size, n in counts.items())


def peak_device_bytes():
  stats = jax.devices()[0].memory_stats()   # None where the backend keeps none (CPU)
  return None if not stats else stats.get("peak_bytes_in_use")


def bench(spec: str, overrides=(), steps: int = 20, warmup: int = 3,
          num_train_examples: int = 50_000, num_classes: int = 10,
          profile_dir: str = "", profile_steps: int = 5) -> dict:
  """Builds, compiles and times one config's train step; returns its JSON-ready record.
  With `profile_dir`, emits that record, traces `profile_steps` more steps and returns the
  trace's record (where it is, its top ops)."""
  config = load_config(spec, overrides)
  mesh = parallel.make_mesh()
  method, step, state = build(config, mesh, num_train_examples, num_classes)
  views = method.views(config)
  batch = synthetic_batch(config, max(v.size for v in views), num_classes, mesh)
  compiled, compile_s, flops, step_bytes = compile_step(step, state, batch)
  state, dt = time_steps(compiled, state, batch, steps, warmup)
  n = config.batch_size
  _, _, variant = spec.partition(":")
  record = {
      "method": config.method, "variant": variant or "default", "config": spec,
      "overrides": list(overrides), "model": model_name(config.model),
      "views": views_text(views), "images_per_step": n, "step_ms": round(1e3 * dt, 3),
      "images_per_s": round(n / dt, 1), "gflop_per_step": round(flops / 1e9, 3),
      "tflops_per_s": round(flops / dt / 1e12, 4), "compile_s": round(compile_s, 2),
      "device": jax.devices()[0].device_kind, "devices": jax.device_count(),
      "dtype": np.dtype(models.compute_dtype(config.dtype, jax.default_backend())).name,
      "step_memory_bytes": step_bytes, "peak_device_bytes": peak_device_bytes(),
      "timed_steps": steps}
  if not profile_dir:
    return record
  # The timing line goes out first: a profiler that fails or hangs cannot take it along.
  emit(record)
  where = os.path.join(profile_dir, f"{config.method}_{variant or 'default'}")
  try:
    ops = profile(compiled, state, batch, profile_steps, where)
  except Exception as e:  # pylint: disable=broad-except
    ops = error_record(spec, e)["error"]
  return {key: record[key] for key in ("method", "variant", "config", "overrides", "device")
          } | {"profile": where, "profiled_steps": profile_steps, "top_ops": ops}


def profile(compiled, state, batch, steps: int, where: str, top: int = 15) -> list:
  """Traces `steps` steps into `where`; [op, ms per step, share of traced op time]."""
  state, metrics = compiled(state, batch)   # the trace starts with nothing in flight
  jax.block_until_ready(metrics)
  with jax.profiler.trace(where, create_perfetto_trace=True):
    for _ in range(steps):
      state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics)
  traces = glob.glob(os.path.join(where, "**", "perfetto_trace.json.gz"), recursive=True)
  return top_ops(max(traces, key=os.path.getmtime), steps, top) if traces else []


def top_ops(trace_path: str, steps: int, top: int = 15) -> list:
  """The ops that took the most time in a jax.profiler perfetto trace, as [name, ms per
  step, share of all op time]: the kernels on a GPU's streams, else (CPU) the XLA ops."""
  with gzip.open(trace_path, "rt") as f:
    events = json.load(f)
  events = events["traceEvents"] if isinstance(events, dict) else events
  names = {(e["pid"], e.get("tid")): e["args"]["name"] for e in events if e.get("ph") == "M"
           and e.get("name") in ("process_name", "thread_name")}
  streams = {(pid, tid) for (pid, tid), name in names.items() if tid is not None and
             name.startswith("Stream") and "/device:" in names.get((pid, None), "")}
  total = collections.Counter()
  for e in events:
    if e.get("ph") != "X":
      continue
    if (e["pid"], e.get("tid")) in streams:
      total[e["name"]] += e.get("dur", 0)   # microseconds
    elif not streams and "hlo_op" in e.get("args", {}):
      total[e["args"]["hlo_op"]] += e.get("dur", 0)
  all_us = sum(total.values()) or 1
  return [[name, round(us / 1e3 / steps, 4), round(us / all_us, 4)]
          for name, us in total.most_common(top)]


def emit(record: dict):
  """Prints `record` as one JSON line, and appends it to --out when given."""
  line = json.dumps(record)
  print(line, flush=True)
  if FLAGS.out:
    with open(FLAGS.out, "a") as f:
      f.write(line + "\n")


def error_record(spec: str, e: Exception) -> dict:
  text = str(e).splitlines()[0][:300] if str(e) else ""
  return {"config": spec, "error": f"{type(e).__name__}: {text}"}


def main(_):
  for spec in FLAGS.configs:   # a misspelt config or field stops here, before any compile
    load_config(spec, FLAGS.override)
  for spec in FLAGS.configs:
    try:
      emit(bench(spec, FLAGS.override, FLAGS.steps, FLAGS.warmup, FLAGS.num_train_examples,
                 FLAGS.num_classes, FLAGS.profile_dir, FLAGS.profile_steps))
    except Exception as e:  # pylint: disable=broad-except  # e.g. out of memory: go on
      emit(error_record(spec, e))


if __name__ == "__main__":
  app.run(main)
