"""Optimizers, parameter masks and learning-rate schedules (optax)."""
import math
from typing import Any, NamedTuple

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
  """Linear warmup from 0, then cosine decay to `final_lr` over the remaining steps (per step).

  `final_lr` is absolute, as SwAV's `--final_lr` and DINO's `--min_lr` are (default 0).
  """
  peak = scaled_lr(opt_config, global_batch)
  warmup = min(int(round(opt_config.warmup_epochs * steps_per_epoch)), total_steps)
  final = opt_config.get("final_lr", 0.0)
  if opt_config.schedule == "cosine":
    if warmup == 0:
      return optax.cosine_decay_schedule(peak, max(total_steps, 1), alpha=final / peak)
    return optax.warmup_cosine_decay_schedule(0.0, peak, warmup, max(total_steps, warmup + 1),
                                              end_value=final)
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

  "steps": from each epoch of `lr_steps_epochs`, counted from the run's start, the peak x
  the matching `lr_steps_factors` (InvaSpread: 0.1, 0.05, 0.01 at 120, 160, 200), or x0.1
  once more at each when no factors are given (MoCo v1: 120 and 160 of 200).
  "cosine_epochs": peak * (1 + cos(pi * epoch / epochs)) / 2 with the integer epoch (MoCo
  v2), over the epochs after the warmup (MoCo has none).
  """
  spe = max(steps_per_epoch, 1)
  if opt_config.schedule == "steps":   # join_schedules counts from the warmup's end
    return step_schedule(peak, [int(round(e * spe)) - warmup for e in
                                opt_config.get("lr_steps_epochs", ())],
                         opt_config.get("lr_steps_factors", ()))
  epochs = max((total_steps - warmup) / spe, 1e-9)

  def cosine_epochs(count):
    epoch = jnp.floor(count / spe)
    return peak * 0.5 * (1 + jnp.cos(jnp.pi * jnp.minimum(epoch / epochs, 1.0)))
  return cosine_epochs


def step_schedule(peak: float, boundaries, factors=()):
  """peak x factors[i] from step boundaries[i] on (x0.1, x0.01, ... without factors)."""
  if factors and len(factors) != len(boundaries):
    raise ConfigError(f"config.optimizer.lr_steps_factors={tuple(factors)} needs one factor "
                      f"per epoch of config.optimizer.lr_steps_epochs ({len(boundaries)})")
  values = jnp.asarray([1.0] + list(factors or [0.1**(i + 1) for i in range(len(boundaries))]),
                       jnp.float32) * peak
  steps = jnp.asarray(list(boundaries), jnp.int32)
  return lambda count: values[jnp.sum(count >= steps)]


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


def scale_by_larc(trust_coefficient: float, weight_decay: float,
                  eps: float = 1e-8) -> optax.GradientTransformation:
  """apex LARC with clip=False, as SwAV wraps SGD: every leaf, biases and BN included,
  g <- eta |w| / (|g| + wd |w| + eps) * (g + wd w). A leaf whose weight or gradient norm is
  0 passes unchanged, without decay: a zero gradient then moves nothing, like PyTorch's
  `grad = None` (SwAV's frozen prototypes)."""
  def leaf(g, w):
    w_norm, g_norm = jnp.linalg.norm(w), jnp.linalg.norm(g)
    trust = trust_coefficient * w_norm / (g_norm + weight_decay * w_norm + eps)
    return jnp.where((w_norm > 0) & (g_norm > 0), trust * (g + weight_decay * w), g)

  def update(updates, state, params=None):
    return jax.tree.map(leaf, updates, params), state
  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def make_optimizer(opt_config, schedule, total_steps: int = 0) -> optax.GradientTransformation:
  """`total_steps` sets the horizon of a weight-decay schedule (`weight_decay_end`)."""
  fixed = opt_config.get("fixed_lr_module", "")
  if not fixed:
    return skip_frozen(_make_optimizer(opt_config, schedule, total_steps))
  # SimSiam's --fix-pred-lr: the named top-level module keeps the initial lr while the rest
  # follows the schedule (SimSiam has no warmup, so the initial lr is the peak).
  constant = float(schedule(0)) if callable(schedule) else schedule
  label = lambda params: {k: "fixed" if k == fixed else "scheduled" for k in params}  # noqa: E731
  return skip_frozen(optax.multi_transform(
      {"fixed": _make_optimizer(opt_config, constant, total_steps),
       "scheduled": _make_optimizer(opt_config, schedule, total_steps)}, label))


def matrix_mask(params):
  """True for leaves with ndim > 1: DINO's `get_params_groups` (biases and norm parameters,
  all 1-D, are not decayed; the ViT's class token and position embedding are)."""
  return jax.tree.map(lambda p: p.ndim > 1, params)


def decay_mask(opt_config):
  """Which leaves get weight decay: "kernel" (default: kernel_mask), "ndim" (matrix_mask) or
  "all" (torch's weight_decay on every parameter, e.g. lightly's SGD)."""
  rule = opt_config.get("decay_mask", "kernel")
  masks = dict(kernel=kernel_mask, ndim=matrix_mask, all=lambda params: jax.tree.map(
      lambda _: True, params))
  if rule not in masks:
    raise ConfigError(f"config.optimizer.decay_mask={rule!r} is unknown; use 'kernel', "
                      "'ndim' or 'all'")
  return masks[rule]


def weight_decay_schedule(opt_config, total_steps: int):
  """DINO's per-step cosine from `weight_decay` (step 0) to `weight_decay_end` (step T)."""
  start, end = opt_config.weight_decay, opt_config.weight_decay_end
  if total_steps < 1:
    raise ValueError("config.optimizer.weight_decay_end needs make_optimizer(..., total_steps)")

  def schedule(count):
    progress = jnp.minimum(jnp.asarray(count, jnp.float32) / total_steps, 1.0)
    return end + 0.5 * (start - end) * (1 + jnp.cos(jnp.pi * progress))
  return schedule


class TorchAdamWState(NamedTuple):
  count: jax.Array   # steps taken: the weight-decay schedule's clock
  leaf_steps: Any    # per leaf: steps that had a gradient (Adam's bias correction)
  mu: Any
  nu: Any


def scale_by_torch_adamw(weight_decay, mask, b1=0.9, b2=0.999, eps=1e-8):
  """torch.optim.AdamW before the -lr scaling, with PyTorch's per-parameter state.

  A leaf whose whole gradient is zero counts as a parameter without `.grad` (DINO's last
  layer in its frozen first epoch): no moment update, no step, no weight decay, so after
  it is unfrozen its first Adam step is bias-corrected as a first step. `weight_decay` is
  a number or a schedule of the step; `mask(params)` says which leaves it decays.
  """
  def init(params):
    zeros = jax.tree.map(jnp.zeros_like, params)
    return TorchAdamWState(jnp.zeros([], jnp.int32),
                           jax.tree.map(lambda _: jnp.zeros([], jnp.int32), params),
                           zeros, jax.tree.map(jnp.zeros_like, params))

  def update(grads, state, params):
    wd = weight_decay(state.count) if callable(weight_decay) else weight_decay
    treedef = jax.tree.structure(grads)
    flat = [treedef.flatten_up_to(t) for t in
            (grads, state.leaf_steps, state.mu, state.nu, params, mask(params))]

    def leaf(g, steps, mu, nu, p, decayed):
      active = jnp.any(g != 0)
      steps = steps + active.astype(jnp.int32)
      mu = jnp.where(active, b1 * mu + (1 - b1) * g, mu)
      nu = jnp.where(active, b2 * nu + (1 - b2) * g * g, nu)
      t = jnp.maximum(steps, 1).astype(jnp.float32)
      u = mu / (1 - b1**t) / (jnp.sqrt(nu / (1 - b2**t)) + eps)
      if decayed:
        u = u + wd * p
      return jnp.where(active, u, 0.0).astype(g.dtype), steps, mu, nu

    out = [leaf(*xs) for xs in zip(*flat)]
    u, steps, mu, nu = (treedef.unflatten([o[i] for o in out]) for i in range(4))
    return u, TorchAdamWState(state.count + 1, steps, mu, nu)
  return optax.GradientTransformation(init, update)


def _make_optimizer(opt_config, schedule, total_steps: int = 0) -> optax.GradientTransformation:
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
  if name == "larc":
    # SwAV: apex LARC (clip=False) around SGD: adaptation of every leaf -> momentum -> x(-lr).
    return optax.chain(
        scale_by_larc(opt_config.trust_coefficient, opt_config.weight_decay),
        optax.trace(decay=opt_config.momentum, nesterov=False),
        optax.scale_by_learning_rate(schedule))
  if name == "sgd":   # decays every parameter unless the config names a decay_mask
    mask = decay_mask(opt_config) if "decay_mask" in opt_config else None
    return optax.chain(optax.add_decayed_weights(opt_config.weight_decay, mask=mask),
                       optax.sgd(schedule, momentum=opt_config.momentum))
  if name == "adam":   # torch.optim.Adam: weight decay is L2 added to every gradient
    return optax.chain(optax.add_decayed_weights(opt_config.weight_decay),
                       optax.scale_by_adam(b1=0.9, b2=0.999, eps=1e-8),
                       optax.scale_by_learning_rate(schedule))
  if name == "adamw" and opt_config.get("weight_decay_end") is not None:   # DINO
    return optax.chain(
        scale_by_torch_adamw(weight_decay_schedule(opt_config, total_steps),
                             decay_mask(opt_config)),
        optax.scale_by_learning_rate(schedule))
  if name == "adamw":   # decay_all: MoCo v3 decays every parameter, biases and norms too
    mask = None if opt_config.get("decay_all", False) else kernel_mask
    return optax.adamw(schedule, weight_decay=opt_config.weight_decay, mask=mask)
  raise ConfigError(f"config.optimizer.name={name!r} is unknown; use 'lars', 'lars_byol', "
                    "'larc', 'sgd', 'adam' or 'adamw'")


def for_run(config):
  """(lr schedule, optimizer) of a config whose config.run is filled (config.fill_run)."""
  run = config.run
  schedule = lr_schedule(config.optimizer, config.batch_size, run.steps_per_epoch,
                         run.total_steps)
  return schedule, make_optimizer(config.optimizer, schedule, total_steps=run.total_steps)
