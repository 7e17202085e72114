"""tf.data readers of image folders and TFDS data sets, for the pipeline in pipeline.py.

A source is one split restricted to one process's shard. It yields elements
{"image": uint8 (H, W, 3), "label": int32 (-1 when unknown), "index": int32 (stable
position in the split), "slot": int32 (the index this element was drawn for), "epoch":
int64, "bad": int32 (FALLBACKS,) (indices of files that failed for it, -1 padded)}.

Training reads one endless stream of positions: epoch e covers positions
[e * per_epoch, (e + 1) * per_epoch) of the stream, so step s starts at position
s * local_batch, and a resumed run builds the stream from there without reading what
came before. Image folders: the epoch's order is a stateless permutation of the shard
(`index_shuffle` keyed by (seed, epoch)). A file that cannot be read or decoded is
replaced by the next decodable file of the order (`bad` names the failures), so batches
stay full and step -> examples stays a pure function. TFDS: records are read in file
order (so `index` is stable) and shuffled with a buffer seeded by (seed, epoch); only the
first epoch's skipped records are read again on resume, encoded, not decoded. TFDS data
are validated when prepared.

TensorFlow is imported on first use only (see `tf()`).
"""
import contextlib
import functools
import os
import sys

import numpy as np
from PIL import Image

from ssl_jax.data import sources
from ssl_jax.errors import ConfigError

# Candidates tried per element before giving up (a black 1x1 image, all counted bad).
FALLBACKS = 4
# Records held by the TFDS shuffle buffer: encoded bytes, ~110 KB for an ImageNet JPEG.
TFDS_SHUFFLE_BUFFER = 10_000
# Files whose headers give an image folder's stored size (stored_side).
SIZE_SAMPLE = 16


@contextlib.contextmanager
def native_stderr_silenced():
  """Drops what C++ writes to fd 2 meanwhile, when TF_CPP_MIN_LOG_LEVEL >= 1 (main.py sets
  2): TensorFlow >= 2.17 prints its start-up notices (oneDNN, CPU features) there
  whatever that variable says. Python's own errors still surface, once fd 2 is back."""
  if os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0") in ("", "0"):
    yield
    return
  sys.stderr.flush()
  saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
  try:
    os.dup2(devnull, 2)
    yield
  finally:
    os.dup2(saved, 2)
    os.close(saved)
    os.close(devnull)


@functools.cache
def tf():
  """TensorFlow, imported lazily and quietly; it must not take accelerator memory from JAX."""
  with native_stderr_silenced():
    import tensorflow  # pylint: disable=import-outside-toplevel
  try:
    tensorflow.config.set_visible_devices([], "GPU")
  except RuntimeError:  # already initialised by someone else
    pass
  return tensorflow


def decode(encoded):
  """Encoded JPEG/PNG/GIF/BMP/WebP bytes -> uint8 (H, W, 3); raises on bad data."""
  t = tf()
  # JPEGs (most data) take the faster integer IDCT, as the TF ImageNet pipelines do.
  image = t.cond(t.io.is_jpeg(encoded),
                 lambda: t.io.decode_jpeg(encoded, channels=3, dct_method="INTEGER_FAST"),
                 lambda: t.io.decode_image(encoded, channels=3, expand_animations=False))
  image.set_shape([None, None, 3])
  return image


def shard_range(size: int, process_index: int, process_count: int) -> tuple[int, int]:
  """[start, stop) of this process's contiguous shard; shards differ by at most one."""
  bounds = np.linspace(0, size, process_count + 1).round().astype(int)
  return int(bounds[process_index]), int(bounds[process_index + 1])


def open_source(dataset: str, split: str, data_dir: str | None = None,
                process_index: int = 0, process_count: int = 1):
  """The FolderSource or TfdsSource of `dataset` ("image_folder:<dir>" or a TFDS name)."""
  if dataset.startswith("image_folder:"):
    root = os.path.expanduser(dataset[len("image_folder:"):])
    if not root:
      raise ConfigError(f"config.dataset={dataset!r} has no path; write "
                        "'image_folder:<path>'")
    return FolderSource(root, split, f"config.dataset={dataset!r}", process_index,
                        process_count)
  return TfdsSource(dataset, split, data_dir, process_index, process_count)


