"""MoCo v3 (Chen, Xie & He 2021), following facebookresearch/moco-v3 (CONFIG.md commands).

Variants, `--config=configs/moco_v3.py:<variant>`:
  (none)       ImageNet ViT-S/16 as CONFIG.md: 12 heads, fixed 2-D sin-cos position
               embedding, frozen random patch projection (--stop-grad-conv1), projector
               3 layers 384-4096-4096-256 (last BN without affine), predictor 2 layers
               256-4096-256 with last BN; batch 4096, AdamW lr 1.5e-4 x B/256 = 2.4e-3,
               betas (0.9, 0.999), weight decay 0.1 on every parameter, 40 warmup epochs
               then cosine, 300 epochs (73.2% linear), temperature 0.2, momentum 0.99 -> 1
               cosine per step, crop scale (0.08, 1). ViT-B/16: --config.model.width=768.
  resnet50     The 300-epoch ResNet-50 command: projector 2 layers 2048-4096-256, predictor
               without last BN, LARS (lr outside the momentum buffer, 1-D parameters
               excluded from decay and trust scaling) lr 0.3 x B/256 = 4.8, weight decay
               1e-6, 10 warmup epochs, temperature 1.0, crop scale (0.2, 1) (72.8% linear).
  cifar10      CIFAR-10 at 32 px, our choice (the original has no CIFAR recipe): the
               ResNet-18 CIFAR stem, batch 512, 200 epochs, the resnet50 recipe (LARS 0.3 x
               B/256, weight decay 1e-6, 10 warmup epochs) with temperature 0.2 instead of
               1.0 (better at this batch size), no blur (32 px), crop scale (0.08, 1).
  cifar10_vit  CIFAR-10 at 32 px with a ViT-S/4 (our choice: 64 patches + class token, 12
               heads, sin-cos, frozen patch projection), the paper's ViT recipe (AdamW 1.5e-4
               x B/256, weight decay 0.1, temperature 0.2) at batch 512 for 200 epochs with
               20 warmup epochs (the paper's 40/300 scaled), no blur.
  quickstart   The README's main job: a narrow ResNet-18 (base width 8) with 512-wide
               MLPs (output 128) on the bundled 5,000-image CIFAR-10 subset, batch 256,
               10 epochs, the cifar10 recipe with LARS lr 2.0 x B/256 (tuned: 0.3 hardly
               moves the weights in 190 steps), a few minutes on a CPU.
  smoke        Seconds on a CPU: a 2-block ViT (width 32, patch 4) on 16 px crops.

Augmentation fields: `augment.jitter` (brightness, contrast, saturation, hue) and the
per-view `augment.view_blur_prob` / `augment.view_solarize_prob` replace color_strength,
blur_prob and solarize_prob, which MoCo v3 does not read.

Augmentation semantics (`augment.color_impl`, `.crop_sampler`, `.resize_method`,
`.antialias`): torchvision's ColorJitter and RandomGrayscale on PIL images (contrast
toward the grey mean, saturation a blend with grey, multiplicative brightness),
RandomResizedCrop resized bilinearly by PIL, which antialiases when it shrinks
(main_moco.py); the device keeps float values where PIL rounds each op to uint8.

Deviations from the original: photometric augmentation runs on the device with the
library's ops (SimCLR-style blur whose kernel is 10% of the crop instead of PIL's
GaussianBlur, solarize at 0.5 instead of 128/255); ImageNet
mean/std normalisation happens inside the network; the sin-cos position embedding is a
constant, not a frozen parameter. Inits as the original: the ViT's own (model.vit_init =
"moco_v3": Xavier-uniform, qkv split in three, class token N(0, 1e-6)); the ResNet
variants' torchvision ResNet-50 with zero_init_residual=True [main_moco.py]. Mixed
precision is bfloat16 (the original: fp16 AMP).

Evaluation: the quoted linear figures use MoCo v3's protocol, which `--protocol=linear`
runs (facebookresearch/moco-v3 @ c349e6e main_lincls.py:49-62, 168, 196, 501;
CONFIG.md:144): SGD momentum 0.9, batch 1024, lr 3 (ViT) / 0.1 (resnet50) x B/256, weight
decay 0, 90 epochs, cosine, fc N(0, 0.01) with zero bias, on the last block's CLS token
(ViT) or the pooled features. ImageNet variants evaluate on the ILSVRC validation split
with the central 0.875 crop (Resize(256) + CenterCrop(224); config_lib.imagenet_eval),
CIFAR ones on the test split at 32 px, whole image, with lightly's kNN (backbone features,
k 200, T 0.1), which experiments/RESULTS.md's measurements use.
"""
import ml_collections

from ssl_jax import config as config_lib


