"""Vision Transformer checkpoints in timm's layout: DINO's ViT-S/16, S/8, B/16, B/8 (the
backbone-only files and the full student/teacher checkpoint with the DINO head) and MoCo v3
(ViT-S/B and ResNet-50: base and momentum encoders, projector and predictor).

Layout [dino vision_transformer.py:100-243; timm 0.4.9 VisionTransformer, which moco-v3
vits.py:25-69 subclasses]: cls_token (1, 1, D), pos_embed (1, 1 + N, D),
patch_embed.proj (Conv2d p x p / p: OIHW -> the HWIO kernel ssl_jax's PatchEmbed flattens in
the same (row, column, channel) order), blocks.i.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1,
mlp.fc2}, norm. qkv is one Linear(D, 3D) whose output is read as (3, heads, head_dim)
(vision_transformer.py:66-70), as ssl_jax's Attention splits it: a transpose suffices.
LayerNorm eps 1e-6 in all three. Position embeddings: DINO's learned table is kept at its
224 px size (config.model.pos_embed_image_size = 224) and, for other image sizes, resized
at every call as DINO's interpolate_pos_encoding does (models/vit.py); MoCo v3's fixed
sin-cos table (vits.py:53-69, requires_grad False) is recomputed by ssl_jax, so the file's
copy is checked against it and not stored.

DINO head [vision_transformer.py:257-285]: mlp.{0, 2, 4} Linear -> Dense_{0, 1, 2} (BN at
mlp.1/.4 when use_bn_in_head); last_layer = weight_norm(Linear(256, K, bias=False)) stored
as weight_g (K, 1) and weight_v (K, 256): kernel = weight_v^T (ssl_jax's WeightNormDense
divides by the column norms as torch's weight_norm over dim 0), scale = weight_g^T (a
learned g: norm_last_layer False); with norm_last_layer True g is frozen at 1 and the
file's g must be 1.
"""
import numpy as np

from ssl_jax.errors import ConfigError
from ssl_jax.models.vit import FROZEN_PREFIX, sincos_2d
from ssl_jax.pretrained import converter
from ssl_jax.pretrained.formats import Converted, Format, register
from ssl_jax.pretrained.resnet_torch import mlp, resnet, strip
from ssl_jax.pretrained.torch_files import conv, linear, require, state_dict

# DINO's released ViTs [dino README.md, hubconf.py]: variant -> (width, patch, heads).
DINO_VITS = {"vits16": (384, 16, 6), "vits8": (384, 8, 6), "vitb16": (768, 16, 12),
             "vitb8": (768, 8, 12)}
DINO_FILES = {"vits16": "dino_deitsmall16", "vits8": "dino_deitsmall8",
              "vitb16": "dino_vitbase16", "vitb8": "dino_vitbase8"}


def _norm(a, prefix):
  return {"scale": a[prefix + "weight"], "bias": a[prefix + "bias"]}


def _dense(a, prefix):
  return {"kernel": linear(a[prefix + "weight"]), "bias": a[prefix + "bias"]}


def vit(a, config):
  """ssl_jax ViT params from a timm-layout state dict `a` (module docstring)."""
  m = config.model
  require(a, ["cls_token", "patch_embed.proj.weight", "blocks.0.attn.qkv.weight"], "a ViT")
  name = (FROZEN_PREFIX if m.frozen_patch_embed else "") + "patch_embed"
  params = {name: {"kernel": conv(a["patch_embed.proj.weight"]),
                   "bias": a["patch_embed.proj.bias"]},
            "cls_token": a["cls_token"], "norm": _norm(a, "norm.")}
  if m.pos_embed == "learned":
    params["pos_embed"] = a["pos_embed"]
  else:
    check_sincos(a["pos_embed"], config)
  for i in range(m.depth):
    t = f"blocks.{i}."
    params[f"block{i}"] = {
        "norm1": _norm(a, t + "norm1."), "norm2": _norm(a, t + "norm2."),
        "Attention_0": {"qkv": _dense(a, t + "attn.qkv."), "proj": _dense(a, t + "attn.proj.")},
        "fc1": _dense(a, t + "mlp.fc1."), "fc2": _dense(a, t + "mlp.fc2.")}
  if a.has(f"blocks.{m.depth}.norm1.weight"):
    raise ConfigError(f"the checkpoint's ViT has more than config.model.depth={m.depth} blocks;"
                      " the config does not match the file (check --variant)")
  return params


def check_sincos(table, config):
  """MoCo v3's fixed table must be the one ssl_jax computes for the file's square patch grid
  (vits.py:53-69); ssl_jax recomputes it for whatever grid its input has."""
  width = int(config.model.width)
  grid = int(round((table.shape[1] - 1) ** 0.5))
  ours = np.concatenate([np.zeros((1, width)), sincos_2d(grid, grid, width)])[None]
  if table.shape != ours.shape or np.abs(table - ours).max() > 1e-5:
    raise ConfigError(f"the checkpoint's pos_embed {tuple(table.shape)} is not MoCo v3's 2-D "
                      "sin-cos table (vits.py:53-69); is it the right --format?")


# ---------------------------------------------------------------- DINO

def dino_head(a, config):
  """params (and BN statistics) of DINOHead from `a` = the state dict under 'head.'."""
  params, stats = mlp(a.under("mlp."))
  g, v = a["last_layer.weight_g"], a["last_layer.weight_v"]
  last = {"kernel": linear(v)}
  if config.head.norm_last_layer:
    if not np.allclose(g, 1.0):
      raise ConfigError("the checkpoint's DINO head learned its last layer's norms "
                        "(last_layer.weight_g != 1); use --config.head.norm_last_layer=False")
  else:
    last["scale"] = linear(g)
  params["last_layer"] = last
  return params, stats