class FolderSource:
  """<root>/<split>/<class>/<files>, classes from the folder names (sources.py rules)."""

  def __init__(self, root, split, where, process_index=0, process_count=1):
    paths, labels, self.classes = sources.list_image_folder(root, split, where)
    self.paths = np.asarray(paths)
    self.labels = np.asarray(labels, np.int32)
    self.total = len(paths)
    self.start, self.stop = shard_range(self.total, process_index, process_count)

  @property
  def num_examples(self) -> int:
    return self.stop - self.start

  def name_of(self, index: int) -> str:
    return str(self.paths[index])

  def stored_side(self) -> int | None:
    """The largest shorter side among the first SIZE_SAMPLE readable files (headers only),
    for sources.check_crop_fits; None when none of them can be read."""
    sides = []
    for path in self.paths[:SIZE_SAMPLE]:
      try:
        with Image.open(path) as image:
          sides.append(min(image.size))
      except sources.DECODE_ERRORS:
        pass
    return max(sides, default=None)

  def stream(self, seed: int, start: int, per_epoch: int):
    """Elements at stream positions start, start + 1, ... (see the module docstring)."""
    t = tf()
    n, shard_start = self.num_examples, self.start

    def candidates(position):
      epoch, j = position // per_epoch, position % per_epoch
      order = (j + t.range(FALLBACKS, dtype=t.int64)) % n
      key = t.stack([t.constant(seed, t.int64), epoch])
      return epoch, shard_start + t.random.experimental.index_shuffle(order, key, n - 1)

    positions = t.data.Dataset.range(start, 2**62)
    return self._elements(positions.map(candidates))

  def in_order(self, keep: np.ndarray | None = None):
    """The whole split in file order (or the indices `keep`), without fallbacks."""
    t = tf()
    indices = np.arange(self.total) if keep is None else np.sort(keep)
    ds = t.data.Dataset.from_tensor_slices(indices[:, None])
    return self._elements(ds.map(lambda cands: (t.constant(0, t.int64), cands)))

  def _elements(self, candidates):
    """(epoch, candidate indices) -> elements of the first decodable candidate."""
    t = tf()
    paths, labels = t.constant(self.paths), t.constant(self.labels)

    def first_decodable(epoch, cands):
      # Only the candidates' paths enter the inner dataset: a captured table of every
      # path would be copied for each element. (No enumerate() either: it is slow here.)
      tries = t.data.Dataset.from_tensor_slices((cands, t.gather(paths, cands)))
      tries = tries.map(lambda i, path: (i, decode(t.io.read_file(path))))
      failed = (t.constant(-1, t.int64), t.zeros([1, 1, 3], t.uint8))
      index, image = tries.ignore_errors().concatenate(
          t.data.Dataset.from_tensors(failed)).take(1).get_single_element()
      found = index >= 0
      tried = t.where(found, t.argmax(t.cast(cands == index, t.int32)), FALLBACKS)
      bad = t.where(t.range(t.size(cands, t.int64)) < tried, cands, -1)
      bad = t.pad(bad, [[0, FALLBACKS - t.size(bad)]], constant_values=-1)
      index = t.where(found, index, cands[0])
      label = t.where(found, t.gather(labels, index), -1)
      return {"image": image, "label": label, "index": t.cast(index, t.int32),
              "slot": t.cast(cands[0], t.int32), "epoch": epoch, "bad": t.cast(bad, t.int32)}

    return candidates.map(first_decodable, num_parallel_calls=t.data.AUTOTUNE,
                          deterministic=True)


