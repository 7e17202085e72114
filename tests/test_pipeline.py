"""The tf.data pipeline: sources, views, determinism, resumption, bad files, sharding."""
import json
import os

import jax
import numpy as np
import pytest
from PIL import Image

from ssl_jax import config as config_lib, parallel
from ssl_jax.data import augment, crops, pipeline, sources, tf_sources
from ssl_jax.data.augment import View
from ssl_jax.errors import ConfigError
from ssl_jax.evaluate import knn, linear, protocols, workdir as workdir_lib
from test_main import run_cli

CIFAR_DIR = os.environ.get("SSL_JAX_CIFAR10_DIR", "/work/shared/datasets/cifar10")
pytestmark = pytest.mark.usefixtures("fast_compiles")   # tiny jitted functions only
MULTI_CROP = [View(size=16), View(size=16), View(size=8, crop_scale=(0.05, 0.4))]


def write_folder(root, per_class, split="train", sizes=((24, 32), (40, 28), (33, 33))):
  """<root>/<split>/{a,b}/ with JPEGs and PNGs of several sizes; returns the file count."""
  rng = np.random.default_rng(0)
  for label in ("a", "b"):
    os.makedirs(root / split / label, exist_ok=True)
    for i in range(per_class):
      h, w = sizes[i % len(sizes)]
      image = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
      image.save(root / split / label / f"{i}.{'png' if i % 2 else 'jpg'}")
  return 2 * per_class


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  """24 + 8 good images, and in train one garbage and one truncated file."""
  root = tmp_path_factory.mktemp("folder")
  write_folder(root, 12)
  write_folder(root, 4, split="test")
  (root / "train" / "a" / "garbage.jpg").write_bytes(b"not an image")
  good = (root / "train" / "b" / "0.jpg").read_bytes()
  (root / "train" / "b" / "truncated.jpg").write_bytes(good[:len(good) // 3])
  return root


@pytest.fixture(scope="module")
def mesh():
  return parallel.make_mesh()


def loader(root, views=MULTI_CROP, batch=8, seed=0, mesh=None, process=(0, 1)):
  source = tf_sources.open_source(f"image_folder:{root}", "train", None, *process)
  return pipeline.TFDataLoader(source, views, batch, seed, mesh, process_count=process[1])


def take(data, start, count):
  batches = data.host_batches(start)
  return [next(batches) for _ in range(count)]


def test_every_view_has_its_shape_dtype_and_range(folder, mesh):
  data = loader(folder, mesh=mesh)
  assert data.steps_per_epoch == 26 // 8
  batch = data.host_batch(0)
  assert sorted(batch) == ["index", "label", "view0", "view1", "view2"]
  for i, view in enumerate(MULTI_CROP):
    x = batch[f"view{i}"]
    assert x.shape == (8, view.size, view.size, 3) and x.dtype == np.uint8
    assert 40 < x.mean() < 215 and x.std() > 20   # real pixels, not a blank fallback
  assert batch["index"].dtype == np.int32 and set(batch["label"]) <= {0, 1}
  assert ((batch["index"] >= 0) & (batch["index"] < 26)).all()
  assert not np.array_equal(batch["view0"], batch["view1"])   # independent crops


def test_same_seed_same_batches_and_resume_mid_epoch(folder, mesh):
  stream = take(loader(folder, mesh=mesh), 0, 5)   # crosses the epoch boundary at step 3
  again = take(loader(folder, mesh=mesh), 0, 2)
  resumed = take(loader(folder, mesh=mesh), 1, 4)   # a fresh loader, as after a restart
  for a, b in zip(stream, again + [None]):
    if b is not None:
      assert all(np.array_equal(a[k], b[k]) for k in a)
  for a, b in zip(stream[1:], resumed):
    assert all(np.array_equal(a[k], b[k]) for k in a)
  other = loader(folder, seed=1, mesh=mesh).host_batch(0)
  assert not np.array_equal(other["index"], stream[0]["index"])
  epoch0 = np.concatenate([b["index"] for b in stream[:3]])
  assert len(set(epoch0.tolist())) >= 22   # a permutation (bad files replaced by neighbours)
  assert not np.array_equal(epoch0, np.concatenate([b["index"] for b in stream[3:5]])[:24])


def test_corrupt_files_are_skipped_and_counted(folder, mesh):
  data = loader(folder, views=[View(size=8)], batch=13, mesh=mesh)
  paths = data.source.paths
  bad = {i for i, p in enumerate(paths) if "garbage" in p or "truncated" in p}
  seen = np.concatenate([b["index"] for b in take(data, 0, 2)])   # one whole epoch
  assert len(seen) == 26 and not bad & set(seen.tolist())
  assert data.skipped == 2 and data.bad_files == bad
  names = sorted(str(folder / "train" / n) for n in ("a/garbage.jpg", "b/truncated.jpg"))
  assert data.skipped_files == names
  split = pipeline.EvalSplit(data.source, 16, batch_size=10)
  images = np.concatenate(list(split.images))
  assert images.shape == (24, 16, 16, 3) and split.skipped == 2
  assert split.skipped_files == names == list(sources.load_split(
      f"image_folder:{folder}", "train", image_size=16).skipped_files)   # as in memory
  np.testing.assert_array_equal(split.labels, np.repeat([0, 1], 12))


def test_missing_or_empty_folder_is_a_one_line_error(tmp_path):
  with pytest.raises(ConfigError, match="config.dataset") as e:
    tf_sources.open_source(f"image_folder:{tmp_path / 'nowhere'}", "train")
  assert "\n" not in str(e.value)
  (tmp_path / "train" / "a").mkdir(parents=True)
  with pytest.raises(ConfigError, match="no image files"):
    tf_sources.open_source(f"image_folder:{tmp_path}", "train")


def test_two_processes_read_disjoint_shards_that_cover_the_data(tmp_path, mesh):
  n = write_folder(tmp_path, 16)
  per_process = []
  for process in range(2):
    data = loader(tmp_path, views=[View(size=8)], batch=8, mesh=mesh, process=(process, 2))
    assert data.local_batch == 4 and data.steps_per_epoch == 4
    per_process.append(np.concatenate([b["index"] for b in take(data, 0, 4)]))
  a, b = per_process
  assert not set(a.tolist()) & set(b.tolist())
  np.testing.assert_array_equal(np.sort(np.concatenate([a, b])), np.arange(n))


def test_tfds_source_on_mock_data(mesh):
  tfds = pytest.importorskip("tensorflow_datasets")
  with tfds.testing.mock_data(num_examples=20):
    source = tf_sources.open_source("cifar10", "train")
    assert source.total == 20 and len(source.classes) == 10
    data = pipeline.TFDataLoader(source, MULTI_CROP[1:], 8, 0, mesh)
    first = take(data, 0, 3)
    resumed = data.host_batch(2)   # across the epoch boundary of 2 steps
    test = pipeline.EvalSplit(tf_sources.open_source("cifar10", "test"), 32, 16)
    images = np.concatenate(list(test.images))
  assert first[0]["view0"].shape == (8, 16, 16, 3) and first[0]["view1"].shape == (8, 8, 8, 3)
  assert set(first[0]["label"]) <= set(range(10))
  assert len(set(np.concatenate([b["index"] for b in first[:2]]).tolist())) == 16
  assert all(np.array_equal(first[2][k], resumed[k]) for k in resumed)
  assert images.shape == (20, 32, 32, 3) and len(test.labels) == 20 and test.skipped == 0


@pytest.mark.skipif(not os.path.isdir(CIFAR_DIR), reason=f"no CIFAR-10 folder at {CIFAR_DIR}")
def test_cifar_folder_decodes_and_crops(mesh):
  source = tf_sources.open_source(f"image_folder:{CIFAR_DIR}", "test")
  assert source.total == 10_000 and source.classes[0] == "airplane"
  split = pipeline.EvalSplit(source, 32, batch_size=8)
  sample = split.sample(8, seed=0)   # a slice of 8 files, read in file order
  keep = np.sort(np.random.default_rng(0).permutation(source.total)[:8])
  expected = [np.asarray(Image.open(source.paths[i]).convert("RGB")) for i in keep]
  # JPEG decoders may round their IDCT differently (TF's fast one vs PIL's): a few levels.
  diff = np.abs(sample.images.astype(int) - np.stack(expected))
  assert diff.mean() < 1.5 and diff.max() <= 8
  np.testing.assert_array_equal(sample.labels, source.labels[keep])
  batch = pipeline.TFDataLoader(source, [View(size=32)] * 2, 16, 0, mesh).host_batch(7)
  assert batch["view0"].shape == (16, 32, 32, 3)
  np.testing.assert_array_equal(batch["label"], source.labels[batch["index"]])


def coordinate_image(side=64):
  """R encodes the column, G the row, so a crop's pixels tell where it came from."""
  ramp = np.arange(side) * (255 // (side - 1))
  image = np.zeros((side, side, 3), np.uint8)
  image[..., 0], image[..., 1] = ramp[None, :], ramp[:, None]
  return image


def crop_statistics(crops):
  """Per crop: area fraction, log aspect (w/h) and flipped (R decreasing along x)."""
  crops = crops.astype(np.float32) / 252.0
  width = crops[:, :, -1, 0] - crops[:, :, 0, 0]
  height = crops[:, -1, :, 1] - crops[:, 0, :, 1]
  w, h = np.abs(width).mean(axis=1), height.mean(axis=1)
  return w * h, np.log(w / h), (width.mean(axis=1) < 0).astype(np.float32)


def test_tfdata_and_in_memory_crops_are_statistically_equivalent():
  tf = tf_sources.tf()
  view, n = View(size=16), 256
  image = coordinate_image()
  host = tf.data.Dataset.range(n).map(
      lambda i: pipeline.crop_views(tf.constant(image), tf.stack([i, i]), [view])[0])
  host = np.stack(list(host.batch(n).as_numpy_iterator())[0])
  keys = jax.random.split(jax.random.key(0), n)
  device = jax.vmap(lambda k: augment.crop_and_flip(k, image, view))(keys)
  device = np.asarray(device * 255.0)
  for a, b in zip(crop_statistics(host), crop_statistics(device)):
    standard_error = np.sqrt((a.var() + b.var()) / n)
    assert abs(a.mean() - b.mean()) < 4 * standard_error
    assert abs(a.std() - b.std()) < 0.15 * b.std() + 0.01
  area, _, flipped = crop_statistics(host)
  assert area.min() > 0.05 and area.max() < 1.0 and abs(flipped.mean() - 0.5) < 0.1
  assert abs(host.mean() - device.mean()) < 4.0


def test_make_views_applies_photometric_ops_to_host_crops(mesh):
  plain = View(size=8, color_prob=0.0, gray_prob=1.0, blur_prob=0.0)
  crops = np.random.default_rng(0).integers(0, 256, (16, 8, 8, 3), dtype=np.uint8)
  batch = {"view0": crops, "index": np.arange(16, dtype=np.int32)}
  fn = jax.shard_map(lambda b: augment.make_views(b, jax.random.key(0), [plain], np.float32)[0],
                     mesh=mesh, in_specs=(jax.sharding.PartitionSpec(parallel.AXIS),),
                     out_specs=jax.sharding.PartitionSpec(parallel.AXIS))
  out = np.asarray(fn(batch))
  gray = (crops / 255.0) @ np.array([0.2989, 0.5870, 0.1140])
  np.testing.assert_allclose(out, np.repeat(gray[..., None], 3, -1), atol=1e-5)


def test_extract_features_takes_arrays_or_batches(mesh):
  images = np.random.default_rng(0).integers(0, 256, (20, 8, 8, 3), dtype=np.uint8)
  encode = lambda v, x: x.reshape(x.shape[0], -1) * v   # pylint: disable=unnecessary-lambda-assignment
  whole = knn.extract_features(encode, 2.0, images, mesh, batch_size=16, image_size=8)
  parts = knn.extract_features(encode, 2.0, iter([images[:7], images[7:]]), mesh,
                               batch_size=16, image_size=8)
  np.testing.assert_allclose(whole, parts, atol=1e-6)


def test_input_pipeline_field_is_validated_and_resolved():
  c = config_lib.base_config()
  c.input_pipeline = "fast"
  with pytest.raises(ConfigError, match="config.input_pipeline='fast' is unknown"):
    config_lib.validate(c)
  c.input_pipeline = "tfdata"
  with pytest.raises(ConfigError, match="cannot read config.dataset='quickstart'"):
    config_lib.validate(c)
  c.input_pipeline = "auto"
  assert not pipeline.use_tfdata(c)
  c.dataset = "image_folder:/data"
  assert pipeline.use_tfdata(c)
  c.input_pipeline = "memory"
  assert not pipeline.use_tfdata(c)


def test_both_input_paths_refuse_crops_larger_than_the_images(tmp_path, mesh):
  write_folder(tmp_path, 2, sizes=((32, 32),))
  write_folder(tmp_path, 2, split="test", sizes=((32, 32),))
  c = config_lib.base_config()
  c.update(dataset=f"image_folder:{tmp_path}", image_size=64, batch_size=2)
  with pytest.raises(ConfigError) as memory:
    sources.load_splits(c)
  with pytest.raises(ConfigError) as streamed:
    pipeline.load(c, [View(size=64)], mesh)
  assert str(streamed.value) == str(memory.value) == (
      f"config.image_size=64 is larger than the 32x32 images of image_folder:{tmp_path}; "
      "use config.image_size <= 32")
  c.image_size = 32
  assert len(pipeline.load(c, [View(size=32)], mesh)[0]) == 4


def test_cli_trains_through_tfdata_on_an_image_folder(folder, tmp_path):
  workdir = tmp_path / "run"
  proc = run_cli("--config=configs/simclr_v2.py:smoke", f"--workdir={workdir}",
                 f"--config.dataset=image_folder:{folder}", "--config.batch_size=8",
                 "--config.eval.plots=False", "--config.eval.random_init=False")
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert [l["step"] for l in lines[:3]] == [1, 2, 3] and all(l["loss"] > 0 for l in lines[:3])
  result = json.loads((workdir / "eval.json").read_text())
  in_memory = sources.load_split(f"image_folder:{folder}", "train", image_size=16)
  assert result["skipped_files"] == in_memory.skipped == 2
  assert result["train_images"] == len(in_memory) == 24   # the decodable ones, on both paths
  listed = (workdir / "skipped_files.txt").read_text().splitlines()
  assert listed == list(in_memory.skipped_files) and "skipped_files.txt" in proc.stdout
  assert 0.0 < result["knn_top1"] <= 1.0
  # The evaluation CLI streams the same splits (nothing of a large data set in memory).
  run = workdir_lib.load_run(str(workdir))
  assert isinstance(run.train, pipeline.EvalSplit) and isinstance(run.test, pipeline.EvalSplit)
  knn_result = protocols.evaluate(str(workdir), "knn")
  assert knn_result["top1"] == pytest.approx(result["knn_top1"], abs=1e-6)
  probe = protocols.evaluate(str(workdir), "linear", linear.Settings(epochs=3))
  assert 0.0 <= probe["top1"] <= 1.0 and probe["batch_size"] == 16
  exported = protocols.evaluate(str(workdir), "export")
  assert exported["shapes"] == {"train": [24, 32], "eval": [8, 32]}   # 2 bad files dropped
  assert (workdir / "plots" / "embedding_tsne.png").exists() is False
  assert protocols.evaluate(str(workdir), "plots")["files"][-1].endswith("embedding_tsne.png")


def _tf_reference_boxes(tf, height, width, n):
  """n boxes (top, left, h, w) from TensorFlow's own op, with SimCLR's arguments."""
  @tf.function
  def draw(seeds):
    def one(seed):
      begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
          [height, width, 3], tf.constant([[[0.0, 0.0, 1.0, 1.0]]]), seed,
          min_object_covered=0.1, aspect_ratio_range=(3 / 4, 4 / 3), area_range=(0.08, 1.0),
          max_attempts=100)
      return tf.concat([begin[:2], size[:2]], 0)
    return tf.map_fn(one, seeds, fn_output_signature=tf.int32)
  return draw(tf.stack([tf.zeros(n, tf.int64), tf.range(n, dtype=tf.int64)], 1)).numpy()


@pytest.mark.parametrize("height, width", [(32, 32), (30, 48)])
def test_tf_sampler_matches_sample_distorted_bounding_box_on_both_paths(height, width):
  tf, n = tf_sources.tf(), 10_000
  view = View(size=16, crop_sampler="tf")
  host = pipeline.crop_boxes(tf.constant([1, 2], tf.int64), height, width, [view] * n)[0]
  device = jax.jit(jax.vmap(lambda k: crops.sample_crop_box(k, height, width, view)))(
      jax.random.split(jax.random.key(0), n))
  reference = _tf_reference_boxes(tf, height, width, n).astype(np.float64)
  want_area = reference[:, 2] * reference[:, 3] / (height * width)
  want_aspect = np.log(reference[:, 3] / reference[:, 2])
  for boxes in (host.numpy(), np.stack([np.asarray(b) for b in device], 1)):
    np.testing.assert_array_equal(boxes, np.round(boxes))   # integer pixels on both paths
    assert np.all(boxes[:, 0] + boxes[:, 2] <= height)
    assert np.all(boxes[:, 1] + boxes[:, 3] <= width)
    area = boxes[:, 2] * boxes[:, 3] / (height * width)
    aspect = np.log(boxes[:, 3] / boxes[:, 2])
    for ours, want in ((area, want_area), (aspect, want_aspect)):
      standard_error = np.sqrt((ours.var() + want.var()) / n)
      assert abs(ours.mean() - want.mean()) < 4 * standard_error
      assert abs(ours.std() - want.std()) < 0.03 * want.std()
    for q in (0.1, 0.5, 0.9):
      assert abs(np.quantile(area, q) - np.quantile(want_area, q)) < 0.02
    assert area.min() >= 0.1 - 1e-6 and abs(area.min() - want_area.min()) < 0.01
  # Smaller crops than torchvision's rule on average (METHODS.md §6.3).
  torchvision = pipeline.crop_boxes(tf.constant([1, 2], tf.int64), height, width,
                                    [View(size=16)] * n)[0].numpy()
  assert (torchvision[:, 2] * torchvision[:, 3]).mean() > 1.05 * (want_area.mean() * height * width)


def test_byol_sampler_draws_once_and_clips_on_both_paths():
  tf, n, side = tf_sources.tf(), 4000, 32
  view = View(size=16, crop_sampler="byol")
  host = pipeline.crop_boxes(tf.constant([3, 4], tf.int64), side, side, [view] * n)[0].numpy()
  device = jax.jit(jax.vmap(lambda k: crops.sample_crop_box(k, side, side, view)))(
      jax.random.split(jax.random.key(1), n))
  device = np.stack([np.asarray(b) for b in device], 1)
  # BYOL's rule in numpy: area U(0.08, 1), log-uniform aspect, sides clipped to the image.
  rng = np.random.default_rng(0)
  area = side * side * rng.uniform(0.08, 1.0, n)
  aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3), n))
  want = np.minimum(np.sqrt(area * aspect), side) * np.minimum(np.sqrt(area / aspect), side)
  for boxes in (host, device):
    got = boxes[:, 2] * boxes[:, 3]
    assert abs(got.mean() - want.mean()) < 4 * np.sqrt((got.var() + want.var()) / n) + 0.5
    assert np.mean(boxes[:, 3] == side) > 0.02        # clipped, not retried
    assert np.all(boxes[:, 0] + boxes[:, 2] <= side)


