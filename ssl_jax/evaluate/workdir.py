"""A pretrained workdir as the evaluation CLI sees it: its config, its data, its latest
checkpoint, and eval.json with one entry per protocol."""
import dataclasses

import jax
import ml_collections

from ssl_jax import checkpoint, config as config_lib, methods, optim, parallel, rundir
from ssl_jax import state as state_lib
from ssl_jax.data import pipeline, sources
from ssl_jax.errors import ConfigError


def load_config(workdir: str) -> ml_collections.ConfigDict:
  config = rundir.read_config(workdir)
  if config is None:
    raise ConfigError(f"--workdir={workdir} holds no config.json; point it at the workdir of "
                      "a run of `python -m ssl_jax.main`")
  return config


@dataclasses.dataclass
class Run:
  config: ml_collections.ConfigDict
  method: object
  variables: dict      # {"params", "batch_stats"} evaluated (state.eval_variables)
  step: int
  train: object        # sources.ArrayDataset, or a streamed pipeline.EvalSplit
  test: object
  mesh: object

  def encode(self, variables, images):
    return self.method.encode(variables, images, self.config)


def abstract_state(method, config, num_classes: int):
  """The TrainState's shapes and dtypes, of a config whose config.run is filled (the
  optimizer's state may depend on the run's length: DINO's weight-decay schedule)."""
  _, tx = optim.for_run(config)
  return jax.eval_shape(lambda: state_lib.create_state(method, config, tx, jax.random.key(0),
                                                   num_classes))


def load_run(workdir: str, mesh=None, in_memory: bool = False) -> Run:
  """The config, data and latest readable checkpoint of `workdir`, replicated on `mesh`.
  The splits stream through tf.data when training did (large data sets), unless
  `in_memory`."""
  config = load_config(workdir)
  method = methods.get(config.method)
  if pipeline.use_tfdata(config) and not in_memory:
    train_data, test_data = pipeline.eval_splits(config)
  else:
    train_data, test_data = sources.load_splits(config)
  config_lib.fill_run(config, max(len(train_data) // config.batch_size, 1),
                      len(train_data))   # memory-bank shapes
  mesh = mesh or parallel.make_mesh()
  ckpt = checkpoint.Checkpointer(workdir, config.checkpoint, read_only=True)
  template = abstract_state(method, config, len(train_data.classes))
  state, step = ckpt.restore_latest(template, sharding=parallel.replicated(mesh))
  ckpt.close()
  if state is template:   # none readable (a converted checkpoint is a readable step 0)
    raise ConfigError(f"--workdir={workdir} has no readable checkpoint in {ckpt.directory}")
  return Run(config, method, state_lib.eval_variables(method, state), step, train_data, test_data,
             mesh)


def write_result(workdir: str, protocol: str, result: dict) -> dict:
  """Merges `result` into workdir/eval.json under `protocol` (other entries kept)."""
  return rundir.update_eval(workdir, {protocol: {"protocol": protocol, **result}})
