"""Tests for ssl_jax.data.augment (tiny images, CPU)."""
import colorsys
import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssl_jax.data import augment, color, crops
from ssl_jax.data.augment import View
from ssl_jax.errors import ConfigError

pytestmark = pytest.mark.usefixtures("fast_compiles")   # tiny programs: compiles dominate

# Views that switch off everything except what a test looks at.
PLAIN = dict(color_prob=0.0, gray_prob=0.0, blur_prob=0.0, solarize_prob=0.0)
IDENTITY_CROP = dict(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip=False)


def _images(n, h, w, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


@functools.partial(jax.jit, static_argnames=("view",))
def _view_jit(key, image, view):
  return augment.augment_view(key, image, view)


@functools.partial(jax.jit, static_argnames=("view",))
def _photo_many(keys, x, view):
  return jax.vmap(lambda k: augment.photometric(k, x, view))(keys)


_batch_jit = jax.jit(augment.augment_batch, static_argnames=("view", "dtype"))


def test_identity_crop_reproduces_image():
  image = _images(1, 16, 16)[0]
  out = augment.augment_view(jax.random.key(3), image, View(16, **IDENTITY_CROP, **PLAIN))
  assert out.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(out), image.astype(np.float32) / 255.0,
                             rtol=0, atol=1e-7)


def test_identity_crop_of_float_image():
  x = np.random.default_rng(1).uniform(size=(8, 8, 3)).astype(np.float32)
  out = augment.crop_and_flip(jax.random.key(0), x, View(8, **IDENTITY_CROP))
  np.testing.assert_allclose(np.asarray(out), x, rtol=0, atol=1e-7)


def test_flip_reverses_columns_exactly():
  image = _images(1, 12, 12)[0]
  x = image.astype(np.float32) / 255.0
  view = View(12, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip=True, **PLAIN)
  flipped = 0
  for i in range(16):
    out = np.asarray(_view_jit(jax.random.key(i), image, view))
    if np.allclose(out, x[:, ::-1], rtol=0, atol=1e-6):  # 1 ulp: XLA may fold the /255
      flipped += 1
    else:
      np.testing.assert_allclose(out, x, rtol=0, atol=1e-6)
  assert 0 < flipped < 16  # both outcomes occur with p = 0.5


def test_nonsquare_fallback_is_central_square():
  # A square crop cannot cover a 10x20 image, so the fallback is the centre 10x10.
  image = _images(1, 10, 20)[0]
  out = augment.crop_and_flip(jax.random.key(0), image, View(10, **IDENTITY_CROP))
  np.testing.assert_allclose(np.asarray(out), image[:, 5:15] / 255.0, atol=1e-6)


@pytest.mark.parametrize("view, shape, dtype", [
    (View(16), (20, 30), jnp.float32),
    (View.simclr(12, strength=0.5, blur_prob=0.0, crop_scale=(0.2, 1.0)), (32, 24),
     jnp.bfloat16),
    (View(20, blur_prob=1.0, solarize_prob=0.2, brightness=0.4, contrast=0.4, saturation=0.2,
          hue=0.1, brightness_impl="multiplicative"), (16, 16), jnp.bfloat16),  # upsampling
])
def test_shapes_dtypes_ranges(view, shape, dtype):
  images = _images(4, *shape)
  out = _batch_jit(jax.random.key(0), images, jnp.arange(4), view, dtype)
  assert out.shape == (4, view.size, view.size, 3)
  assert out.dtype == dtype
  out = np.asarray(out.astype(jnp.float32))
  assert np.all(np.isfinite(out))
  assert out.min() >= 0.0 and out.max() <= 1.0


# The tests below share one compiled program (same view, shapes and dtype): XLA
# compiles are the slow part on CPU.
SHARED = View.simclr(32, solarize_prob=0.5)


def _shared(key, images, ids):
  return np.asarray(_batch_jit(key, images, jnp.asarray(ids, jnp.int32), SHARED, jnp.float32))


