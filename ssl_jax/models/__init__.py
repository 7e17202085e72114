"""Backbones and heads, built from config."""
import jax.numpy as jnp

from ssl_jax.models import resnet, vit


def compute_dtype(name: str, platform: str):
  if name == "auto":
    return jnp.float32 if platform == "cpu" else jnp.bfloat16
  return jnp.dtype(name)


def backbone(model_config, dtype, axis_name=None, image_size: int = 224):
  """ResNet or ViT from `model_config.name`; a ViT's position embedding is built for
  `image_size` (other sizes are interpolated)."""
  if model_config.name == "vit":   # width = embedding width, depth = number of blocks
    m = model_config
    return vit.ViT(width=int(m.width), depth=m.depth, num_heads=m.num_heads,
                   patch_size=m.patch_size,
                   image_size=m.get("pos_embed_image_size", 0) or image_size, pos_embed=m.pos_embed,
                   drop_path=m.drop_path, frozen_patch_embed=m.frozen_patch_embed,
                   init_scheme=m.vit_init, dtype=dtype,
                   # evaluation's output option (evaluate/linear.py linear_config)
                   output_blocks=m.get("output_blocks", 1),
                   output_avgpool=m.get("output_avgpool", False))
  m = model_config
  return resnet.resnet(m.depth, width=m.width, cifar_stem=m.cifar_stem, sk_ratio=m.sk_ratio,
                       dtype=dtype, axis_name=axis_name,
                       projection_shortcut=m.projection_shortcut,
                       zero_init_residual=m.zero_init_residual, init_scheme=m.init,
                       stem_width=m.stem_width, padding=m.padding)
