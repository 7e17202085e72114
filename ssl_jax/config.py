"""The fields every config has, and the checks that run before anything compiles.

Configs are Python files in configs/ whose `get_config(arg)` starts from `base_config()`
and sets what its method and variant need. Fields a method does not use keep their
defaults. `validate` turns every mistake it can see into one ConfigError line that names
the field and the fix; the valid values of every number are in one table, ranges.py.
"""

import importlib.util
import os

import ml_collections

from ssl_jax.errors import ConfigError
from ssl_jax.ranges import (  # noqa: F401  (re-exported: the evaluate CLI and tests)
    EVALUATE_FLAG_RANGES, NON_NEGATIVE, PROBABILITY, check_evaluate_flags, check_ranges,
    range_of)

DTYPES = ("auto", "float32", "bfloat16", "float16")


# The configs/ folder beside the package (an editable install or a checkout).
CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


def load_config_file(path: str):
  """A config file (e.g. configs/simclr_v2.py) as a module: its get_config(variant)."""
  spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.method = "simclr"
  c.seed = 0

  # Data: "quickstart", "image_folder:<path>", "packed:<file.npz>" or a TFDS name.
  c.dataset = "quickstart"
  c.data_dir = ""              # TFDS data_dir ("" = TFDS default)
  c.data_image_size = 0        # resize stored images to this side on loading (0 = keep)
  # "memory": whole split decoded into host memory; "tfdata": streamed through tf.data
  # (data/pipeline.py); "auto": tf.data for image folders and TFDS names when TensorFlow
  # is installed, memory for "quickstart" and "packed:".
  c.input_pipeline = "auto"
  c.train_split = "train"
  c.eval_split = "test"
  c.image_size = 32            # side of the augmented crops fed to the network
  c.batch_size = 512           # global batch, over all devices and processes
  c.num_epochs = 100
  c.num_steps = 0              # > 0 overrides num_epochs
  c.dtype = "auto"             # compute dtype; "auto" = bfloat16 on accelerators, float32 on CPU

  # name "resnet" (width = multiplier) or "vit" (width = embedding width, depth = blocks;
  # the patch_size ... frozen_patch_embed fields are the ViT's, see models/vit.py).
  c.model = ml_collections.ConfigDict(dict(
      name="resnet", depth=50, width=1.0, cifar_stem=False, sk_ratio=0.0,
      patch_size=16, num_heads=12, pos_embed="sincos", drop_path=0.0,
      frozen_patch_embed=False,
      # ResNet shortcuts: "when_needed" (torchvision: a projection only where the shape
      # changes) or "always" (SimCLR's TF ResNet, BYOL's Haiku ResNet: block 0 of every stage)
      projection_shortcut="when_needed",
      # Initialisation, per original (models/resnet.py, models/inits.py, models/vit.py):
      # blocks whose last BN scale starts at 0 ("all", "bottleneck": Haiku's, "none":
      # torchvision's default); conv init "torchvision" (kaiming fan_out), "pytorch"
      # (nn.Conv2d's default), "tf_simclr" (TF VarianceScaling) or "haiku"; ViT init
      # "moco_v3" or "dino"; stem channels (0 = 64 x width; CMC keeps 64).
      zero_init_residual="all", init="torchvision", vit_init="moco_v3", stem_width=0,
      # conv and max-pool padding: "torch", "tf_fixed" (SimCLR's TF), "same" (Haiku's)
      padding="torch",
      # The image side a learned ViT position embedding is built for (0 = image_size);
      # other sizes are interpolated as DINO's interpolate_pos_encoding. Converted DINO
      # checkpoints keep their 224 px table (ssl_jax/pretrained).
      pos_embed_image_size=0))
  # finetune_layer: the head layer fine-tuning starts from (0 = backbone output).
  c.head = ml_collections.ConfigDict(dict(num_layers=2, hidden_dim=0, out_dim=128,
                                          finetune_layer=0))
  # chunk_size: contrastive logits (NT-Xent, InfoNCE) computed this many rows at a time
  # per device, so memory is chunk x global batch, not local x global (0 = all at once).
  c.loss = ml_collections.ConfigDict(dict(temperature=0.1, chunk_size=0))
  c.optimizer = ml_collections.ConfigDict(dict(
      name="lars", base_lr=0.3, lr_scaling="linear", weight_decay=1e-6, momentum=0.9,
      trust_coefficient=1e-3, warmup_epochs=10.0, schedule="cosine",
      lr_steps_epochs=(),         # schedule="steps": x0.1 at each of these epochs
      lr_steps_factors=(),        # ... or x these factors of the peak lr (one per epoch)
      final_lr=0.0))              # schedule="cosine" ends here (absolute, not scaled)
  c.augment = ml_collections.ConfigDict(dict(
      crop_scale=(0.08, 1.0), crop_ratio=(3 / 4, 4 / 3), flip=True, color_strength=1.0,
      color_prob=0.8, brightness_impl="additive", gray_prob=0.2, blur_prob=0.5,
      solarize_prob=0.0,
      # Whose semantics: colour jitter "tf" (tf.image: SimCLR, BYOL) or "torchvision"
      # (PIL ImageEnhance: the PyTorch originals); crop box sampler "torchvision"
      # (RandomResizedCrop) or "tf" (sample_distorted_bounding_box: SimCLR, BYOL); crop
      # resize "bilinear" or "bicubic", antialiased when shrinking or not.
      color_impl="tf", crop_sampler="torchvision", resize_method="bilinear",
      antialias=False,
      # The blur sigma drawn once per batch and view (SimCLR) or per image (PIL originals).
      blur_per_batch=False))
  c.eval = ml_collections.ConfigDict(dict(
      knn_k=200, knn_temperature=0.1, batch_size=500, knn_every_epochs=0, random_init=True,
      # workdir/plots at the end: curves, and a t-SNE of this many eval features (0 = none)
      plots=True, plot_points=1000,
      # the online linear probe on stop-gradient features (ssl_jax/probe.py): SGD lr
      online_probe=True, probe_lr=0.1,
      # Evaluation images: the central crop_proportion of the shorter side, resized to
      # image_size (0.875 = Resize(256) + CenterCrop(224); 1.0 = the whole image).
      crop_proportion=1.0,
      # Features kNN and linear evaluation read: "backbone" (pooled encoder output) or
      # "embedding" (the method's L2-normalised output, e.g. InstDisc's 128-d); "bank"
      # (InstDisc, CMC): kNN of the test embeddings against the memory bank's rows (linear
      # and export read the embedding). A method's EVAL_FEATURES lists what it offers.
      features="backbone",
      # The offline linear protocol (evaluate/linear.py); CLI flags override these. Defaults:
      # SimCLR's (Nesterov SGD 0.9, lr 0.1 x B/256, cosine, 90 epochs, zero init). optimizer
      # "nesterov" (weight decay on kernels) | "sgd" (on every parameter) | "lars" (apex
      # LARC, trust 1e-3); schedule "cosine" | "steps" (x0.1 at each of lr_steps_epochs);
      # init "zeros" | "normal" (N(0, 0.01), zero bias); batch_size 0 = scaled to the data.
      # vit_blocks / vit_avgpool (ViT backbones): the CLS tokens of the last vit_blocks
      # blocks, and the mean patch token of the last (DINO eval_linear.py).
      linear=ml_collections.ConfigDict(dict(
          epochs=90, batch_size=0, base_lr=0.1, weight_decay=1e-6, optimizer="nesterov",
          schedule="cosine", lr_steps_epochs=(), init="zeros", vit_blocks=1,
          vit_avgpool=False))))
  c.log_every_steps = 50
  # TensorBoard summaries in the workdir beside metrics.jsonl, through clu (whose writer
  # imports TensorFlow: ~6 s of CPU at start; skipped where TensorFlow is missing).
  c.tensorboard = True
  # Checkpoints in workdir/checkpoints: every `every_steps` (0 = only at the end) and at the
  # end; the last `keep` are kept, plus the best by `best_metric` (e.g. "knn_top1", from
  # the kNN monitor) when set. Re-running the same command resumes from the latest.
  c.checkpoint = ml_collections.ConfigDict(dict(
      every_steps=1000, keep=2, best_metric="", best_mode="max", async_save=True))
  # Filled in by train.py from the data set size, for schedules inside methods (EMA
  # momentum, temperature warmup...); leave at 0.
  c.run = ml_collections.ConfigDict(dict(steps_per_epoch=0, total_steps=0,
                                         num_train_examples=0))   # memory-bank rows
  return c


