"""RGB -> CIE Lab on the device, as skimage.color.rgb2lab (which CMC's RGB2Lab calls).

sRGB in [0, 1] -> linear RGB (the sRGB gamma) -> XYZ (skimage's matrix) / the D65 white
(2 degree observer) -> f(t) = cbrt(t), or 7.787 t + 16/116 below 0.008856 -> L = 116 f(Y)
- 16 in [0, 100], a = 500 (f(X) - f(Y)) in about [-86.2, 98.2], b = 200 (f(Y) - f(Z)) in
about [-107.9, 94.5] over the sRGB gamut.
"""
import jax
import jax.numpy as jnp

_XYZ_FROM_RGB = ((0.412453, 0.357580, 0.180423),
                 (0.212671, 0.715160, 0.072169),
                 (0.019334, 0.119193, 0.950227))
_D65_WHITE = (0.95047, 1.0, 1.08883)

# CMC's normalisation (train_CMC.py): mean and std are the midpoint and half-width of each
# channel's range over the sRGB gamut (the a and b extremes are green, magenta, blue, yellow).
LAB_MEAN = ((0 + 100) / 2, (-86.183 + 98.233) / 2, (-107.857 + 94.478) / 2)
LAB_STD = ((100 - 0) / 2, (86.183 + 98.233) / 2, (107.857 + 94.478) / 2)


def rgb_to_lab(rgb) -> jax.Array:
  """(..., 3) sRGB in [0, 1] -> (..., 3) Lab, float32."""
  rgb = jnp.asarray(rgb, jnp.float32)
  linear = jnp.where(rgb > 0.04045, ((jnp.maximum(rgb, 0.04045) + 0.055) / 1.055)**2.4,
                     rgb / 12.92)
  xyz = jnp.einsum("...c,dc->...d", linear, jnp.asarray(_XYZ_FROM_RGB, jnp.float32),
                   precision=jax.lax.Precision.HIGHEST)
  xyz = xyz / jnp.asarray(_D65_WHITE, jnp.float32)
  f = jnp.where(xyz > 0.008856, jnp.cbrt(jnp.maximum(xyz, 0.008856)), 7.787 * xyz + 16 / 116)
  fx, fy, fz = f[..., 0], f[..., 1], f[..., 2]
  return jnp.stack([116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)], axis=-1)


def normalized_lab(rgb) -> jax.Array:
  """Lab scaled as CMC feeds it to its encoders: each channel's range to about [-1, 1]."""
  mean = jnp.asarray(LAB_MEAN, jnp.float32)
  std = jnp.asarray(LAB_STD, jnp.float32)
  return (rgb_to_lab(rgb) - mean) / std
