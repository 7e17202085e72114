"""CPC's networks: a patch encoder, a row-causal context network and linear predictors.

Shapes are NHWC grids: a batch of N images cut into a G x G grid of patches gives latents
z of shape (N, G, G, D) (each patch encoded on its own and mean-pooled), targets
(N, G, G, target_dim) and, per direction, predictions (steps, N, G, G, target_dim).
"""
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from ssl_jax.models.encoder import normalize_imagenet


CONTEXT_RELUS = ("pseudocode", "deepul")


class ContextNetwork(nn.Module):
  """CPC v2's PixelCNN-style context stack (App. A.2 pseudocode [P~], METHODS.md §3.1).

  Each of `num_blocks` residual blocks: 1x1 conv to `width`, ReLU; 1x3 conv (one zero
  column each side); one zero row on top then a 2x1 valid conv, ReLU; 1x1 conv back to D;
  residual add. relu="pseudocode": no ReLU after the 1x3 conv or between blocks, one after
  the last block; "deepul" (wilson1yan/cs294-158-ssl deepul_helper/tasks/cpc.py:84-111): a
  ReLU after the 1x3 conv and after every residual add but the last. Only the 2x1 conv
  mixes rows and it looks at rows r-1 and r, so context row r depends on latent rows <= r.
  """
  width: int = 256
  num_blocks: int = 5
  relu: str = "pseudocode"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, z):
    conv = lambda features, kernel, padding: nn.Conv(  # noqa: E731
        features, kernel, padding=padding, dtype=self.dtype, param_dtype=jnp.float32)
    deepul = self.relu == "deepul"
    x = z.astype(self.dtype)
    for i in range(self.num_blocks):
      y = nn.relu(conv(self.width, (1, 1), "VALID")(x))
      y = conv(self.width, (1, 3), ((0, 0), (1, 1)))(y)
      y = nn.relu(conv(self.width, (2, 1), ((1, 0), (0, 0)))(nn.relu(y) if deepul else y))
      x = x + conv(z.shape[-1], (1, 1), "VALID")(y)
      if deepul and i < self.num_blocks - 1:
        x = nn.relu(x)
    return x if deepul else nn.relu(x)


def rotate(grid, quarter_turns: int):
  """Rotates (N, G, G, ...) grids so that direction `quarter_turns` reads top to bottom:
  0 = predict rows below from rows above (v1), 2 = above from below, 1 and 3 = columns."""
  return jnp.rot90(grid, quarter_turns, axes=(1, 2))


class CPCNetwork(nn.Module):
  """Patch encoder + one context network and predictor per direction.

  `directions` rotations of the latent grid (see `rotate`) each get their own context
  network and linear predictors W_k (1x1 convs with bias); the target projection (1x1 to
  target_dim) is shared. Predictions are scaled by `emb_scale` (0.1 in the v2 pseudocode).
  """
  encoder: nn.Module
  target_dim: int = 64
  steps: int = 3
  directions: int = 1
  context_width: int = 256
  context_blocks: int = 5
  context_relu: str = "pseudocode"
  emb_scale: float = 0.1
  dtype: Any = jnp.float32

  def setup(self):
    self.to_target = nn.Dense(self.target_dim, dtype=self.dtype, param_dtype=jnp.float32)
    self.contexts = [ContextNetwork(self.context_width, self.context_blocks,
                                    self.context_relu, self.dtype)
                     for _ in range(self.directions)]
    self.predictors = [nn.Dense(self.steps * self.target_dim, dtype=self.dtype,
                                param_dtype=jnp.float32) for _ in range(self.directions)]

  def latents(self, patches, train: bool = True):
    """(N, G, G, P, P, 3) patches in [0, 1] -> (N, G, G, D) mean-pooled encodings."""
    n, g = patches.shape[:2]
    flat = patches.reshape((n * g * g,) + patches.shape[3:])
    return self.encoder(normalize_imagenet(flat), train=train).reshape(n, g, g, -1)

  def context(self, z, direction: int = 0):
    """Context of direction `direction` in its rotated frame: (N, G, G, D)."""
    return self.contexts[direction](rotate(z, quarter_turns(self.directions)[direction]))

  def __call__(self, patches, train: bool = True):
    """Returns (latents, targets, [predictions per direction]), each direction's
    predictions (steps, N, G, G, target_dim) in that direction's rotated frame, and the
    targets in the unrotated frame."""
    z = self.latents(patches, train)
    targets = self.to_target(z.astype(self.dtype)).astype(jnp.float32)
    predictions = []
    for d in range(self.directions):
      p = self.predictors[d](self.context(z, d)).astype(jnp.float32) * self.emb_scale
      p = p.reshape(p.shape[:3] + (self.steps, self.target_dim))
      predictions.append(jnp.moveaxis(p, 3, 0))
    return z.astype(jnp.float32), targets, predictions

  def features(self, patches):
    """Frozen features for evaluation: the mean over the grid of the patch encodings."""
    return self.latents(patches, train=False).mean((1, 2)).astype(jnp.float32)


def quarter_turns(directions: int) -> tuple[int, ...]:
  """1 direction: top-down; 2: top-down and bottom-up; 4: also left-right, right-left."""
  return {1: (0,), 2: (0, 2), 4: (0, 2, 1, 3)}[directions]
