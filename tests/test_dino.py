"""DINO: the loss and centre against METHODS.md §13.6, schedules, gradient handling, the
torch-style AdamW, 8 devices = 1 device, and the smoke config through the CLI."""
import math
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import test_train
from test_main import smoke_run
from test_train import max_diff
from jax.sharding import PartitionSpec as P

from ssl_jax import config as config_lib, optim, parallel, state as state_lib
from ssl_jax.errors import ConfigError
from ssl_jax.methods import dino
from ssl_jax.models.heads import DINOHead

sys.path.insert(0, "configs")
import dino as dino_config  # noqa: E402  pylint: disable=wrong-import-position


# ----------------------------------------------------------------------------- loss

def test_uniform_outputs_give_log_k():
  k, batch, crops = 65536, 2, 12
  loss = dino.dino_loss(jnp.zeros((crops * batch, k)), jnp.zeros((2 * batch, k)),
                        jnp.zeros((1, k)), 0.1, 0.04)
  assert float(loss) == pytest.approx(11.090355, rel=1e-5)   # ln 65536 (f32 sum of 65536)


def hand_example():
  """METHODS.md §13.6: K = 4, batch 1, c = 0; mismatched peaks between the two crops."""
  teacher = jnp.array([[2.0, 0, 0, 0], [0, 2.0, 0, 0]])
  student = jnp.array([[1.0, 0, 0, 0], [0, 1.0, 0, 0]])
  return student, teacher


def test_hand_computed_loss_skips_same_view_pairs():
  student, teacher = hand_example()
  loss = dino.dino_loss(student, teacher, jnp.zeros((1, 4)), 0.1, 0.04)
  assert float(loss) == pytest.approx(math.log(math.exp(10) + 3), rel=1e-6)   # 10.000136
  # Counting the same-view pairs too would average in two near-zero terms: about 5.


@pytest.mark.parametrize("local_crops, terms", [(8, 18), (10, 22), (0, 2)])
def test_number_of_loss_terms(local_crops, terms):
  assert dino.loss_mask(2, 2 + local_crops).sum() == terms


def test_loss_equals_the_pairwise_loop():
  s, t = jax.random.normal(jax.random.key(0), (2, 5 * 3, 7))
  t, center = t[:2 * 3], jnp.linspace(-0.5, 0.5, 7)[None]
  log_p = np.asarray(jax.nn.log_softmax(s / 0.1), np.float64).reshape(5, 3, 7)
  p_t = np.asarray(jax.nn.softmax((t - center) / 0.05), np.float64).reshape(2, 3, 7)
  terms = [np.mean(-np.sum(p_t[i] * log_p[v], -1)) for i in range(2) for v in range(5)
           if v != i]
  loss = dino.dino_loss(s, t, center, 0.1, 0.05)
  assert len(terms) == 8 and float(loss) == pytest.approx(np.mean(terms), rel=1e-5)


def test_teacher_gets_no_gradient():
  s, t = jax.random.normal(jax.random.key(1), (2, 4, 6))
  grad_s, grad_t = jax.grad(dino.dino_loss, argnums=(0, 1))(s, t, jnp.zeros((1, 6)), 0.1, 0.04)
  assert np.all(grad_t == 0) and np.any(grad_s != 0)


def test_centre_after_one_update():
  _, teacher = hand_example()
  mesh = parallel.make_mesh(jax.devices()[:1])
  center = jax.shard_map(lambda t: dino.next_center(jnp.zeros((1, 4)), dino.batch_center(t),
                                                    0.9),
                         mesh=mesh, in_specs=P(parallel.AXIS), out_specs=P(),
                         check_vma=False)(teacher)
  np.testing.assert_allclose(center, [[0.1, 0.1, 0.0, 0.0]], atol=1e-7)


