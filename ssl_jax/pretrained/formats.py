"""What each released-checkpoint format provides: the contract between a format's module
(torchvision.py, dino.py, simclr_tf.py, byol_haiku.py, ...) and the converter
(`ssl_jax.pretrained.load`, `python -m ssl_jax.convert`).

A format reads a file as data (never code), names the ssl_jax config it becomes, and maps
the file's arrays onto that config's state tree. The converter overlays the mapped arrays
on a freshly initialised state of the config's method, refusing (one line) any mapped path
the state lacks, any shape that differs, and any key of the file the format did not use.
"""
import dataclasses
from typing import Callable

import ml_collections
import numpy as np


@dataclasses.dataclass(frozen=True)
class Converted:
  """A file's arrays in ssl_jax's layout. Each tree mirrors the part of the TrainState it
  replaces: `params` and `batch_stats` the online network's (state.params,
  state.batch_stats), `method_state` the method's own (EMA target or momentum encoder,
  teacher); a path left out keeps its fresh initial value. `unused` names the file's keys
  that have no place in the config (e.g. an optimizer's state), said by the converter."""
  params: dict
  batch_stats: dict = dataclasses.field(default_factory=dict)
  method_state: dict = dataclasses.field(default_factory=dict)
  unused: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Format:
  name: str                  # --format=<name>
  files: str                 # the original's released file name(s), for the README table
  source: str                # the original's code defining the layout, repo path:line
  # -> the ssl_jax config the file becomes (validated, locked), e.g. the method's config
  # with the released architecture; `variant` picks among the file's sizes (e.g. "vit_s8").
  config: Callable[[str | None], ml_collections.ConfigDict]
  # path -> flat {the file's key: np.ndarray}; raises ConfigError (one line) on a file
  # that is not this format.
  read: Callable[[str], dict[str, np.ndarray]]
  # (arrays, config) -> Converted; raises ConfigError listing missing keys. `arrays` is
  # read's dict wrapped in torch_files.Arrays, which notes the keys read ([], get, pop;
  # items/values read all): the converter refuses the rest unless Converted.unused names
  # them. A KeyError raised here becomes a one-line "lacks the key" ConfigError.
  convert: Callable[[dict[str, np.ndarray], ml_collections.ConfigDict], Converted]


FORMATS: dict[str, Format] = {}


def register(fmt: Format) -> Format:
  if fmt.name in FORMATS:
    raise ValueError(f"format {fmt.name!r} is registered twice")
  FORMATS[fmt.name] = fmt
  return fmt
