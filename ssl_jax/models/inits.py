"""Weight initialisers of the originals' frameworks, in one place for every model.

- "pytorch": PyTorch's own default for nn.Linear and nn.Conv2d (kaiming_uniform, a = sqrt(5)):
  weight and bias U(-1/sqrt(fan_in), 1/sqrt(fan_in)), so the weight's std is
  1/sqrt(3 fan_in) [pytorch/pytorch torch/nn/modules/linear.py, conv.py reset_parameters].
- "torchvision": torchvision's ResNet convs, kaiming_normal (fan_out, gain sqrt(2)); CMC's
  normal(0, sqrt(2 / (k^2 C_out))) is the same.
- "tf_simclr": SimCLR's convs, tf.keras.initializers.VarianceScaling() defaults: scale 1,
  fan_in, truncated normal at +-2 sd rescaled to std sqrt(1/fan_in) (JAX's variance_scaling
  does the same rescaling) [google-research/simclr tf2/resnet.py:202]; its dense layers
  N(0, 0.01), not truncated [tf2/model.py:143-146].
- "haiku": Haiku's default for Conv and Linear (BYOL): a normal of std 1/sqrt(fan_in) cut at
  +-2 sd *without* rescaling, so the std is about 0.88/sqrt(fan_in); biases 0
  [deepmind/dm-haiku haiku/_src/conv.py, basic.py, initializers.py].
- "flax": Flax's Dense default (lecun normal, zero bias): the library's choice for heads
  whose original init is not reproduced.
"""
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

CONV_SCHEMES = ("torchvision", "pytorch", "tf_simclr", "haiku")
DENSE_SCHEMES = ("flax", "pytorch", "tf_simclr", "haiku")


def uniform(bound: float):
  """U(-bound, bound)."""
  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)
  return init


def haiku_truncated_normal(key, shape, dtype=jnp.float32):
  """Haiku's TruncatedNormal(1/sqrt(fan_in)): fan_in = all axes but the last."""
  stddev = 1.0 / math.sqrt(math.prod(shape[:-1]))
  return jax.random.truncated_normal(key, -2.0, 2.0, shape, dtype) * stddev


pytorch_kernel = nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")

CONV = {
    "torchvision": nn.initializers.variance_scaling(2.0, "fan_out", "normal"),
    "pytorch": pytorch_kernel,
    "tf_simclr": nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal"),
    "haiku": haiku_truncated_normal,
}


def pytorch_linear(fan_in: int) -> dict:
  """nn.Linear's default: kernel and bias U(+-1/sqrt(fan_in)). The bias must not start at 0
  where a method uses LARC: a zero-norm tensor takes its raw gradient (trust 1), an
  lr-sized step the original never takes."""
  return dict(kernel_init=pytorch_kernel, bias_init=uniform(1.0 / math.sqrt(fan_in)))


def dense(scheme: str, fan_in: int) -> dict:
  """kernel_init / bias_init keyword arguments of an nn.Dense under `scheme`."""
  if scheme == "pytorch":
    return pytorch_linear(fan_in)
  if scheme == "tf_simclr":
    return dict(kernel_init=nn.initializers.normal(0.01))
  if scheme == "haiku":
    return dict(kernel_init=haiku_truncated_normal)
  if scheme == "flax":
    return {}
  raise ValueError(f"dense init {scheme!r} is not one of {DENSE_SCHEMES}")


def head_scheme(model_init: str) -> str:
  """The dense init that goes with a backbone init for the methods whose heads follow it
  (SimCLR, BYOL): the same framework's, Flax's default beside torchvision convs."""
  return "flax" if model_init == "torchvision" else model_init
