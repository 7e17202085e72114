"""Command line: `python -m ssl_jax.main --config=configs/simclr_v2.py:cifar10 --workdir=runs/x`.

Fields are overridden with `--config.field=value`. The resolved config is printed and
written to workdir/config.json once the run is accepted (ssl_jax/rundir.py), just before
training starts.
"""
import os
import re
import sys
import threading
import time
import traceback

from absl import app, flags
import jax
import ml_collections
from ml_collections import config_flags

from ssl_jax import distributed
from ssl_jax.errors import ConfigError

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file, `path.py:variant`.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics, eval.")
flags.mark_flags_as_required(["config", "workdir"])
USAGE = "usage: --config=configs/<method>.py[:variant] --workdir=<dir> [--config.<field>=<value>]"


def flag_error_message(e: BaseException) -> str:
  """One line for what went wrong while parsing flags (config_flags wraps the cause)."""
  while isinstance(e, KeyError) and e.args:   # ConfigDict nests the KeyError it raises
    e = e.args[0]
  text = str(e)
  # A config file's own ConfigError reaches here re-raised with its traceback as text.
  raised = re.search(r"ConfigError: (.*)", text)
  cause = e.__context__ if isinstance(e, BaseException) else None
  if raised or isinstance(cause, ConfigError):
    return raised[1] if raised else str(cause)
  missing = re.search(r"No such file or directory: '([^']*)'", text)
  if missing:
    return f"config file {missing[1]!r} not found; use --config=configs/<method>.py"
  field = re.fullmatch(r"""["']*(\w+)["']*""", text)
  if field:
    return f"unknown config field {field[1]!r}"
  suggestion = re.search(r'Did you mean "(\w+)" instead of "(\w+)"', text)
  if suggestion:
    return f"unknown config field {suggestion[2]!r}; did you mean {suggestion[1]!r}?"
  return text.splitlines()[0] if text else type(e).__name__


def parse_flags(argv):
  """absl's parsing, with a bad override or variant reported as one line, not a traceback."""
  try:
    return flags.FLAGS(argv)
  except (flags.Error, ConfigError, KeyError, AttributeError, ValueError, TypeError) as e:
    sys.exit(f"error: {flag_error_message(e)}\n{USAGE}")


def main(argv):
  del argv
  from ssl_jax import train  # pylint: disable=import-outside-toplevel
  config, workdir = _CONFIG.value, _WORKDIR.value
  if not isinstance(config, ml_collections.ConfigDict):   # the file failed to load
    try:
      config.to_dict()   # raises the loading error
    except Exception as e:  # pylint: disable=broad-except
      sys.exit(f"error: {flag_error_message(e)}\n{USAGE}")
  distributed.start_from_flags()
  chief = jax.process_index() == 0
  if chief:
    print(config)
  try:
    train.train_and_evaluate(config, workdir)
  except (ConfigError, OSError, FloatingPointError) as e:
    error_exit(f"error: {e}")
  except jax.errors.JaxRuntimeError as e:
    if jax.process_count() > 1:
      lost_process_exit(e, workdir)
    error_exit(traceback.format_exc())
  except Exception:  # pylint: disable=broad-except
    error_exit(traceback.format_exc())


def error_exit(message: str, grace_s: float = 10.0):
  """Prints `message` and exits with 1, within `grace_s` even when threads are left that
  would keep the process alive (a failed asynchronous checkpoint write leaves orbax's
  threads waiting minutes for a directory that never comes)."""
  print(message.rstrip(), file=sys.stderr, flush=True)
  def lingering():
    return [t for t in threading.enumerate()
            if t.is_alive() and not t.daemon and t is not threading.current_thread()]
  deadline = time.monotonic() + grace_s
  while lingering() and time.monotonic() < deadline:
    time.sleep(0.1)
  if lingering():
    sys.stdout.flush()
    os._exit(1)   # pylint: disable=protected-access
  sys.exit(1)


def lost_process_exit(error: Exception, workdir: str):
  """Ends this process of a multi-process run whose collective failed (another process
  died or was cut off), without the normal shutdown, which would wait for the lost one."""
  cause = str(error).splitlines()[0] if str(error) else type(error).__name__
  print(f"error: process {jax.process_index()} lost contact with the other processes of the "
        f"distributed run ({cause}); training stopped. Rerun the same command on every host "
        f"to resume from the last checkpoint in {workdir}/checkpoints.",
        file=sys.stderr, flush=True)
  sys.stdout.flush()
  os._exit(1)   # pylint: disable=protected-access


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
