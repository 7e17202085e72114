"""Times the jitted SimCLR train step on synthetic data and prints its throughput.

  python experiments/bench_step.py --depth=50 --image_size=224 --batch=256
  python experiments/bench_step.py --depth=18 --cifar_stem --image_size=32 --batch=512

Prints one JSON line: images/s (an image is two views), step ms, and achieved TFLOP/s
from the FLOP count of the compiled step (XLA's analytic per-op count of the whole step:
augmentation, forward, backward and optimizer). Run ../shared/bench/torch_simclr_step.py
in the same session on the same card to compare; record both in experiments/RESULTS.md.
"""
import json
import os
import sys
import time

from absl import app, flags
import jax
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "configs"))
import simclr_v1  # noqa: E402  pylint: disable=wrong-import-position
from ssl_jax import methods, models, optim, parallel, state as state_lib, train  # noqa: E402

flags.DEFINE_integer("depth", 50, "ResNet depth.")
flags.DEFINE_float("width", 1.0, "ResNet width multiplier.")
flags.DEFINE_bool("cifar_stem", False, "3x3 stem without max-pool (32 px images).")
flags.DEFINE_integer("image_size", 224, "Crop side.")
flags.DEFINE_integer("batch", 256, "Global batch (images; each gives two views).")
flags.DEFINE_integer("steps", 20, "Timed steps.")
flags.DEFINE_integer("warmup", 3, "Untimed steps after compiling.")
flags.DEFINE_string("dtype", "auto", "Compute dtype.")
flags.DEFINE_float("blur_prob", 0.5, "On-device blur probability (0 skips the op).")
flags.DEFINE_string("resize_method", "bicubic", "Crop resize kernel: bilinear | bicubic.")
flags.DEFINE_bool("antialias", False, "Antialiased crop resizing (PIL's; SimCLR: off).")
FLAGS = flags.FLAGS


def main(_):
  c = simclr_v1.get_config()
  c.batch_size, c.image_size, c.dtype = FLAGS.batch, FLAGS.image_size, FLAGS.dtype
  c.model.update(depth=FLAGS.depth, width=FLAGS.width, cifar_stem=FLAGS.cifar_stem)
  c.augment.update(blur_prob=FLAGS.blur_prob, resize_method=FLAGS.resize_method,
                   antialias=FLAGS.antialias)
  method = methods.get(c.method)
  mesh = parallel.make_mesh()
  schedule = optim.lr_schedule(c.optimizer, c.batch_size, 100, 10_000)
  tx = optim.make_optimizer(c.optimizer, schedule)
  state = jax.device_put(state_lib.create_state(method, c, tx, jax.random.key(0)),
                         parallel.replicated(mesh))
  step = train.make_train_step(method, c, mesh, tx, schedule)
  rng = np.random.default_rng(0)
  side = FLAGS.image_size
  batch = parallel.to_global({
      "image": rng.integers(0, 256, (FLAGS.batch, side, side, 3), dtype=np.uint8),
      "label": np.zeros(FLAGS.batch, np.int32),
      "index": np.arange(FLAGS.batch, dtype=np.int32)}, mesh)

  t0 = time.perf_counter()
  compiled = step.lower(state, batch).compile()
  compile_s = time.perf_counter() - t0
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops = float(cost.get("flops", 0.0)) * jax.device_count()
  for _ in range(FLAGS.warmup):
    state, metrics = compiled(state, batch)
  jax.block_until_ready(metrics)
  t0 = time.perf_counter()
  for _ in range(FLAGS.steps):
    state, metrics = compiled(state, batch)
  jax.block_until_ready(metrics)
  dt = (time.perf_counter() - t0) / FLAGS.steps
  print(json.dumps({
      "framework": "ssl_jax", "model": f"resnet{FLAGS.depth}x{FLAGS.width:g}",
      "res": side, "images_per_step": FLAGS.batch, "step_ms": round(1e3 * dt, 2),
      "images_per_s": round(FLAGS.batch / dt, 1),
      "tflops_per_s": round(flops / dt / 1e12, 2), "gflop_per_image": round(
          flops / FLAGS.batch / 1e9, 2), "compile_s": round(compile_s, 1),
      "device": jax.devices()[0].device_kind, "devices": jax.device_count(),
      "dtype": jax.numpy.dtype(models.compute_dtype(c.dtype, jax.default_backend())).name}))


if __name__ == "__main__":
  app.run(main)