def test_jit_augment_batch_16x32():
  images = _images(16, 32, 32)
  out = _batch_jit(jax.random.key(0), images, jnp.arange(16, dtype=jnp.int32), SHARED,
                   jnp.float32)
  assert out.shape == (16, 32, 32, 3) and out.dtype == jnp.float32
  out = np.asarray(out)
  assert out.min() >= 0.0 and out.max() <= 1.0
  assert out.std() > 0.05  # not collapsed


def test_deterministic_for_a_key():
  images, ids = _images(16, 32, 32), np.arange(16)
  a = _shared(jax.random.key(7), images, ids)
  np.testing.assert_array_equal(a, _shared(jax.random.key(7), images, ids))
  assert not np.allclose(a, _shared(jax.random.key(8), images, ids))


def test_different_ids_give_different_outputs():
  images = _images(16, 32, 32)
  images[1] = images[0]
  out = _shared(jax.random.key(0), images, np.arange(16))
  assert not np.allclose(out[0], out[1])


def test_batch_equals_per_example_with_fold_in_keys():
  images = _images(16, 32, 32, seed=1)
  ids = np.arange(16) * 7 + 3
  key = jax.random.key(11)
  batch = _shared(key, images, ids)
  for i in range(4):
    single = _view_jit(jax.random.fold_in(key, ids[i]), images[i], SHARED)
    np.testing.assert_allclose(batch[i], np.asarray(single), atol=1e-5)
  # Reordering the batch (as a different split over devices would) changes nothing.
  perm = np.random.default_rng(0).permutation(16)
  moved = _shared(key, images[perm], ids[perm])
  np.testing.assert_allclose(moved, batch[perm], atol=1e-5)


def test_photometric_batch_uses_fold_in_keys():
  images = _images(3, 8, 8)
  ids = jnp.array([3, 1, 4])
  view = View(8, color_prob=1.0, gray_prob=0.5, solarize_prob=0.5)
  key = jax.random.key(2)
  # uint8 in, fused with the /255 under jit: once caught a hue branch bug.
  out = jax.jit(augment.photometric_batch, static_argnames=("view", "dtype"))(
      key, images, ids, view, jnp.float32)
  assert out.dtype == jnp.float32 and out.shape == (3, 8, 8, 3)
  single = jax.jit(augment.photometric, static_argnames=("view",))
  for i in range(3):
    want = single(jax.random.fold_in(key, ids[i]), images[i] / 255.0, view)
    np.testing.assert_allclose(np.asarray(out[i]), np.asarray(want), atol=1e-5)


def test_zero_strength_jitter_is_identity():
  x = np.random.default_rng(0).uniform(size=(8, 8, 3)).astype(np.float32)
  for impl in ("additive", "multiplicative"):
    view = View(8, color_prob=1.0, brightness=0.0, contrast=0.0, saturation=0.0,
                hue=0.0, brightness_impl=impl, gray_prob=0.0, blur_prob=0.0)
    out = _photo_many(jax.random.split(jax.random.key(0), 4), x, view)
    np.testing.assert_allclose(np.asarray(out), np.broadcast_to(x, out.shape), atol=1e-6)


def test_hue_only_jitter_keeps_max_and_min_channel():
  x = np.random.default_rng(0).uniform(size=(8, 8, 3)).astype(np.float32)
  view = View(8, color_prob=1.0, brightness=0.0, contrast=0.0, saturation=0.0,
              hue=0.3, **{k: 0.0 for k in ("gray_prob", "blur_prob")})
  out = np.asarray(_photo_many(jax.random.split(jax.random.key(0), 4), x, view))
  np.testing.assert_allclose(out.max(-1), np.broadcast_to(x.max(-1), out.shape[:-1]), atol=1e-5)
  np.testing.assert_allclose(out.min(-1), np.broadcast_to(x.min(-1), out.shape[:-1]), atol=1e-5)
  assert not np.allclose(out[0], x)


