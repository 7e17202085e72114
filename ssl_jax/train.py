"""The training loop: mesh -> data -> state -> jitted step -> evaluation.

One generic step serves every method: it augments the device-local batch on the device,
calls the method's `loss_fn` inside `jax.shard_map` over the `batch` axis, averages the
gradients over devices, applies the optimizer and hands the rest to the method's `update`.
"""
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import PartitionSpec as P

from ssl_jax import checkpoint, config as config_lib, distributed
from ssl_jax import methods, metrics as metrics_lib, optim, parallel, probe as probe_lib, rundir
from ssl_jax.data import augment, loader as loader_lib, pipeline, sources
from ssl_jax.errors import ConfigError
from ssl_jax.evaluate import knn, plots
from ssl_jax.state import eval_variables, online_variables, state_initializer


def make_train_step(method, config, mesh, tx, schedule):
  """jit(shard_map(per-device step)); the state is donated and replicated."""
  views = method.views(config)
  loss_fn = functools.partial(method.loss_fn, config=config)
  update = functools.partial(method.update, config=config)
  dtype = jnp.float32  # views stay f32; the network casts to its compute dtype

  def per_device(state, batch):
    aug_rng, loss_rng = jax.random.split(jax.random.fold_in(state.rng, state.step))
    batch = dict(batch, views=augment.make_views(batch, aug_rng, views, dtype))
    loss_rng = jax.random.fold_in(loss_rng, jax.lax.axis_index(parallel.AXIS))
    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params, state, batch, loss_rng, state.step)
    # Each device differentiated its own rows' loss (the gathers carry the cross terms),
    # so the mean over devices is the gradient of the global mean loss.
    grads = jax.lax.pmean(grads, parallel.AXIS)
    if hasattr(method, "adjust_grads"):   # e.g. frozen prototypes, per-tensor clipping
      grads = method.adjust_grads(grads, state.step, config=config)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    new_state = update(state.replace(step=state.step + 1, params=params, opt_state=opt_state),
                       params, aux, state.step)
    metrics = dict(aux.get("metrics", {}), loss=loss, grad_norm=optax.tree.norm(grads))
    if state.probe:   # trained on this step's features, after (and apart from) the encoder
      probe, probe_metrics = probe_lib.train_step(state.probe, aux["features"],
                                                  batch["label"], config)
      new_state = new_state.replace(probe=probe)
      metrics.update(probe_metrics)
    metrics = jax.lax.pmean(metrics, parallel.AXIS)
    metrics["lr"] = schedule(state.step)
    return new_state, metrics

  step = jax.shard_map(per_device, mesh=mesh, in_specs=(P(), P(parallel.AXIS)),
                       out_specs=(P(), P()), check_vma=False)
  return jax.jit(step, donate_argnums=0)


def compile_and_sync(train_step, state, batch):
  """Compiles the step, then waits for every process: one may get here far later
  (compiling, importing TensorBoard) than gloo waits for a collective (30 s)."""
  train_step.lower(state, batch).compile()   # the jitted call reuses this executable
  distributed.barrier("train_step_compiled")


def load_training_data(config, method, mesh):
  """(train split, eval split, batch loader): through tf.data or host memory, as
  config.input_pipeline says (data/pipeline.py). The splits serve the kNN evaluation."""
  if pipeline.use_tfdata(config):
    return pipeline.load(config, method.views(config), mesh)
  train, test = sources.load_splits(config)
  if len(train) < config.batch_size:
    raise ConfigError(f"config.batch_size={config.batch_size} exceeds the {len(train)} "
                      f"training images; use a smaller batch")
  return train, test, loader_lib.MemoryLoader(train, config.batch_size, config.seed, mesh)


def train_and_evaluate(config, workdir: str) -> dict:
  """Pretrains as `config` says, writes metrics and eval.json to `workdir`, returns the eval.

  The workdir is locked while the run trains; a rerun continues the run there (its
  config.json), with only the changes rundir.MAY_CHANGE lists."""
  config_lib.validate(config, jax.device_count())
  with rundir.lock(workdir):
    changes = rundir.check_config(config, workdir)
    return _train_and_evaluate(config, workdir, changes)


