"""InstDisc (Wu et al. 2018), following zhirongw/lemniscate.pytorch (main.py, cifar.py).

Variants, `--config=configs/instdisc.py:<variant>`:
  (none)      ImageNet, as main.py: ResNet-50 + Linear(2048 -> 128) + L2 normalisation,
              memory bank of 1,281,167 rows (momentum 0.5), NCE with K = 4096 uniform
              negatives and Z frozen after the first batch, temperature 0.07, batch 256,
              SGD lr 0.03 (no batch scaling), momentum 0.9, weight decay 1e-4 on every
              parameter, 200 epochs, lr x0.1 at epochs 120 and 160; crops (0.2, 1),
              grayscale 0.2, ColorJitter(0.4, 0.4, 0.4, 0.4) always (multiplicative
              brightness), flip. kNN temperature 0.07 (the original's sigma = tau).
  cifar10     The CIFAR README command (`cifar.py --nce-k 0 --nce-t 0.1`): ResNet-18 CIFAR
              stem, the full softmax over all 50,000 bank rows (80.8% kNN in the paper;
              --config.instdisc.objective=nce for NCE with K = 4096, 80.4%), temperature
              0.1, weight decay 5e-4, 200 epochs, lr x0.1 at 120 and 160. Batch 512 (the
              library's CIFAR preset) with lr 0.03 x 512/128 = 0.12, where the original has
              batch 128 and lr 0.03.
  quickstart  The bundled 5,000-image CIFAR-10 subset on a 2-core CPU: a narrow ResNet-18
              (base width 8), the cifar10 recipe (full softmax over the 5,000 rows,
              temperature 0.1, lr 0.03 x 256/128 = 0.06) for 10 epochs at batch 256.
  smoke       A seconds-long CPU run for tests (NCE, K = 64).

Augmentation semantics (`augment.color_impl`, `.crop_sampler`, `.resize_method`,
`.antialias`): torchvision's ColorJitter and RandomGrayscale on PIL images (contrast
toward the grey mean, saturation a blend with grey, multiplicative brightness),
RandomResizedCrop resized bilinearly by PIL, which antialiases when it shrinks
(main.py:118-125, cifar.py:50-57); the device keeps float values where PIL rounds each op
to uint8.

Deviations: ImageNet mean/std input normalisation in every variant (the CIFAR original
uses CIFAR's); at ImageNet scale grayscale comes after the colour jitter (main.py greys
first; cifar.py jitters first, as here, and has no flip, cifar.py:54: the CIFAR variants
set augment.flip=False); BN over the global batch; the NCE has no eps (see
ssl_jax/memory_bank.py); backbone features for kNN.

Evaluation (zhirongw/lemniscate.pytorch, test.py: weighted kNN, k = 200, sigma = tau): the
ImageNet default scores the test embeddings against the memory bank itself
(config.eval.features='bank', main.py's final kNN without recomputing the memory), T =
0.07; cifar10's 80.8% recomputes the 128-d L2-normalised embeddings of the training images
(features='embedding', cifar.py's final kNN with recompute_memory), T = 0.1; quickstart
reads the backbone features, as experiments/RESULTS.md measured. The paper's 54.0% linear
is not lemniscate's code; `--protocol=linear` runs SimCLR's (library default). ImageNet
variants evaluate on the ILSVRC validation split with the central 0.875 crop (Resize(256)
+ CenterCrop(224); config_lib.imagenet_eval), CIFAR ones on the test split at 32 px, whole
image, with lightly's kNN (backbone features, k 200, T 0.1), which
experiments/RESULTS.md's measurements use.
"""
import ml_collections

from ssl_jax import config as config_lib


def cifar_recipe(c):
  """cifar.py as the README runs it."""
  c.loss.temperature = 0.1
  c.eval.knn_temperature = 0.1
  c.eval.features = "embedding"   # cifar.py's final kNN recomputes the 128-d features
  c.optimizer.update(base_lr=0.03 * 256 / 128, lr_scaling="linear", weight_decay=5e-4,
                     warmup_epochs=0)
  c.instdisc.objective = "full"
  c.augment.flip = False     # cifar.py:54 comments the flip out
  return c


def quickstart_recipe(c):
  cifar_recipe(c)
  c.eval.features = "backbone"   # as experiments/RESULTS.md measured
  return c


def smoke_recipe(c):
  cifar_recipe(c)
  c.instdisc.update(objective="nce", num_negatives=64)
  return c


def get_config(arg=None):
  c = config_lib.base_config()
  c.method = "instdisc"
  c.dataset = "imagenet2012"
  config_lib.imagenet_eval(c)
  c.eval.features = "bank"
  c.image_size = 224
  c.batch_size = 256
  c.num_epochs = 200
  c.model.update(depth=50, width=1.0, cifar_stem=False)
  # lemniscate models/resnet.py and resnet_cifar.py: every BN scale starts at 1
  c.model.update(projection_shortcut="when_needed", zero_init_residual="none")
  c.head.update(num_layers=1, hidden_dim=0, out_dim=128)     # Linear(2048 -> 128)
  c.loss.temperature = 0.07
  c.optimizer.update(name="sgd", base_lr=0.03, lr_scaling="none", weight_decay=1e-4,
                     momentum=0.9, warmup_epochs=0, schedule="steps", lr_steps_epochs=(120, 160))
  c.augment.update(crop_scale=(0.2, 1.0), color_prob=1.0, brightness_impl="multiplicative",
                   gray_prob=0.2, blur_prob=0.0, solarize_prob=0.0)
  c.augment.update(color_impl="torchvision", crop_sampler="torchvision", resize_method="bilinear",
                   antialias=True)   # main.py:118-125, cifar.py:50-57: torchvision on PIL
  c.eval.knn_temperature = 0.07
  c.instdisc = ml_collections.ConfigDict(dict(
      objective="nce",            # "nce" | "softmax" (CE over the K + 1) | "full" (all rows)
      num_negatives=4096, memory_momentum=0.5, color_jitter=(0.4, 0.4, 0.4, 0.4)))
  return config_lib.variant(c, arg, {
      "cifar10": lambda c: cifar_recipe(config_lib.use_cifar10(c)),
      "quickstart": lambda c: quickstart_recipe(config_lib.use_quickstart(c)),
      "smoke": lambda c: smoke_recipe(config_lib.use_smoke(c)),
  })
