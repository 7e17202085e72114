"""MoCo v1/v2: InfoNCE against a queue, the FIFO queue over steps and devices, shuffle and
split BN, the momentum encoder, schedules, validation and the command line."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from ssl_jax import ema, losses, optim, parallel
from ssl_jax.data import augment
from ssl_jax.errors import ConfigError
from ssl_jax.methods import common, moco
import test_train
from test_config import load
from test_main import smoke_run

BATCH = 16


pytestmark = pytest.mark.usefixtures("fast_compiles")


# ---------------------------------------------------------------------------- loss

@pytest.mark.parametrize("queue_size, temperature, expected", [
    (65536, 0.07, 0.0401355), (65536, 0.2, 6.092617), (4096, 0.1, 0.170551)])
def test_loss_with_a_queue_orthogonal_to_the_query(queue_size, temperature, expected):
  """q = k, every queue entry orthogonal to q: ln(1 + K exp(-1/tau)) (METHODS.md §5.6, §7)."""
  q = jnp.eye(128)[:1]
  queue = jnp.tile(jnp.eye(128)[1:2], (queue_size, 1))
  loss = losses.info_nce_queue(q, q, queue, temperature)
  assert float(loss[0]) == pytest.approx(expected, rel=1e-5)


def test_loss_at_collapse_is_log_k_plus_1():
  q = jnp.eye(128)[:1]
  loss = losses.info_nce_queue(q, q, jnp.tile(q, (65536, 1)), 0.07)
  assert float(loss[0]) == pytest.approx(11.090370, rel=1e-6)


def test_loss_hand_computed_with_the_positive_at_index_0():
  q, k = jnp.array([[2.0, 0.0]]), jnp.array([[0.6, 0.8]])   # q is normalised inside
  queue = jnp.array([[0.0, 1.0], [-1.0, 0.0]])
  logits = np.array([0.6, 0.0, -1.0]) / 0.5
  expected = np.log(np.exp(logits).sum()) - logits[0]
  assert float(losses.info_nce_queue(q, k, queue, 0.5)[0]) == pytest.approx(expected, rel=1e-6)


def test_no_gradient_into_keys_or_queue():
  rng = np.random.default_rng(0)
  q, k, queue = (jnp.asarray(rng.normal(size=s), jnp.float32) for s in [(4, 8), (4, 8), (16, 8)])
  grads = jax.grad(lambda q, k, queue: losses.info_nce_queue(q, k, queue, 0.2).sum(),
                   argnums=(0, 1, 2))(q, k, queue)
  assert np.abs(grads[0]).max() > 0
  np.testing.assert_array_equal(grads[1], 0)
  np.testing.assert_array_equal(grads[2], 0)


# --------------------------------------------------------------- queue and BN groups

def test_queue_is_fifo_and_identical_on_every_device():
  """Five pushes of gathered keys into a queue of three global batches (wraps around)."""
  mesh = parallel.make_mesh(jax.devices())
  size, dim = 3 * BATCH, 4

  def push(queue, ptr, local_keys):
    queue, ptr = moco.push(queue, ptr, parallel.gather(local_keys))
    return queue[None], ptr[None]   # one copy per device, to compare them
  push = jax.jit(jax.shard_map(push, mesh=mesh, in_specs=(P(), P(), P(parallel.AXIS)),
                               out_specs=(P(parallel.AXIS), P(parallel.AXIS))))
  rng = np.random.default_rng(0)
  queue = rng.normal(size=(size, dim)).astype(np.float32)
  expected, ptr = queue.copy(), jnp.zeros((), jnp.int32)
  for t in range(5):
    keys = rng.normal(size=(BATCH, dim)).astype(np.float32)
    queues, ptrs = jax.device_get(push(queue, ptr, keys))
    start = (t * BATCH) % size
    expected[start:start + BATCH] = keys     # the oldest rows, in global row order
    for copy in queues:
      np.testing.assert_array_equal(copy, expected)
    assert set(ptrs.tolist()) == {(t + 1) * BATCH % size}
    queue, ptr = queues[0], ptrs[0]


def bn_batch_members(groups):
  """A fake key encoder: each row returns the ids of the rows in its BN batch."""
  def members(xg):
    ids = jnp.sort(xg[:, 0])
    return jnp.broadcast_to(ids, (xg.shape[0], xg.shape[0])), {}
  return lambda x: common.in_groups(members, x, groups)


def test_shuffle_bn_never_puts_a_key_in_its_querys_bn_batch():
  """8 devices x 2 groups: 16 BN batches of 4 for the queries (device, group in row order)
  and 16 for the keys, made of the permuted global batch. Every key's BN batch must differ
  from its query's; un-shuffling must bring each key back to its own row; every device
  must agree."""
  mesh = parallel.make_mesh(jax.devices())
  global_batch, groups, size = 64, 2, 4
  perm = jax.random.permutation(jax.random.key(3), global_batch)

  def run(x, perm):
    keys, _ = moco.shuffled_keys(bn_batch_members(groups), x, perm)
    return keys[None]
  run = jax.jit(jax.shard_map(run, mesh=mesh, in_specs=(P(parallel.AXIS), P()),
                              out_specs=P(parallel.AXIS)))
  ids = np.arange(global_batch, dtype=np.float32)[:, None]
  out = np.asarray(run(ids, perm))
  assert all((copy == out[0]).all() for copy in out)
  position = np.argsort(np.asarray(perm))   # where each example sits in the permuted batch
  for i, key_batch in enumerate(out[0].astype(int)):
    query_batch = np.arange(i // size * size, (i // size + 1) * size)
    start = position[i] // size * size
    np.testing.assert_array_equal(key_batch, np.sort(np.asarray(perm)[start:start + size]))
    assert i in key_batch
    assert set(key_batch) != set(query_batch)
  # Without the shuffle, keys and queries would share every BN batch: the leak.
  same = np.asarray(run(ids, jnp.arange(global_batch)))[0].astype(int)
  assert all(set(b) == set(range(i // size * size, (i // size + 1) * size))
             for i, b in enumerate(same))


def test_split_bn_normalises_each_group_on_its_own():
  x = jnp.asarray(np.random.default_rng(1).normal(size=(8, 3)), jnp.float32)
  bn = nn.BatchNorm(use_running_average=False, momentum=0.9, epsilon=1e-5)
  variables = bn.init(jax.random.key(0), x)

  def fn(xg):
    y, new = bn.apply(variables, xg, mutable=["batch_stats"])
    return y, new["batch_stats"]
  y, stats = common.in_groups(fn, x, 4)
  xg = np.asarray(x).reshape(4, 2, 3)
  expected = (xg - xg.mean(1, keepdims=True)) / np.sqrt(xg.var(1, keepdims=True) + 1e-5)
  np.testing.assert_allclose(y, expected.reshape(8, 3), rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(stats["mean"], 0.1 * np.asarray(x).mean(0), rtol=1e-5)


# ------------------------------------------------------------------ the real step

def tiny_config(devices):
  """BN batches of 2 (moco.bn_batch), whatever the device count: 8 devices x 1 group or
  1 device x 8 groups."""
  del devices   # the groups follow from bn_batch
  c = load("moco_v2").get_config("smoke")
  c.batch_size, c.image_size = BATCH, 16
  c.model.width = 1 / 16
  c.moco.update(queue_size=2 * BATCH, bn_batch=2, momentum=0.99)
  # Residual branches start at zero, as in the other device-equality tests: with unit BN
  # scales, rounding of BN batches of 2 grows past these tolerances in two steps.
  c.model.zero_init_residual = "all"
  c.run.update(steps_per_epoch=10, total_steps=100)
  return c


def image_batch():
  return test_train.random_batch(BATCH)


def run_steps(devices):
  config = tiny_config(len(devices))
  return (config, *test_train.run_steps(config, devices, image_batch()))


@pytest.fixture(scope="module")
def runs():
  assert jax.device_count() == 8
  return run_steps(jax.devices()), run_steps(jax.devices()[:1])


def expected_keys(config, state):
  """The keys one step should push, computed plainly: the same augmentation keys and
  permutation as the step, the key encoder on each BN batch of 2 of the permuted global
  batch, the results put back in row order."""
  aug_rng, _ = jax.random.split(jax.random.fold_in(state.rng, state.step))
  view = moco.views(config)[1]
  x = augment.augment_batch(jax.random.fold_in(aug_rng, 1), image_batch()["image"],
                            np.arange(BATCH), view)
  shuffle_rng = jax.random.fold_in(jax.random.fold_in(state.rng, state.step),
                                   moco.SHUFFLE_STREAM)
  perm = np.asarray(jax.random.permutation(jax.random.fold_in(shuffle_rng, 0), BATCH))
  variables = {"params": state.method_state["key_params"],
               "batch_stats": state.method_state["key_batch_stats"]}
  apply = jax.jit(lambda x: moco.network(config).apply(variables, x, train=True,
                                                         mutable=["batch_stats"])[0][1])
  keys = np.zeros((BATCH, config.head.out_dim), np.float32)
  for start in range(0, BATCH, 2):
    rows = perm[start:start + 2]
    keys[rows] = losses.l2_normalize(apply(x[rows]))
  return keys


@pytest.mark.parametrize("devices", [8, 1])
def test_queue_holds_the_expected_keys_after_each_step(runs, devices):
  """The keys come from BN batches of moco.bn_batch = 2 of the shuffled batch, on 8
  devices (1 group each) and on 1 device (8 groups: shuffle BN without 8 devices)."""
  (config, states, _) = runs[0] if devices == 8 else runs[1]
  size = config.moco.queue_size
  for t in range(2):   # the second push fills the queue and wraps the pointer to 0
    before, after = states[t].method_state, states[t + 1].method_state
    start = int(before["queue_ptr"])
    assert start == t * BATCH % size
    assert int(after["queue_ptr"]) == (t + 1) * BATCH % size
    np.testing.assert_allclose(after["queue"][start:start + BATCH],
                               expected_keys(config, states[t]), atol=2e-5)
    untouched = np.ones(size, bool)
    untouched[start:start + BATCH] = False
    np.testing.assert_array_equal(after["queue"][untouched], before["queue"][untouched])


def test_8_devices_equal_1_device_with_the_same_bn_batch(runs):
  """With 8 devices x 1 group vs 1 device x 8 groups of moco.bn_batch the BN batches, the
  permutation and the queue are the same, so the runs agree."""
  (_, s8, m8), (_, s1, m1) = runs
  for a, b in zip(m8, m1):
    np.testing.assert_allclose(a["loss"], b["loss"], rtol=2e-5)
    np.testing.assert_allclose(a["positive_sim"], b["positive_sim"], rtol=2e-5)
  for name in ("params", "batch_stats"):
    for a, b in zip(jax.tree.leaves(getattr(s8[-1], name)), jax.tree.leaves(getattr(s1[-1], name))):
      np.testing.assert_allclose(a, b, atol=5e-5, err_msg=name)
  for a, b in zip(jax.tree.leaves(s8[-1].method_state), jax.tree.leaves(s1[-1].method_state)):
    np.testing.assert_allclose(a, b, atol=5e-5)


def test_key_encoder_is_a_momentum_copy_never_trained(runs):
  (config, states, _), _ = runs
  first = states[0]
  for a, b in zip(jax.tree.leaves(first.params), jax.tree.leaves(first.method_state["key_params"])):
    np.testing.assert_array_equal(a, b)   # initialised as a copy of the query encoder
  for before, after in zip(states, states[1:]):
    expected = ema.ema_update(before.method_state["key_params"], after.params, 0.99)
    for a, b in zip(jax.tree.leaves(after.method_state["key_params"]), jax.tree.leaves(expected)):
      np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
  moved = jax.tree.map(lambda a, b: np.abs(a - b).max(), states[0].params, states[-1].params)
  assert max(jax.tree.leaves(moved)) > 1e-4


def test_loss_has_no_gradient_wrt_key_encoder_or_queue(runs):
  (config, states, _), _ = runs
  config = tiny_config(1)
  state = states[1]
  mesh = parallel.make_mesh(jax.devices()[:1])
  x = jnp.asarray(np.random.default_rng(2).uniform(size=(2, BATCH, 16, 16, 3)), jnp.float32)

  def loss(params, key_params, queue):
    ms = dict(state.method_state, key_params=key_params, queue=queue)
    value, _ = moco.loss_fn(params, state.replace(method_state=ms), {"views": [x[0], x[1]]},
                            None, state.step, config=config)
    return value
  grads = jax.jit(jax.shard_map(jax.grad(loss, argnums=(0, 1, 2)), mesh=mesh,
                                in_specs=P(), out_specs=P()))(
      state.params, state.method_state["key_params"], state.method_state["queue"])
  assert max(float(np.abs(g).max()) for g in jax.tree.leaves(grads[0])) > 0
  for g in jax.tree.leaves(grads[1:]):
    np.testing.assert_array_equal(g, 0)


# ------------------------------------------------------- configs, schedules, CLI

def test_paper_settings():
  v1, v2 = load("moco_v1").get_config(), load("moco_v2").get_config()
  assert (v1.loss.temperature, v2.loss.temperature) == (0.07, 0.2)
  assert (v1.head.num_layers, v2.head.num_layers) == (1, 2)
  for c in (v1, v2):
    assert (c.moco.queue_size, c.moco.momentum, c.batch_size) == (65536, 0.999, 256)
    assert (c.optimizer.name, c.optimizer.base_lr, c.optimizer.weight_decay) == ("sgd", 0.03, 1e-4)
  assert moco.views(v1)[0].color_prob == 1.0 and moco.views(v1)[0].hue == 0.4
  assert moco.views(v2)[0].color_prob == 0.8 and moco.views(v2)[0].blur_prob == 0.5


def test_head_shapes():
  c = load("moco_v2").get_config("smoke")
  params = jax.jit(lambda rng: moco.init(rng, c, None))(jax.random.key(0))["params"]["head"]
  width = moco.network(c).backbone.num_features
  assert params["Dense_0"]["kernel"].shape == (width, width) and "bias" in params["Dense_0"]
  assert params["Dense_1"]["kernel"].shape == (width, 128)
  c = load("moco_v1").get_config("smoke")
  params = jax.jit(lambda rng: moco.init(rng, c, None))(jax.random.key(0))["params"]["head"]
  assert list(params) == ["Dense_0"] and params["Dense_0"]["kernel"].shape[1] == 128


def test_v1_step_schedule_and_v2_per_epoch_cosine():
  v1 = optim.lr_schedule(load("moco_v1").get_config().optimizer, 256, 100, 20_000)
  assert [float(v1(s)) for s in (0, 11_999, 12_000, 15_999, 16_000, 19_999)] == pytest.approx(
      [0.03, 0.03, 0.003, 0.003, 0.0003, 0.0003])
  v2 = optim.lr_schedule(load("moco_v2").get_config().optimizer, 256, 100, 20_000)
  cosine = lambda epoch: 0.03 * 0.5 * (1 + np.cos(np.pi * epoch / 200))
  assert [float(v2(s)) for s in (0, 99, 100, 150, 19_999)] == pytest.approx(
      [0.03, 0.03, cosine(1), cosine(1), cosine(199)], rel=1e-5, abs=1e-9)


@pytest.mark.parametrize("field, value, message", [
    ("queue_size", 100, r"config.moco.queue_size=100 is not a multiple of the 32 keys"),
    ("bn_batch", 3, r"config.moco.bn_batch=3 does not divide the per-device batch of 4"),
    ("symmetric_style", "mean", r"config.moco.symmetric_style='mean' is unknown"),
])
def test_bad_moco_fields_are_config_errors(field, value, message):
  from ssl_jax import config as config_lib
  c = load("moco_v2").get_config("smoke")
  c.moco[field] = value
  with pytest.raises(ConfigError, match=message):
    config_lib.validate(c, device_count=8)


def test_bn_batch_sets_the_groups_on_any_device_count():
  """The ImageNet default's BN batch of 32 (8 GPUs x 32): 8 groups at batch 256 on one
  device, 1 on each of 8; the demo's / lightly's 8 splits of 512 = 64."""
  c = load("moco_v1").get_config()
  assert c.moco.bn_batch == 32
  assert (moco.bn_groups(c, 256), moco.bn_groups(c, 32)) == (8, 1)
  for name in ("moco_v1", "moco_v2"):
    assert load(name).get_config("cifar10").moco.bn_batch == 64


def test_symmetric_styles_demo_sums_lightly_averages_and_pushes_between(runs):
  """demo: L(a->b) + L(b->a), both against the step's queue, keys of a then b pushed;
  lightly: 0.5 (L(a->b) + L(b->a)), the second against the queue holding b's keys."""
  config = tiny_config(1)
  config.moco.shuffle_bn = False   # each direction alone then draws the same key BN batches
  state = runs[1][1][1]
  mesh = parallel.make_mesh(jax.devices()[:1])
  images = np.random.default_rng(4).uniform(size=(2, BATCH, 16, 16, 3)).astype(np.float32)

  def loss(views, queue, symmetric, style="demo"):
    config.moco.update(symmetric=symmetric, symmetric_style=style)
    ms = dict(state.method_state, queue=queue)
    fn = lambda x: moco.loss_fn(state.params, state.replace(method_state=ms),   # noqa: E731
                                {"views": [x[0], x[1]]}, None, state.step, config=config)
    return jax.jit(jax.shard_map(fn, mesh=mesh, in_specs=P(), out_specs=P(),
                                 check_vma=False))(views)
  queue, ptr = state.method_state["queue"], state.method_state["queue_ptr"]
  demo, demo_aux = loss(images, queue, True)
  lightly, lightly_aux = loss(images, queue, True, "lightly")
  keys_b, keys_a = np.split(np.asarray(lightly_aux["keys"]), 2)
  np.testing.assert_allclose(demo_aux["keys"], np.concatenate([keys_a, keys_b]), atol=1e-6)
  a_to_b = float(loss(images, queue, False)[0])
  b_to_a = float(loss(images[::-1], queue, False)[0])
  b_to_a_after_push = float(loss(images[::-1], moco.push(queue, ptr, keys_b)[0], False)[0])
  assert float(demo) == pytest.approx(a_to_b + b_to_a, rel=1e-5)
  assert float(lightly) == pytest.approx(0.5 * (a_to_b + b_to_a_after_push), rel=1e-5)
  assert abs(b_to_a_after_push - b_to_a) > 1e-4


