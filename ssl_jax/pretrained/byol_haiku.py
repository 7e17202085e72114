"""BYOL's released Haiku checkpoints (deepmind-research/byol @ d8df4155dc) as configs/byol.py.

The file (pretrain_res50x1.pkl, pretrain_res200x2.pkl, the ablations' res50x1_*.pkl) is
`dill.dump(dict(experiment_state=..., step=..., rng=...))` of the training state, the
first device's copy as numpy arrays [byol/utils/checkpointing.py:65-71]. experiment_state
is the named tuple _ByolExperimentState(online_params, target_params, online_state,
target_state, opt_state) [byol_experiment.py:45-51]; it is read through safe_pickle (Haiku's
mappings become dicts, the named tuples plain records: nothing of the file runs).

Params and state are Haiku's {module path: {name: array}}, the modules named as
byol_experiment.py:147-164 and utils/networks.py build them: the encoder `res_net50` (the
class name ResNet50, snake-cased) with initial_conv, initial_batchnorm,
block_group_{g}/~/block_{b}/~/{shortcut_conv, shortcut_batchnorm, conv_i, batchnorm_i}
[utils/networks.py:101-125; dm-haiku nets/resnet.py:58-100, 217-225], the MLPs `projector`
and `predictor` with linear, batch_norm, linear_1 [networks.py:40-45], and the online
`classifier` (its probe, unused here). Conv kernels are HWIO and Linear weights (in, out),
as Flax's; a BN's scale and offset are (1, ..., 1, C) and its statistics the state
batch_norm/~/mean_ema and var_ema, whose debiased `average` is what inference uses (eps
1e-5, networks.py:92-95; dm-haiku batch_norm.py:172-193) and whose `counter` and `hidden`
are left unused.

What maps where: online encoder and projector -> params/batch_stats encoder (backbone,
head), online predictor -> predictor, target encoder and projector -> method_state
target_params / target_batch_stats. The target's predictor and classifier (built by the
same forward, never in the loss), the online classifier, the optimizer state, step and rng
are unused. Architecture: model.padding="same" (Haiku's SAME convs and max-pool,
networks.py:101-107, 139-142), projection shortcuts in every stage (networks.py:64) and
inputs normalised with ImageNet's mean/std (utils/dataset.py:63-69), as configs/byol.py.
"""

import numpy as np
from flax import traverse_util

from ssl_jax import config as config_lib
from ssl_jax.errors import ConfigError
from ssl_jax.models import resnet
from ssl_jax.pretrained import safe_pickle
from ssl_jax.pretrained.formats import Converted, Format, register

STATE_FIELDS = ("online_params", "target_params", "online_state", "target_state", "opt_state")
# variant -> (depth, width multiplier) of the released files [byol/README.md:72-73]
VARIANTS = {"res50x1": (50, 1), "res200x2": (200, 2)}


def byol_config(variant=None):
  from ssl_jax.pretrained import converter  # pylint: disable=import-outside-toplevel
  if variant not in (None, "", *VARIANTS):
    raise ConfigError(f"--variant={variant!r} is not a BYOL checkpoint; use one of "
                      f"{sorted(VARIANTS)}")
  depth, width = VARIANTS[variant or "res50x1"]
  config = converter.method_config("byol")
  config.model.update(depth=depth, width=float(width))   # configs/byol.py pads "same"
  config_lib.validate(config)
  return config


def _flatten(tree, prefix, out):
  if isinstance(tree, dict):
    for k, v in tree.items():
      _flatten(v, f"{prefix}/{k}" if prefix else str(k), out)
  elif isinstance(tree, (tuple, list)):
    for i, v in enumerate(tree):
      _flatten(v, f"{prefix}/{i}", out)
  elif tree is not None:
    out[prefix] = np.asarray(tree)


def read(path: str) -> dict[str, np.ndarray]:
  """{'online_params/res_net50/~/initial_conv/w': array, ..., 'step': array}."""
  data = safe_pickle.load(path)
  state = data.get("experiment_state") if isinstance(data, dict) else None
  if isinstance(state, safe_pickle.Record):
    state = state.asdict() if state.fields else dict(zip(STATE_FIELDS, state))
  if not isinstance(state, dict) or not set(STATE_FIELDS[:4]) <= set(state):
    raise ConfigError(f"{path} is not a BYOL checkpoint: no experiment_state with "
                      f"{STATE_FIELDS[:4]} (byol/utils/checkpointing.py)")
  flat = {}
  _flatten({**state, **{k: v for k, v in data.items() if k != "experiment_state"}}, "", flat)
  return flat


