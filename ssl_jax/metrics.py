"""Run output: metrics.jsonl, TensorBoard (through clu, when installed) and a progress line."""
import json
import os
import sys
import time

import jax

from ssl_jax import rundir
from ssl_jax.data import tf_sources


def _tensorboard_writer(workdir):
  try:  # clu's summary writer needs TensorFlow/TensorBoard, which GPU/TPU VMs may lack
    with tf_sources.native_stderr_silenced():   # TensorFlow's start-up notices
      from clu import metric_writers  # pylint: disable=import-outside-toplevel
    return metric_writers.SummaryWriter(workdir)
  except ImportError:
    return None


class MetricsLog:
  """Writes on process 0 only; other processes keep quiet."""

  def __init__(self, workdir: str, tensorboard: bool = True):
    self.active = jax.process_index() == 0
    self.path = os.path.join(workdir, "metrics.jsonl")
    self.tensorboard = _tensorboard_writer(workdir) if self.active and tensorboard else None

  def write(self, step: int, metrics: dict):
    if not self.active:
      return
    scalars = {k: float(v) for k, v in metrics.items()}
    with open(self.path, "a") as f:
      f.write(json.dumps({"step": step, **scalars}) + "\n")
    if self.tensorboard:
      self.tensorboard.write_scalars(step, scalars)
      self.tensorboard.flush()

  def close(self):
    if self.tensorboard:
      self.tensorboard.close()


def read(workdir: str) -> list[dict]:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f if line.strip()]


def drop_after(workdir: str, step: int) -> str | None:
  """Forgets lines past `step`: a resumed run logs the steps after its checkpoint again.
  At step 0 (no checkpoint to resume from) an earlier log is moved aside whole, not
  emptied: returns where to (None when nothing was moved)."""
  path = os.path.join(workdir, "metrics.jsonl")
  if jax.process_index() != 0 or not os.path.exists(path):
    return None
  if step == 0:
    if not os.path.getsize(path):
      os.remove(path)
      return None
    aside = rundir.unused_path(path)
    os.replace(path, aside)
    return aside
  with open(path) as f:
    lines = f.readlines()
  kept = []
  for line in lines:
    try:
      if json.loads(line)["step"] <= step:
        kept.append(line if line.endswith("\n") else line + "\n")
    except (ValueError, KeyError):   # a line cut short by the kill that ended the last run
      pass
  with open(path, "w") as f:
    f.writelines(kept)
  return None


def _duration(seconds: float) -> str:
  seconds = int(seconds)
  h, rem = divmod(seconds, 3600)
  return f"{h}h{rem // 60:02d}m" if h else f"{rem // 60}m{rem % 60:02d}s"


class Progress:
  """`step 120/1000 (epoch 3) | 4.1 steps/s | 2,100 img/s | ETA 3m34s | loss 5.12`.

  The rate is measured from the end of the compilation (`compiling` ... `compiled`) and of
  each kNN monitor (`restart_clock`), so the ETA is not inflated by them."""

  def __init__(self, total_steps: int, start_step: int, global_batch: int,
               steps_per_epoch: int):
    self.total, self.batch, self.spe = total_steps, global_batch, steps_per_epoch
    self.last_step, self.last_time = start_step, time.time()
    self.compile_start = None

  def compiling(self):
    self.compile_start = time.time()
    if jax.process_index() == 0:
      print("compiling the training step...", flush=True)

  def compiled(self):
    self.restart_clock(self.last_step)
    if jax.process_index() == 0 and self.compile_start is not None:
      print(f"compiled in {_duration(self.last_time - self.compile_start)}", flush=True)

  def restart_clock(self, step: int):
    """The next rate counts only the steps after `step`, from now on (not a compilation or a
    monitor, which may fall between two logged steps)."""
    self.last_step, self.last_time = step, time.time()

  def line(self, step: int, metrics: dict) -> str:
    now = time.time()
    rate = (step - self.last_step) / max(now - self.last_time, 1e-9)
    self.last_step, self.last_time = step, now
    eta = (self.total - step) / rate if rate > 0 else float("inf")
    shown = " | ".join(f"{k} {v:.4g}" for k, v in metrics.items())
    return (f"step {step}/{self.total} (epoch {step / self.spe:.1f}) | {rate:.2f} steps/s | "
            f"{rate * self.batch:,.0f} img/s | ETA {_duration(eta)} | {shown}")

  def show(self, step: int, metrics: dict):
    if jax.process_index() == 0:
      print(self.line(step, metrics), file=sys.stdout, flush=True)


def header(config, workdir: str, num_train: int, num_eval: int, total_steps: int,
           steps_per_epoch: int) -> str:
  """The run in a few lines, printed before training (the whole config is in config.json)."""
  m = config.model
  if m.name == "vit":
    model = f"ViT, depth {m.depth}, width {m.width:g}, patch {m.patch_size}"
  else:
    model = f"ResNet-{m.depth}, width {m.width:g}" + (", CIFAR stem" if m.cifar_stem else "")
  devices = f"{jax.device_count()} {jax.devices()[0].platform} device(s)"
  if jax.process_count() > 1:
    devices += f" on {jax.process_count()} processes"
  return "\n".join([
      f"{config.method} | {total_steps} steps = {total_steps / steps_per_epoch:.1f} epochs of "
      f"{steps_per_epoch} | global batch {config.batch_size} on {devices}",
      f"  data     {config.dataset}: {num_train:,} training / {num_eval:,} eval images, "
      f"{config.image_size} px crops",
      f"  model    {model}",
      f"  workdir  {workdir} (the whole config: {os.path.join(workdir, 'config.json')})"])
