"""A workdir's record of its run: config.json, the lock, eval.json.

A run is accepted into a workdir before it writes anything there: one run at a time (the
lock, taken by process 0), and a config that continues the run config.json describes
(`check_config`: fields that change what is trained are refused, the rest are recorded).
Training and the evaluation CLI both write eval.json through `update_eval`, which merges.
"""
import contextlib
import datetime
import json
import os
import socket
import sys

import jax
import ml_collections

from ssl_jax import config as config_lib
from ssl_jax.errors import ConfigError

CONFIG, CHANGES, EVAL, LOCK = "config.json", "config_changes.jsonl", "eval.json", "lock"

# The fields a rerun into a workdir may change: evaluation, logging, checkpoint frequency,
# the run's length (to extend it) and what train.py fills in. Every other field changes
# what is trained, so a different value is refused. A name ending in "." is a prefix.
MAY_CHANGE = ("eval.", "log_every_steps", "tensorboard", "checkpoint.every_steps", "checkpoint.keep",
              "checkpoint.async_save", "num_epochs", "num_steps", "data_dir", "run.")
# ... except the online probe's: it is trained in the step and held in the TrainState.
MAY_NOT_CHANGE = ("eval.online_probe", "eval.probe_lr")


def unused_path(path: str) -> str:
  """`path`, or `path.1`, `path.2`... the first that does not exist (nothing is replaced)."""
  candidate, n = path, 0
  while os.path.exists(candidate):
    n += 1
    candidate = f"{path}.{n}"
  return candidate


def _write_json(path: str, value):
  """Whole or not at all: readers never see half a file (an evaluation reading eval.json
  while training writes it, a kill mid-write)."""
  tmp = f"{path}.{os.getpid()}.tmp"
  with open(tmp, "w") as f:
    json.dump(value, f, indent=2)
  os.replace(tmp, path)


# --- config.json ------------------------------------------------------------------------

def _merge(base: ml_collections.ConfigDict, saved: dict):
  """Saved values over today's defaults, so fields added since the run keep defaults."""
  for key, value in saved.items():
    if isinstance(value, dict) and isinstance(base.get(key), ml_collections.ConfigDict):
      _merge(base[key], value)
    else:
      base[key] = value


def read_config(workdir: str) -> ml_collections.ConfigDict | None:
  """The config of the run in `workdir` (None when there is none yet)."""
  path = os.path.join(workdir, CONFIG)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    saved = json.load(f)
  config = config_lib.base_config()
  _merge(config, saved)
  return config


def _flat(tree: dict, prefix: str = "") -> dict:
  flat = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      flat.update(_flat(value, f"{prefix}{key}."))
    else:
      flat[prefix + key] = value
  return flat


def _fields(config) -> dict:
  """{"optimizer.base_lr": 0.3, ...}, tuples as lists (as config.json holds them)."""
  return _flat(json.loads(config.to_json_best_effort()))


def may_change(field: str) -> bool:
  def listed(names):
    return any(field == n or (n.endswith(".") and field.startswith(n)) for n in names)
  return listed(MAY_CHANGE) and not listed(MAY_NOT_CHANGE)


def differences(old, new) -> dict:
  """{field: (old value, new value)} for every field that differs ("unset" if absent)."""
  old, new = _fields(old), _fields(new)
  return {f: (old.get(f, "unset"), new.get(f, "unset")) for f in sorted(set(old) | set(new))
          if old.get(f, "unset") != new.get(f, "unset")}


def _shown(changes: dict) -> str:
  return ", ".join(f"{field}: {old!r} -> {new!r}" for field, (old, new) in changes.items())


def check_config(config, workdir: str) -> dict:
  """The changes from the run already in `workdir` that `config` may make ({} when the
  workdir is new); a ConfigError listing the others."""
  saved = read_config(workdir)
  if saved is None:
    return {}
  changes = differences(saved, config)
  refused = {f: change for f, change in changes.items() if not may_change(f)}
  if refused:
    raise ConfigError(
        f"--workdir={workdir} holds a run of another config ({_shown(refused)}); rerun "
        f"with that run's config ({os.path.join(workdir, CONFIG)}) or use a new --workdir")
  return {f: change for f, change in changes.items() if not f.startswith("run.")}


