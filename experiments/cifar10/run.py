"""Runs one method's CIFAR-10 protocol end to end and appends its row to results.jsonl.

  python experiments/cifar10/run.py --method_config=configs/simclr_v2.py \
      --data=.packed/cifar10.npz [--epochs=200] [--override model.width=0.5 ...]

Pretrains the config file's `cifar10` variant (lightly's benchmark recipe for the methods it
benchmarks; --variant=cifar10_orig for the original's own CIFAR recipe where there is one)
on the packed data (kNN monitor every --knn_every_epochs, default the variant's), then runs the offline linear protocol on the final checkpoint, and
writes one JSON line: accuracies, throughput, card, command and date. A run stopped by
SIGTERM (e.g. `timeout`) checkpoints; the same command resumes it. See README.md here.
"""
import argparse
import ast
import datetime
import importlib.util
import json
import os
import shlex
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))   # ssl_jax, when not installed
RESULTS = os.path.join(HERE, "results.jsonl")
# lightly's CIFAR-10 benchmark: ResNet-18, 200 epochs, batch 512, kNN top-1 (k=200).
ANCHORS = {"simclr": 0.848, "moco": 0.847, "byol": 0.868, "simsiam": 0.764, "swav": 0.842,
           "dino": 0.813}


def parse_args(argv):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--method_config", required=True, help="configs/<method>.py")
  p.add_argument("--data", required=True, help="packed CIFAR-10 .npz (ssl_jax.data.pack)")
  p.add_argument("--workdir", default="", help="default runs/cifar10/<name>")
  p.add_argument("--name", default="", help="row label (default: the config file's stem)")
  p.add_argument("--epochs", type=int, default=200)
  p.add_argument("--variant", default="cifar10",
                 help="cifar10 (lightly's benchmark recipe) or cifar10_orig where there is one")
  p.add_argument("--knn_every_epochs", type=int, default=None,
                 help="default: the variant's (1 for lightly's benchmark recipes)")
  p.add_argument("--linear_epochs", type=int, default=90)
  p.add_argument("--override", action="append", default=[], metavar="FIELD=VALUE",
                 help="config field, e.g. model.width=0.5 (repeatable)")
  p.add_argument("--card", default="", help="default: jax.devices()[0].device_kind")
  p.add_argument("--results", default=RESULTS)
  return p.parse_args(argv)


def load_config(path: str, variant: str = "cifar10"):
  spec = importlib.util.spec_from_file_location("method_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(variant)


def apply_override(config, text: str):
  field, sep, raw = text.partition("=")
  if not sep:
    raise SystemExit(f"error: --override {text!r} is not FIELD=VALUE")
  try:
    value = ast.literal_eval(raw)
  except (ValueError, SyntaxError):
    value = raw   # a bare string, e.g. dtype=float32
  *parents, leaf = field.split(".")
  node = config
  for name in parents:
    node = node[name]
  node[leaf] = value


class StepTimer:
  """Wraps metrics.MetricsLog to time training between log lines (host syncs there).

  Each interval runs from the previous write (training or kNN line) to the next training
  line, so kNN monitors and the first step's compilation are left out. Intervals are
  appended to workdir/timing.jsonl, so a resumed run still counts the earlier sessions.
  """

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, "timing.jsonl")
    self.last = None   # (step, time) of the previous write

  def install(self, metrics_lib):
    base, timer = metrics_lib.MetricsLog, self

    class TimedLog(base):
      def write(self, step, metrics):
        super().write(step, metrics)
        timer.record(step, "loss" in metrics)
    metrics_lib.MetricsLog = TimedLog
    return base

  def record(self, step: int, is_train_line: bool):
    now = time.perf_counter()
    if is_train_line and self.last is not None and step > self.last[0]:
      with open(self.path, "a") as f:
        f.write(json.dumps({"steps": step - self.last[0], "s": now - self.last[1]}) + "\n")
    self.last = (step, now)

  def images_per_s(self, batch_size: int):
    if not os.path.exists(self.path):
      return None
    with open(self.path) as f:
      rows = [json.loads(line) for line in f if line.strip()]
    seconds = sum(r["s"] for r in rows)
    return sum(r["steps"] for r in rows) * batch_size / seconds if seconds else None