class TfdsSource:
  """A TFDS split (any name; imagenet2012 reads its manual download dir under data_dir)."""

  def __init__(self, name, split, data_dir=None, process_index=0, process_count=1):
    self.name, self.split, self.data_dir = name, split, data_dir
    self.where = f"config.dataset={name!r}"
    info = self._builder().info
    if "image" not in info.features:
      raise ConfigError(f"{self.where} has no 'image' feature; choose an image data set")
    self.has_label = "label" in info.features
    names = getattr(info.features["label"], "names", None) if self.has_label else None
    self.classes = tuple(names or ())
    self.total = self._count(split)
    self.shard = split
    self.start, self.stop = 0, self.total
    if process_count > 1:  # each process reads only its own files
      tfds = _tfds(self.where)
      shards = [tfds.split_for_jax_process(split, process_index=p, process_count=process_count)
                for p in range(process_index + 1)]
      self.shard = shards[-1]
      self.start = sum(self._count(s) for s in shards[:-1])
      self.stop = self.start + self._count(self.shard)

  @property
  def num_examples(self) -> int:
    return self.stop - self.start

  def name_of(self, index: int) -> str:
    return f"{self.name} {self.split} record {index}"

  def stored_side(self) -> int | None:
    """The images' shorter side when TFDS declares one size for all, else None."""
    height, width = self._builder().info.features["image"].shape[:2]
    return None if None in (height, width) else min(height, width)

  def _builder(self):
    tfds = _tfds(self.where)
    try:
      return tfds.builder(self.name, data_dir=self.data_dir)
    except (tfds.core.DatasetNotFoundError, ValueError, AssertionError) as e:
      reason = str(e).splitlines()[0] if str(e) else type(e).__name__
      raise ConfigError(f"unknown {self.where} ({reason}); use one of "
                        f"{sources.dataset_names()}") from e

  def _load(self, split):
    tfds = _tfds(self.where)
    try:
      return tfds.load(self.name, split=split, data_dir=self.data_dir, shuffle_files=False,
                       decoders={"image": tfds.decode.SkipDecoding()})
    except ValueError as e:  # an unknown split or a bad slice
      reason = str(e).splitlines()[0] if str(e) else type(e).__name__
      raise ConfigError(f"{self.where} cannot load split '{split}' ({reason}); fix the "
                        "split name") from e

  def _count(self, split) -> int:
    count = int(self._load(split).cardinality())
    if count <= 0:
      raise ConfigError(f"{self.where} split '{split}' has no known size; prepare it "
                        "with tfds build first")
    return count

  def _records(self, split, offset: int):
    t = tf()

    def element(i, x):
      label = t.cast(x["label"], t.int32) if self.has_label else t.constant(-1, t.int32)
      index = t.cast(i + offset, t.int32)
      return {"encoded": x["image"], "label": label, "index": index, "slot": index,
              "epoch": t.constant(0, t.int64)}
    return self._load(split).enumerate().map(element)

  def stream(self, seed: int, start: int, per_epoch: int):
    t = tf()
    records = self._records(self.shard, self.start)
    buffer = min(self.num_examples, TFDS_SHUFFLE_BUFFER)
    first_epoch, first = divmod(start, per_epoch)

    def epoch(e):
      shuffled = records.shuffle(buffer, seed=seed * 1_000_003 + e,  # one seed per epoch
                                 reshuffle_each_iteration=False)
      skip = t.where(e == first_epoch, t.constant(first, t.int64), 0)
      return shuffled.take(per_epoch).skip(skip).map(lambda x: dict(x, epoch=e))

    return t.data.Dataset.range(first_epoch, 2**62).flat_map(epoch).map(
        _decoded, num_parallel_calls=t.data.AUTOTUNE, deterministic=True)

  def in_order(self, keep: np.ndarray | None = None):
    t = tf()
    ds = self._records(self.split, 0)
    if keep is not None:
      wanted = np.zeros(self.total, bool)
      wanted[keep] = True
      wanted = t.constant(wanted)
      ds = ds.filter(lambda x: t.gather(wanted, x["index"]))
    return ds.map(_decoded, num_parallel_calls=t.data.AUTOTUNE, deterministic=True)


def _decoded(x):
  t = tf()
  return {"image": decode(x.pop("encoded")), **x,
          "bad": t.fill([FALLBACKS], t.constant(-1, t.int32))}


def _tfds(where):
  try:
    import tensorflow_datasets  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ConfigError(f"{where} is not one of {sources.dataset_names()}; TFDS names need "
                      "tensorflow-datasets installed") from e
  tf()  # configure TensorFlow before TFDS uses it
  return tensorflow_datasets
