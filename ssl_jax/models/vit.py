"""Vision Transformer backbones (NHWC input), as MoCo v3 and DINO use them.

Pre-norm blocks (LayerNorm eps 1e-6, qkv bias, MLP ratio 4, exact GELU), a class token,
and a learned or fixed 2-D sin-cos position embedding (MoCo v3). The output is the class
token after the final LayerNorm, in float32. Matmuls run in `dtype` (bfloat16 on
accelerators) with the attention softmax in float32; parameters stay float32.

Inputs of another size than `image_size` (the size the model is built for) work: the
sin-cos embedding is recomputed for the new patch grid, a learned one is resized as DINO's
`interpolate_pos_encoding` (`resize_grid_embedding`). `frozen_patch_embed` is MoCo v3's
`--stop-grad-conv1`: the random patch projection gets no gradient, and its module name
starts with "frozen_", which `optim.make_optimizer` excludes from every update (weight
decay included).

`init_scheme` is the original's initialisation:
- "moco_v3" [facebookresearch/moco-v3 vits.py]: Xavier-uniform Linear layers (qkv with Q, K
  and V counted separately) and patch projection, zero biases, class token N(0, 1e-6).
- "dino" [facebookresearch/dino vision_transformer.py:146-172, utils.py:512-550]: Linear
  layers, class token and position embedding trunc_normal_(std 0.02) cut at +-2 absolute,
  i.e. +-100 sd: a plain N(0, 0.02^2) (JAX's truncated_normal would cut at +-2 sd); zero
  biases; the patch-embedding Conv2d, which `_init_weights` does not match, keeps PyTorch's
  default, weight and bias U(+-1/sqrt(fan_in)) with fan_in = 3 p^2 [line 126].
"""
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ssl_jax.models import inits

# Embedding width of each preset; all have depth 12. Heads come from the config (MoCo v3's
# ViT-S has 12 heads, DeiT's and DINO's 6).
WIDTHS = {"tiny": 192, "small": 384, "base": 768}
LN_EPS = 1e-6
FROZEN_PREFIX = "frozen_"

xavier = nn.initializers.xavier_uniform()
INITS = ("moco_v3", "dino")
dino_normal = nn.initializers.normal(0.02)   # DINO's trunc_normal_(0.02), cut at +-100 sd


def qkv_init(key, shape, dtype=jnp.float32):
  """Xavier-uniform with Q, K and V counted as three matrices (fan_out / 3), as MoCo v3."""
  fan_in, fan_out = shape
  limit = math.sqrt(6.0 / (fan_in + fan_out / 3))
  return jax.random.uniform(key, shape, dtype, -limit, limit)


def sincos_2d(grid_h: int, grid_w: int, width: int, temperature: float = 10000.0):
  """(grid_h * grid_w, width) fixed embedding, row-major over the patch grid.

  Token (r, c) gets [sin(r w), cos(r w), sin(c w), cos(c w)] with w_d = T^(-d / (width/4)),
  d = 0 .. width/4 - 1: MoCo v3's embedding (for square grids it is the same layout).
  """
  quarter = width // 4
  omega = 1.0 / temperature ** (np.arange(quarter, dtype=np.float32) / quarter)
  rows, cols = np.meshgrid(np.arange(grid_h, dtype=np.float32),
                           np.arange(grid_w, dtype=np.float32), indexing="ij")
  out_r = rows.reshape(-1, 1) * omega
  out_c = cols.reshape(-1, 1) * omega
  return np.concatenate([np.sin(out_r), np.cos(out_r), np.sin(out_c), np.cos(out_c)], 1)


def resize_grid_embedding(embedding, old_grid, new_grid):
  """(old_h * old_w, D) -> (new_h * new_w, D): DINO's interpolate_pos_encoding
  [dino vision_transformer.py:174-194], torch's F.interpolate(mode='bicubic',
  scale_factor=(new + 0.1) / old, align_corners=False) on the patch-grid image: PyTorch's
  cubic kernel (a = -0.75) with the edge pixels repeated, no antialiasing (although 14 -> 6
  shrinks), and, because a scale factor rather than a size is given, output pixel i samples
  the input at (i + 0.5) old / (new + 0.1) - 0.5."""
  if tuple(old_grid) == tuple(new_grid):
    return embedding
  width = embedding.shape[-1]
  scale = jnp.asarray([(n + 0.1) / o for n, o in zip(new_grid, old_grid)], jnp.float32)
  image = jax.image.scale_and_translate(
      embedding.reshape(*old_grid, width), (*new_grid, width), (0, 1), scale,
      jnp.zeros(2, jnp.float32), "cubic-pytorch", antialias=False)
  return image.reshape(-1, width)


