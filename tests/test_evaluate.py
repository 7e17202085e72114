"""Offline evaluation of a pretrained workdir, the linear probe, t-SNE and the plots."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from ssl_jax import checkpoint, config as config_lib, parallel
from ssl_jax.errors import ConfigError
from ssl_jax.evaluate import linear, plots, protocols

ROOT = os.path.join(os.path.dirname(__file__), "..")
PNG = b"\x89PNG"


def run(module, *args, cache):
  env = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=cache,
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
  return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
  """A smoke pretraining run (3 steps), its plots written at the end."""
  workdir = tmp_path_factory.mktemp("pretrained")
  cache = tmp_path_factory.getbasetemp() / "xla_cache"   # shared with test_checkpoint
  cache.mkdir(exist_ok=True)
  cache = str(cache)
  proc = run("ssl_jax.main", "--config=configs/simclr_v2.py:smoke", f"--workdir={workdir}",
             "--config.eval.random_init=False", cache=cache)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return workdir, cache


def test_plots_are_written_at_the_end_of_training(pretrained):
  workdir, _ = pretrained
  for name in ("curves.png", "embedding_tsne.png"):
    assert (workdir / "plots" / name).read_bytes()[:4] == PNG


def test_knn_cli_reproduces_the_training_evaluation(pretrained):
  workdir, cache = pretrained
  proc = run("ssl_jax.evaluate", f"--workdir={workdir}", "--protocol=knn", cache=cache)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "knn (offline)" in proc.stdout
  results = json.loads((workdir / "eval.json").read_text())
  # The same checkpoint, features and rule as the final evaluation of the run.
  assert results["knn"]["protocol"] == "knn" and results["knn"]["step"] == 3
  assert results["knn"]["top1"] == results["knn_top1"]


def test_linear_export_and_plots_in_process(pretrained):
  workdir, _ = pretrained
  result = protocols.evaluate(str(workdir), "linear", linear.Settings(epochs=1, batch_size=256))
  assert 0.0 <= result["top1"] <= result["top5"] <= 1.0 and result["batch_size"] == 256
  assert result["lr"] == pytest.approx(0.1)
  exported = protocols.evaluate(str(workdir), "export")
  train_f = np.load(workdir / "features" / "train_features.npy")
  eval_y = np.load(workdir / "features" / "eval_labels.npy")
  assert train_f.shape == (5000, 32) and eval_y.shape == (1000,)
  assert exported["shapes"] == {"train": [5000, 32], "eval": [1000, 32]}
  results = json.loads((workdir / "eval.json").read_text())
  assert results["linear"]["protocol"] == "linear" and "knn_top1" in results
  os.remove(workdir / "plots" / "curves.png")
  protocols.evaluate(str(workdir), "plots")
  assert (workdir / "plots" / "curves.png").read_bytes()[:4] == PNG


def test_a_workdir_without_a_run_is_one_clear_error(tmp_path):
  with pytest.raises(ConfigError, match="holds no config.json"):
    protocols.evaluate(str(tmp_path), "knn")


def test_an_unwritable_checkpoint_directory_is_a_clear_os_error(tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("")
  with pytest.raises(OSError, match="checkpoints in .*file/run/checkpoints"):
    checkpoint.Checkpointer(str(blocker / "run"), config_lib.base_config().checkpoint)


def separable(n_per_class, rng, dim=16, classes=4):
  labels = np.repeat(np.arange(classes), n_per_class)
  features = 3 * np.eye(classes, dim)[labels] + 0.3 * rng.normal(size=(len(labels), dim))
  return features.astype(np.float32), labels.astype(np.int32)


def test_linear_probe_separates_separable_features():
  rng = np.random.default_rng(0)
  train_x, train_y = separable(64, rng)
  test_x, test_y = separable(25, rng)
  identity = lambda variables, x, key: x  # pylint: disable=unnecessary-lambda-assignment
  classifier = linear.fit(identity, None, train_x, train_y, 4,
                          linear.Settings(epochs=10, batch_size=32, base_lr=1.0),
                          parallel.make_mesh())
  assert linear.accuracy(classifier, test_x, test_y) == {"top1": 1.0, "top5": 1.0}
  assert linear.default_batch_size(1_281_167) == 4096
  assert linear.default_batch_size(50_000) == 512 and linear.default_batch_size(5000) == 64


def test_tsne_keeps_clusters_apart(tmp_path):
  features, labels = separable(40, np.random.default_rng(1), dim=20, classes=3)
  points = plots.tsne(features, iterations=300)
  d = ((points[:, None] - points[None]) ** 2).sum(-1)
  np.fill_diagonal(d, np.inf)
  assert (labels[d.argmin(axis=1)] == labels).mean() == 1.0
  path = plots.plot_embedding(points, labels, ("a", "b", "c"), str(tmp_path / "e.png"))
  assert open(path, "rb").read(4) == PNG