def test_centre_uses_the_global_batch():
  logits = jax.random.normal(jax.random.key(2), (16, 5))
  mesh = parallel.make_mesh()
  center = jax.shard_map(dino.batch_center, mesh=mesh, in_specs=P(parallel.AXIS),
                         out_specs=P(), check_vma=False)(logits)
  np.testing.assert_allclose(center, logits.mean(0, keepdims=True), rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------ schedules

def schedule_config(steps_per_epoch=10, total_steps=1000):
  config = dino_config.get_config("smoke")
  config.run.update(steps_per_epoch=steps_per_epoch, total_steps=total_steps)
  return config


def test_teacher_temperature_warms_up_per_epoch():
  config = schedule_config()   # 0.04 -> 0.07 over 30 epochs of 10 steps
  temps = [float(dino.teacher_temperature(s, config)) for s in (0, 9, 10, 290, 299, 300, 999)]
  np.testing.assert_allclose(temps, [0.04, 0.04, 0.041034, 0.07, 0.07, 0.07, 0.07], atol=1e-6)
  config.dino.warmup_teacher_temp_epochs = 0
  assert float(dino.teacher_temperature(0, config)) == pytest.approx(0.07)


def test_teacher_momentum_is_a_per_step_cosine():
  config = schedule_config()
  values = [float(dino.teacher_momentum(s, config)) for s in (0, 500, 1000)]
  np.testing.assert_allclose(values, [0.996, 0.998, 1.0], atol=1e-7)


def test_weight_decay_cosine_schedule():
  opt = dino_config.get_config().optimizer
  wd = optim.weight_decay_schedule(opt, 100)
  np.testing.assert_allclose([float(wd(t)) for t in (0, 50, 100)], [0.04, 0.22, 0.4],
                             atol=1e-7)


def test_torch_adamw_decays_matrices_and_skips_gradient_free_leaves():
  opt = dino_config.get_config().optimizer
  tx = optim.make_optimizer(opt, 1e-2, total_steps=100)
  params = {"kernel": jnp.full((2, 2), 2.0), "bias": jnp.full((2,), 2.0),
            "cls_token": jnp.full((1, 1, 2), 2.0), "idle": jnp.full((2, 2), 2.0)}
  grads = {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2), "cls_token": jnp.ones((1, 1, 2)),
           "idle": jnp.zeros((2, 2))}
  state = tx.init(params)
  updates, state = tx.update(grads, state, params)
  # First Adam step: m_hat / sqrt(v_hat) = 1; decay wd(0) = 0.04 on ndim > 1 only.
  np.testing.assert_allclose(updates["kernel"], -1e-2 * (1 + 0.04 * 2), rtol=1e-4)
  np.testing.assert_allclose(updates["cls_token"], -1e-2 * (1 + 0.04 * 2), rtol=1e-4)
  np.testing.assert_allclose(updates["bias"], -1e-2, rtol=1e-4)
  np.testing.assert_array_equal(updates["idle"], 0.0)   # a torch param without .grad
  for _ in range(3):
    updates, state = tx.update(grads, state, params)
  # The idle leaf's first gradient gets a first (bias-corrected) Adam step, as in torch.
  grads["idle"] = jnp.ones((2, 2))
  updates, state = tx.update(grads, state, params)
  wd = float(optim.weight_decay_schedule(opt, 100)(4))
  np.testing.assert_allclose(updates["idle"], -1e-2 * (1 + wd * 2), rtol=1e-5)


# ------------------------------------------------------------------------ gradients

def test_clipping_is_per_tensor():
  grads = {"big": jnp.array([6.0, 8.0]), "small": jnp.array([0.3, 0.4])}   # norms 10, 0.5
  clipped = dino.clip_per_tensor(grads, 3.0)
  assert float(jnp.linalg.norm(clipped["big"])) == pytest.approx(3.0, rel=1e-6)
  np.testing.assert_array_equal(clipped["small"], grads["small"])   # a global clip would not


def test_last_layer_gets_no_gradient_in_the_first_epoch():
  config = schedule_config(steps_per_epoch=10)
  grads = {"backbone": {"w": jnp.ones(3)},
           "head": {"Dense_0": {"kernel": jnp.ones((2, 2))},
                    "last_layer": {"kernel": jnp.ones((2, 2))}}}
  for step, frozen in ((0, True), (9, True), (10, False)):
    out = dino.adjust_grads(grads, jnp.int32(step), config=config)
    assert bool(np.all(out["head"]["last_layer"]["kernel"] == 0)) == frozen
    np.testing.assert_array_equal(out["head"]["Dense_0"]["kernel"], 1.0)
    np.testing.assert_array_equal(out["backbone"]["w"], 1.0)


# ---------------------------------------------------------------- model and views

