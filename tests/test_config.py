"""Every config variant loads and validates; bad values give one clear line."""
import importlib.util
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
  assert config_lib.variant_names(load("simclr_v2").get_config) == ["cifar10", "quickstart",
                                                                     "smoke"]
  assert "cifar10_vit" in config_lib.variant_names(load("dino").get_config)
