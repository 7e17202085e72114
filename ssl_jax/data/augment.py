"""On-device image augmentation in pure JAX (jit- and vmap-able, no TensorFlow).

Random resized crop + flip (crops.py: box samplers and resize kernels), colour jitter in
random order with p = color_prob (color.py: tf.image or torchvision semantics),
greyscale, Gaussian blur with a kernel tied to the image size (SimCLR's), solarize
(METHODS.md §6.3, §10.3, §14.3). Outputs stay in [0, 1]; no mean/std normalisation here.

Random choices are made with `jnp.where` / `lax.switch` on traced values, so the
code vectorises under `vmap`. Python `if`s only look at the static `View`.
"""
import dataclasses

import jax
import jax.numpy as jnp

from ssl_jax import parallel
from ssl_jax.data import color, crops
from ssl_jax.errors import ConfigError

# Exact float32 matmuls: GPUs may default to TF32, which would blur pixel values
# by ~1e-3 and break the exact identity crop.
_HI = jax.lax.Precision.HIGHEST


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
  color_impl: str = "tf"              # color.COLOR_IMPLS
  crop_sampler: str = "torchvision"   # crops.SAMPLERS
  resize_method: str = "bilinear"     # crops.RESIZE_METHODS
  antialias: bool = False
  # One blur sigma per call of augment_batch / photometric_batch (SimCLR's per-replica
  # batch; here the global batch, see _batch_keys) instead of one per image.
  blur_per_batch: bool = False

  def __post_init__(self):
    # Configs may hand us lists; tuples keep the dataclass hashable.
    for name in ("crop_scale", "crop_ratio", "blur_sigma"):
      object.__setattr__(self, name, tuple(float(v) for v in getattr(self, name)))
    if int(self.size) <= 0:
      raise ConfigError(f"View.size must be a positive int, got {self.size}")
    if self.brightness_impl not in ("additive", "multiplicative"):
      raise ConfigError("View.brightness_impl must be 'additive' or "
                        f"'multiplicative', got {self.brightness_impl!r}")
    for name, known in (("color_impl", color.COLOR_IMPLS), ("crop_sampler", crops.SAMPLERS),
                        ("resize_method", crops.RESIZE_METHODS)):
      if getattr(self, name) not in known:
        raise ConfigError(f"View.{name}={getattr(self, name)!r} is unknown; use one of {known}")
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


def crop_and_flip(key, image, view):
  """Random resized crop + horizontal flip: (H, W, 3) -> (size, size, 3)."""
  height, width = image.shape[0], image.shape[1]
  k_box, k_flip = jax.random.split(key)
  top, left, h, w = crops.sample_crop_box(k_box, height, width, view)
  resize = dict(method=view.resize_method, antialias=view.antialias)
  wy = crops.interp_matrix(top, h, height, view.size, **resize)
  wx = crops.interp_matrix(left, w, width, view.size, **resize)
  if view.flip:  # flipping the output columns = reversing the rows of Wx
    wx = jnp.where(jax.random.bernoulli(k_flip, 0.5), wx[::-1], wx)
  x = _to_float(image)
  x = jnp.einsum("oh,hwc->owc", wy, x, precision=_HI)
  return jnp.einsum("owc,pw->opc", x, wx, precision=_HI)


# ------------------------------------------------------------------------ blur

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


def photometric(key, x, view, sigma=None):
  """Colour jitter, grayscale, blur, solarize on one float image in [0, 1].

  `sigma`: the blur sigma shared by a batch (View.blur_per_batch); None draws one here.
  """
  x = jnp.asarray(x, jnp.float32)
  keys = jax.random.split(key, 6)
  if view.color_prob > 0:
    jittered = color.color_jitter(keys[0], x, view)
    x = jnp.where(jax.random.uniform(keys[1]) < view.color_prob, jittered, x)
  if view.gray_prob > 0:
    gray = jnp.repeat(color.grayscale(x, view.color_impl), 3, axis=-1)
    x = jnp.where(jax.random.uniform(keys[2]) < view.gray_prob, gray, x)
  height, width = x.shape[0], x.shape[1]
  radius = blur_radius(height)
  if view.blur_prob > 0 and radius > 0:  # radius 0 (tiny images): blur is the identity
    if sigma is None:
      sigma = _uniform(keys[3], *view.blur_sigma)
    ky = gaussian_kernel_matrix(height, sigma, radius)
    kx = gaussian_kernel_matrix(width, sigma, radius)
    blurred = jnp.einsum("ih,hwc,jw->ijc", ky, x, kx, precision=_HI)
    x = jnp.where(jax.random.uniform(keys[4]) < view.blur_prob, blurred, x)
  if view.solarize_prob > 0:  # BYOL: threshold 0.5 on [0, 1]
    solarized = jnp.where(x >= 0.5, 1.0 - x, x)
    x = jnp.where(jax.random.uniform(keys[5]) < view.solarize_prob, solarized, x)
  return jnp.clip(x, 0.0, 1.0)


def augment_view(key, image, view, sigma=None):
  """crop_and_flip then photometric: (H, W, 3) -> float32 (size, size, 3) in [0, 1]."""
  k_crop, k_photo = jax.random.split(key)
  return photometric(k_photo, crop_and_flip(k_crop, image, view), view, sigma)


def _example_keys(key, ids):
  # Keys come from global example positions, so the result does not depend on
  # how a batch is split over devices or hosts.
  return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, jnp.asarray(ids, jnp.int32))


def _batch_keys(key, ids, view):
  """(per-example keys, the batch's blur sigma or None).

  SimCLR draws sigma once per per-replica batch and view (tf2/data_util.py:393-440,
  model.py:255-257). Here it comes from the batch key, which every device shares: one
  sigma per global batch and view, so N devices give the same views as one.
  """
  if not view.blur_per_batch:
    return _example_keys(key, ids), None
  key, k_sigma = jax.random.split(key)
  return _example_keys(key, ids), _uniform(k_sigma, *view.blur_sigma)


def augment_batch(key, images, ids, view, dtype=jnp.float32):
  """(B, H, W, 3) uint8 -> (B, size, size, 3) `dtype`; example i uses fold_in(key, ids[i])."""
  keys, sigma = _batch_keys(key, ids, view)
  out = jax.vmap(lambda k, im: augment_view(k, im, view, sigma))(keys, images)
  return out.astype(dtype)


def photometric_batch(key, images, ids, view, dtype=jnp.float32):
  """Photometric part only, for crops made on the host: (B, S, S, 3) -> same, `dtype`."""
  keys, sigma = _batch_keys(key, ids, view)
  out = jax.vmap(lambda k, im: photometric(k, _to_float(im), view, sigma))(keys, images)
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