def test_rgb_hsv_round_trip_and_reference():
  x = np.random.default_rng(0).uniform(size=(64, 3)).astype(np.float32)
  x[:4] = [[1, 0, 0], [0, 1, 0], [0, 0, 1], [0.5, 0.5, 0.5]]
  hsv = np.asarray(color.rgb_to_hsv(jnp.asarray(x)))
  want = np.array([colorsys.rgb_to_hsv(*p) for p in x.astype(np.float64)])
  np.testing.assert_allclose(hsv, want, atol=1e-5)
  np.testing.assert_allclose(hsv[:4], [[0, 1, 1], [1 / 3, 1, 1], [2 / 3, 1, 1], [0, 0, 0.5]],
                             atol=1e-6)
  np.testing.assert_allclose(np.asarray(color.hsv_to_rgb(jnp.asarray(hsv))), x, atol=1e-5)


def test_grayscale_uses_luma():
  x = np.random.default_rng(0).uniform(size=(8, 8, 3)).astype(np.float32)
  view = View(8, color_prob=0.0, gray_prob=1.0, blur_prob=0.0)
  out = np.asarray(augment.photometric(jax.random.key(0), x, view))
  luma = 0.2989 * x[..., 0] + 0.5870 * x[..., 1] + 0.1140 * x[..., 2]
  for c in range(3):
    np.testing.assert_allclose(out[..., c], luma, atol=1e-6)


def test_gaussian_kernel_matrix():
  k = np.asarray(augment.gaussian_kernel_matrix(32, 1.5, 3))
  np.testing.assert_allclose(k.sum(1)[3:-3], 1.0, atol=1e-6)  # interior rows
  assert k[0].sum() < 0.99  # zero (SAME) padding loses mass at the border
  np.testing.assert_allclose(k, k.T, atol=1e-7)
  assert np.count_nonzero(k[16]) == 7
  g = np.exp(-np.arange(-3, 4) ** 2 / (2 * 1.5 ** 2))
  np.testing.assert_allclose(k[16, 13:20], g / g.sum(), atol=1e-6)
  np.testing.assert_array_equal(np.asarray(augment.gaussian_kernel_matrix(8, 0.7, 0)), np.eye(8))


def test_blur_tap_rule():
  assert augment.blur_radius(224) == 11
  assert 2 * augment.blur_radius(224) + 1 == 23
  assert augment.blur_radius(32) == 1 and augment.blur_radius(16) == 0
  k = np.asarray(augment.gaussian_kernel_matrix(224, 1.0, augment.blur_radius(224)))
  assert np.count_nonzero(k[112]) == 23


def test_blur_identity_on_tiny_images():
  x = np.random.default_rng(0).uniform(size=(16, 16, 3)).astype(np.float32)
  out = augment.photometric(jax.random.key(0), x, View(16, color_prob=0.0, gray_prob=0.0,
                                                        blur_prob=1.0))
  np.testing.assert_array_equal(np.asarray(out), x)


def test_blur_spreads_a_delta():
  x = np.zeros((40, 40, 3), np.float32)  # radius 2 at 40 px
  x[20, 20] = 1.0
  out = np.asarray(augment.photometric(jax.random.key(0), x, View(40, color_prob=0.0,
                                                                  gray_prob=0.0, blur_prob=1.0)))
  np.testing.assert_allclose(out.sum((0, 1)), 1.0, atol=1e-5)
  assert out[20, 20, 0] < 1.0 and out[18, 18, 0] > 0 and out[17, 20, 0] == 0
  patch = out[17:24, 17:24]  # symmetric about (20, 20)
  np.testing.assert_allclose(patch, patch[::-1, ::-1], atol=1e-6)
  np.testing.assert_allclose(patch, patch.transpose(1, 0, 2), atol=1e-6)


def test_solarize_values():
  x = np.tile(np.array([0.0, 0.25, 0.5, 0.75, 1.0], np.float32)[:, None, None], (1, 5, 3))
  view = View(5, color_prob=0.0, gray_prob=0.0, blur_prob=0.0, solarize_prob=1.0)
  out = np.asarray(augment.photometric(jax.random.key(0), x, view))
  np.testing.assert_allclose(out[:, 0, 0], [0.0, 0.25, 0.5, 0.25, 0.0], atol=1e-7)


