"""Pickles read as data, never code: numpy arrays and plain containers only.

`pickle.load` calls whatever global a file names (`os.system` through `__reduce__`, say).
This unpickler resolves a global only to numpy's array reconstruction (ndarray, dtype,
scalar) or to a stand-in of our own for a container class that a released file names
(`STAND_INS`: Haiku's frozendict / FlatMapping become dicts, named tuples such as BYOL's
experiment state become `Record`s), so that nothing of the file's choosing is imported or
run. Any other global is refused with one line naming it.
"""
import collections
import pickle

import numpy as np

from ssl_jax.errors import ConfigError

try:   # numpy >= 2 moved the module; pickles written by numpy 1 name numpy.core
  from numpy._core import multiarray as _multiarray, numeric as _numeric
except ImportError:   # pragma: no cover
  from numpy.core import multiarray as _multiarray, numeric as _numeric


class Record(tuple):
  """A named tuple of the file's (e.g. BYOL's _ByolExperimentState) as a plain tuple;
  `name` and `fields` say what it was where the file tells (dill's namedtuple)."""
  name = ""
  fields = ()

  def __new__(cls, *args):
    return tuple.__new__(cls, args)

  def asdict(self) -> dict:
    if len(self.fields) != len(self):
      raise ConfigError(f"the pickled {self.name or 'named tuple'} has {len(self)} fields, not "
                        f"the {len(self.fields)} named {self.fields}")
    return dict(zip(self.fields, self))


def record_type(name: str, fields=()) -> type:
  return type(name.rsplit(".", 1)[-1], (Record,), dict(name=name, fields=tuple(fields)))


def _dill_namedtuple(name, fields, module=None, *unused):
  """dill's _create_namedtuple(name, fields, module): a Record type with those fields."""
  del unused
  if not (isinstance(name, str) and all(isinstance(f, str) for f in fields)):
    raise ConfigError("the pickle's named tuple has non-string names; it is not a checkpoint")
  return record_type(f"{module}.{name}", fields)


def _as_dict(*args):
  return dict(*args)


def _latin1_bytes(text, encoding="latin1"):
  """Protocol 2 writes bytes (numpy's raw data) as _codecs.encode(str, 'latin1')."""
  if not isinstance(text, str) or encoding != "latin1":
    raise ConfigError(f"the pickle encodes bytes as {encoding!r}, not latin1: refused")
  return text.encode("latin1")


NUMPY = {
    ("numpy.core.multiarray", "_reconstruct"): _multiarray._reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _multiarray._reconstruct,
    ("numpy.core.multiarray", "scalar"): _multiarray.scalar,
    ("numpy._core.multiarray", "scalar"): _multiarray.scalar,
    ("numpy.core.numeric", "_frombuffer"): _numeric._frombuffer,   # protocol 5
    ("numpy._core.numeric", "_frombuffer"): _numeric._frombuffer,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "dict"): dict, ("builtins", "list"): list, ("builtins", "tuple"): tuple,
    ("builtins", "set"): set, ("builtins", "frozenset"): frozenset,
    ("builtins", "bytearray"): bytearray, ("builtins", "complex"): complex,
    ("_codecs", "encode"): _latin1_bytes,
}

# Containers of the originals' own classes, replaced by plain ones (never imported):
# Haiku's params and state mappings [dm-haiku haiku/_src/data_structures.py: frozendict,
# FlatMapping, FrozenDict: __reduce__ returns (class, (dict,))], dill's namedtuple
# factory [dill _dill.py _create_namedtuple], and named tuples (no code of their own) of
# BYOL's experiment state and optimizer state, and of optax's states.
STAND_INS = {
    ("haiku._src.data_structures", "frozendict"): _as_dict,
    ("haiku._src.data_structures", "FrozenDict"): _as_dict,
    ("haiku._src.data_structures", "FlatMapping"): _as_dict,
    ("dill._dill", "_create_namedtuple"): _dill_namedtuple,
    ("byol.byol_experiment", "_ByolExperimentState"): record_type(
        "byol.byol_experiment._ByolExperimentState",
        # byol/byol_experiment.py:45-51
        ("online_params", "target_params", "online_state", "target_state", "opt_state")),
}
RECORD_MODULES = ("byol.utils.optimizers", "optax.")   # their *State named tuples


class SafeUnpickler(pickle.Unpickler):

  def find_class(self, module, name):
    key = (module, name)
    if key in NUMPY:
      return NUMPY[key]
    if key in STAND_INS:
      return STAND_INS[key]
    if module.startswith(RECORD_MODULES) and name.endswith("State"):
      return record_type(f"{module}.{name}")
    raise ConfigError(f"the pickle names the global {module}.{name}, which is not a numpy "
                      "array or plain container: refused (a checkpoint is data, never code)")

  def persistent_load(self, pid):
    raise ConfigError(f"the pickle refers to a persistent object {pid!r}: refused (not a "
                      "numpy checkpoint)")


def load(path: str):
  """The pickled object at `path`, read with SafeUnpickler; one line for a file that is
  not a pickle."""
  with open(path, "rb") as f:
    try:
      return SafeUnpickler(f).load()
    except ConfigError:
      raise
    except Exception as e:  # pylint: disable=broad-except
      raise ConfigError(f"{path} is not a readable pickle ({type(e).__name__}: {e})") from None
