"""Frozen-feature extraction and InstDisc's weighted kNN classifier.

kNN rule (Wu et al. 2018): cosine similarity to every training feature, the k nearest vote
for their class with weight exp(sim / T); k = 200 and T = 0.1 are the field's standard.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np

from ssl_jax import losses, parallel
from ssl_jax.data import eval_crop
from ssl_jax.errors import ConfigError


def preprocess(images: jax.Array, image_size: int, crop_proportion: float = 1.0) -> jax.Array:
  """uint8 images -> floats in [0, 1], their evaluation view (data/eval_crop.py: the central
  crop_proportion resized to image_size; no normalisation)."""
  return eval_crop.center_crop(images.astype(jnp.float32) / 255.0, image_size, crop_proportion)


def extract_features(encode, variables, images, mesh, batch_size: int, image_size: int,
                     normalize: bool = True, crop_proportion: float = 1.0) -> np.ndarray:
  """Features (L2-normalised unless `normalize` is False), computed batch-sharded, of the
  evaluation views (`preprocess`) of `images`: uint8 (N, H, W, 3), or an iterable of such
  batches (e.g. read and cropped by tf.data)."""
  devices = mesh.devices.size
  batch_size = max(devices, batch_size // devices * devices)

  @jax.jit
  def features(variables, x):
    f = encode(variables, preprocess(x, image_size, crop_proportion))
    return losses.l2_normalize(f) if normalize else f

  out = []
  for chunk in _chunks(images, batch_size):
    pad = batch_size - len(chunk)
    if pad:   # one compiled shape for every chunk
      chunk = np.concatenate([chunk, np.zeros((pad,) + chunk.shape[1:], chunk.dtype)])
    f = features(variables, parallel.shard_rows(chunk, mesh))
    out.append(parallel.fetch(f)[:batch_size - pad])
  return np.concatenate(out)


def _chunks(images, batch_size: int):
  """Slices of at most `batch_size` rows of an array or of each batch of an iterable."""
  batches = [images] if hasattr(images, "shape") else images
  for batch in batches:
    batch = np.asarray(batch)
    for start in range(0, len(batch), batch_size):
      yield batch[start:start + batch_size]


@functools.partial(jax.jit, static_argnames=("num_classes", "k"))
def knn_scores(train_features, train_labels, test_features, num_classes: int, k: int,
               temperature: float):
  """Class votes (M, num_classes) for each test feature."""
  sims = test_features @ train_features.T
  top_sims, top_idx = jax.lax.top_k(sims, k)
  weights = jnp.exp(top_sims / temperature)
  votes = jax.nn.one_hot(train_labels[top_idx], num_classes) * weights[..., None]
  return votes.sum(axis=1)


def knn_accuracy(train_features, train_labels, test_features, test_labels, num_classes: int,
                 k: int = 200, temperature: float = 0.1, chunk: int = 1000) -> dict:
  """Top-1 and top-5 accuracy (fractions) of the weighted kNN classifier."""
  k = min(k, len(train_features))
  train_features, train_labels = jnp.asarray(train_features), jnp.asarray(train_labels)
  top1 = top5 = 0
  for start in range(0, len(test_features), chunk):
    scores = knn_scores(train_features, train_labels,
                        jnp.asarray(test_features[start:start + chunk]), num_classes, k,
                        temperature)
    ranked = np.argsort(-np.asarray(scores), axis=1)
    labels = np.asarray(test_labels[start:start + chunk])[:, None]
    top1 += int((ranked[:, :1] == labels).sum())
    top5 += int((ranked[:, :5] == labels).any(axis=1).sum())
  n = len(test_features)
  return {"top1": top1 / n, "top5": top5 / n}


def evaluate(method, config, variables, train, test, mesh) -> dict:
  """Weighted kNN top-1/top-5 of `variables`' features (config.eval.features): `test`
  classified against `train`, or with features "bank" against the memory bank's rows
  (`variables["bank"]`, the method's eval_variables), which are the training images'."""
  encode = functools.partial(method.encode, config=config)
  extract = functools.partial(extract_features, encode, variables, mesh=mesh,
                              batch_size=config.eval.batch_size, image_size=config.image_size,
                              crop_proportion=config.eval.crop_proportion)
  test_features = extract(test.images)
  if config.eval.features == "bank":
    train_features = np.asarray(jax.device_get(variables["bank"]), np.float32)
    if len(train_features) != len(train.labels):
      raise ConfigError(f"config.eval.features='bank': the bank's {len(train_features)} rows "
                        f"do not match the {len(train.labels)} readable training images; "
                        "use 'embedding'")
  else:
    train_features = extract(train.images)
  result = knn_accuracy(train_features, train.labels, test_features, test.labels,
                        len(train.classes), config.eval.knn_k, config.eval.knn_temperature)
  return {"knn_top1": result["top1"], "knn_top5": result["top5"]}
