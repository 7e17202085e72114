"""SimSiam (Chen & He 2020), following facebookresearch/simsiam.

One network, two views, no negatives and no momentum encoder: the predictor's output for
one view regresses the projector's output for the other, which is cut from the graph by a
stop-gradient. Loss = -1/2 [cos(p1, sg z2) + cos(p2, sg z1)], minimum -1. BN is global
(SyncBN) and each view is its own BN batch, as two forward passes in the original.
"""
import flax.linen as nn
import jax

from ssl_jax import losses, models, parallel
from ssl_jax.errors import ConfigError
from ssl_jax.methods import common
from ssl_jax.models.encoder import Encoder
from ssl_jax.models.heads import MLPHead, ProjectionHead


class Network(nn.Module):
  """Backbone -> projector (z) -> predictor (p); returns (z, p)."""
  encoder: Encoder
  predictor: MLPHead

  def __call__(self, x, train: bool = True):
    h, projections = self.encoder(x, train=train)
    z = projections[-1]
    return h, z, self.predictor(z, train=train)

  def features(self, x):
    return self.encoder.features(x)


def network(config, axis_name=None) -> Network:
  """Projector: (Linear no bias + BN + ReLU) x (L - 1), Linear + BN without affine.
  Predictor: Linear(no bias) + BN + ReLU to the bottleneck, then Linear with bias, no BN
  [builder.py:39-42]. Every head Linear keeps PyTorch's default init, U(+-1/sqrt(fan_in))
  for weight and bias [builder.py:24-42]: the heads are scale-invariant (BN), so Flax's
  larger default (std 1/sqrt(fan_in)) would start them at a ~3x lower effective lr."""
  dtype = models.compute_dtype(config.dtype, jax.default_backend())
  backbone = models.backbone(config.model, dtype, axis_name)
  head = config.head
  projector = ProjectionHead(head.num_layers, head.hidden_dim or None, head.out_dim, dtype,
                             axis_name, out_scale=False, init_scheme="pytorch")
  predictor = MLPHead((config.simsiam.predictor_hidden_dim,), head.out_dim, hidden_bn=True,
                      out_bias=True, dtype=dtype, axis_name=axis_name, init_scheme="pytorch",
                      hidden_bias=False)
  return Network(Encoder(backbone, projector), predictor)


def validate(config, device_count=None):
  del device_count
  if config.optimizer.get("fixed_lr_module", "") and config.optimizer.warmup_epochs:
    raise ConfigError(f"config.optimizer.warmup_epochs={config.optimizer.warmup_epochs} with a "
                      "fixed predictor lr would hold the predictor at the warmup's lr 0; "
                      "set it to 0 (SimSiam has no warmup) or config.optimizer.fixed_lr_module=''")


def views(config):
  view = common.jitter_view(config, tuple(config.simsiam.color_jitter))
  return [view, view]


def init(rng, config, sample_batch):
  del sample_batch  # shapes come from the config
  variables = common.init_variables(network(config), rng, config)
  return dict(params=variables["params"], batch_stats=variables["batch_stats"],
              method_state={})


def symmetric_loss(p1, p2, z1, z2):
  return 0.5 * (losses.negative_cosine(p1, z2) + losses.negative_cosine(p2, z1))


def loss_fn(params, state, batch, rng, step, *, config):
  del rng, step
  net = network(config, parallel.AXIS)
  stats, outputs = state.batch_stats, []
  for x in batch["views"]:
    out, new = net.apply({"params": params, "batch_stats": stats}, x, train=True,
                         mutable=["batch_stats"])
    stats = new["batch_stats"]
    outputs.append(out)
  (h1, z1, p1), (_, z2, p2) = outputs
  # Each device averages its own rows; the step's pmean makes it the global-batch mean.
  loss = symmetric_loss(p1, p2, z1, z2)
  return loss, dict(batch_stats=stats, features=h1,
                    metrics=dict(embedding_std=common.embedding_std(z1)))


def update(state, new_params, aux, step, *, config):
  del new_params, step, config
  return state.replace(batch_stats=aux["batch_stats"])


def encode(variables, images, config, features=None):
  return common.encode(network(config), variables, images, config, features)
