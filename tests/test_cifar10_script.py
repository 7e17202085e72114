"""experiments/cifar10: run.py writes a full row from a tiny run; table.py renders it."""
import importlib.util
import json
import os

import numpy as np
from PIL import Image

from ssl_jax.data import sources

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--override", "model.width=0.0625", "--override", "image_size=16",
        "--override", "batch_size=16", "--override", "num_steps=4",
        "--override", "log_every_steps=1", "--override", "eval.plots=False",
        "--override", "eval.random_init=False", "--knn_every_epochs=1", "--linear_epochs=1"]


def load_script(name: str):
  path = os.path.join(ROOT, "experiments", "cifar10", f"{name}.py")
  spec = importlib.util.spec_from_file_location(f"cifar10_{name}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def tiny_packed(tmp_path) -> str:
  """4 train and 2 test images per class: the real CIFAR-10 JPEGs when
  SSL_JAX_CIFAR10_DIR is set, else random 32 px images in the same layout."""
  out = str(tmp_path / "tiny.npz")
  folder = os.environ.get("SSL_JAX_CIFAR10_DIR")
  if not folder:
    folder, rng = str(tmp_path / "images"), np.random.default_rng(0)
    for split, n in (("train", 4), ("test", 2)):
      for c in range(10):
        os.makedirs(f"{folder}/{split}/class{c}")
        for i in range(n):
          pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
          Image.fromarray(pixels).save(f"{folder}/{split}/class{c}/{i}.jpg")
  sources.pack_image_folder(folder, out, {"train": 4, "test": 2})
  return out


def test_run_writes_a_row_and_table_renders_it(tmp_path, fast_compiles):
  results, markdown = str(tmp_path / "results.jsonl"), str(tmp_path / "RESULTS.md")
  with open(markdown, "w") as f:
    f.write("# Results\n\nearlier text\n")
  row = load_script("run").main([
      "--method_config=" + os.path.join(ROOT, "configs", "simclr_v2.py"),
      "--data=" + tiny_packed(tmp_path), "--workdir=" + str(tmp_path / "run"),
      "--results=" + results, "--card=test cpu", *TINY])

  written = [json.loads(line) for line in open(results)]
  assert written == [row]
  for key in ("method", "config", "command", "date", "card", "epochs", "knn_top1",
              "knn_top1_best", "linear_top1", "images_per_s", "s_per_epoch",
              "anchor_knn_top1", "metrics", "knn_curve"):
    assert key in row, key
  assert row["method"] == "simclr_v2" and row["card"] == "test cpu"
  assert row["anchor_knn_top1"] == 0.848 and row["epochs"] == 2
  assert 0 <= row["knn_top1"] <= row["knn_top1_best"] <= 1 and 0 <= row["linear_top1"] <= 1
  assert row["images_per_s"] > 0 and row["s_per_epoch"] > 0
  assert [epoch for epoch, _ in row["knn_curve"]] == [1, 2]   # the monitor, then the end

  table = load_script("table")
  for _ in range(2):   # a second pass replaces the section instead of adding one
    table.main(["--results=" + results, "--markdown=" + markdown,
                "--figure=" + str(tmp_path / "curves.png")])
  text = open(markdown).read()
  assert text.startswith("# Results\n\nearlier text\n")
  assert text.count(table.BEGIN) == 1 and text.count(table.END) == 1
  assert "| simclr_v2 |" in text and "84.80%" in text
  assert open(tmp_path / "curves.png", "rb").read(4) == b"\x89PNG"
