"""BYOL's Haiku pickles and SimCLR's TF1 checkpoints: each file is built here in the
original's layout and container (pickle protocol 2 naming Haiku's and BYOL's classes, as
dill.dump wrote it; a TF1 V2 checkpoint bundle written by SaveV2, the op
tf.compat.v1.train.Saver runs), converted, and our
features compared with a reference forward pass written with tf.nn ops that reads the
file's arrays by the original's names (SAME or fixed padding, BN in inference mode, SK).

The reference builds the names as the original's code does while it runs: each layer
takes the next tf.layers number (conv2d_3, batch_normalization_3) or its Haiku module path,
so the file's layout comes from the original's structure, not from our converter's walk.
"""
import collections
import contextlib
import math
import os
import pickle
import subprocess
import sys
import types

import jax
import numpy as np
import pytest
from flax import traverse_util

from ssl_jax import config as config_lib, methods
from ssl_jax.errors import ConfigError
from ssl_jax.evaluate import workdir
from ssl_jax.methods import byol, simclr
from ssl_jax import pretrained
from ssl_jax.pretrained import FORMATS, converter, safe_pickle

tf = pytest.importorskip("tensorflow")

IMAGE = 32
EPS = 1e-5   # BN eps of both originals


def random_images(seed=0, n=2):
  return np.random.default_rng(seed).uniform(0, 1, (n, IMAGE, IMAGE, 3)).astype(np.float32)


def max_rel_diff(ours, ref):
  """max |ours - ref| / max |ref| (printed with the absolute difference)."""
  ours, ref = np.asarray(ours), np.asarray(ref)
  diff = float(np.abs(ours - ref).max())
  print(f"  max abs diff {diff:.3g} (max |ref| {np.abs(ref).max():.3g})")
  return diff / max(float(np.abs(ref).max()), 1e-6)


def fit(converted, config):
  """The converter's checks (ssl_jax/pretrained/converter.py overlay) on the config's state
  shapes; returns the state paths the file leaves at their fresh values."""
  config_lib.fill_run(config, 1, 10)
  state = workdir.abstract_state(methods.get(config.method), config, 0)
  converter.overlay(state, converted)
  return {part: sorted(set(traverse_util.flatten_dict(getattr(state, part), sep="/")) -
                       set(traverse_util.flatten_dict(getattr(converted, part), sep="/")))
          for part in ("params", "batch_stats", "method_state")}


# ---------------------------------------------------------------- safe_pickle

class Evil:
  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return os.system, (f"touch {self.marker}",)


def test_safe_pickle_refuses_code_and_reads_arrays(tmp_path):
  marker = tmp_path / "ran"
  path = tmp_path / "evil.pkl"
  path.write_bytes(pickle.dumps({"w": np.ones(3), "x": Evil(marker)}, protocol=2))
  with pytest.raises(ConfigError, match=r"global (posix|os|nt)\.system.*refused") as e:
    safe_pickle.load(str(path))
  assert "\n" not in str(e.value)
  assert not marker.exists()   # the code did not run
  pickle.loads(path.read_bytes())   # and it would have
  assert marker.exists()

  good = {"a": [np.arange(6, dtype=np.int32).reshape(2, 3), (1.5, "s")], "b": np.float32(2)}
  for protocol in (2, 5):
    path.write_bytes(pickle.dumps(good, protocol=protocol))
    back = safe_pickle.load(str(path))
    np.testing.assert_array_equal(back["a"][0], good["a"][0])
    assert back["a"][1] == (1.5, "s") and back["b"] == np.float32(2)
  path.write_bytes(b"not a pickle")
  with pytest.raises(ConfigError, match="not a readable pickle"):
    safe_pickle.load(str(path))


