"""ResNet and projection-head structure (shapes only: eval_shape, no compute)."""
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssl_jax import config as config_lib, models
from ssl_jax.errors import ConfigError
from ssl_jax.models import resnet as resnet_lib
from ssl_jax.models.heads import MLPHead, ProjectionHead
from test_config import load

pytestmark = pytest.mark.usefixtures("fast_compiles")   # tiny programs: compiles dominate


def param_count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def shapes(module, x, **kwargs):
  return jax.eval_shape(lambda: module.init(jax.random.key(0), x, **kwargs))


@pytest.mark.parametrize("depth, features, params", [
    (18, 512, 11_176_512), (34, 512, 21_284_672), (50, 2048, 23_508_032),
    (101, 2048, 42_500_160), (152, 2048, 58_143_808)])
def test_resnet_widths_and_parameter_counts(depth, features, params):
  """Counts equal torchvision's ResNets without the final fc layer."""
  model = resnet_lib.resnet(depth)
  variables = shapes(model, jnp.zeros((1, 64, 64, 3)))
  assert model.num_features == features
  assert param_count(variables["params"]) == params
  out = jax.eval_shape(lambda v: model.apply(v, jnp.zeros((2, 64, 64, 3)), train=False),
                       variables)
  assert out.shape == (2, features) and out.dtype == jnp.float32


def test_selective_kernel_resnet50_has_simclr_v2_size():
  variables = shapes(resnet_lib.resnet(50, sk_ratio=0.0625), jnp.zeros((1, 64, 64, 3)))
  assert param_count(variables["params"]) == pytest.approx(35.2e6, rel=0.01)  # "R50-SK 35M"


def test_width_multiplier_and_cifar_stem():
  model = resnet_lib.resnet(18, width=0.125, cifar_stem=True)
  variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  assert variables["params"]["Conv_0"]["Conv_0"]["kernel"].shape == (3, 3, 3, 8)
  assert model.num_features == 64
  y = model.apply(variables, jnp.ones((2, 32, 32, 3)), train=False)
  assert y.shape == (2, 64)


@pytest.mark.parametrize("depth, scheme, zero", [
    (18, "all", True), (18, "bottleneck", False), (50, "bottleneck", True)])
def test_zero_init_residual_per_block_kind(depth, scheme, zero):
  """SimCLR zero-inits every block's last BN, Haiku (BYOL) only bottlenecks, torchvision's
  default (MoCo, SwAV, DINO...) none (as "bottleneck" on basic blocks)."""
  variables = resnet_lib.resnet(depth, width=1 / 16, cifar_stem=True, zero_init_residual=scheme
                                ).init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
  blocks = [v for k, v in variables["params"].items() if k.startswith("Block")]
  assert len(blocks) == (8 if depth == 18 else 16)
  for block in blocks:
    np.testing.assert_array_equal(block["last_bn"]["scale"], 0.0 if zero else 1.0)
    assert float(block["BatchNorm_0"]["scale"].min()) == 1.0