class _Mapper:
  """Takes the file's arrays by name into flat ssl_jax trees, noting what is missing."""

  def __init__(self, arrays):
    self.arrays, self.used, self.missing = arrays, set(), []
    self.trees = {}

  def take(self, key, tree, path, shape=None):
    if key not in self.arrays:
      self.missing.append(key)
      return
    self.used.add(key)
    value = np.asarray(self.arrays[key], np.float32)
    self.trees.setdefault(tree, {})[tuple(path.split("/"))] = (
        value.reshape(-1) if shape == "vector" else value)

  def batch_norm(self, params, state, module, tree_params, tree_stats, path):
    self.take(f"{params}/{module}/scale", tree_params, f"{path}/scale", "vector")
    self.take(f"{params}/{module}/offset", tree_params, f"{path}/bias", "vector")
    self.take(f"{state}/{module}/~/mean_ema/average", tree_stats, f"{path}/mean", "vector")
    self.take(f"{state}/{module}/~/var_ema/average", tree_stats, f"{path}/var", "vector")

  def tree(self, name):
    return traverse_util.unflatten_dict(self.trees.get(name, {}))


def _backbone(m, net, params, state, to_params, to_stats, prefix, config):
  """The Haiku ResNetTorso `net` of the file onto our ResNet's names under `prefix`."""
  def conv(module, path):
    m.take(f"{params}/{net}/~/{module}/w", to_params, f"{prefix}/{path}/Conv_0/kernel")

  def bn(module, path):
    m.batch_norm(params, state, f"{net}/~/{module}", to_params, to_stats, f"{prefix}/{path}")

  conv("initial_conv", "Conv_0")
  bn("initial_batchnorm", "BatchNorm_0")
  kind, stages = resnet.DEPTHS[config.model.depth]
  if kind != "bottleneck":   # Haiku's basic block strides its 2nd conv, ours the 1st
    raise ConfigError(f"config.model.depth={config.model.depth}: BYOL's released files are "
                      "bottleneck ResNets (50, 200); basic-block Haiku ResNets are not mapped")
  index = 0
  for g, blocks in enumerate(stages):
    for b in range(blocks):
      block, ours = f"block_group_{g}/~/block_{b}", f"Block_{index}"
      project = b == 0   # use_projection=True in every group (networks.py:64)
      if project:
        conv(f"{block}/~/shortcut_conv", f"{ours}/Conv_0")
        bn(f"{block}/~/shortcut_batchnorm", f"{ours}/BatchNorm_0")
      for i in range(3):   # 1x1, 3x3 (strided, as ours), 1x1 [dm-haiku nets/resnet.py:69-100]
        conv(f"{block}/~/conv_{i}", f"{ours}/Conv_{i + project}")
        bn(f"{block}/~/batchnorm_{i}", f"{ours}/last_bn" if i == 2 else
           f"{ours}/BatchNorm_{i + project}")
      index += 1


def _mlp(m, params, state, module, to_params, to_stats, prefix):
  """networks.MLP: linear (bias) -> batch_norm -> relu -> linear_1 (no bias)."""
  m.take(f"{params}/{module}/~/linear/w", to_params, f"{prefix}/Dense_0/kernel")
  m.take(f"{params}/{module}/~/linear/b", to_params, f"{prefix}/Dense_0/bias")
  m.batch_norm(params, state, f"{module}/~/batch_norm", to_params, to_stats,
               f"{prefix}/BatchNorm_0")
  m.take(f"{params}/{module}/~/linear_1/w", to_params, f"{prefix}/Dense_1/kernel")


def convert(arrays: dict[str, np.ndarray], config) -> Converted:
  if config.model.projection_shortcut != "always" or config.model.padding != "same":
    raise ConfigError("a BYOL checkpoint needs config.model.projection_shortcut='always' and "
                      "config.model.padding='same' (Haiku's ResNet); use the format's config")
  net = f"res_net{config.model.depth}"   # Haiku's name for networks.ResNet{depth}
  m = _Mapper(arrays)
  for side, to_params, to_stats, prefix in (
      ("online", "params", "batch_stats", "encoder/"),
      ("target", "target_params", "target_batch_stats", "")):
    params, state = f"{side}_params", f"{side}_state"
    _backbone(m, net, params, state, to_params, to_stats, f"{prefix}backbone", config)
    _mlp(m, params, state, "projector", to_params, to_stats, f"{prefix}head")
  _mlp(m, "online_params", "online_state", "predictor", "params", "batch_stats", "predictor")
  if m.missing:
    raise ConfigError(f"the BYOL checkpoint lacks {len(m.missing)} keys the {net} config "
                      f"needs: {', '.join(m.missing[:8])}{' ...' if len(m.missing) > 8 else ''}")
  return Converted(params=m.tree("params"), batch_stats=m.tree("batch_stats"),
                   method_state=dict(target_params=m.tree("target_params"),
                                     target_batch_stats=m.tree("target_batch_stats")),
                   unused=tuple(sorted(set(arrays) - m.used)))


FORMAT = register(Format(
    name="byol_haiku",
    files="pretrain_res50x1.pkl (variant res50x1), pretrain_res200x2.pkl (res200x2), "
          "ablations/res50x1_*.pkl",
    source="deepmind/deepmind-research@d8df4155dc byol/utils/checkpointing.py:65-71, "
           "byol/byol_experiment.py:45-51, 147-164, byol/utils/networks.py:40-45, 101-142",
    config=byol_config, read=read, convert=convert))