def test_safe_pickle_reads_dills_namedtuple(tmp_path):
  """dill >= 0.3.2 writes a named tuple's class as _create_namedtuple(name, fields, module)."""
  state_type = collections.namedtuple("S", ["online_params", "step"])

  def fake_create(name, fields, module):   # what dill._dill._create_namedtuple is called with
    return collections.namedtuple(name, fields, module=module)
  fake_create.__module__, fake_create.__qualname__ = "dill._dill", "_create_namedtuple"

  class DillLike(pickle.Pickler):
    def reducer_override(self, obj):
      if obj is state_type:
        return fake_create, ("S", ("online_params", "step"), "byol.byol_experiment")
      return NotImplemented

  with fake_modules({"dill._dill": [fake_create]}):
    path = tmp_path / "dill.pkl"
    with open(path, "wb") as f:
      DillLike(f, protocol=2).dump(state_type({"m": {"w": np.ones(2)}}, 7))
  back = safe_pickle.load(str(path))
  assert back.asdict()["step"] == 7 and back.name == "byol.byol_experiment.S"
  np.testing.assert_array_equal(back.asdict()["online_params"]["m"]["w"], np.ones(2))


# ---------------------------------------------------------------- BYOL (Haiku)

@contextlib.contextmanager
def fake_modules(contents):
  """Modules of these names holding these objects, so that pickle names the originals'
  classes (haiku._src.data_structures.FlatMapping, ...) exactly as dill.dump did."""
  saved = {}
  for name, objects in contents.items():
    parts = name.split(".")
    for parent in (".".join(parts[:i]) for i in range(1, len(parts))):
      if parent not in sys.modules:
        saved[parent] = None
        sys.modules[parent] = types.ModuleType(parent)
    saved[name] = sys.modules.get(name)
    module = types.ModuleType(name)
    for obj in objects:
      setattr(module, obj.__qualname__, obj)
    sys.modules[name] = module
  try:
    yield
  finally:
    for name, old in saved.items():
      if old is None:
        sys.modules.pop(name)
      else:
        sys.modules[name] = old


def haiku_mapping(name):
  """Haiku's frozendict / FlatMapping: __reduce__ is (class, (dict,)) [data_structures.py]."""
  cls = type(name, (dict,), {"__reduce__": lambda self: (cls, (dict(self),))})
  cls.__module__ = "haiku._src.data_structures"
  return cls


FlatMapping, frozendict = haiku_mapping("FlatMapping"), haiku_mapping("frozendict")
ByolState = collections.namedtuple(
    "_ByolExperimentState",
    ["online_params", "target_params", "online_state", "target_state", "opt_state"],
    module="byol.byol_experiment")
LarsState = collections.namedtuple("ScaleByLarsState", ["mu"], module="byol.utils.optimizers")
DecayState = collections.namedtuple("AddWeightDecayState", [], module="byol.utils.optimizers")
ScaleState = collections.namedtuple("ScaleState", [], module="optax._src.transform")
BYOL_MODULES = {"haiku._src.data_structures": [FlatMapping, frozendict],
                "byol.byol_experiment": [ByolState],
                "byol.utils.optimizers": [LarsState, DecayState],
                "optax._src.transform": [ScaleState]}


