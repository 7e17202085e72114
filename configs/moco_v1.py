"""MoCo v1 (He et al. 2019), following facebookresearch/moco's main_moco.py.

Variants, `--config=configs/moco_v1.py:<variant>`:
  (none)      ImageNet, as main_moco.py's defaults: ResNet-50, Linear(2048->128) head,
              temperature 0.07, queue K = 65536, key momentum 0.999, batch 256, SGD lr
              0.03 x B/256, momentum 0.9, weight decay 1e-4 on every parameter, 200 epochs,
              lr x0.1 at epochs 120 and 160; crops (0.2, 1), ColorJitter(0.4, 0.4, 0.4, 0.4)
              always (multiplicative brightness), grayscale 0.2, no blur; shuffle BN with
              per-device BN in BN batches of 32 (moco.bn_batch: the original's 32 images
              per GPU on 8 GPUs; on fewer devices each device runs several BN batches).
  cifar10     The MoCo CIFAR-10 Colab demo (branch colab-notebook @f736491,
              colab/moco_cifar10_demo.ipynb, cells "Set arguments", "Define base encoder",
              "Define train/test"; lightly benchmarks only a v2-style MoCo, see
              moco_v2.py): ResNet-18 CIFAR stem, batch 512, SGD lr 0.06 (not scaled),
              weight decay 5e-4, per-epoch cosine, K = 4096, momentum 0.99, temperature
              0.1, 200 epochs, split BN in 8 splits (BN batches of 512 / 8 = 64), the
              demo's augmentation (torchvision RandomResizedCrop(32) (0.08, 1), flip,
              ColorJitter(0.4, 0.4, 0.4, 0.1) p=0.8, grayscale 0.2, no blur), kNN k = 200,
              T = 0.1 every epoch on the encoder's 128-d L2-normalised output (the demo
              monitors encoder_q, whose fc is the head). kNN 82.6% reported at 200 epochs
              (asymmetric; --config.moco.symmetric=True for the demo's 85.3% symmetric
              loss, the sum of both directions, queue_size a multiple of 1024).
              Deviations: ImageNet mean/std (the demo: CIFAR's); the demo's cosine counts
              epochs from 1 (so its last epoch runs at lr 0), ours from 0.
  quickstart  The bundled 5,000-image CIFAR-10 subset: a narrow ResNet-18 (base width 8)
              for 10 epochs on a 2-core CPU; the cifar10 recipe with a queue of 1024, key
              momentum 0.9 and lr 0.06 x B/256, tuned for 190 steps (see
              experiments/RESULTS.md).
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
running statistics are averaged over devices/groups (the original keeps rank 0's); blur,
where used, is the TF kernel (10% of the side) rather than PIL's radius.

Evaluation: the quoted 60.6% is MoCo's linear protocol, which `--protocol=linear` runs
(facebookresearch/moco @ 132aea9 main_lincls.py:56-100, 239-241): SGD momentum 0.9, lr 30
at batch 256, weight decay 0, 100 epochs, x0.1 at epochs 60 and 80, fc N(0, 0.01) with
zero bias. cifar10's kNN figures are the Colab demo's monitor: k = 200, T = 0.1 on the
L2-normalised 128-d output of the query encoder (config.eval.features='embedding');
quickstart reads the backbone features, as experiments/RESULTS.md measured. ImageNet
variants evaluate on the ILSVRC validation split with the central 0.875 crop (Resize(256)
+ CenterCrop(224); config_lib.imagenet_eval), CIFAR ones on the test split at 32 px, whole
image, with lightly's kNN (backbone features, k 200, T 0.1), which
experiments/RESULTS.md's measurements use.
"""
import ml_collections

from ssl_jax import config as config_lib


def cifar_recipe(c):
  """The Colab demo's settings."""
  c.loss.temperature = 0.1
  c.optimizer.update(base_lr=0.06, lr_scaling="none", weight_decay=5e-4,
                     schedule="cosine_epochs", warmup_epochs=0)
  c.augment.update(crop_scale=(0.08, 1.0), color_prob=0.8, blur_prob=0.0)
  c.moco.update(queue_size=4096, momentum=0.99, bn_batch=c.batch_size // 8,
                color_jitter=(0.4, 0.4, 0.4, 0.1))
  return c


def cifar10(c):
  """The demo's PIL transforms, and its kNN monitor: every epoch, on the 128-d output of
  encoder_q."""
  cifar_recipe(config_lib.use_cifar10(c))
  c.augment.update(color_impl="torchvision", crop_sampler="torchvision", antialias=True)
  c.eval.update(knn_every_epochs=1, features="embedding")
  return c


def quickstart_recipe(c):
  cifar_recipe(c)
  c.optimizer.update(base_lr=0.06, lr_scaling="linear")
  c.moco.update(queue_size=1024, momentum=0.9)
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
  c.head.update(num_layers=1, hidden_dim=0, out_dim=128)    # Linear(2048 -> 128)
  c.loss.temperature = 0.07
  c.optimizer.update(name="sgd", base_lr=0.03, lr_scaling="linear", weight_decay=1e-4,
                     momentum=0.9, warmup_epochs=0, schedule="steps", lr_steps_epochs=(120, 160))
  c.augment.update(crop_scale=(0.2, 1.0), color_prob=1.0, brightness_impl="multiplicative",
                   gray_prob=0.2, blur_prob=0.0, solarize_prob=0.0)
  c.augment.update(color_impl="torchvision", crop_sampler="torchvision", resize_method="bilinear",
                   antialias=True)   # main_moco.py: torchvision transforms on PIL images
  c.moco = ml_collections.ConfigDict(dict(
      queue_size=65536, momentum=0.999, bn_batch=32, shuffle_bn=True, symmetric=False,
      symmetric_style="demo", color_jitter=(0.4, 0.4, 0.4, 0.4)))
  return config_lib.variant(c, arg, {
      "cifar10": cifar10,
      "quickstart": lambda c: quickstart_recipe(config_lib.use_quickstart(c)),
      "smoke": lambda c: smoke_recipe(config_lib.use_smoke(c)),
  })
