"""Patch grids and CPC v2's per-patch augmentation, on the device in pure JAX.

`patch_grid` cuts (N, S, S, C) images into a G x G grid of overlapping P x P patches
with stride `stride`, G = (S - P) / stride + 1 (CPC: 256 px -> 7 x 7 of 64 px, stride 32;
at CIFAR scale 32 px -> 7 x 7 of 8 px, stride 4). `augment_patches` gives every patch its
own random flip, colour jitter, greyscale, colour dropping and (CPC v1) sub-crop, with a key that depends
only on the example's global row and the patch position, so a batch split over any
number of devices is augmented identically.
"""
import dataclasses

import jax
import jax.numpy as jnp

from ssl_jax.data import augment
from ssl_jax.models.encoder import IMAGENET_MEAN


def grid_size(image_size: int, patch: int, stride: int) -> int:
  return (image_size - patch) // stride + 1


def patch_grid(images, patch: int, stride: int):
  """(N, S, S, C) -> (N, G, G, P, P, C); patch (r, c) starts at pixel (r, c) * stride."""
  g = grid_size(images.shape[1], patch, stride)
  starts = jnp.arange(g) * stride
  pixels = starts[:, None] + jnp.arange(patch)[None, :]            # (G, P)
  rows = pixels[:, None, :, None]                                   # (G, 1, P, 1)
  cols = pixels[None, :, None, :]                                   # (1, G, 1, P)
  return images[:, rows, cols]


@dataclasses.dataclass(frozen=True)
class PatchAugment:
  """What each patch gets, independently (CPC v2 §4.1 and App. A)."""
  flip: bool = True                 # horizontal flip, p = 0.5
  color_prob: float = 0.8           # colour jitter (Inception-style distortions), p
  jitter: tuple[float, float, float, float] = (32 / 255, 0.5, 0.5, 0.2)  # b, c, s, h
  brightness_impl: str = "additive"
  gray_prob: float = 0.25
  color_drop_prob: float = 1.0      # keep one random channel, the other two set to the mean
  crop_size: int = 0                # > 0: CPC v1's jitter, a random crop_size^2 window kept

  def view(self, size: int) -> augment.View:
    b, c, s, h = self.jitter
    return augment.View(size=size, color_prob=self.color_prob, brightness=b, contrast=c,
                        saturation=s, hue=h, brightness_impl=self.brightness_impl,
                        gray_prob=self.gray_prob, blur_prob=0.0)


def color_drop(key, patch):
  """Keeps one random channel; the other two become the ImageNet mean of their channel,
  which the network's input normalisation maps to exactly 0."""
  keep = jax.random.randint(key, (), 0, patch.shape[-1])
  mean = jnp.asarray(IMAGENET_MEAN, patch.dtype)
  return jnp.where(jnp.arange(patch.shape[-1]) == keep, patch, mean)


def crop_in_place(key, patch, size: int):
  """CPC v1's per-patch jitter (§3.2: a random 60 x 60 sub-crop of each 64 x 64 patch,
  padded back to 64 x 64), as DEEPUL does it (cpc.py:38-45): the window stays where it
  was and the rest becomes the ImageNet mean, 0 after the input normalisation (zero
  padding of the network's input)."""
  p = patch.shape[0]
  top, left = jax.random.randint(key, (2,), 0, p - size + 1)
  pixels = jnp.arange(p)
  inside = lambda start: (pixels >= start) & (pixels < start + size)  # noqa: E731
  window = inside(top)[:, None, None] & inside(left)[None, :, None]
  return jnp.where(window, patch, jnp.asarray(IMAGENET_MEAN, patch.dtype))


def augment_patch(key, patch, spec: PatchAugment):
  """One (P, P, 3) float patch in [0, 1] -> augmented, same shape."""
  k_flip, k_photo, k_drop, k_drop_p = jax.random.split(key, 4)
  if spec.flip:
    patch = jnp.where(jax.random.bernoulli(k_flip, 0.5), patch[:, ::-1], patch)
  patch = augment.photometric(k_photo, patch, spec.view(patch.shape[0]))
  if spec.color_drop_prob > 0:
    dropped = color_drop(k_drop, patch)
    patch = jnp.where(jax.random.uniform(k_drop_p) < spec.color_drop_prob, dropped, patch)
  if 0 < spec.crop_size < patch.shape[0]:   # last, so the padding stays at the mean
    patch = crop_in_place(jax.random.fold_in(key, 4), patch, spec.crop_size)
  return patch


def augment_patches(key, patches, rows, spec: PatchAugment):
  """(N, G, G, P, P, 3) -> same; patch (r, c) of example i uses
  fold_in(fold_in(key, rows[i]), r * G + c)."""
  g = patches.shape[1]

  def one_example(example_key, grid):
    keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(example_key, jnp.arange(g * g))
    flat = grid.reshape((g * g,) + grid.shape[2:])
    out = jax.vmap(lambda k, p: augment_patch(k, p, spec))(keys, flat)
    return out.reshape(grid.shape)
  example_keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, rows)
  return jax.vmap(one_example)(example_keys, patches.astype(jnp.float32))
