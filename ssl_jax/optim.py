"""Optimizers, parameter masks and learning-rate schedules (optax)."""
import math

import jax
import jax.numpy as jnp
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
  if opt_config.schedule in ("steps", "cosine_epochs"):
    after = epoch_schedule(opt_config, peak, steps_per_epoch, total_steps, warmup)
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), after], [warmup])
  raise ConfigError(f"config.optimizer.schedule={opt_config.schedule!r} is unknown; "
                    "use 'cosine', 'constant', 'steps' or 'cosine_epochs'")


def epoch_schedule(opt_config, peak: float, steps_per_epoch: int, total_steps: int,
                   warmup: int):
  """Schedules that change once per epoch, as MoCo's `adjust_learning_rate` does.

  "steps": x0.1 at each epoch of `lr_steps_epochs`, counted from the run's start (MoCo v1:
  120 and 160 of 200). "cosine_epochs": peak * (1 + cos(pi * epoch / epochs)) / 2 with the
  integer epoch (MoCo v2), over the epochs after the warmup (MoCo has none).
  """
  spe = max(steps_per_epoch, 1)
  if opt_config.schedule == "steps":   # join_schedules counts from the warmup's end
    return optax.piecewise_constant_schedule(
        peak, {int(round(e * spe)) - warmup: 0.1 for e in opt_config.get("lr_steps_epochs", ())})
  epochs = max((total_steps - warmup) / spe, 1e-9)

  def cosine_epochs(count):
    epoch = jnp.floor(count / spe)
    return peak * 0.5 * (1 + jnp.cos(jnp.pi * jnp.minimum(epoch / epochs, 1.0)))
  return cosine_epochs


def kernel_mask(params):
  """True for weight matrices and conv kernels; False for biases and norm parameters.

  SimCLR and BYOL exclude biases and BN parameters from weight decay and from LARS's
  trust-ratio adaptation; in Flax those are every leaf not named `kernel`.
  """
  return jax.tree_util.tree_map_with_path(
      lambda path, _: getattr(path[-1], "key", None) == "kernel", params)


def is_frozen(path) -> bool:
  """Leaves under a module named `frozen_*` (MoCo v3's random patch projection) are fixed."""
  return any(str(getattr(key, "key", "")).startswith("frozen_") for key in path)


def skip_frozen(tx) -> optax.GradientTransformation:
  """`tx` with zero updates (no step, no weight decay) for frozen leaves; same state."""
  def update(updates, state, params=None, **extra):
    updates, state = tx.update(updates, state, params, **extra)
    return jax.tree_util.tree_map_with_path(
        lambda path, u: jnp.zeros_like(u) if is_frozen(path) else u, updates), state
  return optax.GradientTransformationExtraArgs(tx.init, update)


def make_optimizer(opt_config, schedule) -> optax.GradientTransformation:
  fixed = opt_config.get("fixed_lr_module", "")
  if not fixed:
    return skip_frozen(_make_optimizer(opt_config, schedule))
  # SimSiam's --fix-pred-lr: the named top-level module keeps the initial lr while the rest
  # follows the schedule (SimSiam has no warmup, so the initial lr is the peak).
  constant = float(schedule(0)) if callable(schedule) else schedule
  label = lambda params: {k: "fixed" if k == fixed else "scheduled" for k in params}  # noqa: E731
  return skip_frozen(optax.multi_transform(
      {"fixed": _make_optimizer(opt_config, constant),
       "scheduled": _make_optimizer(opt_config, schedule)}, label))


def _make_optimizer(opt_config, schedule) -> optax.GradientTransformation:
  name = opt_config.name
  if name == "lars":
    # optax's chain (decay, masked trust ratio, lr, momentum trace) puts the lr inside the
    # momentum buffer, as SimCLR's "classic momentum" LARS does.
    return optax.lars(schedule, weight_decay=opt_config.weight_decay,
                      weight_decay_mask=kernel_mask, trust_ratio_mask=kernel_mask,
                      trust_coefficient=opt_config.trust_coefficient,
                      momentum=opt_config.momentum)
  if name == "lars_byol":
    # BYOL's chain (also MoCo v3's and DINO's LARS): decay -> trust ratio -> momentum ->
    # x(-lr), so the lr multiplies the momentum buffer instead of sitting inside it.
    return optax.chain(
        optax.add_decayed_weights(opt_config.weight_decay, mask=kernel_mask),
        optax.masked(optax.scale_by_trust_ratio(trust_coefficient=opt_config.trust_coefficient),
                     kernel_mask),
        optax.trace(decay=opt_config.momentum, nesterov=False),
        optax.scale_by_learning_rate(schedule))
  if name == "sgd":
    return optax.chain(optax.add_decayed_weights(opt_config.weight_decay),
                       optax.sgd(schedule, momentum=opt_config.momentum))
  if name == "adamw":   # decay_all: MoCo v3 decays every parameter, biases and norms too
    mask = None if opt_config.get("decay_all", False) else kernel_mask
    return optax.adamw(schedule, weight_decay=opt_config.weight_decay, mask=mask)
  raise ConfigError(f"config.optimizer.name={name!r} is unknown; use 'lars', 'lars_byol', "
                    "'sgd' or 'adamw'")
