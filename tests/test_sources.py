"""Tests for ssl_jax.data.sources and the pack CLI."""

import collections
import io
import logging
import os
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

from ssl_jax.data import pack
from ssl_jax.data import sources
from ssl_jax.errors import ConfigError

CIFAR_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog",
                 "frog", "horse", "ship", "truck")
# Distinct flat colours per (class, index); PNG keeps them exact.
COLOURS = {"b_dog": [(10, 20, 30), (40, 50, 60), (70, 80, 90)],
           "a_cat": [(200, 0, 0), (0, 200, 0), (0, 0, 200)]}


def _save(path, array, fmt="PNG"):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(np.asarray(array, np.uint8)).save(path, fmt)


def _jpeg_bytes(size=(64, 64)):
  rng = np.random.default_rng(1)
  pixels = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
  buf = io.BytesIO()
  Image.fromarray(pixels).save(buf, "JPEG", quality=90)
  return buf.getvalue()


@pytest.fixture
def folder(tmp_path):
  """root/{train,test}/{a_cat,b_dog}/k.png, each a flat 8x6 colour."""
  root = tmp_path / "imgs"
  for split in ("train", "test"):
    for name, colours in COLOURS.items():
      for k, colour in enumerate(colours):
        _save(str(root / split / name / f"{k}.png"),
              np.broadcast_to(colour, (8, 6, 3)))
  return str(root)


def _expected(split_colours=COLOURS):
  images, labels = [], []
  for label, name in enumerate(sorted(split_colours)):
    for colour in split_colours[name]:
      images.append(np.broadcast_to(colour, (8, 6, 3)))
      labels.append(label)
  return np.asarray(images, np.uint8), np.asarray(labels, np.int32)


def test_image_folder_labels_and_pixels(folder):
  ds = sources.load_split(f"image_folder:{folder}", "train")
  images, labels = _expected()
  assert ds.classes == ("a_cat", "b_dog")
  assert ds.images.dtype == np.uint8 and ds.labels.dtype == np.int32
  np.testing.assert_array_equal(ds.images, images)
  np.testing.assert_array_equal(ds.labels, labels)
  assert len(ds) == 6 and ds.skipped == 0


def test_image_size_resizes_and_crops(folder):
  ds = sources.load_split(f"image_folder:{folder}", "test", image_size=4)
  assert ds.images.shape == (6, 4, 4, 3)
  # A flat colour stays flat through bicubic resizing.
  np.testing.assert_array_equal(ds.images[0], np.full((4, 4, 3), (200, 0, 0)))


def test_resize_crop_takes_the_centre():
  # Left third red, middle green, right third blue: a centre crop is green.
  array = np.zeros((30, 90, 3), np.uint8)
  array[:, :30, 0] = array[:, 30:60, 1] = array[:, 60:, 2] = 255
  out = sources._resize_crop(Image.fromarray(array), 10)
  assert out.size == (10, 10)
  np.testing.assert_array_equal(np.asarray(out)[2:-2, 2:-2],
                                np.full((6, 6, 3), (0, 255, 0)))


def test_grayscale_and_rgba_become_rgb(tmp_path):
  root = tmp_path / "modes"
  os.makedirs(root / "train" / "x")
  Image.new("L", (5, 5), 77).save(root / "train" / "x" / "gray.png")
  Image.new("RGBA", (5, 5), (1, 2, 3, 100)).save(root / "train" / "x" / "a.png")
  Image.new("P", (5, 5), 0).save(root / "train" / "x" / "p.gif")
  ds = sources.load_split(f"image_folder:{root}", "train")
  assert ds.images.shape == (3, 5, 5, 3)
  # Sorted files: a.png, gray.png, p.gif.
  np.testing.assert_array_equal(ds.images[0], np.full((5, 5, 3), (1, 2, 3)))
  np.testing.assert_array_equal(ds.images[1], np.full((5, 5, 3), 77))


