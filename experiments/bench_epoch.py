"""Wall time of whole training epochs through the real input path, and how long the device
waited for data.

  python -m ssl_jax.data.pack ../shared/datasets/cifar10 .packed/cifar10.npz
  python experiments/bench_epoch.py --configs=configs/simclr_v1.py:cifar10 \
      --override=dataset=packed:.packed/cifar10.npz --epochs=3

Each config runs as train.py runs it: the split decoded into host memory, MemoryLoader's
batches copied to the device on a thread two ahead, the jitted step with its on-device
augmentation, and every config.log_every_steps a host sync that writes metrics.jsonl,
TensorBoard and the progress line (into a temporary workdir). Left out: checkpoints and the
kNN monitor inside the timed epochs (--knn times one kNN evaluation after them).

One JSON line a config: s per epoch (after compiling; the first epoch also warms the
loader), `input_wait_share`, the share of each epoch the host loop stood waiting for the
next batch, and `device_idle_share` = 1 - steps x (the same step timed on a batch already on
the device) / epoch time: the share of the epoch the device was not computing. Flags read:
--configs, --override, --steps (the resident-batch timing) and the ones below.
"""
import os
import sys
import tempfile
import time

from absl import app, flags
import jax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# pylint: disable=wrong-import-position
import bench_step  # noqa: E402  (puts this checkout's ssl_jax first on the path)
from ssl_jax import methods, metrics as metrics_lib, parallel, train  # noqa: E402
from ssl_jax.evaluate import knn  # noqa: E402
from ssl_jax.state import eval_variables  # noqa: E402

flags.DEFINE_integer("epochs", 2, "Whole epochs timed per config.")
flags.DEFINE_bool("knn", False, "Also time one kNN evaluation (train split -> eval split).")
FLAGS = flags.FLAGS


def run_epochs(config, data, compiled, state, first_batch, epochs: int, workdir: str):
  """(state, [s per epoch], [s waited for data per epoch]) of the train.py loop."""
  spe = data.steps_per_epoch
  steps = epochs * spe
  batches = data.batches(1, steps)   # step 0 is `first_batch`, used to compile
  log = metrics_lib.MetricsLog(workdir)
  progress = metrics_lib.Progress(steps, 0, config.batch_size, spe)
  epoch_s, wait_s = [], []
  batch, waited, start = first_batch, 0.0, time.perf_counter()
  for step in range(1, steps + 1):
    if step > 1:
      t = time.perf_counter()
      batch = next(batches)
      waited += time.perf_counter() - t
    state, metrics = compiled(state, batch)
    if step % config.log_every_steps == 0 or step == steps:
      metrics = jax.device_get(metrics)   # train.py's only host sync
      train.check_finite(metrics, step)
      log.write(step, metrics)
      progress.show(step, metrics)
    if step % spe == 0:
      jax.block_until_ready(state.step)
      now = time.perf_counter()
      epoch_s.append(now - start)
      wait_s.append(waited)
      waited, start = 0.0, now
  log.close()
  return state, epoch_s, wait_s


def bench_epochs(spec: str, overrides=(), epochs: int = 2, steps: int = 20,
                 time_knn: bool = False) -> dict:
  config = bench_step.load_config(spec, overrides)
  method = methods.get(config.method)
  mesh = parallel.make_mesh()
  t0 = time.perf_counter()
  train_split, test_split, data = train.load_training_data(config, method, mesh)
  load_s = time.perf_counter() - t0
  _, step, state = bench_step.build(config, mesh, len(train_split), len(train_split.classes))
  first_batch = next(data.batches(0, 1))
  compiled, compile_s, flops, _ = bench_step.compile_step(step, state, first_batch)
  with tempfile.TemporaryDirectory() as workdir:
    state, epoch_s, wait_s = run_epochs(config, data, compiled, state, first_batch, epochs,
                                        workdir)
  state, step_s = bench_step.time_steps(compiled, state, first_batch, steps, 1)
  spe = data.steps_per_epoch
  record = {
      "method": config.method, "config": spec, "overrides": list(overrides),
      "dataset": config.dataset, "train_images": len(train_split), "batch": config.batch_size,
      "steps_per_epoch": spe, "load_s": round(load_s, 2), "compile_s": round(compile_s, 2),
      "epoch_s": [round(s, 3) for s in epoch_s],
      "images_per_s": round(spe * config.batch_size / min(epoch_s), 1),
      "input_wait_share": [round(w / s, 4) for w, s in zip(wait_s, epoch_s)],
      "device_idle_share": [round(max(0.0, 1 - spe * step_s / s), 4) for s in epoch_s],
      "resident_step_ms": round(1e3 * step_s, 3),
      "tflops_per_s": round(flops * spe / min(epoch_s) / 1e12, 4),
      "device": jax.devices()[0].device_kind, "devices": jax.device_count()}
  if time_knn:
    t0 = time.perf_counter()
    result = knn.evaluate(method, config, eval_variables(method, state), train_split,
                          test_split, mesh)
    record.update(knn_s=round(time.perf_counter() - t0, 2), knn_top1=result["knn_top1"])
  return record


def main(_):
  for spec in FLAGS.configs:   # a misspelt config or field stops here, before any compile
    bench_step.load_config(spec, FLAGS.override)
  for spec in FLAGS.configs:
    try:
      bench_step.emit(bench_epochs(spec, FLAGS.override, FLAGS.epochs, FLAGS.steps, FLAGS.knn))
    except Exception as e:  # pylint: disable=broad-except  # e.g. out of memory: go on
      bench_step.emit(bench_step.error_record(spec, e))


if __name__ == "__main__":
  app.run(main)
