"""Released-checkpoint formats (ssl_jax/pretrained): each test writes a file in the
original's key layout and container with random values (torch.save), converts it, and
compares ssl_jax's features with a forward pass written here in torch.nn.functional ops on
the same state dict, independent of the Flax code."""
import argparse
import functools
import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the checkpoint formats read PyTorch files; "
                            "install torch (pip install -e '.[convert]')")
F = torch.nn.functional

from ssl_jax import methods  # noqa: E402  pylint: disable=wrong-import-position
from ssl_jax import pretrained  # noqa: E402  pylint: disable=wrong-import-position
from ssl_jax.errors import ConfigError  # noqa: E402  pylint: disable=wrong-import-position

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
STAGES = (3, 4, 6, 3)
TOL = 1e-5   # max |ours - reference| relative to max |reference| (float32 over 50 layers)


def close(got, want, tol=TOL):
  """Whether `got` matches `want` within `tol` of want's scale; prints the measured gap."""
  gap = float(np.abs(np.asarray(got) - np.asarray(want)).max())
  scale = float(np.abs(np.asarray(want)).max())
  print(f"max abs diff {gap:.3g} (features up to {scale:.3g}, relative {gap / scale:.3g})")
  return gap <= tol * max(scale, 1.0)


@functools.lru_cache(maxsize=None)
def _resnet50_forward():
  """One compiled ssl_jax ResNet-50 forward (ImageNet-normalised input, BN in inference) for
  every torchvision-layout format: they differ in their trees, not in the backbone."""
  import jax  # pylint: disable=import-outside-toplevel
  from ssl_jax import models  # pylint: disable=import-outside-toplevel
  from ssl_jax.models.encoder import normalize_imagenet  # pylint: disable=import-outside-toplevel
  net = models.backbone(small("moco_v2").model, np.float32)
  return jax.jit(lambda v, x: net.apply(v, normalize_imagenet(x), train=False))


def resnet50_features(variables, *path):
  """The backbone features of `variables`' ResNet at params[path]/batch_stats[path]."""
  tree = {}
  for part in ("params", "batch_stats"):
    node = variables[part]
    for key in path:
      node = node[key]
    tree[part] = node
  return np.asarray(_resnet50_forward()(tree, images()))


# ------------------------------------------------------------------ state dicts

def _bn(sd, prefix, n, gen, affine=True):
  if affine:
    sd[prefix + "weight"] = 1 + 0.1 * torch.randn(n, generator=gen)
    sd[prefix + "bias"] = 0.1 * torch.randn(n, generator=gen)
  sd[prefix + "running_mean"] = 0.1 * torch.randn(n, generator=gen)
  sd[prefix + "running_var"] = 0.5 + torch.rand(n, generator=gen)
  sd[prefix + "num_batches_tracked"] = torch.tensor(1000)


def _conv(sd, key, out, inp, k, gen):
  sd[key] = torch.randn(out, inp, k, k, generator=gen) * (2.0 / (k * k * out)) ** 0.5


def _linear(sd, prefix, out, inp, gen, bias=True):
  sd[prefix + "weight"] = torch.randn(out, inp, generator=gen) / inp ** 0.5
  if bias:
    sd[prefix + "bias"] = 0.1 * torch.randn(out, generator=gen)


def resnet50_state_dict(seed=0, in_channels=3, width=1.0, prefix=""):
  """torchvision resnet50's state dict without fc (CMC: a 64-channel stem at any width)."""
  gen = torch.Generator().manual_seed(seed)
  sd = {}
  _conv(sd, prefix + "conv1.weight", 64, in_channels, 7, gen)
  _bn(sd, prefix + "bn1.", 64, gen)
  inplanes, base = 64, int(64 * width)
  for stage, blocks in enumerate(STAGES):
    planes = base * 2**stage
    for i in range(blocks):
      t = f"{prefix}layer{stage + 1}.{i}."
      _conv(sd, t + "conv1.weight", planes, inplanes, 1, gen)
      _bn(sd, t + "bn1.", planes, gen)
      _conv(sd, t + "conv2.weight", planes, planes, 3, gen)
      _bn(sd, t + "bn2.", planes, gen)
      _conv(sd, t + "conv3.weight", planes * 4, planes, 1, gen)
      _bn(sd, t + "bn3.", planes * 4, gen)
      if i == 0:
        _conv(sd, t + "downsample.0.weight", planes * 4, inplanes, 1, gen)
        _bn(sd, t + "downsample.1.", planes * 4, gen)
      inplanes = planes * 4
  return sd


