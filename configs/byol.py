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
              and target momentum 0.97 -> 1, tuned for 190 steps (experiments/RESULTS.md);
              unlike Haiku's BlockV1 (zero scale in bottlenecks only), the last BN of each
              basic block starts at zero too: with unit scales this short run does not
              learn (kNN 23.0% against 22.6% at random init; zero-init: 25.3% / 20.5%).
  smoke       A seconds-long CPU run for tests.

Augmentation semantics: BYOL's crop (one draw of area U(0.08, 1) and log-uniform aspect,
sides clipped to the image, no retry: utils/dataset.py _decode_and_random_crop), resized
bicubically without antialiasing (tf.image.resize), tf.image colour maths
(utils/augmentations.py:239-282), blur sigma drawn per image.

Deviations: BYOL's online linear classifier is ssl_jax/probe.py's online probe
(eval.online_probe, its own SGD, not BYOL's LARS schedule).

Architecture and init, as the code (Haiku) in every variant but cifar10: a projection
shortcut in block 0 of every stage, stage 1 included (ResNetTorso's use_projection, byol
utils/networks.py:64, 114-125); the last BN scale at zero in bottleneck blocks only
(Haiku's BlockV1; the README says the paper's results used 1 everywhere: set
model.zero_init_residual="none"); convs, projector and predictor truncated normal
1/sqrt(fan_in) cut at +-2 sd without rescaling, biases 0 (model.init="haiku"); convs and
max-pool padded 'SAME', so a stride-2 layer on an even input pads one row less before than
after (model.padding="same", byol utils/networks.py:101-107, 139-142). cifar10
instead builds lightly's benchmark ResNet-18 (config.use_lightly_resnet: projection only
where the shape changes, no zero-init, PyTorch's init in backbone and heads), the backbone
of the CIFAR-10 table ours is read beside.

Evaluation: the quoted 74.3% is BYOL's linear protocol, which `--protocol=linear` runs
(configs/eval.py per METHODS.md 10.3, lines not re-read): 80 epochs, Nesterov SGD 0.9, lr
0.2 x B/256, cosine, no warmup; its weight decay and batch are not in METHODS.md and keep
SimCLR's 1e-6 and the data-scaled batch (4096 on ImageNet). ImageNet variants evaluate on
the ILSVRC validation split with the central 0.875 crop (Resize(256) + CenterCrop(224);
config_lib.imagenet_eval), CIFAR ones on the test split at 32 px, whole image, with
lightly's kNN (backbone features, k 200, T 0.1), which experiments/RESULTS.md's
measurements use.
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


def zero_init_all(c):
  c.model.zero_init_residual = "all"   # the quickstart alone: the docstring says why
  return c


def smoke_recipe(c):
  quickstart_recipe(c)
  return c


def get_config(arg=None):
  c = config_lib.base_config()
  c.method = "byol"
  c.dataset = "imagenet2012"
  config_lib.imagenet_eval(c)
  c.eval.linear.update(epochs=80, optimizer="nesterov", base_lr=0.2)
  c.image_size = 224
  c.batch_size = 4096
  c.num_epochs = 1000
  c.model.update(depth=50, width=1.0, cifar_stem=False)
  c.model.update(projection_shortcut="always", zero_init_residual="bottleneck", init="haiku",
                 padding="same")
  c.head.update(num_layers=2, hidden_dim=4096, out_dim=256)    # the projector
  c.optimizer.update(name="lars_byol", base_lr=0.2, lr_scaling="linear", weight_decay=1.5e-6,
                     momentum=0.9, trust_coefficient=1e-3, warmup_epochs=10, schedule="cosine")
  c.augment.update(crop_scale=(0.08, 1.0), color_prob=0.8, brightness_impl="additive",
                   gray_prob=0.2)
  # utils/dataset.py _decode_and_random_crop (one draw, clipped; bicubic tf.image.resize),
  # utils/augmentations.py:239-282 (tf.image colour maths), blur sigma per image.
  c.augment.update(color_impl="tf", crop_sampler="byol", resize_method="bicubic",
                   antialias=False, blur_per_batch=False)
  c.byol = ml_collections.ConfigDict(dict(
      base_momentum=0.996, final_momentum=1.0, predictor_hidden_dim=4096,
      loss="sum_mse", target_init="random", color_jitter=(0.4, 0.4, 0.2, 0.1),
      blur_probs=(1.0, 0.1), solarize_probs=(0.0, 0.2)))
  return config_lib.variant(c, arg, {
      "cifar10": lightly_cifar10,
      "quickstart": lambda c: zero_init_all(quickstart_recipe(config_lib.use_quickstart(c))),
      "smoke": lambda c: smoke_recipe(config_lib.use_smoke(c)),
  })
