"""Serves a data set held in host memory as global batches, augmentation left to the device.

The batch of step s is a pure function of (seed, s): a fresh permutation per epoch, drawn
from the seed and the epoch number. Resuming at step s therefore continues exactly where
an uninterrupted run would be, and each process takes only its own slice of the batch.
"""
import queue
import threading

import jax
import numpy as np

from ssl_jax import parallel


class MemoryLoader:

  def __init__(self, dataset, global_batch: int, seed: int, mesh):
    self.dataset = dataset
    self.global_batch = global_batch
    self.seed = seed
    self.mesh = mesh
    self.steps_per_epoch = len(dataset) // global_batch   # the last partial batch is dropped
    self.local_batch = global_batch // jax.process_count()
    self._perm_epoch, self._perm = -1, None

  def indices(self, step: int) -> np.ndarray:
    """Dataset indices of this process's slice of the global batch of `step`."""
    epoch, i = divmod(step, self.steps_per_epoch)
    if epoch != self._perm_epoch:
      self._perm = np.random.default_rng([self.seed, epoch]).permutation(len(self.dataset))
      self._perm_epoch = epoch
    start = i * self.global_batch + jax.process_index() * self.local_batch
    return self._perm[start:start + self.local_batch]

  def host_batch(self, step: int) -> dict:
    idx = self.indices(step)
    return {"image": self.dataset.images[idx], "label": self.dataset.labels[idx],
            "index": idx.astype(np.int32)}

  def batches(self, start_step: int, end_step: int, prefetch: int = 2):
    """Yields global device batches for steps [start_step, end_step), `prefetch` ahead."""
    host = (self.host_batch(step) for step in range(start_step, end_step))
    return prefetch_to_device(host, self.mesh, prefetch)


def prefetch_to_device(host_batches, mesh, prefetch: int = 2):
  """Yields `host_batches` (this process's numpy slices) as global device arrays, made on a
  thread `prefetch` batches ahead, so the next transfer overlaps the current step."""
  q = queue.Queue(maxsize=prefetch)
  stop = threading.Event()
  done = object()

  def produce():
    try:
      for batch in host_batches:
        if stop.is_set():
          return
        q.put(parallel.to_global(batch, mesh))
      q.put(done)
    except BaseException as e:  # surfaced in the consumer  # pylint: disable=broad-except
      q.put(e)

  thread = threading.Thread(target=produce, daemon=True)
  thread.start()
  try:
    while (item := q.get()) is not done:
      if isinstance(item, BaseException):
        raise item
      yield item
  finally:
    stop.set()
    while thread.is_alive():  # unblock a producer waiting on a full queue
      try:
        q.get_nowait()
      except queue.Empty:
        thread.join(0.01)
