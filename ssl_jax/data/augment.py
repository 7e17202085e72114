"""On-device image augmentation in pure JAX (jit- and vmap-able, no TensorFlow).

Follows the SimCLR / BYOL TF pipelines (METHODS.md §6.3, §10.3): random resized
crop + flip, colour jitter in random order (p=color_prob), grayscale, Gaussian
blur with a kernel tied to the image size, solarize. Outputs stay in [0, 1]; no
mean/std normalisation here.

Random choices are made with `jnp.where` / `lax.switch` on traced values, so the
code vectorises under `vmap`. Python `if`s only look at the static `View`.
"""
import dataclasses
import math

import jax
import jax.numpy as jnp

from ssl_jax import parallel
from ssl_jax.errors import ConfigError

# Exact float32 matmuls: GPUs may default to TF32, which would blur pixel values
# by ~1e-3 and break the exact identity crop.
_HI = jax.lax.Precision.HIGHEST
# tf.image.rgb_to_grayscale weights.
_LUMA = (0.2989, 0.5870, 0.1140)


@dataclasses.dataclass(frozen=True)
class View:
  """Static description of one augmented view (hashable: a static jit argument)."""
  size: int
  crop_scale: tuple[float, float] = (0.08, 1.0)
  crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
  flip: bool = True
  color_prob: float = 0.8
  brightness: float = 0.8
  contrast: float = 0.8
  saturation: float = 0.8
  hue: float = 0.2
  brightness_impl: str = "additive"
  gray_prob: float = 0.2
  blur_prob: float = 0.5
  blur_sigma: tuple[float, float] = (0.1, 2.0)
  solarize_prob: float = 0.0

  def __post_init__(self):
    # Configs may hand us lists; tuples keep the dataclass hashable.
    for name in ("crop_scale", "crop_ratio", "blur_sigma"):
      object.__setattr__(self, name, tuple(float(v) for v in getattr(self, name)))
    if int(self.size) <= 0:
      raise ConfigError(f"View.size must be a positive int, got {self.size}")
    if self.brightness_impl not in ("additive", "multiplicative"):
      raise ConfigError("View.brightness_impl must be 'additive' or "
                        f"'multiplicative', got {self.brightness_impl!r}")
    for name in ("color_prob", "gray_prob", "blur_prob", "solarize_prob"):
      if not 0.0 <= getattr(self, name) <= 1.0:
        raise ConfigError(f"View.{name} must be in [0, 1], got {getattr(self, name)}")
    lo, hi = self.crop_scale
    if not 0.0 < lo <= hi <= 1.0:
      raise ConfigError(f"View.crop_scale must satisfy 0 < lo <= hi <= 1, got {self.crop_scale}")
    if not 0.0 < self.crop_ratio[0] <= self.crop_ratio[1]:
      raise ConfigError(f"View.crop_ratio must satisfy 0 < lo <= hi, got {self.crop_ratio}")

  @classmethod
  def simclr(cls, size, strength=1.0, **overrides):
    """SimCLR colour strength s: brightness/contrast/saturation 0.8s, hue 0.2s."""
    kwargs = dict(brightness=0.8 * strength, contrast=0.8 * strength,
                  saturation=0.8 * strength, hue=0.2 * strength)
    kwargs.update(overrides)
    return cls(size=size, **kwargs)


def _to_float(image):
  """uint8 -> [0, 1] float32; float inputs are assumed to be in [0, 1] already."""
  if jnp.issubdtype(image.dtype, jnp.integer):
    return image.astype(jnp.float32) / 255.0
  return image.astype(jnp.float32)


def _uniform(key, lo, hi):
  return jax.random.uniform(key, (), jnp.float32, lo, hi)


# ----------------------------------------------------------------- crop + flip

def sample_crop_box(key, height, width, scale, ratio, attempts=10):
  """torchvision RandomResizedCrop box as floats (top, left, h, w).

  `attempts` candidates are drawn at once (area fraction U(scale), log-uniform
  aspect w/h); the first that fits is used, else a central crop with the aspect
  clamped to `ratio` (torchvision's fallback). Sizes are not rounded to pixels:
  the bilinear matrices handle fractional boxes.
  """
  k_area, k_ratio, k_top, k_left = jax.random.split(key, 4)
  area = height * width * jax.random.uniform(k_area, (attempts,), jnp.float32, *scale)
  log_r = jax.random.uniform(k_ratio, (attempts,), jnp.float32,
                             math.log(ratio[0]), math.log(ratio[1]))
  aspect = jnp.exp(log_r)
  ws, hs = jnp.sqrt(area * aspect), jnp.sqrt(area / aspect)
  fits = (ws <= width) & (hs <= height)
  first = jnp.argmax(fits)  # index of the first True (0 when none fits)
  found = jnp.any(fits)
  # Fallback (static: depends only on the image shape and the ratio range).
  in_ratio = width / height
  if in_ratio < ratio[0]:
    fw, fh = width, width / ratio[0]
  elif in_ratio > ratio[1]:
    fw, fh = height * ratio[1], height
  else:
    fw, fh = width, height
  h = jnp.where(found, hs[first], fh)
  w = jnp.where(found, ws[first], fw)
  top = jnp.where(found, jax.random.uniform(k_top) * (height - h), (height - h) / 2)
  left = jnp.where(found, jax.random.uniform(k_left) * (width - w), (width - w) / 2)
  return top, left, h, w


