"""Weighted kNN on features with known answers."""
import math

import jax
import numpy as np

from ssl_jax import parallel
from ssl_jax.evaluate import knn


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
