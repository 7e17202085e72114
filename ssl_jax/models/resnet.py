"""ResNet v1 backbones (NHWC) as SimCLR uses them, with SimCLR v2's selective kernels.

Widths scale with `width` (SimCLR's width multiplier; 0.125 gives a base width of 8).
The last BN scale of every residual block starts at zero, as in SimCLR's code, so each
block starts as the identity. BN statistics are averaged over the `batch` mesh axis when
`axis_name` is set (global BN).
"""
import functools
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

# (block kind, blocks per stage) for each depth.
DEPTHS = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}

conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


class Conv(nn.Module):
  """Conv without bias, symmetric padding (k - 1) // 2 like TF's fixed padding."""
  features: int
  kernel: int = 3
  stride: int = 1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    pad = (self.kernel - 1) // 2
    return nn.Conv(self.features, (self.kernel, self.kernel), (self.stride, self.stride),
                   padding=((pad, pad), (pad, pad)), use_bias=False, kernel_init=conv_init,
                   dtype=self.dtype, param_dtype=jnp.float32)(x)


def batch_norm(train, axis_name, dtype, zero_init=False, use_bias=True, name=None,
               use_scale=True):
  """BN with SimCLR's decay 0.9 and eps 1e-5; global over `axis_name` while training."""
  return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                      axis_name=axis_name if train else None, dtype=dtype,
                      param_dtype=jnp.float32, use_bias=use_bias, use_scale=use_scale, name=name,
                      scale_init=nn.initializers.zeros if zero_init else nn.initializers.ones)


def layer_norm(dtype, zero_init=False, use_bias=True, name=None, use_scale=True):
  """LayerNorm over each example's (H, W, C) with per-channel scale and shift, as TF's
  layer_norm defaults; CPC v2 uses it in place of BN so patches never share statistics.
  Same call signature as `batch_norm` (minus train/axis_name), so blocks take either."""
  return nn.LayerNorm(epsilon=1e-5, reduction_axes=(-3, -2, -1), feature_axes=-1,
                      dtype=dtype, param_dtype=jnp.float32, use_bias=use_bias,
                      use_scale=use_scale, name=name,
                      scale_init=nn.initializers.zeros if zero_init else nn.initializers.ones)


class SelectiveKernel(nn.Module):
  """SimCLR v2's SK conv: two 3x3 paths mixed by a softmax over a squeezed global context."""
  features: int
  stride: int
  sk_ratio: float
  norm: Any
  dtype: Any = jnp.float32
  min_dim: int = 32

  @nn.compact
  def __call__(self, x):
    x = nn.relu(self.norm()(Conv(2 * self.features, 3, self.stride, self.dtype)(x)))
    paths = jnp.stack(jnp.split(x, 2, axis=-1))                  # (2, N, H, W, C)
    context = paths.sum(0).mean((1, 2), keepdims=True)
    mid = max(int(self.features * self.sk_ratio), self.min_dim)
    context = nn.relu(self.norm()(Conv(mid, 1, 1, self.dtype)(context)))
    mixing = jnp.stack(jnp.split(Conv(2 * self.features, 1, 1, self.dtype)(context), 2, -1))
    return (paths * nn.softmax(mixing.astype(jnp.float32), axis=0).astype(x.dtype)).sum(0)


class Block(nn.Module):
  """Basic (2 convs) or bottleneck (1x1, 3x3, 1x1 with 4x expansion) residual block."""
  features: int
  stride: int
  kind: str
  sk_ratio: float
  norm: Any
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    out_features = self.features * (4 if self.kind == "bottleneck" else 1)
    shortcut = x
    if self.stride != 1 or x.shape[-1] != out_features:
      if self.sk_ratio > 0 and self.stride > 1:   # ResNet-D shortcut, as SimCLR v2 with SK
        shortcut = nn.avg_pool(shortcut, (2, 2), (2, 2), padding="SAME")
        shortcut = Conv(out_features, 1, 1, self.dtype)(shortcut)
      else:
        shortcut = Conv(out_features, 1, self.stride, self.dtype)(shortcut)
      shortcut = self.norm()(shortcut)

    if self.kind == "basic":
      y = nn.relu(self.norm()(Conv(self.features, 3, self.stride, self.dtype)(x)))
      y = self.norm(zero_init=True, name="last_bn")(Conv(self.features, 3, 1, self.dtype)(y))
    else:
      y = nn.relu(self.norm()(Conv(self.features, 1, 1, self.dtype)(x)))
      if self.sk_ratio > 0:
        y = SelectiveKernel(self.features, self.stride, self.sk_ratio, self.norm, self.dtype)(y)
      else:
        y = nn.relu(self.norm()(Conv(self.features, 3, self.stride, self.dtype)(y)))
      y = self.norm(zero_init=True, name="last_bn")(Conv(out_features, 1, 1, self.dtype)(y))
    return nn.relu(y + shortcut)


class ResNet(nn.Module):
  """Returns globally pooled features (N, C) in float32."""
  depth: int = 50
  width: float = 1.0
  cifar_stem: bool = False
  sk_ratio: float = 0.0
  dtype: Any = jnp.float32
  axis_name: str | None = None
  norm: str = "batch"          # "layer": LayerNorm, no batch statistics (CPC v2)

  @property
  def num_features(self) -> int:
    kind, _ = DEPTHS[self.depth]
    return int(512 * self.width) * (4 if kind == "bottleneck" else 1)

  @nn.compact
  def __call__(self, x, train: bool = True):
    kind, stages = DEPTHS[self.depth]
    if self.norm == "layer":
      norm = functools.partial(layer_norm, self.dtype)
    else:
      norm = functools.partial(batch_norm, train, self.axis_name, self.dtype)
    x = x.astype(self.dtype)
    base = int(64 * self.width)
    if self.cifar_stem:          # 3x3 stride 1, no max-pool, for 32 px images
      x = nn.relu(norm()(Conv(base, 3, 1, self.dtype)(x)))
    elif self.sk_ratio > 0:      # ResNet-D stem of SimCLR v2 with SK: three 3x3 convs
      x = nn.relu(norm()(Conv(base // 2, 3, 2, self.dtype)(x)))
      x = nn.relu(norm()(Conv(base // 2, 3, 1, self.dtype)(x)))
      x = nn.relu(norm()(Conv(base, 3, 1, self.dtype)(x)))
    else:
      x = nn.relu(norm()(Conv(base, 7, 2, self.dtype)(x)))
    if not self.cifar_stem:
      x = nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))
    for stage, blocks in enumerate(stages):
      for i in range(blocks):
        stride = 2 if stage > 0 and i == 0 else 1
        x = Block(int(64 * self.width) * 2**stage, stride, kind, self.sk_ratio, norm,
                  self.dtype)(x)
    return x.mean((1, 2)).astype(jnp.float32)


def resnet(depth: int, **kwargs) -> ResNet:
  if depth not in DEPTHS:
    raise ValueError(f"ResNet depth {depth} is not one of {sorted(DEPTHS)}")
  return ResNet(depth=depth, **kwargs)

