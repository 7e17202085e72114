"""Command line: `python -m ssl_jax.main --config=configs/simclr_v2.py:cifar10 --workdir=runs/x`.

Fields are overridden with `--config.field=value`. The resolved config is written to
workdir/config.json once the run is accepted (ssl_jax/rundir.py), just before training
starts; `--help` lists the methods and their variants, and with `--config` the fields of
that config.
"""
import glob
import os
import re
import sys
import threading
import time
import traceback

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")   # TF's start-up notices (oneDNN...)
from absl import app, flags, logging  # pylint: disable=wrong-import-position
import jax  # pylint: disable=wrong-import-position
import ml_collections  # pylint: disable=wrong-import-position
from ml_collections import config_flags  # pylint: disable=wrong-import-position

from ssl_jax import config as config_lib, distributed
from ssl_jax.errors import ConfigError

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file, `path.py:variant`.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics, eval.")
flags.mark_flags_as_required(["config", "workdir"])
USAGE = "usage: --config=configs/<method>.py[:variant] --workdir=<dir> [--config.<field>=<value>]"


HELP_FLAGS = ("--help", "-h", "-?", "--helpshort", "--helpfull")
HELP = """Pretrains a self-supervised image representation and evaluates it (kNN, online probe).

{usage}

  --config=FILE[:VARIANT]   the method's config file and variant (none = the paper's setting)
  --workdir=DIR             checkpoints, metrics.jsonl, config.json, eval.json, plots/;
                            rerun the same command to resume
  --config.<field>=<value>  override one field, e.g. --config.batch_size=256
  --coordinator_address, --num_processes, --process_id: multi-host runs (ssl_jax/distributed.py)

Methods (configs/<method>.py) and their variants (none = the paper's setting):
{methods}

A config's fields and values: python -m ssl_jax.main --config=configs/simclr_v2.py:quickstart --help
Evaluating a trained workdir: python -m ssl_jax.evaluate --help"""


def methods_help() -> str:
  """One line per configs/*.py: its name, variants and the first line of its docstring."""
  rows = []
  for path in sorted(glob.glob(os.path.join(config_lib.CONFIG_DIR, "*.py"))):
    module = config_lib.load_config_file(path)
    about = (module.__doc__ or "").strip().splitlines()[0]
    head = re.split(r"[;)]", about)[0]   # the name and its paper
    about = head + ")" if "(" in head else about.rstrip(".")
    rows.append((os.path.basename(path)[:-3], about,
                 ", ".join(config_lib.variant_names(module.get_config))))
  return "\n".join(f"  {name:11s} {about:42s} {variants}" for name, about, variants in rows)


def config_help(spec: str) -> str:
  """Every field of the config `path.py[:variant]` as the flag that sets it."""
  path, _, name = spec.partition(":")
  config = config_lib.load_config_file(path).get_config(name or None)

  def lines(node, prefix):
    for key, value in node.items():
      if prefix + key == "run":   # filled in by the training
        continue
      if isinstance(value, ml_collections.ConfigDict):
        yield from lines(value, f"{prefix}{key}.")
      else:
        yield f"  --config.{prefix}{key}={value}"
  return (f"Fields of {spec} (override any with --config.<field>=<value>):\n" +
          "\n".join(lines(config, "")))


def help_text(argv) -> str:
  given = [a.split("=", 1)[1] for a in argv if a.startswith("--config=")]
  if given:
    return config_help(given[-1])
  return HELP.format(usage=USAGE, methods=methods_help())


def flag_error_message(e: BaseException) -> str:
  """One line for what went wrong while parsing flags (config_flags wraps the cause)."""
  while isinstance(e, KeyError) and e.args:   # ConfigDict nests the KeyError it raises
    e = e.args[0]
  if isinstance(e, SyntaxError):   # e.g. a YAML or JSON file given as --config
    return (f"config file {e.filename!r} is not Python ({e.msg}, line {e.lineno}); --config "
            "takes configs/<method>.py[:variant]")
  text = str(e)
  if "has no attribute 'get_config'" in text:
    return ("the --config file has no get_config(arg) function; use a configs/<method>.py "
            "file or one written like them")
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
  """absl's parsing, with a bad override or variant reported as one line, not a traceback;
  --help prints help_text and exits 0."""
  try:
    if any(a.split("=")[0] in HELP_FLAGS for a in argv[1:]):
      print(help_text(argv[1:]))
      sys.exit(0)
    remaining = flags.FLAGS(argv)
  except (flags.Error, ConfigError, KeyError, AttributeError, ValueError, TypeError, OSError,
          SyntaxError) as e:
    sys.exit(f"error: {flag_error_message(e)}\n{USAGE}")
  if not flags.FLAGS["verbosity"].present:   # JAX's and absl's INFO lines (TPU backend...)
    logging.set_verbosity(logging.WARNING)
  return remaining


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
