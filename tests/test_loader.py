"""The in-memory loader: deterministic, resumable, disjoint per process."""
import jax
import numpy as np

from ssl_jax import parallel
from ssl_jax.data import loader as loader_lib
from ssl_jax.data.sources import ArrayDataset


def dataset(n=40):
  images = np.arange(n, dtype=np.uint8)[:, None, None, None] * np.ones((1, 4, 4, 3), np.uint8)
  return ArrayDataset(images=images, labels=(np.arange(n) % 3).astype(np.int32),
                      classes=("a", "b", "c"))


def test_batches_are_a_function_of_seed_and_step():
  mesh = parallel.make_mesh()
  a = loader_lib.MemoryLoader(dataset(), 8, seed=3, mesh=mesh)
  b = loader_lib.MemoryLoader(dataset(), 8, seed=3, mesh=mesh)
  assert a.steps_per_epoch == 5
  full = [a.indices(s) for s in range(12)]
  # Resume at step 7 on a fresh loader: the same batch as the uninterrupted stream.
  np.testing.assert_array_equal(b.indices(7), full[7])
  # One epoch covers every example once; the next epoch is reshuffled.
  np.testing.assert_array_equal(np.sort(np.concatenate(full[:5])), np.arange(40))
  assert not np.array_equal(np.concatenate(full[:5]), np.concatenate(full[5:10]))
  c = loader_lib.MemoryLoader(dataset(), 8, seed=4, mesh=mesh)
  assert not np.array_equal(c.indices(0), full[0])


def test_host_batch_carries_image_label_and_index():
  mesh = parallel.make_mesh()
  data = loader_lib.MemoryLoader(dataset(), 8, seed=0, mesh=mesh)
  batch = data.host_batch(2)
  np.testing.assert_array_equal(batch["image"][:, 0, 0, 0], batch["index"])
  np.testing.assert_array_equal(batch["label"], batch["index"] % 3)
  device_batches = list(data.batches(2, 4))
  assert len(device_batches) == 2
  np.testing.assert_array_equal(np.asarray(device_batches[0]["index"]), batch["index"])
  assert device_batches[0]["image"].sharding.spec == jax.sharding.PartitionSpec("batch")


def test_two_processes_read_disjoint_slices_that_cover_the_batch(monkeypatch):
  mesh = parallel.make_mesh()
  monkeypatch.setattr(jax, "process_count", lambda: 2)
  slices = []
  for process in range(2):
    monkeypatch.setattr(jax, "process_index", lambda p=process: p)
    data = loader_lib.MemoryLoader(dataset(), 8, seed=1, mesh=mesh)
    slices.append([data.indices(s) for s in range(5)])
  for step in range(5):
    a, b = slices[0][step], slices[1][step]
    assert len(a) == len(b) == 4 and not set(a) & set(b)
  everything = np.concatenate([np.concatenate(s) for s in slices])
  np.testing.assert_array_equal(np.sort(everything), np.arange(40))
