"""Fine-tuning, semi-supervised fine-tuning and distillation (ssl_jax/evaluate/finetune.py,
distill.py): the CLI on a smoke workdir, balanced label subsets, a known-answer fine-tune,
the distillation loss by hand, and which parameters each protocol trains."""
import functools
import importlib
import json
import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from ssl_jax import methods, models, parallel
from ssl_jax.data import sources
from ssl_jax.errors import ConfigError
from ssl_jax.evaluate import distill, finetune, linear, protocols
from test_evaluate import run


@pytest.fixture(scope="module")
def smoke_workdir(tmp_path_factory, small_dataset):
  """A 3-step SimCLR v2 smoke pretraining (3-layer head, fine-tuning from layer 1) on
  conftest's 256 + 64 images: the protocols train and test on them."""
  workdir = tmp_path_factory.mktemp("finetune_smoke")
  cache = tmp_path_factory.getbasetemp() / "xla_cache"   # shared with test_evaluate
  cache.mkdir(exist_ok=True)
  proc = run("ssl_jax.main", "--config=configs/simclr_v2.py:smoke", f"--workdir={workdir}",
             f"--config.dataset=packed:{small_dataset}", "--config.tensorboard=False",
             "--config.eval.random_init=False", "--config.eval.plots=False", cache=str(cache))
  assert proc.returncode == 0, proc.stderr[-3000:]
  return workdir, str(cache)


def test_each_protocol_runs_from_the_cli_and_writes_eval_json(smoke_workdir, small_dataset):
  workdir, cache = smoke_workdir
  # One batch size for all: semi reuses finetune's compiled step from the cache.
  common = (f"--workdir={workdir}", "--batch_size=64", "--epochs=1")
  for protocol, *flags in (("finetune",), ("semi", "--label_fraction=0.1"),
                           ("distill", "--label_fraction=0.1", "--teacher_epochs=1",
                            "--label_weight=0.5", "--temperature=2")):
    proc = run("ssl_jax.evaluate", *common, f"--protocol={protocol}", *flags, cache=cache)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"{protocol} (offline): step 3, top1" in proc.stdout
  results = json.loads((workdir / "eval.json").read_text())
  assert "knn_top1" in results   # the pretraining's entry is kept
  ft, semi, dist = results["finetune"], results["semi"], results["distill"]
  with np.load(small_dataset) as data:
    labels = data["train.labels"]
  tenth = len(finetune.balanced_subset(labels, 0.1))   # 3 of each class's ~26
  assert ft["labelled_images"] == len(labels) == 256 and ft["steps"] == 256 // 64
  assert ft["finetune_layer"] == 1 and ft["lr"] == pytest.approx(0.005 * 8)
  assert semi["labelled_images"] == tenth == 30 and semi["label_fraction"] == 0.1
  assert dist["teacher"]["labelled_images"] == tenth and dist["train_images"] == 256
  assert dist["temperature"] == 2.0 and dist["student_init"] == "pretrained"
  for entry in (ft, semi, dist, dist["teacher"]):
    assert 0.0 <= entry["top1"] <= entry["top5"] <= 1.0 and np.isfinite(entry["final_loss"])


def test_a_bad_flag_is_one_clear_error_before_loading(tmp_path):
  # tmp_path holds no run: the flag is checked before the workdir is read.
  with pytest.raises(ConfigError, match=r"--label_fraction=1.5 must be in \(0, 1\]"):
    protocols.evaluate(str(tmp_path), "semi", finetune.Settings(label_fraction=1.5))
  with pytest.raises(ConfigError, match="--student_init='teacher' is unknown"):
    protocols.evaluate(str(tmp_path), "distill", finetune.Settings(student_init="teacher"))
  config = importlib.import_module("configs.simsiam").get_config("smoke")
  with pytest.raises(ConfigError, match="has no head to fine-tune from"):
    finetune.pretrained_trunk(methods.get("simsiam"), config, {}, layer=1)
  two = types.SimpleNamespace(__name__="ssl_jax.methods.two")
  with pytest.raises(ConfigError, match="has 2 params subtrees named 'backbone'"):
    finetune.backbone_variables(two, {"params": {"a": {"backbone": {}}, "backbone": {}}})