def dense(features, name, init, dtype, kernel_init=xavier):
  """A ViT Linear layer: `kernel_init` under MoCo v3's init, N(0, 0.02) under DINO's."""
  return nn.Dense(features, kernel_init=dino_normal if init == "dino" else kernel_init,
                  dtype=dtype, param_dtype=jnp.float32, name=name)


class PatchEmbed(nn.Module):
  """Non-overlapping p x p patches -> linear projection: (N, H, W, 3) -> (N, h*w, D)."""
  patch_size: int
  width: int
  frozen: bool = False
  dtype: Any = jnp.float32
  init_scheme: str = "moco_v3"

  @nn.compact
  def __call__(self, x):
    p = self.patch_size
    n, height, width, channels = x.shape
    if self.init_scheme == "dino":   # PyTorch's Conv2d default
      init = inits.pytorch_linear(p * p * channels)
      kernel_init, bias_init = init["kernel_init"], init["bias_init"]
    else:                     # Xavier-uniform over the flattened (p*p*C, D) matrix
      kernel_init = nn.initializers.xavier_uniform(in_axis=(0, 1, 2))
      bias_init = nn.initializers.zeros
    kernel = self.param("kernel", kernel_init, (p, p, channels, self.width), jnp.float32)
    bias = self.param("bias", bias_init, (self.width,), jnp.float32)
    if self.frozen:
      kernel, bias = jax.lax.stop_gradient(kernel), jax.lax.stop_gradient(bias)
    gh, gw = height // p, width // p
    patches = x.reshape(n, gh, p, gw, p, channels).transpose(0, 1, 3, 2, 4, 5)
    patches = patches.reshape(n, gh * gw, p * p * channels).astype(self.dtype)
    return patches @ kernel.reshape(-1, self.width).astype(self.dtype) + bias.astype(self.dtype)


class Attention(nn.Module):
  num_heads: int
  dtype: Any = jnp.float32
  init_scheme: str = "moco_v3"

  @nn.compact
  def __call__(self, x):
    n, tokens, width = x.shape
    head_dim = width // self.num_heads
    qkv = dense(3 * width, "qkv", self.init_scheme, self.dtype, qkv_init)(x)
    q, k, v = jnp.split(qkv.reshape(n, tokens, 3 * self.num_heads, head_dim), 3, axis=2)
    logits = jnp.einsum("nqhd,nkhd->nhqk", q * head_dim**-0.5, k)
    weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(self.dtype)
    out = jnp.einsum("nhqk,nkhd->nqhd", weights, v).reshape(n, tokens, width)
    return dense(width, "proj", self.init_scheme, self.dtype)(out)


class DropPath(nn.Module):
  """Stochastic depth: drops the residual branch per example (rng stream 'dropout')."""
  rate: float

  @nn.compact
  def __call__(self, x, train: bool):
    if not train or self.rate == 0.0:
      return x
    keep = 1.0 - self.rate
    mask = jax.random.bernoulli(self.make_rng("dropout"), keep, (x.shape[0],) + (1,) * (x.ndim - 1))
    return jnp.where(mask, x / keep, 0).astype(x.dtype)


class Block(nn.Module):
  num_heads: int
  mlp_ratio: float = 4.0
  drop_path: float = 0.0
  dtype: Any = jnp.float32
  init_scheme: str = "moco_v3"

  @nn.compact
  def __call__(self, x, train: bool):
    norm = lambda name: nn.LayerNorm(LN_EPS, dtype=self.dtype, param_dtype=jnp.float32,
                                     name=name)
    attention = Attention(self.num_heads, self.dtype, self.init_scheme)
    x = x + DropPath(self.drop_path)(attention(norm("norm1")(x)), train)
    hidden = int(x.shape[-1] * self.mlp_ratio)
    y = dense(hidden, "fc1", self.init_scheme, self.dtype)(norm("norm2")(x))
    y = dense(x.shape[-1], "fc2", self.init_scheme, self.dtype)(nn.gelu(y, approximate=False))
    return x + DropPath(self.drop_path)(y, train)


