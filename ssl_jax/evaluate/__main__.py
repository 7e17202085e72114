"""Offline evaluation of a pretrained workdir: `python -m ssl_jax.evaluate --workdir=runs/x
--protocol=knn|linear|export|plots`.

Restores the latest checkpoint and config.json of the workdir, evaluates the frozen
backbone, and merges the result into workdir/eval.json under the protocol's name (the
numbers logged during pretraining are the online monitors; these are the offline ones).
  knn     weighted kNN (config.eval.knn_k, knn_temperature) on the eval split
  linear  linear classifier on frozen features of random-crop + flip training views,
          top-1/top-5 on the eval split (see ssl_jax/evaluate/linear.py for the settings)
  export  features (raw backbone outputs) and labels of both splits to workdir/features/
  plots   workdir/plots: curves from metrics.jsonl and a t-SNE of eval features
"""
import sys

from absl import app, flags

from ssl_jax.errors import ConfigError
from ssl_jax.evaluate import protocols

_WORKDIR = flags.DEFINE_string("workdir", None, "Workdir of a pretraining run.")
_PROTOCOL = flags.DEFINE_enum("protocol", "knn", protocols.PROTOCOLS, "Evaluation protocol.")
_EPOCHS = flags.DEFINE_integer("epochs", 90, "linear: epochs (SimCLR: 90).")
_BATCH = flags.DEFINE_integer("batch_size", 0, "linear: batch (0 = scaled to the data).")
_LR = flags.DEFINE_float("base_lr", 0.1, "linear: lr = base_lr x batch / 256.")
_WD = flags.DEFINE_float("weight_decay", 1e-6, "linear: weight decay of the weights.")
flags.mark_flags_as_required(["workdir"])


def main(argv):
  del argv
  from ssl_jax.evaluate import linear  # pylint: disable=import-outside-toplevel
  settings = linear.Settings(epochs=_EPOCHS.value, batch_size=_BATCH.value,
                             base_lr=_LR.value, weight_decay=_WD.value)
  try:
    result = protocols.evaluate(_WORKDIR.value, _PROTOCOL.value, settings)
  except (ConfigError, OSError) as e:
    sys.exit(f"error: {e}")
  shown = ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                    for k, v in result.items())
  print(f"{_PROTOCOL.value} (offline): {shown}", flush=True)


if __name__ == "__main__":
  app.run(main)
