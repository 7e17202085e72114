"""The one pytree a run carries from step to step, how it starts, and which of its weights
are evaluated. Training and evaluation both build on this module."""
import functools
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp

from ssl_jax import parallel, probe as probe_lib


@flax.struct.dataclass
class TrainState:
  step: jax.Array        # int32 scalar: optimizer steps taken
  params: Any            # trained by the optimizer (f32)
  batch_stats: Any       # BN running statistics of the online network
  opt_state: Any
  method_state: Any      # what the method owns besides params: EMA targets, queues, banks...
  rng: jax.Array         # base key; each step folds in its step number
  # The online linear probe's {params, opt_state} (ssl_jax/probe.py); {} when it is off.
  probe: Any = flax.struct.field(default_factory=dict)


def create_state(method, config, tx, rng, num_classes: int = 0) -> TrainState:
  """The initial state; with `num_classes`, an online linear probe too (if the config wants)."""
  init_rng, step_rng = jax.random.split(rng)
  variables = method.init(init_rng, config, None)
  probe = (probe_lib.init(method, config, variables, num_classes)
           if probe_lib.enabled(config, num_classes) else {})
  return TrainState(step=jnp.zeros((), jnp.int32), params=variables["params"],
                    batch_stats=variables["batch_stats"],
                    opt_state=tx.init(variables["params"]),
                    method_state=variables["method_state"], rng=step_rng, probe=probe)


def state_initializer(method, config, tx, mesh, num_classes: int = 0):
  """rng -> create_state(rng), compiled as one program (not op by op) and replicated over
  `mesh`, which spans the devices of every process. Calling it again reuses the program."""
  create = functools.partial(create_state, method, config, tx, num_classes=num_classes)
  return jax.jit(create, out_shardings=parallel.replicated(mesh),
                 compiler_options=_RUN_ONCE_OPTIONS.get(jax.default_backend()))


# The initial state runs once, so its program need not be optimised. On the CPU, LLVM's
# optimisation of its hundreds of RNG hashes takes ~4x the compile time (a ResNet-18 BYOL:
# 23 s against 5 s) for the same values, up to one float32 ulp in a few of them.
_RUN_ONCE_OPTIONS = {"cpu": {"xla_backend_optimization_level": 0}}


def online_variables(state):
  """The trained network's {params, batch_stats}."""
  return {"params": state.params, "batch_stats": state.batch_stats}


def eval_variables(method, state):
  """The weights evaluated: the method's choice (DINO's teacher), else the trained ones."""
  if hasattr(method, "eval_variables"):
    return method.eval_variables(state)
  return online_variables(state)
