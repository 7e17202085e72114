"""In-memory image data sources.

Each source returns one whole split as uint8 numpy arrays. Accepted forms of
`config.dataset`:

  "quickstart"             the bundled CIFAR-10 subset (splits "train", "test")
  "packed:<file.npz>"      a file written by `python -m ssl_jax.data.pack`
  "image_folder:<dir>"     <dir>/<split>/<class>/<image files>
  any TFDS name            e.g. "cifar10", loaded with tensorflow_datasets

TensorFlow is imported only for TFDS names, so the other forms work without it.

Packed format (np.savez, loadable with allow_pickle=False): `format` =
"ssl_jax.packed.v1", `classes` (unicode), and per split `<split>.data` (uint8,
the encoded files concatenated as they are on disk), `<split>.offsets` (int64,
N+1) and `<split>.labels` (int32, N). Decoding happens on load, so the file
stays as small as the JPEGs themselves.
"""

import concurrent.futures
import dataclasses
import io
import logging
import os
import zipfile

import numpy as np
from PIL import Image

from ssl_jax.errors import ConfigError

PACKED_FORMAT = "ssl_jax.packed.v1"
QUICKSTART_PATH = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "quickstart_cifar10.npz")
IMAGE_EXTENSIONS = frozenset({
    ".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".ppm", ".pgm", ".tif",
    ".tiff"})
# What PIL raises for corrupt, truncated or unsupported files.
DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError,
                  Image.DecompressionBombError)
# Small chunks waste time on scheduling; large ones balance threads badly.
_MIN_CHUNK = 64

_log = logging.getLogger(__name__)


@dataclasses.dataclass
class ArrayDataset:
  """One split in memory: images uint8 (N, H, W, 3), labels int32 (N,)."""
  images: np.ndarray
  labels: np.ndarray  # -1 where unknown (unlabeled data).
  classes: tuple[str, ...]  # label i <-> classes[i]; () when unlabeled.
  skipped: int = 0  # Files that could not be decoded.
  skipped_files: tuple[str, ...] = ()  # Their names (paths, or file and position).

  def __len__(self) -> int:
    return len(self.labels)


def dataset_names() -> str:
  """The accepted forms of config.dataset, for error messages."""
  return ("'quickstart', 'packed:<file.npz>', 'image_folder:<dir>' (holding "
          "<dir>/<split>/<class>/<images>) or a TFDS name such as 'cifar10'")


def load_split(dataset: str, split: str, data_dir: str | None = None,
               image_size: int | None = None) -> ArrayDataset:
  """Loads one split of `dataset` (see the module docstring) into memory.

  With `image_size`, every image is resized so that its shorter side is
  `image_size` (bicubic) and centre-cropped to a square.
  """
  if not isinstance(dataset, str) or not dataset:
    raise ConfigError(f"config.dataset={dataset!r} is empty; set it to one of "
                      f"{dataset_names()}")
  if image_size is not None:
    if isinstance(image_size, bool) or not isinstance(
        image_size, (int, np.integer)) or image_size <= 0:
      raise ConfigError(f"config.data_image_size={image_size!r} must be a "
                        "positive int or None (keep the stored size)")
    image_size = int(image_size)
  where = f"config.dataset={dataset!r}"
  if dataset == "quickstart":
    return _load_packed(QUICKSTART_PATH, split, image_size, where)
  if dataset.startswith("packed:"):
    path = _path_after(dataset, "packed:")
    return _load_packed(path, split, image_size, where)
  if dataset.startswith("image_folder:"):
    root = _path_after(dataset, "image_folder:")
    return _load_image_folder(root, split, image_size, where)
  return _load_tfds(dataset, split, data_dir, image_size)


def load_splits(config) -> tuple[ArrayDataset, ArrayDataset]:
  """(train split, eval split) of `config.dataset` in host memory."""
  data_dir = config.data_dir or None
  size = config.data_image_size or None
  train = load_split(config.dataset, config.train_split, data_dir, size)
  test = load_split(config.dataset, config.eval_split, data_dir, size)
  require_labels(test.labels, config)
  check_crop_fits(config, min(train.images.shape[1:3]))
  return train, test


