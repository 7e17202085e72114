"""The online linear probe: a monitor trained beside pretraining, never part of it.

A linear classifier on the stop-gradient backbone features of each step's first augmented
view, with its own SGD (as BYOL's online classifier and solo-learn's), so no gradient
reaches the encoder. Its accuracy on the eval split is logged as `online_top1`: an online
number, biased by the moving encoder, not the offline linear evaluation of
`python -m ssl_jax.evaluate --protocol=linear`. Rows with label -1 (unknown) are ignored.
"""
import functools

import jax
import jax.numpy as jnp
import optax

from ssl_jax import losses, parallel
from ssl_jax.evaluate import knn, linear


def enabled(config, num_classes: int) -> bool:
  return bool(config.eval.online_probe) and num_classes > 1


def optimizer(config) -> optax.GradientTransformation:
  """SGD with momentum 0.9 and a cosine decay over the run, no weight decay."""
  lr = optax.cosine_decay_schedule(config.eval.probe_lr, max(config.run.total_steps, 1))
  return optax.sgd(lr, momentum=0.9)


def init(method, config, variables, num_classes: int) -> dict:
  """Zero-initialised {kernel, bias} for the method's features, and its optimizer state."""
  images = jnp.zeros((2, config.image_size, config.image_size, 3), jnp.float32)
  dim = jax.eval_shape(lambda v: method.encode(v, images, config, features="backbone"),
                       {"params": variables["params"],
                        "batch_stats": variables["batch_stats"]}).shape[-1]
  params = {"kernel": jnp.zeros((dim, num_classes)), "bias": jnp.zeros((num_classes,))}
  return {"params": params, "opt_state": optimizer(config).init(params)}


def logits(params, features):
  return features @ params["kernel"] + params["bias"]


def train_step(probe: dict, features, labels, config):
  """One SGD step on this device's rows, inside shard_map; returns (probe, metrics).

  Each device divides its loss by the global count of labelled rows and the gradients are
  summed over devices: the gradient of the global-batch mean, whatever the split.
  """
  features = jax.lax.stop_gradient(features).astype(jnp.float32)
  known = labels >= 0
  count = jnp.maximum(jax.lax.psum(known.sum(), parallel.AXIS), 1)

  def loss_fn(params):
    per_row = losses.cross_entropy(logits(params, features), jnp.maximum(labels, 0))
    return jnp.sum(jnp.where(known, per_row, 0.0)) / count, logits(params, features)

  (loss, scores), grads = jax.value_and_grad(loss_fn, has_aux=True)(probe["params"])
  grads = jax.lax.psum(grads, parallel.AXIS)
  updates, opt_state = optimizer(config).update(grads, probe["opt_state"], probe["params"])
  correct = jnp.sum(known & (jnp.argmax(scores, -1) == labels))
  metrics = {"online_train_loss": jax.lax.psum(loss, parallel.AXIS),
             "online_train_top1": jax.lax.psum(correct, parallel.AXIS) / count}
  return {"params": optax.apply_updates(probe["params"], updates),
          "opt_state": opt_state}, metrics


def evaluate(method, config, probe: dict, variables, test, mesh) -> dict:
  """The probe's accuracy on the eval split, on the features of `variables`, the network it
  learnt from (the student's, for DINO); {} when there is no probe."""
  if not probe:
    return {}
  # The backbone features it learns from, whatever config.eval.features says.
  encode = functools.partial(method.encode, config=config, features="backbone")
  features = knn.extract_features(encode, variables, test.images, mesh,
                                  config.eval.batch_size, config.image_size, normalize=False,
                                  crop_proportion=config.eval.crop_proportion)
  result = linear.accuracy(jax.device_get(probe["params"]), features, test.labels)
  return {"online_top1": result["top1"], "online_top5": result["top5"]}
