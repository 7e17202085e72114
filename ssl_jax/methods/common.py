"""Pieces several methods share: views from the config, split-BN groups, collapse metric,
the features evaluation reads."""
import jax
import jax.numpy as jnp

from ssl_jax import losses, parallel
from ssl_jax.data.augment import View


SEMANTICS = ("color_impl", "crop_sampler", "resize_method", "antialias", "blur_per_batch")


def view_semantics(config) -> dict:
  """`config.augment`'s choice of colour ops, crop sampler, resize kernel and blur sigma
  draw, as View keyword arguments (every method's views take them)."""
  return {name: config.augment[name] for name in SEMANTICS}


def jitter_view(config, jitter, **overrides) -> View:
  """A view from `config.augment` with per-component colour jitter strengths.

  `jitter` = (brightness, contrast, saturation, hue), as torchvision's ColorJitter and
  BYOL's TF pipeline take them (MoCo v1: 0.4 x 4; MoCo v2 / BYOL: 0.4, 0.4, 0.2|0.4, 0.1).
  """
  a = config.augment
  brightness, contrast, saturation, hue = jitter
  kwargs = dict(crop_scale=tuple(a.crop_scale), crop_ratio=tuple(a.crop_ratio), flip=a.flip,
                color_prob=a.color_prob, brightness=brightness, contrast=contrast,
                saturation=saturation, hue=hue, brightness_impl=a.brightness_impl,
                gray_prob=a.gray_prob, blur_prob=a.blur_prob, solarize_prob=a.solarize_prob,
                **view_semantics(config))
  kwargs.update(overrides)
  return View(size=config.image_size, **kwargs)


def in_groups(fn, x, groups: int):
  """Runs `fn(x_g) -> (outputs, batch_stats)` on `groups` equal consecutive slices of x.

  Each slice is its own BN batch (split BN: one device behaves like `groups` devices with
  per-device BN). Outputs come back in x's row order; the running statistics are averaged
  over the groups.
  """
  n = x.shape[0]
  outputs, stats = jax.vmap(fn)(x.reshape((groups, n // groups) + x.shape[1:]))
  outputs = jax.tree.map(lambda o: o.reshape((n,) + o.shape[2:]), outputs)
  return outputs, jax.tree.map(lambda s: s.mean(0), stats)


def embedding_std(z):
  """Mean over dimensions of the global per-dimension std of normalised embeddings; a
  collapsed representation gives 0, a spread one about 1/sqrt(dim)."""
  z = losses.l2_normalize(z)
  variance = parallel.global_mean(z**2) - parallel.global_mean(z)**2
  return jnp.sqrt(jnp.maximum(variance, 0)).mean()


def init_variables(net, rng, config, train: bool = True):
  """`net.init` on a dummy batch of two crops of the config's size (shapes come from it)."""
  x = jnp.zeros((2, config.image_size, config.image_size, 3), jnp.float32)
  return net.init(rng, x, train=train)


def encode(net, variables, images, config, features=None, embedding=None):
  """What evaluation reads of `images`: `features` or else config.eval.features, "backbone"
  (`net.features`, pooled and frozen) or, for "embedding" and "bank", the L2-normalised
  `embedding(net, images)`: the method's output (InstDisc's 128-d, MoCo's query)."""
  variables = {k: v for k, v in variables.items() if k in ("params", "batch_stats")}
  if (features or config.eval.features) == "backbone":
    return net.apply(variables, images, method=type(net).features)
  return losses.l2_normalize(net.apply(variables, images, method=embedding))


def head_output(net, images):
  """The head output z of an Encoder-like (h, z) network, BN in inference mode."""
  return net(images, train=False)[1]