@pytest.mark.parametrize("method, antialias", [("bicubic", False), ("bilinear", True)])
def test_host_crops_equal_device_resize_of_the_same_box(method, antialias):
  tf = tf_sources.tf()
  image = np.random.default_rng(0).integers(0, 256, (40, 36, 3), dtype=np.uint8)
  views = [View(size=16, crop_sampler="tf", flip=False, resize_method=method,
                antialias=antialias)] * 4
  seed = tf.constant([5, 6], tf.int64)
  boxes = pipeline.crop_boxes(seed, 40, 36, views)[0].numpy()
  host = pipeline.crop_views(tf.constant(image), seed, views)
  for (top, left, h, w), crop in zip(boxes, host):
    wy = crops.interp_matrix(top, h, 40, 16, method, antialias)
    wx = crops.interp_matrix(left, w, 36, 16, method, antialias)
    device = np.clip(np.einsum("oh,hwc,pw->opc", wy, image.astype(np.float32), wx), 0, 255)
    assert np.abs(device - crop.numpy()).max() <= 0.5 + 1e-3   # uint8 rounding only


def resize256_center224(image: np.ndarray) -> np.ndarray:
  """torchvision's Resize(256) + CenterCrop(224) with PIL, the originals' eval transform."""
  h, w = image.shape[:2]
  new_h, new_w = (256, int(256 * w / h)) if h <= w else (int(256 * h / w), 256)
  out = Image.fromarray(image).resize((new_w, new_h), Image.BILINEAR)
  top, left = int(round((new_h - 224) / 2)), int(round((new_w - 224) / 2))
  return np.asarray(out.crop((left, top, left + 224, top + 224)), np.float32)


def test_eval_view_is_resize_256_center_crop_224_on_both_paths():
  image = np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8)
  expected = resize256_center224(image)
  streamed = pipeline.center_view(image, 224, 0.875).numpy().astype(np.float32)
  in_memory = np.asarray(knn.preprocess(image[None], 224, 0.875))[0] * 255
  assert np.abs(streamed - expected).max() <= 1.0
  assert np.abs(in_memory - expected).max() <= 1.0 + 1e-3   # float vs PIL's uint8 rounding


def test_an_unlabelled_eval_split_is_one_line_error_on_both_paths(tmp_path):
  write_folder(tmp_path, 2, sizes=((8, 8),))
  os.makedirs(tmp_path / "test")
  Image.new("RGB", (8, 8)).save(tmp_path / "test" / "loose.png")   # no class folder: -1
  c = config_lib.base_config()
  c.update(dataset=f"image_folder:{tmp_path}", image_size=8)
  for load in (sources.load_splits, pipeline.eval_splits):
    with pytest.raises(ConfigError, match="eval_split='test'.*has no labels") as e:
      load(c)
    assert "\n" not in str(e.value)
