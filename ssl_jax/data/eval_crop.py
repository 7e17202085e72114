"""The evaluation view: torchvision's Resize(round(size / p)) + CenterCrop(size), p =
config.eval.crop_proportion (0.875: Resize(256) + CenterCrop(224), as every ImageNet
original evaluates; 1.0: the shorter side resized to `size`, all of it kept).

`geometry` computes the resize and the crop for both input paths: the in-memory one
(`center_crop`, on the device, static shapes, numpy) and tf.data's
(pipeline.center_view, per image, TF ops), so the two cannot drift apart.
Resizing is bilinear and antialiased, as PIL's (torchvision's) bilinear filter.
"""
import jax
import numpy as np


def geometry(height, width, size: int, crop_proportion: float, xp=np):
  """(resized height, resized width, top, left) of the crop, as torchvision: the shorter
  side becomes round(size / p), the longer one int(its share) (Resize truncates), and the
  crop starts at round((side - size) / 2), half to even as Python's round (CenterCrop).
  `xp` provides minimum, floor and round (half to even): numpy, or TF's ops."""
  target = round(size / crop_proportion)
  short = xp.minimum(height, width)
  new_h = xp.floor(target * height / short)
  new_w = xp.floor(target * width / short)
  return new_h, new_w, xp.round((new_h - size) / 2), xp.round((new_w - size) / 2)


def center_crop(x: jax.Array, size: int, crop_proportion: float) -> jax.Array:
  """Float images (N, H, W, C) -> their evaluation views (N, size, size, C); images
  already at `size` are kept as they are (e.g. tf.data's, cropped on the host)."""
  height, width = x.shape[1:3]
  if (height, width) == (size, size):
    return x
  new_h, new_w, top, left = (int(v) for v in geometry(height, width, size, crop_proportion))
  if (new_h, new_w) != (height, width):
    x = jax.image.resize(x, (x.shape[0], new_h, new_w, x.shape[3]), "bilinear",
                         antialias=True)
  return x[:, top:top + size, left:left + size]
