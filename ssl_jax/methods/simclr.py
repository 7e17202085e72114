"""SimCLR v1 and v2 (Chen et al. 2020a, 2020c).

Two views of each image go through one ResNet + projection head in a single forward pass
(BN statistics over both views and, with global BN, over every device). NT-Xent uses the
negatives of the whole global batch, gathered across devices with gradients. v1 and v2
differ in config only: head depth (2 vs 3 layers), weight decay, brightness jitter.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp

from ssl_jax import losses, models, parallel
from ssl_jax.data.augment import View
from ssl_jax.methods import common
from ssl_jax.models import inits
from ssl_jax.models.heads import ProjectionHead


class Network(nn.Module):
  """Backbone + projection head; returns [h, head layer 1, ..., z]."""
  backbone: nn.Module
  head: nn.Module

  def __call__(self, x, train: bool = True):
    return self.head(self.backbone(x, train=train), train=train)

  def features(self, x):
    return self.backbone(x, train=False)

  def finetune_features(self, x, layer: int, train: bool = False):
    """Output of head layer `layer` (0 = backbone): where fine-tuning attaches its
    classifier (SimCLR v2 fine-tunes from the head's first layer)."""
    return self(x, train=train)[layer]


def network(config, axis_name=None) -> Network:
  dtype = models.compute_dtype(config.dtype, jax.default_backend())
  head = config.head
  return Network(models.backbone(config.model, dtype, axis_name),
                 ProjectionHead(head.num_layers, head.hidden_dim or None, head.out_dim,
                                dtype, axis_name, init_scheme=inits.head_scheme(config.model.init)))


def views(config) -> list[View]:
  a = config.augment
  view = View.simclr(config.image_size, a.color_strength, crop_scale=tuple(a.crop_scale),
                     crop_ratio=tuple(a.crop_ratio), flip=a.flip, color_prob=a.color_prob,
                     brightness_impl=a.brightness_impl, gray_prob=a.gray_prob,
                     blur_prob=a.blur_prob, solarize_prob=a.solarize_prob,
                     **common.view_semantics(config))
  return [view, view]


def init(rng, config, sample_batch):
  del sample_batch  # shapes come from the config
  variables = common.init_variables(network(config), rng, config)
  return dict(params=variables["params"], batch_stats=variables["batch_stats"],
              method_state={})


def loss_fn(params, state, batch, rng, step, *, config):
  del rng, step
  view_a, view_b = batch["views"]
  n = view_a.shape[0]
  outputs, new_vars = network(config, parallel.AXIS).apply(
      {"params": params, "batch_stats": state.batch_stats},
      jnp.concatenate([view_a, view_b]), train=True, mutable=["batch_stats"])
  z = outputs[-1]
  # The official code sums the two directions per image: 2x the paper's normalisation.
  loss = 2.0 * losses.nt_xent(z[:n], z[n:], config.loss.temperature, parallel.AXIS,
                             config.loss.chunk_size)
  return loss, dict(batch_stats=new_vars["batch_stats"], features=outputs[0][:n],
                    metrics=dict(embedding_std=common.embedding_std(z)))


def update(state, new_params, aux, step, *, config):
  del new_params, step, config
  return state.replace(batch_stats=aux["batch_stats"])


def encode(variables, images, config, features=None):
  return common.encode(network(config), variables, images, config, features)
