"""Offline evaluation of a pretrained workdir, the linear probe, t-SNE and the plots."""
import glob
import importlib
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import one_device_env
from ssl_jax import checkpoint, config as config_lib, methods, parallel
from ssl_jax.data import sources
from ssl_jax.errors import ConfigError
from ssl_jax.evaluate import linear, plots, protocols, workdir as workdir_lib

ROOT = os.path.join(os.path.dirname(__file__), "..")
PNG = b"\x89PNG"


def run(module, *args, cache):
  env = one_device_env(cache)
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


@pytest.mark.parametrize("flag, value", [
    ("epochs", 0), ("epochs", -3), ("batch_size", -4), ("base_lr", 0.0), ("base_lr", -0.1),
    ("weight_decay", -1e-6), ("label_fraction", 0.0), ("label_fraction", 1.5),
    ("temperature", 0.0), ("label_weight", 2.0), ("teacher_epochs", -1),
    ("finetune_layer", -2),
])
def test_out_of_range_evaluate_flags_are_one_line_errors(flag, value):
  config_lib.check_evaluate_flags({"epochs": None, "base_lr": None})   # unset: the defaults
  with pytest.raises(ConfigError) as e:
    config_lib.check_evaluate_flags({"epochs": None, flag: value})
  assert str(e.value).startswith(f"--{flag}={value!r} must ") and "\n" not in str(e.value)


def test_finetune_epochs_zero_is_refused_not_the_default():
  from ssl_jax.evaluate import finetune  # pylint: disable=import-outside-toplevel
  with pytest.raises(ConfigError, match="--epochs=0 must be >= 1"):
    finetune.validate_settings(finetune.Settings(epochs=0))
  finetune.validate_settings(finetune.Settings())   # unset: the protocol's default


def test_evaluate_cli_refuses_bad_flags_in_one_line(tmp_path):
  proc = run("ssl_jax.evaluate", f"--workdir={tmp_path}", "--protocol=linear", "--epochs=0",
             cache=str(tmp_path))
  assert proc.returncode == 1 and proc.stderr.strip().splitlines() == [
      "error: --epochs=0 must be an integer >= 1; leave it unset for the protocol's default"]


def test_curves_put_accuracies_on_their_own_axis_with_baselines(tmp_path):
  """A 40-step log with monitors at 20 and 40 and the final random-init evaluation."""
  workdir = tmp_path / "myrun"
  workdir.mkdir()
  rng = np.random.default_rng(0)
  lines = [{"step": s, "loss": 5 - s / 20 + rng.normal(), "lr": 0.1, "embedding_std": 0.08,
            "online_train_loss": 2.3, "online_train_top1": 0.1 + s / 400} for s in range(1, 41)]
  lines += [{"step": 20, "knn_top1": 0.3, "online_top1": 0.25},
            {"step": 40, "knn_top1": 0.4, "online_top1": 0.35, "knn_top1_random_init": 0.2,
             "knn_top1_best": 0.4, "knn_top5": 0.8}]
  (workdir / "metrics.jsonl").write_text("".join(json.dumps(l) + "\n" for l in lines))
  config = config_lib.base_config()
  config.head.out_dim = 64
  fig = plots.curves_figure(plots.metric_series(str(workdir)), config, "simclr | run myrun")
  axes = {ax.get_title(): ax for ax in fig.axes if ax.axison}
  accuracy = axes["accuracy: kNN and online probe"]
  labels = [line.get_label() for line in accuracy.lines]
  assert "knn_top1" in labels and "online_top1" in labels
  assert not any("loss" in label for label in labels)   # the probe's loss has its own panel
  assert "online_train_loss" in axes and accuracy.get_ylabel() == "top-1 accuracy"
  baseline = accuracy.lines[labels.index("knn_top1, random init")]
  assert baseline.get_linestyle() == "--" and list(baseline.get_ydata()) == [0.2, 0.2]
  assert accuracy.get_ylim()[0] == 0 and accuracy.get_ylim()[1] <= 1
  std = axes["embedding_std"]
  assert [list(l.get_ydata()) for l in std.lines if l.get_linestyle() == ":"] == [[0.125] * 2]
  loss = axes["loss"]
  raw, smooth = (np.asarray(l.get_ydata()) for l in loss.lines)
  assert len(raw) == len(smooth) == 40 and loss.get_ylabel() == "loss"
  np.testing.assert_allclose(smooth, plots.smoothed(raw))
  assert np.std(np.diff(smooth)) < np.std(np.diff(raw)) / 3
  assert fig._suptitle.get_text() == "simclr | run myrun"  # pylint: disable=protected-access
  path = plots.plot_curves(str(workdir), config)
  assert open(path, "rb").read(4) == PNG


def test_smoothing_is_a_debiased_moving_average():
  np.testing.assert_allclose(plots.smoothed(np.array([2.0, 2.0, 2.0])), [2.0, 2.0, 2.0])
  np.testing.assert_allclose(plots.smoothed(np.array([0.0, 1.0]), 0.5), [0.0, 0.5 / 0.75])


def get_config(name, variant=None):
  return importlib.import_module(f"configs.{name}").get_config(variant)


