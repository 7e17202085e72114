"""ResNet v1 backbones (NHWC) as SimCLR uses them, with SimCLR v2's selective kernels.

Widths scale with `width` (SimCLR's width multiplier; 0.125 gives a base width of 8);
`stem_width` > 0 fixes the stem's channels instead (CMC keeps 64 whatever the width). BN
statistics are averaged over the `batch` mesh axis when `axis_name` is set (global BN).

What differs between the originals' ResNets is a field, set per method by its config:
- `zero_init_residual`: which blocks start with the last BN scale at zero, so that they
  start as the identity: "all" (SimCLR tf2/resnet.py:366, 467; torchvision's
  zero_init_residual=True as SimSiam, MoCo v3), "bottleneck" (Haiku's BlockV1, BYOL: only
  bottleneck blocks) or "none" (torchvision's default, MoCo v1/v2, SwAV, DINO...).
- `projection_shortcut`: "when_needed" (torchvision: a 1x1 conv + BN only where the shape
  changes) or "always" (SimCLR's BlockGroup, BYOL's Haiku ResNet: in block 0 of every
  stage, stage 1 included) [simclr tf2/resnet.py:490-521; byol utils/networks.py:64].
  With selective kernels (sk_ratio > 0) the projection is SimCLR v2's ResNet-D one: a 2x2
  average pool of the block's stride, then a stride-1 1x1 conv [tf2/resnet.py:329-352].
- `init_scheme`: the conv kernels' initialiser, `inits.CONV` ("torchvision", "pytorch",
  "tf_simclr", "haiku").
- `padding`: "torch" (every conv and the stem's max-pool padded (k - 1) // 2 on both sides,
  as torchvision), "tf_fixed" (SimCLR's TF ResNet: the same conv padding, its
  conv2d_fixed_padding, but the max-pool 'SAME', which pads only at the end of an even
  input [simclr resnet.py:224-277, 594-596]) or "same" (Haiku's, BYOL: every conv and the
  max-pool 'SAME', so a strided conv on an even input pads (k - 2) // 2 before and k // 2
  after [byol utils/networks.py:101-107, 139-142; dm-haiku nets/resnet.py:58-97]).
  The released checkpoints' features match only with their original's padding.
"""
import functools
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from ssl_jax.models import inits

# (block kind, blocks per stage) for each depth.
DEPTHS = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
    200: ("bottleneck", (3, 24, 36, 3)),    # BYOL's released ResNet-200 (2x)
}

ZERO_INIT = ("all", "bottleneck", "none")
SHORTCUTS = ("when_needed", "always")
PADDINGS = ("torch", "tf_fixed", "same")


