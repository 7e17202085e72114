"""DINO (Caron et al. 2021), following facebookresearch/dino (main_dino.py, README.md).

Variants, `--config=configs/dino.py:<variant>`:
  (none)       ImageNet ViT-S/16 (6 heads, learned position embedding, stochastic depth 0.1
               on the student), the README's "boosted" 300-epoch command: batch 1024 (16 x
               64), AdamW lr 5e-4 x B/256 = 2e-3 with 10 warmup epochs then cosine to 1e-6,
               weight decay cosine 0.04 -> 0.4 (biases and norms excluded), per-tensor
               gradient clipping 3.0, last layer frozen for 1 epoch, head 384-2048-2048-256
               -> L2 -> weight-normalised 65536 with norm_last_layer False, teacher
               temperature 0.04 -> 0.07 over 30 epochs, student 0.1, centre momentum 0.9,
               teacher EMA 0.996 -> 1 (per-step cosine); 2 global crops of 224 (scale
               (0.4, 1)) and 10 local crops of 96 (scale (0.05, 0.4)). README: 76.0%
               linear, 73.3% k-NN (README.md:184-202). The README command itself leaves
               the code default of 8 local crops: --config.dino.local_crops_number=8. The
               vanilla 100-epoch run (one node of 8 GPUs, all code defaults; 74.0% linear,
               69.3% k-NN, README.md:162-166): --config.batch_size=512
               --config.num_epochs=100 --config.dino.local_crops_number=8
               --config.dino.teacher_temp=0.04 --config.dino.warmup_teacher_temp_epochs=0
               --config.head.norm_last_layer=True.
  vitb16       ViT-B/16 (768 wide, 12 heads) with the same recipe but norm_last_layer True,
               as main_dino.py's help recommends for ViT-B (the README: removing it is
               only safe with ViT-S).
  resnet50     The README's ResNet-50 command: SGD (momentum 0.9) lr 0.03 x B/256, weight
               decay 1e-4 constant (biases and BN excluded), batch 512 (8 x 64), 100
               epochs, global crops (0.14, 1), 8 local crops (0.05, 0.14), teacher
               temperature 0.04 throughout, norm_last_layer True, SyncBN.
  cifar10      lightly's CIFAR-10 benchmark DINO row (cifar10_benchmark.py @42a6a924,
               DINOModel, lines 649-708, dino_transform lines 195-201; lightly/models/
               modules/heads.py DINOProjectionHead; config_lib.use_lightly_cifar10 for what
               all its methods share; kNN 0.813 at batch 512 / 200 epochs): ResNet-18 with
               the CIFAR stem, batch 512, 200 epochs; head of 2 layers 512 -> 2048 (BN,
               GELU) -> 256, L2, weight-normalised Linear 256 -> 2048 with g fixed at 1
               (norm_last_layer), PyTorch's default Linear init (dino.head_init "torch":
               the script replaces the MLP after construction), the teacher's head built
               with its own init (dino.teacher_head "own_init"; only the backbone is
               copied), last layer never frozen, no gradient clipping; DINOLoss(2048):
               student temperature 0.1, teacher 0.04 fixed (its 0.04 -> 0.04 warmup is a
               no-op), centre momentum 0.9; EMA 0.99 constant on backbone and head; SGD
               (momentum 0.9) lr 0.06 x B/128 = 0.24, weight decay 5e-4 constant on every
               parameter, per-epoch cosine, no warmup; 2 global crops of 32 (scale (0.4,
               1), bicubic), no local crops (the student sees the teacher's 2 views),
               ColorJitter(0.4, 0.4, 0.2, 0.1) p=0.8, grayscale 0.2, no blur, solarise
               p=0.2 on global view 2; kNN every epoch on the teacher's backbone, the best
               kept (lightly's monitor reads the student's backbone: a deviation).
  cifar10_orig The original's ImageNet ResNet recipe at CIFAR scale (our choice; DINO has no
               CIFAR recipe): head 512-2048-2048-256 with BN -> 2048, SGD lr 0.06 x B/256,
               1 warmup epoch then cosine, weight decay 5e-4, teacher temperature 0.04, EMA
               0.996 -> 1; 2 global crops of 32 (0.14, 1) and 6 local crops of 16 (0.05,
               0.14), no blur.
  cifar10_vit  CIFAR-10 at 32 px with a ViT-S/4 (6 heads; 64 patches + class token; local
               crops of 16 px = 16 patches), the ImageNet ViT recipe at batch 512 for 200
               epochs, 2 global crops of 32 (scale (0.25, 1)) and 6 local crops of 16
               (scale (0.05, 0.25)), no blur, head output 4096.
  quickstart   The README's main job: a narrow ResNet-18 (base width 8) on the bundled
               5,000-image CIFAR-10 subset, batch 256, 10 epochs, the cifar10_orig recipe with
               4 local crops, a small head (512-512-128 -> 1024) and a faster teacher (EMA
               0.99 -> 1), a few minutes on a CPU. Without BN in the head (a ResNet's
               all-positive features give every image nearly the same bottleneck) or with
               AdamW (sign-like steps move every fan-in-128 prototype a large fraction of
               its norm at the unfreeze, with the lr at its peak after a 1-epoch warmup),
               the teacher drifted to uniform outputs (loss and entropy -> ln K).
  smoke        Seconds on a CPU: a 2-block ViT (width 32, patch 4) on 16 px global and
               8 px local crops.

Augmentation: `dino.color_jitter` (brightness, contrast, saturation, hue) with p =
`augment.color_prob`, grayscale, flip; global crops use `augment.crop_scale`, local crops
`dino.local_crops_scale`; blur p 1.0 / 0.1 / 0.5 and solarize p 0 / 0.2 / 0 on global 1 /
global 2 / local crops (`dino.global_blur_probs`, `dino.global_solarize_probs`,
`dino.local_blur_prob`). `augment.blur_prob` and `.solarize_prob` are not read.

Augmentation semantics (`augment.color_impl`, `.crop_sampler`, `.resize_method`,
`.antialias`): torchvision's ColorJitter and RandomGrayscale on PIL images (contrast
toward the grey mean, saturation a blend with grey, multiplicative brightness),
RandomResizedCrop resized bicubically by PIL, which antialiases when it shrinks
(main_dino.py DataAugmentationDINO); the device keeps float values where PIL rounds each
op to uint8.

Deviations from the original: photometric augmentation runs on the device with the
library's ops (SimCLR-style blur whose kernel is 10% of the crop instead of PIL's
GaussianBlur, solarize at 0.5); ImageNet mean/std normalisation happens inside the network;
mixed precision is bfloat16 (the original: fp16), but the head's weight-normalised last layer
and the logits are float32. As the original: the ViT's init (model.vit_init = "dino":
Linear layers, class token and position embedding N(0, 0.02), the patch embedding
PyTorch's Conv2d default) [vision_transformer.py:126, 146-172]; the position embedding
resized for other crop sizes as interpolate_pos_encoding (bicubic a = -0.75, scale factor
with the +0.1, no antialiasing) [vision_transformer.py:174-194]; the ResNet variants are
torchvision's resnet50() with its defaults (zero_init_residual=False, every BN scale 1)
[main_dino.py:175-178] (lightly's CIFAR ResNet-18 has no zero-init either). The kNN
monitor and the evaluation CLI read the teacher's backbone, as the original; the online
probe (ours) learns from the student's. With SGD (resnet50) the frozen last layer still
gets weight decay in epoch 0, which norm_last_layer makes moot.

Evaluation (the quoted figures' protocols, facebookresearch/dino @ 7c446df): k-NN on the
teacher's L2-normalised backbone features, 20-NN at T = 0.07 (eval_knn.py:194-196; the
paper reports 20-NN); `--protocol=linear` runs eval_linear.py's: SGD momentum 0.9, lr
0.001 x B/256 at B = 1024 (8 x 128, :105, :266, :270), weight decay 0 (:107), 100 epochs
(:265), cosine to 0 (:109), N(0, 0.01) init with zero bias (:243), on the CLS tokens of
the last 4 blocks for ViT-S (:256, :160-170); vitb16: the last CLS token and the mean
patch token (README.md:340, --n_last_blocks 1 --avgpool_patchtokens true); ResNet
backbones read the pooled features (:170). Both transform the eval images with Resize(256)
+ CenterCrop(224) (eval_knn.py:33, eval_linear.py:66). ImageNet variants evaluate on the
ILSVRC validation split with the central 0.875 crop (Resize(256) + CenterCrop(224);
config_lib.imagenet_eval), CIFAR ones on the test split at 32 px, whole image, with
lightly's kNN (backbone features, k 200, T 0.1), which experiments/RESULTS.md's
measurements use.
"""
import ml_collections

