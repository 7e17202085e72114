"""From a released checkpoint file to ssl_jax's variables, or to a workdir that
`python -m ssl_jax.evaluate` and `python -m ssl_jax.main` read as their own.

The converter overlays a format's `Converted` arrays on a fresh TrainState of the format's
config (its method's init and the run's optimizer, config.fill_run / optim.for_run), and
refuses, with one line: a mapped path that the state lacks, a shape that differs, a module
of the state the file fills only in part (never a silent partial load), and a key of the
file that the format neither used nor declared in `Converted.unused`.

The workdir holds config.json, an orbax checkpoint of step 0 (the released weights with a
fresh optimizer state and schedule: continuing pretraining starts the config's schedule
from them) and converted.json (the file, its format, what it left unused).
"""
import json
import os

import flax.traverse_util
import jax
import numpy as np

from ssl_jax import checkpoint, config as config_lib, methods, optim, parallel, rundir
from ssl_jax import state as state_lib
from ssl_jax.errors import ConfigError
from ssl_jax.pretrained import formats as formats_lib, torch_files

CONVERTED = "converted.json"
# Module names at which a state path is "one module" for the completeness check.
MODULES = ("backbone", "head", "predictor", "prototypes", "l_encoder", "ab_encoder")


def method_config(name: str, variant: str | None = None):
  """configs/<name>.py's get_config(variant), as `--config=configs/<name>.py:<variant>`."""
  path = os.path.join(config_lib.CONFIG_DIR, f"{name}.py")
  return config_lib.load_config_file(path).get_config(variant)


def get_format(name: str) -> formats_lib.Format:
  if name not in formats_lib.FORMATS:
    raise ConfigError(f"--format={name!r} is unknown; use one of "
                      f"{', '.join(sorted(formats_lib.FORMATS))}")
  return formats_lib.FORMATS[name]


def read(format_name: str, path: str, config=None, variant: str | None = None):
  """(config, Converted) of the file: `config` or else the format's (for `variant`)."""
  fmt = get_format(format_name)
  if not (os.path.isfile(path) or os.path.isdir(path) or os.path.isfile(path + ".index")):
    raise ConfigError(f"--checkpoint={path} is not a file (or a TF checkpoint's directory "
                      "or prefix)")
  config = without_probe(config if config is not None else fmt.config(variant))
  config_lib.validate(config)
  arrays = torch_files.Arrays(fmt.read(path))
  try:
    converted = fmt.convert(arrays, config)
  except KeyError as e:
    raise ConfigError(f"--checkpoint={path} lacks the key {e.args[0]!r} that --format="
                      f"{format_name} needs; is it the right format (or variant)?") from None
  left = sorted(set(arrays.unused()) - set(converted.unused))
  if left:
    raise ConfigError(f"--checkpoint={path} has {len(left)} key(s) that --format={format_name} "
                      f"does not use: {_listed(left)}; is it the right format (or variant)?")
  return config, converted


def without_probe(config):
  """The released weights come without ssl_jax's online probe, whose arrays would need the
  data's classes: their workdirs continue training with eval.online_probe=False."""
  config.eval.online_probe = False
  return config


def _listed(keys, n: int = 5) -> str:
  return ", ".join(keys[:n]) + (f" ... ({len(keys) - n} more)" if len(keys) > n else "")


def _flat(tree, keep_empty: bool = False) -> dict:
  return flax.traverse_util.flatten_dict(tree, keep_empty_nodes=keep_empty, sep="/") if tree else {}


def _module(path: str) -> str:
  parts = path.split("/")
  for i, part in enumerate(parts):
    if part in MODULES:
      return "/".join(parts[:i + 1])
  return path


def _checked(part: str, fresh: dict, mapped: dict) -> dict:
  """`mapped` as float32/int arrays of the fresh leaves' dtypes, after the checks."""
  fresh, mapped = _flat(fresh), _flat(mapped)
  for path, value in mapped.items():
    if path not in fresh:
      raise ConfigError(f"the converted {part}/{path} has no place in the config's state; "
                        "the config does not match the file (check --variant)")
    if tuple(np.shape(value)) != tuple(fresh[path].shape):
      raise ConfigError(f"{part}/{path} has shape {tuple(np.shape(value))} in the file and "
                        f"{tuple(fresh[path].shape)} in the config; the config does not "
                        "match the file (check --variant)")
  modules = {_module(p) for p in mapped}
  left = sorted(p for p in fresh if _module(p) in modules and p not in mapped)
  if left:
    raise ConfigError(f"the file fills {part} only in part: {_listed(left)} would keep "
                      "random values; the config does not match the file")
  return {p: np.asarray(v, fresh[p].dtype) for p, v in mapped.items()}


