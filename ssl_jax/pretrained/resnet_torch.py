"""torchvision-layout ResNet-50 checkpoints: MoCo v1/v2, SimSiam, SwAV, DINO's ResNet-50,
InstDisc (lemniscate), and the mapping of a torchvision ResNet and its heads that MoCo v3's
and CMC's formats share.

torchvision's ResNet (v1.5: the stride on the bottleneck's 3x3 conv, which ours has too)
names its layers conv1/bn1, layer{1-4}.{i}.conv{1-3}/bn{1-3} and .downsample.{0,1} [pytorch/
vision torchvision/models/resnet.py]; ssl_jax's Block creates the shortcut first, so a block
with a downsample is Conv_0/BatchNorm_0 = downsample, Conv_1.. = conv1..; without one Conv_0..
= conv1... Padding: torchvision pads 7x7/2 by 3, 3x3 by 1, 1x1 by 0 and max-pools 3x3/2 by 1
(-inf); ssl_jax's Conv pads (k - 1) // 2 on both sides and its max-pool by 1: the same.
SwAV's ConstantPad2d(1) before a 7x7 conv padded by 2 [swav src/resnet50.py:157, 173-177] is
the same zero padding of 3. BN eps 1e-5 in both. The pooled 2048-d features are compared
with an F.conv2d reference in tests/test_pretrained.py.

Each file keeps the original's container: {'epoch', 'arch', 'state_dict', 'optimizer'}
(MoCo main_moco.py:L297-302 @132aea9, SimSiam main_simsiam.py:264-269, lemniscate
main.py:194-201) or the bare state dict (SwAV's and DINO's released files); the optimizer,
epoch and arch are not model keys and are left out.
"""
import numpy as np

from ssl_jax.models.resnet import DEPTHS
from ssl_jax.pretrained import converter
from ssl_jax.pretrained import torch_files
from ssl_jax.pretrained.formats import Converted, Format, register
from ssl_jax.pretrained.torch_files import batch_norm, conv, linear, require, state_dict


def _conv(w):
  return {"Conv_0": {"kernel": conv(w)}}


def resnet(a, depth: int = 50):
  """(params, batch_stats) of ssl_jax's ResNet from a torchvision-layout state dict `a`."""
  kind, stages = DEPTHS[depth]
  require(a, ["conv1.weight", "bn1.running_mean", "layer1.0.conv1.weight"], "a ResNet")
  params, stats = {"Conv_0": _conv(a["conv1.weight"])}, {}
  params["BatchNorm_0"], stats["BatchNorm_0"] = batch_norm(a, "bn1.")
  convs = 3 if kind == "bottleneck" else 2
  index = 0
  for stage, blocks in enumerate(stages):
    for i in range(blocks):
      t = f"layer{stage + 1}.{i}."
      p, s, n = {}, {}, 0
      if a.has(t + "downsample.0.weight"):
        p["Conv_0"] = _conv(a[t + "downsample.0.weight"])
        p["BatchNorm_0"], s["BatchNorm_0"] = batch_norm(a, t + "downsample.1.")
        n = 1
      for j in range(1, convs + 1):
        p[f"Conv_{n + j - 1}"] = _conv(a[f"{t}conv{j}.weight"])
        name = "last_bn" if j == convs else f"BatchNorm_{n + j - 1}"
        p[name], s[name] = batch_norm(a, f"{t}bn{j}.")
      params[f"Block_{index}"], stats[f"Block_{index}"] = p, s
      index += 1
  return params, stats


def mlp(a, fold_bias_into_bn: bool = False):
  """(params, batch_stats) of ssl_jax's head from a torch nn.Sequential of Linear, BatchNorm1d
  and parameter-free layers: the k-th Linear -> Dense_k, the k-th BatchNorm -> BatchNorm_k
  (non-affine: statistics only). With `fold_bias_into_bn` a Linear's bias that a
  non-affine BN follows is folded into that BN's running mean (SimSiam's fc[6]:
  BN(Wx + b) = BN'(Wx) with mean' = mean - b), exact in inference, and in training where
  BN subtracts the batch mean anyway."""
  indices = sorted({int(k.split(".")[0]) for k in a.keys()})
  if not indices:   # the file has no such head
    raise KeyError(getattr(a, "prefix", "") + "0.weight")
  params, stats, dense, norm, bias = {}, {}, 0, 0, None
  for i in indices:
    t = f"{i}."
    if a.has(t + "running_mean"):
      p, s = batch_norm(a, t, affine=a.has(t + "weight"))
      if bias is not None:
        s = dict(s, mean=s["mean"] - bias)
        bias = None
      if p:
        params[f"BatchNorm_{norm}"] = p
      stats[f"BatchNorm_{norm}"] = s
      norm += 1
    else:
      layer = {"kernel": linear(a[t + "weight"])}
      if a.has(t + "bias"):
        next_is_plain_bn = (fold_bias_into_bn and a.has(f"{i + 1}.running_mean")
                            and not a.has(f"{i + 1}.weight"))
        if next_is_plain_bn:
          bias = a[t + "bias"]
        else:
          layer["bias"] = a[t + "bias"]
      params[f"Dense_{dense}"] = layer
      dense += 1
  return params, stats


