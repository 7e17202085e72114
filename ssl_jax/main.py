"""Command line: `python -m ssl_jax.main --config=configs/simclr_v2.py:cifar10 --workdir=runs/x`.

Fields are overridden with `--config.field=value`. The resolved config is printed and
written to workdir/config.json before training starts.
"""
import os
import sys

from absl import app, flags
from ml_collections import config_flags

from ssl_jax.errors import ConfigError

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file, `path.py:variant`.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics, eval.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  from ssl_jax import train  # pylint: disable=import-outside-toplevel
  config, workdir = _CONFIG.value, _WORKDIR.value
  print(config)
  try:
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=2))
    train.train_and_evaluate(config, workdir)
  except (ConfigError, OSError) as e:
    sys.exit(f"error: {e}")


if __name__ == "__main__":
  app.run(main)
