"""ViT backbone: shapes, parameter counts, sin-cos embedding, interpolation, frozen patches."""
import math
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ssl_jax import config as config_lib, models, optim
from ssl_jax.errors import ConfigError
from ssl_jax.models import vit
from test_config import load

sys.path.insert(0, "configs")
import moco_v3  # noqa: E402  pylint: disable=wrong-import-position

pytestmark = pytest.mark.usefixtures("fast_compiles")   # tiny programs: compiles dominate


def tiny(**kwargs):
  return vit.ViT(**dict(dict(width=32, depth=2, num_heads=2, patch_size=4, image_size=16),
                        **kwargs))


def count(tree):
  return sum(x.size for x in jax.tree.leaves(tree))


def init(model, x):
  return jax.jit(lambda key: model.init(key, x, train=False))(jax.random.key(0))


def apply(model, variables, x, train=False, seed=0):
  return jax.jit(lambda v, x, key: model.apply(v, x, train=train, rngs={"dropout": key}))(
      variables, x, jax.random.key(seed))


def squared_output_grad(model, params, x):
  return jax.jit(jax.grad(lambda p: jnp.sum(model.apply({"params": p}, x, train=False)**2)))(
      params)


def init_shapes(model, size):
  return jax.eval_shape(lambda k, x: model.init(k, x, train=False), jax.random.key(0),
                        jnp.zeros((1, size, size, 3)))


@pytest.mark.parametrize("size, expected", [("small", 21_665_664), ("base", 85_798_656)])
def test_parameter_counts_without_head(size, expected):
  # timm's counts (learned position embedding, no classifier): ViT-S/16 21.7M, ViT-B/16 85.8M.
  learned = init_shapes(vit.vit(size, num_heads=12, pos_embed="learned"), 224)["params"]
  assert count(learned) == expected
  sincos = init_shapes(vit.vit(size, num_heads=12), 224)["params"]   # fixed: no parameter
  assert count(sincos) == expected - 197 * vit.WIDTHS[size]


def test_presets():
  assert [vit.vit_tiny().width, vit.vit_small().width, vit.vit_base().width] == [192, 384, 768]
  assert vit.vit_small(num_heads=6).depth == 12


@pytest.mark.parametrize("pos_embed", ["sincos", "learned"])
def test_output_is_float32_class_token_and_other_sizes_work(pos_embed):
  model = tiny(pos_embed=pos_embed)
  x = jax.random.uniform(jax.random.key(1), (3, 16, 16, 3))
  variables = init(model, x)
  out = apply(model, variables, x)
  assert out.shape == (3, 32) and out.dtype == jnp.float32
  # 24 px: a 6x6 grid instead of 4x4, with the same parameters.
  bigger = apply(model, variables, jax.random.uniform(jax.random.key(2), (2, 24, 24, 3)))
  assert bigger.shape == (2, 32) and np.all(np.isfinite(bigger))


def test_bfloat16_compute_keeps_float32_params_and_output():
  model = tiny(dtype=jnp.bfloat16)
  x = jnp.ones((2, 16, 16, 3))
  variables = init(model, x)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables))
  assert apply(model, variables, x).dtype == jnp.float32


def test_sincos_matches_the_formula():
  width, grid = 8, 3
  table = vit.sincos_2d(grid, grid, width)
  assert table.shape == (9, 8)
  for token in range(9):
    r, c = divmod(token, grid)
    omega = [10000.0 ** (-d / 2) for d in range(2)]
    expected = ([math.sin(r * w) for w in omega] + [math.cos(r * w) for w in omega]
                + [math.sin(c * w) for w in omega] + [math.cos(c * w) for w in omega])
    np.testing.assert_allclose(table[token], expected, rtol=1e-6, atol=1e-6)


