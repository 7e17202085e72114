"""Every config variant loads and validates; bad values give one clear line."""
import importlib.util
import math
import os

import jax
import pytest

from ssl_jax import config as config_lib, train
from ssl_jax.errors import ConfigError

CONFIG_DIR = os.path.join(os.path.dirname(__file__), "..", "configs")
CONFIGS = sorted(f[:-3] for f in os.listdir(CONFIG_DIR) if f.endswith(".py"))
VARIANTS = (None, "cifar10", "quickstart", "smoke")


def load(name):
  spec = importlib.util.spec_from_file_location(name, os.path.join(CONFIG_DIR, f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_every_variant_loads_and_validates(name, variant):
  config = load(name).get_config(variant)
  config_lib.validate(config, device_count=8)
  assert config.method
  if variant == "cifar10":
    assert (config.image_size, config.batch_size, config.model.depth) == (32, 512, 18)
    assert config.model.cifar_stem


def test_configs_have_docstrings_naming_their_variants():
  for name in CONFIGS:
    doc = load(name).__doc__
    for variant in ("cifar10", "quickstart", "smoke"):
      assert variant in doc, (name, variant)


def test_paper_settings():
  v1, v2 = load("simclr_v1").get_config(), load("simclr_v2").get_config()
  assert (v1.batch_size, v1.head.num_layers, v1.optimizer.weight_decay) == (4096, 2, 1e-6)
  assert (v2.head.num_layers, v2.optimizer.weight_decay) == (3, 1e-4)
  assert v1.augment.brightness_impl == "additive"
  assert v2.augment.brightness_impl == "multiplicative"
  assert v1.loss.temperature == v2.loss.temperature == 0.1


def test_unknown_variant():
  with pytest.raises(ConfigError, match="variant 'imagenet'"):
    load("simclr_v1").get_config("imagenet")


@pytest.mark.parametrize("field, value, message", [
    ("batch_size", 12, r"config.batch_size=12 is not divisible by the 8 devices"),
    ("method", "simclr_v9", r"config.method='simclr_v9' is unknown"),
    ("dtype", "float8", r"config.dtype='float8'"),
    ("model.depth", 20, r"config.model.depth=20"),
    ("augment.brightness_impl", "gamma", r"config.augment.brightness_impl='gamma'"),
    ("augment.crop_scale", (0.5, 0.2), r"config.augment.crop_scale"),
])
def test_bad_values_are_rejected_with_the_field_named(field, value, message):
  config = load("simclr_v2").get_config("smoke")
  node = config
  *path, last = field.split(".")
  for part in path:
    node = node[part]
  node[last] = value
  with pytest.raises(ConfigError, match=message):
    config_lib.validate(config, device_count=8)


def test_unknown_field_is_rejected():
  config = load("simclr_v2").get_config("smoke")
  with pytest.raises(AttributeError, match="temprature"):
    config.loss.temprature = 0.2


def test_unknown_dataset_and_too_large_crop_fail_before_compiling(tmp_path):
  config = load("simclr_v2").get_config("smoke")
  config.dataset = "image_folder:/no/such/folder"
  with pytest.raises(ConfigError, match="config.dataset"):
    train.train_and_evaluate(config, str(tmp_path))
  config = load("simclr_v2").get_config("smoke")
  config.dataset = "no_such_dataset_anywhere"
  with pytest.raises(ConfigError, match="config.dataset"):
    train.train_and_evaluate(config, str(tmp_path))
  config = load("simclr_v2").get_config("smoke")
  config.image_size = 64   # the bundled images are 32 x 32
  with pytest.raises(ConfigError, match="config.image_size=64 is larger than the 32x32"):
    train.train_and_evaluate(config, str(tmp_path))
  assert not os.path.exists(tmp_path / "metrics.jsonl")


def test_batch_not_divisible_by_devices_fails_in_train(tmp_path):
  config = load("simclr_v2").get_config("smoke")
  config.batch_size = 36
  assert jax.device_count() == 8
  with pytest.raises(ConfigError, match="not divisible by the 8 devices; use a multiple of 8"):
    train.train_and_evaluate(config, str(tmp_path))


# (config file, field, bad value): each must be refused with one line naming the field.
OUT_OF_RANGE = [
    ("simclr_v2", "optimizer.base_lr", -1.0), ("simclr_v2", "optimizer.base_lr", 0.0),
    ("simclr_v2", "num_steps", -5), ("simclr_v2", "num_epochs", -1),
    ("simclr_v2", "checkpoint.every_steps", -1), ("simclr_v2", "checkpoint.keep", 0),
    ("simclr_v2", "batch_size", 0), ("simclr_v2", "batch_size", -8),
    ("simclr_v2", "eval.batch_size", 0), ("simclr_v2", "eval.knn_k", 0),
    ("simclr_v2", "augment.color_prob", 1.5), ("simclr_v2", "augment.gray_prob", -0.1),
    ("simclr_v2", "augment.blur_prob", 2.0), ("simclr_v2", "augment.solarize_prob", -1.0),
    ("simclr_v2", "loss.temperature", 0.0), ("simclr_v2", "loss.temperature", -0.1),
    ("simclr_v2", "eval.knn_temperature", 0.0),
    ("simclr_v2", "augment.crop_scale", (0.5,)),   # what --config.augment.crop_scale=0.5 gives
    ("simclr_v2", "augment.crop_scale", (0.5, 0.2)),
    ("simclr_v2", "augment.crop_scale", (0.0, 1.0)),
    ("simclr_v2", "augment.crop_ratio", (4 / 3, 3 / 4)),
    ("simclr_v2", "optimizer.weight_decay", -1e-4), ("simclr_v2", "optimizer.momentum", 1.5),
    ("simclr_v2", "optimizer.warmup_epochs", -1.0),
    ("simclr_v2", "optimizer.lr_steps_epochs", (-10,)), ("simclr_v2", "log_every_steps", 0),
    ("simclr_v2", "loss.chunk_size", -1), ("simclr_v2", "image_size", 4),
    ("simclr_v2", "eval.knn_every_epochs", -1), ("simclr_v2", "eval.plot_points", -1),
    ("simclr_v2", "eval.crop_proportion", 0.0), ("simclr_v2", "eval.probe_lr", 0.0),
    ("simclr_v2", "head.out_dim", 0), ("simclr_v2", "data_image_size", -32),
    ("byol", "byol.blur_probs", (1.5, 0.1)), ("dino", "dino.teacher_temp", 0.0),
    ("moco_v2", "moco.momentum", 1.5), ("swav", "swav.small_crop_scale", (0.05, 1.5)),
]


@pytest.mark.parametrize("name, field, value", OUT_OF_RANGE)
def test_out_of_range_values_are_one_line_errors_naming_the_field(name, field, value):
  config = load(name).get_config("smoke")
  node = config
  *path, last = field.split(".")
  for part in path:
    node = node[part]
  node[last] = value
  with pytest.raises(ConfigError) as e:
    config_lib.validate(config, device_count=1)
  message = str(e.value)
  assert message.startswith(f"config.{field}=") and "\n" not in message and " must " in message


def test_range_messages_say_what_the_field_takes():
  config = load("simclr_v2").get_config("smoke")
  config.checkpoint.every_steps = -1
  with pytest.raises(ConfigError) as e:
    config_lib.validate(config)
  assert str(e.value) == ("config.checkpoint.every_steps=-1 must be an integer >= 0; "
                          "0 = only at the end")
  config = load("simclr_v2").get_config("smoke")
  config.augment.crop_scale = (0.5,)
  with pytest.raises(ConfigError, match=r"crop_scale=\(0.5,\) must be a pair \(min, max\) of "
                     r"numbers in \(0, 1\], min <= max"):
    config_lib.validate(config)
  assert config_lib.range_of("byol.solarize_probs") == config_lib.PROBABILITY
  assert config_lib.range_of("dino.warmup_teacher_temp_epochs") == config_lib.NON_NEGATIVE
  assert config_lib.range_of("method") is None


def test_quickstart_monitors_knn_a_few_times():
  for name in ("simclr_v1", "simclr_v2", "byol"):
    config = load(name).get_config("quickstart")
    every = config.eval.knn_every_epochs
    monitors = len([e for e in range(1, config.num_epochs) if e % every == 0])   # + the final one
    assert every > 0 and 3 <= monitors + 1 <= 5, (name, every, config.num_epochs)
  assert load("simclr_v2").get_config("smoke").eval.knn_every_epochs == 0


def test_variant_names_are_listed_from_the_config_files():
  assert config_lib.variant_names(load("simclr_v2").get_config) == [
      "cifar10", "cifar10_orig", "quickstart", "smoke"]
  assert "cifar10_vit" in config_lib.variant_names(load("dino").get_config)


# lightly's CIFAR-10 benchmark (cifar10_benchmark.py @42a6a924, METHODS.md §16): what every
# benchmarked method's cifar10 variant shares, then each method's own values.
LIGHTLY_COMMON = {
    "batch_size": 512, "num_epochs": 200, "model.depth": 18, "model.cifar_stem": True,
    "optimizer.momentum": 0.9, "optimizer.schedule": "cosine_epochs",
    "optimizer.warmup_epochs": 0, "eval.knn_k": 200, "eval.knn_temperature": 0.1,
    "eval.knn_every_epochs": 1, "eval.features": "backbone", "augment.color_impl": "torchvision",
    "augment.crop_sampler": "torchvision", "augment.antialias": True, "augment.blur_prob": 0.0,
    "augment.color_prob": 0.8, "augment.gray_prob": 0.2}
SIMCLR = {"optimizer.name": "sgd", "loss.temperature": 0.5, "head.num_layers": 2,
          "head.hidden_dim": 512, "head.out_dim": 128, "augment.crop_scale": (0.08, 1.0),
          "augment.color_strength": 0.5}
LIGHTLY = [   # (config, peak lr at batch 512, weight decay, the method's own values)
    ("simclr_v1", 0.24, 5e-4, SIMCLR),
    ("simclr_v2", 0.24, 5e-4, SIMCLR),
    ("moco_v2", 0.24, 5e-4, {
        "optimizer.name": "sgd", "loss.temperature": 0.1, "head.num_layers": 2,
        "head.hidden_dim": 512, "head.out_dim": 128, "moco.queue_size": 8192,
        "moco.momentum": 0.99, "moco.bn_batch": 64, "moco.symmetric": True,
        "moco.symmetric_style": "lightly", "moco.color_jitter": (0.4, 0.4, 0.4, 0.1),
        "augment.crop_scale": (0.08, 1.0)}),
    ("byol", 0.24, 5e-4, {
        "optimizer.name": "sgd", "head.hidden_dim": 1024, "head.out_dim": 256,
        "byol.predictor_hidden_dim": 1024, "byol.base_momentum": 0.99,
        "byol.final_momentum": 0.99, "byol.loss": "mean_negative_cosine",
        "byol.target_init": "copy", "byol.color_jitter": (0.4, 0.4, 0.4, 0.1),
        "byol.blur_probs": (0.0, 0.0), "byol.solarize_probs": (0.0, 0.0),
        "augment.crop_scale": (0.08, 1.0)}),
    ("simsiam", 0.06, 5e-4, {
        "optimizer.name": "sgd", "optimizer.fixed_lr_module": "", "head.num_layers": 2,
        "head.hidden_dim": 2048, "head.out_dim": 2048, "simsiam.predictor_hidden_dim": 512,
        "simsiam.color_jitter": (0.4, 0.4, 0.4, 0.1), "augment.crop_scale": (0.2, 1.0)}),
    ("swav", 4e-3, 1e-6, {
        "optimizer.name": "adam", "head.hidden_dim": 512, "head.out_dim": 128,
        "loss.temperature": 0.1, "swav.num_prototypes": 512, "swav.prototype_bias": True,
        "swav.epsilon": 0.05, "swav.sinkhorn_iterations": 3, "swav.num_small_crops": 0,
        "swav.queue_length": 0, "swav.freeze_prototypes_epochs": 0.0,
        "augment.crop_scale": (0.14, 1.0), "augment.color_strength": 0.5}),
    ("dino", 0.24, 5e-4, {
        "optimizer.name": "sgd", "optimizer.decay_mask": "all", "model.name": "resnet",
        "head.num_layers": 2, "head.hidden_dim": 2048, "head.bottleneck_dim": 256,
        "head.out_dim": 2048, "head.use_bn": True, "head.norm_last_layer": True,
        "dino.head_init": "torch", "dino.teacher_head": "own_init", "dino.student_temp": 0.1,
        "dino.teacher_temp": 0.04, "dino.warmup_teacher_temp": 0.04,
        "dino.center_momentum": 0.9, "dino.momentum_teacher": 0.99,
        "dino.momentum_teacher_final": 0.99, "dino.freeze_last_layer": 0,
        "dino.clip_grad": 0.0, "dino.local_crops_number": 0,
        "dino.color_jitter": (0.4, 0.4, 0.2, 0.1), "dino.global_blur_probs": (0.0, 0.0),
        "dino.global_solarize_probs": (0.0, 0.2), "augment.crop_scale": (0.4, 1.0),
        "augment.resize_method": "bicubic"}),
]


def field(config, dotted):
  value = config
  for key in dotted.split("."):
    value = value[key]
  return tuple(value) if isinstance(value, (list, tuple)) else value


@pytest.mark.parametrize("name, peak_lr, weight_decay, own", LIGHTLY, ids=[r[0] for r in LIGHTLY])
def test_cifar10_variants_are_lightlys_benchmark(name, peak_lr, weight_decay, own):
  """Each benchmarked method's cifar10 variant pins lightly's values at the table's commit
  (per-epoch cosine without warmup: epoch 0 at the peak, epoch 1 one cosine step down) and
  its docstring cites the script."""
  from ssl_jax import optim   # pylint: disable=import-outside-toplevel
  c = load(name).get_config("cifar10")
  for key, expected in {**LIGHTLY_COMMON, **own}.items():
    assert field(c, key) == pytest.approx(expected), key
  assert c.optimizer.weight_decay == weight_decay
  schedule = optim.lr_schedule(c.optimizer, c.batch_size, 97, 200 * 97)
  assert float(schedule(96)) == pytest.approx(peak_lr, rel=1e-6)
  assert float(schedule(97)) == pytest.approx(peak_lr * (1 + math.cos(math.pi / 200)) / 2,
                                              rel=1e-6)
  assert "cifar10_benchmark.py @42a6a924" in load(name).__doc__
  config_lib.validate(c, device_count=1)


@pytest.mark.parametrize("name, source", [
    ("instdisc", "cifar.py"), ("invaspread", "demo_seen.py"), ("cpc", "our own protocol"),
    ("cmc", "our own"), ("moco_v1", "moco_cifar10_demo.ipynb"), ("moco_v3", "our choice")])
def test_other_cifar10_variants_cite_their_source(name, source):
  doc = load(name).__doc__
  section = doc[doc.index("  cifar10 "):doc.index("  quickstart")].lower()
  assert source in section


@pytest.mark.parametrize("name", ["moco_v2", "simclr_v1", "simclr_v2", "simsiam", "swav",
                                  "dino"])
def test_cifar10_orig_variants_validate(name):
  c = load(name).get_config("cifar10_orig")
  config_lib.validate(c, device_count=8)
  assert (c.image_size, c.batch_size, c.model.depth) == (32, 512, 18)
