"""Checkpoints of the whole TrainState in workdir/checkpoints (orbax CheckpointManager).

Saves are asynchronous: the arrays are copied to host memory before `save` returns (so the
donated state can move on) and written in the background. Each step directory holds the
state and a small JSON record of the input position; the in-memory loader's batch of step
s is a pure function of (seed, s), so the position is the step. Orbax writes into a
temporary directory and renames it when complete, so an interrupted save never looks
like a checkpoint; one that is complete but unreadable (a damaged disk, a truncated copy)
is moved aside to checkpoints.corrupt/ and the previous one is used, with a warning.
"""
import logging
import os
import shutil
import signal
import sys
import threading

import jax
from jax.experimental import multihost_utils
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

from ssl_jax.errors import ConfigError


class _OrbaxWarningsOnly(logging.Filter):
  """Orbax logs every step of every save; keep its errors (ours say what matters)."""

  def filter(self, record):
    return record.levelno >= logging.ERROR or "orbax" not in record.pathname


logging.getLogger("absl").addFilter(_OrbaxWarningsOnly())


def _saveable(state):
  """Typed PRNG keys become their raw uint32 data on disk."""
  return state.replace(rng=jax.random.key_data(state.rng))


def _loaded(state):
  return state.replace(rng=jax.random.wrap_key_data(state.rng))


def _target(state, sharding=None):
  """Shape, dtype and sharding of every leaf saved for `state` (concrete or abstract):
  `sharding` for all, or else each concrete leaf's own."""
  if sharding is None:
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                        _saveable(state))
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
                      jax.eval_shape(_saveable, state))


def _layout(tree) -> dict:
  """{"params/backbone/...": shape} for every leaf of a state, a target or orbax metadata."""
  def name(key):
    return str(getattr(key, "key", getattr(key, "name", getattr(key, "idx", key))))
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {"/".join(name(k) for k in path): tuple(leaf.shape) for path, leaf in leaves}


def _mismatch(saved: dict, wanted: dict) -> str:
  """What differs between a checkpoint's layout and this run's ("" when they match)."""
  for path in wanted:
    if path not in saved:
      return f"{path} is not in the checkpoint"
    if saved[path] != wanted[path]:
      return f"{path} has shape {saved[path]} there and {wanted[path]} here"
  extra = sorted(set(saved) - set(wanted))
  return f"{extra[0]} is in the checkpoint but not in this run" if extra else ""


def _io_error(what: str, directory: str, error: Exception) -> OSError:
  return OSError(f"could not {what} checkpoints in {directory}: "
                 f"{type(error).__name__}: {error} (is the disk full or the workdir "
                 "unwritable?)")