def knn_curve(metrics_path: str, steps_per_epoch: int) -> list:
  """[(epoch, kNN top-1)], the last line of each step winning (a resumed run rewrites)."""
  points = {}
  with open(metrics_path) as f:
    for line in f:
      row = json.loads(line) if line.strip() else {}
      if "knn_top1" in row:
        points[row["step"]] = row["knn_top1"]
  return [[step / steps_per_epoch, top1] for step, top1 in sorted(points.items())]


def pretrain(config, workdir: str) -> tuple[dict, float | None, float]:
  from ssl_jax import metrics as metrics_lib, train  # pylint: disable=import-outside-toplevel
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "config.json"), "w") as f:   # the offline protocol reads it
    f.write(config.to_json_best_effort(indent=2))
  timer = StepTimer(workdir)
  base = timer.install(metrics_lib)
  start = time.time()
  try:
    result = train.train_and_evaluate(config, workdir)
  finally:
    metrics_lib.MetricsLog = base
  return result, timer.images_per_s(config.batch_size), time.time() - start


def linear_eval(workdir: str, epochs: int) -> tuple[dict, float]:
  from ssl_jax.evaluate import linear, protocols  # pylint: disable=import-outside-toplevel
  start = time.time()
  result = protocols.evaluate(workdir, "linear", linear.Settings(epochs=epochs))
  return result, time.time() - start


def main(argv=None) -> dict:
  args = parse_args(sys.argv[1:] if argv is None else argv)
  import jax  # pylint: disable=import-outside-toplevel
  config = load_config(args.method_config, args.variant)
  config.dataset = f"packed:{os.path.abspath(args.data)}"
  config.num_epochs = args.epochs
  if args.knn_every_epochs is not None:
    config.eval.knn_every_epochs = args.knn_every_epochs
  for text in args.override:
    apply_override(config, text)
  name = args.name or os.path.splitext(os.path.basename(args.method_config))[0]
  workdir = args.workdir or os.path.join("runs", "cifar10", name)

  knn, images_per_s, pretrain_s = pretrain(config, workdir)
  linear, linear_s = linear_eval(workdir, args.linear_epochs)
  spe = config.run.steps_per_epoch
  row = {
      "method": name, "config": f"{args.method_config}:{args.variant}",
      "overrides": args.override,
      "command": " ".join(shlex.quote(a) for a in ["python", sys.argv[0]] + (
          sys.argv[1:] if argv is None else list(argv))),
      "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
      "card": args.card or jax.devices()[0].device_kind,
      "devices": jax.device_count(), "epochs": config.run.total_steps / spe,
      "batch_size": config.batch_size, "steps_per_epoch": spe,
      "knn_top1": knn["knn_top1"], "knn_top1_best": knn["knn_top1_best"],
      "knn_top1_random_init": knn.get("knn_top1_random_init"),
      "linear_top1": linear["top1"], "linear_epochs": args.linear_epochs,
      "images_per_s": images_per_s,
      "s_per_epoch": spe * config.batch_size / images_per_s if images_per_s else None,
      "pretrain_wall_s": pretrain_s, "linear_wall_s": linear_s,
      "anchor_knn_top1": ANCHORS.get(config.method),
      "workdir": os.path.abspath(workdir),
      "metrics": os.path.abspath(os.path.join(workdir, "metrics.jsonl")),
      # The curve travels in the row: a device run returns results.jsonl, not its workdir.
      "knn_curve": knn_curve(os.path.join(workdir, "metrics.jsonl"), spe),
  }
  with open(args.results, "a") as f:
    f.write(json.dumps(row) + "\n")
  print(f"{name}: kNN top-1 {row['knn_top1']:.4f} (best {row['knn_top1_best']:.4f}), "
        f"linear top-1 {row['linear_top1']:.4f}, {images_per_s or 0:,.0f} img/s; "
        f"row appended to {args.results}", flush=True)
  return row


if __name__ == "__main__":
  main()