def test_corrupt_and_truncated_files_are_skipped(folder, caplog):
  cat_dir = os.path.join(folder, "train", "a_cat")
  with open(os.path.join(cat_dir, "junk.jpg"), "wb") as f:
    f.write(np.random.default_rng(0).bytes(500))
  with open(os.path.join(cat_dir, "cut.jpg"), "wb") as f:
    whole = _jpeg_bytes()  # Cut inside the scan data, past the headers.
    f.write(whole[:len(whole) // 2])
  with open(os.path.join(cat_dir, "notes.txt"), "w") as f:
    f.write("not an image: ignored, not counted")
  with caplog.at_level(logging.WARNING):
    ds = sources.load_split(f"image_folder:{folder}", "train")
  assert ds.skipped == 2 and len(ds) == 6
  np.testing.assert_array_equal(ds.images, _expected()[0])
  assert ds.skipped_files == (os.path.join(cat_dir, "cut.jpg"), os.path.join(cat_dir, "junk.jpg"))
  warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
  assert len(warnings) == 1 and "skipped 2 of 8" in warnings[0].getMessage()
  assert "cut.jpg" in warnings[0].getMessage() and "junk.jpg" in warnings[0].getMessage()


def test_skipped_files_are_named_and_listed_in_the_workdir(tmp_path, capsys):
  names = [f"/data/bad{i}.jpg" for i in range(7)]
  path = sources.report_skipped(str(tmp_path), names[::-1])
  assert open(path).read().splitlines() == names
  shown = capsys.readouterr().out
  assert "Skipped 7 image files" in shown and "/data/bad4.jpg, ... (2 more)" in shown
  assert "bad5" not in shown and path in shown
  assert sources.report_skipped(str(tmp_path / "other"), []) is None


def test_pack_leaves_out_undecodable_files(folder, tmp_path, capsys):
  junk = os.path.join(folder, "train", "a_cat", "junk.jpg")
  with open(junk, "wb") as f:
    f.write(b"not an image")
  out = str(tmp_path / "packed.npz")
  skipped = []
  assert sources.pack_image_folder(folder, out, skipped=skipped) == {"test": 6, "train": 6}
  assert skipped == [junk]
  ds = sources.load_split(f"packed:{out}", "train")
  assert len(ds) == 6 and ds.skipped == 0
  np.testing.assert_array_equal(ds.labels, _expected()[1])
  assert pack.main([folder, out]) == 0
  assert f"left out 1 files that could not be decoded:\n  {junk}" in capsys.readouterr().out


def test_unlabeled_split_of_loose_files(folder):
  _save(os.path.join(folder, "unlabeled", "0.png"), np.zeros((8, 6, 3)))
  ds = sources.load_split(f"image_folder:{folder}", "unlabeled")
  np.testing.assert_array_equal(ds.labels, [-1])
  assert ds.classes == ("a_cat", "b_dog")


def test_mixed_sizes_need_image_size(folder):
  big = os.path.join(folder, "train", "a_cat", "big.png")
  _save(big, np.zeros((20, 10, 3)))
  with pytest.raises(ConfigError, match="set config.data_image_size"):
    sources.load_split(f"image_folder:{folder}", "train")
  ds = sources.load_split(f"image_folder:{folder}", "train", image_size=6)
  assert ds.images.shape == (7, 6, 6, 3)


@pytest.mark.parametrize("make_dataset, split", [
    (lambda root, tmp: f"image_folder:{tmp}/missing", "train"),
    (lambda root, tmp: f"image_folder:{root}", "val"),
    (lambda root, tmp: f"image_folder:{_empty(tmp)}", "train"),
    (lambda root, tmp: f"image_folder:{_empty_split(tmp)}", "train"),
    (lambda root, tmp: f"packed:{tmp}/missing.npz", "train"),
    (lambda root, tmp: "image_folder:", "train"),
    (lambda root, tmp: "quickstart", "validation"),
    (lambda root, tmp: "", "train"),
])
def test_user_mistakes_raise_config_error(folder, tmp_path, make_dataset,
                                          split):
  with pytest.raises(ConfigError, match="config.dataset"):
    sources.load_split(make_dataset(folder, str(tmp_path)), split)


def _empty(tmp):
  os.makedirs(f"{tmp}/empty", exist_ok=True)
  return f"{tmp}/empty"


def _empty_split(tmp):
  os.makedirs(f"{tmp}/empty_split/train/cls", exist_ok=True)
  return f"{tmp}/empty_split"


def test_not_a_packed_file(tmp_path):
  bad = tmp_path / "bad.npz"
  np.savez(bad, x=np.zeros(3))
  with pytest.raises(ConfigError, match="config.dataset.*ssl_jax.packed.v1"):
    sources.load_split(f"packed:{bad}", "train")
  (tmp_path / "junk.npz").write_bytes(b"not a zip")
  with pytest.raises(ConfigError, match="config.dataset"):
    sources.load_split(f"packed:{tmp_path / 'junk.npz'}", "train")
  (tmp_path / "empty.npz").write_bytes(b"")
  with pytest.raises(ConfigError, match=r"config.dataset=.*empty.npz is not a readable .npz"):
    sources.load_split(f"packed:{tmp_path / 'empty.npz'}", "train")


def test_pack_round_trip_is_bitwise(folder, tmp_path):
  # A JPEG as well, so the lossy path round-trips through stored bytes.
  with open(os.path.join(folder, "train", "b_dog", "3.jpg"), "wb") as f:
    f.write(_jpeg_bytes((8, 6)))
  out = str(tmp_path / "all.npz")
  assert sources.pack_image_folder(folder, out) == {"test": 6, "train": 7}
  for split in ("train", "test"):
    direct = sources.load_split(f"image_folder:{folder}", split)
    packed = sources.load_split(f"packed:{out}", split)
    np.testing.assert_array_equal(packed.images, direct.images)
    np.testing.assert_array_equal(packed.labels, direct.labels)
    assert packed.classes == direct.classes
  with np.load(out, allow_pickle=False) as npz:
    assert str(npz["format"]) == "ssl_jax.packed.v1"
    assert npz["train.offsets"].dtype == np.int64
    assert npz["train.offsets"][-1] == npz["train.data"].size


def test_pack_per_class_selection(folder, tmp_path):
  out = str(tmp_path / "sub.npz")
  counts = sources.pack_image_folder(folder, out, {"train": 2}, seed=3)
  assert counts == {"train": 4}
  ds = sources.load_split(f"packed:{out}", "train")
  assert collections.Counter(ds.labels.tolist()) == {0: 2, 1: 2}
  # Every kept image is one of its class's originals, without repeats.
  for label, name in enumerate(sorted(COLOURS)):
    kept = {tuple(im[0, 0]) for im in ds.images[ds.labels == label]}
    assert len(kept) == 2 and kept <= set(COLOURS[name])
  with pytest.raises(ConfigError, match="config.dataset.*split 'test'"):
    sources.load_split(f"packed:{out}", "test")
  # The same seed picks the same files.
  sources.pack_image_folder(folder, str(tmp_path / "again.npz"), {"train": 2},
                            seed=3)
  again = sources.load_split(f"packed:{tmp_path / 'again.npz'}", "train")
  np.testing.assert_array_equal(again.images, ds.images)
  with pytest.raises(ConfigError, match="per_class"):
    sources.pack_image_folder(folder, out, {"train": 4})


def test_pack_cli(folder, tmp_path, capsys):
  out = str(tmp_path / "cli.npz")
  assert pack.main([folder, out, "--per_class", "train=1", "test=3",
                    "--seed", "1"]) == 0
  assert "train: 2 images" in capsys.readouterr().out
  assert len(sources.load_split(f"packed:{out}", "test")) == 6
  assert pack.main([str(tmp_path / "nowhere"), out]) == 2
  with pytest.raises(SystemExit):
    pack.main([folder, out, "--per_class", "train"])


def test_quickstart_bundle():
  for split, per_class in (("train", 500), ("test", 100)):
    ds = sources.load_split("quickstart", split)
    assert ds.classes == CIFAR_CLASSES
    assert ds.images.shape == (10 * per_class, 32, 32, 3)
    assert ds.images.dtype == np.uint8 and ds.skipped == 0
    assert collections.Counter(ds.labels.tolist()) == {
        k: per_class for k in range(10)}
    assert 20 < ds.images.mean() < 235  # Real photos, not blank.
  assert os.path.getsize(sources.QUICKSTART_PATH) < 7e6


def test_import_without_tensorflow():
  code = ("import sys; import ssl_jax.data.sources; "
          "assert 'tensorflow' not in sys.modules, 'tensorflow imported'")
  subprocess.run([sys.executable, "-c", code], check=True)


@pytest.fixture
def cifar_dir():
  path = os.environ.get("SSL_JAX_CIFAR10_DIR")
  if not path:
    pytest.skip("set SSL_JAX_CIFAR10_DIR to the CIFAR-10 image folder "
                "(<split>/<class>/*.jpg) to run the real-data test")
  return path


def test_real_cifar10_slice(cifar_dir, tmp_path):
  out = str(tmp_path / "c10.npz")
  counts = sources.pack_image_folder(cifar_dir, out,
                                     {"train": 3, "test": 3}, seed=0)
  assert counts == {"test": 30, "train": 30}
  with np.load(out, allow_pickle=False) as npz:
    data, offsets = npz["test.data"].tobytes(), npz["test.offsets"]
  ds = sources.load_split(f"packed:{out}", "test")
  assert ds.classes == CIFAR_CLASSES and ds.images.shape == (30, 32, 32, 3)
  assert collections.Counter(ds.labels.tolist()) == {k: 3 for k in range(10)}
  for i, label in enumerate(ds.labels):
    blob = data[offsets[i]:offsets[i + 1]]
    class_dir = os.path.join(cifar_dir, "test", CIFAR_CLASSES[label])
    # The stored bytes are one of that class's files, byte for byte...
    same_size = [e.path for e in os.scandir(class_dir)
                 if e.stat().st_size == len(blob)]
    assert any(open(p, "rb").read() == blob for p in same_size)
    # ...and decode to what PIL gives for that file.
    np.testing.assert_array_equal(
        ds.images[i], np.asarray(Image.open(io.BytesIO(blob)).convert("RGB")))


def test_tfds_name_without_tfds_installed(monkeypatch):
  monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)
  with pytest.raises(ConfigError, match="config.dataset.*tensorflow-datasets"):
    sources.load_split("cifar10", "train")


def test_bad_image_size(folder):
  with pytest.raises(ConfigError, match="config.data_image_size"):
    sources.load_split(f"image_folder:{folder}", "train", image_size=0)


def test_tfds_mock_cifar10():
  tfds = pytest.importorskip("tensorflow_datasets")
  with tfds.testing.mock_data(num_examples=7):
    ds = sources.load_split("cifar10", "train")
    small = sources.load_split("cifar10", "test", image_size=16)
  assert ds.images.shape == (7, 32, 32, 3) and ds.images.dtype == np.uint8
  assert ds.labels.dtype == np.int32 and len(ds.classes) == 10
  assert ((ds.labels >= 0) & (ds.labels < 10)).all()
  assert small.images.shape == (7, 16, 16, 3)
  with pytest.raises(ConfigError, match="config.dataset"):
    sources.load_split("no_such_dataset_xyz", "train")
