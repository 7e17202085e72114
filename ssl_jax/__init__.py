"""ssl_jax: self-supervised image representation learning in JAX and Flax."""

__version__ = "0.1.0"
