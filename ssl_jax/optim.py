"""Optimizers, parameter masks and learning-rate schedules (optax)."""
import math

import jax
import optax

from ssl_jax.errors import ConfigError


def scaled_lr(opt_config, global_batch: int) -> float:
  """base_lr x B/256 (linear, as most originals) or base_lr x sqrt(B) (SimCLR's sqrt option)."""
  rule = opt_config.lr_scaling
  if rule == "linear":
    return opt_config.base_lr * global_batch / 256
  if rule == "sqrt":
    return opt_config.base_lr * math.sqrt(global_batch)
  if rule == "none":
    return opt_config.base_lr
  raise ConfigError(f"config.optimizer.lr_scaling={rule!r} is unknown; use 'linear', 'sqrt' or 'none'")


def lr_schedule(opt_config, global_batch: int, steps_per_epoch: int, total_steps: int):
  """Linear warmup from 0, then cosine decay to 0 over the remaining steps (per step)."""
  peak = scaled_lr(opt_config, global_batch)
  warmup = min(int(round(opt_config.warmup_epochs * steps_per_epoch)), total_steps)
  if opt_config.schedule == "cosine":
    if warmup == 0:
      return optax.cosine_decay_schedule(peak, max(total_steps, 1))
    return optax.warmup_cosine_decay_schedule(0.0, peak, warmup, max(total_steps, warmup + 1))
  if opt_config.schedule == "constant":
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup),
                                 optax.constant_schedule(peak)], [warmup])
  raise ConfigError(f"config.optimizer.schedule={opt_config.schedule!r} is unknown; "
                    "use 'cosine' or 'constant'")


def kernel_mask(params):
  """True for weight matrices and conv kernels; False for biases and norm parameters.

  SimCLR and BYOL exclude biases and BN parameters from weight decay and from LARS's
  trust-ratio adaptation; in Flax those are every leaf not named `kernel`.
  """
  return jax.tree_util.tree_map_with_path(
      lambda path, _: getattr(path[-1], "key", None) == "kernel", params)


def make_optimizer(opt_config, schedule) -> optax.GradientTransformation:
  name = opt_config.name
  if name == "lars":
    # optax's chain (decay, masked trust ratio, lr, momentum trace) puts the lr inside the
    # momentum buffer, as SimCLR's "classic momentum" LARS does.
    return optax.lars(schedule, weight_decay=opt_config.weight_decay,
                      weight_decay_mask=kernel_mask, trust_ratio_mask=kernel_mask,
                      trust_coefficient=opt_config.trust_coefficient,
                      momentum=opt_config.momentum)
  if name == "sgd":
    return optax.chain(optax.add_decayed_weights(opt_config.weight_decay),
                       optax.sgd(schedule, momentum=opt_config.momentum))
  if name == "adamw":
    return optax.adamw(schedule, weight_decay=opt_config.weight_decay, mask=kernel_mask)
  raise ConfigError(f"config.optimizer.name={name!r} is unknown; use 'lars', 'sgd' or 'adamw'")
