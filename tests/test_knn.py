"""Weighted kNN on features with known answers; the evaluation view and which features
evaluation reads (config.eval.crop_proportion, config.eval.features)."""
import importlib
import math
import types

import flax.linen as nn
import jax
import numpy as np
import pytest

from ssl_jax import config as config_lib, losses, methods, parallel
from ssl_jax.data import sources
from ssl_jax.errors import ConfigError
from ssl_jax.evaluate import knn
from ssl_jax.methods import common
from ssl_jax.models.encoder import Encoder

pytestmark = pytest.mark.usefixtures("fast_compiles")   # tiny programs: compiles dominate


def test_separable_clusters_are_classified_perfectly():
  rng = np.random.default_rng(0)
  centres = np.eye(4, 16)
  train_y = np.repeat(np.arange(4), 50)
  test_y = np.repeat(np.arange(4), 10)
  def features(labels):
    f = centres[labels] + 0.05 * rng.normal(size=(len(labels), 16))
    return (f / np.linalg.norm(f, axis=1, keepdims=True)).astype(np.float32)
  result = knn.knn_accuracy(features(train_y), train_y, features(test_y), test_y, 4, k=20)
  assert result == {"top1": 1.0, "top5": 1.0}


def test_votes_are_weighted_by_exp_similarity():
  # Test point (1, 0). Two class-0 neighbours at cos 0.6, one class-1 neighbour at cos 0.8.
  train_f = np.array([[0.6, 0.8], [0.6, -0.8], [0.8, 0.6]], np.float32)
  train_y = np.array([0, 0, 1])
  test_f = np.array([[1.0, 0.0]], np.float32)
  scores = np.asarray(knn.knn_scores(train_f, train_y, test_f, 2, 3, 0.1))
  np.testing.assert_allclose(scores[0], [2 * math.exp(6), math.exp(8)], rtol=1e-5)
  # exp(8) > 2 exp(6): the single closer neighbour wins at T = 0.1 ...
  assert knn.knn_accuracy(train_f, train_y, test_f, np.array([1]), 2, k=3)["top1"] == 1.0
  # ... and only the nearest counts at k = 1; with T = 10 the two class-0 votes win.
  scores = np.asarray(knn.knn_scores(train_f, train_y, test_f, 2, 3, 10.0))
  assert scores[0, 0] > scores[0, 1]


def test_feature_extraction_is_sharded_and_normalised():
  mesh = parallel.make_mesh()
  images = np.random.default_rng(0).integers(0, 256, (21, 8, 8, 3), dtype=np.uint8)
  encode = lambda variables, x: x.reshape(x.shape[0], -1) * variables   # pylint: disable=unnecessary-lambda-assignment
  f = knn.extract_features(encode, 2.0, images, mesh, batch_size=16, image_size=8)
  assert f.shape == (21, 192)
  np.testing.assert_allclose(np.linalg.norm(f, axis=1), 1.0, rtol=1e-5)
  expected = images.reshape(21, -1) / np.linalg.norm(images.reshape(21, -1), axis=1,
                                                     keepdims=True)
  np.testing.assert_allclose(f, expected, rtol=1e-5)
  assert jax.device_count() == 8


def test_extraction_reads_the_central_crop_proportion():
  mesh = parallel.make_mesh()
  images = np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
  flat = lambda variables, x: x.reshape(x.shape[0], -1)  # noqa: E731
  # Resize(round(16 / 0.5) = 32) + CenterCrop(16): the central 16 x 16, unscaled.
  f = knn.extract_features(flat, None, images, mesh, 8, 16, normalize=False,
                           crop_proportion=0.5)
  np.testing.assert_allclose(f, images[:, 8:24, 8:24].reshape(8, -1) / 255.0, rtol=1e-6)


def smoke(name, **eval_fields):
  config = importlib.import_module(f"configs.{name}").get_config("smoke")
  config.eval.update(eval_fields)
  config.run.num_train_examples = 6   # memory-bank rows
  return config


