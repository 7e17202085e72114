"""The offline evaluation protocols behind `python -m ssl_jax.evaluate` (see __main__.py)."""
import os

import jax.numpy as jnp
import numpy as np

from ssl_jax.data import augment, pipeline
from ssl_jax.errors import ConfigError
from ssl_jax.evaluate import distill, finetune, knn, linear, plots, workdir as workdir_lib

PROTOCOLS = ("knn", "linear", "export", "plots") + finetune.PROTOCOLS


def features(run, images, normalize: bool, encode=None):
  """Features of the evaluation views (config.eval.crop_proportion) of `images`."""
  return knn.extract_features(encode or run.encode, run.variables, images, run.mesh,
                              run.config.eval.batch_size, run.config.image_size, normalize,
                              run.config.eval.crop_proportion)


def evaluate_knn(run) -> dict:
  config = run.config
  result = knn.evaluate(run.method, config, run.variables, run.train, run.test, run.mesh)
  return {"step": run.step, "k": config.eval.knn_k, "temperature": config.eval.knn_temperature,
          "features": config.eval.features, "crop_proportion": config.eval.crop_proportion,
          "top1": result["knn_top1"], "top5": result["knn_top5"]}


def evaluate_linear(run, settings) -> dict:
  """The method's linear protocol (config.eval.linear), unset fields of `settings` from it."""
  settings = linear.resolve(settings, run.config)
  config = linear.linear_config(run.config, settings)
  encode = lambda v, x: run.method.encode(v, x, config)  # noqa: E731
  num_classes = len(run.train.classes)
  if isinstance(run.train, pipeline.EvalSplit):
    classifier = fit_linear_streamed(run, settings, encode)
  else:
    featurize = linear.augmented_encoder(encode, run.config.image_size)
    classifier = linear.fit(featurize, run.variables, run.train.images, run.train.labels,
                            num_classes, settings, run.mesh)
  test_features = features(run, run.test.images, False, encode)
  result = linear.accuracy(classifier, test_features, run.test.labels)
  batch = linear.batch_size(settings, len(run.train), run.mesh.devices.size)
  schedule = (f"x0.1 at epochs {list(settings.lr_steps_epochs)}"
              if settings.schedule == "steps" else settings.schedule)
  return {"step": run.step, **result, "epochs": settings.epochs, "batch_size": batch,
          "lr": settings.base_lr * batch / 256,
          "optimizer": f"{settings.optimizer} {settings.momentum}, {schedule}",
          "weight_decay": settings.weight_decay, "init": settings.init,
          "features": run.config.eval.features, "feature_dim": int(test_features.shape[-1]),
          "crop_proportion": run.config.eval.crop_proportion, "augment": "random crop + flip"}


def fit_linear_streamed(run, settings, encode) -> dict:
  """linear.fit for a data set too large for memory: tf.data cuts the random crops and
  flips on the host (each process its shard), the device only scales them to [0, 1]."""
  view = linear.crop_flip_view(run.config.image_size)
  batch = linear.batch_size(settings, len(run.train), run.mesh.devices.size)
  data = pipeline.TFDataLoader(pipeline.train_shard(run.config), [view], batch, settings.seed,
                               run.mesh)
  total_steps = settings.epochs * data.steps_per_epoch

  def featurize(variables, crops, key):
    rows = jnp.arange(crops.shape[0])
    return encode(variables, augment.photometric_batch(key, crops, rows, view))
  batches = ((b["view0"], b["label"]) for b in data.batches(0, total_steps))
  return linear.fit_batches(featurize, run.variables, batches, len(run.train.classes),
                            settings, batch, total_steps, run.mesh)


def export(run, workdir) -> dict:
  out = os.path.join(workdir, "features")
  os.makedirs(out, exist_ok=True)
  shapes = {}
  for split, data in (("train", run.train), ("eval", run.test)):
    f = features(run, data.images, normalize=False)
    np.save(os.path.join(out, f"{split}_features.npy"), f)
    np.save(os.path.join(out, f"{split}_labels.npy"), data.labels)
    shapes[split] = list(f.shape)
  return {"step": run.step, "directory": out, "shapes": shapes, "normalized": False,
          "features": run.config.eval.features,
          "crop_proportion": run.config.eval.crop_proportion}


def write_plots(run, workdir) -> dict:
  paths = plots.write_at_end(workdir, run.method, run.config, run.variables, run.test,
                             run.mesh)
  return {"step": run.step, "files": paths}


def evaluate(workdir: str, protocol: str, settings=None) -> dict:
  """Runs `protocol` on `workdir`; returns its entry (also merged into eval.json)."""
  if protocol not in PROTOCOLS:
    raise ConfigError(f"--protocol={protocol!r} is unknown; use one of {', '.join(PROTOCOLS)}")
  if protocol in finetune.PROTOCOLS:   # flags are checked before the run is loaded
    settings = settings or finetune.Settings()
    finetune.validate_settings(settings)
  # Fine-tuning and distillation hold their splits in memory; the rest stream them.
  run = workdir_lib.load_run(workdir, in_memory=protocol in finetune.PROTOCOLS)
  if protocol == "knn":
    result = evaluate_knn(run)
  elif protocol == "linear":
    result = evaluate_linear(run, settings)
  elif protocol == "distill":
    result = distill.evaluate(run, settings)
  elif protocol in finetune.PROTOCOLS:
    result = finetune.evaluate(run, protocol, settings)
  elif protocol == "export":
    result = export(run, workdir)
  else:
    return write_plots(run, workdir)
  workdir_lib.write_result(workdir, protocol, result)
  return result