def _train_and_evaluate(config, workdir: str, changes: dict) -> dict:
  method = methods.get(config.method)
  mesh = parallel.make_mesh()
  train, test, data = load_training_data(config, method, mesh)
  os.makedirs(workdir, exist_ok=True)
  steps = config_lib.fill_run(config, data.steps_per_epoch, len(train))
  schedule, tx = optim.for_run(config)
  initializer = state_initializer(method, config, tx, mesh, len(train.classes))
  state = initializer(jax.random.key(config.seed))
  ckpt = checkpoint.Checkpointer(workdir, config.checkpoint)
  state, start = ckpt.restore_latest(state)   # (state, 0) on a fresh workdir
  earlier_log = metrics_lib.drop_after(workdir, start)   # what was logged past the checkpoint
  if earlier_log:
    print(f"No checkpoint in {ckpt.directory}: training starts from step 0 (the earlier "
          f"metrics.jsonl is now {earlier_log}).", flush=True)
  rundir.write_config(config, workdir, changes, start)   # the run is accepted
  train_step = make_train_step(method, config, mesh, tx, schedule)

  log = metrics_lib.MetricsLog(workdir, config.tensorboard)
  progress = metrics_lib.Progress(steps, start, config.batch_size, data.steps_per_epoch)
  knn_every = int(config.eval.knn_every_epochs * data.steps_per_epoch)
  best_knn = 0.0
  if start and os.path.exists(os.path.join(workdir, "metrics.jsonl")):   # monitors so far
    best_knn = max([l.get("knn_top1", 0.0) for l in metrics_lib.read(workdir)], default=0.0)
  if jax.process_index() == 0:
    print(metrics_lib.header(config, workdir, len(train), len(test), steps,
                             data.steps_per_epoch), flush=True)
  if start:
    print(f"Resuming from the checkpoint of step {start} in {ckpt.directory}.", flush=True)
  step = start
  with checkpoint.SigtermFlag() as sigterm, ckpt:
    for step, batch in enumerate(data.batches(start, steps), start=start + 1):
      if step == start + 1:
        progress.compiling()
        compile_and_sync(train_step, state, batch)
        progress.compiled()
      state, metrics = train_step(state, batch)
      preempted = sigterm.reached(step)   # once: a signal may land anywhere in this step
      monitor_due = knn_every and step % knn_every == 0 and step < steps
      save = (ckpt.should_save(step) or step == steps or preempted or
              (monitor_due and bool(config.checkpoint.best_metric)))
      if step % config.log_every_steps == 0 or save:
        metrics = jax.device_get(metrics)   # the only host sync: log and checkpoint steps
        check_finite(metrics, step, ckpt)   # so that no checkpoint holds a non-finite state
        if isinstance(data, pipeline.TFDataLoader):   # undecodable files met so far
          metrics["skipped_files"] = data.skipped
        log.write(step, metrics)
        progress.show(step, metrics)
      monitor = {}
      if monitor_due:
        monitor = knn.evaluate(method, config, eval_variables(method, state), train, test, mesh)
        monitor.update(probe_lib.evaluate(method, config, state.probe, online_variables(state),
                                          test, mesh))
        best_knn = max(best_knn, monitor["knn_top1"])
        log.write(step, {**monitor, "knn_top1_best": best_knn})
        online = (f", online probe top-1 {monitor['online_top1']:.4f}"
                  if "online_top1" in monitor else "")
        print(f"step {step}: kNN top-1 {monitor['knn_top1']:.4f} (best {best_knn:.4f}){online}")
        progress.restart_clock(step)
      if save:
        ckpt.save(step, state, {**metrics, **monitor})
      if preempted:
        ckpt.wait()
        raise SystemExit(f"stopped by {sigterm.received or 'SIGTERM'} after step {step}; "
                         f"its checkpoint is in "
                         f"{ckpt.directory}; rerun the same command to resume")

  result = {"step": step, "protocol": "knn", "k": config.eval.knn_k,
            "temperature": config.eval.knn_temperature}
  result.update(knn.evaluate(method, config, eval_variables(method, state), train, test, mesh))
  # The decodable images, as the memory path holds them (tf.data: known after a pass).
  result.update(train_images=len(train.labels), test_images=len(test.labels),
                skipped_files=train.skipped + test.skipped)
  if jax.process_index() == 0:
    sources.report_skipped(workdir, [*train.skipped_files, *test.skipped_files])
  result.update(probe_lib.evaluate(method, config, state.probe, online_variables(state), test,
                                   mesh))
  result["knn_top1_best"] = max(best_knn, result["knn_top1"])
  if config.eval.random_init:  # the same encoder at its initialisation, for comparison
    initial = initializer(jax.random.key(config.seed))
    baseline = knn.evaluate(method, config, eval_variables(method, initial), train, test, mesh)
    result.update({f"{k}_random_init": v for k, v in baseline.items()})
  log.write(step, {k: v for k, v in result.items() if k.startswith(("knn", "online"))})
  log.close()
  if config.eval.plots:
    plots.write_at_end(workdir, method, config, eval_variables(method, state), test, mesh)
  rundir.update_eval(workdir, result, training=True)   # offline protocols' entries stay
  if jax.process_index() == 0:
    print(format_eval(result), flush=True)
  return result


def check_finite(metrics: dict, step: int, ckpt=None):
  bad = [k for k in ("loss", "grad_norm") if k in metrics and not np.isfinite(metrics[k])]
  if bad:
    where = "no checkpoint had been saved"
    if ckpt is not None:
      ckpt.wait()
      if ckpt.latest_step() is not None:
        where = (f"the last good checkpoint, step {ckpt.latest_step()} in {ckpt.directory}, "
                 "is intact")
    raise FloatingPointError(f"non-finite {', '.join(bad)} at step {step}; training "
                             f"stopped; {where}")


def format_eval(result: dict) -> str:
  rows = [("kNN top-1", "knn_top1"), ("kNN top-5", "knn_top5"),
          ("online probe top-1", "online_top1")]
  lines = [f"{'':20s}{'trained':>10s}{'random init':>14s}"]
  for name, key in rows:
    if key not in result:
      continue
    baseline = result.get(f"{key}_random_init")
    shown = f"{100 * baseline:13.2f}%" if baseline is not None else f"{'-':>14s}"
    lines.append(f"{name:20s}{100 * result[key]:9.2f}%{shown}")
  return "\n".join(lines)
