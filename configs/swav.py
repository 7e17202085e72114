"""SwAV (Caron et al. 2020): facebookresearch/swav main_swav.py.

Variants, `--config=configs/swav.py:<variant>`:
  (none)      ImageNet, scripts/swav_800ep_pretrain.sh (75.3% linear): ResNet-50, head
              Linear(2048, 2048) -> BN -> ReLU -> Linear(2048, 128), L2, 3000 prototypes;
              multi-crop 2 x 224 px, scale (0.14, 1) + 6 x 96 px, scale (0.05, 0.14); codes
              for crops 0 and 1, Sinkhorn eps 0.05, 3 iterations, tau 0.1; no queue at batch
              4096; LARC (trust 0.001, every parameter) around SGD momentum 0.9, wd 1e-6, lr
              4.8 (hand-set, not scaled), 10 warmup epochs, cosine to 0.0048; prototypes
              frozen for the first epoch (313 iterations); 800 epochs; global BN. Colour
              jitter 0.8/0.8/0.8/0.2 with p 0.8 (torchvision, multiplicative brightness),
              grayscale 0.2, blur p 0.5 sigma U(0.1, 2). The bs-256 recipe
              (swav_200ep_bs256_pretrain.sh) is --config.batch_size=256
              --config.optimizer.base_lr=0.6 --config.optimizer.final_lr=0.0006
              --config.optimizer.warmup_epochs=0 --config.swav.queue_length=3840
              --config.num_epochs=200 (queue from epoch 15).
  cifar10     lightly's CIFAR-10 benchmark SwAV row (cifar10_benchmark.py @42a6a924,
              SwaVModel, lines 552-598, swav_transform lines 186-193;
              config_lib.use_lightly_cifar10 for what all its methods share; kNN 0.842 at
              batch 512 / 200 epochs): ResNet-18 CIFAR stem, head 512 -> 512 (BN, ReLU) ->
              128, L2, 512 prototypes as an nn.Linear with its bias (swav.prototype_bias),
              re-normalised every step, never frozen; SwaVLoss defaults: temperature 0.1,
              Sinkhorn 3 iterations, eps 0.05, codes for both crops, no queue; torch Adam
              lr 1e-3 x B/128 = 4e-3 with L2 weight decay 1e-6 on every parameter,
              per-epoch cosine, no warmup, 200 epochs; 2 x 32 px crops (0.14, 1), no small
              crops (the table's commit, METHODS.md §16.4), ColorJitter(0.4, 0.4, 0.4, 0.1)
              p=0.8, grayscale 0.2, no blur; kNN every epoch on the backbone, the best kept.
              Deviations: SwAV's input std 0.228 for red (lightly: ImageNet's 0.229); both
              crops share one BN batch (lightly forwards each crop alone).
  cifar10_orig  The original's own recipe at CIFAR scale: ResNet-18 CIFAR stem, batch 512,
              200 epochs, the bs-256 recipe's values (lr
              0.6 -> 0.0006 unscaled, no warmup, queue from epoch 15, prototypes frozen 1
              epoch), the queue 3840 rounded down to 3584 (a multiple of the batch, as the
              original rounds), multi-crop scaled to 32 px: 2 x 32 px, scale (0.14, 1) + 6 x
              16 px, scale (0.05, 0.14) (16/32 is about 96/224); no blur at 32 px.
  quickstart  The bundled 5,000-image CIFAR-10 subset on a 2-core CPU, after lightly's
              CIFAR-10 SwAV benchmark: a narrow ResNet-18 (base width 8), head 64 -> 512 ->
              128, 100 prototypes (frozen 1 epoch), 2 x 32 px crops only (no small crops),
              colour strength 0.5, no queue; SGD momentum 0.9, lr 0.12 -> 0 (cosine), wd
              5e-4 on every parameter; batch 128, 6 epochs; Sinkhorn eps 0.02. With eps 0.05
              (with or without the small crops, LARC or SGD) the tiny network's scores vary
              too little across images for the codes to carry a signal: the loss went to
              ln(num_prototypes) and embedding_std fell within ~10-50 steps (collapse, the
              README's failure mode). With eps 0.02 the loss drops below ln K at once.
  smoke       A seconds-long CPU run for tests: 2 x 16 px + 2 x 8 px crops, a queue of 64
              from step 0, so the queue is filled and then used within the 3 steps.

Augmentation semantics (`augment.color_impl`, `.crop_sampler`, `.resize_method`,
`.antialias`): torchvision's ColorJitter and RandomGrayscale on PIL images (contrast
toward the grey mean, saturation a blend with grey, multiplicative brightness),
RandomResizedCrop resized bilinearly by PIL, which antialiases when it shrinks
(src/multicropdataset.py); the device keeps float values where PIL rounds each op to
uint8.

Deviations: the warmup starts at lr 0 (the 800-epoch script starts at 0.3); BN is global,
not in groups of 8 GPUs (apex's syncbn_process_group_size); the blur is the TF kernel (10%
of the side) with sigma U(0.1, 2), not PIL's GaussianBlur radius; the queue is one global
queue in the replicated state, each device Sinkhorn-ing its slice (the same set of rows as
the original's per-GPU queues, so the same codes); queue_length must be a multiple of the
global batch (the original silently rounds it down). As the original, every BN scale
starts at 1 (src/resnet50.py's zero_init_residual=False, which main_swav.py leaves) and the
head's Linear layers use PyTorch's default init (non-zero biases), which matters under LARC
(see methods/swav.py).

Evaluation: the quoted linear figures use SwAV's protocol, which `--protocol=linear` runs
(facebookresearch/swav @ 06b1b7c eval_linear.py:62-69, 250): SGD momentum 0.9 (no
Nesterov), lr 0.3 at batch 256 (8 x 32), weight decay 1e-6 on every parameter, 100 epochs,
cosine to 0, N(0, 0.01) init with zero bias, no BN. ImageNet variants evaluate on the
ILSVRC validation split with the central 0.875 crop (Resize(256) + CenterCrop(224);
config_lib.imagenet_eval), CIFAR ones on the test split at 32 px, whole image, with
lightly's kNN (backbone features, k 200, T 0.1), which experiments/RESULTS.md's
measurements use.
"""
import ml_collections

