"""Random resized crops for both input paths: the box samplers and the resize kernels.

Box samplers (`View.crop_sampler`). Each rule is written once, over an array namespace
`xp`: jax.numpy on the device (augment.crop_and_flip, float boxes) and `tf_ops()` in the
tf.data map (pipeline.crop_boxes, integer boxes). Each framework draws its own uniforms
(4 per attempt) and hands them to the same rule, so the two paths cannot drift apart.
  "torchvision"  RandomResizedCrop.get_params (torchvision transforms.py): area U(scale),
                 log-uniform aspect w/h, 10 attempts, else a central crop with the aspect
                 clamped to `ratio`.
  "tf"           tf.image.sample_distorted_bounding_box as SimCLR calls it (tf2/
                 data_util.py:246-320): aspect uniform in `ratio`, then an integer height
                 uniform between those giving the min and max area (core/kernels/image/
                 sample_distorted_bounding_box_op.cc GenerateRandomCrop), at least 10% of
                 the image (min_object_covered 0.1), 100 attempts, else the whole image.
  "byol"         BYOL's single draw (byol/utils/dataset.py _decode_and_random_crop): area
                 U(scale), log-uniform aspect, w and h clipped to the image, no retry.
The "tf" boxes are integers on both paths; "torchvision" and "byol" are rounded to pixels
on the host only (the device matrices resample fractional boxes).

Resize kernels (`View.resize_method`, `View.antialias`) as (out, in) matrices over the
whole image that read only the crop window: the triangle (bilinear) or Keys cubic (a =
-0.5: PIL, tf.image.resize, jax.image.resize "cubic"; torch's is -0.75) kernel,
renormalised over the window's pixels, as tf.image.resize and jax.image.resize do (both
border rules); with antialiasing the kernel is widened by the shrink factor, as PIL and
jax.image.resize(antialias=True) do. The host path resizes its integer crops with
tf.image.resize itself (the same kernels).
"""
import types

import jax
import jax.numpy as jnp
import numpy as np

SAMPLERS = ("torchvision", "tf", "byol")
RESIZE_METHODS = ("bilinear", "bicubic")
ATTEMPTS = {"torchvision": 10, "tf": 100, "byol": 1}
UNIFORMS_PER_ATTEMPT = 4
MIN_OBJECT_COVERED = 0.1   # SimCLR's value (tf2/data_util.py:246-320)


def tf_ops():
  """The numpy-style functions the rules call, as TF ops (for the tf.data map)."""
  from ssl_jax.data.tf_sources import tf   # pylint: disable=import-outside-toplevel
  t = tf()
  return types.SimpleNamespace(
      sqrt=t.sqrt, exp=t.exp, floor=t.floor, round=t.round, minimum=t.minimum,
      where=t.where, any=lambda x, axis: t.reduce_any(x, axis=axis),
      first=lambda fits: t.argmax(t.cast(fits, t.int32), axis=1, output_type=t.int32)[:, None],
      take=lambda x, index: t.gather(x, index, axis=1, batch_dims=1)[:, 0])


def jnp_ops():
  return types.SimpleNamespace(
      sqrt=jnp.sqrt, exp=jnp.exp, floor=jnp.floor, round=jnp.round, minimum=jnp.minimum,
      where=jnp.where, any=jnp.any, first=lambda fits: jnp.argmax(fits, axis=1)[:, None],
      take=lambda x, index: jnp.take_along_axis(x, index, axis=1)[:, 0])


def crop_box(xp, u, height, width, sampler, scale, ratio, integer):
  """Boxes (top, left, h, w), each (V,), from uniforms u (4, V, ATTEMPTS[sampler]).

  height, width: float scalars; scale, ratio: pairs of (V, 1) arrays (per-view ranges).
  `integer` rounds sizes and offsets to pixels (always for "tf").
  """
  if sampler == "tf":
    return _tf_box(xp, u, height, width, scale, ratio)
  return _torchvision_box(xp, u, height, width, scale, ratio, integer, clip=sampler == "byol")


def _offset(xp, u, room, integer):
  """Offset uniform over 0..room (integers, both ends) or [0, room] (floats)."""
  return xp.minimum(xp.floor(u * (room + 1)), room) if integer else u * room


def _torchvision_box(xp, u, height, width, scale, ratio, integer, clip):
  (lo, hi), (r_lo, r_hi) = scale, ratio
  area = height * width * (lo + u[0] * (hi - lo))
  log_lo, log_hi = np.log(r_lo), np.log(r_hi)   # numpy: the ranges are static
  aspect = xp.exp(log_lo + u[1] * (log_hi - log_lo))
  w, h = xp.sqrt(area * aspect), xp.sqrt(area / aspect)
  if integer:
    w, h = xp.round(w), xp.round(h)
  if clip:   # BYOL: clipped to the image instead of retried
    w, h = xp.minimum(w, width), xp.minimum(h, height)
  fits = (w > 0) & (h > 0) & (w <= width) & (h <= height)
  first = xp.first(fits)
  found = xp.any(fits, axis=1)
  h, w = xp.take(h, first), xp.take(w, first)
  top = _offset(xp, xp.take(u[2], first), height - h, integer)
  left = _offset(xp, xp.take(u[3], first), width - w, integer)
  # torchvision's fallback: the whole image with its aspect clamped to `ratio`, centred.
  in_ratio = width / height
  fw = xp.where(in_ratio > r_hi[:, 0], height * r_hi[:, 0], width)
  fh = xp.where(in_ratio < r_lo[:, 0], width / r_lo[:, 0], height)
  if integer:
    fw, fh = xp.round(fw), xp.round(fh)
  half = (lambda v: xp.floor(v / 2)) if integer else (lambda v: v / 2)
  return (xp.where(found, top, half(height - fh)), xp.where(found, left, half(width - fw)),
          xp.where(found, h, fh), xp.where(found, w, fw))