def test_brightness_additive_vs_multiplicative():
  x = jnp.full((4, 4, 3), 0.5, jnp.float32)  # contrast is the identity on a constant image
  views = [View(4, color_prob=1.0, brightness=0.4, contrast=0.4, saturation=0.0, hue=0.0,
                brightness_impl=impl, gray_prob=0.0, blur_prob=0.0)
           for impl in ("additive", "multiplicative")]

  @jax.jit
  def run(keys):
    return [jax.vmap(lambda k: augment.photometric(k, x, v))(keys) for v in views]

  outs = run(jax.random.split(jax.random.key(0), 512))
  # additive: 0.5 + U(-0.4, 0.4); multiplicative: 0.5 * U(0.6, 1.4).
  for out, (lo, hi) in zip(outs, [(0.1, 0.9), (0.3, 0.7)]):
    out = np.asarray(out)
    values = out[:, 0, 0, 0]
    np.testing.assert_allclose(out, values[:, None, None, None] * np.ones_like(out), atol=1e-6)
    assert values.min() >= lo - 1e-6 and values.max() <= hi + 1e-6
    assert values.min() < lo + 0.02 and values.max() > hi - 0.02  # covers the range


def test_crop_box_area_and_ratio():
  ratio = (3 / 4, 4 / 3)
  cases = [((32, 32), (0.08, 1.0)), ((30, 48), (0.2, 0.6))]

  @jax.jit
  def boxes(keys):
    return [jax.vmap(lambda k: crops.sample_crop_box(
        k, *hw, View(8, crop_scale=scale, crop_ratio=ratio)))(keys) for hw, scale in cases]

  for ((h, w), scale), box in zip(cases, boxes(jax.random.split(jax.random.key(0), 2000))):
    top, left, bh, bw = map(np.asarray, box)
    frac = bh * bw / (h * w)
    assert frac.min() >= scale[0] - 1e-5 and frac.max() <= scale[1] + 1e-5
    assert frac.min() < scale[0] + 0.02 and frac.max() > scale[1] - 0.05
    aspect = bw / bh
    assert aspect.min() >= ratio[0] - 1e-5 and aspect.max() <= ratio[1] + 1e-5
    assert top.min() >= 0 and left.min() >= 0
    assert np.all(top + bh <= h + 1e-4) and np.all(left + bw <= w + 1e-4)


def test_simclr_view_and_validation():
  v = View.simclr(32, strength=0.5, blur_prob=0.0)
  assert (v.brightness, v.contrast, v.saturation, v.hue) == (0.4, 0.4, 0.4, 0.1)
  assert v.blur_prob == 0.0 and v.size == 32
  assert hash(View(8, crop_scale=[0.2, 1.0])) == hash(View(8, crop_scale=(0.2, 1.0)))
  with pytest.raises(ConfigError):
    View(8, brightness_impl="gamma")
  with pytest.raises(ConfigError):
    View(8, gray_prob=1.5)




# ------------------------------------------- colour semantics against PIL and tf.image

def _cifar_images(count=4):
  """A few real CIFAR-10 images (uint8), decoded from the bundled quickstart file."""
  import io   # pylint: disable=import-outside-toplevel
  from PIL import Image   # pylint: disable=import-outside-toplevel
  data = np.load(augment.__file__.replace("augment.py", "quickstart_cifar10.npz"))
  raw, offsets = data["train.data"], data["train.offsets"]
  return np.stack([np.asarray(Image.open(io.BytesIO(raw[offsets[i]:offsets[i + 1]].tobytes()))
                              .convert("RGB")) for i in range(count)])


LEVEL = 1 / 255 + 1e-5   # one grey level


@pytest.mark.parametrize("op, enhance", [
    (color.brightness_multiplicative, "Brightness"), (color.contrast_torchvision, "Contrast"),
    (color.saturation_torchvision, "Color")])
