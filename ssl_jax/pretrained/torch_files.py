"""PyTorch checkpoint files read as data, and the layout changes every PyTorch format shares.

`load` is `torch.load(weights_only=True)`: only tensors, numbers, strings and plain
containers are rebuilt, so a file that would run code (a pickled object whose __reduce__
calls a function) is refused with one line. A format may admit a few named classes that are
plain records (argparse.Namespace, which DINO and CMC save as their run's arguments); their
attributes are set, none of their code runs.

Layouts (PyTorch -> Flax): Conv2d weights OIHW -> HWIO, Linear weights (out, in) ->
(in, out), BatchNorm weight/bias/running_mean/running_var -> scale/bias and mean/var (both
use eps 1e-5; num_batches_tracked has no counterpart: BN momentum is fixed).
"""
import argparse
import collections.abc

import numpy as np

from ssl_jax.errors import ConfigError

PLAIN_RECORDS = (argparse.Namespace,)


class StandIn:
  """An inert stand-in for a class a file names (e.g. lemniscate's pickled NCEAverage
  module): the unpickler sets its attributes (tensors, containers) and runs nothing."""


def _torch():
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ConfigError("reading PyTorch checkpoints needs torch; install it with "
                      "`pip install -e '.[convert]'`") from e
  return torch


def load(path: str, records: tuple = PLAIN_RECORDS, stand_ins: tuple[str, ...] = ()):
  """The file's object, rebuilt by torch's weights-only unpickler (`records`: the plain
  record classes admitted besides tensors and containers; `stand_ins`: qualified class names
  the file may name, each rebuilt as an inert StandIn)."""
  torch = _torch()
  import pickle  # pylint: disable=import-outside-toplevel
  admitted = list(records) + [(StandIn, name) for name in stand_ins]
  try:
    with torch.serialization.safe_globals(admitted):
      return torch.load(path, map_location="cpu", weights_only=True)
  except FileNotFoundError as e:
    raise ConfigError(f"--checkpoint={path} does not exist") from e
  except pickle.UnpicklingError as e:
    text = str(e)
    cause = next((line.strip() for line in text.splitlines()
                  if "unsupported global" in line.lower()), "")
    if cause:   # a pickled object that names a function or class to call
      raise ConfigError(f"--checkpoint={path} holds more than tensors and plain containers "
                        f"({cause.rstrip('.')}); "
                        "ssl_jax reads checkpoint files as data only (torch.load with "
                        "weights_only=True) and refuses it") from None
    first = next((line.strip() for line in text.splitlines() if "Unsupported" in line),
                 text.splitlines()[0] if text else "")
    raise ConfigError(f"--checkpoint={path} is not a PyTorch checkpoint ({first})") from None
  except (RuntimeError, EOFError, ValueError, OSError) as e:
    first = (str(e).strip().splitlines() or [type(e).__name__])[0]
    raise ConfigError(f"--checkpoint={path} is not a PyTorch checkpoint ({first})") from None


def tensors(tree, prefix: str = "") -> dict[str, np.ndarray]:
  """{key: float32/int array} of every tensor in nested dicts, keys joined with '/'."""
  torch = _torch()
  flat = {}
  for key, value in tree.items():
    name = f"{prefix}{key}"
    if isinstance(value, torch.Tensor):
      array = value.detach().cpu()
      flat[name] = array.float().numpy() if array.is_floating_point() else array.numpy()
    elif isinstance(value, dict):
      flat.update(tensors(value, name + "/"))
  return flat


def state_dict(path: str, containers: tuple[str, ...] = ("state_dict",)
               ) -> dict[str, np.ndarray]:
  """The model's arrays: the first of `containers` the file's dict has ('' = the file is the
  state dict itself), keys as the original's model.state_dict() names them."""
  obj = load(path)
  if not isinstance(obj, dict):
    raise ConfigError(f"--checkpoint={path} holds a {type(obj).__name__}, not a state dict")
  for name in containers:
    if name == "" and any(hasattr(v, "shape") for v in obj.values()):
      return tensors(obj)
    if name and isinstance(obj.get(name), dict):
      return tensors(obj[name])
  raise ConfigError(f"--checkpoint={path} has none of the entries "
                    f"{[c or '(a plain state dict)' for c in containers]} (it has "
                    f"{sorted(obj)[:6]}); is it the right --format?")


class Arrays(collections.abc.Mapping):
  """A view of the file's {key: array} (a dict, or a lazy reader such as SimCLR's, never
  copied) that notes which keys a format reads (`[]`, `get`; `items` and `values` count as
  reading every key), so that the converter refuses the others."""

  def __init__(self, arrays):
    self._arrays, self.used = arrays, set()

  def __getitem__(self, key):
    self.used.add(key)
    return self._arrays[key]

  def __iter__(self):
    return iter(self._arrays)

  def __len__(self):
    return len(self._arrays)

  def __contains__(self, key):
    return key in self._arrays

  def has(self, key) -> bool:
    return key in self

  def under(self, prefix: str) -> "View":
    return View(self, prefix)

  def unused(self) -> list[str]:
    return sorted(set(self.keys()) - self.used)


class View:
  """The keys of `parent` that start with `prefix`, addressed without it."""

  def __init__(self, parent: Arrays, prefix: str):
    self.parent, self.prefix = parent, prefix

  def __getitem__(self, key):
    return self.parent[self.prefix + key]

  def has(self, key) -> bool:
    return self.parent.has(self.prefix + key)

  def under(self, prefix: str) -> "View":
    return View(self.parent, self.prefix + prefix)

  def keys(self):
    n = len(self.prefix)
    return [k[n:] for k in self.parent.keys() if k.startswith(self.prefix)]


def require(arrays, keys, what: str):
  """A ConfigError listing the `keys` that `arrays` lacks (the file is not `what`)."""
  missing = [k for k in keys if not arrays.has(k)]
  if missing:
    prefix = getattr(arrays, "prefix", "")
    shown = ", ".join(prefix + k for k in missing[:5]) + (" ..." if len(missing) > 5 else "")
    raise ConfigError(f"the checkpoint lacks {len(missing)} key(s) of {what}: {shown}; is it "
                      "the right --format?")


def conv(w):
  """Conv2d weight (O, I, H, W) -> Flax kernel (H, W, I, O)."""
  return np.transpose(w, (2, 3, 1, 0))


def linear(w):
  """Linear weight (out, in) -> Flax kernel (in, out)."""
  return np.transpose(w)


def batch_norm(arrays, prefix: str, affine: bool = True):
  """({scale, bias} or {}, {mean, var}) of a BatchNorm named `prefix`; its
  num_batches_tracked (a counter with no counterpart here) is read and dropped."""
  stats = {"mean": arrays[prefix + "running_mean"], "var": arrays[prefix + "running_var"]}
  if arrays.has(prefix + "num_batches_tracked"):
    arrays[prefix + "num_batches_tracked"]   # pylint: disable=pointless-statement
  params = {"scale": arrays[prefix + "weight"], "bias": arrays[prefix + "bias"]} if affine else {}
  return params, stats
