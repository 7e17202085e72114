"""Exponential moving averages of parameters, as pure functions (BYOL, MoCo, DINO)."""
import jax
import jax.numpy as jnp


def cosine_momentum(step, total_steps: int, base: float, final: float = 1.0):
  """m(t) = final - (final - base) (cos(pi t / T) + 1) / 2: base at t = 0, final at t = T."""
  progress = jnp.clip(jnp.asarray(step, jnp.float32) / max(total_steps, 1), 0.0, 1.0)
  return final - (final - base) * (jnp.cos(jnp.pi * progress) + 1.0) / 2.0


def ema_update(target, online, momentum):
  """target <- m * target + (1 - m) * online, leaf by leaf; the target gets no gradient."""
  online = jax.lax.stop_gradient(online)
  return jax.tree.map(lambda t, o: momentum * t + (1.0 - momentum) * o, target, online)
