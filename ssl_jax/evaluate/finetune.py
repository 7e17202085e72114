"""Fine-tuning protocols: `finetune` (every label), `semi` (a class-balanced label subset)
and `distill` (SimCLR v2's distillation on unlabelled images); see distill.py for the last.

The pretrained backbone (for SimCLR v2 also its projection head up to
`config.head.finetune_layer`: "fine-tuning from the middle of the head") plus a
zero-initialised linear classifier are trained end to end with labels on random-crop +
flip views (colour distortion off), BN in train mode and global over the mesh, its running
statistics updated; data-parallel as the pretraining step (jit of shard_map over "batch").

SimCLR v2's fine-tuning settings (from the paper; METHODS.md lists none): LARS (momentum 0.9, trust 1e-3), lr 0.005 x
sqrt(B) (0.16 at B = 1024) with cosine decay, no warmup, no weight decay; the classifier is
kept out of LARS's adaptation and of weight decay, as SimCLR's code does for its
`head_supervised`. 60 epochs on 1 % of the labels, 30 on 10 %. With every label the
default is 90 epochs (the linear protocol's; the sheet gives no value). The batch defaults
to `linear.default_batch_size` of the training images (SimCLR v2: 1024 on ImageNet).
"""
import dataclasses
from collections.abc import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import PartitionSpec as P

from ssl_jax import losses, models, optim, parallel
from ssl_jax.data import augment, loader as loader_lib, sources
from ssl_jax.errors import ConfigError
from ssl_jax.evaluate import knn, linear

PROTOCOLS = ("finetune", "semi", "distill")
TRUST_COEFFICIENT = 1e-3
STUDENT_INITS = ("pretrained", "random")


@dataclasses.dataclass
class Settings:
  epochs: int | None = None    # None = default_epochs(label fraction); distill: its student's
  batch_size: int = 0          # 0 = linear.default_batch_size(training images)
  base_lr: float = 0.005       # lr = base_lr x sqrt(batch): SimCLR v2's 0.16 at B = 1024
  weight_decay: float = 0.0    # on kernels outside the classifier
  momentum: float = 0.9
  label_fraction: float = 0.01  # semi, distill: labelled share, the same count per class
  finetune_layer: int = -1     # head layer to start from; -1 = config.head.finetune_layer
  temperature: float = 1.0     # distill: softmax temperature of teacher and student
  label_weight: float = 0.0    # distill: weight of the labelled cross entropy (1 - alpha)
  student_init: str = "pretrained"   # distill: "pretrained" (self-distillation) | "random"
  teacher_epochs: int = 0      # distill: epochs of the teacher's semi run (0 = default)
  seed: int = 0


def default_epochs(label_fraction: float) -> int:
  if label_fraction <= 0.01:
    return 60
  return 30 if label_fraction < 1 else 90


def validate_settings(settings: Settings):
  """One-line ConfigErrors naming the CLI flag and the fix."""
  s = settings
  checks = [
      (s.epochs is None or s.epochs >= 1,   # 0 used to mean the default: 90 epochs
       f"--epochs={s.epochs} must be >= 1; leave it unset for the protocol's default"),
      (s.teacher_epochs >= 0,
       f"--teacher_epochs={s.teacher_epochs} must be >= 0 (0 = semi's default)"),
      (s.batch_size >= 0, f"--batch_size={s.batch_size} must be >= 0 (0 = default)"),
      (s.base_lr > 0, f"--base_lr={s.base_lr} must be positive (SimCLR v2: 0.005)"),
      (0 < s.label_fraction <= 1,
       f"--label_fraction={s.label_fraction} must be in (0, 1]; use 0.01 or 0.1"),
      (s.temperature > 0, f"--temperature={s.temperature} must be positive; use 1.0"),
      (0 <= s.label_weight <= 1, f"--label_weight={s.label_weight} must be in [0, 1]"),
      (s.student_init in STUDENT_INITS,
       f"--student_init={s.student_init!r} is unknown; use one of {', '.join(STUDENT_INITS)}"),
  ]
  for ok, message in checks:
    if not ok:
      raise ConfigError(message)


