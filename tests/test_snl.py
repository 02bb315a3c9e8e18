"""Selective Negative Learning (ssfer_jax/algorithms/snl.py) and the dta_snl loss, against
hand-computed values; the teacher gets no gradient."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ssfer_jax import state as state_lib
from ssfer_jax.algorithms import StepInputs, get_algorithm
from ssfer_jax.algorithms import snl
from ssfer_jax.algorithms import thresholds as th

P = np.array([[0.02, 0.9, 0.04, 0.04],
              [0.5, 0.45, 0.03, 0.02],
              [0.05, 0.9, 0.03, 0.02],     # exactly float32(0.05): not < 0.05
              [0.25, 0.25, 0.25, 0.25]],   # all tied: arg-max is class 0
             np.float32)


def test_tau_neg_selection_is_exact_and_never_the_argmax():
  comp = snl.complementary_set(jnp.asarray(P), tau_neg=0.05)
  np.testing.assert_array_equal(comp, [[1, 0, 1, 1],
                                       [0, 0, 1, 1],
                                       [0, 0, 1, 1],
                                       [0, 0, 0, 0]])
  # tau_neg above every probability: every class but the arg-max, even when tied.
  comp = snl.complementary_set(jnp.asarray(P), tau_neg=1.01)
  np.testing.assert_array_equal(comp, [[1, 0, 1, 1],
                                       [0, 1, 1, 1],
                                       [1, 0, 1, 1],
                                       [0, 1, 1, 1]])


def test_k_lowest_selection_is_exact_and_never_the_argmax():
  comp = snl.complementary_set(jnp.asarray(P), tau_neg=0.05, k=2)
  # row 0: lowest 0.02 (class 0), then the 0.04 tie -> the lower index, class 2.
  # row 3: all tied; the arg-max (class 0) is excluded -> classes 1, 2.
  np.testing.assert_array_equal(comp, [[1, 0, 1, 0],
                                       [0, 0, 1, 1],
                                       [0, 0, 1, 1],
                                       [0, 1, 1, 0]])
  # k >= C is capped at C - 1: everything but the arg-max.
  comp = snl.complementary_set(jnp.asarray(P), tau_neg=0.05, k=10)
  np.testing.assert_array_equal(comp, 1 - np.eye(4)[[1, 0, 1, 0]])
  with pytest.raises(ValueError, match="config.algo.k"):
    snl.complementary_set(jnp.asarray(P), tau_neg=0.05, k=-1)


def test_negative_loss_and_metrics_hand_computed():
  q = np.array([[0.5, 0.25, 0.25],
                [0.2, 0.6, 0.2],
                [0.1, 0.1, 0.8],
                [0.3, 0.3, 0.4]], np.float32)
  comp = jnp.array([[0, 1, 1], [1, 0, 0], [1, 1, 0], [0, 0, 0]], jnp.float32)
  mask = jnp.array([0, 0, 1, 0], jnp.float32)   # row 2 passes the mask; row 3 has no label
  selected = snl.selected_samples(comp, mask)
  np.testing.assert_array_equal(selected, [1, 1, 0, 0])
  loss = snl.negative_loss(jnp.log(q), comp, selected, eps=0.0)
  # row 0: -(1/2)(log(1-0.25) + log(1-0.25)) = -log 0.75 = 0.28768207
  # row 1: -log(1 - 0.2) = 0.22314355;  mean over the 2 selected = 0.25541281
  np.testing.assert_allclose(loss, 0.25541281, rtol=1e-5)
  m = snl.snl_metrics(comp, selected, jnp.array([1, -1, 2, 0]))
  # used labels: row 0 {1, 2}, row 1 {0} -> 3 / 4 samples = 0.75; 2 of 4 selected.
  # known labels among the selected: row 0 (y = 1, which IS complementary): 1 of 2 -> 0.5.
  np.testing.assert_allclose(m["num_complementary"], 0.75)
  np.testing.assert_allclose(m["neg_selected_rate"], 0.5)
  np.testing.assert_allclose(m["complementary_error"], 0.5)


def test_no_selected_sample_gives_zero_loss_and_finite_gradient():
  logits = jnp.array([[100.0, 0.0, 0.0], [0.0, 50.0, -50.0]])   # saturated softmax
  comp = jnp.array([[1, 1, 0], [1, 0, 1]], jnp.float32)

  def loss(lg, mask):
    return snl.negative_loss(lg, comp, snl.selected_samples(comp, mask))

  value, grad = jax.value_and_grad(loss)(logits, jnp.ones(2))       # every sample passes
  assert value == 0.0 and np.all(np.isfinite(grad)) and np.all(grad == 0)
  value, grad = jax.value_and_grad(loss)(logits, jnp.zeros(2))       # q = 1 on a negative class
  # row 0: q = (1, 0, 0) in float32: -(1/2)(log(0 + 1e-7) + log(1)) = 8.0590477;
  # row 1: q ~ (0, 1, 0) on classes {0, 2}: 0.  Mean over 2 rows: 4.0295239.
  np.testing.assert_allclose(value, 4.0295239, rtol=1e-5)
  assert np.all(np.isfinite(grad))
  empty = jnp.zeros_like(comp)
  value, grad = jax.value_and_grad(
      lambda lg: snl.negative_loss(lg, empty, snl.selected_samples(empty, jnp.zeros(2))))(logits)
  assert value == 0.0 and np.all(np.isfinite(grad))


# ---------------------------------------------------------------------------------------
# The dta_snl unlabeled loss.

def inputs(step=0, **kw):
  rng = np.random.default_rng(1)
  d = dict(logits_lb=rng.normal(size=(4, 3)).astype(np.float32),
           y_lb=np.array([0, 1, 2, 0], np.int32),
           student={"ulb_s": {"logits": rng.normal(size=(6, 3)).astype(np.float32)}},
           pseudo={"ulb_w": (3 * rng.normal(size=(6, 3))).astype(np.float32)},
           teacher_logits_lb=(3 * rng.normal(size=(4, 3))).astype(np.float32),
           idx_ulb=np.arange(6, dtype=np.int32), y_ulb=np.array([0, 1, 2, -1, 0, 1], np.int32),
           step=jnp.int32(step), epoch=jnp.float32(step / 5), steps_per_epoch=5)
  d.update(kw)
  return StepInputs(**d)


def test_teacher_gets_no_gradient_student_does():
  algo = get_algorithm("dta_snl")
  cfg = algo.default_config()
  cfg.tau_neg = 0.2
  cfg.neg_rampup_steps = 0
  state = algo.init_state(cfg, 3, 6)
  inp = inputs(step=3)

  def total(lw, tl, ls):
    return algo.unlabeled_loss(state, inp._replace(pseudo={"ulb_w": lw}, teacher_logits_lb=tl,
                                                   student={"ulb_s": {"logits": ls}}), cfg).loss

  gw, gt, gs = jax.grad(total, argnums=(0, 1, 2))(inp.pseudo["ulb_w"], inp.teacher_logits_lb,
                                                  inp.student["ulb_s"]["logits"])
  np.testing.assert_array_equal(gw, 0.0)
  np.testing.assert_array_equal(gt, 0.0)
  assert np.abs(gs).sum() > 0


def test_ramp_weight_and_total_loss():
  algo = get_algorithm("dta_snl")
  cfg = algo.default_config()
  cfg.tau_neg = 0.2
  cfg.lambda_neg = 2.0
  cfg.neg_rampup_steps = 4
  state = algo.init_state(cfg, 3, 6)
  for step, weight in [(0, 0.0), (2, 1.0), (4, 2.0), (9, 2.0)]:   # 2.0 * min(step / 4, 1)
    out = algo.unlabeled_loss(state, inputs(step=step), cfg)
    np.testing.assert_allclose(out.metrics["neg_weight"], weight)
    assert out.metrics["loss_neg"] > 0
    np.testing.assert_allclose(out.loss, out.metrics["loss_u"] + weight * out.metrics["loss_neg"],
                               rtol=1e-6)


def test_fixed_threshold_ablation_and_no_snl():
  algo = get_algorithm("dta_snl")
  cfg = algo.default_config()
  cfg.use_dta = False
  cfg.fixed_tau = 0.7
  cfg.use_snl = False
  state = algo.init_state(cfg, 3, 6)
  inp = inputs()
  out = algo.unlabeled_loss(state, inp, cfg)
  np.testing.assert_array_equal(out.thresholds, np.full(3, 0.7, np.float32))
  jax.tree.map(np.testing.assert_array_equal, out.state, state)
  conf = np.max(jax.nn.softmax(inp.pseudo["ulb_w"]), -1)
  np.testing.assert_array_equal(out.mask, (conf >= np.float32(0.7)).astype(np.float32))
  assert "loss_neg" not in out.metrics
  np.testing.assert_allclose(out.loss, out.metrics["loss_u"])


def tiny_batch():
  """A host batch of the train step: 4 labeled and 8 unlabeled 8x8 images, 3 classes."""
  rng = np.random.default_rng(0)
  return {"x_lb": rng.integers(0, 256, (4, 8, 8, 3), np.uint8), "y_lb": np.array([0, 1, 2, 0]),
          "x_ulb_w": rng.integers(0, 256, (8, 8, 8, 3), np.uint8),
          "x_ulb_s": rng.integers(0, 256, (8, 8, 8, 3), np.uint8),
          "idx_ulb": np.arange(8), "y_ulb": np.array([0, 1, 2, -1, 0, 1, 2, -1])}


def test_through_the_train_step():
  """dta_snl plugs into ssfer_jax.step.make_train_step (teacher on the labeled batch);
  the step's loss has zero gradient with respect to the teacher's parameters."""
  from ssfer_jax.config import base_config, set_algorithm
  from ssfer_jax.models import build_model
  from ssfer_jax.step import make_train_step

  c = set_algorithm(base_config(), "dta_snl")
  c.algo.tau_neg = 0.3
  c.algo.neg_rampup_steps = 0
  c.model.head_dropout = 0.0
  model = build_model(c.model, 3)
  tx = optax.adam(1e-3)
  algo = get_algorithm("dta_snl")
  state = state_lib.create(model, tx, algo, c.algo, rng=jax.random.PRNGKey(0),
                           image_shape=(8, 8, 3), num_classes=3, num_unlabeled=8)
  batch = tiny_batch()
  step = make_train_step(model, tx, algo, c, steps_per_epoch=4)

  def loss_wrt_teacher(ema_params):
    new_state, metrics = step(state.replace(ema_params=ema_params), batch)
    return metrics["loss"], (new_state, metrics)

  (loss, (new_state, metrics)), grad = jax.jit(
      jax.value_and_grad(loss_wrt_teacher, has_aux=True))(state.ema_params)
  assert np.isfinite(loss)
  for g in jax.tree.leaves(grad):
    np.testing.assert_array_equal(g, 0.0)
  assert metrics["algo/tau"].shape == (3,)
  np.testing.assert_allclose(metrics["algo/tau"], 0.8)   # masked with the initial thresholds
  assert new_state.algo["tau"].shape == (3,)
  assert 0.0 <= metrics["algo/neg_selected_rate"] <= 1.0
  assert np.isfinite(metrics["algo/loss_neg"])


@pytest.mark.parametrize("source,use_dta,needs", [("labeled_correct", True, True),
                                                   ("unlabeled", True, False),
                                                   ("labeled_correct", False, False)])
def test_teacher_runs_on_the_labeled_batch_only_when_the_statistic_reads_it(source, use_dta,
                                                                          needs):
  """threshold_source='unlabeled' (and the fixed-threshold ablation) skip the teacher's pass
  over the labeled batch: the step's result is unchanged and XLA counts fewer FLOPs."""
  import dataclasses
  from ssfer_jax.config import base_config, set_algorithm
  from ssfer_jax.models import build_model
  from ssfer_jax.step import make_train_step

  c = set_algorithm(base_config(), "dta_snl")
  c.algo.threshold_source, c.algo.use_dta = source, use_dta
  c.model.head_dropout = 0.0
  algo = get_algorithm("dta_snl")
  assert algo.teacher_on_labeled(c.algo) is needs
  assert get_algorithm("dtm").teacher_on_labeled(c.algo) is needs
  model, tx = build_model(c.model, 3), optax.adam(1e-3)
  state = state_lib.create(model, tx, algo, c.algo, rng=jax.random.PRNGKey(0),
                           image_shape=(8, 8, 3), num_classes=3, num_unlabeled=8)
  batch = tiny_batch()
  forced = dataclasses.replace(algo, needs_teacher_on_labeled=True)
  compiled = {name: jax.jit(make_train_step(model, tx, a, c, steps_per_epoch=4))
              .lower(state, batch).compile() for name, a in (("auto", algo), ("forced", forced))}
  flops = {name: f.cost_analysis() for name, f in compiled.items()}
  flops = {k: (v[0] if isinstance(v, (list, tuple)) else v)["flops"] for k, v in flops.items()}
  s_auto, m_auto = compiled["auto"](state, batch)
  s_forced, m_forced = compiled["forced"](state, batch)
  if needs:
    assert flops["auto"] == flops["forced"]
  else:
    assert flops["auto"] < flops["forced"]
  for a, b in zip(jax.tree.leaves((s_auto, m_auto)), jax.tree.leaves((s_forced, m_forced))):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
