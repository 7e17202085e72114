"""Checkpoints of the whole TrainState in workdir/checkpoints (orbax CheckpointManager).

Saves are asynchronous: the arrays are copied to host memory before `save` returns (so the
donated state can move on) and written in the background. Each step directory holds the
state and a small JSON record of the input position; the in-memory loader's batch of step
s is a pure function of (seed, s), so the position is the step. Orbax writes into a
temporary directory and renames it when complete, so an interrupted save never looks
like a checkpoint; one that is complete but unreadable (a damaged disk, a truncated copy)
is moved aside to checkpoints.corrupt/<step> (<step>.1... when an earlier copy is there)
and the previous one is used, with a one-line warning. A failed background write is raised
by the next save or by close(), which closes the manager all the same.
"""
import contextlib
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

from ssl_jax import rundir
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
    """Waits for the saves, then closes the manager, also when a save failed (its threads
    would otherwise keep the process alive after the error)."""
    try:
      self.wait()
    finally:
      with contextlib.suppress(Exception):   # a failed save's error is the one wait() raised
        self.manager.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()

  def restore_latest(self, state, sharding=None):
    """(restored state, step) from the newest readable checkpoint, or (state, 0).

    `state` is the template: concrete arrays or ShapeDtypeStructs; the restored arrays take
    its shardings, or `sharding` for every leaf when given. Unreadable checkpoints are set
    aside with one warning line (orbax logs each failed read with its traceback: silenced).
    """
    target = _target(state, sharding)
    unreadable = []   # (step, error) of the checkpoints set aside
    for step in sorted(self.manager.all_steps(), reverse=True):
      try:
        with _quiet_logs():
          saved = _layout(self.manager.item_metadata(step)["state"])
      except Exception as e:  # pylint: disable=broad-except
        unreadable.append((step, self._set_aside(step), e))
        continue
      # A readable checkpoint of another config is the user's, not corrupt: never set aside.
      mismatch = _mismatch(saved, _layout(target))
      if mismatch:
        raise ConfigError(f"the checkpoint of step {step} in {self.directory} was saved by "
                          f"a different config ({mismatch}); resume with the run's own "
                          "config (its config.json) or use a new --workdir")
      try:
        with _quiet_logs():
          restored = self.manager.restore(step, args=ocp.args.Composite(
              state=ocp.args.StandardRestore(target), position=ocp.args.JsonRestore()))
      except Exception as e:  # pylint: disable=broad-except
        unreadable.append((step, self._set_aside(step), e))
        continue
      self._warn(unreadable, step)
      return _loaded(restored["state"]), int(restored["position"]["input_step"])
    self._warn(unreadable, None)
    return state, 0

  def _warn(self, unreadable: list, used: int | None):
    """One line for the checkpoints set aside: which, where to, why, and what is used."""
    if not unreadable:
      return
    def one(step, aside, error):
      cause = (str(error).strip().splitlines() or [""])[0]
      cause = cause if len(cause) <= 100 else cause[:100] + "..."
      where = "left in place" if aside is None else f"moved to {aside}"
      return f"step {step} ({type(error).__name__}: {cause}) {where}"
    used = f"using step {used}" if used is not None else "no readable checkpoint is left"
    print(f"warning: unreadable checkpoint in {self.directory}: "
          f"{'; '.join(one(*u) for u in unreadable)}; {used}", file=sys.stderr, flush=True)

  def _set_aside(self, step: int) -> str | None:
    """Moves an unreadable checkpoint out of the way, so that saving its step again works;
    returns where to (None when read-only). An earlier copy of the step stays."""
    if self.read_only:
      return None
    aside = rundir.unused_path(os.path.join(self.directory + ".corrupt", str(step)))
    if jax.process_index() == 0:
      os.makedirs(os.path.dirname(aside), exist_ok=True)
      shutil.move(os.path.join(self.directory, str(step)), aside)
    self.manager.reload()
    return aside


@contextlib.contextmanager
def _quiet_logs():
  """No library logging (orbax's, through absl) while reading a checkpoint that may be
  damaged: its failure is reported in one line instead."""
  previous = logging.root.manager.disable
  logging.disable(logging.CRITICAL)
  try:
    yield
  finally:
    logging.disable(previous)


class SigtermFlag:
  """Within `with`, SIGTERM (preemption) and SIGINT (Ctrl-C) set `.received` instead of
  ending the process, so the loop can save and stop between steps (a second Ctrl-C stops
  at once, unsaved). Outside the main thread it does nothing.

  With several processes, a SIGTERM reaches them at different steps (or only one), so
  `reached(step)` asks JAX's preemption sync manager, which catches SIGTERM itself and
  makes every process answer True at the same step; a SIGINT is passed on to it as a
  SIGTERM."""

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.received = None   # the name of the signal, once one came
    self._previous = {}
    self._synced = False

  def _handle(self, signum, frame):
    del frame
    if self.received and signum == signal.SIGINT:
      raise KeyboardInterrupt   # the second Ctrl-C
    self.received = signal.Signals(signum).name
    if self._synced:
      os.kill(os.getpid(), signal.SIGTERM)   # to JAX's preemption notifier

  def reached(self, step: int) -> bool:
    """Whether to save and stop after `step` (read once per step)."""
    if self._synced:
      return multihost_utils.reached_preemption_sync_point(step)
    return bool(self.received)

  def __enter__(self):
    self._synced = jax.process_count() > 1   # jax.distributed.initialize set the manager up
    if threading.current_thread() is threading.main_thread():
      for signum in self.SIGNALS[1:] if self._synced else self.SIGNALS:
        self._previous[signum] = signal.signal(signum, self._handle)
    return self

  def __exit__(self, *exc):
    for signum, previous in self._previous.items():
      signal.signal(signum, previous)
    self._previous = {}
