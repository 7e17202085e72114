"""Colour jitter and greyscale on the device, in two semantics (`View.color_impl`).

"tf": tf.image's ops, as SimCLR (tf2/data_util.py:33-43, 119-173) and BYOL (utils/
augmentations.py:239-282) use them: brightness additive (tf.image.random_brightness) or
multiplicative (SimCLR v2), contrast toward each channel's own mean, saturation by scaling
S in HSV, greyscale with tf.image.rgb_to_grayscale's weights.

"torchvision": ColorJitter and RandomGrayscale on PIL images (torchvision transforms/
_functional_pil.py, which calls Pillow's ImageEnhance): brightness a blend with black
(multiplicative, whatever `brightness_impl` says), contrast a blend with the greyscale
image's mean rounded to an integer level, saturation a blend with the per-pixel greyscale
(L) image, greyscale PIL's L conversion (ITU-R 601-2: 0.299, 0.587, 0.114, rounded to a
level). Deviation: PIL rounds every op's output to uint8; here values stay float.

Both: hue rotates H in HSV (PIL on its 8-bit H channel); the four ops run once each in a
random order, clipping to [0, 1] after each; factors U[max(0, 1 - x), 1 + x], hue shift
U[-h, h].
"""
import jax
import jax.numpy as jnp

COLOR_IMPLS = ("tf", "torchvision")
_TF_LUMA = (0.2989, 0.5870, 0.1140)   # tf.image.rgb_to_grayscale
_PIL_LUMA = (0.299, 0.587, 0.114)     # PIL convert("L")


def _clip(x):
  return jnp.clip(x, 0.0, 1.0)


def grayscale(x, impl="tf"):
  """(..., 3) -> (..., 1) luma in [0, 1]; PIL's is rounded to a level, as its L image."""
  if impl == "torchvision":
    return jnp.round(255.0 * _dot(x, _PIL_LUMA)) / 255.0
  return _dot(x, _TF_LUMA)


def _dot(x, weights):
  return jnp.sum(x * jnp.array(weights, jnp.float32), axis=-1, keepdims=True)


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


# ------------------------------------------------- the ops, one image (H, W, 3) each

def brightness_additive(x, delta):
  """tf.image.adjust_brightness."""
  return _clip(x + delta)


def brightness_multiplicative(x, factor):
  """SimCLR v2's brightness; PIL ImageEnhance.Brightness (a blend with black)."""
  return _clip(x * factor)


def contrast_tf(x, factor):
  """tf.image.adjust_contrast: toward each channel's spatial mean."""
  mean = jnp.mean(x, axis=(0, 1), keepdims=True)
  return _clip((x - mean) * factor + mean)


def contrast_torchvision(x, factor):
  """PIL ImageEnhance.Contrast: toward the L image's mean, rounded to a level."""
  mean = jnp.round(255.0 * jnp.mean(grayscale(x, "torchvision"))) / 255.0
  return _clip((x - mean) * factor + mean)


def saturation_tf(x, factor):
  """tf.image.adjust_saturation: S in HSV scaled and clipped."""
  hsv = rgb_to_hsv(x)
  return _clip(hsv_to_rgb(hsv.at[..., 1].set(jnp.clip(hsv[..., 1] * factor, 0.0, 1.0))))


def saturation_torchvision(x, factor):
  """PIL ImageEnhance.Color: a blend with the per-pixel L image."""
  gray = grayscale(x, "torchvision")
  return _clip((x - gray) * factor + gray)


def hue_shift(x, delta):
  """tf.image.adjust_hue and PIL's adjust_hue: H rotated by `delta` turns."""
  hsv = rgb_to_hsv(x)
  return _clip(hsv_to_rgb(hsv.at[..., 0].set(jnp.mod(hsv[..., 0] + delta, 1.0))))


def _uniform(key, lo, hi):
  return jax.random.uniform(key, (), jnp.float32, lo, hi)


def color_jitter(key, x, view):
  """Brightness, contrast, saturation, hue in a random order, with `view`'s semantics."""
  k_order, k_b, k_c, k_s, k_h = jax.random.split(key, 5)
  b, c, s = view.brightness, view.contrast, view.saturation
  torch_like = view.color_impl == "torchvision"
  if view.brightness_impl == "additive" and not torch_like:   # SimCLR v1, BYOL
    fb = _uniform(k_b, -b, b)
    bright = lambda y: brightness_additive(y, fb)   # pylint: disable=unnecessary-lambda-assignment
  else:
    fb = _uniform(k_b, max(0.0, 1 - b), 1 + b)
    bright = lambda y: brightness_multiplicative(y, fb)  # pylint: disable=unnecessary-lambda-assignment
  contrast_op = contrast_torchvision if torch_like else contrast_tf
  saturation_op = saturation_torchvision if torch_like else saturation_tf
  fc = _uniform(k_c, max(0.0, 1 - c), 1 + c)
  fs = _uniform(k_s, max(0.0, 1 - s), 1 + s)
  dh = _uniform(k_h, -view.hue, view.hue)
  ops = [bright, lambda y: contrast_op(y, fc), lambda y: saturation_op(y, fs),
         lambda y: hue_shift(y, dh)]
  identity = lambda y: y   # pylint: disable=unnecessary-lambda-assignment
  # A strength of 0 is skipped statically: exact identity, and no HSV round trip.
  ops = [op if strength > 0 else identity for op, strength in zip(ops, (b, c, s, view.hue))]
  if all(op is identity for op in ops):
    return x
  order = jax.random.permutation(k_order, 4)
  for stage in range(4):  # under vmap, switch becomes a select among the 4 ops
    x = jax.lax.switch(order[stage], ops, x)
  return x