def check_crop_fits(config, side: int | None):
  """Refuses crops larger than the stored images (None: unknown), on both input paths."""
  if side is not None and config.image_size > side:
    raise ConfigError(f"config.image_size={config.image_size} is larger than the "
                      f"{side}x{side} images of {config.dataset}; use config.image_size <= "
                      f"{side}")


SKIPPED_FILES = "skipped_files.txt"
SHOWN_SKIPPED = 5   # names printed; the file has all


def report_skipped(workdir: str, names) -> str | None:
  """Names the first undecodable files and writes all of them to workdir/skipped_files.txt
  (returns its path; None, and no file, when nothing was skipped)."""
  names = sorted(set(names))
  if not names:
    return None
  path = os.path.join(workdir, SKIPPED_FILES)
  with open(path, "w") as f:
    f.writelines(name + "\n" for name in names)
  more = f", ... ({len(names) - SHOWN_SKIPPED} more)" if len(names) > SHOWN_SKIPPED else ""
  print(f"Skipped {len(names)} image files that could not be decoded: "
        f"{', '.join(names[:SHOWN_SKIPPED])}{more}; all listed in {path}", flush=True)
  return path


def require_labels(labels, config):
  """A one-line error for an eval split whose labels are all unknown (-1), e.g. TFDS
  imagenet2012's "test": every kNN, probe and linear score would read 0."""
  if len(labels) and (np.asarray(labels) < 0).all():
    raise ConfigError(f"config.eval_split={config.eval_split!r} of config.dataset="
                      f"{config.dataset!r} has no labels; evaluate on a labelled split "
                      "(ImageNet: --config.eval_split=validation)")


def pack_image_folder(root: str, out_path: str,
                      per_class: dict[str, int] | None = None,
                      seed: int = 0, skipped: list | None = None) -> dict[str, int]:
  """Writes the image folder `root` to `out_path` in the packed format.

  Packs every split folder under `root`, or only the keys of `per_class`,
  keeping per_class[split] files of each class chosen at random (splits and
  classes in sorted order, one np.random.default_rng(seed)). Files that
  cannot be decoded are left out (a chosen one is not replaced) and their
  paths appended to `skipped`. Returns the number of images packed per split.
  """
  where = f"image folder {root!r}"
  if per_class is None:
    splits = _split_names(root, where)
  else:
    splits = sorted(per_class)
  classes = _class_names(root, where)
  rng = np.random.default_rng(seed)
  arrays = {"format": np.array(PACKED_FORMAT),
            "classes": np.array(classes, dtype=np.str_)}
  counts = {}
  for split in splits:
    groups = _scan_split(root, split, classes, where)
    if per_class is not None:
      groups = [(label, _choose(paths, per_class[split], rng, split, label,
                                classes, where))
                for label, paths in groups]
    paths = [p for _, group in groups for p in group]
    labels = [label for label, group in groups for _ in group]
    blobs = _parallel_map(_read_bytes, paths)
    good = _parallel_map(lambda b: _decode(b, None) is not None, blobs)
    if skipped is not None:
      skipped.extend(p for p, ok in zip(paths, good) if not ok)
    paths, labels, blobs = ([x for x, ok in zip(items, good) if ok]
                            for items in (paths, labels, blobs))
    offsets = np.zeros(len(blobs) + 1, np.int64)
    offsets[1:] = np.cumsum([len(b) for b in blobs])
    arrays[f"{split}.data"] = np.frombuffer(b"".join(blobs), np.uint8)
    arrays[f"{split}.offsets"] = offsets
    arrays[f"{split}.labels"] = np.asarray(labels, np.int32)
    counts[split] = len(paths)
  _write_npz(out_path, arrays)
  return counts


# ---------------------------------------------------------------- image folder