def test_bf16_compute_keeps_f32_params():
  model = resnet_lib.resnet(18, width=0.125, cifar_stem=True, dtype=jnp.bfloat16)
  variables = model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))
  assert {x.dtype for x in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
  assert model.apply(variables, jnp.ones((1, 16, 16, 3)), train=False).dtype == jnp.float32


@pytest.mark.parametrize("layers", [2, 3])
def test_projection_head_layout(layers):
  """Linear(no bias)+BN+ReLU hidden layers; output Linear(no bias)+BN without shift."""
  head = ProjectionHead(num_layers=layers, out_dim=128)
  variables = head.init(jax.random.key(0), jnp.zeros((4, 64)))
  params = variables["params"]
  for i in range(layers):
    assert params[f"Dense_{i}"]["kernel"].shape == (64, 128 if i == layers - 1 else 64)
    assert "bias" not in params[f"Dense_{i}"]
  assert set(params[f"BatchNorm_{layers - 1}"]) == {"scale"}       # no beta at the output
  for i in range(layers - 1):
    assert set(params[f"BatchNorm_{i}"]) == {"scale", "bias"}
  outputs, _ = head.apply(variables, jnp.ones((4, 64)), mutable=["batch_stats"])
  assert len(outputs) == layers + 1 and outputs[-1].shape == (4, 128)
  assert float(outputs[1].min()) >= 0.0     # hidden outputs are post-ReLU


def test_simclr_v2_finetunes_from_the_heads_first_layer():
  import importlib.util, os  # pylint: disable=import-outside-toplevel,multiple-imports
  from ssl_jax.methods import simclr  # pylint: disable=import-outside-toplevel
  path = os.path.join(os.path.dirname(__file__), "..", "configs", "simclr_v2.py")
  spec = importlib.util.spec_from_file_location("simclr_v2", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config("smoke")
  assert config.head.finetune_layer == 1 and config.head.num_layers == 3
  net = simclr.network(config)
  variables = net.init(jax.random.key(0), jnp.zeros((2, 16, 16, 3)))
  x = jnp.ones((2, 16, 16, 3))
  f = net.apply(variables, x, config.head.finetune_layer, method=simclr.Network.finetune_features)
  hidden = net.backbone.num_features      # hidden width = backbone width, as SimCLR
  assert f.shape == (2, hidden)
  np.testing.assert_allclose(f, net.apply(variables, x, train=False)[1], rtol=1e-6)


# --------------------------------------------------- each original's shortcuts and inits

def shortcut_kernels(params):
  """{block name: shortcut kernel shape} for the blocks with a projection shortcut (the
  only 1x1 conv of a basic block, created first)."""
  kernel = lambda block: block["Conv_0"]["Conv_0"]["kernel"].shape   # noqa: E731
  return {name: kernel(block) for name, block in params.items()
          if name.startswith("Block") and kernel(block)[:2] == (1, 1)}


@pytest.mark.parametrize("depth, shortcut, params", [
    (18, "when_needed", 11_176_512), (18, "always", 11_176_512 + 64 * 64 + 2 * 64),
    (50, "always", 23_508_032)])    # R50's stage 1 already projects 64 -> 256
def test_projection_shortcut_in_every_stage(depth, shortcut, params):
  """SimCLR's BlockGroup and BYOL's Haiku ResNet project in block 0 of every stage, the
  64 -> 64 stage 1 of ResNet-18 included; torchvision only where the shape changes."""
  model = resnet_lib.resnet(depth, projection_shortcut=shortcut)
  tree = shapes(model, jnp.zeros((1, 64, 64, 3)))["params"]
  assert param_count(tree) == params
  if depth == 18:
    expected = {"Block_2": (1, 1, 64, 128), "Block_4": (1, 1, 128, 256),
                "Block_6": (1, 1, 256, 512)}
    if shortcut == "always":
      expected["Block_0"] = (1, 1, 64, 64)
    assert shortcut_kernels(tree) == expected


@pytest.mark.parametrize("stride", [1, 2])
def test_sk_projection_shortcut_matches_tf_resnet_d(stride):
  """SimCLR v2 with SK (tf2/resnet.py:329-352): AveragePooling2D(2, stride; 'SAME' at
  stride 1, fixed padding + 'VALID' at 2), then a stride-1 1x1 conv + BN; the block is
  checked against TensorFlow's own ops (eval-mode BN at its initial statistics)."""
  tf = pytest.importorskip("tensorflow")
  norm = functools.partial(resnet_lib.batch_norm, False, None, jnp.float32)
  conv = functools.partial(resnet_lib.Conv, dtype=jnp.float32)
  block = resnet_lib.Block(4, stride, "basic", 0.0625, norm, conv, project=True,
                           zero_init=False)
  x = jax.random.normal(jax.random.key(1), (2, 7, 7, 4))
  variables = block.init(jax.random.key(0), x)
  out = block.apply(variables, x)
  kernel = lambda i: np.asarray(variables["params"][f"Conv_{i}"]["Conv_0"]["kernel"])
  bn = lambda y: y / np.sqrt(1.0 + 1e-5)      # scale 1, shift 0, mean 0, var 1
  xt = tf.constant(np.asarray(x))
  if stride == 1:
    pooled = tf.keras.layers.AveragePooling2D(2, 1, "same")(xt)
  else:
    pooled = tf.keras.layers.AveragePooling2D(2, 2, "valid")(
        tf.pad(xt, [[0, 0], [0, 1], [0, 1], [0, 0]]))
  shortcut = bn(tf.nn.conv2d(pooled, kernel(0), 1, "VALID"))
  pad = tf.pad(xt, [[0, 0], [1, 1], [1, 1], [0, 0]])
  y = tf.nn.relu(bn(tf.nn.conv2d(pad, kernel(1), stride, "VALID")))
  y = tf.pad(y, [[0, 0], [1, 1], [1, 1], [0, 0]])
  y = bn(tf.nn.conv2d(y, kernel(2), 1, "VALID"))
  expected = tf.nn.relu(y + shortcut).numpy()
  side = 7 if stride == 1 else 4
  assert out.shape == expected.shape == (2, side, side, 4)
  np.testing.assert_allclose(out, expected, atol=1e-5)


FAN_IN, FAN_OUT = 3 * 3 * 256, 3 * 3 * 256
TRUNC_STD = 0.87962566103423978      # std of a unit normal cut at +-2


@pytest.mark.parametrize("scheme, std, bound", [
    ("torchvision", math.sqrt(2 / FAN_OUT), None),
    ("pytorch", 1 / math.sqrt(3 * FAN_IN), 1 / math.sqrt(FAN_IN)),
    ("tf_simclr", 1 / math.sqrt(FAN_IN), 2 / math.sqrt(FAN_IN) / TRUNC_STD),
    ("haiku", TRUNC_STD / math.sqrt(FAN_IN), 2 / math.sqrt(FAN_IN))])
def test_conv_init_std(scheme, std, bound):
  """Kernel std of a 3x3x256x256 conv (590k weights, so within 1%) against each framework's
  formula, and the truncation bound where there is one."""
  conv = resnet_lib.Conv(256, 3, init_scheme=scheme)
  kernel = conv.init(jax.random.key(0), jnp.zeros((1, 4, 4, 256)))["params"]["Conv_0"]["kernel"]
  assert float(jnp.std(kernel)) == pytest.approx(std, rel=0.01)
  if bound is not None:
    assert float(jnp.abs(kernel).max()) <= bound * (1 + 1e-6)
    assert float(jnp.abs(kernel).max()) >= 0.98 * bound


@pytest.mark.parametrize("scheme, std, max_over_std", [
    ("tf_simclr", 0.01, 4.0), ("haiku", TRUNC_STD / math.sqrt(512), 2 / TRUNC_STD)])
def test_head_dense_init(scheme, std, max_over_std):
  """SimCLR's head layers N(0, 0.01) untruncated (tf2/model.py:143-146); Haiku's Linear
  truncated at +-2 sd of 1/sqrt(fan_in) without rescaling (BYOL's projector)."""
  params = MLPHead((512,), 512, init_scheme=scheme).init(jax.random.key(0),
                                                          jnp.zeros((1, 512)))["params"]
  kernel = params["Dense_0"]["kernel"]
  assert float(jnp.std(kernel)) == pytest.approx(std, rel=0.01)
  if scheme == "haiku":   # cut at exactly 2 / sqrt(fan_in)
    assert float(jnp.abs(kernel).max()) <= 2 / math.sqrt(512) * (1 + 1e-6)
  else:                   # not truncated: some weights beyond 4 sd
    assert float(jnp.abs(kernel).max()) >= max_over_std * std
  np.testing.assert_array_equal(params["Dense_0"]["bias"], 0.0)


@pytest.mark.parametrize("name, arch", [
    ("simclr_v1", ("always", "all", "tf_simclr", "tf_fixed")),
    ("simclr_v2", ("always", "all", "tf_simclr", "tf_fixed")),
    ("byol", ("always", "bottleneck", "haiku", "same")),
    ("simsiam", ("when_needed", "all", "torchvision", "torch")),
    ("moco_v1", ("when_needed", "none", "torchvision", "torch")),
    ("moco_v2", ("when_needed", "none", "torchvision", "torch")),
    ("swav", ("when_needed", "none", "torchvision", "torch")),
    ("dino", ("when_needed", "none", "torchvision", "torch")),
    ("moco_v3", ("when_needed", "all", "torchvision", "torch")),
    ("instdisc", ("when_needed", "none", "torchvision", "torch")),
    ("invaspread", ("when_needed", "none", "torchvision", "torch")),
    ("cmc", ("when_needed", "none", "torchvision", "torch"))])
def test_configs_build_their_originals_resnet(name, arch):
  """The ResNet each config builds, as its original (cited in the config docstrings); the
  cifar10 variants of SimCLR and BYOL build lightly's benchmark ResNet-18 instead."""
  for variant in ("resnet50",) if name in ("dino", "moco_v3") else (None,):
    m = load(name).get_config(variant).model
    backbone = models.backbone(m, jnp.float32)
    assert (backbone.projection_shortcut, backbone.zero_init_residual,
            backbone.init_scheme, backbone.padding) == arch
  if name in ("simclr_v1", "simclr_v2", "byol"):
    m = load(name).get_config("cifar10").model
    assert (m.projection_shortcut, m.zero_init_residual, m.init, m.padding) == (
        "when_needed", "none", "pytorch", "torch")


@pytest.mark.parametrize("field, value", [
    ("projection_shortcut", "sometimes"), ("zero_init_residual", "some"),
    ("init", "xavier"), ("stem_width", -1), ("padding", "valid")])
def test_model_fields_are_validated(field, value):
  c = config_lib.base_config()
  c.model[field] = value
  with pytest.raises(ConfigError, match=f"config.model.{field}="):
    config_lib.validate(c)