class Checkpointer:
  """Saves every `every_steps` and at the end; keeps the last `keep` plus the best by
  `best_metric` (when set); restores the latest readable checkpoint."""

  def __init__(self, workdir: str, ckpt_config, read_only: bool = False):
    """`read_only` (evaluation of a workdir that may still be training): no saves, no
    clean-up of temporary directories, unreadable checkpoints are skipped in place."""
    self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    self.read_only = read_only
    self.every_steps = ckpt_config.every_steps
    self.best_metric = ckpt_config.best_metric
    if ckpt_config.keep < 1:
      raise ConfigError(f"config.checkpoint.keep={ckpt_config.keep} must be >= 1")
    if ckpt_config.best_mode not in ("max", "min"):
      raise ConfigError(f"config.checkpoint.best_mode={ckpt_config.best_mode!r} is "
                        "unknown; use 'max' (accuracies) or 'min' (losses)")
    policy = policies.LatestN(n=ckpt_config.keep)
    best_fn = None
    if self.best_metric:
      best_fn = lambda metrics: metrics[self.best_metric]  # pylint: disable=unnecessary-lambda-assignment
      policy = policies.AnyPreservationPolicy([policy, policies.BestN(
          get_metric_fn=best_fn, reverse=ckpt_config.best_mode == "min", n=1,
          keep_checkpoints_without_metrics=False)])
    options = ocp.CheckpointManagerOptions(
        preservation_policy=policy, best_fn=best_fn, best_mode=ckpt_config.best_mode,
        enable_async_checkpointing=ckpt_config.async_save,
        cleanup_tmp_directories=not read_only, create=not read_only, read_only=read_only)
    try:
      # Handlers named up front: a fresh process can then read a checkpoint's metadata.
      self.manager = ocp.CheckpointManager(self.directory, options=options, item_handlers=dict(
          state=ocp.StandardCheckpointHandler(), position=ocp.JsonCheckpointHandler()))
    except OSError as e:
      raise _io_error("create", self.directory, e) from e

  def should_save(self, step: int) -> bool:
    return bool(self.every_steps) and step % self.every_steps == 0

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state, metrics: dict | None = None):
    """Starts an asynchronous save of `state` at `step` (once per step)."""
    if step in self.manager.all_steps():
      return
    if self.best_metric:  # orbax ranks only checkpoints that carry the metric
      metrics = ({self.best_metric: float(metrics[self.best_metric])}
                 if metrics and self.best_metric in metrics else None)
    else:
      metrics = None
    args = ocp.args.Composite(state=ocp.args.StandardSave(_saveable(state)),
                              position=ocp.args.JsonSave({"step": step, "input_step": step}))
    try:
      self.manager.save(step, args=args, metrics=metrics, force=True)
    except jax.errors.JaxRuntimeError:   # a failed step or a lost process, not the disk
      raise
    except Exception as e:  # pylint: disable=broad-except
      raise _io_error("write", self.directory, e) from e

  def wait(self):
    """Blocks until every started save is on disk."""
    try:
      self.manager.wait_until_finished()
    except jax.errors.JaxRuntimeError:
      raise
    except Exception as e:  # pylint: disable=broad-except
      raise _io_error("write", self.directory, e) from e

  def close(self):
    self.wait()
    self.manager.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()

  def restore_latest(self, state, sharding=None):
    """(restored state, step) from the newest readable checkpoint, or (state, 0).

    `state` is the template: concrete arrays or ShapeDtypeStructs; the restored arrays take
    its shardings, or `sharding` for every leaf when given.
    """
    target = _target(state, sharding)
    for step in sorted(self.manager.all_steps(), reverse=True):
      try:
        saved = _layout(self.manager.item_metadata(step)["state"])
      except Exception as e:  # pylint: disable=broad-except
        self._set_aside(step, e)
        continue
      # A readable checkpoint of another config is the user's, not corrupt: never set aside.
      mismatch = _mismatch(saved, _layout(target))
      if mismatch:
        raise ConfigError(f"the checkpoint of step {step} in {self.directory} was saved by "
                          f"a different config ({mismatch}); resume with the run's own "
                          "config (its config.json) or use a new --workdir")
      try:
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target), position=ocp.args.JsonRestore()))
      except Exception as e:  # pylint: disable=broad-except
        self._set_aside(step, e)
        continue
      return _loaded(restored["state"]), int(restored["position"]["input_step"])
    return state, 0

  def _set_aside(self, step: int, error: Exception):
    """Moves an unreadable checkpoint out of the way, so that saving its step again works."""
    aside = os.path.join(self.directory + ".corrupt", str(step))
    moved = "" if self.read_only else f"moved to {aside}, "
    print(f"warning: checkpoint step {step} in {self.directory} is unreadable "
          f"({type(error).__name__}: {str(error)[:300]}); {moved}trying the previous one",
          file=sys.stderr, flush=True)
    if self.read_only:
      return
    if jax.process_index() == 0:
      if os.path.exists(aside):
        shutil.rmtree(aside)
      os.makedirs(os.path.dirname(aside), exist_ok=True)
      shutil.move(os.path.join(self.directory, str(step)), aside)
    self.manager.reload()


class SigtermFlag:
  """Within `with`, SIGTERM (preemption) sets `.received` instead of killing the process,
  so the loop can save and stop between steps. Outside the main thread it does nothing.

  With several processes, a SIGTERM reaches them at different steps (or only one), so
  `reached(step)` asks JAX's preemption sync manager, which catches SIGTERM itself and
  makes every process answer True at the same step."""

  def __init__(self):
    self.received = False
    self._previous = None
    self._synced = False

  def _handle(self, signum, frame):
    del signum, frame
    self.received = True

  def reached(self, step: int) -> bool:
    """Whether to save and stop after `step` (read once per step)."""
    if self._synced:
      return multihost_utils.reached_preemption_sync_point(step)
    return self.received

  def __enter__(self):
    self._synced = jax.process_count() > 1   # jax.distributed.initialize set the manager up
    if not self._synced and threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