def _interp_matrix(start, length, in_size, out_size):
  """(out_size, in_size) bilinear weights resampling [start, start+length)."""
  # Half-pixel centres: output pixel i covers input coordinate
  # start + (i + 0.5) * length / out_size, in a frame where pixel j's centre is j.
  pos = start + (jnp.arange(out_size, dtype=jnp.float32) + 0.5) * (length / out_size) - 0.5
  pos = jnp.clip(pos, 0.0, in_size - 1)  # edge clamping
  lo = jnp.floor(pos)
  frac = (pos - lo)[:, None]
  lo = lo.astype(jnp.int32)
  hi = jnp.minimum(lo + 1, in_size - 1)
  return ((1 - frac) * jax.nn.one_hot(lo, in_size, dtype=jnp.float32)
          + frac * jax.nn.one_hot(hi, in_size, dtype=jnp.float32))


def crop_and_flip(key, image, view):
  """Random resized crop (bilinear) + horizontal flip: (H, W, 3) -> (size, size, 3)."""
  height, width = image.shape[0], image.shape[1]
  k_box, k_flip = jax.random.split(key)
  top, left, h, w = sample_crop_box(k_box, height, width, view.crop_scale, view.crop_ratio)
  wy = _interp_matrix(top, h, height, view.size)
  wx = _interp_matrix(left, w, width, view.size)
  if view.flip:  # flipping the output columns = reversing the rows of Wx
    wx = jnp.where(jax.random.bernoulli(k_flip, 0.5), wx[::-1], wx)
  x = _to_float(image)
  x = jnp.einsum("oh,hwc->owc", wy, x, precision=_HI)
  return jnp.einsum("owc,pw->opc", x, wx, precision=_HI)


# ---------------------------------------------------------------------- colour

def rgb_to_hsv(x):
  """RGB in [0, 1] (..., 3) -> HSV with H, S, V in [0, 1] (H in turns)."""
  r, g, b = x[..., 0], x[..., 1], x[..., 2]
  v = jnp.max(x, axis=-1)
  delta = v - jnp.min(x, axis=-1)
  s = jnp.where(v > 0, delta / jnp.where(v > 0, v, 1.0), 0.0)
  d = jnp.where(delta > 0, delta, 1.0)  # safe divisor; hue is 0 for grays
  # Branch on argmax rather than `v == r`: XLA may recompute a fused input (e.g.
  # uint8 / 255) in two ways that differ by an ulp, and the equality then fails.
  top = jnp.argmax(x, axis=-1)
  h = jnp.where(top == 0, jnp.mod((g - b) / d, 6.0),
                jnp.where(top == 1, (b - r) / d + 2.0, (r - g) / d + 4.0))
  h = jnp.where(delta > 0, h / 6.0, 0.0)
  return jnp.stack([h, s, v], axis=-1)


def hsv_to_rgb(x):
  """HSV in [0, 1] (..., 3) -> RGB in [0, 1]."""
  h, s, v = x[..., 0], x[..., 1], x[..., 2]
  def channel(n):  # closed form: n = 5, 3, 1 gives R, G, B
    k = jnp.mod(n + h * 6.0, 6.0)
    return v - v * s * jnp.clip(jnp.minimum(k, 4.0 - k), 0.0, 1.0)
  return jnp.stack([channel(5.0), channel(3.0), channel(1.0)], axis=-1)


def _color_jitter(key, x, view):
  """Brightness, contrast, saturation, hue in a random order, clipping after each."""
  k_order, k_b, k_c, k_s, k_h = jax.random.split(key, 5)
  b, c, s = view.brightness, view.contrast, view.saturation
  clip = lambda y: jnp.clip(y, 0.0, 1.0)
  if view.brightness_impl == "additive":  # tf.image.random_brightness (v1 / BYOL)
    fb = _uniform(k_b, -b, b)
    bright = lambda y: clip(y + fb)
  else:  # SimCLR v2 / torchvision
    fb = _uniform(k_b, max(0.0, 1 - b), 1 + b)
    bright = lambda y: clip(y * fb)
  fc = _uniform(k_c, max(0.0, 1 - c), 1 + c)
  def contrast(y):  # tf.image.adjust_contrast: per-channel mean over the image
    mean = jnp.mean(y, axis=(0, 1), keepdims=True)
    return clip((y - mean) * fc + mean)
  fs = _uniform(k_s, max(0.0, 1 - s), 1 + s)
  def saturation(y):  # tf.image.adjust_saturation scales S in HSV
    hsv = rgb_to_hsv(y)
    return clip(hsv_to_rgb(hsv.at[..., 1].set(jnp.clip(hsv[..., 1] * fs, 0.0, 1.0))))
  dh = _uniform(k_h, -view.hue, view.hue)
  def hue(y):
    hsv = rgb_to_hsv(y)
    return clip(hsv_to_rgb(hsv.at[..., 0].set(jnp.mod(hsv[..., 0] + dh, 1.0))))
  identity = lambda y: y
  # A strength of 0 is skipped statically: exact identity, and no HSV round trip.
  ops = [op if strength > 0 else identity
         for op, strength in zip((bright, contrast, saturation, hue), (b, c, s, view.hue))]
  if all(op is identity for op in ops):
    return x
  order = jax.random.permutation(k_order, 4)
  for stage in range(4):  # under vmap, switch becomes a select among the 4 ops
    x = jax.lax.switch(order[stage], ops, x)
  return x