def dino_network(a, config):
  """({"backbone", "head"} params, batch stats) of a MultiCropWrapper state dict `a`
  (backbone.*, head.*) or a bare backbone (head left out)."""
  wrapped = a.has("backbone.cls_token") or a.has("backbone.conv1.weight")
  body = a.under("backbone.") if wrapped else a
  params, stats = {}, {}
  if config.model.name == "vit":
    params["backbone"] = vit(body, config)
  else:
    params["backbone"], stats["backbone"] = resnet(body)
  if wrapped and a.has("head.last_layer.weight_v"):
    params["head"], head_stats = dino_head(a.under("head."), config)
    if head_stats:
      stats["head"] = head_stats
  return params, stats


def convert_dino(arrays, config):
  """The backbone-only release (the teacher's backbone [dino hubconf.py]) -> online and
  teacher backbones; the full checkpoint: student/module.* -> params, teacher/* -> the
  teacher (with DDP's 'module.' where it has BN), dino_loss/center -> center
  [main_dino.py:278-288]; its optimizer, epoch, args and fp16 scaler are not weights."""
  if not any(k.startswith("student/") for k in arrays.keys()):
    params, stats = dino_network(strip(arrays, "module."), config)
    teacher = {"params": params, "batch_stats": stats} if stats else {"params": params}
    return Converted(params=params, batch_stats=stats, method_state={"teacher": teacher})
  student = strip(arrays.under("student/"), "module.")
  teacher_view = strip(arrays.under("teacher/"), "module.")
  params, stats = dino_network(student, config)
  t_params, t_stats = dino_network(teacher_view, config)
  teacher = {"params": t_params, **({"batch_stats": t_stats} if t_stats else {})}
  return Converted(params=params, batch_stats=stats,
                   method_state={"teacher": teacher, "center": arrays["dino_loss/center"]})


def dino_config(variant):
  """configs/dino.py for a released ViT (`variant` a key of DINO_VITS, default vits16)."""
  variant = variant or "vits16"
  if variant not in DINO_VITS:
    raise ConfigError(f"--variant={variant!r} is not a DINO ViT; use one of {sorted(DINO_VITS)}")
  width, patch, heads = DINO_VITS[variant]
  config = converter.method_config("dino", "vitb16" if width == 768 else None)
  config.model.update(width=width, patch_size=patch, num_heads=heads,
                      pos_embed_image_size=224)
  return config


def read_dino(path):
  """A bare backbone state dict, or the full checkpoint's student, teacher and dino_loss
  (flattened as 'student/<key>', ...)."""
  from ssl_jax.pretrained import torch_files  # pylint: disable=import-outside-toplevel
  obj = torch_files.load(path)
  if isinstance(obj, dict) and "student" in obj:
    return torch_files.tensors({k: obj[k] for k in ("student", "teacher", "dino_loss")
                                if k in obj})
  return state_dict(path, ("state_dict", ""))


register(Format(
    name="dino_vit", files=", ".join(f"{f}_pretrain.pth, {f}_pretrain_full_checkpoint.pth "
                                     f"(--variant={v})" for v, f in DINO_FILES.items()),
    source="facebookresearch/dino@7c446df vision_transformer.py:100-285, main_dino.py:278-288",
    config=dino_config, read=read_dino, convert=convert_dino))


# ---------------------------------------------------------------- MoCo v3

def convert_moco_v3(arrays, config):
  """module.base_encoder.* -> encoder/{backbone, head} (ResNet: fc = the 2-layer projector;
  ViT: head = the 3-layer one), module.predictor.* -> predictor, module.momentum_encoder.*
  -> the momentum encoder [moco-v3 moco/builder.py:L26-52, L99-122]."""
  a = strip(arrays, "module.")

  def encoder(e):
    params, stats = {}, {}
    if config.model.name == "vit":
      params["backbone"] = vit(e, config)
      head = e.under("head.")
    else:
      params["backbone"], stats["backbone"] = resnet(e)
      head = e.under("fc.")
    params["head"], stats["head"] = mlp(head)
    return params, stats

  params, stats = encoder(a.under("base_encoder."))
  pred_params, pred_stats = mlp(a.under("predictor."))
  m_params, m_stats = encoder(a.under("momentum_encoder."))
  return Converted(params={"encoder": params, "predictor": pred_params},
                   batch_stats={"encoder": stats, "predictor": pred_stats},
                   method_state={"params": m_params, "batch_stats": m_stats})


MOCO_V3_VARIANTS = {"vits": None, "vitb": "vitb", "resnet50": "resnet50"}


def moco_v3_config(variant):
  variant = variant or "vits"
  if variant not in MOCO_V3_VARIANTS:
    raise ConfigError(f"--variant={variant!r} is not a MoCo v3 release; use one of "
                      f"{sorted(MOCO_V3_VARIANTS)}")
  if variant == "vitb":
    config = converter.method_config("moco_v3")
    config.model.update(width=768)
    return config
  return converter.method_config("moco_v3", MOCO_V3_VARIANTS[variant])


register(Format(
    name="moco_v3", files="vit-s-300ep.pth.tar (73.2%), vit-b-300ep.pth.tar (76.7%; "
    "--variant=vitb), r-50-1000ep.pth.tar (74.6% linear; --variant=resnet50)",
    source="facebookresearch/moco-v3@c349e6e moco/builder.py:L26-122, vits.py:25-125, "
    "main_moco.py:310-316",
    config=moco_v3_config, read=lambda path: state_dict(path, ("state_dict",)),
    convert=convert_moco_v3))
