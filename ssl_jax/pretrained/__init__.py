"""The originals' released checkpoints as ssl_jax configs and variables (formats.py)."""
from ssl_jax.pretrained.formats import FORMATS, Converted, Format, register  # noqa: F401