# ------------------------------------------------------------------ valid ranges
def total_steps(config, steps_per_epoch: int) -> int:
  """The run's length in steps: num_steps when set, else num_epochs of the data."""
  return config.num_steps or int(config.num_epochs * steps_per_epoch)


def fill_run(config, steps_per_epoch: int, num_train_examples: int) -> int:
  """Fills config.run from the data (schedules inside methods and memory-bank shapes read
  it); returns the run's length in steps."""
  steps = total_steps(config, steps_per_epoch)
  config.run.update(steps_per_epoch=steps_per_epoch, total_steps=steps,
                    num_train_examples=num_train_examples)
  return steps


def _check(ok: bool, message: str):
  if not ok:
    raise ConfigError(message)


def validate(config, device_count: int | None = None):
  """Checks the config alone; the data set name and paths are checked when loading, which
  also happens before anything compiles."""
  from ssl_jax import methods  # pylint: disable=import-outside-toplevel
  method = methods.get(config.method)
  check_ranges(config)
  if device_count:
    _check(config.batch_size % device_count == 0,
           f"config.batch_size={config.batch_size} is not divisible by the {device_count} "
           f"devices; use a multiple of {device_count}")
  _check(config.num_epochs > 0 or config.num_steps > 0,
         "config.num_epochs and config.num_steps are both 0; set one of them")
  _check(config.dtype in DTYPES, f"config.dtype={config.dtype!r} is unknown; use one of {DTYPES}")
  _validate_input_pipeline(config)
  if config.model.name == "resnet":
    from ssl_jax.models.resnet import DEPTHS  # pylint: disable=import-outside-toplevel
    _check(config.model.depth in DEPTHS, f"config.model.depth={config.model.depth} is not "
           f"a ResNet depth; use one of {sorted(DEPTHS)}")
    _check(config.model.width * 64 >= 1, f"config.model.width={config.model.width} leaves "
           "no channels; use >= 1/64")
    _validate_resnet(config.model)
  elif config.model.name == "vit":
    _validate_vit(config)
  else:
    raise ConfigError(f"config.model.name={config.model.name!r} is unknown; use 'resnet' "
                      "or 'vit'")
  _check(config.augment.brightness_impl in ("additive", "multiplicative"),
         f"config.augment.brightness_impl={config.augment.brightness_impl!r} is unknown; use "
         "'additive' (SimCLR v1) or 'multiplicative' (SimCLR v2)")
  _validate_augment_semantics(config.augment)
  _check(0 <= config.head.finetune_layer < max(config.head.num_layers, 1),
         f"config.head.finetune_layer={config.head.finetune_layer} must be below "
         f"config.head.num_layers={config.head.num_layers}")
  _validate_eval(config, method)
  if hasattr(method, "validate"):   # the method's own fields (queue length, groups...)
    method.validate(config, device_count)