def _path_after(dataset: str, prefix: str) -> str:
  path = dataset[len(prefix):]
  if not path:
    raise ConfigError(f"config.dataset={dataset!r} has no path; write "
                      f"'{prefix}<path>'")
  return os.path.expanduser(path)


def _subdirs(path: str) -> list[str]:
  return sorted(e.name for e in os.scandir(path)
                if e.is_dir() and not e.name.startswith("."))


def _image_files(path: str) -> list[str]:
  # Sorted so labels and packed selections do not depend on the file system.
  return sorted(e.path for e in os.scandir(path)
                if e.is_file() and not e.name.startswith(".") and
                os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS)


def _split_names(root: str, where: str) -> list[str]:
  if not os.path.isdir(root):
    raise ConfigError(f"{where}: folder {root} does not exist; point "
                      "config.dataset at an existing image folder")
  splits = _subdirs(root)
  if not splits:
    raise ConfigError(f"{where}: {root} has no split folders; config.dataset "
                      "needs the layout <dir>/<split>/<class>/<images>")
  return splits


def _class_names(root: str, where: str) -> tuple[str, ...]:
  # The union over all splits, so labels agree between splits even when one
  # split lacks a class.
  names = set()
  for split in _split_names(root, where):
    names.update(_subdirs(os.path.join(root, split)))
  return tuple(sorted(names))


def _scan_split(root: str, split: str, classes: tuple[str, ...],
                where: str) -> list[tuple[int, list[str]]]:
  """Lists the image files of one split as (label, paths) per class folder."""
  split_dir = os.path.join(root, split)
  if not os.path.isdir(split_dir):
    found = ", ".join(_split_names(root, where))
    raise ConfigError(f"{where}: no split folder '{split}' in {root} (found: "
                      f"{found}); fix the split name or config.dataset")
  class_dirs = _subdirs(split_dir)
  if class_dirs:
    groups = [(classes.index(name), _image_files(os.path.join(split_dir, name)))
              for name in class_dirs]
  else:  # Loose files without class folders are unlabeled.
    groups = [(-1, _image_files(split_dir))]
  if not any(paths for _, paths in groups):
    exts = " ".join(sorted(IMAGE_EXTENSIONS))
    raise ConfigError(f"{where}: no image files ({exts}) under {split_dir}; "
                      "config.dataset needs <dir>/<split>/<class>/<images>")
  return groups


def _choose(paths: list[str], n: int, rng: np.random.Generator, split: str,
            label: int, classes: tuple[str, ...], where: str) -> list[str]:
  name = classes[label] if label >= 0 else "(unlabeled)"
  if not isinstance(n, (int, np.integer)) or n <= 0 or n > len(paths):
    raise ConfigError(f"{where}: per_class {split}={n} but class '{name}' has "
                      f"{len(paths)} files; use a count from 1 to {len(paths)}")
  keep = np.sort(rng.choice(len(paths), size=n, replace=False))
  return [paths[i] for i in keep]


def _read_bytes(path: str) -> bytes:
  # An unreadable file packs as empty bytes and is skipped on load.
  try:
    with open(path, "rb") as f:
      return f.read()
  except OSError:
    return b""


def list_image_folder(root: str, split: str, where: str
                      ) -> tuple[list[str], list[int], tuple[str, ...]]:
  """(paths, labels, classes) of one split of an image folder, in a stable order;
  a missing or empty folder is a one-line ConfigError naming `where`."""
  classes = _class_names(root, where)
  groups = _scan_split(root, split, classes, where)
  paths = [p for _, group in groups for p in group]
  labels = [label for label, group in groups for _ in group]
  return paths, labels, classes


def _load_image_folder(root: str, split: str, image_size: int | None,
                       where: str) -> ArrayDataset:
  paths, labels, classes = list_image_folder(root, split, where)
  decoded = _parallel_map(lambda p: _decode(_read_bytes(p), image_size), paths)
  return _assemble(decoded, labels, classes, split, where, paths)


# ---------------------------------------------------------------------- packed