class ViT(nn.Module):
  """Returns the class token after the final LayerNorm, (N, width) float32 (see the
  output option below)."""
  width: int = 384
  depth: int = 12
  num_heads: int = 12
  patch_size: int = 16
  image_size: int = 224           # the size the position embedding is built for
  mlp_ratio: float = 4.0
  pos_embed: str = "sincos"       # "sincos" (fixed, MoCo v3) or "learned"
  drop_path: float = 0.0          # rate of the last block; linear from 0 over depth
  frozen_patch_embed: bool = False
  init_scheme: str = "moco_v3"    # or "dino" (see the module docstring)
  dtype: Any = jnp.float32
  # Output option (DINO eval_linear.py:160-170): the class tokens of the last
  # `output_blocks` blocks, each after the final LayerNorm, concatenated; with
  # `output_avgpool` (one block) also the mean patch token, interleaved as DINO's
  # stack-and-reshape. The defaults give the last block's class token.
  output_blocks: int = 1
  output_avgpool: bool = False

  @property
  def num_features(self) -> int:
    return self.width * self.output_blocks * (2 if self.output_avgpool else 1)

  def position_embedding(self, grid):
    """(1, 1 + h*w, width): the class token's position embedding, then the patches'."""
    if self.pos_embed == "sincos":   # fixed; the class token's entry is zero
      patches = jnp.asarray(sincos_2d(*grid, self.width))
      return jnp.concatenate([jnp.zeros((1, self.width)), patches])[None]
    built = self.image_size // self.patch_size
    dino = self.init_scheme == "dino"
    pos_init = dino_normal if dino else nn.initializers.truncated_normal(0.02)
    table = self.param("pos_embed", pos_init,
                       (1, 1 + built * built, self.width), jnp.float32)
    patches = resize_grid_embedding(table[0, 1:], (built, built), grid)
    return jnp.concatenate([table[0, :1], patches])[None]

  @nn.compact
  def __call__(self, x, train: bool = True):
    n, height, width, _ = x.shape
    grid = (height // self.patch_size, width // self.patch_size)
    name = (FROZEN_PREFIX if self.frozen_patch_embed else "") + "patch_embed"
    tokens = PatchEmbed(self.patch_size, self.width, self.frozen_patch_embed, self.dtype,
                        self.init_scheme, name=name)(x)
    cls_init = dino_normal if self.init_scheme == "dino" else nn.initializers.normal(1e-6)
    cls = self.param("cls_token", cls_init, (1, 1, self.width), jnp.float32)
    tokens = jnp.concatenate([jnp.broadcast_to(cls, (n, 1, self.width)).astype(self.dtype),
                              tokens], axis=1)
    tokens = tokens + self.position_embedding(grid).astype(self.dtype)
    outputs = []
    for i, rate in enumerate(np.linspace(0.0, self.drop_path, self.depth)):
      tokens = Block(self.num_heads, self.mlp_ratio, float(rate), self.dtype,
                     self.init_scheme, name=f"block{i}")(tokens, train)
      outputs.append(tokens)
    norm = nn.LayerNorm(LN_EPS, dtype=self.dtype, param_dtype=jnp.float32, name="norm")
    outputs = [norm(t) for t in outputs[-self.output_blocks:]]
    out = jnp.concatenate([t[:, 0] for t in outputs], axis=-1)
    if self.output_avgpool:
      out = jnp.stack([out, outputs[-1][:, 1:].mean(axis=1)], axis=-1).reshape(n, -1)
    return out.astype(jnp.float32)


def vit(size: str, **kwargs) -> ViT:
  """ViT of a preset size ("tiny", "small", "base"), depth 12; `kwargs` set the rest."""
  if size not in WIDTHS:
    raise ValueError(f"ViT size {size!r} is not one of {sorted(WIDTHS)}")
  return ViT(width=WIDTHS[size], depth=12, **kwargs)


def vit_tiny(**kwargs) -> ViT:
  return vit("tiny", **kwargs)


def vit_small(**kwargs) -> ViT:
  return vit("small", **kwargs)


def vit_base(**kwargs) -> ViT:
  return vit("base", **kwargs)