def test_head_outputs_cosines_with_unit_prototypes():
  head = DINOHead(out_dim=16, hidden_dim=8, bottleneck_dim=4, norm_last_layer=True)
  x = jax.random.normal(jax.random.key(0), (3, 5))
  variables = head.init(jax.random.key(1), x)
  assert set(variables["params"]["last_layer"]) == {"kernel"}   # g fixed at 1
  out = head.apply(variables, x)
  assert out.shape == (3, 16) and float(jnp.abs(out).max()) <= 1.0 + 1e-6
  learned = DINOHead(out_dim=16, hidden_dim=8, bottleneck_dim=4, norm_last_layer=False)
  scale = learned.init(jax.random.key(1), x)["params"]["last_layer"]["scale"]
  np.testing.assert_array_equal(scale, np.ones((1, 16)))


def test_last_layer_runs_in_float32_under_bfloat16():
  """At teacher temperature 0.04 a bfloat16 cosine's rounding moves logits by ~0.05: the
  weight-normalised last layer runs in float32 whatever the compute dtype (as SwAV's
  scores), so it equals the float32 product of its (bfloat16-computed) input."""
  head = DINOHead(out_dim=1024, hidden_dim=64, bottleneck_dim=256, num_layers=2,
                  dtype=jnp.bfloat16)
  x = jax.random.normal(jax.random.key(0), (4, 32))
  variables = head.init(jax.random.key(1), x)
  out, state = head.apply(variables, x, capture_intermediates=True, mutable=["intermediates"])
  bottleneck = np.asarray(state["intermediates"]["Dense_1"]["__call__"][0], np.float64)
  bottleneck /= np.linalg.norm(bottleneck, axis=-1, keepdims=True)
  v = np.asarray(variables["params"]["last_layer"]["kernel"], np.float64)
  expected = bottleneck @ (v / np.linalg.norm(v, axis=0, keepdims=True))
  assert out.dtype == jnp.float32
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)


def test_views_of_the_original():
  config = dino_config.get_config()
  views = dino.views(config)
  assert [v.size for v in views] == [224, 224] + [96] * 10
  assert [(v.blur_prob, v.solarize_prob) for v in views[:3]] == [(1.0, 0.0), (0.1, 0.2),
                                                                 (0.5, 0.0)]
  assert (views[0].crop_scale, views[2].crop_scale) == ((0.4, 1.0), (0.05, 0.4))
  assert (views[0].brightness, views[0].saturation, views[0].hue) == (0.4, 0.2, 0.1)
  assert (config.model.num_heads, config.model.width) == (6, 384)


def test_same_size_crops_run_together():
  crops = [jnp.zeros((2, 8, 8, 3))] * 2 + [jnp.zeros((2, 4, 4, 3))] * 3
  assert [len(g) for g in dino.same_size_groups(crops)] == [2, 3]


@pytest.mark.parametrize("variant", ["vitb16", "resnet50", "cifar10", "cifar10_vit"])
def test_variants_validate(variant):
  config_lib.validate(dino_config.get_config(variant), device_count=8)


def test_config_errors_name_the_field():
  config = dino_config.get_config("smoke")
  config.dino.local_crops_size = 10
  with pytest.raises(ConfigError, match="config.dino.local_crops_size=10"):
    config_lib.validate(config)
  config = dino_config.get_config("resnet50")
  config.optimizer.weight_decay_end = 0.4
  with pytest.raises(ConfigError, match="config.optimizer.weight_decay_end=0.4"):
    config_lib.validate(config)


# ----------------------------------------------------- the whole step, 1 vs 8 devices

def tiny_config():
  config = dino_config.get_config("smoke")
  config.batch_size = 16
  config.model.drop_path = 0.0          # per-device drop-path masks would differ
  config.dino.local_crops_number = 1    # two resolutions are enough
  config.run.update(steps_per_epoch=1, total_steps=4)   # step 0 frozen, step 1 not
  # SGD without weight decay: steps proportional to the gradients (Adam's first step,
  # about lr * sign(g), would magnify rounding noise), and a frozen layer stays put.
  config.optimizer.update(name="sgd", base_lr=0.5, weight_decay=0.0, weight_decay_end=0.0,
                          warmup_epochs=0)
  return config