from ssl_jax import config as config_lib


def vit_model(c, width, patch_size, num_heads=6, depth=12):
  c.model.update(name="vit", width=width, depth=depth, num_heads=num_heads,
                 patch_size=patch_size, pos_embed="learned", drop_path=0.1,
                 frozen_patch_embed=False)


def cifar_crops(c):
  """2 x 32 px global crops and 6 x 16 px local ones; no blur at these sizes."""
  c.augment.crop_scale = (0.25, 1.0)
  c.dino.update(local_crops_number=6, local_crops_size=16, local_crops_scale=(0.05, 0.25),
                global_blur_probs=(0.0, 0.0), local_blur_prob=0.0)
  c.head.out_dim = 4096
  return c


def resnet_recipe(c):
  c.optimizer.update(name="sgd", base_lr=0.03, momentum=0.9, weight_decay=1e-4,
                     weight_decay_end=1e-4)
  c.dino.update(teacher_temp=0.04, warmup_teacher_temp_epochs=0)
  c.head.norm_last_layer = True
  return c


def resnet50(c):
  c.model.update(name="resnet", depth=50, width=1.0, cifar_stem=False)
  c.batch_size = 512
  c.num_epochs = 100
  c.augment.crop_scale = (0.14, 1.0)
  c.dino.update(local_crops_number=8, local_crops_scale=(0.05, 0.14))
  return resnet_recipe(c)


