"""The tf.data input pipeline, for image folders and TFDS data sets too large for memory.

Per process: read this process's shard (tf_sources.py), shuffle with a seed per epoch,
decode, cut each of the method's views with a random resized crop (torchvision's
semantics, integer boxes) and a flip, batch global_batch / process_count examples, and
hand them to the device double-buffered (loader.prefetch_to_device). The batch dict holds
"view0", "view1", ... (uint8, one array per view and so per crop size), "label" and
"index"; photometric ops run on the device (augment.make_views).

Determinism: the crops use TF's stateless random ops keyed by (seed, epoch, slot, view),
so the batch of step s depends only on (seed, s, process count). Resuming at step s builds
the stream from step s on; nothing consumed before is decoded again.

`config.input_pipeline`: "memory" (sources.py + loader.MemoryLoader), "tfdata" (this
module) or "auto": tf.data for image folders and TFDS names when TensorFlow is
installed, host memory for "quickstart" and "packed:" files. TensorFlow is imported
only once a tf.data loader is built.
"""
import importlib.util
import itertools
import types

import jax
import numpy as np

from ssl_jax.data import eval_crop, loader as loader_lib, sources, tf_sources
from ssl_jax.data.tf_sources import tf
from ssl_jax.errors import ConfigError

PIPELINES = ("auto", "memory", "tfdata")


def memory_only(dataset: str) -> bool:
  """Data sets that exist only as arrays (the bundled set, packed files)."""
  return dataset == "quickstart" or dataset.startswith("packed:")


def tensorflow_available() -> bool:
  return importlib.util.find_spec("tensorflow") is not None


def use_tfdata(config) -> bool:
  """Resolves config.input_pipeline (see the module docstring)."""
  choice = config.get("input_pipeline", "auto")
  if choice == "memory" or memory_only(config.dataset):
    return False
  if choice == "tfdata" and not tensorflow_available():
    raise ConfigError("config.input_pipeline='tfdata' needs TensorFlow, which is not "
                      "installed; install tensorflow or use --config.input_pipeline=memory")
  return tensorflow_available()


def load(config, views, mesh):
  """(train split for evaluation, eval split, training loader), all through tf.data."""
  data = TFDataLoader(train_shard(config), views, config.batch_size, config.seed, mesh)
  return (*eval_splits(config), data)


def train_shard(config):
  """This process's shard of the training split."""
  return tf_sources.open_source(config.dataset, config.train_split, config.data_dir or None,
                                jax.process_index(), jax.process_count())


def eval_splits(config):
  """(train split, eval split) read in order and centre-cropped: kNN, export, plots."""
  splits = tuple(EvalSplit(tf_sources.open_source(config.dataset, split, config.data_dir or None),
                           config.image_size, config.eval.batch_size,
                           config.eval.crop_proportion)
                 for split in (config.train_split, config.eval_split))
  sources.require_labels(first_labels(splits[1].source), config)
  return splits


def first_labels(source, count: int = 64) -> np.ndarray:
  """The labels of an image folder, or of the first `count` records of a TFDS split (all
  -1 when it has no labels: imagenet2012's "test"), read without the images."""
  if hasattr(source, "labels"):
    return source.labels
  if not source.has_label:
    return np.full(1, -1)
  records = source._records(source.split, 0).take(count)  # pylint: disable=protected-access
  return np.array([int(x["label"]) for x in records.as_numpy_iterator()])


# ---------------------------------------------------------------- geometric ops


# tf.image.resize without antialiasing, as the TF originals (SimCLR, BYOL, big_vision)
# resize their crops; torchvision's PIL path antialiases, at ~2x the host time (see
# experiments/bench_input.py). Crops shrink by at most ~2x at ImageNet sizes.
ANTIALIAS = False