def test_imagenet_defaults_evaluate_a_labelled_split_with_the_originals_crop():
  for path in glob.glob(os.path.join(ROOT, "configs", "*.py")):
    name = os.path.basename(path)[:-3]
    c = get_config(name)
    if c.dataset == "imagenet2012":   # TFDS imagenet2012's "test" has no labels
      assert (c.eval_split, c.eval.crop_proportion) == ("validation", 0.875), name
    q = get_config(name, "quickstart")
    assert (q.eval_split, q.eval.crop_proportion, q.eval.features) == ("test", 1.0, "backbone")


def test_each_methods_linear_protocol_comes_from_its_config():
  simclr = linear.resolve(None, config_lib.base_config())
  assert (simclr.epochs, simclr.base_lr, simclr.weight_decay, simclr.optimizer, simclr.init,
          simclr.schedule) == (90, 0.1, 1e-6, "nesterov", "zeros", "cosine")
  dino = linear.resolve(linear.Settings(epochs=3), get_config("dino"))   # a flag overrides
  assert (dino.epochs, dino.batch_size, dino.base_lr, dino.weight_decay, dino.optimizer,
          dino.init, dino.vit_blocks) == (3, 1024, 0.001, 0.0, "sgd", "normal", 4)
  assert get_config("dino").eval.knn_k == 20 and get_config("dino").eval.knn_temperature == 0.07
  vitb = get_config("dino", "vitb16").eval.linear
  assert (vitb.vit_blocks, vitb.vit_avgpool) == (1, True)
  moco = linear.resolve(None, get_config("moco_v1"))
  assert (moco.base_lr, moco.batch_size, moco.weight_decay, moco.epochs) == (30.0, 256, 0.0, 100)
  lr = linear._schedule(moco, 30.0, 1000)  # pylint: disable=protected-access
  np.testing.assert_allclose([lr(0), lr(599), lr(600), lr(799), lr(800)],
                             [30, 30, 3, 3, 0.3], rtol=1e-6)   # x0.1 at epochs 60 and 80
  kernel = linear.initial_classifier(moco, 512, 100)["kernel"]
  assert abs(float(kernel.std()) - 0.01) < 5e-4
  simsiam = linear.resolve(None, get_config("simsiam"))
  assert (simsiam.optimizer, simsiam.batch_size, simsiam.weight_decay) == ("lars", 4096, 0.0)
  # LARC at step 0: the kernel moves by lr x trust x |w| / |g| x g; the zero bias by lr x g.
  tx = linear._optimizer(simsiam, 256, 10)  # pylint: disable=protected-access
  params = {"kernel": jnp.full((2, 2), 3.0), "bias": jnp.zeros(2)}
  grads = {"kernel": jnp.full((2, 2), 0.5), "bias": jnp.array([1.0, -1.0])}
  updates, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(updates["kernel"], -0.1 * 1e-3 * (6.0 / 1.0) * 0.5, rtol=1e-5)
  np.testing.assert_allclose(updates["bias"], [-0.1, 0.1], rtol=1e-5)
  swav = linear.resolve(None, get_config("swav"))
  assert (swav.base_lr, swav.batch_size, swav.weight_decay, swav.epochs) == (0.3, 256, 1e-6, 100)


def test_the_dino_linear_protocol_reads_the_last_blocks_class_tokens(fast_compiles):
  del fast_compiles
  config = get_config("dino", "smoke")   # a 2-block ViT of width 32; vit_blocks = 2
  dino = methods.get("dino")
  variables = jax.jit(lambda key: dino.init(key, config, None))(jax.random.key(0))
  variables = {"params": variables["params"], "batch_stats": variables["batch_stats"]}
  encode = lambda c: jax.jit(lambda v, x: dino.encode(v, x, c))(variables, x)  # noqa: E731
  rng = np.random.default_rng(0)
  data = sources.ArrayDataset(rng.integers(0, 256, (8, 16, 16, 3), dtype=np.uint8),
                              np.arange(8) % 2, ("a", "b"))
  run = workdir_lib.Run(config, dino, variables, 3, data, data, parallel.make_mesh())
  result = protocols.evaluate_linear(run, linear.Settings(epochs=1, batch_size=8))
  assert result["feature_dim"] == 64 and result["init"] == "normal"
  assert result["optimizer"] == "sgd 0.9, cosine" and result["lr"] == pytest.approx(0.001 / 32)
  x = jnp.asarray(rng.uniform(size=(2, 16, 16, 3)), jnp.float32)
  last = encode(config)
  both = encode(linear.linear_config(config, linear.resolve(None, config)))
  np.testing.assert_allclose(both[:, 32:], last, rtol=1e-5)    # then the last block's
  one_block = config.copy_and_resolve_references()
  one_block.model.depth = 1   # block 0's class token after the final LayerNorm comes first
  np.testing.assert_allclose(both[:, :32], encode(one_block), rtol=1e-5)
  pooled = linear.linear_config(config, linear.resolve(
      linear.Settings(vit_blocks=1, vit_avgpool=True), config))
  interleaved = encode(pooled)   # DINO's ViT-B: CLS, mean patch, CLS, ...
  np.testing.assert_allclose(interleaved[:, 0::2], last, rtol=1e-5)