def vitb16(c):
  vit_model(c, width=768, patch_size=16, num_heads=12)
  c.head.norm_last_layer = True
  c.eval.linear.update(vit_blocks=1, vit_avgpool=True)   # README.md:340
  return c


def cifar10_orig(c):
  config_lib.use_cifar10(c)
  cifar_crops(c)
  quickstart_recipe(c)
  c.dino.momentum_teacher = 0.996
  c.head.update(hidden_dim=2048, bottleneck_dim=256, out_dim=2048)
  return c


def lightly_cifar10(c):
  """lightly's DINO row (see the module docstring)."""
  config_lib.use_lightly_cifar10(c)
  c.model.name = "resnet"
  c.head.update(num_layers=2, hidden_dim=2048, bottleneck_dim=256, out_dim=2048, use_bn=True,
                norm_last_layer=True)
  c.optimizer.update(weight_decay_end=5e-4, decay_mask="all")
  c.augment.update(crop_scale=(0.4, 1.0), resize_method="bicubic")
  c.dino.update(student_temp=0.1, teacher_temp=0.04, warmup_teacher_temp=0.04,
                warmup_teacher_temp_epochs=30, center_momentum=0.9, momentum_teacher=0.99,
                momentum_teacher_final=0.99, freeze_last_layer=0, clip_grad=0.0,
                color_jitter=(0.4, 0.4, 0.2, 0.1), global_blur_probs=(0.0, 0.0),
                global_solarize_probs=(0.0, 0.2), local_blur_prob=0.0, local_crops_number=0,
                head_init="torch", teacher_head="own_init")
  return c


def cifar10_vit(c):
  config_lib.use_cifar10(c)
  vit_model(c, width=384, patch_size=4)
  return cifar_crops(c)