@pytest.fixture(scope="module")
def runs(fast_compiles):
  del fast_compiles
  return test_train.one_and_eight_devices(tiny_config(), test_train.random_batch(),
                                          steps_per_epoch=1, total_steps=4)


def test_eight_devices_equal_one(runs):
  test_train.assert_one_equals_eight(
      runs, ("loss", "grad_norm", "embedding_std", "teacher_entropy"))


def test_step_freezes_last_layer_then_moves_teacher_and_centre(runs):
  (states, metrics), _ = runs
  last = lambda s: s.params["head"]["last_layer"]
  assert max_diff(last(states[0]), last(states[1])) == 0        # epoch 0: frozen
  assert max_diff(last(states[1]), last(states[2])) > 0         # epoch 1: trained
  assert max_diff(states[0].params["backbone"], states[1].params["backbone"]) > 1e-5
  # Teacher <- m teacher + (1 - m) student after the step, m on the per-step cosine.
  config = tiny_config()
  for t in (0, 1):
    m = float(dino.teacher_momentum(t, config))
    expected = jax.tree.map(lambda tgt, p: m * tgt + (1 - m) * p,
                            states[t].method_state["teacher"]["params"], states[t + 1].params)
    assert max_diff(expected, states[t + 1].method_state["teacher"]["params"]) < 1e-6
  center = states[1].method_state["center"]
  assert center.shape == (1, 128) and float(np.abs(center).max()) > 0
  assert float(metrics[0]["teacher_temp"]) == pytest.approx(0.04)


def test_init_copies_the_student_into_the_teacher(runs):
  (states, _), _ = runs
  for a, b in zip(jax.tree.leaves(states[0].params),
                  jax.tree.leaves(states[0].method_state["teacher"]["params"])):
    np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(states[0].method_state["center"], np.zeros((1, 128)))
  assert "scale" in states[0].params["head"]["last_layer"]   # norm_last_layer False


def test_encode_gives_backbone_features(runs):
  (states, _), _ = runs
  variables = {"params": states[0].params, "batch_stats": states[0].batch_stats}
  feats = dino.encode(variables, jnp.zeros((3, 16, 16, 3)), tiny_config())
  assert feats.shape == (3, 32) and feats.dtype == jnp.float32


def test_evaluation_reads_the_teacher_and_the_probe_the_student(runs):
  (states, _), _ = runs
  state = states[-1]
  teacher = state.method_state["teacher"]
  evaluated = state_lib.eval_variables(dino, state)
  assert evaluated == {"params": teacher["params"], "batch_stats": teacher["batch_stats"]}
  assert max_diff(evaluated["params"], state.params) > 1e-6   # they differ after the steps
  assert state_lib.online_variables(state)["params"] is state.params


def test_smoke_run_through_the_cli(tmp_path, small_dataset):
  lines = smoke_run("dino", tmp_path, small_dataset)
  assert lines[0]["teacher_temp"] == pytest.approx(0.04)


def test_lightly_head_init_and_the_teachers_own_head():
  """dino.head_init="torch": nn.Linear's default, U(+-1/sqrt(fan_in)) for kernel and bias;
  teacher_head="own_init": the teacher copies the student's backbone, not its head;
  momentum_teacher_final = momentum_teacher: a constant EMA."""
  c = dino_config.get_config("smoke")
  c.dino.update(head_init="torch", teacher_head="own_init", momentum_teacher=0.99,
                momentum_teacher_final=0.99)
  c.run.total_steps = 100
  assert float(dino.teacher_momentum(50, c)) == pytest.approx(0.99)
  state = jax.jit(lambda rng: dino.init(rng, c, None))(jax.random.key(0))
  student, teacher = state["params"], state["method_state"]["teacher"]["params"]
  for a, b in zip(jax.tree.leaves(student["backbone"]), jax.tree.leaves(teacher["backbone"])):
    np.testing.assert_array_equal(a, b)
  first = student["head"]["Dense_0"]
  bound = 1 / math.sqrt(first["kernel"].shape[0])
  assert float(np.abs(first["kernel"]).max()) <= bound and float(np.abs(first["bias"]).max()) > 0
  assert float(np.std(first["kernel"])) == pytest.approx(bound / math.sqrt(3), rel=0.1)
  assert float(np.abs(first["kernel"] - teacher["head"]["Dense_0"]["kernel"]).max()) > 0
