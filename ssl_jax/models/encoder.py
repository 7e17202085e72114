"""Backbone + head, with the input normalisation of the PyTorch/Haiku originals."""
import flax.linen as nn
import jax.numpy as jnp

# MoCo (torchvision transforms) and BYOL (inside the network) normalise with these.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalize_imagenet(x):
  mean = jnp.asarray(IMAGENET_MEAN, jnp.float32)
  std = jnp.asarray(IMAGENET_STD, jnp.float32)
  return (x.astype(jnp.float32) - mean) / std


class Encoder(nn.Module):
  """Images in [0, 1] -> (backbone features h, head output z)."""
  backbone: nn.Module
  head: nn.Module

  def __call__(self, x, train: bool = True):
    h = self.backbone(normalize_imagenet(x), train=train)
    return h, self.head(h, train=train)

  def features(self, x):
    return self.backbone(normalize_imagenet(x), train=False)