class HaikuNet:
  """BYOL's forward (byol_experiment.py:147-180, utils/networks.py) in tf.nn ops. With
  `params` None it creates random parameters under Haiku's module names as it goes."""

  def __init__(self, params=None, state=None, seed=0):
    self.build = params is None
    self.params, self.state = (params, state) if params is not None else ({}, {})
    self.rng = np.random.default_rng(seed)

  def param(self, module, name, shape, kind):
    if self.build:
      r = self.rng
      value = {"w": lambda: r.normal(0, 1 / math.sqrt(np.prod(shape[:-1])), shape),
               "b": lambda: r.normal(0, 0.1, shape),
               "scale": lambda: r.uniform(0.5, 1.0, shape),
               "offset": lambda: r.normal(0, 0.1, shape)}[kind]()
      self.params.setdefault(module, {})[name] = value.astype(np.float32)
    return tf.constant(self.params[module][name])

  def stat(self, module, shape, kind):
    key = f"{module}/~/{kind}"
    if self.build:
      r = self.rng
      average = r.normal(0, 0.1, shape) if kind == "mean_ema" else r.uniform(0.5, 1.5, shape)
      self.state[key] = dict(counter=np.int32(1000), hidden=average.astype(np.float32) * 0.9,
                             average=average.astype(np.float32))
    return tf.constant(self.state[key]["average"])

  def conv(self, x, module, channels, kernel, stride):
    w = self.param(module, "w", (kernel, kernel, x.shape[-1], channels), "w")
    return tf.nn.conv2d(x, w, stride, "SAME")

  def bn(self, x, module):
    shape = (1,) * (len(x.shape) - 1) + (x.shape[-1],)
    mean, var = self.stat(module, shape, "mean_ema"), self.stat(module, shape, "var_ema")
    scale, offset = (self.param(module, "scale", shape, "scale"),
                     self.param(module, "offset", shape, "offset"))
    return (x - mean) * scale / tf.sqrt(var + EPS) + offset

  def linear(self, x, module, size, bias=True):
    y = tf.matmul(x, self.param(module, "w", (x.shape[-1], size), "w"))
    return y + self.param(module, "b", (size,), "b") if bias else y

  def resnet(self, x, name, blocks, width=1):
    x = (x - np.array([0.485, 0.456, 0.406], np.float32)) / np.array([0.229, 0.224, 0.225],
                                                                      np.float32)
    x = tf.nn.relu(self.bn(self.conv(x, f"{name}/~/initial_conv", 64 * width, 7, 2),
                           f"{name}/~/initial_batchnorm"))
    x = tf.nn.max_pool2d(x, 3, 2, "SAME")
    for g, (n, channels) in enumerate(zip(blocks, (256, 512, 1024, 2048))):
      for b in range(n):
        stride, m = (1, 2, 2, 2)[g] if b == 0 else 1, f"{name}/~/block_group_{g}/~/block_{b}"
        shortcut = x
        if b == 0:
          shortcut = self.bn(self.conv(x, f"{m}/~/shortcut_conv", channels * width, 1, stride),
                             f"{m}/~/shortcut_batchnorm")
        out = x
        for i, (c, k, s) in enumerate(((channels * width // 4, 1, 1),
                                       (channels * width // 4, 3, stride),
                                       (channels * width, 1, 1))):
          out = self.bn(self.conv(out, f"{m}/~/conv_{i}", c, k, s), f"{m}/~/batchnorm_{i}")
          out = tf.nn.relu(out) if i < 2 else out
        x = tf.nn.relu(out + shortcut)
    return tf.reduce_mean(x, (1, 2))

  def mlp(self, x, name, hidden, out):
    x = tf.nn.relu(self.bn(self.linear(x, f"{name}/~/linear", hidden), f"{name}/~/batch_norm"))
    return self.linear(x, f"{name}/~/linear_1", out, bias=False)

  def forward(self, images, hidden=64, out=16, classes=10):
    """(embedding, projection, prediction) with the online classifier's params created."""
    h = self.resnet(tf.constant(images), "res_net50", (3, 4, 6, 3))
    z = self.mlp(h, "projector", hidden, out)
    p = self.mlp(z, "predictor", hidden, out)
    self.linear(h, "classifier", classes)
    return h.numpy(), z.numpy(), p.numpy()


def haiku_tree(flat, outer=FlatMapping, inner=frozendict):
  return outer({module: inner(values) for module, values in flat.items()})


@pytest.fixture(scope="module")
def byol_file(tmp_path_factory):
  """A pretrain_res50x1.pkl in the released layout (small MLPs), and the reference outputs
  of its online and target networks."""
  images = random_images()
  online, target = HaikuNet(seed=1), HaikuNet(seed=2)
  online.forward(images)
  target.forward(images)
  state = ByolState(haiku_tree(online.params), haiku_tree(target.params),
                    haiku_tree(online.state), haiku_tree(target.state),
                    (DecayState(), LarsState(mu=haiku_tree(online.params)), ScaleState()))
  path = str(tmp_path_factory.mktemp("byol") / "pretrain_res50x1.pkl")
  with fake_modules(BYOL_MODULES):
    with open(path, "wb") as f:   # checkpointing.py:65-71: dill.dump(..., protocol=2)
      pickle.dump(dict(experiment_state=state, step=1000,
                       rng=np.array([0, 42], np.uint32)), f, protocol=2)
    with open(path, "rb") as f:   # the reference reads the file back
      saved = pickle.load(f)["experiment_state"]
  refs = {side: HaikuNet(getattr(saved, f"{side}_params"),
                         getattr(saved, f"{side}_state")).forward(images)
          for side in ("online", "target")}
  return path, images, refs


def byol_test_config():
  config = FORMATS["byol_haiku"].config(None)
  config.head.update(hidden_dim=64, out_dim=16)   # the file's small MLPs
  config.byol.predictor_hidden_dim = 64
  return config


def test_byol_haiku_matches_a_tf_forward_of_the_file(byol_file):
  path, images, refs = byol_file
  fmt, config = FORMATS["byol_haiku"], byol_test_config()
  config, converted = pretrained.read("byol_haiku", path, config)   # every key read or unused
  left = fit(converted, config)
  assert left == {"params": [], "batch_stats": [], "method_state": []}   # all of the state
  assert "online_params/classifier/w" in converted.unused
  assert "target_params/predictor/~/linear/w" in converted.unused
  assert "online_state/res_net50/~/initial_batchnorm/~/mean_ema/counter" in converted.unused
  assert "opt_state/1/0/res_net50/~/initial_conv/w" in converted.unused
  assert {"step", "rng"} <= set(converted.unused)

  online = dict(params=converted.params, batch_stats=converted.batch_stats)
  h, z, p = byol.online(config).apply(online, images, train=False)
  target = dict(params=converted.method_state["target_params"],
                batch_stats=converted.method_state["target_batch_stats"])
  h_t, z_t = byol.encoder(config).apply(target, images, train=False)
  features = byol.encode(online, images, config, features="backbone")
  diffs = [max_rel_diff(ours, ref) for ours, ref in
           ((h, refs["online"][0]), (z, refs["online"][1]), (p, refs["online"][2]),
            (h_t, refs["target"][0]), (z_t, refs["target"][1]), (features, refs["online"][0]))]
  print("byol max relative diffs (h, z, p, target h, target z, encode):", diffs)
  assert max(diffs) < 2e-5
  torch_padding = config.copy_and_resolve_references()
  torch_padding.model.padding = "torch"   # the default before model.padding: ~30% off
  assert max_rel_diff(byol.encode(online, images, torch_padding, features="backbone"),
                      refs["online"][0]) > 1e-2


def test_byol_haiku_errors(byol_file, tmp_path):
  path = byol_file[0]
  fmt, config = FORMATS["byol_haiku"], byol_test_config()
  arrays = fmt.read(path)
  del arrays["online_params/res_net50/~/block_group_2/~/block_3/~/conv_1/w"]
  with pytest.raises(ConfigError, match="lacks 1 keys.*block_group_2/~/block_3/~/conv_1/w"):
    fmt.convert(arrays, config)
  other = tmp_path / "other.pkl"
  other.write_bytes(pickle.dumps({"state_dict": {"w": np.ones(2)}}, protocol=2))
  with pytest.raises(ConfigError, match="is not a BYOL checkpoint"):
    fmt.read(str(other))


# ---------------------------------------------------------------- SimCLR (TF1)

class SimCLRNet:
  """SimCLR's TF1 graph (resnet.py, model_util.py) in tf.nn ops, naming each layer as
  tf.layers does: base_model/conv2d, conv2d_1, ... in build order. With `reader` None it
  creates random variables as it goes."""

  def __init__(self, reader=None, sk_ratio=0.0, seed=0):
    self.reader, self.sk_ratio = reader, sk_ratio
    self.variables, self.counts = {}, collections.Counter()
    self.rng = np.random.default_rng(seed)

  def var(self, name, shape, kind):
    if self.reader is not None:
      return tf.constant(self.reader.get_tensor(name))
    r = self.rng
    value = {"kernel": lambda: r.normal(0, 1 / math.sqrt(np.prod(shape[:-1])), shape),
             "gamma": lambda: r.uniform(0.5, 1.0, shape),
             "beta": lambda: r.normal(0, 0.1, shape),
             "moving_mean": lambda: r.normal(0, 0.1, shape),
             "moving_variance": lambda: r.uniform(0.5, 1.5, shape)}[kind]()
    self.variables[name] = value.astype(np.float32)
    return tf.constant(self.variables[name])

  def layer(self, scope, base):
    n = self.counts[(scope, base)]
    self.counts[(scope, base)] += 1
    return f"{scope}/{base}" + (f"_{n}" if n else "")

  def conv(self, x, filters, kernel, stride, scope="base_model"):
    """conv2d_fixed_padding (resnet.py:224-277)."""
    name = self.layer(scope, "conv2d")
    w = self.var(f"{name}/kernel", (kernel, kernel, x.shape[-1], filters), "kernel")
    if stride > 1:
      total = kernel - 1
      pad = [total // 2, total - total // 2]
      x = tf.pad(x, [[0, 0], pad, pad, [0, 0]])
    return tf.nn.conv2d(x, w, stride, "SAME" if stride == 1 else "VALID")

  def bn(self, x, relu=True, center=True, scope="base_model"):
    name = self.layer(scope, "batch_normalization")
    c = (x.shape[-1],)
    v = {k: self.var(f"{name}/{k}", c, k) for k in
         ("gamma", "moving_mean", "moving_variance") + (("beta",) if center else ())}
    x = (x - v["moving_mean"]) * v["gamma"] / tf.sqrt(v["moving_variance"] + EPS)
    x = x + v["beta"] if center else x
    return tf.nn.relu(x) if relu else x

  def sk_conv(self, x, filters, stride):
    x = self.bn(self.conv(x, 2 * filters, 3, stride))
    paths = tf.stack(tf.split(x, 2, axis=3))
    context = tf.reduce_mean(tf.reduce_sum(paths, 0), (1, 2), keepdims=True)
    context = self.bn(self.conv(context, max(int(filters * self.sk_ratio), 32), 1, 1))
    mixing = tf.nn.softmax(tf.stack(tf.split(self.conv(context, 2 * filters, 1, 1), 2, 3)), 0)
    return tf.reduce_sum(paths * mixing, 0)

  def block(self, x, filters, stride, projection):
    shortcut = x
    if projection:
      if self.sk_ratio > 0:
        pooled = tf.pad(x, [[0, 0], [0, 1], [0, 1], [0, 0]]) if stride > 1 else x
        pooled = tf.nn.avg_pool2d(pooled, 2, stride, "SAME" if stride == 1 else "VALID")
        shortcut = self.conv(pooled, 4 * filters, 1, 1)
      else:
        shortcut = self.conv(x, 4 * filters, 1, stride)
      shortcut = self.bn(shortcut, relu=False)
    x = self.bn(self.conv(x, filters, 1, 1))
    x = self.sk_conv(x, filters, stride) if self.sk_ratio > 0 else self.bn(
        self.conv(x, filters, 3, stride))
    x = self.bn(self.conv(x, 4 * filters, 1, 1), relu=False)
    return tf.nn.relu(x + shortcut)

  def resnet(self, x, width):
    if self.sk_ratio > 0:
      x = self.bn(self.conv(x, 64 * width // 2, 3, 2))
      x = self.bn(self.conv(x, 64 * width // 2, 3, 1))
      x = self.bn(self.conv(x, 64 * width, 3, 1))
    else:
      x = self.bn(self.conv(x, 64 * width, 7, 2))
    x = tf.nn.max_pool2d(x, 3, 2, "SAME")
    for g, blocks in enumerate((3, 4, 6, 3)):
      for b in range(blocks):
        x = self.block(x, 64 * width * 2**g, 2 if g and not b else 1, b == 0)
    return tf.reduce_mean(x, (1, 2))

  def head(self, h, layers, out_dim=128):
    outputs = [h]
    for j in range(layers):
      last = j == layers - 1
      scope = f"head_contrastive/nl_{j}"
      name = f"{scope}/dense/kernel"
      h = tf.matmul(h, self.var(name, (h.shape[-1], out_dim if last else h.shape[-1]),
                                "kernel"))
      h = self.bn(h, relu=not last, center=not last, scope=scope)
      outputs.append(h)
    return outputs

  def forward(self, images, width=1, head_layers=3):
    h = self.resnet(tf.constant(images), width)
    outputs = self.head(h, head_layers) if head_layers else [h]
    if self.reader is None:   # the linear eval head and the training state, never mapped
      self.variables["head_supervised/linear_layer/dense/kernel"] = np.zeros(
          (h.shape[-1], 10), np.float32)
      self.variables["head_supervised/linear_layer/dense/bias"] = np.zeros(10, np.float32)
      self.variables["base_model/conv2d/kernel/Momentum"] = self.variables[
          "base_model/conv2d/kernel"]
      self.variables["global_step"] = np.int64(250228)
    return [o.numpy() for o in outputs]


def save_tf1(variables, directory, step=250228):
  """The checkpoint SimCLR's estimator leaves: a V2 bundle model.ckpt-<step>.index/.data of
  these variable names, written by the SaveV2 op that tf.compat.v1.train.Saver runs, and
  the `checkpoint` file naming it."""
  prefix = os.path.join(directory, f"model.ckpt-{step}")
  names = sorted(variables)
  tf.raw_ops.SaveV2(prefix=prefix, tensor_names=names, shape_and_slices=[""] * len(names),
                    tensors=[tf.constant(variables[k]) for k in names])
  with open(os.path.join(directory, "checkpoint"), "w") as f:
    f.write(f'model_checkpoint_path: "{os.path.basename(prefix)}"\n')
  return prefix


def simclr_file(tmp_path_factory, name, sk_ratio, width=1):
  images = random_images(1)
  net = SimCLRNet(sk_ratio=sk_ratio, seed=3)
  net.forward(images, width)
  prefix = save_tf1(net.variables, str(tmp_path_factory.mktemp(name)))
  ref = SimCLRNet(tf.train.load_checkpoint(prefix), sk_ratio).forward(images, width)
  return prefix, images, ref


@pytest.fixture(scope="module")
def simclr_v2_file(tmp_path_factory):
  return simclr_file(tmp_path_factory, "r50_1x_sk0", 0.0)


@pytest.fixture(scope="module")
def simclr_v2_sk_file(tmp_path_factory):
  return simclr_file(tmp_path_factory, "r50_2x_sk1", 0.0625, width=2)


def check_simclr(fmt_name, variant, file, head_layers):
  prefix, images, ref = file
  fmt = FORMATS[fmt_name]
  config = fmt.config(variant)
  config, converted = pretrained.read(fmt_name, os.path.dirname(prefix), config)
  left = fit(converted, config)
  assert left["params"] == ([] if head_layers else sorted(
      p for p in left["params"] if p.startswith("head/")))
  assert {"global_step", "base_model/conv2d/kernel/Momentum",
          "head_supervised/linear_layer/dense/kernel"} <= set(converted.unused)
  variables = dict(params=converted.params, batch_stats=converted.batch_stats)
  if not head_layers:   # v1's zips: the backbone alone, compared through encode
    features = simclr.encode(variables, images, config, features="backbone")
    return [max_rel_diff(features, ref[0])]
  outputs = simclr.network(config).apply(variables, images, train=False)
  return [max_rel_diff(o, r) for o, r in zip(outputs, ref)]


def test_simclr_v2_matches_a_tf_forward_of_the_file(simclr_v2_file):
  diffs = check_simclr("simclr_v2_tf", "r50_1x_sk0", simclr_v2_file, 3)
  print("simclr v2 r50_1x_sk0 max relative diffs (h, head 1-3):", diffs)
  assert len(diffs) == 4 and max(diffs) < 2e-5


def test_simclr_v2_sk_wide_matches_a_tf_forward_of_the_file(simclr_v2_sk_file):
  """Selective kernels at width 2: the SK context is max(C / 16, 32) wide, 64 in stage 4."""
  diffs = check_simclr("simclr_v2_tf", "r50_2x_sk1", simclr_v2_sk_file, 3)
  print("simclr v2 r50_2x_sk1 max relative diffs (h, head 1-3):", diffs)
  assert len(diffs) == 4 and max(diffs) < 2e-5


def test_simclr_tf_errors(simclr_v2_file, tmp_path):
  fmt = FORMATS["simclr_v2_tf"]
  with pytest.raises(ConfigError, match="lacks .* variables .*sk_ratio 0.0625.*base_model/conv2d_"):
    fmt.convert(fmt.read(simclr_v2_file[0]), fmt.config("r50_1x_sk1"))   # sk0 file, sk1 config
  converted = fmt.convert(fmt.read(simclr_v2_file[0]), fmt.config("r50_1x_sk0"))
  config = fmt.config("r50_2x_sk0")
  with pytest.raises(ConfigError, match=r"Conv_0/kernel has shape \(7, 7, 3, 64\) in the file "
                                        r"and \(7, 7, 3, 128\) in the config"):
    fit(converted, config)
  with pytest.raises(ConfigError, match="not a TF checkpoint"):
    fmt.read(str(tmp_path))
  with pytest.raises(ConfigError, match="not a SimCLR v2 checkpoint"):
    fmt.config("r18_1x_sk0")


def test_simclr_v1_without_head_matches_a_tf_forward(simclr_v2_file, tmp_path):
  """v1's zips: the backbone and head_supervised, no head_contrastive (README.md:50)."""
  prefix, images, ref = simclr_v2_file
  reader = tf.train.load_checkpoint(prefix)
  variables = {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map()
               if not k.startswith("head_contrastive/")}
  v1_prefix = save_tf1(variables, str(tmp_path))
  diffs = check_simclr("simclr_v1_tf", "r50_1x", (v1_prefix, images, ref), 0)
  print("simclr v1 r50_1x max relative diff (encode):", diffs)
  assert max(diffs) < 2e-5


class AnyName(dict):
  """A file that has every name asked for (a 1-element array), listing one of SimCLR's
  head: what a config's walk asks, without the arrays."""

  def __contains__(self, key):
    return True

  def __getitem__(self, key):
    return np.zeros(1, np.float32)


@pytest.mark.parametrize("name, variant", [("byol_haiku", "res200x2"),
                                           ("simclr_v2_tf", "r152_3x_sk1")])
def test_the_largest_released_variants_cover_the_state(name, variant):
  """Each path of the fresh state (eval_shape only) is one the format maps, and no other."""
  fmt = FORMATS[name]
  config = fmt.config(variant)
  converted = fmt.convert(AnyName({"head_contrastive/nl_0/dense/kernel": None}), config)
  config_lib.fill_run(config, 1, 10)
  state = workdir.abstract_state(methods.get(config.method), config, 0)
  for part in ("params", "batch_stats", "method_state"):
    assert (set(traverse_util.flatten_dict(getattr(converted, part))) ==
            set(traverse_util.flatten_dict(getattr(state, part)))), part


def test_every_formats_config_builds_beside_the_convert_cli():
  """`python -m ssl_jax.convert` defines --workdir; a format's config must not import
  ssl_jax.main (its flags too), which ended the CLI for BYOL and SimCLR in a DuplicateFlagError."""
  program = ("import ssl_jax.convert\nfrom ssl_jax.pretrained import FORMATS\n"
             "print(sorted(FORMATS[n].config(None).method for n in FORMATS))")
  proc = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                        timeout=300, cwd=os.path.join(os.path.dirname(__file__), ".."),
                        env=dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=""))
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "'byol'" in proc.stdout and "'simclr'" in proc.stdout