def vit_model(c, width, patch_size, num_heads=12, depth=12):
  c.model.update(name="vit", width=width, depth=depth, num_heads=num_heads,
                 patch_size=patch_size, pos_embed="sincos", drop_path=0.0,
                 frozen_patch_embed=True, vit_init="moco_v3")


def vit_recipe(c):
  c.loss.temperature = 0.2
  c.head.update(num_layers=3, hidden_dim=4096, out_dim=256)
  c.predictor.update(num_layers=2, hidden_dim=4096, last_bn=True)
  c.optimizer.update(name="adamw", base_lr=1.5e-4, lr_scaling="linear", weight_decay=0.1,
                     decay_all=True, warmup_epochs=40, schedule="cosine")
  return c


def resnet_recipe(c):
  c.loss.temperature = 1.0
  c.head.update(num_layers=2, hidden_dim=4096, out_dim=256)
  c.predictor.update(num_layers=2, hidden_dim=4096, last_bn=False)
  c.optimizer.update(name="lars_byol", base_lr=0.3, lr_scaling="linear", weight_decay=1e-6,
                     momentum=0.9, trust_coefficient=1e-3, decay_all=False, warmup_epochs=10,
                     schedule="cosine")
  c.augment.crop_scale = (0.2, 1.0)
  c.eval.linear.base_lr = 0.1   # main_lincls.py:58, the R50 linear lr
  return c


def resnet50(c):
  c.model.update(name="resnet", depth=50, width=1.0, cifar_stem=False)
  return resnet_recipe(c)


def cifar10(c):
  config_lib.use_cifar10(resnet_recipe(c))
  c.model.name = "resnet"
  c.loss.temperature = 0.2
  c.augment.update(crop_scale=(0.08, 1.0), view_blur_prob=(0.0, 0.0))
  return c


def cifar10_vit(c):
  config_lib.use_cifar10(c)
  vit_model(c, width=384, patch_size=4)
  c.optimizer.warmup_epochs = 20
  c.augment.view_blur_prob = (0.0, 0.0)
  return c


def quickstart(c):
  config_lib.use_quickstart(resnet_recipe(c))
  c.model.name = "resnet"
  c.loss.temperature = 0.2
  c.head.hidden_dim = c.predictor.hidden_dim = 512
  c.head.out_dim = 128
  # LARS at 0.3 x B/256 barely moves a tiny net in 190 steps (kNN 30.2% vs 32.6% at 2.0).
  c.optimizer.base_lr = 2.0
  c.augment.update(crop_scale=(0.08, 1.0), view_blur_prob=(0.0, 0.0))
  return c


def smoke(c):
  config_lib.use_smoke(c)
  vit_model(c, width=32, patch_size=4, num_heads=2, depth=2)
  c.head.update(hidden_dim=64, out_dim=32)
  c.predictor.hidden_dim = 64
  c.optimizer.warmup_epochs = 1
  c.augment.view_blur_prob = (0.0, 0.0)
  return c


def get_config(arg=None):
  c = config_lib.base_config()
  c.method = "moco_v3"
  c.dataset = "imagenet2012"
  config_lib.imagenet_eval(c)
  c.eval.linear.update(epochs=90, batch_size=1024, base_lr=3.0, weight_decay=0.0,
                       optimizer="sgd", schedule="cosine", init="normal")
  c.image_size = 224
  c.batch_size = 4096
  c.num_epochs = 300
  vit_model(c, width=384, patch_size=16)
  # ResNet variants: torchvision's resnet50(zero_init_residual=True) (main_moco.py)
  c.model.update(projection_shortcut="when_needed", zero_init_residual="all", init="torchvision")
  c.predictor = ml_collections.ConfigDict(dict(num_layers=2, hidden_dim=4096, last_bn=True))
  c.momentum = ml_collections.ConfigDict(dict(base=0.99, final=1.0))   # cosine per step
  c.optimizer.decay_all = False
  # torchvision ColorJitter(0.4, 0.4, 0.2, 0.1) with p 0.8 (brightness multiplicative),
  # grayscale 0.2; blur p 1.0 / 0.1 and solarize p 0 / 0.2 on view 1 / view 2.
  c.augment.update(crop_scale=(0.08, 1.0), brightness_impl="multiplicative", color_prob=0.8,
                   gray_prob=0.2)
  c.augment.jitter = (0.4, 0.4, 0.2, 0.1)
  c.augment.view_blur_prob = (1.0, 0.1)
  c.augment.view_solarize_prob = (0.0, 0.2)
  c.augment.update(color_impl="torchvision", crop_sampler="torchvision", resize_method="bilinear",
                   antialias=True)   # main_moco.py: torchvision transforms on PIL images
  vit_recipe(c)
  return config_lib.variant(c, arg, {
      "resnet50": resnet50, "cifar10": cifar10, "cifar10_vit": cifar10_vit,
      "quickstart": quickstart, "smoke": smoke,
  })
