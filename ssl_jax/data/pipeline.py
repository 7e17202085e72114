"""The tf.data input pipeline, for image folders and TFDS data sets too large for memory.

Per process: read this process's shard (tf_sources.py), shuffle with a seed per epoch,
decode, cut each of the method's views with a random resized crop (crops.py's samplers,
integer boxes) and a flip, batch global_batch / process_count examples, and
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

from ssl_jax.data import crops, eval_crop, loader as loader_lib, sources, tf_sources
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
  shard = train_shard(config)
  sources.check_crop_fits(config, shard.stored_side())   # as the memory path does
  data = TFDataLoader(shard, views, config.batch_size, config.seed, mesh)
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


def crop_boxes(seed, height, width, views):
  """Every view's crop box at once, stateless: int32 (V, 4) boxes (top, left, h, w) and
  bool (V,) flips. The rule is each view's crop_sampler in crops.py (the same code the
  on-device path runs), here on integer pixels; one draw per sampler keeps the per-image
  op count low.
  """
  t, xp = tf(), crops.tf_ops()
  h, w = t.cast(height, t.float32), t.cast(width, t.float32)
  samplers = sorted({v.crop_sampler for v in views})
  order, parts = [], []
  for n, sampler in enumerate(samplers):
    index = [i for i, v in enumerate(views) if v.crop_sampler == sampler]
    u = t.random.stateless_uniform(
        [crops.UNIFORMS_PER_ATTEMPT, len(index), crops.ATTEMPTS[sampler]],
        t.random.experimental.stateless_fold_in(seed, n))
    scale, ratio = crops.ranges([views[i] for i in index])
    parts.append(t.stack(crops.crop_box(xp, u, h, w, sampler, scale, ratio, integer=True), 1))
    order += index
  position = {view: row for row, view in enumerate(order)}
  boxes = t.gather(t.concat(parts, 0), [position[i] for i in range(len(views))])
  flip_u = t.random.stateless_uniform([len(views)], t.random.experimental.stateless_fold_in(
      seed, len(samplers)))
  flips = (flip_u < 0.5) & t.constant([v.flip for v in views])
  return t.cast(boxes, t.int32), flips


def crop_views(image, seed, views):
  """Random resized crops + flips of one image: a uint8 (S, S, 3) per view. Resized with
  tf.image.resize by each view's resize_method and antialias (as SimCLR and BYOL resize:
  bicubic, no antialiasing; PIL antialiases, at ~2x the host time, experiments/
  bench_input.py)."""
  t = tf()
  shape = t.shape(image)
  boxes, flips = crop_boxes(seed, shape[0], shape[1], views)
  out = []
  for i, view in enumerate(views):
    crop = t.slice(image, [boxes[i, 0], boxes[i, 1], 0], [boxes[i, 2], boxes[i, 3], 3])
    crop = t.image.resize(crop, [view.size, view.size], view.resize_method,
                          antialias=view.antialias)
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

  @property
  def skipped_files(self) -> list[str]:
    return [self.source.name_of(i) for i in sorted(self.bad_files)]

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
    self._labels, self._skipped, self._bad = None, None, None

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

  @property
  def skipped_files(self) -> list[str]:
    """The names of the files that could not be decoded (after one pass, as `skipped`)."""
    self.labels  # pylint: disable=pointless-statement
    return [self.source.name_of(i) for i in self._bad]

  def batches(self, keep: np.ndarray | None = None):
    """(images, labels, indices of the undecodable files) numpy batches of the decodable
    files (of `keep`), in order."""
    t = tf()
    ds = self.source.in_order(keep).map(
        lambda x: (center_view(x["image"], self.image_size, self.crop_proportion), x["label"],
                   x["bad"][0] < 0, x["index"]),
        num_parallel_calls=t.data.AUTOTUNE, deterministic=True)
    for images, labels, ok, index in ds.batch(self.batch_size).prefetch(2).as_numpy_iterator():
      yield images[ok], labels[ok], index[~ok]

  def sample(self, count: int, seed: int) -> sources.ArrayDataset:
    """Up to `count` random decodable images in memory (for plots)."""
    keep = np.random.default_rng(seed).permutation(self.source.total)[:count]
    parts = list(self.batches(keep)) or [(np.zeros((0,) + (self.image_size,) * 2 + (3,),
                                                    np.uint8), np.zeros(0, np.int32), None)]
    return sources.ArrayDataset(np.concatenate([p[0] for p in parts]),
                                np.concatenate([p[1] for p in parts]), self.classes)


class _Batches:
  """One pass over an EvalSplit's images; a complete pass records labels and skips."""

  def __init__(self, split: EvalSplit):
    self.split = split

  def __iter__(self):
    labels, bad = [], []
    for images, batch_labels, batch_bad in self.split.batches():
      labels.append(batch_labels)
      bad.extend(batch_bad.tolist())
      yield images
    labels = np.concatenate(labels) if labels else np.zeros(0, np.int32)
    if not len(labels):
      raise ConfigError(f"none of the {self.split.source.total} images of config.dataset "
                        "could be decoded; check its files")
    self.split._labels = labels.astype(np.int32)  # pylint: disable=protected-access
    self.split._skipped = self.split.source.total - len(labels)  # pylint: disable=protected-access
    self.split._bad = bad  # pylint: disable=protected-access