def crop_boxes(seed, height, width, views, attempts=10):
  """torchvision RandomResizedCrop.get_params for every view at once, stateless.

  Per view, up to `attempts` (area fraction U(crop_scale), log-uniform aspect w/h in
  crop_ratio) draws; the first that fits wins, else a central crop with the aspect
  clamped to crop_ratio. Returns int32 (V, 4) boxes (top, left, h, w) and bool (V,) flips.
  One vectorised draw for all views keeps the per-image op count low.
  """
  t = tf()
  const = lambda values: t.constant(values, t.float32)[:, None]  # pylint: disable=unnecessary-lambda-assignment
  lo, hi = const([v.crop_scale[0] for v in views]), const([v.crop_scale[1] for v in views])
  r_lo, r_hi = const([v.crop_ratio[0] for v in views]), const([v.crop_ratio[1] for v in views])
  u = t.random.stateless_uniform([3, len(views), attempts], seed)
  h, w = t.cast(height, t.float32), t.cast(width, t.float32)
  area = h * w * (lo + u[0] * (hi - lo))
  aspect = t.exp(t.math.log(r_lo) + u[1] * (t.math.log(r_hi) - t.math.log(r_lo)))
  cw, ch = t.round(t.sqrt(area * aspect)), t.round(t.sqrt(area / aspect))
  fits = (cw > 0) & (ch > 0) & (cw <= w) & (ch <= h)
  first = t.argmax(t.cast(fits, t.int32), axis=1)[:, None]
  found = t.reduce_any(fits, axis=1)
  in_ratio = w / h
  fw = t.where(in_ratio > r_hi[:, 0], t.round(h * r_hi[:, 0]), w)
  fh = t.where(in_ratio < r_lo[:, 0], t.round(w / r_lo[:, 0]), h)
  ch = t.where(found, t.gather(ch, first, batch_dims=1)[:, 0], fh)
  cw = t.where(found, t.gather(cw, first, batch_dims=1)[:, 0], fw)
  top = t.where(found, t.floor(u[2, :, 0] * (h - ch + 1)), t.round((h - ch) / 2))
  left = t.where(found, t.floor(u[2, :, 1] * (w - cw + 1)), t.round((w - cw) / 2))
  flips = (u[2, :, 2] < 0.5) & t.constant([v.flip for v in views])
  return t.cast(t.stack([top, left, ch, cw], axis=1), t.int32), flips


def crop_views(image, seed, views):
  """Random resized crops (bilinear) + flips of one image: a uint8 (S, S, 3) per view."""
  t = tf()
  shape = t.shape(image)
  boxes, flips = crop_boxes(seed, shape[0], shape[1], views)
  out = []
  for i, view in enumerate(views):
    crop = t.slice(image, [boxes[i, 0], boxes[i, 1], 0], [boxes[i, 2], boxes[i, 3], 3])
    crop = t.image.resize(crop, [view.size, view.size], "bilinear", antialias=ANTIALIAS)
    crop = t.cast(t.clip_by_value(t.round(crop), 0, 255), t.uint8)
    if view.flip:  # after the resize, which commutes with it (half-pixel centres): cheaper
      crop = t.cond(flips[i], lambda c=crop: t.reverse(c, [1]), lambda c=crop: c)
    out.append(crop)
  return out


def center_view(image, size: int, crop_proportion: float = 1.0):
  """The evaluation view of one image (eval_crop.geometry: Resize(round(size / p)) +
  CenterCrop(size)), bilinear and antialiased, once per image."""
  t = tf()
  shape = t.cast(t.shape(image)[:2], t.float32)
  new_h, new_w, top, left = (t.cast(v, t.int32) for v in eval_crop.geometry(
      shape[0], shape[1], size, crop_proportion,
      types.SimpleNamespace(minimum=t.minimum, floor=t.floor, round=t.round)))
  out = t.image.resize(image, t.stack([new_h, new_w]), "bilinear", antialias=True)
  out = t.slice(out, [top, left, 0], [size, size, 3])
  return t.cast(t.clip_by_value(t.round(out), 0, 255), t.uint8)


def views_fn(views, seed: int):
  """element -> {"view0", ..., "label", "index", "bad"}; keys from (seed, epoch, slot)."""
  t = tf()

  def fn(x):
    key = t.stack([t.constant(seed, t.int64), x["epoch"]])
    key = t.random.experimental.stateless_fold_in(key, x["slot"])
    out = {f"view{i}": v for i, v in enumerate(crop_views(x["image"], key, views))}
    return dict(out, label=x["label"], index=x["index"], bad=x["bad"])
  return fn


# ---------------------------------------------------------------------- training