def mlp_state_dict(prefix, layers, gen):
  """A torch Sequential: layers = [("linear", out, in, bias) | ("bn", n, affine) | "relu"]."""
  sd = {}
  for i, layer in enumerate(layers):
    if layer[0] == "linear":
      _linear(sd, f"{prefix}{i}.", layer[1], layer[2], gen, layer[3])
    elif layer[0] == "bn":
      _bn(sd, f"{prefix}{i}.", layer[1], gen, layer[2])
  return sd


def vit_state_dict(width, depth, patch, tokens, seed=0, prefix=""):
  gen = torch.Generator().manual_seed(seed)
  sd = {prefix + "cls_token": 0.02 * torch.randn(1, 1, width, generator=gen),
        prefix + "pos_embed": 0.02 * torch.randn(1, tokens, width, generator=gen),
        prefix + "patch_embed.proj.weight": torch.randn(width, 3, patch, patch, generator=gen)
        / (3 * patch * patch) ** 0.5,
        prefix + "patch_embed.proj.bias": 0.02 * torch.randn(width, generator=gen)}
  for i in range(depth):
    t = f"{prefix}blocks.{i}."
    for norm in ("norm1.", "norm2."):
      sd[t + norm + "weight"] = 1 + 0.1 * torch.randn(width, generator=gen)
      sd[t + norm + "bias"] = 0.1 * torch.randn(width, generator=gen)
    _linear(sd, t + "attn.qkv.", 3 * width, width, gen)
    _linear(sd, t + "attn.proj.", width, width, gen)
    _linear(sd, t + "mlp.fc1.", 4 * width, width, gen)
    _linear(sd, t + "mlp.fc2.", width, 4 * width, gen)
  sd[prefix + "norm.weight"] = 1 + 0.1 * torch.randn(width, generator=gen)
  sd[prefix + "norm.bias"] = 0.1 * torch.randn(width, generator=gen)
  return sd


def prefixed(sd, prefix):
  return {prefix + k: v for k, v in sd.items()}


# ------------------------------------------------------------------ reference forwards

def ref_bn(sd, p, x):
  return F.batch_norm(x, sd[p + "running_mean"], sd[p + "running_var"], sd.get(p + "weight"),
                      sd.get(p + "bias"), False, 0.0, 1e-5)


def ref_resnet50(sd, x, p=""):
  """torchvision's Bottleneck ResNet forward in F ops; pooled features (N, C)."""
  x = F.relu(ref_bn(sd, p + "bn1.", F.conv2d(x, sd[p + "conv1.weight"], stride=2, padding=3)))
  x = F.max_pool2d(x, 3, 2, 1)
  for stage, blocks in enumerate(STAGES):
    for i in range(blocks):
      t, stride = f"{p}layer{stage + 1}.{i}.", 2 if stage and not i else 1
      y = F.relu(ref_bn(sd, t + "bn1.", F.conv2d(x, sd[t + "conv1.weight"])))
      y = F.relu(ref_bn(sd, t + "bn2.", F.conv2d(y, sd[t + "conv2.weight"], stride=stride,
                                                 padding=1)))
      y = ref_bn(sd, t + "bn3.", F.conv2d(y, sd[t + "conv3.weight"]))
      if t + "downsample.0.weight" in sd:
        x = ref_bn(sd, t + "downsample.1.", F.conv2d(x, sd[t + "downsample.0.weight"],
                                                     stride=stride))
      x = F.relu(y + x)
  return x.mean((2, 3))