def test_torchvision_ops_match_pillow_on_cifar(op, enhance):
  from PIL import Image, ImageEnhance   # pylint: disable=import-outside-toplevel
  images = _cifar_images()
  batched = jax.jit(jax.vmap(op, in_axes=(0, None)))
  for factor in (0.6, 1.0, 1.7):
    ours = np.asarray(batched(images / np.float32(255), factor))
    want = np.stack([np.asarray(getattr(ImageEnhance, enhance)(Image.fromarray(im))
                                .enhance(factor)) for im in images]) / 255.0
    np.testing.assert_allclose(ours, want, rtol=0, atol=LEVEL)


def test_the_two_saturation_ops_differ_on_real_images():
  # HSV scaling (tf) vs a blend with luma (PIL): apart by more than the op's own effect.
  x = jnp.asarray(_cifar_images() / np.float32(255))
  tf_like, torch_like = color.saturation_tf(x, 1.8), color.saturation_torchvision(x, 1.8)
  assert np.abs(np.asarray(tf_like - torch_like)).max() > 10 / 255


def test_torchvision_grayscale_is_pillow_l():
  from PIL import Image   # pylint: disable=import-outside-toplevel
  images = _cifar_images()
  view = View(32, color_prob=0.0, gray_prob=1.0, blur_prob=0.0, color_impl="torchvision")
  out = np.asarray(jax.vmap(lambda x: augment.photometric(jax.random.key(0), x, view))(
      images / np.float32(255)))
  want = np.stack([np.asarray(Image.fromarray(im).convert("L")) for im in images]) / 255.0
  np.testing.assert_allclose(out, np.repeat(want[..., None], 3, -1), rtol=0, atol=1e-6)


def test_tf_ops_match_tf_image_on_cifar():
  tf = pytest.importorskip("tensorflow")
  x = _cifar_images() / np.float32(255)
  cases = [(color.brightness_additive, tf.image.adjust_brightness, 0.3),
           (color.contrast_tf, tf.image.adjust_contrast, 1.6),
           (color.saturation_tf, tf.image.adjust_saturation, 1.8),
           (color.hue_shift, tf.image.adjust_hue, 0.15)]
  for ours, theirs, factor in cases:
    got = np.asarray(jax.jit(jax.vmap(ours, in_axes=(0, None)))(x, factor))
    want = np.clip(np.stack([theirs(im, factor).numpy() for im in x]), 0, 1)
    np.testing.assert_allclose(got, want, rtol=0, atol=LEVEL)


def test_color_impl_picks_the_ops():
  # Only contrast, at a fixed factor: the view's output is that family's op.
  x = jnp.asarray(_cifar_images(1)[0] / np.float32(255))
  outs = {}
  for impl in color.COLOR_IMPLS:
    view = View(32, color_prob=1.0, brightness=0.0, contrast=0.5, saturation=0.0, hue=0.0,
                gray_prob=0.0, blur_prob=0.0, color_impl=impl)
    outs[impl] = np.asarray(color.color_jitter(jax.random.key(0), x, view))
  k_c = jax.random.split(jax.random.key(0), 5)[2]
  factor = jax.random.uniform(k_c, (), jnp.float32, 0.5, 1.5)
  np.testing.assert_allclose(outs["tf"], color.contrast_tf(x, factor), atol=1e-6)
  np.testing.assert_allclose(outs["torchvision"], color.contrast_torchvision(x, factor),
                             atol=1e-6)


# ------------------------------------------------------------------------ resize

@pytest.mark.parametrize("box, out", [((3, 5, 20, 26), 8), ((4, 2, 9, 7), 16)])  # shrink, grow
def test_resize_matrices_match_jax_image_resize(box, out):
  x = np.random.default_rng(0).uniform(size=(32, 32, 3)).astype(np.float32)
  top, left, h, w = box
  crop = x[top:top + h, left:left + w]
  for method, jax_method in (("bilinear", "linear"), ("bicubic", "cubic")):
    for antialias in (False, True):
      wy = crops.interp_matrix(top, h, 32, out, method, antialias)
      wx = crops.interp_matrix(left, w, 32, out, method, antialias)
      ours = np.einsum("oh,hwc,pw->opc", wy, x, wx)
      want = jax.image.resize(crop, (out, out, 3), jax_method, antialias=antialias)
      np.testing.assert_allclose(ours, want, atol=1e-5, err_msg=f"{method} {antialias}")