def _write_npz(out_path: str, arrays: dict[str, np.ndarray]) -> None:
  # Through a file object, so np.savez keeps the name; renamed into place so
  # a crash never leaves a half-written file behind.
  out_dir = os.path.dirname(os.path.abspath(out_path))
  os.makedirs(out_dir, exist_ok=True)
  tmp_path = out_path + ".tmp"
  with open(tmp_path, "wb") as f:
    np.savez(f, **arrays)
  os.replace(tmp_path, out_path)


def _load_packed(path: str, split: str, image_size: int | None,
                 where: str) -> ArrayDataset:
  if not os.path.isfile(path):
    raise ConfigError(f"{where}: file {path} does not exist; point "
                      "config.dataset at a file from python -m "
                      "ssl_jax.data.pack")
  try:
    with np.load(path, allow_pickle=False) as npz:
      arrays = {k: npz[k] for k in npz.files
                if k in ("format", "classes") or k.startswith(split + ".")}
      splits = sorted(k[:-len(".labels")] for k in npz.files
                      if k.endswith(".labels"))
  except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:   # EOFError: empty file
    reason = str(e).splitlines()[0] if str(e) else type(e).__name__
    raise ConfigError(f"{where}: {path} is not a readable .npz ({reason}); "
                      "rebuild it with python -m ssl_jax.data.pack") from e
  if "format" not in arrays or str(arrays["format"]) != PACKED_FORMAT:
    raise ConfigError(f"{where}: {path} is not in the {PACKED_FORMAT} format; "
                      "rebuild it with python -m ssl_jax.data.pack")
  if split not in splits:
    raise ConfigError(f"{where} has no split '{split}' (splits: "
                      f"{', '.join(splits)}); fix the split name")
  data = arrays[f"{split}.data"].tobytes()
  offsets = arrays[f"{split}.offsets"].tolist()
  blobs = [data[a:b] for a, b in zip(offsets[:-1], offsets[1:])]
  decoded = _parallel_map(lambda b: _decode(b, image_size), blobs)
  classes = tuple(str(c) for c in arrays["classes"])
  names = [f"{path} ({split} #{i})" for i in range(len(blobs))]
  return _assemble(decoded, arrays[f"{split}.labels"], classes, split, where, names)


# ------------------------------------------------------------------------ TFDS


def _load_tfds(name: str, split: str, data_dir: str | None,
               image_size: int | None) -> ArrayDataset:
  where = f"config.dataset={name!r}"
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ConfigError(f"{where} is not one of {dataset_names()}; TFDS names "
                      "need tensorflow-datasets installed") from e
  try:
    info = tfds.builder(name, data_dir=data_dir).info
  except (tfds.core.DatasetNotFoundError, ValueError, AssertionError) as e:
    # AssertionError: TFDS's answer to an unknown version ("cifar10:9.9.9").
    reason = str(e).splitlines()[0] if str(e) else type(e).__name__
    raise ConfigError(f"unknown {where} ({reason}); use one of "
                      f"{dataset_names()}") from e
  if "image" not in info.features:
    raise ConfigError(f"{where} has no 'image' feature; choose an image "
                      "data set for config.dataset")
  try:
    ds = tfds.load(name, split=split, data_dir=data_dir)
  except ValueError as e:  # Unknown split or a bad slice.
    first_line = str(e).splitlines()[0] if str(e) else type(e).__name__
    raise ConfigError(f"{where} cannot load split '{split}' ({first_line}); "
                      "fix the split name") from e
  has_label = "label" in info.features
  ds = ds.map(lambda x: {k: x[k] for k in ("image", "label") if k in x})
  # Batching needs one image shape; otherwise read one image at a time. This
  # is batch_size=-1 without its single huge allocation for unknown sizes.
  static = None not in info.features["image"].shape
  images, labels = [], []
  for batch in tfds.as_numpy(ds.batch(1024 if static else 1)):
    images.extend(_array_to_rgb(im, image_size) for im in batch["image"])
    labels.extend(batch["label"] if has_label else [-1] * len(batch["image"]))
  classes = ()
  if has_label and hasattr(info.features["label"], "names"):
    classes = tuple(info.features["label"].names)
  return _assemble(images, labels, classes, split, where)


