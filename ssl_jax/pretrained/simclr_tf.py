"""SimCLR's released TF1 checkpoints (google-research/simclr @ 383d4143fd; v1: be133b38fb) as
configs/simclr_v1.py and configs/simclr_v2.py.

Supported: the TF1 estimator checkpoints the README links (model.ckpt-<step>.index /
.data-*, read by prefix or by their directory with tf.train.load_checkpoint): SimCLR v2's
gs://simclr-checkpoints/simclrv2/pretrained/r{50,101,152}_{1,2,3}x_sk{0,1} (README.md:37)
and SimCLR v1's ResNet50_{1,2,4}x.zip and gs://simclr-checkpoints/simclrv1 (README.md:50-58).
Not supported: the TF2 conversions in gs://simclr-checkpoints-tf2 (Keras object-based
names, tf2/README.md), nor the TF-Hub modules beside the checkpoints.

Variable names are TF1 tf.layers' own: every layer built under `base_model`
(model.py:61) is numbered in the order the graph builds it, base_model/conv2d,
conv2d_1, ... (kernel, HWIO as Flax's) and base_model/batch_normalization, _1, ...
(gamma, beta, moving_mean, moving_variance; eps 1e-5, resnet.py:34, 88-140). The order is
resnet.py's: the stem (one 7x7 conv, or with SK three 3x3 convs, 575-590), then per block
the projection shortcut where there is one (block 0 of every group, 516-520; with SK its
2x2 average pool first, 435-451), the 1x1 conv, the 3x3 conv or the SK conv (its 3x3 conv
of 2x the channels + BN, a 1x1 conv + BN to max(C x sk_ratio, 32), a 1x1 conv without BN,
280-310), the last 1x1 conv (456-481): the order our ResNet creates its layers in.
The projection head is head_contrastive/nl_{j}/dense/kernel (no bias: BN follows) and
nl_{j}/batch_normalization/... (the last without beta) [model_util.py:109-177;
be133b3 model_util.py:103-124 for v1's 2 layers]; v1's zips have none ("the projection
head is not available", README.md:50), and a file without it keeps the head freshly
initialised. head_supervised (the linear classifier), global_step and the optimizer's
slots are unused.

Padding: convs as SimCLR's conv2d_fixed_padding ((k - 1) // 2 on both sides when strided,
SAME at stride 1: symmetric for odd kernels, resnet.py:224-277), the stem's max-pool SAME
(594-596), our model.padding="tf_fixed". Inputs in [0, 1], not normalised.
"""
import collections.abc
import re

import numpy as np
from flax import traverse_util

from ssl_jax import config as config_lib
from ssl_jax.errors import ConfigError
from ssl_jax.models import resnet
from ssl_jax.pretrained.formats import Converted, Format, register

SK_RATIO = 0.0625   # the sk1 files: run.py:228-229 "Recommendation: 0.0625"


class CheckpointArrays(collections.abc.Mapping):
  """{variable name: np.ndarray} of a TF checkpoint, each read when first asked for (an
  R152 3x file is ~3 GB with its optimizer slots, which are never read)."""

  def __init__(self, reader):
    self.reader = reader
    self.shapes = reader.get_variable_to_shape_map()

  def __getitem__(self, key):
    if key not in self.shapes:
      raise KeyError(key)
    return np.asarray(self.reader.get_tensor(key))

  def __iter__(self):
    return iter(self.shapes)

  def __len__(self):
    return len(self.shapes)


def read(path: str) -> CheckpointArrays:
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  try:
    reader = tf.train.load_checkpoint(path)
  except Exception as e:  # pylint: disable=broad-except
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise ConfigError(f"{path} is not a TF checkpoint (give the model.ckpt-<step> prefix or "
                      f"its directory): {first}") from None
  arrays = CheckpointArrays(reader)
  if not any(k.startswith("base_model/") for k in arrays):
    raise ConfigError(f"{path} is a TF checkpoint without base_model/ variables: not a "
                      "SimCLR TF1 checkpoint (google-research/simclr model.py:61)")
  return arrays


def _numbered(base: str, index: int) -> str:
  return base if index == 0 else f"{base}_{index}"


class _Layers:
  """Our ResNet's conv and BN paths in the order SimCLR's resnet.py builds its layers;
  `scope` numbers them as Flax does inside one module (Conv_0, BatchNorm_0, ...)."""

  def __init__(self):
    self.convs, self.norms = [], []

  def scope(self, prefix):
    counts = collections.Counter()

    def conv():
      self.convs.append(f"{prefix}Conv_{counts['conv']}/Conv_0")
      counts["conv"] += 1

    def norm(name=None):
      self.norms.append(f"{prefix}{name or 'BatchNorm_%d' % counts['norm']}")
      if name is None:
        counts["norm"] += 1
    return conv, norm