def _fill_run(config, method):
  """config.run for the state's shapes: a memory bank has a row per training image, so
  methods with one read the size of the config's training split."""
  if not config.run.num_train_examples:
    sizes = [jax.eval_shape(lambda n=n: method.init(jax.random.key(0), _with_rows(config, n),
                                                    None)) for n in (1, 2)]
    if jax.tree.structure(sizes[0]) != jax.tree.structure(sizes[1]) or any(
        a.shape != b.shape for a, b in zip(jax.tree.leaves(sizes[0]), jax.tree.leaves(sizes[1]))):
      from ssl_jax.data import pipeline, sources  # pylint: disable=import-outside-toplevel
      if not pipeline.memory_only(config.dataset):   # never read (or download) a data set here
        raise ConfigError(f"config.method={config.method!r} keeps a memory bank with a row "
                          f"per training image of config.dataset={config.dataset!r}; give "
                          "their number with --config.run.num_train_examples=N (ImageNet: "
                          "1281167)")
      train, _ = sources.load_splits(config)
      config_lib.fill_run(config, max(len(train) // config.batch_size, 1), len(train))
      return
  config_lib.fill_run(config, 1, config.run.num_train_examples)


def _with_rows(config, rows: int):
  config = config.copy_and_resolve_references()
  config.run.num_train_examples = rows
  return config


def overlay(state, converted: formats_lib.Converted):
  """`state` with the converted arrays in place, after the checks (module docstring)."""
  parts = {}
  for part in ("params", "batch_stats", "method_state"):
    fresh = getattr(state, part)
    mapped = _checked(part, fresh, getattr(converted, part))
    tree = dict(_flat(fresh, keep_empty=True), **mapped)   # empty subtrees kept: same tree
    parts[part] = flax.traverse_util.unflatten_dict(tree, sep="/") if tree else fresh
  return state.replace(**parts)


def fresh_state(config, num_classes: int = 0):
  """The config's initial TrainState (config.run filled), on this process's devices."""
  method = methods.get(config.method)
  if not config.run.total_steps:
    _fill_run(config, method)
  _, tx = optim.for_run(config)
  mesh = parallel.make_mesh()
  return state_lib.state_initializer(method, config, tx, mesh, num_classes)(
      jax.random.key(config.seed))


def load(format_name: str, path: str, config=None, variant: str | None = None):
  """(config, variables) of a released checkpoint: the variables ssl_jax evaluates
  ({"params", "batch_stats"}: the online network's, DINO's teacher), for
  `methods.get(config.method).encode(variables, images, config)`. The checks run on the
  state's shapes; the state is initialised only where the file leaves part of them."""
  from ssl_jax.evaluate import workdir  # pylint: disable=import-outside-toplevel
  config, converted = read(format_name, path, config, variant)
  method = methods.get(config.method)
  _fill_run(config, method)
  variables = state_lib.eval_variables(
      method, overlay(workdir.abstract_state(method, config, 0), converted))
  if any(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(variables)):
    variables = state_lib.eval_variables(method, overlay(fresh_state(config), converted))
  return config, jax.device_get(variables)


def write_workdir(config, converted: formats_lib.Converted, workdir: str, source: dict = None):
  """config.json, the checkpoint of step 0 and converted.json (`source`: the file and format)
  in a new `workdir`; an existing run there is never replaced."""
  if os.path.exists(os.path.join(workdir, rundir.CONFIG)):
    raise ConfigError(f"--workdir={workdir} already holds a run; use a new --workdir")
  config = without_probe(config)
  state = overlay(fresh_state(config), converted)
  os.makedirs(workdir, exist_ok=True)
  with checkpoint.Checkpointer(workdir, config.checkpoint) as ckpt:
    ckpt.save(0, state)
  rundir.write_config(config, workdir, {}, 0)
  record = dict(source or {}, unused=list(converted.unused))
  with open(os.path.join(workdir, CONVERTED), "w") as f:
    json.dump(record, f, indent=2)
  return workdir


def convert(format_name: str, path: str, workdir: str, config=None, variant: str | None = None):
  """The file as a workdir (`python -m ssl_jax.convert`); returns the config."""
  config, converted = read(format_name, path, config, variant)
  write_workdir(config, converted, workdir, dict(checkpoint=os.path.abspath(path),
                                                 format=format_name, variant=variant or ""))
  return config
