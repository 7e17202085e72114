"""CMC (Tian et al. 2019), Contrastive Multiview Coding with L and ab views, following
HobbitLong/CMC (train_CMC.py, models/resnet.py, NCE/; METHODS.md §4).

One crop per image (random resized crop + flip, no colour jitter) is converted to Lab on
the device (skimage's formula, `ssl_jax.data.colorspace`) and normalised to CMC's Lab
ranges; its L channel and its ab channels are the two views. Each view has its own ResNet
(1 and 2 input channels; `config.model.width` is each encoder's width, 0.5 for the paper's
"R50 L+ab") + Linear(128) + L2 normalisation. Each view's embedding is contrasted against
the *other* view's memory bank (one bank per view, `ssl_jax.memory_bank`) with the same K
negative indices, NCE (two Z constants, each frozen after the first batch) or softmax over
the K + 1 logits; the loss is the sum of the two directions. Both banks are written after
the step with momentum 0.5. `encode` concatenates both encoders' backbone features.

Memory: two replicated banks of n x 128 float32, 1.3 GB per device for ImageNet (see
memory_bank's docstring). BN runs over the global batch (the original under DataParallel
had per-GPU BN).
"""
import flax.linen as nn
import jax
import jax.numpy as jnp

from ssl_jax import losses, memory_bank, models, parallel
from ssl_jax.data import colorspace
from ssl_jax.data.augment import View
from ssl_jax.methods import common
from ssl_jax.models.heads import MLPHead


class ViewEncoder(nn.Module):
  """Backbone + head on already-normalised input channels: returns (h, z)."""
  backbone: nn.Module
  head: nn.Module

  def __call__(self, x, train: bool = True):
    h = self.backbone(x, train=train)
    return h, self.head(h, train=train)


class LabNetwork(nn.Module):
  """RGB in [0, 1] -> normalised Lab -> ((h_L, z_L), (h_ab, z_ab))."""
  l_encoder: ViewEncoder
  ab_encoder: ViewEncoder

  def __call__(self, images, train: bool = True):
    lab = colorspace.normalized_lab(images)
    return self.l_encoder(lab[..., :1], train=train), self.ab_encoder(lab[..., 1:], train=train)

  def features(self, images):
    (h_l, _), (h_ab, _) = self(images, train=False)
    return jnp.concatenate([h_l, h_ab], axis=-1)


def network(config, axis_name=None) -> LabNetwork:
  dtype = models.compute_dtype(config.dtype, jax.default_backend())

  def encoder():
    return ViewEncoder(models.backbone(config.model, dtype, axis_name),
                       MLPHead((), config.head.out_dim, dtype=dtype))
  return LabNetwork(encoder(), encoder())


def views(config):
  """One crop; the L and ab views are split from it inside the network."""
  a = config.augment
  return [View(size=config.image_size, crop_scale=tuple(a.crop_scale),
               crop_ratio=tuple(a.crop_ratio), flip=a.flip, color_prob=0.0, gray_prob=0.0,
               blur_prob=0.0, solarize_prob=0.0, **common.view_semantics(config))]


def validate(config, device_count=None):
  del device_count
  memory_bank.validate("cmc", config.cmc, objectives=("nce", "softmax"))


def init(rng, config, sample_batch):
  del sample_batch  # shapes come from the config
  net_rng, l_rng, ab_rng = jax.random.split(rng, 3)
  variables = common.init_variables(network(config), net_rng, config)
  n, dim = memory_bank.bank_size(config), config.head.out_dim
  unset = jnp.float32(memory_bank.UNSET_Z)
  return dict(params=variables["params"], batch_stats=variables["batch_stats"],
              method_state=dict(bank_l=memory_bank.init_bank(l_rng, n, dim),
                                bank_ab=memory_bank.init_bank(ab_rng, n, dim),
                                z_l=unset, z_ab=jnp.copy(unset)))


def two_view_loss(f_l, f_ab, ms, positives, negatives, *, objective, temperature):
  """L against the ab bank plus ab against the L bank (`ms`: the method state); returns
  (loss, Z_l, Z_ab, metrics)."""
  kwargs = dict(objective=objective, temperature=temperature)
  loss_l, z_l, pos_l = memory_bank.loss(f_l, ms["bank_ab"], positives, negatives, ms["z_l"],
                                        **kwargs)
  loss_ab, z_ab, pos_ab = memory_bank.loss(f_ab, ms["bank_l"], positives, negatives,
                                           ms["z_ab"], **kwargs)
  metrics = dict(loss_l=loss_l, loss_ab=loss_ab, positive_sim_l=pos_l, positive_sim_ab=pos_ab)
  return loss_l + loss_ab, z_l, z_ab, metrics


def loss_fn(params, state, batch, rng, step, *, config):
  del rng   # device-specific; the negatives are drawn per global row from state.rng
  (view,) = batch["views"]
  ((h_l, out_l), (h_ab, out_ab)), new_vars = network(config, parallel.AXIS).apply(
      {"params": params, "batch_stats": state.batch_stats}, view, train=True,
      mutable=["batch_stats"])
  f_l, f_ab = losses.l2_normalize(out_l), losses.l2_normalize(out_ab)
  ms, settings = state.method_state, config.cmc
  negatives = memory_bank.draw_negatives(state.rng, step, f_l.shape[0], ms["bank_l"].shape[0],
                                         settings.num_negatives)
  loss, z_l, z_ab, metrics = two_view_loss(
      f_l, f_ab, ms, batch["index"], negatives, objective=settings.objective,
      temperature=config.loss.temperature)
  metrics.update(embedding_std=common.embedding_std(f_l))
  if settings.objective == "nce":
    metrics.update(nce_z_l=z_l, nce_z_ab=z_ab)
  gather = lambda x: parallel.gather(jax.lax.stop_gradient(x))   # noqa: E731
  features = jnp.concatenate([h_l, h_ab], axis=-1)
  return loss, dict(batch_stats=new_vars["batch_stats"],
                    features=jax.lax.stop_gradient(features), embeddings_l=gather(f_l),
                    embeddings_ab=gather(f_ab), indices=gather(batch["index"]), z_l=z_l,
                    z_ab=z_ab, metrics=metrics)


def update(state, new_params, aux, step, *, config):
  """Both banks take this step's embeddings of their own view (after scoring)."""
  del new_params, step
  ms, m = state.method_state, config.cmc.memory_momentum
  return state.replace(batch_stats=aux["batch_stats"], method_state=dict(
      bank_l=memory_bank.write(ms["bank_l"], aux["indices"], aux["embeddings_l"], m),
      bank_ab=memory_bank.write(ms["bank_ab"], aux["indices"], aux["embeddings_ab"], m),
      z_l=aux["z_l"], z_ab=aux["z_ab"]))


EVAL_FEATURES = ("backbone", "embedding", "bank")


def embedding(net, images):
  """Both views' L2-normalised 128-d embeddings, concatenated (normalised again by
  common.encode): the rows of `eval_variables`' bank."""
  (_, z_l), (_, z_ab) = net(images, train=False)
  return jnp.concatenate([losses.l2_normalize(z_l), losses.l2_normalize(z_ab)], axis=-1)


def eval_variables(state):
  """The trained weights and, for config.eval.features="bank", both banks side by side."""
  ms = state.method_state
  bank = losses.l2_normalize(jnp.concatenate([ms["bank_l"], ms["bank_ab"]], axis=-1))
  return {"params": state.params, "batch_stats": state.batch_stats, "bank": bank}


def encode(variables, images, config, features=None):
  return common.encode(network(config), variables, images, config, features, embedding)