class TFDataLoader:
  """Per-process batches of views through tf.data; the same interface as MemoryLoader."""

  def __init__(self, source, views, global_batch: int, seed: int, mesh,
               process_count: int | None = None):
    """`source` is this process's shard (tf_sources.open_source with its index)."""
    process_count = jax.process_count() if process_count is None else process_count
    self.source, self.views, self.seed, self.mesh = source, list(views), seed, mesh
    self.local_batch = global_batch // process_count
    # Every process must agree: the smallest shard decides.
    self.steps_per_epoch = (source.total // process_count) // self.local_batch
    if self.steps_per_epoch == 0:
      raise ConfigError(f"config.batch_size={global_batch} exceeds the {source.total} "
                        "training images; use a smaller batch")
    self.bad_files: set[int] = set()

  @property
  def skipped(self) -> int:
    """Distinct files that could not be decoded so far (this process's shard)."""
    return len(self.bad_files)

  def dataset(self, start_step: int):
    """This process's batches of steps start_step, start_step + 1, ... (endless)."""
    t = tf()
    b = self.local_batch
    ds = self.source.stream(self.seed, start_step * b, self.steps_per_epoch * b)
    ds = ds.map(views_fn(self.views, self.seed), num_parallel_calls=t.data.AUTOTUNE,
                deterministic=True)
    return ds.batch(b, drop_remainder=True).prefetch(t.data.AUTOTUNE)

  def host_batches(self, start_step: int):
    """numpy batches of steps start_step, start_step + 1, ... (endless)."""
    for batch in self.dataset(start_step).as_numpy_iterator():
      bad = batch.pop("bad")
      self.bad_files.update(bad[bad >= 0].tolist())
      yield batch

  def host_batch(self, step: int) -> dict:
    return next(self.host_batches(step))

  def batches(self, start_step: int, end_step: int, prefetch: int = 2):
    """Global device batches for steps [start_step, end_step), `prefetch` ahead."""
    host = itertools.islice(self.host_batches(start_step), end_step - start_step)
    return loader_lib.prefetch_to_device(host, self.mesh, prefetch)


# -------------------------------------------------------------------- evaluation


class EvalSplit:
  """A split read in order, centre-cropped to `image_size`, for kNN and plots.

  `images` is an iterable of uint8 batches (what knn.extract_features takes); files that
  cannot be decoded are dropped, and `labels` / `skipped` describe what was kept (known
  after one pass over `images`, which they run themselves when needed).
  """

  def __init__(self, source, image_size: int, batch_size: int, crop_proportion: float = 1.0):
    self.source, self.image_size, self.batch_size = source, image_size, batch_size
    self.crop_proportion = crop_proportion
    self.classes = source.classes
    self._labels, self._skipped = None, None

  def __len__(self) -> int:
    return self.source.total

  @property
  def images(self):
    return _Batches(self)

  @property
  def labels(self) -> np.ndarray:
    if self._labels is None:
      for _ in self.images:
        pass
    return self._labels

  @property
  def skipped(self) -> int:
    self.labels  # pylint: disable=pointless-statement
    return self._skipped

  def batches(self, keep: np.ndarray | None = None):
    """(images, labels) numpy batches of the decodable files (of `keep`), in order."""
    t = tf()
    ds = self.source.in_order(keep).map(
        lambda x: (center_view(x["image"], self.image_size, self.crop_proportion), x["label"],
                   x["bad"][0] < 0),
        num_parallel_calls=t.data.AUTOTUNE, deterministic=True)
    for images, labels, ok in ds.batch(self.batch_size).prefetch(2).as_numpy_iterator():
      yield images[ok], labels[ok]

  def sample(self, count: int, seed: int) -> sources.ArrayDataset:
    """Up to `count` random decodable images in memory (for plots)."""
    keep = np.random.default_rng(seed).permutation(self.source.total)[:count]
    parts = list(self.batches(keep)) or [(np.zeros((0,) + (self.image_size,) * 2 + (3,),
                                                    np.uint8), np.zeros(0, np.int32))]
    return sources.ArrayDataset(np.concatenate([p[0] for p in parts]),
                                np.concatenate([p[1] for p in parts]), self.classes)


class _Batches:
  """One pass over an EvalSplit's images; a complete pass records labels and skips."""

  def __init__(self, split: EvalSplit):
    self.split = split

  def __iter__(self):
    labels = []
    for images, batch_labels in self.split.batches():
      labels.append(batch_labels)
      yield images
    labels = np.concatenate(labels) if labels else np.zeros(0, np.int32)
    if not len(labels):
      raise ConfigError(f"none of the {self.split.source.total} images of config.dataset "
                        "could be decoded; check its files")
    self.split._labels = labels.astype(np.int32)  # pylint: disable=protected-access
    self.split._skipped = self.split.source.total - len(labels)  # pylint: disable=protected-access
