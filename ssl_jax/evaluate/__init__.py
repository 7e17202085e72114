"""Evaluation: kNN (monitor and offline), linear probe, feature export, plots; the offline
CLI is `python -m ssl_jax.evaluate` (see __main__.py)."""