def _array_to_rgb(image: np.ndarray, image_size: int | None) -> np.ndarray:
  if image.shape[-1] == 1:
    image = np.repeat(image, 3, axis=-1)
  image = image[..., :3].astype(np.uint8, copy=False)  # Drops any alpha.
  if image_size is not None:
    image = np.asarray(_resize_crop(Image.fromarray(image), image_size))
  return image


# ------------------------------------------------------------------- decoding


def _to_rgb(img: Image.Image) -> Image.Image:
  if img.mode == "RGB":
    return img
  if img.mode == "P":  # Palette transparency converts cleanly only via RGBA.
    img = img.convert("RGBA")
  return img.convert("RGB")


def _resize_crop(img: Image.Image, size: int) -> Image.Image:
  """Resizes the shorter side to `size` (bicubic), then centre-crops."""
  w, h = img.size
  if (w, h) == (size, size):
    return img
  scale = size / min(w, h)
  new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
  img = img.resize((new_w, new_h), Image.Resampling.BICUBIC)
  left, top = (new_w - size) // 2, (new_h - size) // 2
  return img.crop((left, top, left + size, top + size))


def _decode(blob: bytes, image_size: int | None) -> np.ndarray | None:
  """Decodes one encoded image to uint8 RGB; None when it is unreadable."""
  try:
    img = Image.open(io.BytesIO(blob))
    img.load()  # Decode now, so truncated files fail here.
    img = _to_rgb(img)
    if image_size is not None:
      img = _resize_crop(img, image_size)
    return np.asarray(img, dtype=np.uint8)
  except DECODE_ERRORS:
    return None


def _parallel_map(fn, items: list) -> list:
  """Maps fn over items on threads: PIL decoding and file reads drop the GIL."""
  workers = min(32, (os.cpu_count() or 1) + 4)
  if len(items) <= _MIN_CHUNK:
    return [fn(x) for x in items]
  size = max(_MIN_CHUNK, -(-len(items) // (workers * 4)))
  chunks = [items[i:i + size] for i in range(0, len(items), size)]
  with concurrent.futures.ThreadPoolExecutor(workers) as pool:
    parts = pool.map(lambda chunk: [fn(x) for x in chunk], chunks)
    return [y for part in parts for y in part]


def _assemble(decoded: list, labels, classes: tuple[str, ...], split: str,
              where: str, names=None) -> ArrayDataset:
  """Stacks decoded images, dropping (counting and naming) the undecodable ones."""
  keep = [i for i, im in enumerate(decoded) if im is not None]
  skipped = len(decoded) - len(keep)
  bad = tuple(names[i] for i, im in enumerate(decoded) if im is None) if names else ()
  if skipped:
    _log.warning("%s split '%s': skipped %d of %d image files that could not "
                 "be decoded%s", where, split, skipped, len(decoded),
                 f" ({', '.join(bad[:SHOWN_SKIPPED])}{', ...' * (len(bad) > SHOWN_SKIPPED)})"
                 if bad else "")
  if not keep:
    raise ConfigError(f"{where} split '{split}': none of its {len(decoded)} "
                      "images could be decoded; check the files behind "
                      "config.dataset")
  shapes = sorted({decoded[i].shape[:2] for i in keep})
  if len(shapes) > 1:
    (h0, w0), (h1, w1) = shapes[0], shapes[-1]
    raise ConfigError(f"{where} split '{split}' has images of different sizes "
                      f"({h0}x{w0}, {h1}x{w1}, ...); set "
                      "config.data_image_size to resize them to one size")
  images = np.stack([decoded[i] for i in keep])
  labels = np.asarray(labels, np.int32)[keep]
  return ArrayDataset(images, labels, classes, skipped, bad)