def _validate_augment_semantics(a):
  from ssl_jax.data import color, crops  # pylint: disable=import-outside-toplevel
  for name, known in (("color_impl", color.COLOR_IMPLS), ("crop_sampler", crops.SAMPLERS),
                      ("resize_method", crops.RESIZE_METHODS)):
    _check(a[name] in known, f"config.augment.{name}={a[name]!r} is unknown; use one of "
           f"{known}")


def _validate_input_pipeline(config):
  from ssl_jax.data import pipeline  # pylint: disable=import-outside-toplevel
  choice = config.get("input_pipeline", "auto")
  _check(choice in pipeline.PIPELINES, f"config.input_pipeline={choice!r} is unknown; use "
         f"one of {pipeline.PIPELINES}")
  _check(choice != "tfdata" or not pipeline.memory_only(config.dataset),
         f"config.input_pipeline='tfdata' cannot read config.dataset={config.dataset!r}; use "
         "'memory' or 'auto' for 'quickstart' and 'packed:' data")


LINEAR_OPTIMIZERS = ("nesterov", "sgd", "lars")


def _validate_eval(config, method):
  e, lin = config.eval, config.eval.linear
  _check(e.knn_k > 0, f"config.eval.knn_k={e.knn_k} must be positive")
  _check(0 < e.crop_proportion <= 1, f"config.eval.crop_proportion={e.crop_proportion} must "
         "be in (0, 1]; use 0.875 for Resize(256) + CenterCrop(224), 1.0 for the whole image")
  allowed = getattr(method, "EVAL_FEATURES", ("backbone",))
  _check(e.features in allowed, f"config.eval.features={e.features!r} is not offered by "
         f"config.method={config.method!r}; use one of {allowed}")
  _check(lin.optimizer in LINEAR_OPTIMIZERS, f"config.eval.linear.optimizer={lin.optimizer!r} "
         f"is unknown; use one of {LINEAR_OPTIMIZERS}")
  _check(lin.schedule in ("cosine", "steps"), f"config.eval.linear.schedule={lin.schedule!r} "
         "is unknown; use 'cosine' or 'steps'")
  _check(lin.init in ("zeros", "normal"), f"config.eval.linear.init={lin.init!r} is unknown; "
         "use 'zeros' or 'normal'")
  _check(lin.epochs > 0 and lin.batch_size >= 0, f"config.eval.linear.epochs={lin.epochs} and "
         f".batch_size={lin.batch_size} need epochs > 0 and batch_size >= 0 (0 = scaled)")
  if config.model.name == "vit":   # other backbones ignore them, as DINO's eval_linear.py
    vit_ok = 1 <= lin.vit_blocks <= config.model.depth and (lin.vit_blocks == 1 or
                                                           not lin.vit_avgpool)
    _check(vit_ok, f"config.eval.linear.vit_blocks={lin.vit_blocks} / .vit_avgpool="
           f"{lin.vit_avgpool} need 1 <= vit_blocks <= config.model.depth="
           f"{config.model.depth}, and one block with avgpool (DINO's ViT-B: 1 / True)")