def test_balanced_subset_has_the_same_count_in_every_class():
  labels = np.repeat(np.arange(10), 500)
  for fraction, per_class in ((0.01, 5), (0.1, 50)):
    subset = finetune.balanced_subset(labels, fraction, seed=3)
    assert np.array_equal(np.bincount(labels[subset]), np.full(10, per_class))
    assert np.array_equal(subset, np.unique(subset))   # sorted, no repeats
    assert np.array_equal(subset, finetune.balanced_subset(labels, fraction, seed=3))
  assert not np.array_equal(finetune.balanced_subset(labels, 0.01, 0),
                            finetune.balanced_subset(labels, 0.01, 1))
  # Imbalanced classes: the same count each, capped by a small class, at least one.
  skewed = np.array([0] * 3 + [1] * 100 + [2] * 97)
  assert list(np.bincount(skewed[finetune.balanced_subset(skewed, 0.1)])) == [3, 7, 7]
  assert list(np.bincount(skewed[finetune.balanced_subset(skewed, 0.001)])) == [1, 1, 1]
  assert len(finetune.balanced_subset(skewed, 1.0)) == 200


@pytest.mark.parametrize("name", ["simclr_v2", "moco_v2", "byol", "moco_v3", "simsiam"])
def test_every_method_backbone_fits_the_finetuning_network(name):
  config = importlib.import_module(f"configs.{name}").get_config("smoke")
  method = methods.get(config.method)
  variables = jax.eval_shape(lambda: method.init(jax.random.key(0), config, None))
  layer = config.head.finetune_layer
  trunk, trunk_variables = finetune.pretrained_trunk(method, config, variables, layer)
  model = finetune.Classifier(trunk, 10, layer)
  # Raises if the pretrained subtree does not have the trunk's structure.
  init = finetune.initial_variables(model, config.image_size, trunk_variables)
  assert init["params"]["classifier"]["kernel"].shape[-1] == 10


def test_distillation_loss_matches_hand_computed_values():
  # Teacher softmax (1/4, 3/4) against a uniform student: ln 2.
  loss = distill.distillation_loss(jnp.zeros((1, 2)), jnp.array([[0.0, np.log(3.0)]]))
  assert float(loss) == pytest.approx(np.log(2.0), rel=1e-6)
  # T = 2: teacher (0, 2 ln 3) / 2 -> (1/4, 3/4); student (2 ln 2, 0) / 2 -> (2/3, 1/3).
  loss = distill.distillation_loss(jnp.array([[2 * np.log(2.0), 0.0]]),
                                   jnp.array([[0.0, 2 * np.log(3.0)]]), temperature=2.0)
  assert float(loss) == pytest.approx(0.25 * np.log(1.5) + 0.75 * np.log(3.0), rel=1e-6)
  # Row mean; the gradient (softmax(s/T) - softmax(t/T)) / (T N) vanishes at s = t.
  t = jnp.array([[1.0, -2.0, 0.5], [0.0, 3.0, 1.0]])
  grad = jax.grad(distill.distillation_loss)(t, t, 0.5)
  np.testing.assert_allclose(grad, 0.0, atol=1e-6)


def test_labelled_cross_entropy_is_the_global_mean_over_labelled_rows(fast_compiles):
  del fast_compiles
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(16, 5)).astype(np.float32)
  labels = rng.integers(0, 5, 16).astype(np.int32)
  labelled = np.zeros(16, bool)
  labelled[[1, 2, 9]] = True
  ce = -jax.nn.log_softmax(logits)[np.arange(16), labels]
  mesh = parallel.make_mesh()
  per_device = jax.jit(jax.shard_map(
      lambda *a: distill.labelled_cross_entropy(*a)[None], mesh=mesh,
      in_specs=P(parallel.AXIS), out_specs=P(parallel.AXIS), check_vma=False))
  shares = per_device(logits, labels, labelled)   # each device's share; their mean:
  assert float(shares.mean()) == pytest.approx(float(ce[labelled].mean()), rel=1e-5)
  assert float(per_device(logits, labels, np.zeros(16, bool)).mean()) == 0.0