# The network: pretrained trunk + zero-initialised classifier.

class Classifier(nn.Module):
  """Trunk features -> linear logits (float32), the classifier zero-initialised."""
  trunk: nn.Module
  num_classes: int
  layer: int = 0   # > 0: the trunk is a network with `finetune_features(x, layer, train)`

  @nn.compact
  def __call__(self, x, train: bool = True):
    if self.layer:
      h = self.trunk.finetune_features(x, self.layer, train)
    else:
      h = self.trunk(x, train=train)
    return nn.Dense(self.num_classes, kernel_init=nn.initializers.zeros,
                    param_dtype=jnp.float32, name="classifier")(h.astype(jnp.float32))


def _paths_to(tree, name: str, prefix=()):
  """Key paths of every subtree called `name` (not searching inside one)."""
  for key, value in tree.items():
    if key == name:
      yield prefix + (key,)
    elif isinstance(value, Mapping):
      yield from _paths_to(value, name, prefix + (key,))


def _subtree(tree, path):
  for key in path:
    if not isinstance(tree, Mapping) or key not in tree:
      return {}
    tree = tree[key]
  return tree


def backbone_variables(method, variables) -> dict:
  """{"params", "batch_stats"} of the method's backbone: its `backbone_variables` hook, or
  else the one params subtree named "backbone" (simclr and moco: backbone; byol, simsiam
  and moco_v3: encoder/backbone; target copies live in method_state, not in params)."""
  if hasattr(method, "backbone_variables"):
    return method.backbone_variables(variables)
  paths = list(_paths_to(variables["params"], "backbone"))
  if len(paths) != 1:
    name = method.__name__.rsplit(".", 1)[-1]
    raise ConfigError(f"method {name!r} has {len(paths)} params subtrees named 'backbone'; "
                      "fine-tuning needs exactly one (or a backbone_variables hook)")
  return {"params": _subtree(variables["params"], paths[0]),
          "batch_stats": _subtree(variables.get("batch_stats", {}), paths[0])}


def finetune_layer(config, settings: Settings) -> int:
  layer = config.head.finetune_layer if settings.finetune_layer < 0 else settings.finetune_layer
  if layer >= max(config.head.num_layers, 1):
    raise ConfigError(f"--finetune_layer={layer} is past the {config.head.num_layers}-layer "
                      f"head; use 0 ... {config.head.num_layers - 1}")
  return layer


def pretrained_trunk(method, config, variables, layer: int):
  """(module, its pretrained variables): the backbone, or for `layer` > 0 the method's
  whole network (SimCLR's, whose `finetune_features` stops at head layer `layer`)."""
  if layer:
    if not hasattr(getattr(method, "Network", None), "finetune_features"):
      raise ConfigError(f"--finetune_layer={layer}: method {config.method!r} has no head to "
                        "fine-tune from; use --finetune_layer=0")
    return method.network(config, parallel.AXIS), variables
  dtype = models.compute_dtype(config.dtype, jax.default_backend())
  return (models.backbone(config.model, dtype, parallel.AXIS, config.image_size),
          backbone_variables(method, variables))


def initial_variables(model: Classifier, image_size: int, trunk_variables=None,
                      seed: int = 0) -> dict:
  """The classifier at zero on `trunk_variables`, or a random init when it is None."""
  x = jnp.zeros((2, image_size, image_size, 3), jnp.float32)
  key = jax.random.key(seed)
  init = lambda: model.init({"params": key, "dropout": key}, x, train=False)  # noqa: E731
  if trunk_variables is None:
    variables = jax.jit(init)()
    return {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}
  shapes = jax.eval_shape(init)
  expected = shapes["params"]["trunk"]
  if jax.tree.structure(expected) != jax.tree.structure(trunk_variables["params"]):
    raise ConfigError("the checkpoint's backbone does not match the network its config "
                      "builds; was config.json edited after training?")
  classifier = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype),
                            shapes["params"]["classifier"])
  stats = trunk_variables.get("batch_stats", {})
  return {"params": {"trunk": trunk_variables["params"], "classifier": classifier},
          "batch_stats": {"trunk": stats} if stats else {}}


