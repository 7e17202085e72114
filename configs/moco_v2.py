"""MoCo v2 (Chen et al. 2020b): facebookresearch/moco run with --mlp --moco-t 0.2 --aug-plus --cos.

Variants, `--config=configs/moco_v2.py:<variant>`:
  (none)      ImageNet, as the README's command: ResNet-50, head Linear(2048, 2048) -> ReLU
              -> Linear(2048, 128) with biases and no BN, temperature 0.2, queue K = 65536,
              key momentum 0.999, batch 256, SGD lr 0.03 x B/256, momentum 0.9, weight
              decay 1e-4 on every parameter, per-epoch cosine, 200 epochs (800 for 71.1%);
              "aug+": crops (0.2, 1), ColorJitter(0.4, 0.4, 0.4, 0.1) p=0.8 (multiplicative
              brightness), grayscale 0.2, blur p=0.5 sigma U(0.1, 2); shuffle BN with
              per-device BN in BN batches of 32 (moco.bn_batch, the original's 32 images
              per GPU on 8 GPUs; on fewer devices each device runs several BN batches).
  cifar10     lightly's CIFAR-10 benchmark MoCo row (cifar10_benchmark.py @42a6a924,
              MocoModel, lines 287-352; config_lib.use_lightly_cifar10 for what all its
              methods share; kNN 0.847 at batch 512 / 200 epochs): ResNet-18 CIFAR stem,
              SplitBatchNorm with 8 splits (BN batches of 64) and batch shuffle,
              MoCoProjectionHead 512 -> 512 (ReLU) -> 128 with biases, NTXentLoss with a
              memory bank, temperature 0.1, bank 8192 (the table's batch-512 rows, docstring
              note (*); the script hard-codes 4096), symmetric loss 0.5 (L12 + L21), the
              second direction against the bank the first one's keys were pushed into
              (moco.symmetric_style "lightly"), EMA 0.99 constant on backbone and head; SGD
              lr 0.06 x B/128 = 0.24, weight decay 5e-4, per-epoch cosine, no warmup, 200
              epochs; the simclr transform (crops (0.08, 1), ColorJitter(0.4, 0.4, 0.4, 0.1)
              p=0.8, grayscale 0.2, no blur); kNN every epoch on the backbone, best kept.
  cifar10_orig  The original's own CIFAR-10 recipe, the MoCo Colab demo (configs/moco_v1.py
              cifar10: lr 0.06 unscaled, K = 4096, momentum 0.99, split BN in 8, no blur)
              with v2's MLP head (hidden 512) and v2's temperature 0.2, which suits it.
              --config.moco.symmetric=True gives the demo's symmetric loss.
  quickstart  The bundled 5,000-image CIFAR-10 subset: a narrow ResNet-18 (base width 8)
              for 10 epochs on a 2-core CPU; the cifar10 recipe with a queue of 1024, key
              momentum 0.9, lr 0.12 x B/256 and crops (0.2, 1), tuned for 190 steps (see
              experiments/RESULTS.md); unlike the original (zero_init_residual=False), the
              last BN of each block starts at zero: with unit scales this short run does
              not learn (kNN 22.3% against 23.4% at random init; zero-init: 27.4%).
  smoke       A seconds-long CPU run for tests.

Augmentation semantics (`augment.color_impl`, `.crop_sampler`, `.resize_method`,
`.antialias`): torchvision's ColorJitter and RandomGrayscale on PIL images (contrast
toward the grey mean, saturation a blend with grey, multiplicative brightness),
RandomResizedCrop resized bilinearly by PIL, which antialiases when it shrinks
(main_moco.py); the device keeps float values where PIL rounds each op to uint8.

Architecture: torchvision's ResNet as main_moco.py builds it (models.__dict__[arch](), so
zero_init_residual=False: every BN scale starts at 1; kaiming fan_out convs; projection
shortcuts only where the shape changes).

Deviations: input normalised with ImageNet mean/std in every variant; BN
running statistics are averaged over devices/groups (the original keeps rank 0's); the blur
is the TF kernel (10% of the side) with sigma U(0.1, 2), not PIL's GaussianBlur radius.

Evaluation: the quoted 67.5% / 71.1% use MoCo's linear protocol, which `--protocol=linear`
runs (facebookresearch/moco @ 132aea9 main_lincls.py:56-100, 239-241): SGD momentum 0.9,
lr 30 at batch 256, weight decay 0, 100 epochs, x0.1 at epochs 60 and 80, fc N(0, 0.01)
with zero bias. cifar10's kNN is the Colab demo's monitor (k = 200, T = 0.1, the query
encoder's L2-normalised 128-d output: features='embedding'); quickstart reads the backbone
features, as experiments/RESULTS.md measured. ImageNet variants evaluate on the ILSVRC
validation split with the central 0.875 crop (Resize(256) + CenterCrop(224);
config_lib.imagenet_eval), CIFAR ones on the test split at 32 px, whole image, with
lightly's kNN (backbone features, k 200, T 0.1), which experiments/RESULTS.md's
measurements use.
"""
import ml_collections