def coloured_images(n_per_class, rng, size=16):
  """Four classes of solid colours, each image's shifted at random: separable, and the
  same under any crop and flip (pixel noise would not be: crops smooth it, so BN's
  statistics of training crops would not fit whole test images)."""
  palette = np.array([[230, 30, 30], [30, 230, 30], [30, 30, 230], [230, 230, 30]])
  labels = np.repeat(np.arange(4), n_per_class).astype(np.int32)
  shift = rng.uniform(-25, 25, (len(labels), 1, 1, 3))
  images = palette[labels][:, None, None, :] + shift + np.zeros((1, size, size, 3))
  return sources.ArrayDataset(np.clip(images, 0, 255).astype(np.uint8), labels,
                              ("r", "g", "b", "y"))


def leaves_changed(before, after) -> list:
  return [not np.allclose(a, b, rtol=0, atol=1e-7)
          for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after))]


def test_finetuning_learns_separable_images_and_trains_the_backbone(fast_compiles):
  del fast_compiles
  rng = np.random.default_rng(0)
  train_data, test_data = coloured_images(16, rng), coloured_images(8, rng)
  config = importlib.import_module("configs.simclr_v2").get_config("smoke")
  # torchvision's ResNet: this checks fine-tuning's mechanics, not SimCLR's TF init, whose
  # smaller convs need more than these 40 steps from a random start.
  config.model.update(projection_shortcut="when_needed", init="torchvision")
  backbone = functools.partial(models.backbone, config.model, jnp.float32, image_size=16)
  model = finetune.Classifier(backbone(axis_name=parallel.AXIS), 4)
  start = jax.device_get(finetune.initial_variables(model, 16, seed=0))   # random init
  mesh = parallel.make_mesh()
  settings = finetune.Settings(batch_size=16, base_lr=0.1)
  trained, info = finetune.fit(model, start, train_data, settings, 10, mesh, 16)
  logits = finetune.predict(model, trained, test_data.images, mesh, 32, 16)
  assert linear.top_k_accuracy(logits, test_data.labels)["top1"] >= 0.95
  assert info["steps"] == 40 and info["lr"] == pytest.approx(0.4)
  # Fine-tuning moves the backbone's weights (LARS-sized steps) and its BN statistics.
  assert all(leaves_changed(start["params"]["trunk"], trained["params"]["trunk"]))
  assert any(leaves_changed(start["batch_stats"], trained["batch_stats"]))

  # The linear protocol trains its classifier on frozen features: the backbone stays.
  frozen = {"params": start["params"]["trunk"], "batch_stats": start["batch_stats"]["trunk"]}
  encode = lambda v, x: backbone(axis_name=None).apply(v, x, train=False)  # noqa: E731
  classifier = linear.fit(linear.augmented_encoder(encode, 16), frozen, train_data.images,
                          train_data.labels, 4, linear.Settings(epochs=1, batch_size=32), mesh)
  assert np.abs(classifier["kernel"]).sum() > 0
  assert not any(leaves_changed(start["params"]["trunk"], frozen["params"]))
  assert not any(leaves_changed(start["batch_stats"]["trunk"], frozen["batch_stats"]))


class MeanColour(nn.Module):
  """Logits = the mean colour of each crop: shows which pixels the prediction saw."""

  def __call__(self, x, train=False):
    return x.mean(axis=(1, 2))


def test_prediction_reads_the_central_crop_of_the_eval_view():
  images = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
  mesh = parallel.make_mesh()
  logits = finetune.predict(MeanColour(), {}, images, mesh, 8, 16, crop_proportion=0.5)
  np.testing.assert_allclose(logits, images[:, 8:24, 8:24].mean(axis=(1, 2)) / 255, rtol=1e-5)