def strip(a, prefix: str):
  """`a` addressed without `prefix` when every key has it (e.g. DataParallel's 'module.')."""
  keys = a.keys()
  return a.under(prefix) if keys and all(k.startswith(prefix) for k in keys) else a


def backbone_and_head(a, head_prefix: str, fold_bias_into_bn: bool = False):
  """{"backbone": ..., "head": ...} params and batch stats of a ResNet whose fc is the head."""
  params, stats = {}, {}
  params["backbone"], stats["backbone"] = resnet(a)
  head = a.under(head_prefix)
  if head.has("weight"):   # a single Linear (MoCo v1, InstDisc)
    params["head"] = {"Dense_0": {"kernel": linear(head["weight"]), "bias": head["bias"]}}
  else:
    params["head"], head_stats = mlp(head, fold_bias_into_bn)
    if head_stats:
      stats["head"] = head_stats
  return params, stats


def torch_file(containers=("state_dict", "")):
  return lambda path: state_dict(path, containers)


# ---------------------------------------------------------------- MoCo v1 / v2

def convert_moco(arrays, config):
  """module.encoder_q.* -> params; module.encoder_k.* -> the key encoder (a copy of the query
  encoder where the file has none, as builder.py:L53-57 starts it); module.queue (dim, K) ->
  the queue (K, dim), module.queue_ptr -> queue_ptr [moco/builder.py:L40-64 @132aea9]."""
  a = strip(arrays, "module.")
  params, stats = backbone_and_head(a.under("encoder_q."), "fc.")
  key = a.under("encoder_k.")
  key_params, key_stats = (backbone_and_head(key, "fc.") if key.has("conv1.weight")
                           else (params, stats))
  method_state = {"key_params": key_params, "key_batch_stats": key_stats}
  if a.has("queue"):
    method_state["queue"] = np.ascontiguousarray(a["queue"].T)
    method_state["queue_ptr"] = a["queue_ptr"].reshape(())
  return Converted(params=params, batch_stats=stats, method_state=method_state)


register(Format(
    name="moco_v1", files="moco_v1_200ep_pretrain.pth.tar (60.6% linear)",
    source="facebookresearch/moco@132aea9 moco/builder.py:L34-64, main_moco.py:L297-302",
    config=lambda variant: converter.method_config("moco_v1", variant),
    read=torch_file(), convert=convert_moco))

register(Format(
    name="moco_v2", files="moco_v2_200ep_pretrain.pth.tar (67.7%), moco_v2_800ep_pretrain.pth.tar "
    "(71.1% linear)",
    source="facebookresearch/moco@132aea9 moco/builder.py:L34-64 (--mlp: fc.0, fc.2)",
    config=lambda variant: converter.method_config("moco_v2", variant),
    read=torch_file(), convert=convert_moco))


# ---------------------------------------------------------------- SimSiam

def convert_simsiam(arrays, config):
  """module.encoder.* (fc = the 3-layer projector) -> encoder/{backbone, head};
  module.predictor.* -> predictor [simsiam/builder.py:L23-41]. fc[6]'s bias (frozen, 'not
  used as BN follows') is folded into fc[7]'s running mean."""
  a = strip(arrays, "module.")
  params, stats = backbone_and_head(a.under("encoder."), "fc.", fold_bias_into_bn=True)
  pred_params, pred_stats = mlp(a.under("predictor."))
  return Converted(params={"encoder": params, "predictor": pred_params},
                   batch_stats={"encoder": stats, "predictor": pred_stats})


register(Format(
    name="simsiam", files="checkpoint_0099.pth.tar (100 ep, batch 256: 68.3% linear)",
    source="facebookresearch/simsiam@a7bc177 simsiam/builder.py:L23-41, main_simsiam.py:264-269",
    config=lambda variant: converter.method_config("simsiam", variant),
    read=torch_file(), convert=convert_simsiam))


# ---------------------------------------------------------------- SwAV

def convert_swav(arrays, config):
  """module.{ResNet}, module.projection_head.{0,1,3} (Linear, BN, Linear) -> head,
  module.prototypes.weight (K, 128) -> prototypes/kernel [swav src/resnet50.py:201-217]."""
  a = strip(arrays, "module.")
  params, stats = backbone_and_head(a, "projection_head.")
  params["prototypes"] = {"kernel": linear(a["prototypes.weight"])}
  return Converted(params=params, batch_stats=stats)


register(Format(
    name="swav", files="swav_800ep_pretrain.pth.tar (75.3% linear)",
    source="facebookresearch/swav@06b1b7c src/resnet50.py:157-217, hubconf.py:18-35",
    config=lambda variant: converter.method_config("swav", variant),
    read=torch_file(("state_dict", "")), convert=convert_swav))


# ---------------------------------------------------------------- DINO ResNet-50 backbone