def write_config(config, workdir: str, changes: dict, step: int):
  """config.json of the accepted run (process 0); the `changes` it makes to the run's
  config are noted, with the step they apply from, in config_changes.jsonl."""
  if jax.process_index() != 0:
    return
  if changes:
    print(f"Changed for the rest of the run, from step {step}: {_shown(changes)} "
          f"(noted in {CHANGES}).", flush=True)
    note = {"step": step, "time": datetime.datetime.now().isoformat(timespec="seconds"),
            "changes": {f: {"old": old, "new": new} for f, (old, new) in changes.items()}}
    with open(os.path.join(workdir, CHANGES), "a") as f:
      f.write(json.dumps(note) + "\n")
  _write_json(os.path.join(workdir, CONFIG), json.loads(config.to_json_best_effort()))


# --- the lock ---------------------------------------------------------------------------

_HELD = set()   # lock files this process holds


def _start_time(pid: int) -> str | None:
  """When `pid` started (clock ticks since boot, from /proc), to tell a process from a
  later one given the same pid (a restarted container); None where /proc is missing."""
  try:
    with open(f"/proc/{pid}/stat") as f:
      return f.read().rsplit(")", 1)[1].split()[19]
  except (OSError, IndexError):
    return None


def _alive(holder: dict, path: str) -> bool:
  """Whether the process that wrote the lock file still runs (True when it ran on another
  host: that cannot be checked from here)."""
  if holder.get("host") != socket.gethostname():
    return True
  pid = holder["pid"]
  if pid == os.getpid():
    return path in _HELD
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:   # another user's process
    pass
  started = _start_time(pid)
  return started is None or holder.get("started") in (None, started)


def _read_holder(path: str) -> dict | None:
  try:
    with open(path) as f:
      holder = json.load(f)
    return holder if isinstance(holder, dict) and isinstance(holder.get("pid"), int) else None
  except FileNotFoundError:
    raise
  except (OSError, ValueError):
    return None


def _take(path: str, workdir: str):
  pid = os.getpid()
  me = {"pid": pid, "host": socket.gethostname(), "started": _start_time(pid),
        "since": datetime.datetime.now().isoformat(timespec="seconds")}
  for _ in range(3):
    try:
      with open(path, "x") as f:   # exclusive: only one process creates it
        json.dump(me, f)
      _HELD.add(path)
      return
    except FileExistsError:
      pass
    try:
      holder = _read_holder(path)
    except FileNotFoundError:   # released meanwhile
      continue
    if holder is None:
      print(f"warning: {path} is unreadable; taking it over", file=sys.stderr, flush=True)
    elif _alive(holder, path):
      where = "" if holder["host"] == me["host"] else f" on host {holder['host']}"
      raise ConfigError(
          f"--workdir={workdir} is in use by process {holder['pid']}{where} (since "
          f"{holder.get('since', '?')}); wait for it to end or use another --workdir "
          f"(if no run is active, delete {path})")
    else:
      print(f"warning: taking over the stale lock of process {holder['pid']}, which is no "
            f"longer running ({path})", file=sys.stderr, flush=True)
    with contextlib.suppress(FileNotFoundError):
      os.remove(path)
  raise ConfigError(f"could not take the lock {path}; is another run starting there?")


@contextlib.contextmanager
def lock(workdir: str):
  """Holds workdir/lock while a run trains there, so that a second run on the same
  workdir stops with one line. Process 0 holds it for all processes of a run."""
  if jax.process_index() != 0:
    yield
    return
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, LOCK)
  _take(path, workdir)
  try:
    yield
  finally:
    _HELD.discard(path)
    with contextlib.suppress(FileNotFoundError):
      os.remove(path)


# --- eval.json --------------------------------------------------------------------------

def read_eval(workdir: str) -> dict:
  path = os.path.join(workdir, EVAL)
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    return json.load(f)


def update_eval(workdir: str, entries: dict, training: bool = False) -> dict:
  """Merges `entries` into workdir/eval.json (process 0 writes); returns the whole file.

  The offline protocols add one entry (a dict) each under their name; training writes its
  final evaluation as top-level values (`training`), which replace the previous training
  run's and keep the protocols' entries."""
  results = read_eval(workdir)
  if training:
    results = {k: v for k, v in results.items() if isinstance(v, dict)}
  results.update(entries)
  if jax.process_index() == 0:
    _write_json(os.path.join(workdir, EVAL), results)
  return results
