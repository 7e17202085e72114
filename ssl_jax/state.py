"""The one pytree a run carries from step to step."""
from typing import Any

import flax.struct
import jax


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
