"""ResNet and projection-head structure (shapes only: eval_shape, no compute)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssl_jax.models import resnet as resnet_lib
from ssl_jax.models.heads import ProjectionHead


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


def test_last_bn_of_each_block_starts_at_zero():
  variables = resnet_lib.resnet(18, width=0.125, cifar_stem=True).init(
      jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  blocks = [v for k, v in variables["params"].items() if k.startswith("Block")]
  assert len(blocks) == 8
  for block in blocks:
    assert float(jnp.abs(block["last_bn"]["scale"]).sum()) == 0.0
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
