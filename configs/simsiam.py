"""SimSiam (Chen & He 2020), following facebookresearch/simsiam.

Variants, `--config=configs/simsiam.py:<variant>`:
  (none)      ImageNet, the README's recommended command: ResNet-50 (zero-init residual),
              3-layer projector 2048-2048-2048 with BN on every layer (the output BN
              without affine parameters), predictor 2048 -> 512 (BN, ReLU) -> 2048 (bias, no
              BN), global BN, batch 512, SGD lr 0.05 x B/256 = 0.1, momentum 0.9, weight
              decay 1e-4 on every parameter, cosine stepped per epoch, no warmup, the
              predictor's lr held fixed (--fix-pred-lr), 100 epochs (68.1% linear); MoCo v2
              augmentation: crops (0.2, 1), ColorJitter(0.4, 0.4, 0.4, 0.1) p=0.8
              (multiplicative brightness), grayscale 0.2, blur p=0.5, flip.
  cifar10     lightly's CIFAR-10 benchmark SimSiam row (cifar10_benchmark.py @42a6a924,
              SimSiamModel, lines 387-428; config_lib.use_lightly_cifar10 for what all its
              methods share; kNN 0.764 at batch 512 / 200 epochs): ResNet-18 CIFAR stem,
              projector 512 -> 2048 (BN, ReLU) -> 2048 (BN), predictor 2048 -> 512 (BN,
              ReLU) -> 2048, loss 0.5 (D(p1, z2) + D(p2, z1)); SGD lr 0.06 not scaled
              ("no lr-scaling, results in better training stability"), momentum 0.9, weight
              decay 5e-4, per-epoch cosine, no warmup, the predictor's lr not fixed, 200
              epochs; the simsiam transform: crops (0.2, 1), ColorJitter(0.4, 0.4, 0.4, 0.1)
              p=0.8, grayscale 0.2, no blur; kNN every epoch on the backbone, the best
              kept. Deviation: the projector's output BN has no affine parameters
              (SimSiam's; lightly's has them).
  cifar10_orig  The paper's own CIFAR-10 setting (App. D, from memory of the paper, not
              re-checked): ResNet-18 CIFAR stem, 2-layer projector, batch 512, lr 0.03 x
              B/256, weight decay 5e-4; 200 epochs here (the paper runs 800); no blur.
  quickstart  The bundled 5,000-image CIFAR-10 subset on a 2-core CPU: a narrow ResNet-18
              (base width 8) with 512-wide heads and a 128-wide predictor bottleneck.
  smoke       A seconds-long CPU run for tests.

Augmentation semantics (`augment.color_impl`, `.crop_sampler`, `.resize_method`,
`.antialias`): torchvision's ColorJitter and RandomGrayscale on PIL images (contrast
toward the grey mean, saturation a blend with grey, multiplicative brightness),
RandomResizedCrop resized bilinearly by PIL, which antialiases when it shrinks
(main_simsiam.py); the device keeps float values where PIL rounds each op to uint8.

Architecture: torchvision's ResNet with zero_init_residual=True (builder.py:24) and kaiming
fan_out convs; every head Linear keeps PyTorch's default init, U(+-1/sqrt(fan_in)) for
weight and bias (builder.py:24-42), the predictor's hidden Linear without bias.

Deviations: ImageNet mean/std normalisation in every variant; blur is the TF-style kernel
(10% of the side) rather than PIL's radius; the projector's last Linear has no bias (the
original's is frozen, and the non-affine BN after it removes any bias anyway).

Evaluation: the quoted 68.1% is SimSiam's linear protocol, which `--protocol=linear` runs
(facebookresearch/simsiam @ a7bc177 main_lincls.py:44-57, 160, 188, 232, 493; README's
--lars): apex LARC (trust 1e-3, no clipping) around SGD momentum 0.9, batch 4096, lr 0.1 x
B/256, weight decay 0, 90 epochs, cosine, fc N(0, 0.01) with zero bias. ImageNet variants
evaluate on the ILSVRC validation split with the central 0.875 crop (Resize(256) +
CenterCrop(224); config_lib.imagenet_eval), CIFAR ones on the test split at 32 px, whole
image, with lightly's kNN (backbone features, k 200, T 0.1), which
experiments/RESULTS.md's measurements use.
"""
import ml_collections

from ssl_jax import config as config_lib


def cifar_recipe(c):
  c.head.update(num_layers=2, hidden_dim=2048, out_dim=2048)
  c.optimizer.update(base_lr=0.03, weight_decay=5e-4)
  c.augment.blur_prob = 0.0
  return c


def lightly_cifar10(c):
  """lightly's SimSiam row (see the module docstring)."""
  config_lib.use_lightly_cifar10(c)
  c.head.update(num_layers=2, hidden_dim=2048, out_dim=2048)
  c.simsiam.update(predictor_hidden_dim=512, color_jitter=(0.4, 0.4, 0.4, 0.1))
  c.optimizer.update(base_lr=0.06, lr_scaling="none")
  c.optimizer.fixed_lr_module = ""
  c.augment.crop_scale = (0.2, 1.0)
  return c


def quickstart_recipe(c):
  cifar_recipe(c)
  c.head.update(hidden_dim=512, out_dim=512)
  c.simsiam.predictor_hidden_dim = 128
  c.optimizer.update(base_lr=0.06, warmup_epochs=0)   # the preset's warmup is not SimSiam's
  return c


def get_config(arg=None):
  c = config_lib.base_config()
  c.method = "simsiam"
  c.dataset = "imagenet2012"
  config_lib.imagenet_eval(c)
  c.eval.linear.update(epochs=90, batch_size=4096, base_lr=0.1, weight_decay=0.0,
                       optimizer="lars", schedule="cosine", init="normal")
  c.image_size = 224
  c.batch_size = 512
  c.num_epochs = 100
  c.model.update(depth=50, width=1.0, cifar_stem=False)
  c.model.update(projection_shortcut="when_needed", zero_init_residual="all", init="torchvision")
  c.head.update(num_layers=3, hidden_dim=2048, out_dim=2048)     # the projector
  c.optimizer.update(name="sgd", base_lr=0.05, lr_scaling="linear", weight_decay=1e-4,
                     momentum=0.9, warmup_epochs=0, schedule="cosine_epochs")
  c.optimizer.fixed_lr_module = "predictor"                      # --fix-pred-lr
  c.augment.update(crop_scale=(0.2, 1.0), color_prob=0.8, brightness_impl="multiplicative",
                   gray_prob=0.2, blur_prob=0.5)
  c.augment.update(color_impl="torchvision", crop_sampler="torchvision", resize_method="bilinear",
                   antialias=True)   # main_simsiam.py: torchvision transforms on PIL images
  c.simsiam = ml_collections.ConfigDict(dict(
      predictor_hidden_dim=512, color_jitter=(0.4, 0.4, 0.4, 0.1)))
  return config_lib.variant(c, arg, {
      "cifar10": lightly_cifar10,
      "cifar10_orig": lambda c: cifar_recipe(config_lib.use_cifar10(c)),
      "quickstart": lambda c: quickstart_recipe(config_lib.use_quickstart(c)),
      "smoke": lambda c: quickstart_recipe(config_lib.use_smoke(c)),
  })