def backbone_layers(model) -> _Layers:
  """The walk of models/resnet.py ResNet (bottleneck, projection in block 0 of each stage)."""
  kind, stages = resnet.DEPTHS[model.depth]
  if kind != "bottleneck" or model.cifar_stem:
    raise ConfigError(f"config.model.depth={model.depth} / cifar_stem={model.cifar_stem}: "
                      "SimCLR released only ImageNet bottleneck ResNets (50, 101, 152)")
  layers = _Layers()
  conv, norm = layers.scope("")
  for _ in range(3 if model.sk_ratio > 0 else 1):
    conv()
    norm()
  index = 0
  for blocks in stages:
    for b in range(blocks):
      conv, norm = layers.scope(f"Block_{index}/")
      if b == 0:                    # the projection shortcut
        conv()
        norm()
      conv()
      norm()
      if model.sk_ratio > 0:
        sk_conv, sk_norm = layers.scope(f"Block_{index}/SelectiveKernel_0/")
        sk_conv()
        sk_norm()
        sk_conv()
        sk_norm()
        sk_conv()
      else:
        conv()
        norm()
      conv()
      norm("last_bn")
      index += 1
  return layers


class _Mapper:
  def __init__(self, arrays):
    self.arrays, self.used, self.missing = arrays, set(), []
    self.params, self.stats = {}, {}

  def take(self, key, tree, path):
    if key not in self.arrays:
      self.missing.append(key)
      return
    self.used.add(key)
    tree[tuple(path.split("/"))] = np.asarray(self.arrays[key], np.float32)

  def batch_norm(self, scope, path, beta=True):
    self.take(f"{scope}/gamma", self.params, f"{path}/scale")
    if beta:
      self.take(f"{scope}/beta", self.params, f"{path}/bias")
    self.take(f"{scope}/moving_mean", self.stats, f"{path}/mean")
    self.take(f"{scope}/moving_variance", self.stats, f"{path}/var")


def convert(arrays, config) -> Converted:
  if config.model.projection_shortcut != "always" or config.model.padding != "tf_fixed":
    raise ConfigError("a SimCLR checkpoint needs config.model.projection_shortcut='always' "
                      "and config.model.padding='tf_fixed' (SimCLR's TF ResNet); use the "
                      "format's config")
  m = _Mapper(arrays)
  layers = backbone_layers(config.model)
  for i, path in enumerate(layers.convs):
    m.take(f"base_model/{_numbered('conv2d', i)}/kernel", m.params, f"backbone/{path}/kernel")
  for i, path in enumerate(layers.norms):
    m.batch_norm(f"base_model/{_numbered('batch_normalization', i)}", f"backbone/{path}")
  backbone_missing = m.missing
  m.missing = []
  if any(k.startswith("head_contrastive/") for k in arrays):
    for j in range(config.head.num_layers):
      scope = f"head_contrastive/nl_{j}"
      m.take(f"{scope}/dense/kernel", m.params, f"head/Dense_{j}/kernel")
      m.batch_norm(f"{scope}/batch_normalization", f"head/BatchNorm_{j}",
                   beta=j < config.head.num_layers - 1)
  missing = backbone_missing + m.missing
  if missing:
    raise ConfigError(f"the SimCLR checkpoint lacks {len(missing)} variables the config "
                      f"(ResNet-{config.model.depth} {config.model.width:g}x, sk_ratio "
                      f"{config.model.sk_ratio:g}, {config.head.num_layers}-layer head) needs: "
                      f"{', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}")
  return Converted(params=traverse_util.unflatten_dict(m.params),
                   batch_stats=traverse_util.unflatten_dict(m.stats),
                   unused=tuple(sorted(set(arrays) - m.used)))


def _method_config(file: str, **model):
  from ssl_jax.pretrained import converter  # pylint: disable=import-outside-toplevel
  config = converter.method_config(file[:-3])
  config.model.update(**model)   # configs/simclr_v*.py pad "tf_fixed"
  config_lib.validate(config)
  return config


VARIANT_V2 = re.compile(r"r(50|101|152)_([123])x_sk([01])$")
VARIANT_V1 = re.compile(r"r50_([124])x$")


def v2_config(variant=None):
  """variant: the released folder's name, r{50,101,152}_{1,2,3}x_sk{0,1}."""
  match = VARIANT_V2.match(variant or "r50_1x_sk0")
  if not match:
    raise ConfigError(f"--variant={variant!r} is not a SimCLR v2 checkpoint; use its folder "
                      "name, r50_1x_sk0 ... r152_3x_sk1")
  return _method_config("simclr_v2.py", depth=int(match.group(1)), width=float(match.group(2)),
                        sk_ratio=SK_RATIO if match.group(3) == "1" else 0.0)


def v1_config(variant=None):
  """variant: r50_1x, r50_2x or r50_4x (ResNet50_1x.zip ...)."""
  match = VARIANT_V1.match(variant or "r50_1x")
  if not match:
    raise ConfigError(f"--variant={variant!r} is not a SimCLR v1 checkpoint; use r50_1x, "
                      "r50_2x or r50_4x (ResNet50_1x.zip ...)")
  return _method_config("simclr_v1.py", depth=50, width=float(match.group(1)))


register(Format(
    name="simclr_v2_tf",
    files="simclrv2/pretrained/r50_1x_sk0 ... r152_3x_sk1 (variant = the folder name)",
    source="google-research/simclr@383d4143fd resnet.py:224-310, 404-528, 565-597; "
           "model.py:61; model_util.py:109-177",
    config=v2_config, read=read, convert=convert))

register(Format(
    name="simclr_v1_tf",
    files="ResNet50_1x.zip, ResNet50_2x.zip, ResNet50_4x.zip (variant r50_1x, r50_2x, "
          "r50_4x), simclrv1/",
    source="google-research/simclr@be133b38fb resnet.py:224-277, 487-488; "
           "model_util.py:103-124",
    config=v1_config, read=read, convert=convert))
