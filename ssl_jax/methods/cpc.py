"""CPC for images (van den Oord et al. 2018; Hénaff et al. 2019/20, "CPC v2").

There is no official code; this follows METHODS.md §3: the v2 paper and the DEEPUL
transcription of its appendix pseudocode.

Each augmented crop is cut, on the device, into a G x G grid of overlapping patches
(`data.patches`); every patch gets its own augmentation (flip, colour jitter, greyscale,
colour dropping) and is encoded alone by a ResNet with LayerNorm (v2: BN would let
patches talk through batch statistics), mean-pooled to z[r, c]. A row-causal
PixelCNN-style stack turns the grid into contexts c[r, c] that see rows <= r; a linear
map per offset predicts the 64-d target t = W z of the patch k rows below, for each k in
`cpc.offsets`: (3,) by default, the v2 pseudocode's `range(steps_to_ignore,
steps_to_predict)` with its defaults 2 and 3 (App. A.2 [P~]); DEEPUL loops (3, 4, 5), and
v1 (§3.2) predicts "up to five rows" without saying which near rows it skips; rows 1-2
overlap the context's patch. InfoNCE with no temperature or normalisation scores each
prediction against every target of the global batch (all positions of all images,
gathered across devices, with gradients); the loss is the mean over positions summed over
offsets and over prediction directions (`directions`: v2's final model predicts from
above, below, the left and the right, §4.1 [P~]; each direction is a rotation of the grid
with its own context network and predictors).
"""
import jax
import jax.numpy as jnp

from ssl_jax import losses, models, parallel
from ssl_jax.data import patches as patches_lib
from ssl_jax.data.augment import View
from ssl_jax.errors import ConfigError
from ssl_jax.methods import common
from ssl_jax.models import cpc as cpc_models
from ssl_jax.models import resnet

# Folded into the step's key for the patch augmentation: drawn from the replicated state
# rng and each example's global row, so it does not depend on the device count.
PATCH_STREAM = 2_000_003


def network(config, axis_name=None) -> cpc_models.CPCNetwork:
  dtype = models.compute_dtype(config.dtype, jax.default_backend())
  m, c = config.model, config.cpc
  encoder = resnet.resnet(m.depth, width=m.width, cifar_stem=m.cifar_stem,
                          sk_ratio=m.sk_ratio, dtype=dtype, axis_name=axis_name, norm=c.norm)
  return cpc_models.CPCNetwork(encoder, target_dim=c.target_dim, steps=len(c.offsets),
                               directions=c.directions, context_width=c.context_width,
                               context_blocks=c.context_blocks, context_relu=c.context_relu,
                               emb_scale=c.emb_scale, dtype=dtype)


def patch_spec(config) -> patches_lib.PatchAugment:
  c = config.cpc
  return patches_lib.PatchAugment(
      flip=c.patch_flip, color_prob=c.patch_color_prob, jitter=tuple(c.patch_jitter),
      brightness_impl=c.patch_brightness_impl, gray_prob=c.patch_gray_prob,
      color_drop_prob=c.color_drop_prob, crop_size=c.patch_crop_size)


def views(config):
  """One crop per image (v2: a 260 px crop of the image resized to 300 px); no colour
  changes at the image level: those are per patch."""
  a = config.augment
  return [View(size=config.image_size, crop_scale=tuple(a.crop_scale),
               crop_ratio=tuple(a.crop_ratio), flip=a.flip, color_prob=0.0, gray_prob=0.0,
               blur_prob=0.0, solarize_prob=0.0)]


def grid(config) -> int:
  return patches_lib.grid_size(config.image_size, config.cpc.patch_size, config.cpc.patch_stride)


