"""SimCLR v2 (Chen et al. 2020c), following google-research/simclr's tf2 code.

Differences from v1: a 3-layer projection head (fine-tuning starts from its first layer),
weight decay 1e-4, multiplicative brightness jitter, optional selective kernels
(`--config.model.sk_ratio=0.0625`) and wider/deeper ResNets (`model.depth`, `model.width`).

Variants, `--config=configs/simclr_v2.py:<variant>`:
  (none)      ImageNet, one coherent recipe: the README's ImageNet pretraining command
              (google-research/simclr README.md:101-106, tf2/README.md:83-88): ResNet-50
              (1x, no SK), batch 4096, 100 epochs, LARS lr 0.075 x sqrt(B) = 4.8, 10 warmup
              epochs (tf2/run.py's default) then cosine, weight decay 1e-4, temperature
              0.1, blur, colour strength 1.0. The paper's 71.7% linear comes from its own
              recipe (800 epochs, lr 0.1 x sqrt(B) = 6.4, warmup 5% of the epochs, a 64K
              MoCo-style queue; SimCLR v2 §4, not re-checked), which the released code
              does not contain: --config.num_epochs=800 --config.optimizer.base_lr=0.1
              --config.optimizer.warmup_epochs=40 comes closest (no queue).
  cifar10     lightly's CIFAR-10 benchmark SimCLR row, the one SimCLR it
              benchmarks (cifar10_benchmark.py @42a6a924,
              SimCLRModel, lines 355-384; config_lib.use_lightly_cifar10 for what all its
              methods share; kNN 0.848 at batch 512 / 200 epochs): ResNet-18 CIFAR stem,
              SimCLRProjectionHead 512 -> 512 (BN, ReLU) -> 128 (BN), NTXentLoss with its
              default temperature 0.5, in-batch negatives; SGD momentum 0.9, lr 0.06 x B/128
              = 0.24, weight decay 5e-4 on every parameter, per-epoch cosine, no warmup, 200
              epochs, batch 512; the simclr transform (torchvision RandomResizedCrop (0.08,
              1), ColorJitter(0.4, 0.4, 0.4, 0.1) p=0.8 = strength 0.5, grayscale 0.2, no
              blur), ImageNet mean/std; kNN k = 200, T = 0.1 on the backbone every epoch,
              the best kept. Deviation: our output BN has no shift (SimCLR's; lightly's
              has one); the head is lightly's 2 layers, not v2's 3.
  cifar10_orig  The original's own CIFAR-10 command (google-research/simclr README, tf2):
              ResNet-18 CIFAR stem, batch 512, LARS lr 1.0 x B/256, temperature 0.5, colour
              strength 0.5, no blur, weight decay 1e-4, 200 epochs (the README runs 1000).
  quickstart  The README's main job: a narrow ResNet-18 (base width 8) for 14 epochs on
              the bundled 5,000-image CIFAR-10 subset, under 5 minutes on a 2-core CPU.
              Deviations chosen for speed of learning at this scale: batch 128,
              temperature 0.2, head hidden width 512, crop scale (0.2, 1), 1 warmup epoch.
  smoke       A seconds-long CPU run for tests.

Augmentation semantics (every variant, as the code): crops by
tf.image.sample_distorted_bounding_box (area (0.08, 1), aspect uniform in (3/4, 4/3),
min_object_covered 0.1, 100 attempts) resized bicubically without antialiasing
(tf2/data_util.py:246-320); tf.image colour ops (33-173); one blur sigma per batch and
view, per global batch here (393-440; SimCLR: per replica), the p = 0.5 choice per image.

Evaluation: the quoted 71.7% uses SimCLR's linear protocol, the library default that
`--protocol=linear` runs (README: Nesterov SGD 0.9, lr 0.1 x B/256, cosine, weight decay
1e-6, 90 epochs, zero-initialised logits); the eval crop is the central 0.875
(CROP_PROPORTION, tf2/data_util.py:22). ImageNet variants evaluate on the ILSVRC
validation split with the central 0.875 crop (Resize(256) + CenterCrop(224);
config_lib.imagenet_eval), CIFAR ones on the test split at 32 px, whole image, with
lightly's kNN (backbone features, k 200, T 0.1), which experiments/RESULTS.md's
measurements use.

Architecture, as tf2/resnet.py in every variant but cifar10: a projection shortcut (1x1 conv
+ BN) in block 0 of every stage, stage 1 included (BlockGroup's use_projection=True,
tf2/resnet.py:490-521), with SK the ResNet-D shortcut (2x2 average pool of the block's
stride, then a stride-1 projection, :329-352); the last BN of every block starts at zero
(:366, 467); convs VarianceScaling() (scale 1, fan_in, truncated normal, :202) and head
layers N(0, 0.01) (tf2/model.py:143-146); strided convs padded (k - 1) // 2 on both sides
(conv2d_fixed_padding), the stem's max-pool 'SAME' (model.padding="tf_fixed", resnet.py:
224-277, 594-596; the same as torchvision's without the max-pool, as on CIFAR). cifar10
instead builds lightly's benchmark
ResNet-18 (config.use_lightly_resnet: projection only where the shape changes, no zero-init,
PyTorch's init in backbone and head), the backbone of the CIFAR-10 table ours is read beside.
"""
from ssl_jax import config as config_lib


def cifar_recipe(c):
  c.loss.temperature = 0.5
  c.optimizer.update(base_lr=1.0, lr_scaling="linear")
  c.augment.update(color_strength=0.5, blur_prob=0.0)
  return c


def lightly_cifar10(c):
  """lightly's SimCLR row (see the module docstring)."""
  config_lib.use_lightly_cifar10(c)
  c.head.update(num_layers=2, hidden_dim=512, out_dim=128, finetune_layer=0)
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
  config_lib.imagenet_eval(c)
  c.image_size = 224
  c.batch_size = 4096
  c.num_epochs = 100
  c.model.update(depth=50, width=1.0, cifar_stem=False, sk_ratio=0.0)
  c.model.update(projection_shortcut="always", zero_init_residual="all", init="tf_simclr",
                 padding="tf_fixed")
  c.head.update(num_layers=3, hidden_dim=0, out_dim=128, finetune_layer=1)
  c.loss.temperature = 0.1
  c.optimizer.update(name="lars", base_lr=0.075, lr_scaling="sqrt", weight_decay=1e-4,
                     momentum=0.9, trust_coefficient=1e-3, warmup_epochs=10, schedule="cosine")
  c.augment.update(crop_scale=(0.08, 1.0), color_strength=1.0,
                   brightness_impl="multiplicative", blur_prob=0.5)
  # tf2/data_util.py:246-320 (sample_distorted_bounding_box, bicubic tf.image.resize),
  # 33-173 (tf.image colour ops), 393-440 (one blur sigma per batch and view).
  c.augment.update(color_impl="tf", crop_sampler="tf", resize_method="bicubic",
                   antialias=False, blur_per_batch=True)
  return config_lib.variant(c, arg, {
      "cifar10": lightly_cifar10,
      "cifar10_orig": lambda c: cifar_recipe(config_lib.use_cifar10(c)),
      "quickstart": lambda c: quickstart_recipe(cifar_recipe(config_lib.use_quickstart(c))),
      "smoke": lambda c: cifar_recipe(config_lib.use_smoke(c)),
  })