class Dense(nn.Module):
  """A stand-in backbone or head: flatten, Dense."""
  width: int

  @nn.compact
  def __call__(self, x, train=True):
    return nn.Dense(self.width)(x.reshape(x.shape[0], -1))


def test_embedding_features_are_the_normalised_head_output():
  config = config_lib.base_config()
  net = Encoder(Dense(8), Dense(4))
  x = np.random.default_rng(0).uniform(size=(3, 2, 2, 3)).astype(np.float32)
  variables = net.init(jax.random.key(0), x)
  z = common.encode(net, variables, x, config, "embedding", common.head_output)
  np.testing.assert_allclose(z, losses.l2_normalize(net.apply(variables, x)[1]), rtol=1e-6)
  config.eval.features = "backbone"   # the default, and what the online probe reads
  h = common.encode(net, variables, x, config, None, common.head_output)
  np.testing.assert_allclose(h, net.apply(variables, x, method=Encoder.features), rtol=1e-6)


@pytest.mark.parametrize("name,dim", [("instdisc", 128), ("moco_v1", 128), ("cmc", 256)])
def test_each_method_encodes_its_embedding_and_backbone(name, dim):
  """InstDisc's 128-d fc output, MoCo's query output, CMC's two views side by side."""
  config = smoke(name, features="embedding")
  config_lib.validate(config)
  method = methods.get(config.method)
  variables = jax.eval_shape(lambda: method.init(jax.random.key(0), config, None))
  x = np.zeros((2, 16, 16, 3), np.float32)
  shape = lambda **kw: jax.eval_shape(  # noqa: E731
      lambda v: method.encode(v, x, config, **kw), dict(variables)).shape
  assert shape() == (2, dim) and shape(features="backbone") != (2, dim)
  bank = jax.eval_shape(lambda ms: method.eval_variables(types.SimpleNamespace(
      params=None, batch_stats=None, method_state=ms))["bank"], variables["method_state"]
                        ) if name != "moco_v1" else None
  assert bank is None or bank.shape == (6, dim)


def test_bank_knn_scores_against_the_memory_bank_rows():
  # Test images whose flattened features equal bank rows 2 and 0 (labels 1 and 0); the
  # training images themselves are unrelated, so only the bank gives the right answer.
  config = config_lib.base_config()
  config.update(image_size=2)
  config.eval.update(features="bank", knn_k=1, batch_size=8)
  test_images = np.zeros((2, 2, 2, 3), np.uint8)
  test_images[0, 0, 0, 0] = test_images[1, 1, 1, 2] = 255
  bank = np.zeros((3, 12), np.float32)
  bank[2, 0] = bank[0, 11] = bank[1, 5] = 1.0
  train = sources.ArrayDataset(np.full((3, 2, 2, 3), 9, np.uint8), np.array([0, 0, 1]), ("a", "b"))
  test = sources.ArrayDataset(test_images, np.array([1, 0]), ("a", "b"))
  method = types.SimpleNamespace(encode=lambda v, x, config: x.reshape(x.shape[0], -1))
  mesh = parallel.make_mesh()
  result = knn.evaluate(method, config, {"bank": bank}, train, test, mesh)
  assert result["knn_top1"] == 1.0
  config.eval.features = "embedding"   # against the training images: not the answer
  assert knn.evaluate(method, config, {"bank": bank}, train, test, mesh)["knn_top1"] == 0.5


def test_eval_fields_are_validated_in_one_line():
  bad = [(smoke("simclr_v2", features="embedding"), "eval.features='embedding'"),
         (smoke("simclr_v2", crop_proportion=0.0), "crop_proportion"),
         (smoke("dino"), "vit_blocks=3")]
  bad[2][0].eval.linear.vit_blocks = 3   # the smoke ViT has 2 blocks
  for config, field in bad:
    with pytest.raises(ConfigError, match=field) as e:
      config_lib.validate(config)
    assert "\n" not in str(e.value)
