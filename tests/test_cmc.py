"""CMC: RGB -> Lab against a colour table, the two-direction loss, per-view encoders, both
banks and both Z constants, 8 devices vs 1, and the command line."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssl_jax import losses, memory_bank
from ssl_jax.data import colorspace
from ssl_jax.methods import cmc
import test_train
from test_config import load
from test_main import smoke_run
from test_instdisc import (BANK, STEP_INDICES, assert_bank_written, on_devices, run_steps,
                           step_view, tiny_config)

pytestmark = pytest.mark.usefixtures("fast_compiles")

# sRGB (D65) -> CIE Lab, as skimage.color.rgb2lab gives them; the a and b extremes of the
# sRGB gamut (green, magenta, blue, yellow) are the ranges CMC normalises with.
COLOUR_TABLE = [
    ((255, 0, 0), (53.241, 80.092, 67.203)),         # red
    ((0, 255, 0), (87.735, -86.183, 83.180)),        # green
    ((0, 0, 255), (32.297, 79.186, -107.857)),       # blue
    ((255, 0, 255), (60.324, 98.233, -60.821)),      # magenta
    ((255, 255, 0), (97.139, -21.555, 94.478)),      # yellow
    ((255, 255, 255), (100.0, 0.0, 0.0)),            # white
    ((0, 0, 0), (0.0, 0.0, 0.0)),                    # black
    ((128, 128, 128), (53.585, 0.0, 0.0)),           # mid grey
]


def test_lab_of_a_colour_table():
  rgb = np.array([c for c, _ in COLOUR_TABLE], np.float32) / 255
  lab = np.asarray(colorspace.rgb_to_lab(rgb))
  np.testing.assert_allclose(lab, np.array([l for _, l in COLOUR_TABLE]), atol=6e-3)


def test_normalised_lab_maps_the_gamut_extremes_to_plus_minus_one():
  rgb = np.array([[0, 0, 0], [255, 255, 255], [0, 255, 0], [255, 0, 255], [0, 0, 255],
                  [255, 255, 0]], np.float32) / 255
  lab = np.asarray(colorspace.normalized_lab(rgb))
  np.testing.assert_allclose(lab[[0, 1], 0], [-1, 1], atol=1e-5)      # L: black, white
  np.testing.assert_allclose(lab[[2, 3], 1], [-1, 1], atol=1e-5)      # a: green, magenta
  np.testing.assert_allclose(lab[[4, 5], 2], [-1, 1], atol=1e-5)      # b: blue, yellow


def collapsed(k, objective, z):
  """Every embedding and bank row the same unit vector: all scores equal 1."""
  f = jnp.tile(jnp.eye(8)[:1], (2, 1))
  ms = dict(bank_l=jnp.tile(f[:1], (BANK, 1)), bank_ab=jnp.tile(f[:1], (BANK, 1)),
            z_l=jnp.float32(z), z_ab=jnp.float32(z))
  negatives = jnp.zeros((2, k), jnp.int32)
  return on_devices(lambda ms: cmc.two_view_loss(f, f, ms, jnp.arange(2), negatives,
                                                 objective=objective, temperature=0.07))(ms)


def test_collapsed_softmax_gives_2_ln_k_plus_1():
  """METHODS.md §4.6: ln(K + 1) per direction, 19.408243 in total for K = 16384."""
  loss, _, _, metrics = collapsed(16384, "softmax", -1.0)
  assert float(loss) == pytest.approx(19.408243, rel=1e-6)
  assert float(metrics["loss_l"]) == pytest.approx(float(metrics["loss_ab"]))


def test_nce_with_every_p_equal_to_k_over_n_gives_2_k_plus_1_ln_2():
  k = 64
  z = np.exp(1 / 0.07) * BANK / k        # P = exp(1 / tau) / Z = K / n
  loss, z_l, z_ab, _ = collapsed(k, "nce", z)
  assert float(loss) == pytest.approx(2 * (k + 1) * np.log(2), rel=1e-5)
  assert float(z_l) == float(z_ab) == pytest.approx(z, rel=1e-6)   # frozen: kept as given


def test_each_view_is_scored_against_the_other_views_bank():
  f_l, f_ab = jnp.eye(8)[:1], jnp.eye(8)[1:2]
  ms = dict(bank_l=jnp.tile(f_l, (BANK, 1)), bank_ab=jnp.tile(f_ab, (BANK, 1)),
            z_l=jnp.float32(-1.0), z_ab=jnp.float32(-1.0))
  negatives = jnp.zeros((1, 4), jnp.int32)
  _, _, _, metrics = on_devices(lambda ms: cmc.two_view_loss(
      f_l, f_ab, ms, jnp.arange(1), negatives, objective="nce", temperature=0.07))(ms)
  assert float(metrics["positive_sim_l"]) == 0.0    # f_L . bank_ab: orthogonal
  assert float(metrics["positive_sim_ab"]) == 0.0   # f_ab . bank_L: orthogonal
  ms = dict(ms, bank_l=ms["bank_ab"], bank_ab=ms["bank_l"])
  _, _, _, metrics = on_devices(lambda ms: cmc.two_view_loss(
      f_l, f_ab, ms, jnp.arange(1), negatives, objective="nce", temperature=0.07))(ms)
  assert float(metrics["positive_sim_l"]) == float(metrics["positive_sim_ab"]) == 1.0


def test_encoders_take_one_and_two_channels_and_features_concatenate():
  config = tiny_config("cmc")
  variables = jax.eval_shape(lambda: cmc.init(jax.random.key(0), config, None))
  params = variables["params"]
  first_conv = lambda p: p["backbone"]["Conv_0"]["Conv_0"]["kernel"].shape   # noqa: E731
  assert first_conv(params["l_encoder"])[2] == 1 and first_conv(params["ab_encoder"])[2] == 2
  assert params["l_encoder"]["head"]["Dense_0"]["kernel"].shape[1] == 128
  features = jax.eval_shape(lambda v: cmc.encode(v, jnp.zeros((2, 16, 16, 3)), config),
                            {"params": params, "batch_stats": variables["batch_stats"]})
  width = cmc.network(config).l_encoder.backbone.num_features
  assert features.shape == (2, 2 * width)
  ms = variables["method_state"]
  assert ms["bank_l"].shape == ms["bank_ab"].shape == (BANK, 128)


# ------------------------------------------------------------------ the real step

@pytest.fixture(scope="module")
def runs():
  assert jax.device_count() == 8
  config = tiny_config("cmc")
  return config, run_steps(config, jax.devices()), run_steps(config, jax.devices()[:1])


@jax.jit
def _embed(variables, view):
  (_, z_l), (_, z_ab) = cmc.network(tiny_config("cmc")).apply(
      variables, view, train=True, mutable=["batch_stats"])[0]
  return losses.l2_normalize(z_l), losses.l2_normalize(z_ab)


def test_both_banks_take_their_views_embeddings_with_momentum(runs):
  config, (states, _), _ = runs
  for t in range(2):
    before, after = states[t].method_state, states[t + 1].method_state
    variables = {"params": states[t].params, "batch_stats": states[t].batch_stats}
    f_l, f_ab = _embed(variables, step_view(states[t], t, cmc, config))
    assert_bank_written(before["bank_l"], after["bank_l"], STEP_INDICES[t], np.asarray(f_l))
    assert_bank_written(before["bank_ab"], after["bank_ab"], STEP_INDICES[t], np.asarray(f_ab))


def test_two_z_constants_set_on_the_first_batch_then_frozen(runs):
  _, (states, _), _ = runs
  z = [(float(s.method_state["z_l"]), float(s.method_state["z_ab"])) for s in states]
  assert z[0] == (memory_bank.UNSET_Z, memory_bank.UNSET_Z)
  assert min(z[1]) > 0 and z[1][0] != z[1][1] and z[2] == z[1]


def test_8_devices_equal_1_device(runs):
  _, (s8, m8), (s1, m1) = runs
  for a, b in zip(m8, m1):
    for key in ("loss", "loss_l", "loss_ab", "grad_norm"):
      np.testing.assert_allclose(a[key], b[key], rtol=2e-5, err_msg=key)
  test_train.assert_states_close(s8[-1], s1[-1])


# --------------------------------------------------------------- configs and CLI

def test_stem_keeps_64_channels_whatever_the_width():
  """CMC models/resnet.py:110-126: conv1 and bn1 have 64 channels; with width 0.5 the first
  stage takes them into 32-plane bottlenecks (64 -> 32 -> 128)."""
  config = load("cmc").get_config()      # ResNet-50 of width 0.5 per view, shapes only
  params = jax.eval_shape(lambda: cmc.network(config).init(
      jax.random.key(0), jnp.zeros((1, 64, 64, 3)), train=True))["params"]
  for encoder, channels in (("l_encoder", 1), ("ab_encoder", 2)):
    backbone = params[encoder]["backbone"]
    assert backbone["Conv_0"]["Conv_0"]["kernel"].shape == (7, 7, channels, 64)
    assert backbone["BatchNorm_0"]["scale"].shape == (64,)
    block = backbone["Block_0"]
    assert block["Conv_0"]["Conv_0"]["kernel"].shape == (1, 1, 64, 128)   # projection
    assert block["Conv_1"]["Conv_0"]["kernel"].shape == (1, 1, 64, 32)
    assert backbone["Block_15"]["last_bn"]["scale"].shape == (1024,)


def test_paper_settings():
  c = load("cmc").get_config()
  assert (c.cmc.objective, c.cmc.num_negatives, c.cmc.memory_momentum) == ("nce", 16384, 0.5)
  assert (c.loss.temperature, c.batch_size, c.model.depth, c.model.width) == (0.07, 128, 50, 0.5)
  assert tuple(c.optimizer.lr_steps_epochs) == (120, 160, 200) and c.num_epochs == 240
  view = cmc.views(c)[0]
  assert (view.color_prob, view.gray_prob, view.flip) == (0.0, 0.0, True)
  assert view.crop_scale == (0.08, 1.0)   # crop_low forced to 0.08 for ResNets


def test_smoke_run_through_the_cli(tmp_path, small_dataset):
  lines = smoke_run("cmc", tmp_path, small_dataset)
  assert lines[0]["nce_z_l"] == lines[2]["nce_z_l"] > 0
