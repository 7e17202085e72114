"""The originals' released checkpoints as ssl_jax configs and variables (formats.py)."""
from ssl_jax.pretrained.formats import FORMATS, Converted, Format, register  # noqa: F401
from ssl_jax.pretrained import byol_haiku  # noqa: F401,E402  (registers its format)
from ssl_jax.pretrained import simclr_tf  # noqa: F401,E402  (registers its formats)