def test_sincos_embedding_is_recomputed_and_class_token_gets_zero():
  model = tiny()
  variables = init(model, jnp.zeros((1, 16, 16, 3)))
  pos = model.apply(variables, (6, 6), method=vit.ViT.position_embedding)
  assert pos.shape == (1, 37, 32)
  np.testing.assert_array_equal(pos[0, 0], 0)
  np.testing.assert_allclose(pos[0, 1:], vit.sincos_2d(6, 6, 32), atol=1e-6)


def test_learned_embedding_is_resized_to_the_new_grid():
  table = jnp.arange(4 * 4 * 2, dtype=jnp.float32).reshape(16, 2)
  assert vit.resize_grid_embedding(table, (4, 4), (4, 4)) is table
  resized = vit.resize_grid_embedding(table, (4, 4), (8, 8))
  assert resized.shape == (64, 2)
  # A constant embedding stays constant under bicubic resizing.
  const = vit.resize_grid_embedding(jnp.ones((16, 2)), (4, 4), (6, 6))
  np.testing.assert_allclose(const, 1.0, rtol=1e-6)


def pytorch_bicubic_matrix(old: int, new: int, scale: float):
  """(new, old) matrix of torch's F.interpolate(mode='bicubic', scale_factor=scale,
  align_corners=False) along one axis, written from PyTorch's rule: output i samples
  x = (i + 0.5) / scale - 0.5, taps floor(x) - 1 .. floor(x) + 2 clamped to the edges,
  cubic convolution weights with a = -0.75."""
  def cubic(d, a=-0.75):
    d = abs(d)
    if d <= 1:
      return ((a + 2) * d - (a + 3)) * d * d + 1
    return ((a * d - 5 * a) * d + 8 * a) * d - 4 * a if d < 2 else 0.0
  matrix = np.zeros((new, old))
  for i in range(new):
    x = (i + 0.5) / scale - 0.5
    base = math.floor(x)
    for tap in range(base - 1, base + 3):
      matrix[i, min(max(tap, 0), old - 1)] += cubic(x - tap)
  return matrix


@pytest.mark.parametrize("old, new", [(14, 6), (4, 7)])
def test_position_embedding_is_interpolated_as_dino(old, new):
  """DINO's interpolate_pos_encoding: bicubic (a = -0.75) at scale (new + 0.1) / old, no
  antialiasing [vision_transformer.py:174-194]; jax.image.resize's default would antialias
  a 14 -> 6 shrink with the a = -0.5 kernel."""
  table = np.random.default_rng(0).normal(size=(old * old, 3)).astype(np.float32)
  resized = np.asarray(vit.resize_grid_embedding(jnp.asarray(table), (old, old), (new, new)))
  m = pytorch_bicubic_matrix(old, new, (new + 0.1) / old)
  expected = np.einsum("ia,jb,abc->ijc", m, m, table.reshape(old, old, 3)).reshape(-1, 3)
  np.testing.assert_allclose(resized, expected, atol=1e-5)
  torch = pytest.importorskip("torch")
  image = torch.from_numpy(table.reshape(old, old, 3)).permute(2, 0, 1)[None]
  reference = torch.nn.functional.interpolate(
      image, scale_factor=((new + 0.1) / old,) * 2, mode="bicubic", align_corners=False)
  np.testing.assert_allclose(resized, reference[0].permute(1, 2, 0).reshape(-1, 3).numpy(),
                             atol=1e-5)


