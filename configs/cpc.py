"""CPC v2 for images (Hénaff et al. 2019/20; CPC v1: van den Oord et al. 2018).

No official code exists; settings marked [P~] are from memory of the papers (METHODS.md
§3), not re-checked.

Variants, `--config=configs/cpc.py:<variant>`:
  (none)      ImageNet, v1's grid with v2's model changes: 256 px crops cut into a 7 x 7
              grid of 64 px patches at stride 32 (50% overlap); ResNet-50 patch encoder
              with LayerNorm (v2's R50 variant, 63.8% linear; v2's headline uses a
              ResNet-161), mean-pooled; context network of 5 PixelCNN-style blocks of
              width 256 with the pseudocode's ReLUs (cpc.context_relu: none after the
              1x3 conv or between blocks, one after the stack; App. A.2 [P~]); targets
              projected to 64-d, predictions x0.1, cpc.offsets = (3,): the v2 pseudocode's
              `for i in range(steps_to_ignore, steps_to_predict)` with its defaults 2 and 3
              is one target 3 rows below (App. A.2 [P~]; DEEPUL and our earlier default:
              (3, 4, 5); v1 §3.2: "up to five rows"), in 4 directions (cpc.directions: v2
              §4.1 [P~] "context from below, the right and the left ... up to four times
              as many prediction tasks": rotations of the patch grid, each with its own
              context network); v1's per-patch jitter (§3.2: a random 60 x 60 window of
              each 64 x 64 patch kept, the rest padded; cpc.patch_crop_size); Adam lr 2e-4,
              batch 512 (v1: 32 GPUs x 16 [P~]), 200 epochs (not given in the sources
              here). Per-patch augmentation (v2 §4.1 / App. A [P~]): flip, Inception
              colour distortion p=0.8, greyscale p=0.25, colour dropping (one random
              channel kept) on every patch. Image level: a fixed-size crop of 75% of the
              area (v2: 260 px out of 300 px), no colour changes.
  cifar10     Our own protocol (neither CPC paper has a CIFAR-10 setting): the default
              recipe at CIFAR scale, 32 px crops cut into 7 x 7 patches of 8 px at stride 4
              (the same 50% overlap and grid), a 7 x 7 window of each 8 px patch kept (v1's
              60/64 rounded), ResNet-18 with the CIFAR stem and LayerNorm, batch 512, 200
              epochs, Adam lr 2e-4.
  quickstart  The bundled 5,000-image CIFAR-10 subset on a 2-core CPU (~12 min of CPU
              time): a 5 x 5 grid of 12 px patches at stride 5 (58% overlap) of the
              32 px crop, predicting 1 and 2 rows ahead (none skipped), light patch
              colour changes (jitter p=0.5, no greyscale, dropping p=0.1), a narrow
              ResNet-18 (base width 8), batch 64, 8 epochs, Adam lr 2e-3, 1 direction,
              a 64-wide context network with DEEPUL's ReLUs, no per-patch crop (the
              settings it was tuned and measured with). The cifar10 grid (7 x 7 of 8 px, rows 3-5
              ahead, v2's colour changes) barely left chance in 181 steps and its kNN
              did not beat random init. Measured: kNN top-1 33.2% (random init 25.2%),
              13 min wall, 11.5 min user time on a shared 2-core CPU.
  smoke       A seconds-long CPU run for tests: 16 px crops, a 3 x 3 grid of 8 px patches.

Deviations: v2's AutoAugment-style, elastic-deformation and colour-histogram patch
augmentations are not implemented; dropped colour channels are set to their ImageNet
mean (0 after the input normalisation); ResNet v1 blocks rather than v1's ResNet-v2; the
last norm of each residual block starts at zero (the library's ResNet); each direction
has its own context network and predictors, the target projection is shared; the
per-patch crop keeps its window in place (DEEPUL), the rest at the ImageNet mean.
quickstart and smoke skip no rows although row 1 ahead overlaps the context's patches
(METHODS.md §3.5): per-patch flips and colour changes keep that step from being pixel
matching, and on 5 rows skipping 2 would leave 2 rows of predictions.

Evaluation: the quoted 63.8% is CPC v2's linear protocol; `--protocol=linear` runs
SimCLR's (library default; CPC v2's linear head is not implemented). kNN and linear read
the mean patch encoding. ImageNet variants evaluate on the ILSVRC validation split with
the central 0.875 crop (Resize(256) + CenterCrop(224); config_lib.imagenet_eval), CIFAR
ones on the test split at 32 px, whole image, with lightly's kNN (backbone features, k
200, T 0.1), which experiments/RESULTS.md's measurements use.
"""
import ml_collections

