"""Method registry: `get("simclr")` imports `ssl_jax.methods.simclr`.

Every method module exposes pure functions (see ../shared/docs/DESIGN.md):
  views(config) -> list[augment.View]             the augmented views it trains on
  init(rng, config, sample_batch) -> MethodVars    params, batch_stats and method state
  loss_fn(params, state, batch, rng, step) -> (loss, aux)   per-device, inside shard_map
  update(state, new_params, aux, step) -> state   EMA, queues, banks, BN statistics
  encode(variables, images, config, features=None) -> features   what evaluation reads:
                                                  config.eval.features (or `features`),
                                                  via common.encode; EVAL_FEATURES lists
                                                  the choices (default: "backbone")
and optionally
  validate(config, device_count)                  one-line ConfigErrors for its own fields
  adjust_grads(grads, step, *, config) -> grads   after the cross-device mean, before the
                                                  optimizer (gradient clipping, freezing)
  eval_variables(state) -> variables              the weights that kNN, linear evaluation
                                                  and fine-tuning use (default: the trained
                                                  params; DINO: its teacher)
loss_fn's aux holds "metrics" (scalars, averaged over devices), "features" (this
device's stop-gradient backbone features of the first view, for the online linear probe)
and whatever `update` needs.
"""
import importlib

from ssl_jax.errors import ConfigError

NAMES = ("simclr", "moco", "byol", "moco_v3", "simsiam", "invaspread", "cpc", "swav", "dino",
         "instdisc", "cmc")


def get(name: str):
  if name not in NAMES:
    raise ConfigError(f"config.method={name!r} is unknown; use one of {', '.join(NAMES)}")
  return importlib.import_module(f"ssl_jax.methods.{name}")
