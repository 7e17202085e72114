"""CMC (Tian et al. 2019), L vs ab, following HobbitLong/CMC (train_CMC.py).

Variants, `--config=configs/cmc.py:<variant>`:
  (none)      ImageNet, the paper's "R50 L+ab" (`resnet50v1`, 64.1% linear): two ResNet-50s
              of width 0.5 (1 and 2 input channels), each + Linear(1024 -> 128) + L2
              normalisation, one memory bank per view (momentum 0.5), NCE with K = 16384
              (the code's default; the released weights used 4096) and two Z constants
              frozen after the first batch, temperature 0.07, batch 128, SGD lr 0.03 (no
              batch scaling), momentum 0.9, weight decay 1e-4, 240 epochs, lr x0.1 at
              epochs 120, 160 and 200; crops (0.08, 1), as train_CMC.py:88, 95-97 force
              crop_low 0.08 for the ResNets, and flip, resized bilinearly by PIL
              (antialiased), then RGB -> Lab normalised to the Lab ranges; no colour
              jitter. --config.cmc.objective=softmax for the `--softmax` variant (CE over
              the K + 1 logits).
  cifar10     Our own (the original has ImageNet and STL-10 settings only): ResNet-18 CIFAR
              stem, width 0.5 per view, the softmax objective (the original's --softmax,
              which its README reports as better than NCE) with K = 4096, temperature 0.07,
              weight decay 5e-4, 200 epochs with lr x0.1 at 120 and 160, batch 512 (the
              library's CIFAR preset) with lr 0.03 x 512/128 = 0.12, crops (0.2, 1) (the
              code's --crop_low default).
  quickstart  The bundled 5,000-image CIFAR-10 subset on a 2-core CPU: two narrow
              ResNet-18s (base width 8 each), softmax with K = 4096, temperature 0.07, lr
              0.03 (the original's, unscaled) for 6 epochs at batch 256. NCE does not learn
              here: with K = 4096 of only 5,000 rows and Z frozen after the first batch it
              sits at the fixed point where every score is equal (loss at chance, kNN below
              random init); softmax has no such fixed point.
  smoke       A seconds-long CPU run for tests (K = 64).

Architecture [CMC models/resnet.py:110-134]: the stem conv and its BN keep 64 channels
whatever the width (model.stem_width = 64), only the residual stages scale; convs normal
with std sqrt(2 / (k^2 C_out)) (torchvision's fan_out), every BN scale 1 (no zero-init).

Deviations: BN over the global batch (the original: per GPU under DataParallel); bilinear
crops are resized before the Lab conversion as float RGB (the original resizes uint8 with PIL); the NCE has no eps (see
ssl_jax/memory_bank.py); kNN on the concatenated backbone features of both encoders.

Evaluation: the quoted 64.1% is CMC's linear protocol on the concatenated backbone
features; `--protocol=linear` runs SimCLR's (library default; CMC's own, lr 30 on 'layer
6', is not implemented). config.eval.features='bank' gives a kNN of the test embeddings
(both views, concatenated) against the two memory banks. ImageNet variants evaluate on the
ILSVRC validation split with the central 0.875 crop (Resize(256) + CenterCrop(224);
config_lib.imagenet_eval), CIFAR ones on the test split at 32 px, whole image, with
lightly's kNN (backbone features, k 200, T 0.1), which experiments/RESULTS.md's
measurements use.
"""
import ml_collections

from ssl_jax import config as config_lib


def cifar_recipe(c):
  c.model.width = 0.5
  c.optimizer.update(base_lr=0.03 * 256 / 128, lr_scaling="linear", weight_decay=5e-4,
                     warmup_epochs=0, lr_steps_epochs=(120, 160))
  c.cmc.update(objective="softmax", num_negatives=4096)
  c.augment.crop_scale = (0.2, 1.0)   # the code's --crop_low default (STL-10, AlexNet)
  return c


def quickstart_recipe(c):
  cifar_recipe(c)
  c.model.width = 0.125
  c.num_epochs = 6           # ~10 minutes on a loaded 2-core CPU
  c.optimizer.base_lr = 0.03   # lr 0.03 at batch 256: less drift between a row's epochly writes
  return c


def smoke_recipe(c):
  cifar_recipe(c)
  c.model.width = 1 / 16
  c.cmc.update(objective="nce", num_negatives=64)   # the tests check NCE's frozen Z
  return c


def get_config(arg=None):
  c = config_lib.base_config()
  c.method = "cmc"
  c.dataset = "imagenet2012"
  config_lib.imagenet_eval(c)
  c.image_size = 224
  c.batch_size = 128
  c.num_epochs = 240
  c.model.update(depth=50, width=0.5, cifar_stem=False)      # each view's encoder
  c.model.update(projection_shortcut="when_needed", zero_init_residual="none",
                 init="torchvision", stem_width=64)
  c.head.update(num_layers=1, hidden_dim=0, out_dim=128)
  c.loss.temperature = 0.07
  c.optimizer.update(name="sgd", base_lr=0.03, lr_scaling="none", weight_decay=1e-4,
                     momentum=0.9, warmup_epochs=0, schedule="steps",
                     lr_steps_epochs=(120, 160, 200))
  # crop_low is forced to 0.08 for the ImageNet ResNets (train_CMC.py:88, 95-97).
  c.augment.update(crop_scale=(0.08, 1.0), flip=True, color_prob=0.0, gray_prob=0.0,
                   blur_prob=0.0, solarize_prob=0.0)
  c.augment.update(color_impl="torchvision", crop_sampler="torchvision", resize_method="bilinear",
                   antialias=True)   # train_CMC.py:131-149: torchvision transforms on PIL images
  c.cmc = ml_collections.ConfigDict(dict(
      objective="nce",            # "nce" | "softmax" (CE over the K + 1 logits)
      num_negatives=16384, memory_momentum=0.5))
  return config_lib.variant(c, arg, {
      "cifar10": lambda c: cifar_recipe(config_lib.use_cifar10(c)),
      "quickstart": lambda c: quickstart_recipe(config_lib.use_quickstart(c)),
      "smoke": lambda c: smoke_recipe(config_lib.use_smoke(c)),
  })