class Conv(nn.Module):
  """Conv without bias, symmetric padding (k - 1) // 2 like TF's fixed padding, or TF's
  'SAME' (Haiku's) with `same`."""
  features: int
  kernel: int = 3
  stride: int = 1
  dtype: Any = jnp.float32
  init_scheme: str = "torchvision"   # a key of inits.CONV
  same: bool = False

  @nn.compact
  def __call__(self, x):
    pad = (self.kernel - 1) // 2
    return nn.Conv(self.features, (self.kernel, self.kernel), (self.stride, self.stride),
                   padding="SAME" if self.same else ((pad, pad), (pad, pad)), use_bias=False,
                   kernel_init=inits.CONV[self.init_scheme],
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
  conv: Any
  min_dim: int = 32

  @nn.compact
  def __call__(self, x):
    x = nn.relu(self.norm()(self.conv(2 * self.features, 3, self.stride)(x)))
    paths = jnp.stack(jnp.split(x, 2, axis=-1))                  # (2, N, H, W, C)
    context = paths.sum(0).mean((1, 2), keepdims=True)
    mid = max(int(self.features * self.sk_ratio), self.min_dim)
    context = nn.relu(self.norm()(self.conv(mid, 1, 1)(context)))
    mixing = jnp.stack(jnp.split(self.conv(2 * self.features, 1, 1)(context), 2, -1))
    return (paths * nn.softmax(mixing.astype(jnp.float32), axis=0).astype(x.dtype)).sum(0)


def resnet_d_pool(x, stride: int):
  """SimCLR v2's AveragePooling2D(2, stride) before an SK block's projection: at stride 1
  'SAME' (TF averages only the pixels inside the image), at stride 2 zero-padded by 1 at the
  end ("fixed padding", the zeros counted) then 'VALID' [tf2/resnet.py:329-352]."""
  if stride == 1:
    return nn.avg_pool(x, (2, 2), (1, 1), padding="SAME", count_include_pad=False)
  return nn.avg_pool(x, (2, 2), (stride, stride), padding=((0, 1), (0, 1)))


class Block(nn.Module):
  """Basic (2 convs) or bottleneck (1x1, 3x3, 1x1 with 4x expansion) residual block.

  The shortcut is a 1x1 conv + BN where the shape changes, or always when `project`."""
  features: int
  stride: int
  kind: str
  sk_ratio: float
  norm: Any
  conv: Any
  project: bool = False
  zero_init: bool = True           # the last BN's scale starts at 0

  @nn.compact
  def __call__(self, x):
    out_features = self.features * (4 if self.kind == "bottleneck" else 1)
    shortcut = x
    if self.project or self.stride != 1 or x.shape[-1] != out_features:
      if self.sk_ratio > 0:   # ResNet-D shortcut, as SimCLR v2 with SK
        shortcut = self.conv(out_features, 1, 1)(resnet_d_pool(shortcut, self.stride))
      else:
        shortcut = self.conv(out_features, 1, self.stride)(shortcut)
      shortcut = self.norm()(shortcut)

    if self.kind == "basic":
      y = nn.relu(self.norm()(self.conv(self.features, 3, self.stride)(x)))
      y = self.norm(zero_init=self.zero_init, name="last_bn")(self.conv(self.features, 3, 1)(y))
    else:
      y = nn.relu(self.norm()(self.conv(self.features, 1, 1)(x)))
      if self.sk_ratio > 0:
        y = SelectiveKernel(self.features, self.stride, self.sk_ratio, self.norm, self.conv)(y)
      else:
        y = nn.relu(self.norm()(self.conv(self.features, 3, self.stride)(y)))
      y = self.norm(zero_init=self.zero_init, name="last_bn")(self.conv(out_features, 1, 1)(y))
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
  projection_shortcut: str = "when_needed"   # or "always"
  zero_init_residual: str = "all"            # or "bottleneck", "none"
  init_scheme: str = "torchvision"           # conv kernels: a key of inits.CONV
  stem_width: int = 0                        # stem channels; 0 = 64 x width
  padding: str = "torch"                     # or "tf_fixed", "same" (see the module doc)

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
    conv = functools.partial(Conv, dtype=self.dtype, init_scheme=self.init_scheme,
                             same=self.padding == "same")
    x = x.astype(self.dtype)
    stem = self.stem_width or int(64 * self.width)
    if self.cifar_stem:          # 3x3 stride 1, no max-pool, for 32 px images
      x = nn.relu(norm()(conv(stem, 3, 1)(x)))
    elif self.sk_ratio > 0:      # ResNet-D stem of SimCLR v2 with SK: three 3x3 convs
      x = nn.relu(norm()(conv(stem // 2, 3, 2)(x)))
      x = nn.relu(norm()(conv(stem // 2, 3, 1)(x)))
      x = nn.relu(norm()(conv(stem, 3, 1)(x)))
    else:
      x = nn.relu(norm()(conv(stem, 7, 2)(x)))
    if not self.cifar_stem:
      x = nn.max_pool(x, (3, 3), (2, 2),
                      padding=((1, 1), (1, 1)) if self.padding == "torch" else "SAME")
    zero_init = self.zero_init_residual == "all" or (
        self.zero_init_residual == "bottleneck" and kind == "bottleneck")
    for stage, blocks in enumerate(stages):
      for i in range(blocks):
        stride = 2 if stage > 0 and i == 0 else 1
        project = i == 0 and self.projection_shortcut == "always"
        x = Block(int(64 * self.width) * 2**stage, stride, kind, self.sk_ratio, norm, conv,
                  project, zero_init)(x)
    return x.mean((1, 2)).astype(jnp.float32)


def resnet(depth: int, **kwargs) -> ResNet:
  if depth not in DEPTHS:
    raise ValueError(f"ResNet depth {depth} is not one of {sorted(DEPTHS)}")
  return ResNet(depth=depth, **kwargs)
