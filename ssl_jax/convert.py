"""Command line: `python -m ssl_jax.convert --format=<name> --checkpoint=<file> --workdir=<dir>`.

Converts an original's released checkpoint into a workdir (config.json, an orbax checkpoint
of step 0, converted.json) that `python -m ssl_jax.evaluate --workdir=<dir>` evaluates and
`python -m ssl_jax.main --config=configs/<method>.py --workdir=<dir>
--config.eval.online_probe=False` continues pretraining (ssl_jax/pretrained). Fields of the
format's config are overridden with `--config.<field>=<value>` (e.g. the data set to
evaluate on); `--help` lists the formats.
"""
import ast
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
from absl import app, flags, logging  # pylint: disable=wrong-import-position

from ssl_jax.errors import ConfigError  # pylint: disable=wrong-import-position

_FORMAT = flags.DEFINE_string("format", None, "The checkpoint's format (see --help).")
_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "The released checkpoint file.")
_WORKDIR = flags.DEFINE_string("workdir", None, "The new workdir to write.")
_VARIANT = flags.DEFINE_string("variant", None, "The file's architecture, where a format "
                               "has several (e.g. dino_vit: vits16, vits8, vitb16, vitb8).")
USAGE = ("usage: python -m ssl_jax.convert --format=<name> --checkpoint=<file> "
         "--workdir=<dir> [--variant=<v>] [--config.<field>=<value>]")
HELP_FLAGS = ("--help", "-h", "-?", "--helpshort", "--helpfull")


def help_text() -> str:
  from ssl_jax import pretrained  # pylint: disable=import-outside-toplevel
  rows = [f"  {f.name:14s} {f.files}" for f in sorted(pretrained.FORMATS.values(),
                                                      key=lambda f: f.name)]
  return (f"Converts a released checkpoint into an ssl_jax workdir.\n\n{USAGE}\n\n"
          "Formats (--format) and the files they read:\n" + "\n".join(rows))


def set_field(config, dotted: str, text: str):
  """config.<dotted> = text read as a Python literal (else as a string)."""
  *parents, name = dotted.split(".")
  node = config
  for parent in parents:
    node = node[parent]
  if name not in node:
    raise ConfigError(f"unknown config field {dotted!r}")
  try:
    value = ast.literal_eval(text)
  except (ValueError, SyntaxError):
    value = text
  node[name] = value


def split_overrides(argv):
  """(argv without them, [(field, value)]) of the --config.<field>=<value> arguments."""
  rest, overrides = [], []
  for arg in argv:
    if arg.startswith("--config.") and "=" in arg:
      field, value = arg[len("--config."):].split("=", 1)
      overrides.append((field, value))
    else:
      rest.append(arg)
  return rest, overrides


_OVERRIDES = []


def parse_flags(argv):
  if any(a.split("=")[0] in HELP_FLAGS for a in argv[1:]):
    print(help_text())
    sys.exit(0)
  argv, overrides = split_overrides(argv)
  _OVERRIDES.extend(overrides)
  try:
    remaining = flags.FLAGS(argv)
  except flags.Error as e:
    sys.exit(f"error: {e}\n{USAGE}")
  missing = [f"--{n}" for n in ("format", "checkpoint", "workdir") if not flags.FLAGS[n].value]
  if missing:
    sys.exit(f"error: {', '.join(missing)} missing\n{USAGE}")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  return remaining


def main(argv):
  del argv
  from ssl_jax import pretrained  # pylint: disable=import-outside-toplevel
  try:
    fmt = pretrained.get_format(_FORMAT.value)
    config = fmt.config(_VARIANT.value)
    for field, value in _OVERRIDES:
      set_field(config, field, value)
    config = pretrained.convert(_FORMAT.value, _CHECKPOINT.value, _WORKDIR.value, config,
                                _VARIANT.value)
  except (ConfigError, OSError) as e:
    sys.exit(f"error: {e}")
  with open(os.path.join(_WORKDIR.value, pretrained.converter.CONVERTED)) as f:
    unused = json.load(f)["unused"]
  left = (f" Left out {len(unused)} array(s) of the file (optimizer state, memory banks...: "
          f"{pretrained.converter.CONVERTED} lists them)." if unused else "")
  print(f"Converted {_CHECKPOINT.value} ({_FORMAT.value}) into {_WORKDIR.value} "
        f"(config.method={config.method!r}).{left} Evaluate it with: python -m "
        f"ssl_jax.evaluate --workdir={_WORKDIR.value} --protocol=knn", flush=True)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
