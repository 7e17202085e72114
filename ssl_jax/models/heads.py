"""Projection heads. `init_scheme` names the Linear layers' initialiser (`inits.dense`)."""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ssl_jax.models import inits
from ssl_jax.models.resnet import batch_norm


class ProjectionHead(nn.Module):
  """SimCLR's projection head: `num_layers` linear layers, each with BN.

  Hidden layers are Linear(no bias) + BN + ReLU; the output layer is Linear(no bias) + BN
  without the shift (beta), as SimCLR's code does (v1: 2 layers, v2: 3 layers). Returns the
  list of every layer's output, starting with the input, so that fine-tuning can start
  from any layer (SimCLR v2's `ft_proj_selector`).
  """
  num_layers: int = 2
  hidden_dim: int | None = None     # None: the input's width, as SimCLR
  out_dim: int = 128
  dtype: Any = jnp.float32
  axis_name: str | None = None
  out_scale: bool = True            # SimSiam's output BN has no affine parameters at all
  init_scheme: str = "flax"

  @nn.compact
  def __call__(self, h, train: bool = True):
    outputs = [h]
    hidden = self.hidden_dim or h.shape[-1]
    for i in range(self.num_layers):
      last = i == self.num_layers - 1
      h = nn.Dense(self.out_dim if last else hidden, use_bias=False, dtype=self.dtype,
                   param_dtype=jnp.float32, **inits.dense(self.init_scheme, h.shape[-1]))(h)
      h = batch_norm(train, self.axis_name, self.dtype, use_bias=not last,
                     use_scale=self.out_scale or not last)(h)
      if not last:
        h = nn.relu(h)
      outputs.append(h.astype(jnp.float32))
    return outputs


class MLPHead(nn.Module):
  """Dense layers with ReLU between them, BN after each hidden layer if `hidden_bn`.

  MoCo v1: no hidden layer, Linear(128). MoCo v2: Linear(2048) -> ReLU -> Linear(128),
  biases, no BN. BYOL projector and predictor: Linear(4096) -> BN -> ReLU -> Linear(256,
  no bias). SimSiam's predictor: Linear(512, no bias) -> BN -> ReLU -> Linear(2048).
  """
  hidden_dims: tuple[int, ...] = ()
  out_dim: int = 128
  hidden_bn: bool = False
  out_bias: bool = True
  dtype: Any = jnp.float32
  axis_name: str | None = None
  init_scheme: str = "flax"
  hidden_bias: bool = True

  @nn.compact
  def __call__(self, x, train: bool = True):
    for width in self.hidden_dims:
      x = nn.Dense(width, use_bias=self.hidden_bias, dtype=self.dtype, param_dtype=jnp.float32,
                   **inits.dense(self.init_scheme, x.shape[-1]))(x)
      if self.hidden_bn:
        x = batch_norm(train, self.axis_name, self.dtype)(x)
      x = nn.relu(x)
    x = nn.Dense(self.out_dim, use_bias=self.out_bias, dtype=self.dtype,
                 param_dtype=jnp.float32, **inits.dense(self.init_scheme, x.shape[-1]))(x)
    return x.astype(jnp.float32)


class WeightNormDense(nn.Module):
  """Linear without bias whose weight is g * v / ||v|| (torch's weight_norm over each
  output unit's input weights). `learn_scale=False` fixes g at 1 (DINO's norm_last_layer):
  the outputs are cosines with unit-norm prototypes. g is (1, out) as torch's (out, 1), so
  DINO's "ndim > 1" weight-decay rule decays it as the original does.

  Computed in float32 whatever the compute dtype: at DINO's teacher temperature 0.04 a
  bfloat16 cosine's rounding (up to ~0.002) would move a logit by ~0.05."""
  features: int
  learn_scale: bool = False

  @nn.compact
  def __call__(self, x):
    # torch's default Linear init, U(+-1/sqrt(fan_in)); only the direction matters.
    v = self.param("kernel", inits.pytorch_kernel, (x.shape[-1], self.features), jnp.float32)
    w = v / jnp.linalg.norm(v, axis=0, keepdims=True)
    if self.learn_scale:
      w = w * self.param("scale", nn.initializers.ones, (1, self.features), jnp.float32)
    return jnp.dot(x.astype(jnp.float32), w, precision=jax.lax.Precision.HIGHEST)


class DINOHead(nn.Module):
  """DINO's head: MLP (Linear -> [BN] -> GELU, x num_layers - 1, then Linear to the
  bottleneck), L2 normalisation, weight-normalised Linear to `out_dim` named last_layer."""
  out_dim: int = 65536
  hidden_dim: int = 2048
  bottleneck_dim: int = 256
  num_layers: int = 3
  use_bn: bool = False
  norm_last_layer: bool = True
  dtype: Any = jnp.float32
  axis_name: str | None = None
  init_scheme: str = "trunc_normal"   # or "torch": nn.Linear's default (lightly's CIFAR-10 head)

  @nn.compact
  def __call__(self, x, train: bool = True):
    # torch's trunc_normal_(std=0.02) cuts at +-2 (absolute): a plain normal in effect.
    layer_init = lambda: (inits.pytorch_linear(x.shape[-1]) if self.init_scheme == "torch"  # noqa: E731
                          else dict(kernel_init=nn.initializers.normal(0.02)))
    dense = lambda width: nn.Dense(width, dtype=self.dtype, param_dtype=jnp.float32,  # noqa: E731
                                   **layer_init())
    for _ in range(self.num_layers - 1):
      x = dense(self.hidden_dim)(x)
      if self.use_bn:   # torch BatchNorm1d: momentum 0.1, eps 1e-5
        x = batch_norm(train, self.axis_name, self.dtype)(x)
      x = nn.gelu(x, approximate=False)
    x = dense(self.bottleneck_dim)(x).astype(jnp.float32)
    x = x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)  # F.normalize
    return WeightNormDense(self.out_dim, learn_scale=not self.norm_last_layer,
                           name="last_layer")(x)