from ssl_jax import config as config_lib


def cifar_recipe(c):
  c.cpc.update(patch_size=8, patch_stride=4, patch_crop_size=7)
  return c


def quickstart_recipe(c):
  c.batch_size = 64
  c.num_epochs = 8
  c.optimizer.update(base_lr=2e-3, lr_scaling="none", warmup_epochs=0)
  # A 5 x 5 grid of 12 px patches at stride 5 (58% overlap): CIFAR's 7 x 7 grid of 8 px
  # patches barely moved from chance in 181 steps. Rows 1 and 2 ahead (row 1 overlaps,
  # row 2 by 2 px): rows 3 to 5 ahead do not fit in 5 rows.
  # Light colour changes per patch (jitter p=0.5, no greyscale, dropping p=0.1): with
  # v2's, the encoder learns colour invariance first, and colour is much of what a
  # 5,000-image kNN leans on (a run without them learnt, one with them did not).
  # A 256-wide context stack over 64-d latents would cost 10x the patch encoder.
  c.cpc.update(patch_size=12, patch_stride=5, offsets=(1, 2), patch_color_prob=0.5,
               patch_gray_prob=0.0, color_drop_prob=0.1, directions=1, context_width=64,
               context_relu="deepul", patch_crop_size=0)
  return c


def smoke_recipe(c):
  quickstart_recipe(c)
  c.image_size = 16
  c.batch_size = 16
  # A 3 x 3 grid of 8 px patches: the fewest patches that leave 2 rows to predict.
  c.cpc.update(patch_size=8, patch_stride=4, context_width=16, context_blocks=2,
               context_relu="pseudocode", patch_crop_size=7)
  return c


def get_config(arg=None):
  c = config_lib.base_config()
  c.method = "cpc"
  c.dataset = "imagenet2012"
  config_lib.imagenet_eval(c)
  c.image_size = 256
  c.batch_size = 512
  c.num_epochs = 200
  c.model.update(depth=50, width=1.0, cifar_stem=False)
  # Adam (adamw without decay), 1e-4 x B/256 = 2e-4 at v1's batch 512.
  c.optimizer.update(name="adamw", base_lr=1e-4, lr_scaling="linear", weight_decay=0.0,
                     warmup_epochs=0, schedule="constant")
  c.augment.update(crop_scale=(0.75, 0.75), crop_ratio=(1.0, 1.0), flip=False,
                   color_prob=0.0, gray_prob=0.0, blur_prob=0.0)
  c.cpc = ml_collections.ConfigDict(dict(
      patch_size=64, patch_stride=32, norm="layer", target_dim=64, emb_scale=0.1,
      offsets=(3,), directions=4, context_width=256, context_blocks=5,
      context_relu="pseudocode",
      # per-patch augmentation (data/patches.py)
      patch_flip=True, patch_color_prob=0.8, patch_jitter=(32 / 255, 0.5, 0.5, 0.2),
      patch_brightness_impl="additive", patch_gray_prob=0.25, color_drop_prob=1.0,
      patch_crop_size=60))
  return config_lib.variant(c, arg, {
      "cifar10": lambda c: cifar_recipe(config_lib.use_cifar10(c)),
      "quickstart": lambda c: quickstart_recipe(config_lib.use_quickstart(c)),
      "smoke": lambda c: smoke_recipe(config_lib.use_smoke(c)),
  })