def test_dino_init():
  """DINO's ViT init: Linear layers, class token and position embedding N(0, 0.02) (its
  trunc_normal_ cuts at +-2 absolute, +-100 sd), zero biases; the patch embedding keeps
  PyTorch's Conv2d default, weight and bias U(+-1/sqrt(3 p^2))."""
  model = vit.ViT(width=384, depth=1, num_heads=6, patch_size=8, image_size=16,
                  pos_embed="learned", init_scheme="dino")
  params = init(model, jnp.zeros((1, 16, 16, 3)))["params"]
  block = params["block0"]
  for kernel in (block["Attention_0"]["qkv"]["kernel"], block["fc1"]["kernel"],
                 block["fc2"]["kernel"]):
    assert float(jnp.std(kernel)) == pytest.approx(0.02, rel=0.02)
    assert float(jnp.abs(kernel).max()) > 4 * 0.02     # not cut at 2 sd
  np.testing.assert_array_equal(block["fc1"]["bias"], 0.0)
  for token in (params["cls_token"], params["pos_embed"]):
    assert float(jnp.std(token)) == pytest.approx(0.02, rel=0.15)
  bound = 1 / math.sqrt(3 * 8 * 8)
  for leaf in (params["patch_embed"]["kernel"], params["patch_embed"]["bias"]):
    assert float(jnp.abs(leaf).max()) <= bound
    assert float(jnp.std(leaf)) == pytest.approx(bound / math.sqrt(3), rel=0.15)
  assert models.backbone(load("dino").get_config().model, jnp.float32).init_scheme == "dino"
  assert models.backbone(moco_v3.get_config().model, jnp.float32).init_scheme == "moco_v3"
  config = moco_v3.get_config("smoke")
  config.model.vit_init = "timm"
  with pytest.raises(ConfigError, match="config.model.vit_init="):
    config_lib.validate(config)


def test_drop_path_uses_the_dropout_rng_and_only_in_training():
  model = tiny(drop_path=0.5)
  x = jax.random.uniform(jax.random.key(1), (8, 16, 16, 3))
  variables = init(model, x)
  a = apply(model, variables, x, train=True, seed=1)
  b = apply(model, variables, x, train=True, seed=2)
  assert not np.allclose(a, b)
  np.testing.assert_array_equal(apply(model, variables, x),
                                apply(model, variables, x))


def test_frozen_patch_embedding_gets_no_gradient_and_no_update():
  model = tiny(frozen_patch_embed=True)
  x = jax.random.uniform(jax.random.key(1), (4, 16, 16, 3))
  params = init(model, x)["params"]
  assert "frozen_patch_embed" in params and "patch_embed" not in params
  grads = squared_output_grad(model, params, x)
  assert all(np.all(g == 0) for g in jax.tree.leaves(grads["frozen_patch_embed"]))
  assert any(np.any(g != 0) for g in jax.tree.leaves(grads["block0"]))
  # AdamW with weight decay on every parameter still leaves the frozen ones alone.
  opt = moco_v3.get_config().optimizer
  tx = optim.make_optimizer(opt, 0.1)
  new = jax.jit(lambda p, g: optax.apply_updates(p, tx.update(g, tx.init(p), p)[0]))(
      params, grads)
  for a, b in zip(jax.tree.leaves(params["frozen_patch_embed"]),
                  jax.tree.leaves(new["frozen_patch_embed"])):
    np.testing.assert_array_equal(a, b)
  assert not np.allclose(params["norm"]["bias"] - new["norm"]["bias"], 0)   # decayed/stepped


def test_unfrozen_patch_embedding_trains():
  model = tiny()
  x = jax.random.uniform(jax.random.key(1), (4, 16, 16, 3))
  params = init(model, x)["params"]
  grads = squared_output_grad(model, params, x)
  assert np.any(grads["patch_embed"]["kernel"] != 0)


def test_backbone_dispatch_and_validation():
  config = moco_v3.get_config("smoke")
  model = models.backbone(config.model, jnp.float32, image_size=config.image_size)
  assert isinstance(model, vit.ViT) and model.width == 32 and model.frozen_patch_embed
  config.model.patch_size = 5
  with pytest.raises(ConfigError, match=r"config.image_size=16 .*config.model.patch_size=5"):
    config_lib.validate(config)
  config = moco_v3.get_config("smoke")
  config.model.num_heads = 3
  with pytest.raises(ConfigError, match=r"config.model.num_heads=3"):
    config_lib.validate(config)
  config = moco_v3.get_config("smoke")
  config.model.name = "mlp"
  with pytest.raises(ConfigError, match=r"config.model.name='mlp'.*'vit'"):
    config_lib.validate(config)