def blur_radius(size):
  """SimCLR rule: kernel side = 10% of the image, radius = side // 2 (224 -> 11, 23 taps)."""
  return (size // 10) // 2


def gaussian_kernel_matrix(size, sigma, radius):
  """(size, size) banded matrix K: K @ x blurs x along its first axis (1D Gaussian).

  Taps -radius..radius, normalised over the taps; rows near the border lose the
  taps that fall outside (SAME padding with zeros, like tf depthwise conv).
  """
  offsets = jnp.arange(size)[None, :] - jnp.arange(size)[:, None]
  taps = jnp.arange(-radius, radius + 1, dtype=jnp.float32)
  sigma = jnp.asarray(sigma, jnp.float32)
  norm = jnp.sum(jnp.exp(-taps ** 2 / (2 * sigma ** 2)))
  weights = jnp.exp(-offsets.astype(jnp.float32) ** 2 / (2 * sigma ** 2)) / norm
  return jnp.where(jnp.abs(offsets) <= radius, weights, 0.0)


def photometric(key, x, view):
  """Colour jitter, grayscale, blur, solarize on one float image in [0, 1]."""
  x = jnp.asarray(x, jnp.float32)
  keys = jax.random.split(key, 6)
  if view.color_prob > 0:
    jittered = _color_jitter(keys[0], x, view)
    x = jnp.where(jax.random.uniform(keys[1]) < view.color_prob, jittered, x)
  if view.gray_prob > 0:
    gray = jnp.sum(x * jnp.array(_LUMA, jnp.float32), axis=-1, keepdims=True)
    gray = jnp.repeat(gray, 3, axis=-1)
    x = jnp.where(jax.random.uniform(keys[2]) < view.gray_prob, gray, x)
  height, width = x.shape[0], x.shape[1]
  radius = blur_radius(height)
  if view.blur_prob > 0 and radius > 0:  # radius 0 (tiny images): blur is the identity
    sigma = _uniform(keys[3], *view.blur_sigma)
    ky = gaussian_kernel_matrix(height, sigma, radius)
    kx = gaussian_kernel_matrix(width, sigma, radius)
    blurred = jnp.einsum("ih,hwc,jw->ijc", ky, x, kx, precision=_HI)
    x = jnp.where(jax.random.uniform(keys[4]) < view.blur_prob, blurred, x)
  if view.solarize_prob > 0:  # BYOL: threshold 0.5 on [0, 1]
    solarized = jnp.where(x >= 0.5, 1.0 - x, x)
    x = jnp.where(jax.random.uniform(keys[5]) < view.solarize_prob, solarized, x)
  return jnp.clip(x, 0.0, 1.0)


def augment_view(key, image, view):
  """crop_and_flip then photometric: (H, W, 3) -> float32 (size, size, 3) in [0, 1]."""
  k_crop, k_photo = jax.random.split(key)
  return photometric(k_photo, crop_and_flip(k_crop, image, view), view)


def _example_keys(key, ids):
  # Keys come from global example positions, so the result does not depend on
  # how a batch is split over devices or hosts.
  return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, jnp.asarray(ids, jnp.int32))


def augment_batch(key, images, ids, view, dtype=jnp.float32):
  """(B, H, W, 3) uint8 -> (B, size, size, 3) `dtype`; example i uses fold_in(key, ids[i])."""
  out = jax.vmap(lambda k, im: augment_view(k, im, view))(_example_keys(key, ids), images)
  return out.astype(dtype)


def photometric_batch(key, images, ids, view, dtype=jnp.float32):
  """Photometric part only, for crops made on the host: (B, S, S, 3) -> same, `dtype`."""
  out = jax.vmap(lambda k, im: photometric(k, _to_float(im), view))(
      _example_keys(key, ids), images)
  return out.astype(dtype)


def make_views(batch, rng, views, dtype):
  """Augments this device's images (inside shard_map); each example's key depends only on
  its global row, so the views do not depend on how the batch is split over devices."""
  n = batch["index"].shape[0]
  rows = parallel.first_row(n) + jnp.arange(n)
  if "view0" in batch:   # crops made on the host by tf.data: photometric ops only
    return [photometric_batch(jax.random.fold_in(rng, i), batch[f"view{i}"], rows, view, dtype)
            for i, view in enumerate(views)]
  return [augment_batch(jax.random.fold_in(rng, i), batch["image"], rows, view, dtype)
          for i, view in enumerate(views)]
