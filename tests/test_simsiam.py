"""SimSiam: the loss and its stop-gradient, the heads, the fixed predictor lr, 8 devices
vs 1, and the command line."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from ssl_jax import optim
from ssl_jax.errors import ConfigError
from ssl_jax.methods import simsiam
from test_config import load
from test_main import smoke_run
from test_train import one_step, random_batch

pytestmark = pytest.mark.usefixtures("fast_compiles")


@pytest.mark.parametrize("sign, expected", [(1.0, -1.0), (0.0, 0.0), (-1.0, 1.0)])
def test_loss_values(sign, expected):
  """Aligned -1, orthogonal 0, antipodal +1 (METHODS.md §11.6)."""
  p = jnp.array([[2.0, 0.0], [0.0, 0.5]])
  z = sign * p if sign else jnp.array([[0.0, 3.0], [1.0, 0.0]])
  np.testing.assert_allclose(simsiam.symmetric_loss(p, p, z, z), expected, atol=1e-6)


def test_stop_gradient_stops_the_projection_branch():
  rng = np.random.default_rng(0)
  p1, p2, z1, z2 = (jnp.asarray(x) for x in rng.normal(size=(4, 3, 5)))
  grads = jax.grad(simsiam.symmetric_loss, argnums=(0, 1, 2, 3))(p1, p2, z1, z2)
  assert float(jnp.abs(grads[0]).sum()) > 0 and float(jnp.abs(grads[1]).sum()) > 0
  assert float(jnp.abs(grads[2]).sum()) == 0.0 and float(jnp.abs(grads[3]).sum()) == 0.0


def test_heads_follow_the_original():
  config = load("simsiam").get_config()       # ImageNet sizes, shapes only
  variables = jax.eval_shape(lambda: simsiam.network(config).init(
      jax.random.key(0), jnp.zeros((1, 64, 64, 3)), train=True))
  projector = variables["params"]["encoder"]["head"]
  assert [projector[f"Dense_{i}"]["kernel"].shape for i in range(3)] == [(2048, 2048)] * 3
  assert "BatchNorm_2" not in projector       # the output BN has no affine parameters
  assert set(projector["BatchNorm_1"]) == {"scale", "bias"}
  predictor = variables["params"]["predictor"]
  shapes = sorted(leaf.shape for leaf in jax.tree.leaves(predictor))
  assert (2048, 512) in shapes and (512, 2048) in shapes and (2048,) in shapes  # output bias
  assert set(predictor["Dense_0"]) == {"kernel"}   # the hidden Linear has no bias (:39-42)
  assert set(predictor["Dense_1"]) == {"kernel", "bias"}


def test_heads_keep_pytorchs_linear_init():
  """Every head Linear: weight and bias U(+-1/sqrt(fan_in)), so the weight's std is
  1/sqrt(3 fan_in) (Flax's default would be 1/sqrt(fan_in)) [builder.py:24-42]."""
  config = load("simsiam").get_config("smoke")
  config.head.update(hidden_dim=1024, out_dim=512)
  config.simsiam.predictor_hidden_dim = 256
  net = simsiam.network(config)
  projector = net.encoder.head.init(jax.random.key(0), jnp.zeros((2, 1024)))["params"]
  predictor = net.predictor.init(jax.random.key(1), jnp.zeros((2, 512)))["params"]
  layers = [projector["Dense_0"], projector["Dense_1"], predictor["Dense_0"],
            predictor["Dense_1"]]
  for layer in layers:
    kernel = layer["kernel"]
    bound = 1 / np.sqrt(kernel.shape[0])
    assert float(jnp.abs(kernel).max()) <= bound
    assert float(jnp.std(kernel)) == pytest.approx(bound / np.sqrt(3), rel=0.02)
  bias = predictor["Dense_1"]["bias"]
  assert float(jnp.abs(bias).max()) <= 1 / np.sqrt(256)
  assert float(jnp.std(bias)) == pytest.approx(1 / np.sqrt(3 * 256), rel=0.1)


def test_predictor_lr_stays_fixed_while_the_rest_decays():
  opt = ml_collections.ConfigDict(dict(name="sgd", weight_decay=0.0, momentum=0.0,
                                       fixed_lr_module="predictor"))
  schedule = lambda step: 0.1 * (1.0 - step / 10)   # noqa: E731
  tx = optim.make_optimizer(opt, schedule)
  params = {"encoder": {"kernel": jnp.ones(2)}, "predictor": {"kernel": jnp.ones(2)}}
  grads = jax.tree.map(jnp.ones_like, params)
  state = tx.init(params)
  for step in range(6):
    updates, state = tx.update(grads, state, params)
  np.testing.assert_allclose(updates["predictor"]["kernel"], -0.1, rtol=1e-6)
  np.testing.assert_allclose(updates["encoder"]["kernel"], -0.1 * (1 - 5 / 10), rtol=1e-6)


def test_warmup_with_a_fixed_predictor_lr_is_rejected():
  config = load("simsiam").get_config("smoke")
  config.optimizer.warmup_epochs = 1
  with pytest.raises(ConfigError, match="config.optimizer.warmup_epochs=1"):
    simsiam.validate(config)


def test_8_devices_equal_1_device():
  config = load("simsiam").get_config("smoke")
  config.batch_size = 16
  batch = random_batch()
  (s1, m1), (s8, m8) = (one_step(config, devices, batch)
                        for devices in (jax.devices()[:1], jax.devices()))
  np.testing.assert_allclose(m8["loss"], m1["loss"], rtol=1e-5, atol=1e-6)
  for a, b in zip(jax.tree.leaves(s1.params), jax.tree.leaves(s8.params)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_smoke_run_through_the_cli(tmp_path, small_dataset):
  lines = smoke_run("simsiam", tmp_path, small_dataset, positive_loss=False)
  assert all(-1.0 <= l["loss"] <= 1.0 for l in lines[:3])   # a negative cosine
