"""Projection heads."""
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

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

  @nn.compact
  def __call__(self, h, train: bool = True):
    outputs = [h]
    hidden = self.hidden_dim or h.shape[-1]
    for i in range(self.num_layers):
      last = i == self.num_layers - 1
      h = nn.Dense(self.out_dim if last else hidden, use_bias=False, dtype=self.dtype,
                   param_dtype=jnp.float32)(h)
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
  no bias).
  """
  hidden_dims: tuple[int, ...] = ()
  out_dim: int = 128
  hidden_bn: bool = False
  out_bias: bool = True
  dtype: Any = jnp.float32
  axis_name: str | None = None

  @nn.compact
  def __call__(self, x, train: bool = True):
    for width in self.hidden_dims:
      x = nn.Dense(width, dtype=self.dtype, param_dtype=jnp.float32)(x)
      if self.hidden_bn:
        x = batch_norm(train, self.axis_name, self.dtype)(x)
      x = nn.relu(x)
    x = nn.Dense(self.out_dim, use_bias=self.out_bias, dtype=self.dtype,
                 param_dtype=jnp.float32)(x)
    return x.astype(jnp.float32)