from ssl_jax import config as config_lib


def cifar_recipe(c):
  c.optimizer.update(base_lr=0.6, final_lr=0.0006, warmup_epochs=0)
  c.augment.blur_prob = 0.0
  # 3840 rounded down to a multiple of the batch, as the original does.
  queue = 3840 // c.batch_size * c.batch_size
  c.swav.update(small_crop_size=16, queue_length=queue, queue_start_epoch=15)
  return c


def lightly_cifar10(c):
  """lightly's SwAV row (see the module docstring)."""
  config_lib.use_lightly_cifar10(c)
  c.head.update(num_layers=2, hidden_dim=512, out_dim=128)
  c.loss.temperature = 0.1
  c.optimizer.update(name="adam", base_lr=2e-3, lr_scaling="linear", weight_decay=1e-6)
  c.swav.update(num_prototypes=512, prototype_bias=True, epsilon=0.05, sinkhorn_iterations=3,
                crops_for_assign=(0, 1), num_small_crops=0, queue_length=0,
                freeze_prototypes_epochs=0.0)
  c.augment.crop_scale = (0.14, 1.0)
  return c


def quickstart_recipe(c):
  """lightly's CIFAR-10 SwAV benchmark, scaled down; the sharper codes (eps 0.02) keep
  the tiny network from collapsing (see the module docstring)."""
  cifar_recipe(c)
  c.batch_size = 128
  c.num_epochs = 6
  c.head.hidden_dim = 512
  c.optimizer.update(name="sgd", base_lr=0.12, lr_scaling="none", final_lr=0.0,
                     weight_decay=5e-4, warmup_epochs=0)
  c.augment.color_strength = 0.5
  c.swav.update(num_prototypes=100, epsilon=0.02, num_small_crops=0, queue_length=0)
  return c


def smoke_recipe(c):
  cifar_recipe(c)
  c.head.hidden_dim = 64
  c.swav.update(num_small_crops=2, small_crop_size=8, num_prototypes=30, queue_length=64,
                queue_start_epoch=0)
  return c


def get_config(arg=None):
  c = config_lib.base_config()
  c.method = "swav"
  c.dataset = "imagenet2012"
  config_lib.imagenet_eval(c)
  c.eval.linear.update(epochs=100, batch_size=256, base_lr=0.3, weight_decay=1e-6,
                       optimizer="sgd", schedule="cosine", init="normal")
  c.image_size = 224
  c.batch_size = 4096
  c.num_epochs = 800
  c.model.update(depth=50, width=1.0, cifar_stem=False)
  c.model.update(projection_shortcut="when_needed", zero_init_residual="none", init="torchvision")
  c.head.update(num_layers=2, hidden_dim=2048, out_dim=128)
  c.loss.temperature = 0.1
  c.optimizer.update(name="larc", base_lr=4.8, lr_scaling="none", final_lr=0.0048,
                     weight_decay=1e-6, momentum=0.9, trust_coefficient=1e-3,
                     warmup_epochs=10, schedule="cosine")
  c.augment.update(crop_scale=(0.14, 1.0), color_strength=1.0, color_prob=0.8,
                   brightness_impl="multiplicative", gray_prob=0.2, blur_prob=0.5,
                   solarize_prob=0.0)
  c.augment.update(color_impl="torchvision", crop_sampler="torchvision", resize_method="bilinear",
                   antialias=True)   # src/multicropdataset.py: torchvision transforms on PIL images
  c.swav = ml_collections.ConfigDict(dict(
      num_prototypes=3000, epsilon=0.05, sinkhorn_iterations=3, crops_for_assign=(0, 1),
      num_small_crops=6, small_crop_size=96, small_crop_scale=(0.05, 0.14),
      queue_length=0, queue_start_epoch=15, freeze_prototypes_epochs=1.0,
      prototype_bias=False))
  return config_lib.variant(c, arg, {
      "cifar10": lightly_cifar10,
      "cifar10_orig": lambda c: cifar_recipe(config_lib.use_cifar10(c)),
      "quickstart": lambda c: quickstart_recipe(config_lib.use_quickstart(c)),
      "smoke": lambda c: smoke_recipe(config_lib.use_smoke(c)),
  })
