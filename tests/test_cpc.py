"""CPC: the InfoNCE over a patch grid against METHODS.md §3.6, the context network's
causal mask, patch-grid positions, per-patch augmentation, global negatives on 8 devices
vs 1, validation and the command line."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from ssl_jax import parallel
from ssl_jax.data import patches as patches_lib
from ssl_jax.errors import ConfigError
from ssl_jax.methods import cpc
from ssl_jax.models import cpc as cpc_models
from ssl_jax.models.encoder import IMAGENET_MEAN
from test_config import load
from test_main import smoke_run
from test_train import one_step, random_batch

pytestmark = pytest.mark.usefixtures("fast_compiles")


# ---------------------------------------------------------------------------- loss

@pytest.mark.parametrize("offsets, expected", [((3,), 4.584967), ((3, 4, 5), 13.754902)])
def test_zero_predictions_give_log_of_all_targets(offsets, expected):
  """§3.6 (a): every logit 0, so CE = ln(N * 49) per offset; N = 2: ln 98 = 4.584967 for
  the v2 pseudocode's one offset, 3 ln 98 = 13.754902 for DEEPUL's three."""
  targets = jnp.asarray(np.random.default_rng(0).normal(size=(2, 7, 7, 64)), jnp.float32)
  loss, _ = cpc.info_nce_grid(jnp.zeros((len(offsets), 2, 7, 7, 64)), targets, offsets)
  assert float(loss) == pytest.approx(expected, rel=1e-6)


def test_defaults_are_the_papers():
  """v2 pseudocode: one target 3 rows below, ReLUs as App. A.2; v2's final model: 4
  directions; v1: a 60 x 60 window of each 64 x 64 patch. cifar10 is our own protocol."""
  c = load("cpc").get_config().cpc
  assert (tuple(c.offsets), c.directions, c.context_relu, c.patch_crop_size) == (
      (3,), 4, "pseudocode", 60)
  assert "our own protocol" in load("cpc").__doc__.lower()


def test_predicting_each_target_exactly_drives_the_loss_to_zero():
  """§3.6 (b): orthogonal targets, prediction at (r, c) for offset k = L * t[r + k, c];
  also checks that offset s + 3 is scored against row r + s + 3."""
  g, scale = 7, 50.0
  targets = jnp.eye(64)[:g * g].reshape(1, g, g, 64)
  predictions = jnp.stack([scale * jnp.roll(targets, -(s + 3), axis=1) for s in range(3)])
  loss, accuracy = cpc.info_nce_grid(predictions, targets, (3, 4, 5))
  assert float(loss) < 1e-6 and float(accuracy) == 1.0
  wrong = jnp.stack([scale * jnp.roll(targets, -(s + 2), axis=1) for s in range(3)])
  assert float(cpc.info_nce_grid(wrong, targets, (3, 4, 5))[0]) > 100


def test_global_negatives_on_8_devices_equal_one_batch():
  rng = np.random.default_rng(1)
  predictions = jnp.asarray(rng.normal(size=(3, 16, 7, 7, 8)), jnp.float32)
  targets = jnp.asarray(rng.normal(size=(16, 7, 7, 8)), jnp.float32)
  mesh = parallel.make_mesh(jax.devices())

  def local(p, t):
    (loss, accuracy), grads = jax.value_and_grad(
        lambda p, t: cpc.info_nce_grid(p, t, (3, 4, 5), parallel.AXIS), argnums=(0, 1),
        has_aux=True)(p, t)
    return jax.lax.pmean((loss, accuracy), parallel.AXIS), grads
  (loss, accuracy), grads = jax.jit(jax.shard_map(
      local, mesh=mesh, in_specs=(P(None, parallel.AXIS), P(parallel.AXIS)),
      out_specs=((P(), P()), (P(None, parallel.AXIS), P(parallel.AXIS)))))(predictions, targets)
  (expected, expected_accuracy), expected_grads = jax.value_and_grad(
      lambda p, t: cpc.info_nce_grid(p, t, (3, 4, 5)), argnums=(0, 1), has_aux=True)(
          predictions, targets)
  assert float(loss) == pytest.approx(float(expected), rel=1e-5)
  assert float(accuracy) == pytest.approx(float(expected_accuracy))
  for g, e in zip(grads, expected_grads):   # each device's grads are 8x the global mean's
    np.testing.assert_allclose(np.asarray(g) / 8, e, rtol=1e-4, atol=1e-7)


# -------------------------------------------------------------- context and grid

def test_context_row_r_never_sees_rows_below():
  """d context[:, r] / d z[:, r'] is zero for r' > r; non-zero for r - 5 <= r' <= r (each
  of the 5 blocks reaches one row further up)."""
  g = 7
  z = jnp.asarray(np.random.default_rng(2).normal(size=(1, g, g, 8)), jnp.float32)
  net = cpc_models.ContextNetwork(width=16, num_blocks=5)
  params = net.init(jax.random.key(0), z)
  jacobian = jax.jacobian(lambda z: net.apply(params, z))(z)   # (1, G, G, 8, 1, G, G, 8)
  reach = np.abs(np.asarray(jacobian)).sum(axis=(0, 2, 3, 4, 6, 7))   # (row out, row in)
  above = np.subtract.outer(np.arange(g), np.arange(g))    # r - r'
  np.testing.assert_array_equal(reach > 0, (above >= 0) & (above <= 5))


def context_by_hand(params, z, blocks: int, deepul: bool):
  """The context stack written out with shifts: 1x3 = columns c-1, c, c+1 (zero padded);
  2x1 after a zero row on top = rows r-1, r."""
  relu = lambda v: np.maximum(v, 0)  # noqa: E731
  conv = lambda i: (np.asarray(params[f"Conv_{i}"]["kernel"]),  # noqa: E731
                    np.asarray(params[f"Conv_{i}"]["bias"]))
  x = np.asarray(z)
  for b in range(blocks):
    (w1, b1), (w3, b3), (w2, b2), (w4, b4) = (conv(4 * b + k) for k in range(4))
    y = relu(x @ w1[0, 0] + b1)
    padded = np.pad(y, ((0, 0), (0, 0), (1, 1), (0, 0)))
    y = sum(padded[:, :, k:k + y.shape[2]] @ w3[0, k] for k in range(3)) + b3
    y = relu(y) if deepul else y
    above = np.pad(y, ((0, 0), (1, 0), (0, 0), (0, 0)))[:, :-1]
    y = relu(above @ w2[0, 0] + y @ w2[1, 0] + b2)
    x = x + y @ w4[0, 0] + b4
    if deepul and b < blocks - 1:
      x = relu(x)
  return x if deepul else relu(x)


@pytest.mark.parametrize("relu", ["pseudocode", "deepul"])
def test_context_network_relus(relu):
  """pseudocode: no ReLU after the 1x3 conv or between blocks, one after the stack;
  deepul: both, and none after the last block."""
  z = jnp.asarray(np.random.default_rng(5).normal(size=(2, 4, 4, 6)), jnp.float32)
  net = cpc_models.ContextNetwork(width=8, num_blocks=2, relu=relu)
  params = net.init(jax.random.key(1), z)
  np.testing.assert_allclose(net.apply(params, z),
                             context_by_hand(params["params"], z, 2, relu == "deepul"),
                             rtol=1e-4, atol=1e-5)


def test_rotations_give_the_other_directions():
  """Direction 2 (bottom-up) read in the image frame: context row r sees rows >= r only."""
  g = 5
  z = jnp.asarray(np.random.default_rng(3).normal(size=(1, g, g, 4)), jnp.float32)
  net = cpc_models.ContextNetwork(width=8, num_blocks=2)
  params = net.init(jax.random.key(0), z)
  up = lambda z: cpc_models.rotate(net.apply(params, cpc_models.rotate(z, 2)), -2)  # noqa: E731
  reach = np.abs(np.asarray(jax.jacobian(up)(z))).sum(axis=(0, 2, 3, 4, 6, 7))
  below = np.subtract.outer(np.arange(g), np.arange(g)) * -1   # r' - r
  np.testing.assert_array_equal(reach > 0, (below >= 0) & (below <= 2))
  assert cpc_models.quarter_turns(4) == (0, 2, 1, 3)


@pytest.mark.parametrize("size, patch, stride, grid", [(32, 8, 4, 7), (256, 64, 32, 7),
                                                       (260, 80, 36, 6)])
def test_patch_grid_positions(size, patch, stride, grid):
  ys, xs = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
  images = np.stack([ys, xs, ys * 0], axis=-1)[None].astype(np.int32)
  out = np.asarray(patches_lib.patch_grid(jnp.asarray(images), patch, stride))
  assert out.shape == (1, grid, grid, patch, patch, 3)
  for r, c in [(0, 0), (grid - 1, 2), (3, grid - 1)]:
    assert out[0, r, c, 0, 0, 0] == r * stride and out[0, r, c, 0, 0, 1] == c * stride
    assert out[0, r, c, -1, -1, 0] == r * stride + patch - 1
  assert out[0, 1, 0, 0, 0, 0] == out[0, 0, 0, stride, 0, 0]   # 50% overlap


def test_every_patch_is_augmented_on_its_own():
  """Identical patches come out different; the same keys and rows repeat; colour dropping
  keeps one channel and sets the others to their mean."""
  flat = jnp.full((2, 3, 3, 4, 4, 3), 0.3) + jnp.linspace(0, 0.4, 16).reshape(4, 4, 1)
  spec = patches_lib.PatchAugment()
  out = patches_lib.augment_patches(jax.random.key(0), flat, jnp.arange(2), spec)
  again = patches_lib.augment_patches(jax.random.key(0), flat, jnp.arange(2), spec)
  np.testing.assert_array_equal(out, again)
  distinct = {np.asarray(p).tobytes() for p in out.reshape(-1, 4, 4, 3)}
  assert len(distinct) == 18
  mean = np.asarray(IMAGENET_MEAN, np.float32)
  kept = [np.sum(np.any(np.abs(np.asarray(p) - mean) > 1e-6, axis=(0, 1)))
          for p in out.reshape(-1, 4, 4, 3)]
  assert set(kept) == {1}
  shifted = patches_lib.augment_patches(jax.random.key(0), flat, jnp.arange(1, 3), spec)
  np.testing.assert_array_equal(shifted[0], out[1])   # keyed by the global row


def test_patch_crop_keeps_one_random_window_in_place():
  """v1's jitter: a 3 x 3 window of each 4 x 4 patch keeps its pixels where they were; the
  rest is the ImageNet mean (0 after normalisation); windows differ between patches."""
  patch = jnp.asarray(np.random.default_rng(6).uniform(size=(4, 4, 3)), jnp.float32)
  mean = np.asarray(IMAGENET_MEAN, np.float32)
  windows = set()
  for seed in range(12):
    out = np.asarray(patches_lib.crop_in_place(jax.random.key(seed), patch, 3))
    kept = np.all(out == np.asarray(patch), axis=-1)
    rows, cols = np.nonzero(kept)
    top, left = rows.min(), cols.min()
    assert kept.sum() == 9 and kept[top:top + 3, left:left + 3].all()
    np.testing.assert_array_equal(out[~kept], np.broadcast_to(mean, out[~kept].shape))
    windows.add((top, left))
  assert len(windows) > 1
  spec = patches_lib.PatchAugment(flip=False, color_prob=0.0, gray_prob=0.0,
                                  color_drop_prob=0.0, crop_size=3)
  out = np.asarray(patches_lib.augment_patch(jax.random.key(0), patch, spec))
  assert np.sum(np.all(out == np.asarray(patch), axis=-1)) == 9


# ------------------------------------------------------------------ model and step

def test_encoder_uses_layer_norm_and_eval_features_are_grid_means():
  config = load("cpc").get_config("smoke")
  variables = jax.jit(lambda rng: cpc.init(rng, config, None))(jax.random.key(0))
  assert variables["batch_stats"] == {}
  names = {str(k.key) for path, _ in jax.tree_util.tree_leaves_with_path(variables["params"])
           for k in path}
  assert any(n.startswith("LayerNorm") for n in names)
  assert not any(n.startswith("BatchNorm") for n in names)
  images = jnp.asarray(np.random.default_rng(4).uniform(size=(2, 16, 16, 3)), jnp.float32)
  variables = {"params": variables["params"], "batch_stats": {}}
  features = cpc.encode(variables, images, config)
  net = cpc.network(config)
  latents = net.apply(variables, cpc.patches_of(config, images), train=False,
                      method=cpc_models.CPCNetwork.latents)
  np.testing.assert_allclose(features, latents.mean((1, 2)), rtol=1e-5, atol=1e-6)


def test_8_devices_equal_1_device():
  """SGD here: Adam turns float noise in the target bias's gradient (exactly 0 in exact
  arithmetic: a shift of every target leaves the softmax unchanged) into +-lr steps. That
  noise still moves the 4-element bias by ~4e-5 under SGD, hence atol 1e-4 on params."""
  config = load("cpc").get_config("smoke")
  config.cpc.directions = 2
  config.optimizer.update(name="sgd", base_lr=0.1, momentum=0.9)
  batch = random_batch()
  (s1, m1), (s8, m8) = (one_step(config, devices, batch)
                        for devices in (jax.devices()[:1], jax.devices()))
  np.testing.assert_allclose(m8["loss"], m1["loss"], rtol=1e-5)
  np.testing.assert_allclose(m8["cpc_accuracy"], m1["cpc_accuracy"], atol=1e-6)
  np.testing.assert_allclose(m8["grad_norm"], m1["grad_norm"], rtol=1e-4)
  for a, b in zip(jax.tree.leaves(s1.params), jax.tree.leaves(s8.params)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("field, value, message", [
    ("patch_stride", 5, "config.cpc.patch_size=8 and config.cpc.patch_stride=5"),
    ("offsets", (1, 3), r"config.cpc.offsets=\(1, 3\) must be rows ahead from 1 to 2"),
    ("context_relu", "all", "config.cpc.context_relu='all' is unknown"),
    ("patch_crop_size", 9, r"config.cpc.patch_crop_size=9 must be in \[0, patch_size=8\]"),
    ("directions", 3, "config.cpc.directions=3"),
])
def test_bad_grid_settings_give_one_line(field, value, message):
  config = load("cpc").get_config("smoke")
  config.cpc[field] = value
  with pytest.raises(ConfigError, match=message):
    cpc.validate(config)


def test_smoke_run_through_the_cli(tmp_path, small_dataset):
  smoke_run("cpc", tmp_path, small_dataset)
