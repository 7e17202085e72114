"""Backbones and heads, built from config."""
import jax.numpy as jnp

from ssl_jax.models import resnet


def compute_dtype(name: str, platform: str):
  if name == "auto":
    return jnp.float32 if platform == "cpu" else jnp.bfloat16
  return jnp.dtype(name)


def backbone(model_config, dtype, axis_name=None) -> resnet.ResNet:
  return resnet.resnet(model_config.depth, width=model_config.width,
                cifar_stem=model_config.cifar_stem, sk_ratio=model_config.sk_ratio,
                dtype=dtype, axis_name=axis_name)
