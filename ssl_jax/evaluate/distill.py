"""SimCLR v2's distillation protocol: the semi-supervised fine-tuned network teaches a
student on the unlabelled training images.

One command does both stages: `semi` (finetune.py) on `label_fraction` of the labels for
`teacher_epochs` gives the teacher; then a student of the same architecture, from the
pretrained weights ("self-distillation", the default) or from a random init, trains on
every training image, labels unused, to minimise (SimCLR v2, section 2)

  L = -(1/N) sum_i sum_y softmax(t_i / T)_y log softmax(s_i / T)_y

with teacher logits t and student logits s on the same augmented view (random crop +
flip), the teacher's BN in inference mode; with `label_weight` w > 0 the loss is
(1 - w) L + w x (cross entropy on the batch's images of the labelled subset), the paper's
weighted form with alpha = 1 - w. There is no T^2 factor, as in the paper.

Deviation: the student uses the fine-tuning optimizer (LARS, 0.005 x sqrt(B), no weight
decay) where the paper reuses the pretraining one; its default length is the paper's
400 epochs (`--epochs` to shorten).
"""
import jax
import jax.numpy as jnp
import numpy as np

from ssl_jax import losses, parallel
from ssl_jax.evaluate import finetune as finetune_lib, linear

STUDENT_EPOCHS = 400


def distillation_loss(student_logits, teacher_logits, temperature: float = 1.0):
  """Cross entropy of softmax(student / T) against softmax(teacher / T), row mean."""
  target = jax.nn.softmax(teacher_logits.astype(jnp.float32) / temperature)
  log_probs = jax.nn.log_softmax(student_logits.astype(jnp.float32) / temperature)
  return -(target * log_probs).sum(axis=-1).mean()


def labelled_cross_entropy(logits, labels, labelled):
  """Mean cross entropy over the labelled rows of the global batch, as this device's share
  (the device mean of the shares is the global mean; 0 without labelled rows)."""
  labelled = labelled.astype(jnp.float32)
  per_device = jax.lax.psum(labelled.sum(), parallel.AXIS) / jax.lax.axis_size(parallel.AXIS)
  total = (losses.cross_entropy(logits, jnp.maximum(labels, 0)) * labelled).sum()
  return jnp.where(per_device > 0, total / jnp.maximum(per_device, 1e-12), 0.0)


def make_objective(teacher_model, temperature: float, label_weight: float):
  """objective(logits, x, batch, extra) for finetune.fit; extra holds the teacher's
  variables and the labelled mask over the training set."""
  def objective(logits, x, batch, extra):
    teacher = jax.lax.stop_gradient(teacher_model.apply(extra["teacher"], x, train=False))
    loss = distillation_loss(logits, teacher, temperature)
    if label_weight:
      labelled = extra["labelled"][batch["index"]]
      supervised = labelled_cross_entropy(logits, batch["label"], labelled)
      loss = (1 - label_weight) * loss + label_weight * supervised
    return loss
  return objective


def evaluate(run, settings: finetune_lib.Settings) -> dict:
  """Teacher (semi) then student; the entry reports both, the student's at the top."""
  config = run.config
  teacher_epochs = (settings.teacher_epochs or
                    finetune_lib.default_epochs(settings.label_fraction))   # not --epochs
  model, teacher, teacher_entry, indices = finetune_lib.finetune(
      run, settings, settings.label_fraction, teacher_epochs)
  trunk_variables = None
  if settings.student_init == "pretrained":
    _, trunk_variables = finetune_lib.pretrained_trunk(run.method, config, run.variables,
                                                       teacher_entry["finetune_layer"])
  student = finetune_lib.initial_variables(model, config.image_size, trunk_variables,
                                           settings.seed + 1)
  labelled = np.zeros(len(run.train), bool)
  labelled[indices] = True
  # The teacher's settings apart from the length; the default batch follows the data.
  epochs = settings.epochs or STUDENT_EPOCHS
  student, info = finetune_lib.fit(
      model, student, run.train, settings, epochs, run.mesh, config.image_size,
      make_objective(model, settings.temperature, settings.label_weight),
      {"teacher": teacher, "labelled": labelled})
  logits = finetune_lib.predict(model, student, run.test.images, run.mesh,
                                config.eval.batch_size, config.image_size,
                                config.eval.crop_proportion)
  teacher_entry = {k: v for k, v in teacher_entry.items() if k != "step"}
  return {"step": run.step, **linear.top_k_accuracy(logits, run.test.labels), **info,
          "train_images": len(run.train), "temperature": settings.temperature,
          "label_weight": settings.label_weight, "student_init": settings.student_init,
          "finetune_layer": teacher_entry["finetune_layer"],
          "label_fraction": settings.label_fraction, "teacher": teacher_entry}