def quickstart_recipe(c):
  """ResNet-18 at CIFAR scale (lightly's CIFAR-10 DINO benchmark): BN in the head's hidden
  layers, unit prototypes, SGD 0.06 x B/256 with constant weight decay 5e-4, the ResNet
  crop scales, teacher temperature 0.04 throughout and a faster teacher for short runs."""
  resnet_recipe(c)
  c.model.name = "resnet"
  c.optimizer.update(base_lr=0.06, weight_decay=5e-4, weight_decay_end=5e-4, warmup_epochs=1)
  c.head.use_bn = True
  c.augment.crop_scale = (0.14, 1.0)
  c.dino.update(momentum_teacher=0.99, local_crops_scale=(0.05, 0.14))
  return c


def quickstart(c):
  config_lib.use_quickstart(c)
  cifar_crops(c)
  quickstart_recipe(c)
  c.dino.local_crops_number = 4
  c.head.update(hidden_dim=512, bottleneck_dim=128, out_dim=1024)
  return c


def smoke(c):
  config_lib.use_smoke(c)
  vit_model(c, width=32, patch_size=4, num_heads=2, depth=2)
  c.eval.linear.vit_blocks = 2   # of its 2 blocks
  c.head.update(hidden_dim=64, bottleneck_dim=32, out_dim=128)
  c.optimizer.warmup_epochs = 1
  c.augment.crop_scale = (0.25, 1.0)
  c.dino.update(local_crops_number=2, local_crops_size=8, local_crops_scale=(0.05, 0.25),
                global_blur_probs=(0.0, 0.0), local_blur_prob=0.0)
  return c


def get_config(arg=None):
  c = config_lib.base_config()
  c.method = "dino"
  c.dataset = "imagenet2012"
  config_lib.imagenet_eval(c)
  c.eval.update(knn_k=20, knn_temperature=0.07)
  c.eval.linear.update(epochs=100, batch_size=1024, base_lr=0.001, weight_decay=0.0,
                       optimizer="sgd", schedule="cosine", init="normal", vit_blocks=4)
  c.image_size = 224
  c.batch_size = 1024
  c.num_epochs = 300
  vit_model(c, width=384, patch_size=16)
  c.model.update(vit_init="dino", projection_shortcut="when_needed", zero_init_residual="none",
                 init="torchvision")
  c.head.update(num_layers=3, hidden_dim=2048, out_dim=65536)
  c.head.bottleneck_dim = 256
  c.head.use_bn = False
  c.head.norm_last_layer = False
  # AdamW (PyTorch's per-parameter semantics), decay on every tensor with ndim > 1.
  c.optimizer.update(name="adamw", base_lr=5e-4, lr_scaling="linear", weight_decay=0.04,
                     warmup_epochs=10, schedule="cosine", final_lr=1e-6)
  c.optimizer.weight_decay_end = 0.4
  c.optimizer.decay_mask = "ndim"
  # torchvision ColorJitter(0.4, 0.4, 0.2, 0.1) p 0.8 (brightness multiplicative), gray 0.2.
  c.augment.update(crop_scale=(0.4, 1.0), brightness_impl="multiplicative", color_prob=0.8,
                   gray_prob=0.2, flip=True)
  c.augment.update(color_impl="torchvision", crop_sampler="torchvision", resize_method="bicubic",
                   antialias=True)   # main_dino.py DataAugmentationDINO: PIL, Image.BICUBIC
  c.dino = ml_collections.ConfigDict(dict(
      student_temp=0.1, teacher_temp=0.07, warmup_teacher_temp=0.04,
      warmup_teacher_temp_epochs=30, center_momentum=0.9, momentum_teacher=0.996,
      momentum_teacher_final=1.0, head_init="trunc_normal", teacher_head="copy",
      freeze_last_layer=1, clip_grad=3.0, color_jitter=(0.4, 0.4, 0.2, 0.1),
      global_blur_probs=(1.0, 0.1), global_solarize_probs=(0.0, 0.2), local_blur_prob=0.5,
      local_crops_number=10, local_crops_size=96, local_crops_scale=(0.05, 0.4)))
  return config_lib.variant(c, arg, {
      "vitb16": vitb16, "resnet50": resnet50, "cifar10": lightly_cifar10,
      "cifar10_orig": cifar10_orig,
      "cifar10_vit": cifar10_vit, "quickstart": quickstart, "smoke": smoke,
  })
