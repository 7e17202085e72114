"""Offline evaluation of a pretrained workdir: `python -m ssl_jax.evaluate --workdir=runs/x
--protocol=knn|linear|export|plots`.

Restores the latest checkpoint and config.json of the workdir, evaluates the frozen
backbone, and merges the result into workdir/eval.json under the protocol's name (the
numbers logged during pretraining are the online monitors; these are the offline ones).
  knn     weighted kNN (config.eval.knn_k, knn_temperature) on the eval split
  linear  linear classifier on frozen features of random-crop + flip training views,
          top-1/top-5 on the eval split; the method's protocol from config.eval.linear,
          the flags below override it (see ssl_jax/evaluate/linear.py)
  export  features (config.eval.features, not normalised) and labels of both splits to
          workdir/features/
Every protocol reads config.eval.features of the evaluation views: the central
config.eval.crop_proportion of each image (0.875 = Resize(256) + CenterCrop(224)).
  plots   workdir/plots: curves from metrics.jsonl and a t-SNE of eval features
  finetune  backbone (SimCLR v2: + head up to config.head.finetune_layer) and a new linear
          classifier trained end to end on every label (ssl_jax/evaluate/finetune.py)
  semi    the same on a class-balanced --label_fraction (0.01 or 0.1) of the labels
  distill semi as teacher, then a student trained on the unlabelled images to match the
          teacher's softmax at --temperature (ssl_jax/evaluate/distill.py)
Unset flags take the protocol's defaults; a smoke workdir takes seconds with --epochs=1
(and --teacher_epochs=1 for distill). On several hosts, start it on every one as training
was started (the same --coordinator_address/--num_processes/--process_id, or the pod's
or cluster's launcher); process 0 writes eval.json.
"""
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")   # TF's start-up notices, as main.py
from absl import app, flags, logging  # pylint: disable=wrong-import-position
import jax  # pylint: disable=wrong-import-position

from ssl_jax import config as config_lib, distributed  # pylint: disable=wrong-import-position
from ssl_jax.errors import ConfigError  # pylint: disable=wrong-import-position
from ssl_jax.evaluate import protocols  # pylint: disable=wrong-import-position

_WORKDIR = flags.DEFINE_string("workdir", None, "Workdir of a pretraining run.")
_PROTOCOL = flags.DEFINE_enum("protocol", "knn", protocols.PROTOCOLS, "Evaluation protocol.")
_EPOCHS = flags.DEFINE_integer("epochs", None, "Epochs; default linear config.eval.linear."
                                "epochs, finetune 90, semi 60 at 1% and 30 at 10% labels, "
                                "distill's student 400.")
_BATCH = flags.DEFINE_integer("batch_size", None, "Batch (0 = scaled to the data; default "
                              "linear config.eval.linear.batch_size, fine-tuning 0).")
_LR = flags.DEFINE_float("base_lr", None, "linear: lr = base_lr x batch / 256 (default "
                         "config.eval.linear.base_lr); finetune/semi/distill: base_lr x "
                         "sqrt(batch) (0.005).")
_WD = flags.DEFINE_float("weight_decay", None, "Weight decay (default linear "
                         "config.eval.linear.weight_decay, fine-tuning 0).")
_FRACTION = flags.DEFINE_float("label_fraction", 0.01, "semi, distill: labelled share.")
_LAYER = flags.DEFINE_integer("finetune_layer", -1, "finetune/semi/distill: head layer to "
                              "start from (0 = backbone; -1 = config.head.finetune_layer).")
_TEMPERATURE = flags.DEFINE_float("temperature", 1.0, "distill: softmax temperature.")
_LABEL_WEIGHT = flags.DEFINE_float("label_weight", 0.0, "distill: weight of the labelled "
                                   "cross entropy (0 = distillation only).")
_STUDENT_INIT = flags.DEFINE_string("student_init", "pretrained", "distill: 'pretrained' "
                                    "(self-distillation) or 'random'.")
_TEACHER_EPOCHS = flags.DEFINE_integer("teacher_epochs", 0, "distill: epochs of the "
                                       "teacher's semi fine-tuning (0 = semi's default).")
flags.mark_flags_as_required(["workdir"])


def settings(protocol: str):
  """The protocol's Settings: the flags given; the rest from the workdir's config
  (linear: config.eval.linear) or the protocol's defaults. A flag out of its range
  (config.EVALUATE_FLAG_RANGES) is a one-line ConfigError."""
  from ssl_jax.evaluate import finetune, linear  # pylint: disable=import-outside-toplevel
  config_lib.check_evaluate_flags({name: flags.FLAGS[name].value
                                   for name in config_lib.EVALUATE_FLAG_RANGES})
  given = dict(epochs=_EPOCHS.value, batch_size=_BATCH.value, base_lr=_LR.value,
               weight_decay=_WD.value)
  given = {k: v for k, v in given.items() if v is not None}
  if protocol not in finetune.PROTOCOLS:
    return linear.Settings(**given)
  return finetune.Settings(**given, label_fraction=_FRACTION.value,
                           finetune_layer=_LAYER.value, temperature=_TEMPERATURE.value,
                           label_weight=_LABEL_WEIGHT.value, student_init=_STUDENT_INIT.value,
                           teacher_epochs=_TEACHER_EPOCHS.value)


def main(argv):
  del argv
  if not flags.FLAGS["verbosity"].present:   # JAX's INFO lines (TPU backend...)
    logging.set_verbosity(logging.WARNING)
  distributed.start_from_flags()   # every process of a multi-host run evaluates together
  try:
    result = protocols.evaluate(_WORKDIR.value, _PROTOCOL.value, settings(_PROTOCOL.value))
  except (ConfigError, OSError) as e:
    sys.exit(f"error: {e}")
  if jax.process_index() == 0:
    print(f"{_PROTOCOL.value} (offline): {shown(result)}", flush=True)


def shown(result: dict, prefix: str = "") -> str:
  """The entry as `key value` pairs, floats to 4 places, nested ones (distill's teacher)
  as `teacher.key value`."""
  return ", ".join(shown(v, f"{prefix}{k}.") if isinstance(v, dict) else
                   f"{prefix}{k} {v:.4f}" if isinstance(v, float) else f"{prefix}{k} {v}"
                   for k, v in result.items())


if __name__ == "__main__":
  app.run(main)