def _validate_resnet(m):
  from ssl_jax.models import inits, resnet  # pylint: disable=import-outside-toplevel
  for field, allowed in (("projection_shortcut", resnet.SHORTCUTS),
                         ("zero_init_residual", resnet.ZERO_INIT), ("init", inits.CONV_SCHEMES),
                         ("padding", resnet.PADDINGS)):
    _check(m[field] in allowed, f"config.model.{field}={m[field]!r} is unknown; use one of "
           f"{allowed}")
  _check(m.stem_width >= 0, f"config.model.stem_width={m.stem_width} must be >= 0 (0 = 64 x "
         "width)")


def _validate_vit(config):
  m = config.model
  _check(config.image_size % m.patch_size == 0, f"config.image_size={config.image_size} is "
         f"not divisible by config.model.patch_size={m.patch_size}; use a multiple of it")
  _check(m.width == int(m.width) and m.width % m.num_heads == 0,
         f"config.model.width={m.width} (the ViT width) is not divisible by "
         f"config.model.num_heads={m.num_heads}; use a multiple of the head count")
  from ssl_jax.models import vit  # pylint: disable=import-outside-toplevel
  _check(m.vit_init in vit.INITS, f"config.model.vit_init={m.vit_init!r} is unknown; use "
         f"one of {vit.INITS}")
  _check(m.pos_embed in ("sincos", "learned"), f"config.model.pos_embed={m.pos_embed!r} is "
         "unknown; use 'sincos' or 'learned'")
  _check(m.pos_embed != "sincos" or m.width % 4 == 0, f"config.model.width={m.width} is not "
         "divisible by 4, which the sin-cos position embedding needs")
  _check(m.pos_embed_image_size % m.patch_size == 0, f"config.model.pos_embed_image_size="
         f"{m.pos_embed_image_size} is not divisible by config.model.patch_size={m.patch_size}; "
         "use a multiple of it (0 = config.image_size)")
  _check(m.depth >= 1 and 0 <= m.drop_path < 1, f"config.model.depth={m.depth} and "
         f"config.model.drop_path={m.drop_path} need depth >= 1 and 0 <= drop_path < 1")


# Scale presets shared by every method's config; a method's file then sets its own
# optimizer, loss and augmentation values for the variant.

def use_cifar10(c):
  """CIFAR-10 at 32 px: ResNet-18 with the CIFAR stem, batch 512, 200 epochs."""
  c.dataset = "cifar10"
  c.image_size = 32
  c.batch_size = 512
  c.num_epochs = 200
  c.model.update(depth=18, width=1.0, cifar_stem=True, sk_ratio=0.0)
  c.eval.knn_every_epochs = 10
  cifar_eval(c)
  return c


def imagenet_eval(c):
  """ImageNet evaluation as every original: the ILSVRC validation set (TFDS imagenet2012's
  "test" split has no labels) and the central 0.875 of the shorter side (Resize(256) +
  CenterCrop(224), SimCLR's CROP_PROPORTION)."""
  c.eval_split = "validation"
  c.eval.crop_proportion = 0.875
  return c


def cifar_eval(c):
  """CIFAR-10 at 32 px: the labelled test split, the whole image (SimCLR's centre crop is
  off at <= 32 px, tf2/data_util.py:478-494), and lightly's CIFAR-10 kNN (backbone
  features, k 200, T 0.1; METHODS.md 16.1), which experiments/RESULTS.md measures; a
  method's CIFAR recipe sets its original's kNN after this where it has one."""
  c.eval_split = "test"
  c.eval.update(crop_proportion=1.0, features="backbone", knn_k=200, knn_temperature=0.1)
  return c