def _tf_box(xp, u, height, width, scale, ratio):
  """GenerateRandomCrop + SatisfiesOverlapConstraints, vectorised over the attempts."""
  (lo, hi), (r_lo, r_hi) = scale, ratio
  aspect = r_lo + u[0] * (r_hi - r_lo)
  min_area, max_area = lo * height * width, hi * height * width
  h = xp.round(xp.sqrt(min_area / aspect))          # lrintf: round half to even
  max_h = xp.round(xp.sqrt(max_area / aspect))
  too_wide = xp.round(max_h * aspect) > width
  max_h = xp.where(too_wide, xp.floor((width + 0.5 - 1e-7) / aspect), max_h)
  max_h = xp.where(xp.round(max_h * aspect) > width, max_h - 1, max_h)
  max_h = xp.minimum(max_h, height)
  h = xp.minimum(h, max_h)
  h = h + xp.minimum(xp.floor(u[1] * (max_h - h + 1)), max_h - h)   # Uniform(max_h - h + 1)
  w = xp.round(h * aspect)
  small = w * h < min_area            # the kernel's one-pixel fixes for rounding
  h = xp.where(small, h + 1, h)
  w = xp.where(small, xp.round(h * aspect), w)
  big = w * h > max_area
  h = xp.where(big, h - 1, h)
  w = xp.where(big, xp.round(h * aspect), w)
  area = w * h
  ok = ((area >= min_area) & (area <= max_area) & (w <= width) & (h <= height) & (w > 0)
        & (h > 0) & (area >= 1) & (area >= MIN_OBJECT_COVERED * height * width))
  first = xp.first(ok)
  found = xp.any(ok, axis=1)
  h, w = xp.take(h, first), xp.take(w, first)
  zero = 0.0 * h
  # Uniform(n) draws 0..n-1: a crop touches the bottom / right edge only at full size.
  top = xp.minimum(xp.floor(xp.take(u[2], first) * (height - h)),
                   xp.where(h < height, height - h - 1, zero))
  left = xp.minimum(xp.floor(xp.take(u[3], first) * (width - w)),
                    xp.where(w < width, width - w - 1, zero))
  return (xp.where(found, top, zero), xp.where(found, left, zero),
          xp.where(found, h, zero + height), xp.where(found, w, zero + width))


def ranges(views):
  """(scale, ratio) of `views` as pairs of (V, 1) float32 numpy arrays."""
  col = lambda values: np.asarray(values, np.float32)[:, None]   # pylint: disable=unnecessary-lambda-assignment
  return ((col([v.crop_scale[0] for v in views]), col([v.crop_scale[1] for v in views])),
          (col([v.crop_ratio[0] for v in views]), col([v.crop_ratio[1] for v in views])))


def sample_crop_box(key, height, width, view):
  """One view's box on the device: float32 scalars (top, left, h, w)."""
  u = jax.random.uniform(key, (UNIFORMS_PER_ATTEMPT, 1, ATTEMPTS[view.crop_sampler]))
  scale, ratio = ranges([view])
  box = crop_box(jnp_ops(), u, float(height), float(width), view.crop_sampler, scale, ratio,
                 integer=False)
  return tuple(b[0] for b in box)


# ------------------------------------------------------------------------ resize

def _keys_cubic(x, a=-0.5):
  """Keys' cubic convolution kernel (PIL, tf.image and jax.image 'cubic': a = -0.5)."""
  x = jnp.abs(x)
  near = ((a + 2) * x - (a + 3)) * x * x + 1
  far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
  return jnp.where(x <= 1, near, jnp.where(x < 2, far, 0.0))


def _triangle(x):
  return jnp.maximum(0.0, 1 - jnp.abs(x))


KERNELS = {"bilinear": _triangle, "bicubic": _keys_cubic}


def interp_matrix(start, length, in_size, out_size, method="bilinear", antialias=False):
  """(out_size, in_size) weights resampling the window [start, start + length) of an axis.

  Half-pixel centres: output pixel i samples input coordinate start + (i + 0.5) * length
  / out_size - 0.5, in a frame where pixel j's centre is j. The window holds the pixels
  whose centres lie in it (all of [start, start + length) for integer boxes).
  """
  kernel = KERNELS[method]
  step = length / out_size
  pos = start + (jnp.arange(out_size, dtype=jnp.float32) + 0.5) * step - 0.5
  # Without antialiasing the kernel has its own width (tf.image.resize, which uses Keys'
  # cubic with renormalised borders too); with it, the shrink factor's.
  width = jnp.maximum(step, 1.0) if antialias else 1.0
  j = jnp.arange(in_size, dtype=jnp.float32)
  weights = kernel((j[None, :] - pos[:, None]) / width)
  # Only the window's pixels (centres in [start, start + length)), renormalised.
  inside = (j + 0.5 >= start) & (j + 0.5 < start + length)
  weights = jnp.where(inside[None, :], weights, 0.0)
  return weights / jnp.sum(weights, axis=1, keepdims=True)
