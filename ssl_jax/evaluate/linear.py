"""Linear evaluation: a linear classifier on frozen features, each method's own protocol.

The settings come from config.eval.linear (set per method to its original's protocol, see
configs/*.py), flags of `python -m ssl_jax.evaluate` override them. The defaults are
SimCLR's (README): Nesterov momentum SGD (0.9), lr 0.1 x B/256 with cosine decay and no
warmup, weight decay 1e-6 on the weights, 90 epochs, zero-initialised logits layer. Every
protocol freezes the backbone with its BN in inference mode and trains on random-crop +
flip views of the training images (new crops every epoch). The batch defaults to one
scaled to the data set (`default_batch_size`: 4096 on ImageNet, as SimCLR) so that a
small data set still gets many steps an epoch; the lr follows by the B/256 rule. The
schedules run per step (the PyTorch originals set the lr per epoch).
"""
import dataclasses
import itertools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from ssl_jax import config as config_lib, losses, optim, parallel
from ssl_jax.data import augment


@dataclasses.dataclass
class Settings:
  """None = config.eval.linear's value (`resolve`); see ssl_jax/config.py."""
  epochs: int | None = None
  batch_size: int | None = None  # 0 = default_batch_size(number of training images)
  base_lr: float | None = None   # x batch / 256
  weight_decay: float | None = None
  optimizer: str | None = None   # "nesterov" | "sgd" | "lars"
  schedule: str | None = None    # "cosine" | "steps"
  lr_steps_epochs: tuple | None = None
  init: str | None = None        # "zeros" | "normal" (N(0, 0.01))
  vit_blocks: int | None = None
  vit_avgpool: bool | None = None
  momentum: float = 0.9
  seed: int = 0


def resolve(settings: Settings | None, config=None) -> Settings:
  """`settings` with every unset field from config.eval.linear (base_config's without a
  config)."""
  settings = settings or Settings()
  defaults = (config or config_lib.base_config()).eval.linear
  given = {f.name: getattr(settings, f.name) for f in dataclasses.fields(Settings)}
  return Settings(**{k: defaults[k] if v is None else v for k, v in given.items()})


def linear_config(config, settings: Settings):
  """`config` with the ViT output option of `settings` (the backbone DINO's linear
  protocol reads: class tokens of the last blocks); `config` itself for other models."""
  if config.model.name != "vit" or (settings.vit_blocks == 1 and not settings.vit_avgpool):
    return config
  config = ml_collections.ConfigDict(config.to_dict())
  config.model.output_blocks = settings.vit_blocks
  config.model.output_avgpool = settings.vit_avgpool
  return config


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


def _schedule(settings: Settings, peak: float, total_steps: int):
  if settings.schedule == "steps":   # x0.1 at each epoch of lr_steps_epochs (MoCo)
    per_epoch = total_steps / max(settings.epochs, 1)
    return optax.piecewise_constant_schedule(
        peak, {int(round(e * per_epoch)): 0.1 for e in settings.lr_steps_epochs})
  return optax.cosine_decay_schedule(peak, max(total_steps, 1))


def _optimizer(settings: Settings, batch_size: int, total_steps: int):
  """SimCLR's Nesterov SGD with decay on kernels; the PyTorch originals' SGD (decay on
  every parameter); or apex LARC around SGD (SimSiam: trust 1e-3, every parameter)."""
  lr = _schedule(settings, settings.base_lr * batch_size / 256, total_steps)
  if settings.optimizer == "lars":
    return optax.lars(lr, weight_decay=settings.weight_decay, trust_coefficient=1e-3,
                      momentum=settings.momentum)
  mask = optim.kernel_mask if settings.optimizer == "nesterov" else None
  return optax.chain(
      optax.add_decayed_weights(settings.weight_decay, mask=mask),
      optax.sgd(lr, momentum=settings.momentum, nesterov=settings.optimizer == "nesterov"))


def initial_classifier(settings: Settings, dim: int, num_classes: int) -> dict:
  """Zeros (SimCLR), or N(0, 0.01) weights with a zero bias (MoCo, SimSiam, MoCo v3, DINO)."""
  kernel = jnp.zeros((dim, num_classes))
  if settings.init == "normal":
    kernel = 0.01 * jax.random.normal(jax.random.key(settings.seed + 1), (dim, num_classes))
  return {"kernel": kernel, "bias": jnp.zeros((num_classes,))}


def logits(classifier, features):
  return features @ classifier["kernel"] + classifier["bias"]


def batch_size(settings: Settings, num_images: int, devices: int) -> int:
  """The global batch: settings.batch_size (0: default_batch_size), a multiple of `devices`."""
  batch = resolve(settings).batch_size or default_batch_size(num_images)
  return max(devices, min(batch, num_images) // devices * devices)


def fit(featurize, variables, inputs: np.ndarray, labels: np.ndarray, num_classes: int,
        settings: Settings, mesh) -> dict:
  """Trains {kernel, bias} on featurize(variables, batch of inputs, key), frozen, over
  in-memory arrays reshuffled every epoch."""
  settings = resolve(settings)
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
  settings = resolve(settings)
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
      start = initial_classifier(settings, dim, num_classes)
      # On the mesh (every process's devices) like the sharded batches it meets.
      classifier, opt_state = parallel.replicate((start, tx.init(start)), mesh)
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