def test_symmetric_needs_room_for_both_views_keys():
  from ssl_jax import config as config_lib
  c = load("moco_v1").get_config("smoke")
  c.moco.update(symmetric=True, queue_size=96)
  with pytest.raises(ConfigError, match="64 keys pushed per step"):
    config_lib.validate(c, device_count=1)


@pytest.mark.parametrize("name", ["moco_v1", "moco_v2"])
def test_smoke_run_through_the_cli(name, tmp_path, small_dataset):
  smoke_run(name, tmp_path, small_dataset)


def test_only_the_v2_quickstart_departs_from_torchvisions_unit_bn_scales():
  """The original keeps zero_init_residual=False; MoCo v2's 190-step quickstart does not
  learn with it (experiments/RESULTS.md, 2026-12-02), so that variant alone zero-inits."""
  from ssl_jax import config as config_lib  # pylint: disable=import-outside-toplevel
  for name in ("moco_v1", "moco_v2"):
    get_config = load(name).get_config
    for variant in [None, *set(config_lib.variant_names(get_config)) - {"quickstart", "smoke"}]:
      assert get_config(variant).model.zero_init_residual == "none", (name, variant)
  assert load("moco_v1").get_config("quickstart").model.zero_init_residual == "none"
  assert load("moco_v2").get_config("quickstart").model.zero_init_residual == "all"
