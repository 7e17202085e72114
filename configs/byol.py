"""BYOL (Grill et al. 2020), following deepmind-research/byol (configs/byol.py).

Variants, `--config=configs/byol.py:<variant>`:
  (none)      ImageNet, the 1000-epoch preset: ResNet-50, projector and predictor
              Linear(4096, bias) -> BN -> ReLU -> Linear(256, no bias), global BN, batch
              4096, LARS with the lr outside the momentum (trust 1e-3, biases and norm
              parameters excluded from decay and adaptation) lr 0.2 x B/256 = 3.2, weight
              decay 1.5e-6, 10 warmup epochs then cosine, target momentum 0.996 -> 1
              (per-step cosine); crops (0.08, 1), colour jitter (0.4, 0.4, 0.2, 0.1) with
              additive brightness p=0.8, grayscale 0.2, blur p = 1.0 / 0.1 and solarize
              p = 0 / 0.2 on views 1 / 2.
  cifar10     lightly's CIFAR-10 benchmark BYOL row (cifar10_benchmark.py @42a6a924,
              BYOLModel, lines 489-549; config_lib.use_lightly_cifar10 for what all its
              methods share; kNN 0.868 at batch 512 / 200 epochs): ResNet-18 CIFAR stem,
              projector 512 -> 1024 (BN, ReLU) -> 256, predictor 256 -> 1024 (BN, ReLU) ->
              256, loss 0.5 (-cos(p1, z2) - cos(p2, z1)) (byol.loss "mean_negative_cosine":
              1/4 of BYOL's gradient), target a copy of the online network (deepcopy) with
              EMA 0.99 constant (byol.final_momentum = base); SGD lr 0.06 x B/128 = 0.24,
              weight decay 5e-4 on every parameter, per-epoch cosine, no warmup, 200 epochs;
              the simclr transform the table was made with (METHODS.md §16.4: the byol
              transform came later, 775829bb): crops (0.08, 1), ColorJitter(0.4, 0.4, 0.4,
              0.1) p=0.8, grayscale 0.2, no blur, no solarisation; kNN every epoch on the
              backbone, the best kept. BYOL has no CIFAR recipe of its own.
  quickstart  The bundled 5,000-image CIFAR-10 subset: a narrow ResNet-18 (base width 8)
              for 10 epochs on a 2-core CPU; BYOL's heads, loss and per-step cosine target
              momentum with SGD (weight decay 5e-4, per-step cosine, no warmup, blur off,
              solarize 0 / 0.2), smaller MLPs (hidden 512), lr 0.5 x B/256, crops (0.2, 1)
              and target momentum 0.97 -> 1, tuned for 190 steps (experiments/RESULTS.md).
  smoke       A seconds-long CPU run for tests.

Deviations: the online linear classifier trained beside BYOL is ssl_jax/probe.py's online
probe (eval.online_probe, its own SGD, not BYOL's LARS schedule); the ResNet's last BN of each block starts at zero (the README's results
used one); the crop keeps torchvision's 10 retries (BYOL draws once and clips); Dense
layers use Flax's default init.
"""
import ml_collections

from ssl_jax import config as config_lib


def cifar_recipe(c):
  c.optimizer.update(name="sgd", base_lr=0.12, lr_scaling="linear", weight_decay=5e-4,
                     momentum=0.9, warmup_epochs=0, schedule="cosine")
  c.byol.update(base_momentum=0.99, blur_probs=(0.0, 0.0))
  return c


def lightly_cifar10(c):
  """lightly's BYOL row (see the module docstring)."""
  config_lib.use_lightly_cifar10(c)
  c.head.update(num_layers=2, hidden_dim=1024, out_dim=256)
  c.byol.update(predictor_hidden_dim=1024, base_momentum=0.99, final_momentum=0.99,
                loss="mean_negative_cosine", target_init="copy",
                color_jitter=(0.4, 0.4, 0.4, 0.1), blur_probs=(0.0, 0.0),
                solarize_probs=(0.0, 0.0))
  return c


def quickstart_recipe(c):
  cifar_recipe(c)
  c.head.hidden_dim = 512
  c.optimizer.base_lr = 0.5
  c.augment.crop_scale = (0.2, 1.0)     # kinder to a tiny network
  c.byol.update(predictor_hidden_dim=512, base_momentum=0.97)   # 190 steps: a faster target
  return c


def smoke_recipe(c):
  quickstart_recipe(c)
  return c


def get_config(arg=None):
  c = config_lib.base_config()
  c.method = "byol"
  c.dataset = "imagenet2012"
  c.image_size = 224
  c.batch_size = 4096
  c.num_epochs = 1000
  c.model.update(depth=50, width=1.0, cifar_stem=False)
  c.head.update(num_layers=2, hidden_dim=4096, out_dim=256)    # the projector
  c.optimizer.update(name="lars_byol", base_lr=0.2, lr_scaling="linear", weight_decay=1.5e-6,
                     momentum=0.9, trust_coefficient=1e-3, warmup_epochs=10, schedule="cosine")
  c.augment.update(crop_scale=(0.08, 1.0), color_prob=0.8, brightness_impl="additive",
                   gray_prob=0.2)
  c.byol = ml_collections.ConfigDict(dict(
      base_momentum=0.996, final_momentum=1.0, predictor_hidden_dim=4096,
      loss="sum_mse", target_init="random", color_jitter=(0.4, 0.4, 0.2, 0.1),
      blur_probs=(1.0, 0.1), solarize_probs=(0.0, 0.2)))
  return config_lib.variant(c, arg, {
      "cifar10": lightly_cifar10,
      "quickstart": lambda c: quickstart_recipe(config_lib.use_quickstart(c)),
      "smoke": lambda c: smoke_recipe(config_lib.use_smoke(c)),
  })
