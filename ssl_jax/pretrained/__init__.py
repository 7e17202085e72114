"""The originals' released checkpoints as ssl_jax configs and variables (formats.py: the
contract; converter.py: load, read, write_workdir, convert; one module per family)."""
import importlib

from ssl_jax.pretrained.formats import FORMATS, Converted, Format, register  # noqa: F401
from ssl_jax.pretrained.converter import (  # noqa: F401
    convert, get_format, load, read, write_workdir)

# Importing a family's module registers its formats.
FAMILIES = ("resnet_torch", "vit_torch", "byol_haiku", "simclr_tf")
for _family in FAMILIES:
  importlib.import_module(f"ssl_jax.pretrained.{_family}")
