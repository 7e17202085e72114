"""Linear evaluation: a linear classifier on frozen features (SimCLR's protocol).

SimCLR (README): Nesterov momentum SGD (0.9), lr 0.1 x B/256 with cosine decay and no
warmup, weight decay 1e-6 on the weights, 90 epochs, zero-initialised logits layer, the
backbone frozen and its BN in inference mode, features of random-crop + flip views of
the training images (new crops every epoch). SimCLR's ImageNet batch is 4096; here the
default batch is scaled to the data set (`default_batch_size`) so that a small data set
still gets many steps an epoch, and the lr follows by the B/256 rule.
"""
import dataclasses
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ssl_jax import losses, optim, parallel
from ssl_jax.data import augment


@dataclasses.dataclass
class Settings:
  epochs: int = 90
  batch_size: int = 0          # 0 = default_batch_size(number of training images)
  base_lr: float = 0.1         # x batch / 256
  weight_decay: float = 1e-6
  momentum: float = 0.9
  seed: int = 0


def default_batch_size(num_images: int) -> int:
  """The largest power of two <= N / 50, within [16, 4096]: 4096 on ImageNet, 512 on
  CIFAR-10, 64 on the 5,000-image quickstart set."""
  target = max(num_images // 50, 16)
  return int(min(4096, 2 ** int(np.floor(np.log2(target)))))


def crop_flip_view(image_size: int) -> augment.View:
  """Inception crop (area 0.08-1) and flip, no colour: SimCLR's training preprocessing
  with colour distortion off."""
  return augment.View(image_size, color_prob=0.0, gray_prob=0.0, blur_prob=0.0)


def augmented_encoder(encode, image_size: int):
  """featurize(variables, uint8 images, key) -> features of random-crop + flip views."""
  view = crop_flip_view(image_size)

  def featurize(variables, images, key):
    rows = jnp.arange(images.shape[0])
    return encode(variables, augment.augment_batch(key, images, rows, view))
  return featurize


def _optimizer(settings: Settings, batch_size: int, total_steps: int):
  lr = optax.cosine_decay_schedule(settings.base_lr * batch_size / 256, max(total_steps, 1))
  return optax.chain(
      optax.add_decayed_weights(settings.weight_decay, mask=optim.kernel_mask),
      optax.sgd(lr, momentum=settings.momentum, nesterov=True))


def logits(classifier, features):
  return features @ classifier["kernel"] + classifier["bias"]


def batch_size(settings: Settings, num_images: int, devices: int) -> int:
  """The global batch: settings.batch_size (0: default_batch_size), a multiple of `devices`."""
  batch = settings.batch_size or default_batch_size(num_images)
  return max(devices, min(batch, num_images) // devices * devices)


def fit(featurize, variables, inputs: np.ndarray, labels: np.ndarray, num_classes: int,
        settings: Settings, mesh) -> dict:
  """Trains {kernel, bias} on featurize(variables, batch of inputs, key), frozen, over
  in-memory arrays reshuffled every epoch."""
  batch = batch_size(settings, len(inputs), mesh.devices.size)
  steps_per_epoch = len(inputs) // batch
  order = np.random.default_rng(settings.seed)

  def batches():
    for _ in range(settings.epochs):
      perm = order.permutation(len(inputs))
      for i in range(steps_per_epoch):
        idx = np.sort(perm[i * batch:(i + 1) * batch])
        yield tuple(parallel.shard_rows(a[idx], mesh) for a in (inputs, labels))
  return fit_batches(featurize, variables, batches(), num_classes, settings, batch,
                     settings.epochs * steps_per_epoch, mesh)


def fit_batches(featurize, variables, batches, num_classes: int, settings: Settings,
                batch: int, total_steps: int, mesh) -> dict:
  """Trains {kernel, bias} on featurize(variables, x, key), frozen, for the `total_steps`
  (x, y) global batches of size `batch` that `batches` yields (a stream, e.g. tf.data)."""
  tx = _optimizer(settings, batch, total_steps)
  key = jax.random.key(settings.seed)

  @jax.jit
  def step(classifier, opt_state, variables, x, y, key):
    features = jax.lax.stop_gradient(featurize(variables, x, key)).astype(jnp.float32)

    def loss_fn(classifier):
      return losses.cross_entropy(logits(classifier, features), y).mean()
    loss, grads = jax.value_and_grad(loss_fn)(classifier)
    updates, opt_state = tx.update(grads, opt_state, classifier)
    return optax.apply_updates(classifier, updates), opt_state, loss

  classifier = opt_state = None
  for i, (x, y) in enumerate(itertools.islice(batches, total_steps)):
    if classifier is None:   # the feature width, from the first batch
      dim = jax.eval_shape(featurize, variables, x, key).shape[-1]
      zeros = {"kernel": jnp.zeros((dim, num_classes)), "bias": jnp.zeros((num_classes,))}
      # On the mesh (every process's devices) like the sharded batches it meets.
      classifier, opt_state = parallel.replicate((zeros, tx.init(zeros)), mesh)
    classifier, opt_state, _ = step(classifier, opt_state, variables, x, y,
                                    jax.random.fold_in(key, i))
  if classifier is None:
    raise ValueError("linear evaluation got no training batch")
  return jax.device_get(classifier)


def accuracy(classifier, features: np.ndarray, labels: np.ndarray) -> dict:
  """Top-1 and top-5 (fractions) of the classifier on precomputed features."""
  return top_k_accuracy(logits(classifier, np.asarray(features, np.float32)), labels)


def top_k_accuracy(scores, labels: np.ndarray) -> dict:
  """Top-1 and top-5 (fractions) of class scores (N, classes) against labels (N,)."""
  ranked = np.argsort(-np.asarray(scores), axis=1)
  labels = np.asarray(labels)[:, None]
  return {"top1": float((ranked[:, :1] == labels).mean()),
          "top5": float((ranked[:, :5] == labels).any(axis=1).mean())}