# Training: one jitted, data-parallel step for every objective.

def adapted_kernels(params):
  """Kernels outside the classifier: LARS adapts and decays these only (SimCLR keeps BN,
  biases and its `head_supervised` classifier out of both)."""
  mask = optim.kernel_mask(params)
  return dict(mask, classifier=jax.tree.map(lambda _: False, mask["classifier"]))


def peak_lr(settings: Settings, batch_size: int) -> float:
  return settings.base_lr * float(np.sqrt(batch_size))


def make_optimizer(settings: Settings, batch_size: int, total_steps: int):
  schedule = optax.cosine_decay_schedule(peak_lr(settings, batch_size), max(total_steps, 1))
  return optax.lars(schedule, weight_decay=settings.weight_decay,
                    weight_decay_mask=adapted_kernels, trust_ratio_mask=adapted_kernels,
                    trust_coefficient=TRUST_COEFFICIENT, momentum=settings.momentum)


def supervised_objective(logits, x, batch, extra):
  del x, extra
  return losses.cross_entropy(logits, batch["label"]).mean()


def make_step(model, tx, objective, mesh, image_size: int, seed: int):
  """jit(shard_map) of (state, batch, extra) -> (state, loss); `objective(logits, x,
  batch, extra)` is this device's loss (the device mean of its gradients is the step's)."""
  view = linear.crop_flip_view(image_size)
  key = jax.random.key(seed)

  def per_device(state, batch, extra):
    aug_key, drop_key = jax.random.split(jax.random.fold_in(key, state["step"]))
    x = augment.make_views(batch, aug_key, [view], jnp.float32)[0]
    drop_key = jax.random.fold_in(drop_key, jax.lax.axis_index(parallel.AXIS))

    def loss_fn(params):
      logits, new = model.apply({"params": params, "batch_stats": state["batch_stats"]}, x,
                                train=True, mutable=["batch_stats"], rngs={"dropout": drop_key})
      return objective(logits, x, batch, extra), new.get("batch_stats", state["batch_stats"])
    (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
    grads = jax.lax.pmean(grads, parallel.AXIS)
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    return (dict(step=state["step"] + 1, params=optax.apply_updates(state["params"], updates),
                 batch_stats=stats, opt_state=opt_state),
            jax.lax.pmean(loss, parallel.AXIS))

  step = jax.shard_map(per_device, mesh=mesh, in_specs=(P(), P(parallel.AXIS), P()),
                       out_specs=(P(), P()), check_vma=False)
  return jax.jit(step, donate_argnums=0)


def fit(model, variables, data, settings: Settings, epochs: int, mesh, image_size: int,
        objective=supervised_objective, extra=None):
  """Trains every parameter of `model` from `variables` on `data` (an ArrayDataset);
  returns (trained variables, what was run)."""
  devices = mesh.devices.size
  if len(data) < devices:
    raise ConfigError(f"{len(data)} training images cannot fill the {devices} devices; "
                      "raise --label_fraction")
  batch = settings.batch_size or linear.default_batch_size(len(data))
  batch = max(devices, min(batch, len(data)) // devices * devices)
  steps = epochs * (len(data) // batch)
  tx = make_optimizer(settings, batch, steps)
  # A jitted copy: the step donates its state, which must not free the caller's arrays.
  state = jax.jit(lambda v: dict(step=jnp.zeros((), jnp.int32), params=v["params"],
                                 batch_stats=v["batch_stats"], opt_state=tx.init(v["params"])),
                  out_shardings=parallel.replicated(mesh))(variables)
  extra = parallel.replicate(extra or {}, mesh)
  step = make_step(model, tx, objective, mesh, image_size, settings.seed)
  loss = jnp.nan
  for global_batch in loader_lib.MemoryLoader(data, batch, settings.seed, mesh).batches(0, steps):
    state, loss = step(state, global_batch, extra)
  trained = {"params": state["params"], "batch_stats": state["batch_stats"]}
  return trained, {"epochs": epochs, "steps": steps, "batch_size": batch,
                   "lr": peak_lr(settings, batch), "final_loss": float(loss)}


def predict(model, variables, images, mesh, batch_size: int, image_size: int,
            crop_proportion: float = 1.0) -> np.ndarray:
  """Logits (N, classes) of the evaluation views of uint8 `images` (knn.preprocess), BN in
  inference mode, batch-sharded."""
  apply = lambda v, x: model.apply(v, x, train=False)  # noqa: E731
  return knn.extract_features(apply, variables, images, mesh, batch_size, image_size,
                              False, crop_proportion)


# The protocols.

def balanced_subset(labels: np.ndarray, fraction: float, seed: int = 0) -> np.ndarray:
  """Sorted indices of round(fraction x N / classes) images of every class (at least one,
  at most the class's count), drawn with `seed`; every index when fraction is 1."""
  labels = np.asarray(labels)
  if fraction >= 1:
    return np.arange(len(labels))
  classes = np.unique(labels)
  per_class = max(1, int(round(fraction * len(labels) / len(classes))))
  rng = np.random.default_rng(seed)
  picked = []
  for c in classes:
    members = np.flatnonzero(labels == c)
    picked.append(rng.choice(members, min(per_class, len(members)), replace=False))
  return np.sort(np.concatenate(picked))


def labelled_subset(dataset, fraction: float, seed: int):
  if len(dataset.labels) and dataset.labels.min() < 0:
    raise ConfigError("fine-tuning needs labels and the training split has unlabelled "
                      "images; set config.train_split to a labelled split")
  indices = balanced_subset(dataset.labels, fraction, seed)
  subset = sources.ArrayDataset(dataset.images[indices], dataset.labels[indices],
                                dataset.classes)
  return subset, indices


def finetune(run, settings: Settings, fraction: float, epochs: int = 0):
  """Fine-tunes on `fraction` of the labels; returns (model, variables, eval.json entry,
  indices of the labelled images)."""
  config = run.config
  layer = finetune_layer(config, settings)
  trunk, trunk_variables = pretrained_trunk(run.method, config, run.variables, layer)
  model = Classifier(trunk, len(run.train.classes), layer)
  data, indices = labelled_subset(run.train, fraction, settings.seed)
  epochs = epochs or settings.epochs or default_epochs(fraction)
  variables, info = fit(model, initial_variables(model, config.image_size, trunk_variables),
                        data, settings, epochs, run.mesh, config.image_size)
  result = linear.top_k_accuracy(predict(model, variables, run.test.images, run.mesh,
                                         config.eval.batch_size, config.image_size,
                                         config.eval.crop_proportion), run.test.labels)
  entry = {"step": run.step, **result, **info, "finetune_layer": layer,
           "label_fraction": fraction, "labelled_images": len(data),
           "optimizer": f"lars {settings.momentum} (trust {TRUST_COEFFICIENT}), cosine, "
                        "no warmup, classifier not adapted",
           "weight_decay": settings.weight_decay, "augment": "random crop + flip",
           "seed": settings.seed}
  return model, variables, entry, indices


def evaluate(run, protocol: str, settings: Settings) -> dict:
  """The eval.json entry of "finetune" (every label) or "semi" (label_fraction)."""
  fraction = 1.0 if protocol == "finetune" else settings.label_fraction
  return finetune(run, settings, fraction)[2]