def convert_backbone_only(arrays, config):
  """A bare torchvision ResNet-50 (fc removed) -> the backbone of the online network and of
  the teacher (DINO evaluates its teacher, whose backbone this file is [dino hubconf.py])."""
  a = strip(arrays, "module.")
  params, stats = resnet(a)
  teacher = {"params": {"backbone": params}, "batch_stats": {"backbone": stats}}
  return Converted(params={"backbone": params}, batch_stats={"backbone": stats},
                   method_state={"teacher": teacher})


register(Format(
    name="dino_resnet50", files="dino_resnet50_pretrain.pth (75.3% linear, 67.5% k-NN)",
    source="facebookresearch/dino@7c446df main_dino.py:175-178 (torchvision resnet50, fc = "
    "Identity), hubconf.py",
    config=lambda variant: converter.method_config("dino", variant or "resnet50"),
    read=torch_file(("state_dict", "")), convert=convert_backbone_only))


# ---------------------------------------------------------------- InstDisc (lemniscate)

# The checkpoint pickles the NCEAverage (or LinearAverage) module itself, 'lemniscate'
# (main.py:198), rebuilt as inert stand-ins. Its buffers, the memory bank and params
# [K, T, Z, momentum] (lib/NCEAverage.py:73-76), are read and left out, as CMC's: the bank's
# rows follow torchvision's ImageFolder order of ImageNet's training images, which TFDS's
# order is not, so loaded into ssl_jax's bank each image would be scored against another
# image's row. The bank starts fresh (as ssl_jax's, one row per image of the config's data).
LEMNISCATE_CLASSES = ("lib.NCEAverage.NCEAverage", "lib.LinearAverage.LinearAverage",
                      "lib.alias_multinomial.AliasMethod")


def read_instdisc(path):
  """state_dict/<the model's keys> and lemniscate/<the pickled module's buffers>."""
  obj = torch_files.load(path, stand_ins=LEMNISCATE_CLASSES)
  if not (isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict)):
    raise torch_files.ConfigError(f"--checkpoint={path} has no 'state_dict'; is it the right "
                                  "--format?")
  buffers = dict(getattr(obj.get("lemniscate"), "_buffers", None) or {})
  return {**torch_files.tensors(obj["state_dict"], "state_dict/"),
          **torch_files.tensors(buffers, "lemniscate/")}


def convert_instdisc(arrays, config):
  """module.{ResNet} with fc Linear(2048, 128) (DataParallel's 'module.' prefix;
  lemniscate main.py:97-104, models/resnet.py); the memory bank left out (above)."""
  params, stats = backbone_and_head(strip(arrays.under("state_dict/"), "module."), "fc.")
  unused = tuple(k for k in arrays.keys() if k.startswith("lemniscate/"))
  return Converted(params=params, batch_stats=stats, unused=unused)


def instdisc_config(variant):
  """configs/instdisc.py, whose kNN reads the memory bank (main.py:203), which is not loaded:
  the 128-d embeddings of the training images are recomputed instead (test.py:67-81 with
  recompute_memory=1)."""
  config = converter.method_config("instdisc", variant)
  if config.eval.features == "bank":
    config.eval.features = "embedding"
  return config


register(Format(
    name="instdisc", files="lemniscate_resnet50_update.pth (58.5% linear), lemniscate_resnet50.pth "
    "(46.8% 1-NN)",
    source="zhirongw/lemniscate.pytorch@f7cfe29 main.py:97-104, 194-201, models/resnet.py",
    config=instdisc_config,
    read=read_instdisc, convert=convert_instdisc))


# ---------------------------------------------------------------- CMC

def convert_cmc(arrays, config):
  """encoder.module.l_to_ab.* (1 input channel) -> l_encoder, encoder.module.ab_to_l.* (2)
  -> ab_encoder: each a torchvision-layout ResNet with a 64-channel stem and fc Linear(., 128)
  [CMC models/resnet.py:108-152, 296-330; train_CMC.py:332-342]. The NCE memory banks
  (contrast.memory_l / memory_ab, one row per ImageNet image in ImageFolder's order) and
  their Z are left out, for InstDisc's reason above."""
  a = arrays.under("model/encoder.module.")
  params, stats = {}, {}
  for ours, theirs in (("l_encoder", "l_to_ab."), ("ab_encoder", "ab_to_l.")):
    params[ours], stats[ours] = backbone_and_head(a.under(theirs), "fc.")
  unused = tuple(k for k in arrays.keys() if not k.startswith("model/"))
  return Converted(params=params, batch_stats=stats, unused=unused)


def read_cmc(path):
  obj = torch_files.load(path)
  if not (isinstance(obj, dict) and isinstance(obj.get("model"), dict)):
    raise torch_files.ConfigError(f"--checkpoint={path} has no 'model' state dict; is it the "
                                  "right --format?")
  return torch_files.tensors({k: obj[k] for k in ("model", "contrast") if k in obj})


register(Format(
    name="cmc", files="CMC_resnet50v1.pth (64.1% linear; v2/v3 with --config.model.width=1 / 2)",
    source="HobbitLong/CMC@7b227be models/resnet.py:108-152, 296-330, train_CMC.py:332-342",
    config=lambda variant: converter.method_config("cmc", variant),
    read=read_cmc, convert=convert_cmc))
