"""SimCLR v1 (Chen et al. 2020a), following google-research/simclr's code.

Variants, `--config=configs/simclr_v1.py:<variant>`:
  (none)      ImageNet, as the paper: ResNet-50, 2-layer head with BN on every layer
              (output BN without shift), global batch 4096, LARS (momentum 0.9, trust
              0.001, biases and BN excluded) lr 0.3 x B/256 = 4.8, 10 warmup epochs then
              cosine, weight decay 1e-6, temperature 0.1, 224 px crops with blur, colour
              strength 1.0 and additive brightness (v1), 100 epochs (1000 for the
              headline 69.3% linear).
  cifar10     lightly's CIFAR-10 benchmark SimCLR row (cifar10_benchmark.py @42a6a924,
              SimCLRModel, lines 355-384; config_lib.use_lightly_cifar10 for what all its
              methods share; kNN 0.848 at batch 512 / 200 epochs): ResNet-18 CIFAR stem,
              SimCLRProjectionHead 512 -> 512 (BN, ReLU) -> 128 (BN), NTXentLoss with its
              default temperature 0.5, in-batch negatives; SGD momentum 0.9, lr 0.06 x B/128
              = 0.24, weight decay 5e-4 on every parameter, per-epoch cosine, no warmup, 200
              epochs, batch 512; the simclr transform (torchvision RandomResizedCrop (0.08,
              1), ColorJitter(0.4, 0.4, 0.4, 0.1) p=0.8 = strength 0.5, grayscale 0.2, no
              blur), ImageNet mean/std; kNN k = 200, T = 0.1 on the backbone every epoch,
              the best kept. Deviation: our output BN has no shift (SimCLR's; lightly's
              has one).
  cifar10_orig  The original's own CIFAR-10 command (google-research/simclr README, v1):
              ResNet-18 with the CIFAR stem, batch 512, LARS lr 1.0 x B/256, temperature
              0.5, colour strength 0.5, no blur, weight decay 1e-6. Deviation: 200 epochs
              (the README runs 1000).
  quickstart  The README's main job: a narrow ResNet-18 (base width 8) for 14 epochs on
              the bundled 5,000-image CIFAR-10 subset, under 5 minutes on a 2-core CPU.
              Deviations chosen for speed of learning at this scale: batch 128,
              temperature 0.2, head hidden width 512, crop scale (0.2, 1), 1 warmup epoch.
  smoke       A seconds-long CPU run for tests.
"""
from ssl_jax import config as config_lib


def cifar_recipe(c):
  c.loss.temperature = 0.5
  c.optimizer.base_lr = 1.0
  c.augment.update(color_strength=0.5, blur_prob=0.0)
  return c


def lightly_cifar10(c):
  """lightly's SimCLR row (see the module docstring)."""
  config_lib.use_lightly_cifar10(c)
  c.head.update(num_layers=2, hidden_dim=512, out_dim=128)
  c.loss.temperature = 0.5
  return c


def quickstart_recipe(c):
  """What learns fastest in a few CPU minutes (measured in experiments/RESULTS.md)."""
  c.batch_size = 128
  c.num_epochs = 14
  c.loss.temperature = 0.2
  c.head.hidden_dim = 512       # SimCLR's rule (hidden = backbone width) gives 64 here
  c.augment.crop_scale = (0.2, 1.0)
  return c


def get_config(arg=None):
  c = config_lib.base_config()
  c.method = "simclr"
  c.dataset = "imagenet2012"
  c.image_size = 224
  c.batch_size = 4096
  c.num_epochs = 100
  c.model.update(depth=50, width=1.0, cifar_stem=False)
  c.head.update(num_layers=2, hidden_dim=0, out_dim=128, finetune_layer=0)
  c.loss.temperature = 0.1
  c.optimizer.update(name="lars", base_lr=0.3, lr_scaling="linear", weight_decay=1e-6,
                     momentum=0.9, trust_coefficient=1e-3, warmup_epochs=10, schedule="cosine")
  c.augment.update(crop_scale=(0.08, 1.0), color_strength=1.0, brightness_impl="additive",
                   blur_prob=0.5)
  return config_lib.variant(c, arg, {
      "cifar10": lightly_cifar10,
      "cifar10_orig": lambda c: cifar_recipe(config_lib.use_cifar10(c)),
      "quickstart": lambda c: quickstart_recipe(cifar_recipe(config_lib.use_quickstart(c))),
      "smoke": lambda c: cifar_recipe(config_lib.use_smoke(c)),
  })