from ssl_jax import config as config_lib


def cifar_recipe(c):
  c.optimizer.update(base_lr=0.06, lr_scaling="none", weight_decay=5e-4, warmup_epochs=0)
  c.augment.update(crop_scale=(0.08, 1.0), blur_prob=0.0)
  c.moco.update(queue_size=4096, momentum=0.99, bn_batch=c.batch_size // 8)
  return c


def cifar10_orig(c):
  cifar_recipe(config_lib.use_cifar10(c))
  c.augment.update(color_impl="torchvision", crop_sampler="torchvision", antialias=True)
  c.eval.features = "embedding"   # the demo's kNN monitor: encoder_q's 128-d output
  return c


def lightly_cifar10(c):
  """lightly's MoCo row (see the module docstring)."""
  config_lib.use_lightly_cifar10(c)
  c.head.update(num_layers=2, hidden_dim=512, out_dim=128)
  c.loss.temperature = 0.1
  c.moco.update(queue_size=8192, momentum=0.99, bn_batch=c.batch_size // 8, symmetric=True,
                symmetric_style="lightly", color_jitter=(0.4, 0.4, 0.4, 0.1))
  return c


def quickstart_recipe(c):
  cifar_recipe(c)
  c.optimizer.update(base_lr=0.12, lr_scaling="linear")
  c.augment.crop_scale = (0.2, 1.0)     # v2's ImageNet range; kinder to a tiny network
  c.moco.update(queue_size=1024, momentum=0.9)
  c.model.zero_init_residual = "all"   # the docstring says why
  c.eval.features = "backbone"   # as experiments/RESULTS.md measured
  return c


def smoke_recipe(c):
  cifar_recipe(c)
  c.moco.update(queue_size=128, bn_batch=4)
  return c


def get_config(arg=None):
  c = config_lib.base_config()
  c.method = "moco"
  c.dataset = "imagenet2012"
  config_lib.imagenet_eval(c)
  c.eval.linear.update(epochs=100, batch_size=256, base_lr=30.0, weight_decay=0.0,
                       optimizer="sgd", schedule="steps", lr_steps_epochs=(60, 80),
                       init="normal")
  c.image_size = 224
  c.batch_size = 256
  c.num_epochs = 200
  c.model.update(depth=50, width=1.0, cifar_stem=False)
  c.model.update(projection_shortcut="when_needed", zero_init_residual="none", init="torchvision")
  c.head.update(num_layers=2, hidden_dim=0, out_dim=128)    # hidden = backbone width
  c.loss.temperature = 0.2
  c.optimizer.update(name="sgd", base_lr=0.03, lr_scaling="linear", weight_decay=1e-4,
                     momentum=0.9, warmup_epochs=0, schedule="cosine_epochs")
  c.augment.update(crop_scale=(0.2, 1.0), color_prob=0.8, brightness_impl="multiplicative",
                   gray_prob=0.2, blur_prob=0.5, solarize_prob=0.0)
  c.augment.update(color_impl="torchvision", crop_sampler="torchvision", resize_method="bilinear",
                   antialias=True)   # main_moco.py: torchvision transforms on PIL images
  c.moco = ml_collections.ConfigDict(dict(
      queue_size=65536, momentum=0.999, bn_batch=32, shuffle_bn=True, symmetric=False,
      symmetric_style="demo", color_jitter=(0.4, 0.4, 0.4, 0.1)))
  return config_lib.variant(c, arg, {
      "cifar10": lightly_cifar10, "cifar10_orig": cifar10_orig,
      "quickstart": lambda c: quickstart_recipe(config_lib.use_quickstart(c)),
      "smoke": lambda c: smoke_recipe(config_lib.use_smoke(c)),
  })