def use_lightly_resnet(c):
  """lightly's ResNetGenerator, the backbone of its CIFAR-10 benchmark (METHODS.md §16.1):
  a projection shortcut only where the shape changes, every BN scale at 1, PyTorch's
  default conv init and padding [lightly-ai/lightly lightly/models/resnet.py]. (Its stem also has no
  ReLU, which this ResNet keeps.)"""
  c.model.update(projection_shortcut="when_needed", zero_init_residual="none", init="pytorch",
                 padding="torch")
  return c


def use_lightly_cifar10(c):
  """lightly's CIFAR-10 benchmark (lightly-ai/lightly docs/source/getting_started/benchmarks/
  cifar10_benchmark.py @42a6a924, METHODS.md §16), what its methods share: use_cifar10;
  SGD momentum 0.9, lr 0.06 x B/128 (= 0.12 x B/256; lines 125-126, 345-351), weight decay
  5e-4 on every parameter, CosineAnnealingLR(max_epochs) stepped per epoch, no warmup; the
  simclr transform (lines 167-172): torchvision RandomResizedCrop(32, (0.08, 1)) bilinear
  on PIL, flip, ColorJitter(0.4, 0.4, 0.4, 0.1) p 0.8, grayscale 0.2, no blur; ImageNet
  mean/std; kNN k 200, T 0.1 on the backbone features every epoch, the best kept (lines
  102-106; BenchmarkModule.max_accuracy); its ResNet-18 (use_lightly_resnet)."""
  use_lightly_resnet(use_cifar10(c))
  c.optimizer.update(name="sgd", base_lr=0.12, lr_scaling="linear", weight_decay=5e-4,
                     momentum=0.9, warmup_epochs=0, schedule="cosine_epochs", final_lr=0.0)
  c.augment.update(crop_scale=(0.08, 1.0), crop_ratio=(3 / 4, 4 / 3), flip=True,
                   color_strength=0.5, color_prob=0.8, brightness_impl="multiplicative",
                   gray_prob=0.2, blur_prob=0.0, solarize_prob=0.0, color_impl="torchvision",
                   crop_sampler="torchvision", resize_method="bilinear", antialias=True)
  c.eval.update(knn_k=200, knn_temperature=0.1, knn_every_epochs=1, features="backbone",
                crop_proportion=1.0)
  return c


def use_quickstart(c):
  """The bundled 5,000-image CIFAR-10 subset; a narrow ResNet-18 that learns in minutes on CPU."""
  c.dataset = "quickstart"
  c.image_size = 32
  c.batch_size = 256
  c.num_epochs = 10
  c.optimizer.warmup_epochs = 1   # 10 of 10 epochs would never leave the warmup
  c.model.update(depth=18, width=0.125, cifar_stem=True, sk_ratio=0.0)
  c.log_every_steps = 10
  cifar_eval(c)
  # kNN monitor every 3 epochs (3-4 points before the final one in 10-14 epochs), so the
  # accuracy curve shows learning; each costs ~0.25 epoch (6,000 forward passes), ~7 %.
  c.eval.knn_every_epochs = 3
  return c


def use_smoke(c):
  """Seconds on a CPU: a tiny ResNet-18 on 16 px crops of the bundled set, a few steps."""
  use_quickstart(c)
  c.image_size = 16
  c.batch_size = 32
  c.num_steps = 3
  c.model.update(width=1 / 16)
  c.log_every_steps = 1
  c.eval.plot_points = 200
  c.eval.knn_every_epochs = 0
  return c


class _VariantNames(Exception):
  """What `variant` raises for `variant_names`: the names of a config's presets."""


_LIST_VARIANTS = object()


def variant_names(get_config) -> list[str]:
  """The variants a config file's `get_config` accepts (besides none)."""
  try:
    get_config(_LIST_VARIANTS)
  except _VariantNames as e:
    return e.args[0]
  return []


def variant(c, arg, presets: dict):
  """Applies the variant named by `arg` (None = the paper's setting) from `presets`."""
  if arg is _LIST_VARIANTS:
    raise _VariantNames(sorted(presets))
  if arg not in (None, "") and arg not in presets:
    raise ConfigError(f"config variant {arg!r} is unknown; use one of {sorted(presets)} "
                      "(or none for the paper's setting)")
  if arg:
    c = presets[arg](c)
  c.lock()   # a misspelt field is an error, in code as on the command line
  return c