def test_resize_matrices_match_tf_image_resize_and_keep_identity():
  tf = pytest.importorskip("tensorflow")
  x = np.random.default_rng(1).uniform(size=(32, 32, 3)).astype(np.float32)
  for (top, left, h, w, out), method, antialias in itertools.product(
      ((3, 5, 20, 26, 8), (4, 2, 9, 7, 16)), crops.RESIZE_METHODS, (False, True)):
    wy = crops.interp_matrix(top, h, 32, out, method, antialias)
    wx = crops.interp_matrix(left, w, 32, out, method, antialias)
    want = tf.image.resize(x[top:top + h, left:left + w], (out, out), method,
                           antialias=antialias).numpy()
    np.testing.assert_allclose(np.einsum("oh,hwc,pw->opc", wy, x, wx), want, atol=1e-5)
  for method in crops.RESIZE_METHODS:
    for antialias in (False, True):
      np.testing.assert_array_equal(crops.interp_matrix(0, 12, 12, 12, method, antialias),
                                    np.eye(12))


# ------------------------------------------------------ blur sigma, config choices

def test_blur_sigma_per_batch_or_per_image():
  images = np.zeros((8, 40, 40, 3), np.uint8)   # radius 2 at 40 px
  images[:, 20, 20] = 255
  outs = {}
  for per_batch in (False, True):
    view = View(40, color_prob=0.0, gray_prob=0.0, blur_prob=1.0, blur_per_batch=per_batch)
    outs[per_batch] = np.asarray(augment.photometric_batch(jax.random.key(0), images,
                                                           jnp.arange(8), view))
  centre = {k: v[:, 20, 20, 0] for k, v in outs.items()}
  assert np.ptp(centre[True]) < 1e-6 and np.ptp(centre[False]) > 1e-3


def test_augment_semantics_are_validated():
  from ssl_jax import config as config_lib   # pylint: disable=import-outside-toplevel
  for name, bad in (("color_impl", "pil"), ("crop_sampler", "inception"),
                    ("resize_method", "lanczos")):
    c = config_lib.base_config()
    c.augment[name] = bad
    with pytest.raises(ConfigError, match=f"config.augment.{name}="):
      config_lib.validate(c)
    with pytest.raises(ConfigError, match=f"View.{name}="):
      View(8, **{name: bad})


@pytest.mark.parametrize("config_name, want", [
    ("simclr_v1", dict(color_impl="tf", crop_sampler="tf", resize_method="bicubic",
                       antialias=False, blur_per_batch=True)),
    ("simclr_v2:cifar10_orig", dict(color_impl="tf", crop_sampler="tf", blur_per_batch=True)),
    ("simclr_v2:cifar10", dict(color_impl="torchvision", crop_sampler="torchvision")),
    ("byol", dict(color_impl="tf", crop_sampler="byol", resize_method="bicubic",
                  antialias=False, blur_per_batch=False)),
    ("moco_v2", dict(color_impl="torchvision", crop_sampler="torchvision", antialias=True,
                     resize_method="bilinear", blur_per_batch=False)),
    ("dino", dict(color_impl="torchvision", resize_method="bicubic", antialias=True)),
    ("swav", dict(color_impl="torchvision", antialias=True)),
    ("instdisc:cifar10", dict(color_impl="torchvision", flip=False)),
    ("cmc", dict(crop_scale=(0.08, 1.0), antialias=True)),
])
def test_each_method_views_use_its_originals_semantics(config_name, want):
  import importlib   # pylint: disable=import-outside-toplevel
  from ssl_jax import methods   # pylint: disable=import-outside-toplevel
  name, _, variant = config_name.partition(":")
  config = importlib.import_module(f"configs.{name}").get_config(variant or None)
  for view in methods.get(config.method).views(config):
    assert {k: getattr(view, k) for k in want} == want