def ref_vit(sd, x, heads, p=""):
  """DINO/timm ViT forward (class token after the final LayerNorm), pos_embed interpolated
  as DINO's interpolate_pos_encoding."""
  w = sd[p + "patch_embed.proj.weight"]
  width, patch = w.shape[0], w.shape[-1]
  tokens = F.conv2d(x, w, sd[p + "patch_embed.proj.bias"], stride=patch).flatten(2).transpose(1, 2)
  n = tokens.shape[0]
  tokens = torch.cat([sd[p + "cls_token"].expand(n, -1, -1), tokens], 1)
  pos = sd[p + "pos_embed"]
  grid, old = x.shape[-1] // patch, int((pos.shape[1] - 1) ** 0.5)
  if grid != old:
    patches = pos[:, 1:].reshape(1, old, old, width).permute(0, 3, 1, 2)
    patches = F.interpolate(patches, scale_factor=((grid + 0.1) / old, (grid + 0.1) / old),
                            mode="bicubic", align_corners=False)
    pos = torch.cat([pos[:, :1], patches.permute(0, 2, 3, 1).reshape(1, -1, width)], 1)
  tokens = tokens + pos
  i = 0
  while f"{p}blocks.{i}.norm1.weight" in sd:
    t = f"{p}blocks.{i}."
    y = F.layer_norm(tokens, (width,), sd[t + "norm1.weight"], sd[t + "norm1.bias"], 1e-6)
    b, nt, _ = y.shape
    qkv = F.linear(y, sd[t + "attn.qkv.weight"], sd[t + "attn.qkv.bias"])
    q, k, v = qkv.reshape(b, nt, 3, heads, width // heads).permute(2, 0, 3, 1, 4)
    attn = ((q @ k.transpose(-2, -1)) * (width // heads) ** -0.5).softmax(-1)
    y = (attn @ v).transpose(1, 2).reshape(b, nt, width)
    tokens = tokens + F.linear(y, sd[t + "attn.proj.weight"], sd[t + "attn.proj.bias"])
    y = F.layer_norm(tokens, (width,), sd[t + "norm2.weight"], sd[t + "norm2.bias"], 1e-6)
    y = F.linear(F.gelu(F.linear(y, sd[t + "mlp.fc1.weight"], sd[t + "mlp.fc1.bias"])),
                 sd[t + "mlp.fc2.weight"], sd[t + "mlp.fc2.bias"])
    tokens = tokens + y
    i += 1
  return F.layer_norm(tokens, (width,), sd[p + "norm.weight"], sd[p + "norm.bias"], 1e-6)[:, 0]


def images(n=2, size=32, seed=0):
  return np.random.default_rng(seed).uniform(0, 1, (n, size, size, 3)).astype(np.float32)


def torch_input(x):
  return (torch.from_numpy(x).permute(0, 3, 1, 2) - MEAN) / STD


def features(config, variables, x):
  return np.asarray(methods.get(config.method).encode(variables, x, config, "backbone"))


def small(fmt, variant=None, **model):
  """The format's config at 32 px (the tests' images)."""
  config = pretrained.get_format(fmt).config(variant)
  config.image_size = 32
  config.model.update(**model)
  if config.model.name == "vit":   # DINO's 4-block linear protocol needs 4 blocks
    config.eval.linear.vit_blocks = min(config.eval.linear.vit_blocks, config.model.depth)
  if config.method == "dino":      # a small head: its fresh 65536-way layer takes seconds
    config.head.update(hidden_dim=64, bottleneck_dim=32, out_dim=128)
  return config


def quickstart(config):
  """Evaluated on the bundled set (memory-bank methods size their bank by its 5,000 images)."""
  config.update(dataset="quickstart", eval_split="test")
  return config


def save(tmp_path, name, obj):
  path = str(tmp_path / name)
  torch.save(obj, path)
  return path


@pytest.fixture(scope="module")
def rn50():
  return resnet50_state_dict()


@pytest.fixture(scope="module")
def rn50_features(rn50):
  with torch.no_grad():
    return ref_resnet50(rn50, torch_input(images())).numpy()


# ------------------------------------------------------------------ ResNet-50 formats

def test_moco_v2_backbone_head_key_encoder_and_queue(tmp_path, rn50, rn50_features):
  gen = torch.Generator().manual_seed(1)
  head = mlp_state_dict("fc.", [("linear", 2048, 2048, True), "relu",
                                ("linear", 128, 2048, True)], gen)
  sd = {**prefixed({**rn50, **head}, "module.encoder_q."),
        **prefixed({**rn50, **head}, "module.encoder_k."),
        "module.queue": torch.randn(128, 65536, generator=gen),
        "module.queue_ptr": torch.tensor([256])}
  path = save(tmp_path, "moco_v2_800ep_pretrain.pth.tar",
              {"epoch": 800, "arch": "resnet50", "state_dict": sd, "optimizer": {}})
  config, converted = pretrained.read("moco_v2", path, small("moco_v2"))
  np.testing.assert_array_equal(converted.method_state["queue"], sd["module.queue"].numpy().T)
  assert int(converted.method_state["queue_ptr"]) == 256
  config, variables = pretrained.load("moco_v2", path, config)
  assert close(features(config, variables, images()), rn50_features)   # through moco's encode
  with torch.no_grad():
    h = torch.from_numpy(rn50_features)
    z = F.linear(F.relu(F.linear(h, head["fc.0.weight"], head["fc.0.bias"])),
                 head["fc.2.weight"], head["fc.2.bias"])
  head_net = methods.get("moco").network(config).head
  ours = head_net.apply({"params": variables["params"]["head"]}, rn50_features, train=False)
  assert close(ours, z.numpy())


def test_simsiam_folds_the_projector_bias(tmp_path, rn50, rn50_features):
  gen = torch.Generator().manual_seed(2)
  fc = mlp_state_dict("fc.", [("linear", 2048, 2048, False), ("bn", 2048, True), "relu",
                              ("linear", 2048, 2048, False), ("bn", 2048, True), "relu",
                              ("linear", 2048, 2048, True), ("bn", 2048, False)], gen)
  pred = mlp_state_dict("predictor.", [("linear", 512, 2048, False), ("bn", 512, True), "relu",
                                       ("linear", 2048, 512, True)], gen)
  sd = {**prefixed({**rn50, **fc}, "module.encoder."), **prefixed(pred, "module.")}
  path = save(tmp_path, "checkpoint_0099.pth.tar", {"epoch": 100, "arch": "resnet50",
                                                    "state_dict": sd, "optimizer": {}})
  config, variables = pretrained.load("simsiam", path, small("simsiam"))
  assert close(resnet50_features(variables, "encoder", "backbone"), rn50_features)
  # The projector's output in inference: BN'(W x) with the bias folded = BN(W x + b).
  with torch.no_grad():
    h = torch.from_numpy(rn50_features)
    for i in (0, 3):
      h = F.relu(ref_bn(fc, f"fc.{i + 1}.", F.linear(h, fc[f"fc.{i}.weight"])))
    z = ref_bn(fc, "fc.7.", F.linear(h, fc["fc.6.weight"], fc["fc.6.bias"]))
  stats = variables["batch_stats"]["encoder"]["head"]["BatchNorm_2"]
  kernel = variables["params"]["encoder"]["head"]["Dense_2"]["kernel"]
  h = np.asarray(h)
  ours = (h @ kernel - stats["mean"]) / np.sqrt(stats["var"] + 1e-5)
  assert close(ours, z.numpy())


def test_swav_projection_head_and_prototypes(tmp_path, rn50, rn50_features):
  gen = torch.Generator().manual_seed(3)
  head = mlp_state_dict("projection_head.", [("linear", 2048, 2048, True), ("bn", 2048, True),
                                             "relu", ("linear", 128, 2048, True)], gen)
  sd = prefixed({**rn50, **head, "prototypes.weight": torch.randn(3000, 128, generator=gen)},
                "module.")
  path = save(tmp_path, "swav_800ep_pretrain.pth.tar", sd)   # the bare state dict
  config, variables = pretrained.load("swav", path, small("swav"))
  assert close(resnet50_features(variables, "backbone"), rn50_features)
  np.testing.assert_array_equal(variables["params"]["prototypes"]["kernel"],
                                sd["module.prototypes.weight"].numpy().T)


def lemniscate_module(monkeypatch):
  """An object of a class named lib.NCEAverage.NCEAverage, as lemniscate's main.py:198
  pickles its NCEAverage module into the checkpoint (a module with buffers params, memory)."""
  class NCEAverage(torch.nn.Module):
    def __init__(self):
      super().__init__()
      self.K = 4096
      self.register_buffer("params", torch.tensor([4096, 0.07, -1, 0.5]))
      self.register_buffer("memory", torch.rand(10, 128))
  NCEAverage.__module__, NCEAverage.__qualname__ = "lib.NCEAverage", "NCEAverage"
  module = type(sys)("lib.NCEAverage")
  module.NCEAverage = NCEAverage
  monkeypatch.setitem(sys.modules, "lib", type(sys)("lib"))   # for torch.save only: loading
  monkeypatch.setitem(sys.modules, "lib.NCEAverage", module)  # never imports them
  return NCEAverage()


def test_dino_resnet50_and_instdisc_and_moco_v1(tmp_path, monkeypatch, rn50, rn50_features):
  path = save(tmp_path, "dino_resnet50_pretrain.pth", dict(rn50))
  _, converted = pretrained.read("dino_resnet50", path, small("dino_resnet50"))
  teacher = converted.method_state["teacher"]   # what DINO evaluates
  assert close(resnet50_features(teacher, "backbone"), rn50_features)
  gen = torch.Generator().manual_seed(4)
  fc = {"fc.weight": torch.randn(128, 2048, generator=gen), "fc.bias": torch.zeros(128)}
  path = save(tmp_path, "lemniscate_resnet50_update.pth",
              {"epoch": 200, "arch": "resnet50", "state_dict": prefixed({**rn50, **fc}, "module."),
               "lemniscate": lemniscate_module(monkeypatch), "best_prec1": 0.0, "optimizer": {}})
  config, converted = pretrained.read("instdisc", path, small("instdisc", depth=50))
  assert config.eval.features == "embedding"   # the file's bank is not loaded, but said
  assert {"lemniscate/memory", "lemniscate/params"} <= set(converted.unused)
  assert close(resnet50_features(dict(params=converted.params,
                                      batch_stats=converted.batch_stats), "backbone"),
               rn50_features)
  sd = {**prefixed({**rn50, **fc}, "module.encoder_q.")}   # no key encoder, no queue
  path = save(tmp_path, "moco_v1_200ep_pretrain.pth.tar", {"state_dict": sd})
  config, converted = pretrained.read("moco_v1", path, small("moco_v1"))
  np.testing.assert_array_equal(converted.method_state["key_params"]["head"]["Dense_0"]["kernel"],
                                fc["fc.weight"].numpy().T)


def test_cmc_two_half_width_encoders(tmp_path):
  l_sd = resnet50_state_dict(5, in_channels=1, width=0.5)
  ab_sd = resnet50_state_dict(6, in_channels=2, width=0.5)
  gen = torch.Generator().manual_seed(7)

  def fc():
    return {"fc.weight": torch.randn(128, 1024, generator=gen), "fc.bias": torch.zeros(128)}
  model = {**prefixed({**l_sd, **fc()}, "encoder.module.l_to_ab."),
           **prefixed({**ab_sd, **fc()}, "encoder.module.ab_to_l.")}
  contrast = {"params": torch.tensor([4096, 0.07, -1, -1, 0.5]),
              "memory_l": torch.randn(10, 128), "memory_ab": torch.randn(10, 128)}
  path = save(tmp_path, "CMC_resnet50v1.pth", {"opt": argparse.Namespace(model="resnet50v1"),
                                               "model": model, "contrast": contrast,
                                               "optimizer": {}, "epoch": 240})
  config, converted = pretrained.read("cmc", path, small("cmc"))
  from ssl_jax import models  # pylint: disable=import-outside-toplevel
  net = models.backbone(config.model, np.float32)
  x = images(seed=8)
  for ours, sd, channels in (("l_encoder", l_sd, slice(0, 1)), ("ab_encoder", ab_sd, slice(1, 3))):
    v = {"params": converted.params[ours]["backbone"],
         "batch_stats": converted.batch_stats[ours]["backbone"]}
    got = np.asarray(net.apply(v, x[..., channels], train=False))
    with torch.no_grad():
      want = ref_resnet50(sd, torch.from_numpy(x[..., channels]).permute(0, 3, 1, 2)).numpy()
    assert close(got, want), ours


def test_moco_v3_resnet50(tmp_path, rn50, rn50_features):
  gen = torch.Generator().manual_seed(15)
  fc = mlp_state_dict("fc.", [("linear", 4096, 2048, False), ("bn", 4096, True), "relu",
                              ("linear", 256, 4096, False), ("bn", 256, False)], gen)
  pred = mlp_state_dict("predictor.", [("linear", 4096, 256, False), ("bn", 4096, True), "relu",
                                       ("linear", 256, 4096, False)], gen)
  sd = {**prefixed({**rn50, **fc}, "module.base_encoder."),
        **prefixed({**rn50, **fc}, "module.momentum_encoder."), **prefixed(pred, "module.")}
  path = save(tmp_path, "r-50-1000ep.pth.tar", {"epoch": 1000, "arch": "resnet50",
                                                "state_dict": sd, "optimizer": {}, "scaler": {}})
  _, converted = pretrained.read("moco_v3", path, small("moco_v3", "resnet50"))
  variables = dict(params=converted.params, batch_stats=converted.batch_stats)
  assert close(resnet50_features(variables, "encoder", "backbone"), rn50_features)
  assert close(resnet50_features(converted.method_state, "backbone"), rn50_features)
  assert "bias" not in converted.params["predictor"]["Dense_1"]   # MoCo v3: bias=False


# ------------------------------------------------------------------ ViTs

@pytest.mark.parametrize("variant,depth", [("vits16", 2), ("vits8", 1), ("vitb16", 1)])
def test_dino_vit_backbone_only(tmp_path, variant, depth):
  """The 224 px position table interpolated to 32 px as DINO's interpolate_pos_encoding."""
  width, patch, heads = pretrained.vit_torch.DINO_VITS[variant]
  sd = vit_state_dict(width, depth, patch, 1 + (224 // patch) ** 2)
  path = save(tmp_path, f"{variant}.pth", sd)
  config = small("dino_vit", variant, depth=depth)
  x = images()
  with torch.no_grad():
    want = ref_vit(sd, torch_input(x), heads).numpy()
  if variant == "vits16":   # load: the random head initialised, the teacher's variables
    config, variables = pretrained.load("dino_vit", path, config)
    assert close(features(config, variables, x), want)
  else:
    config, converted = pretrained.read("dino_vit", path, config)
    teacher = converted.method_state["teacher"]
    assert close(features(config, teacher, x), want)


def test_dino_vit_full_checkpoint_with_head(tmp_path):
  width, patch, heads = pretrained.vit_torch.DINO_VITS["vitb8"]
  gen = torch.Generator().manual_seed(9)
  backbone = vit_state_dict(width, 1, patch, 1 + 28 * 28, seed=10)
  head = mlp_state_dict("head.mlp.", [("linear", 64, width, True), "gelu",
                                      ("linear", 64, 64, True), "gelu",
                                      ("linear", 32, 64, True)], gen)
  head["head.last_layer.weight_g"] = 0.5 + torch.rand(128, 1, generator=gen)
  head["head.last_layer.weight_v"] = torch.randn(128, 32, generator=gen)
  student = prefixed({**prefixed(backbone, "backbone."), **head}, "module.")
  teacher = {**prefixed(vit_state_dict(width, 1, patch, 1 + 28 * 28, seed=11), "backbone."),
             **head}
  path = save(tmp_path, "dino_vitbase8_pretrain_full_checkpoint.pth", {
      "student": student, "teacher": teacher, "optimizer": {"state": {}}, "epoch": 300,
      "args": argparse.Namespace(arch="vit_base", patch_size=8, norm_last_layer=False),
      "dino_loss": {"center": torch.randn(1, 128, generator=gen)}})
  config = small("dino_vit", "vitb8", depth=1)
  config.head.norm_last_layer = False   # the learned g (weight_g) is kept
  config, variables = pretrained.load("dino_vit", path, config)   # the teacher's
  x = images()
  with torch.no_grad():
    h = ref_vit(teacher, torch_input(x), heads, "backbone.")
    want_h = h.numpy()
    z = F.linear(F.gelu(F.linear(F.gelu(F.linear(h, head["head.mlp.0.weight"],
                                                 head["head.mlp.0.bias"])),
                                 head["head.mlp.2.weight"], head["head.mlp.2.bias"])),
                 head["head.mlp.4.weight"], head["head.mlp.4.bias"])
    w = torch._weight_norm(head["head.last_layer.weight_v"], head["head.last_layer.weight_g"], 0)
    want_z = F.linear(F.normalize(z, dim=-1), w).numpy()
  assert close(features(config, variables, x), want_h)
  net = methods.get("dino").network(config)
  assert close(net.apply(variables, x, train=False)[1], want_z)


def test_moco_v3_vit_base_momentum_encoder_and_predictor(tmp_path):
  from ssl_jax.models.vit import sincos_2d  # pylint: disable=import-outside-toplevel
  gen = torch.Generator().manual_seed(12)
  config = small("moco_v3", "vitb", depth=1)
  config.head.update(hidden_dim=64, out_dim=32)
  config.predictor.update(hidden_dim=64)
  width, heads = 768, 12   # ViT-B (ViT-S: 384, also 12 heads in MoCo v3)
  proj = [("linear", 64, width, False), ("bn", 64, True), "relu", ("linear", 64, 64, False),
          ("bn", 64, True), "relu", ("linear", 32, 64, False), ("bn", 32, False)]
  pred = [("linear", 64, 32, False), ("bn", 64, True), "relu", ("linear", 32, 64, False),
          ("bn", 32, False)]
  encoders = {}
  for name, seed in (("base_encoder.", 13), ("momentum_encoder.", 14)):
    sd = vit_state_dict(width, 1, 16, 197, seed=seed)   # at 224 px: a 14 x 14 grid
    table = np.concatenate([np.zeros((1, width)), sincos_2d(14, 14, width)])[None]
    sd["pos_embed"] = torch.from_numpy(table.astype(np.float32))
    encoders[name] = {**sd, **mlp_state_dict("head.", proj, gen)}
  sd = {**prefixed(encoders["base_encoder."], "module.base_encoder."),
        **prefixed(encoders["momentum_encoder."], "module.momentum_encoder."),
        **prefixed(mlp_state_dict("predictor.", pred, gen), "module.")}
  path = save(tmp_path, "vit-b-300ep.pth.tar", {"epoch": 300, "arch": "vit_base",
                                                "state_dict": sd, "optimizer": {}, "scaler": {}})
  config, converted = pretrained.read("moco_v3", path, config)
  config, variables = pretrained.load("moco_v3", path, config)
  x = images()
  # At 32 px MoCo v3 would build its table for the 2 x 2 grid (vits.py:53-69), as ssl_jax does.
  small_table = np.concatenate([np.zeros((1, width)), sincos_2d(2, 2, width)])[None]
  reference = dict(encoders["base_encoder."], pos_embed=torch.from_numpy(
      small_table.astype(np.float32)))
  with torch.no_grad():
    want = ref_vit(reference, torch_input(x), heads).numpy()
  assert close(features(config, variables, x), want)
  np.testing.assert_array_equal(
      converted.method_state["params"]["backbone"]["block0"]["fc1"]["kernel"],
      encoders["momentum_encoder."]["blocks.0.mlp.fc1.weight"].numpy().T)


# ------------------------------------------------------------------ errors and the CLI

def test_bad_files_are_refused_in_one_line(tmp_path, rn50):
  marker = tmp_path / "ran"

  class Evil:
    def __reduce__(self):
      return (os.system, (f"touch {marker}",))

  evil = save(tmp_path, "evil.pth", {"state_dict": Evil()})   # torch's zip container
  assert "posix" in open(evil, "rb").read().decode("latin-1")   # it names os.system
  with pytest.raises(ConfigError, match="data only"):
    pretrained.read("moco_v2", evil)
  assert not marker.exists()   # the code in the pickle did not run
  with open(tmp_path / "evil.pkl", "wb") as f:   # a bare pickle of the same
    pickle.dump({"state_dict": Evil()}, f)
  with pytest.raises(ConfigError):
    pretrained.read("moco_v2", str(tmp_path / "evil.pkl"))
  assert not marker.exists()

  text = tmp_path / "notes.pth"
  text.write_text("not a checkpoint")
  with pytest.raises(ConfigError, match="not a PyTorch checkpoint"):
    pretrained.read("swav", str(text))

  path = save(tmp_path, "moco.pth", {"state_dict": prefixed(rn50, "module.encoder_q.")})
  with pytest.raises(ConfigError, match="lacks the key 'module.encoder_q.fc"):
    pretrained.read("moco_v1", path, small("moco_v1"))   # the fc head is missing
  gen = torch.Generator().manual_seed(0)
  fc = {"fc.weight": torch.randn(128, 2048, generator=gen), "fc.bias": torch.zeros(128)}
  extra = {**prefixed({**rn50, **fc}, "module.encoder_q."), "module.extra.weight": torch.ones(3)}
  path = save(tmp_path, "extra.pth", {"state_dict": extra})
  with pytest.raises(ConfigError, match="1 key.*does not use: module.extra.weight"):
    pretrained.read("moco_v1", path, small("moco_v1"))
  path = save(tmp_path, "wide.pth", {"state_dict": prefixed({**rn50, **fc}, "module.encoder_q.")})
  with pytest.raises(ConfigError, match="shape"):
    pretrained.load("moco_v1", path, small("moco_v1", width=2.0))
  with pytest.raises(ConfigError, match="lacks"):   # a ResNet file given as a ViT format
    pretrained.read("dino_vit", path, small("dino_vit"))
  with pytest.raises(ConfigError, match="unknown"):
    pretrained.get_format("resnet")


def test_cli_converts_and_evaluate_reads_the_workdir(tmp_path):
  sd = vit_state_dict(384, 1, 16, 197)
  path = save(tmp_path, "dino_deitsmall16_pretrain.pth", sd)
  workdir = str(tmp_path / "w")
  env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3")
  run = lambda *args: subprocess.run([sys.executable, "-m", *args], env=env, cwd=ROOT,  # noqa: E731
                                     capture_output=True, text=True, timeout=300)
  out = run("ssl_jax.convert", "--help")
  assert out.returncode == 0 and "dino_vit" in out.stdout and "moco_v2" in out.stdout
  out = run("ssl_jax.convert", "--format=dino_vit", f"--checkpoint={path}", f"--workdir={workdir}",
            "--config.dataset=quickstart", "--config.image_size=32", "--config.model.depth=1",
            "--config.head.out_dim=256", "--config.head.hidden_dim=64", "--config.eval_split=test",
            "--config.eval.linear.vit_blocks=1",
            "--config.eval.crop_proportion=1.0")
  assert out.returncode == 0, out.stderr[-2000:]
  assert "Evaluate it with: python -m ssl_jax.evaluate" in out.stdout
  record = json.load(open(os.path.join(workdir, "converted.json")))
  assert record["format"] == "dino_vit" and record["checkpoint"] == path
  out = run("ssl_jax.evaluate", f"--workdir={workdir}", "--protocol=knn")
  assert out.returncode == 0, out.stderr[-2000:]
  result = json.load(open(os.path.join(workdir, "eval.json")))["knn"]
  assert result["step"] == 0 and 0.0 <= result["top1"] <= 1.0
  # `python -m ssl_jax.main --config=configs/dino.py` with the same fields continues it:
  # the run's config check accepts the workdir (a continued run restores its checkpoint).
  from ssl_jax import rundir  # pylint: disable=import-outside-toplevel
  from ssl_jax.pretrained import converter  # pylint: disable=import-outside-toplevel
  main_config = converter.method_config("dino")
  main_config.update(dataset="quickstart", image_size=32, eval_split="test")
  main_config.model.update(depth=1, pos_embed_image_size=224)
  main_config.head.update(out_dim=256, hidden_dim=64)
  main_config.eval.update(crop_proportion=1.0, online_probe=False)
  main_config.eval.linear.vit_blocks = 1
  assert rundir.check_config(main_config, workdir) == {}
  with pytest.raises(ConfigError, match="not a file"):
    pretrained.convert("dino_vit", str(tmp_path / "missing.pth"), str(tmp_path / "w2"))
  with pytest.raises(ConfigError, match="already holds a run"):
    pretrained.convert("dino_vit", path, workdir, pretrained.read("dino_vit", path,
                                                                  small("dino_vit", depth=1))[0])