def validate(config, device_count=None):
  del device_count
  c = config.cpc
  if config.model.name != "resnet":
    raise ConfigError(f"config.model.name={config.model.name!r}: CPC's patch encoder is a "
                      "ResNet; use 'resnet'")
  size, patch, stride = config.image_size, c.patch_size, c.patch_stride
  if not 0 < patch <= size or stride <= 0 or (size - patch) % stride:
    raise ConfigError(f"config.cpc.patch_size={patch} and config.cpc.patch_stride={stride} "
                      f"do not tile config.image_size={size}; image_size - patch_size must "
                      "be a multiple of patch_stride")
  offsets = tuple(c.offsets)
  if not offsets or min(offsets) < 1 or max(offsets) >= grid(config):
    raise ConfigError(f"config.cpc.offsets={offsets} must be rows ahead from 1 to "
                      f"{grid(config) - 1} (the grid has {grid(config)} rows); predict fewer "
                      "rows or use more patches")
  if not 0 <= c.patch_crop_size <= patch:
    raise ConfigError(f"config.cpc.patch_crop_size={c.patch_crop_size} must be in [0, "
                      f"patch_size={patch}] (0 = no per-patch crop)")
  if c.context_relu not in cpc_models.CONTEXT_RELUS:
    raise ConfigError(f"config.cpc.context_relu={c.context_relu!r} is unknown; use one of "
                      f"{cpc_models.CONTEXT_RELUS}")
  if c.directions not in (1, 2, 4):
    raise ConfigError(f"config.cpc.directions={c.directions} is not 1 (top-down), 2 (and "
                      "bottom-up) or 4 (and both horizontal directions)")
  if c.norm not in ("layer", "batch"):
    raise ConfigError(f"config.cpc.norm={c.norm!r} is unknown; use 'layer' (CPC v2) or 'batch'")


def init(rng, config, sample_batch):
  del sample_batch  # shapes come from the config
  g, p = grid(config), config.cpc.patch_size
  variables = network(config).init(rng, jnp.zeros((2, g, g, p, p, 3)), train=True)
  return dict(params=variables["params"], batch_stats=variables.get("batch_stats", {}),
              method_state={})


def info_nce_grid(predictions, targets, offsets, axis_name=None):
  """CPC's loss for one direction: (sum over offsets of the mean CE, mean accuracy).

  predictions: (S, n, G, G, T), prediction s made at (r, c) for the patch at
  (r + offsets[s], c); targets: (n, G, G, T) of this device's images. Every
  prediction is scored against all targets of the (global) batch; rows whose target
  falls off the grid are left out.
  """
  n, g, _, dim = targets.shape
  flat = targets.reshape(n * g * g, dim)
  first = parallel.first_row(n) if axis_name else 0
  every = parallel.gather(flat) if axis_name else flat
  total, correct = 0.0, []
  for s, offset in enumerate(offsets):
    rows = g - offset
    logits = predictions[s, :, :rows].reshape(-1, dim) @ every.T
    b, r, c = jnp.meshgrid(jnp.arange(n), jnp.arange(rows), jnp.arange(g), indexing="ij")
    labels = ((first + b) * g * g + (r + offset) * g + c).reshape(-1)
    total += losses.cross_entropy(logits, labels).mean()
    correct.append(jnp.mean(jnp.argmax(logits, -1) == labels))
  return total, sum(correct) / len(correct)


def patches_of(config, images):
  return patches_lib.patch_grid(images, config.cpc.patch_size, config.cpc.patch_stride)


def loss_fn(params, state, batch, rng, step, *, config):
  del rng   # per-device; the patch augmentation must not depend on the device count
  c = config.cpc
  (x,) = batch["views"]
  n = x.shape[0]
  key = jax.random.fold_in(jax.random.fold_in(state.rng, step), PATCH_STREAM)
  rows = parallel.first_row(n) + jnp.arange(n)
  grid_patches = patches_lib.augment_patches(key, patches_of(config, x), rows,
                                             patch_spec(config))
  (z, targets, predictions), new = network(config, parallel.AXIS).apply(
      {"params": params, "batch_stats": state.batch_stats}, grid_patches, train=True,
      mutable=["batch_stats"])
  loss, accuracy = 0.0, 0.0
  for d, turns in enumerate(cpc_models.quarter_turns(c.directions)):
    l, a = info_nce_grid(predictions[d], cpc_models.rotate(targets, turns),
                         tuple(c.offsets), parallel.AXIS)
    loss, accuracy = loss + l, accuracy + a / c.directions
  features = jax.lax.stop_gradient(z.mean((1, 2)))
  metrics = dict(cpc_accuracy=accuracy, feature_std=jnp.std(features, axis=0).mean())
  return loss, dict(batch_stats=new.get("batch_stats", state.batch_stats), features=features,
                    metrics=metrics)


def update(state, new_params, aux, step, *, config):
  del new_params, step, config
  return state.replace(batch_stats=aux["batch_stats"])


def encode(variables, images, config, features=None):
  """Mean over the grid of the patch encodings of the un-augmented patches."""
  return common.encode(network(config), variables, patches_of(config, images), config,
                       features)
