"""InstDisc (Wu et al. 2018), non-parametric instance discrimination, following
zhirongw/lemniscate.pytorch (METHODS.md §1).

One view per image per step. A ResNet + Linear(128) + L2 normalisation embeds it; the
embedding is scored against a memory bank with one row per training example
(`ssl_jax.memory_bank`: size `config.run.num_train_examples`, filled in by train.py) with
NCE over K = 4096 uniform negatives and a Z frozen after the first batch, or with the
full softmax over every row (`config.instdisc.objective="full"`, lemniscate's `--nce-k 0`).
The bank is scored before, and written after, the step: normalize(0.5 row + 0.5 f) at the
gathered indices of the global batch, so all devices hold the same bank. It needs 655 MB
per device for ImageNet (see memory_bank's docstring for why it is replicated); it is the
original's kNN memory too, while `encode` gives backbone features to the library's kNN.

BN runs over the global batch (the original on one GPU; DataParallel's BN was per GPU).
"""
import jax
import jax.numpy as jnp

from ssl_jax import losses, memory_bank, models, parallel
from ssl_jax.methods import common
from ssl_jax.models.encoder import Encoder
from ssl_jax.models.heads import MLPHead


def network(config, axis_name=None) -> Encoder:
  """ResNet + Linear(out_dim) with bias, as torchvision's fc; normalised in the loss."""
  dtype = models.compute_dtype(config.dtype, jax.default_backend())
  return Encoder(models.backbone(config.model, dtype, axis_name),
                 MLPHead((), config.head.out_dim, dtype=dtype))


def views(config):
  return [common.jitter_view(config, config.instdisc.color_jitter)]


def validate(config, device_count=None):
  del device_count
  memory_bank.validate("instdisc", config.instdisc)


def init(rng, config, sample_batch):
  del sample_batch  # shapes come from the config
  net_rng, bank_rng = jax.random.split(rng)
  variables = common.init_variables(network(config), net_rng, config)
  bank = memory_bank.init_bank(bank_rng, memory_bank.bank_size(config), config.head.out_dim)
  return dict(params=variables["params"], batch_stats=variables["batch_stats"],
              method_state=dict(bank=bank, z=jnp.float32(memory_bank.UNSET_Z)))


def loss_fn(params, state, batch, rng, step, *, config):
  del rng   # device-specific; the negatives are drawn per global row from state.rng
  (view,) = batch["views"]
  (h, out), new_vars = network(config, parallel.AXIS).apply(
      {"params": params, "batch_stats": state.batch_stats}, view, train=True,
      mutable=["batch_stats"])
  f = losses.l2_normalize(out)
  ms, settings = state.method_state, config.instdisc
  negatives = None if settings.objective == "full" else memory_bank.draw_negatives(
      state.rng, step, f.shape[0], ms["bank"].shape[0], settings.num_negatives)
  loss, nce_z, positive = memory_bank.loss(
      f, ms["bank"], batch["index"], negatives, ms["z"], objective=settings.objective,
      temperature=config.loss.temperature)
  metrics = dict(embedding_std=common.embedding_std(f), positive_sim=positive)
  if settings.objective == "nce":
    metrics["nce_z"] = nce_z
  return loss, dict(batch_stats=new_vars["batch_stats"], features=jax.lax.stop_gradient(h),
                    embeddings=parallel.gather(jax.lax.stop_gradient(f)),
                    indices=parallel.gather(batch["index"]), z=nce_z, metrics=metrics)


def update(state, new_params, aux, step, *, config):
  """Writes this step's embeddings into the bank (after scoring, as the original) and
  keeps Z (set by the first step, then unchanged)."""
  del new_params, step
  bank = memory_bank.write(state.method_state["bank"], aux["indices"], aux["embeddings"],
                           config.instdisc.memory_momentum)
  return state.replace(batch_stats=aux["batch_stats"], method_state=dict(bank=bank, z=aux["z"]))


EVAL_FEATURES = ("backbone", "embedding", "bank")


def eval_variables(state):
  """The trained weights and, for config.eval.features="bank", the memory bank."""
  return {"params": state.params, "batch_stats": state.batch_stats,
          "bank": state.method_state["bank"]}


def encode(variables, images, config, features=None):
  return common.encode(network(config), variables, images, config, features, common.head_output)
