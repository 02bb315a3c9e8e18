"""Peer methods (SPEC §2 / §2.1): FlexMatch, FreeMatch, SoftMatch, Ada-CM.

Every expected number is worked out by hand from the formulas (the arithmetic is written
out below), and each method's state update on a mesh of 8 CPU devices (batch sharded) is
checked against the same jitted update on one device.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from ssfer_jax import algorithms
from ssfer_jax.algorithms import adacm, flexmatch, freematch, softmatch
from ssfer_jax.algorithms.base import StepInputs, confidence_and_label

F95 = np.float32(0.95)


def logits_of(probs):
  """Logits whose softmax is ``probs`` (up to float rounding)."""
  return jnp.log(jnp.asarray(probs, jnp.float32))


def _candidates(target, num_classes, ok):
  """Rows [a, b, 0, ..., 0] (b on a grid, a on float32 neighbours of the analytic solution
  for ``target``) whose computed max-softmax satisfies ``ok``."""
  target = np.float32(target)
  rows = []
  for b in np.linspace(-3, 3, 25).astype(np.float32):
    a0 = np.float32(np.log(target * (np.exp(b) + num_classes - 2) / (1 - target)))
    for direction in (np.float32(np.inf), np.float32(-np.inf)):
      a = a0
      for _ in range(20):
        row = np.zeros(num_classes, np.float32)
        row[:2] = a, b
        rows.append(row)
        a = np.nextafter(a, direction)
  rows = np.stack(rows)
  conf = np.asarray(confidence_and_label(jnp.asarray(rows))[0])
  return rows[ok(conf)]


def place_conf(logits, row, target, ok=None):
  """Sets ``logits[row]`` so that confidence_and_label(logits)[0][row] satisfies ``ok``
  (default: exactly float32 ``target``) when computed on this very batch (checked)."""
  target = np.float32(target)
  ok = ok or (lambda c: c == target)
  logits = np.array(logits, np.float32)
  for cand in _candidates(target, logits.shape[1], ok):
    logits[row] = cand
    if ok(np.asarray(confidence_and_label(jnp.asarray(logits))[0])[row]):
      return logits
  raise AssertionError(f"no logits give a confidence near {target} as asked")


def make_inputs(logits_w, *, logits_s=None, idx=None, y_lb=None, teacher_lb=None, logits_lb=None,
                logits_w2=None, feats_w=None, feats_w2=None, step=0, steps_per_epoch=1):
  logits_w = jnp.asarray(logits_w, jnp.float32)
  u, c = logits_w.shape
  y_lb = jnp.zeros((1,), jnp.int32) if y_lb is None else jnp.asarray(y_lb, jnp.int32)
  lb = jnp.zeros((y_lb.shape[0], c)) if logits_lb is None else jnp.asarray(logits_lb, jnp.float32)
  pseudo = {"ulb_w": logits_w}
  if logits_w2 is not None:
    pseudo["ulb_w2"] = jnp.asarray(logits_w2, jnp.float32)
  student = {"ulb_s": {"logits": jnp.zeros((u, c)) if logits_s is None
                       else jnp.asarray(logits_s, jnp.float32)}}
  for view, feats in (("ulb_w", feats_w), ("ulb_w2", feats_w2)):
    if feats is not None:
      student[view] = {"logits": logits_w, "features": jnp.asarray(feats, jnp.float32)}
  return StepInputs(
      logits_lb=lb, y_lb=y_lb, student=student, pseudo=pseudo,
      teacher_logits_lb=None if teacher_lb is None else jnp.asarray(teacher_lb, jnp.float32),
      idx_ulb=jnp.arange(u, dtype=jnp.int32) if idx is None else jnp.asarray(idx, jnp.int32),
      y_ulb=jnp.full((u,), -1, jnp.int32), step=jnp.int32(step),
      epoch=jnp.float32(step / steps_per_epoch), steps_per_epoch=steps_per_epoch)


_JITTED = {}


def run(method, state, inputs, cfg):
  """``method.unlabeled_loss`` compiled once per (method, cfg, steps_per_epoch) and shape."""
  key = (method.__name__, id(cfg), inputs.steps_per_epoch)
  if key not in _JITTED:
    spe = inputs.steps_per_epoch
    _JITTED[key] = (cfg, jax.jit(lambda s, i: method.unlabeled_loss(
        s, i._replace(steps_per_epoch=spe), cfg)))
  return _JITTED[key][1](state, inputs._replace(steps_per_epoch=None))


def cfg_with(method, **overrides):
  cfg = method.default_config()
  cfg.update(overrides)
  return cfg


def test_registry_and_interfaces():
  assert {"flexmatch", "freematch", "softmatch", "adacm", "full_supervised"} <= set(algorithms.names())
  ada = algorithms.get_algorithm("adacm")
  assert ada.labeled_supervision_weight == 0.5 and ada.needs_teacher_on_labeled
  assert {"ulb_w", "ulb_w2", "ulb_s"} <= set(ada.student_views)
  assert ada.pseudo_views == ("ulb_w", "ulb_w2")
  assert algorithms.get_algorithm("full_supervised").uses_all_labels


# ----------------------------------------------------------------------------- FlexMatch

def _flex_batch():
  """C = 4. Five samples:
  s0 idx 0: class 0, q = float32(0.95) exactly    s1 idx 3: class 1, q = 0.30
  s2 idx 5: class 2, q = 0.40                      s3 idx 1: class 2, q = 0.97
  s4 idx 6: class 0, q in [0.95 - 4e-7, 0.95), i.e. a few float32 ulps below 0.95"""
  rows = np.log([[0.9, 0.05, 0.03, 0.02], [0.25, 0.30, 0.25, 0.20], [0.2, 0.2, 0.4, 0.2],
                 [0.01, 0.01, 0.97, 0.01], [0.9, 0.05, 0.03, 0.02]]).astype(np.float32)
  rows = place_conf(rows, 0, F95)
  rows = place_conf(rows, 4, F95, ok=lambda c: (c < F95) & (c >= F95 - np.float32(4e-7)))
  return rows, np.array([0, 3, 5, 1, 6], np.int32)


@pytest.mark.parametrize("warmup,expected_beta", [
    # after the update selected = [0, 2, 0, 1, -1, -1, -1, -1]:
    # counts -1: 4, 0: 2, 1: 1, 2: 1, 3: 0
    (True, [2 / 4, 1 / 4, 1 / 4, 0 / 4]),    # denominator max(2, count(-1) = 4) = 4
    (False, [2 / 2, 1 / 2, 1 / 2, 0 / 2]),   # denominator max class count = 2
])
def test_flexmatch_previous_beta_warmup_and_ge(warmup, expected_beta):
  logits, idx = _flex_batch()
  state = {"selected": jnp.array([-1, 0, 0, 1, -1, -1, -1, -1], jnp.int32),
           "beta": jnp.array([1.0, 0.5, 0.0, 0.0], jnp.float32)}
  # previous beta -> thresholds 0.95 * b / (2 - b): [0.95 * 1 / 1, 0.95 * 0.5 / 1.5, 0, 0]
  #                                               = [0.95, 0.31667, 0, 0]
  out = flexmatch.unlabeled_loss(state, make_inputs(logits, idx=idx),
                                 cfg_with(flexmatch, thresh_warmup=warmup))
  # s0 0.95 >= 0.95: 1 | s1 0.30 < 0.3167: 0 | s2 0.40 >= 0 (beta 0 -> threshold 0): 1
  # s3 0.97 >= 0: 1   | s4 just below 0.95 < 0.95: 0 (with the NEW beta 0.5 it would pass:
  #                      0.95 * 0.5 / 1.5 = 0.3167, so this proves the previous beta is used)
  np.testing.assert_array_equal(out.mask, [1, 0, 1, 1, 0])
  np.testing.assert_array_equal(out.pseudo_labels, [0, 1, 2, 2, 0])
  # selected[idx] updated only where q >= 0.95 (s0 -> idx 0 = 0, s3 -> idx 1 = 2); idx 3
  # (s1, q = 0.30) keeps its old value 1: selected is never reset.
  np.testing.assert_array_equal(out.state["selected"], [0, 2, 0, 1, -1, -1, -1, -1])
  np.testing.assert_allclose(out.state["beta"], expected_beta, rtol=1e-6)
  # zero strong logits: CE = log 4 per sample; loss = (1 + 0 + 1 + 1 + 0) / 5 * log 4
  np.testing.assert_allclose(out.loss, 3 / 5 * math.log(4), rtol=1e-6)


def test_flexmatch_initial_state_everything_passes():
  state = flexmatch.init_state(flexmatch.default_config(), 4, 6)
  np.testing.assert_array_equal(state["selected"], [-1] * 6)
  np.testing.assert_array_equal(state["beta"], [0, 0, 0, 0])
  logits = np.log([[0.25, 0.25, 0.25, 0.25], [0.1, 0.6, 0.2, 0.1]])
  out = run(flexmatch, state, make_inputs(logits), flexmatch.default_config())
  np.testing.assert_array_equal(out.mask, [1, 1])   # beta 0 -> threshold 0
  # nothing reached 0.95: selected stays all -1, a single value fills the array -> skip
  np.testing.assert_array_equal(out.state["beta"], [0, 0, 0, 0])


def test_flexmatch_skip_when_single_value_fills_array():
  cfg = flexmatch.default_config()
  beta_prev = jnp.array([0.3, 0.2, 0.1], jnp.float32)
  # (a) all -1 and stays so (q = 0.6 < 0.95): count(-1) = N -> beta unchanged
  state = {"selected": jnp.full((3,), -1, jnp.int32), "beta": beta_prev}
  out = run(flexmatch, state, make_inputs(np.log([[0.6, 0.3, 0.1]])), cfg)
  np.testing.assert_allclose(out.state["beta"], [0.3, 0.2, 0.1])
  # (b) selected = [-1, 0]; idx 0 gets class 0 (q = 0.97): [0, 0], count(0) = N -> unchanged
  state = {"selected": jnp.array([-1, 0], jnp.int32), "beta": beta_prev}
  out = run(flexmatch, state, make_inputs(np.log([[0.97, 0.02, 0.01]]), idx=[0]), cfg)
  np.testing.assert_array_equal(out.state["selected"], [0, 0])
  np.testing.assert_allclose(out.state["beta"], [0.3, 0.2, 0.1])
  # (c) control: selected = [-1, 0, -1] -> [0, 0, -1]: counts -1: 1, 0: 2 -> beta [2/2, 0, 0]
  state = {"selected": jnp.array([-1, 0, -1], jnp.int32), "beta": beta_prev}
  out = run(flexmatch, state, make_inputs(np.log([[0.97, 0.02, 0.01]]), idx=[0]), cfg)
  np.testing.assert_allclose(out.state["beta"], [1.0, 0.0, 0.0])


def test_flexmatch_duplicate_index_last_wins():
  state = {"selected": jnp.full((4,), -1, jnp.int32), "beta": jnp.zeros((3,))}
  logits = np.log([[0.97, 0.02, 0.01], [0.02, 0.97, 0.01], [0.5, 0.3, 0.2]])
  # idx 2 selected twice (class 0 then class 1) and once not selected (q 0.5): class 1 wins
  out = run(flexmatch, state, make_inputs(logits, idx=[2, 2, 2]), flexmatch.default_config())
  np.testing.assert_array_equal(out.state["selected"], [-1, -1, 1, -1])


# ----------------------------------------------------------------------------- FreeMatch

FREE_W = [[0.9, 0.1], [0.6, 0.4], [0.2, 0.8], [0.7, 0.3]]
FREE_S = [[0.8, 0.2], [0.5, 0.5], [0.4, 0.6], [0.7, 0.3]]


def test_freematch_update_first_mask_and_fairness():
  cfg = cfg_with(freematch, ema_p=0.5)
  state = freematch.init_state(cfg, 2, 0)                  # time_p 1/2, p_model [1/2, 1/2]
  out = run(freematch, state, make_inputs(np.log(FREE_W), logits_s=np.log(FREE_S)), cfg)
  # q = [0.9, 0.6, 0.8, 0.7], mean 0.75 -> time_p = 0.5 * 0.5 + 0.5 * 0.75 = 0.625
  # mean p = [2.4 / 4, 1.6 / 4] = [0.6, 0.4] -> p_model = [0.55, 0.45]
  # hist(yhat = [0, 0, 1, 0]) = [0.75, 0.25] -> label_hist = [0.625, 0.375]
  np.testing.assert_allclose(out.state["time_p"], 0.625, rtol=1e-6)
  np.testing.assert_allclose(out.state["p_model"], [0.55, 0.45], rtol=1e-6)
  np.testing.assert_allclose(out.state["label_hist"], [0.625, 0.375], rtol=1e-6)
  # thresholds with the NEW values: [0.625, 0.625 * 0.45 / 0.55 = 0.51136]
  # s1: 0.6 < 0.625 -> 0 (with the old time_p 0.5 it would pass: update comes first)
  np.testing.assert_array_equal(out.mask, [1, 0, 1, 1])
  loss_u = (-math.log(0.8) - math.log(0.6) - math.log(0.7)) / 4
  # fairness over masked s0, s2, s3: student probs [.8,.2], [.4,.6], [.7,.3]
  # hist_s = [2/3, 1/3]; mean p_s = [1.9/3, 1.1/3]
  # b = SumNorm([1.9/3 * 3/2, 1.1/3 * 3]) = SumNorm([0.95, 1.1]) = [0.95, 1.1] / 2.05
  # a = SumNorm([0.55 / 0.625, 0.45 / 0.375]) = SumNorm([0.88, 1.2]) = [0.88, 1.2] / 2.08
  fair = (0.88 / 2.08) * math.log(0.95 / 2.05 + 1e-12) + (1.2 / 2.08) * math.log(1.1 / 2.05 + 1e-12)
  assert fair < 0
  np.testing.assert_allclose(out.metrics["loss_fair"], fair, rtol=1e-5)
  np.testing.assert_allclose(out.loss, loss_u + 0.01 * fair, rtol=1e-5)   # reference sign
  flipped = run(freematch, state, make_inputs(np.log(FREE_W), logits_s=np.log(FREE_S)),
                cfg_with(freematch, ema_p=0.5, flip_fairness_sign=True))
  np.testing.assert_allclose(flipped.loss, loss_u - 0.01 * fair, rtol=1e-5)


def test_freematch_empty_mask_no_fairness_finite_grad():
  cfg = cfg_with(freematch, ema_p=0.5)
  state = {"time_p": jnp.float32(0.9), "p_model": jnp.full((4,), 0.25),
           "label_hist": jnp.full((4,), 0.25)}
  logits_w = np.log([[0.4, 0.2, 0.2, 0.2]] * 2)
  # time_p = 0.5 * 0.9 + 0.5 * 0.4 = 0.65 > q = 0.4 -> mask empty -> no fairness term
  def total(logits_s):
    return run(freematch, state, make_inputs(logits_w, logits_s=logits_s), cfg).loss
  s = jnp.asarray(np.log([[0.1, 0.2, 0.3, 0.4], [0.7, 0.1, 0.1, 0.1]]), jnp.float32)
  out = run(freematch, state, make_inputs(logits_w, logits_s=s), cfg)
  np.testing.assert_array_equal(out.mask, [0, 0])
  assert float(out.metrics["loss_fair"]) == 0.0 and float(out.loss) == 0.0
  g = jax.grad(total)(s)
  assert np.all(np.isfinite(g)) and np.all(g == 0)


def test_freematch_fairness_empty_class_infinity_is_zero():
  # masked probs [.7,.2,.1], [.6,.3,.1]: both arg-max 0 -> hist_s = [1, 0, 0] (1/0 -> 0)
  # mean p_s = [0.65, 0.25, 0.1] -> b = SumNorm([0.65, 0, 0]) = [1, 0, 0]
  # a = SumNorm([0.5 / 0.5, 0.3 / 0.25, 0.2 / 0.25]) = [1, 1.2, 0.8] / 3
  # L = 1/3 log(1 + 1e-12) + (1.2 / 3 + 0.8 / 3) log(1e-12)
  got = freematch.fairness_loss(jnp.ones(2), logits_of([[0.7, 0.2, 0.1], [0.6, 0.3, 0.1]]),
                                jnp.array([0.5, 0.3, 0.2]), jnp.array([0.5, 0.25, 0.25]))
  expected = (1 / 3) * math.log(1 + 1e-12) + (2.0 / 3) * math.log(1e-12)
  np.testing.assert_allclose(got, expected, rtol=1e-5)


# ----------------------------------------------------------------------------- SoftMatch

def test_softmatch_update_first_unbiased_variance_no_alignment():
  cfg = cfg_with(softmatch, ema_p=0.5, dist_align=False)
  state = softmatch.init_state(cfg, 2, 0)                       # mu 1/2, var 1
  probs = [[0.9, 0.1], [0.6, 0.4], [0.3, 0.7]]
  out = run(softmatch, state, make_inputs(np.log(probs)), cfg)
  # q = [0.9, 0.6, 0.7]; mean 2.2 / 3; deviations [0.5/3, -0.4/3, -0.1/3]
  # unbiased var = (0.25 + 0.16 + 0.01) / 9 / (3 - 1) = 0.42 / 18
  mean_q, var_q = 2.2 / 3, 0.42 / 18
  mu, var = 0.5 * 0.5 + 0.5 * mean_q, 0.5 * 1.0 + 0.5 * var_q
  np.testing.assert_allclose(out.state["mu"], mu, rtol=1e-6)
  np.testing.assert_allclose(out.state["var"], var, rtol=1e-6)   # ddof=0 would give 0.507778
  # the NEW mu (0.61667) is above s1's q = 0.6, so s1 is down-weighted (old mu 0.5 would give 1)
  w1 = math.exp(-((0.6 - mu) ** 2) / (2 * var / 2 ** 2))
  np.testing.assert_allclose(out.mask, [1.0, w1, 1.0], rtol=1e-6)
  assert out.mask[1] < 1.0
  np.testing.assert_array_equal(out.pseudo_labels, [0, 0, 1])


def test_softmatch_distribution_alignment_first_batch_and_raw_pseudo_labels():
  cfg = cfg_with(softmatch, ema_p=0.5)                           # dist_align, uniform target
  state = softmatch.init_state(cfg, 2, 0)
  probs = [[0.9, 0.1], [0.55, 0.45], [0.3, 0.7]]
  out = run(softmatch, state, make_inputs(np.log(probs)), cfg)
  # first batch: p_model = batch mean (not an EMA with the placeholder)
  p_model = [(0.9 + 0.55 + 0.3) / 3, (0.1 + 0.45 + 0.7) / 3]      # [0.583333, 0.416667]
  np.testing.assert_allclose(out.state["p_model"], p_model, rtol=1e-6)
  assert int(out.state["p_model_ready"]) == 1

  def aligned(p):
    r = [(p[k] * (0.5 + 1e-6) / (p_model[k] + 1e-6)) for k in range(2)]
    return [x / sum(r) for x in r]
  q = [max(aligned(p)) for p in probs]        # s1 aligned = [0.4661, 0.5339]: arg-max 1
  mean_q = sum(q) / 3
  var_q = sum((x - mean_q) ** 2 for x in q) / 2
  mu, var = 0.5 * 0.5 + 0.5 * mean_q, 0.5 * 1.0 + 0.5 * var_q
  np.testing.assert_allclose(out.state["mu"], mu, rtol=1e-5)
  np.testing.assert_allclose(out.state["var"], var, rtol=1e-5)
  w = [math.exp(-(min(x - mu, 0.0) ** 2) / (2 * var / 4)) for x in q]
  np.testing.assert_allclose(out.mask, w, rtol=1e-5)
  np.testing.assert_array_equal(out.pseudo_labels, [0, 0, 1])   # raw arg-max (s1 -> 0)
  # second batch: EMA from the first batch's estimate
  out2 = run(softmatch, out.state, make_inputs(np.log([[0.5, 0.5], [0.5, 0.5]])), cfg)
  np.testing.assert_allclose(out2.state["p_model"],
                             [0.5 * p_model[0] + 0.25, 0.5 * p_model[1] + 0.25], rtol=1e-6)


def test_softmatch_needs_two_unlabeled_samples():
  cfg = softmatch.default_config()
  with pytest.raises(ValueError, match="unbiased variance"):
    softmatch.unlabeled_loss(softmatch.init_state(cfg, 2, 0), make_inputs(np.log([[0.6, 0.4]])), cfg)


# ----------------------------------------------------------------------------- Ada-CM

def _adacm_step(state, step, teacher_probs, y_lb, cfg, ulb_w=None, ulb_w2=None):
  ulb_w = [[0.34, 0.33, 0.33]] if ulb_w is None else ulb_w
  ulb_w2 = ulb_w if ulb_w2 is None else ulb_w2
  u = len(ulb_w)
  feats = np.tile(np.eye(2, dtype=np.float32)[:1], (u, 1))
  inputs = make_inputs(np.log(ulb_w), logits_w2=np.log(ulb_w2), feats_w=feats, feats_w2=feats,
                       teacher_lb=np.log(teacher_probs), y_lb=y_lb, step=step, steps_per_epoch=2)
  return run(adacm, state, inputs, cfg)


def test_adacm_epoch_thresholds():
  cfg = adacm.default_config()          # epoch_steps 0 -> steps_per_epoch = 2
  state = adacm.init_state(cfg, 3, 0)
  np.testing.assert_allclose(state["tau"], [0.8] * 3)
  y = [0, 1, 2]
  # teacher on the labeled batch: class 0 correct (0.99), class 1 correct (0.90),
  # class 2 wrongly predicted as 0
  teacher = [[0.99, 0.005, 0.005], [0.05, 0.90, 0.05], [0.6, 0.2, 0.2]]
  # epoch 1 (steps 0, 1): after it tau_c = max(0.8, 0.97 mu_c sigmoid(1));
  # 0.97 * 0.99 * 0.7311 = 0.702 < 0.8 -> every threshold is the floor
  for step in (0, 1):
    state = _adacm_step(state, step, teacher, y, cfg).state
  np.testing.assert_allclose(state["tau"], [0.8] * 3)
  # epoch 2 (steps 2, 3): tau_0 = 0.97 * 0.99 * sigmoid(2); tau_1 = max(0.8, 0.97 * 0.9 * 0.8808
  # = 0.7689) = 0.8; class 2 has no correct sample -> 0.8
  out = _adacm_step(state, 2, teacher, y, cfg)
  np.testing.assert_allclose(out.state["tau"], [0.8] * 3)      # not the last step of the epoch
  state = _adacm_step(out.state, 3, teacher, y, cfg).state
  tau0 = 0.97 * 0.99 / (1 + math.exp(-2))                      # 0.84583
  np.testing.assert_allclose(state["tau"], [tau0, 0.8, 0.8], rtol=1e-5)
  # epoch 3 uses tau0 for class 0: q = 0.84 < tau0 -> 0, q = 0.85 >= tau0 -> 1. Its labeled
  # batches: class 0 never correct, class 1 correct at 0.9, class 2 wrong.
  wrong = [[0.1, 0.8, 0.1], [0.05, 0.90, 0.05], [0.6, 0.2, 0.2]]
  out = _adacm_step(state, 4, wrong, y, cfg, ulb_w=[[0.84, 0.08, 0.08], [0.85, 0.1, 0.05]])
  np.testing.assert_array_equal(out.mask, [0, 1])
  state = _adacm_step(out.state, 5, wrong, y, cfg).state
  # no memory: class 0 (tau0 before) falls back to 0.8; class 1 = 0.97 * 0.9 * sigmoid(3)
  tau1 = 0.97 * 0.9 / (1 + math.exp(-3))                       # 0.83160
  np.testing.assert_allclose(state["tau"], [0.8, tau1, 0.8], rtol=1e-5)
  # epoch_steps overrides the trainer's epoch: with 3 steps, step 1 is not an epoch end
  cfg3 = cfg_with(adacm, epoch_steps=3)
  s = adacm.init_state(cfg3, 3, 0)
  s["tau"] = jnp.array([0.9, 0.9, 0.9])
  np.testing.assert_allclose(_adacm_step(s, 1, teacher, y, cfg3).state["tau"], [0.9] * 3)


def test_adacm_two_view_pseudo_labels():
  cfg = adacm.default_config()
  state = adacm.init_state(cfg, 3, 0)
  # s0: views [.9,.05,.05] and [.5,.45,.05] -> mean [.7,.25,.05]: q 0.7 < 0.8 -> 0
  # s1: views [.6,.35,.05] and [.2,.75,.05] -> mean [.4,.55,.05]: class 1
  # s2: views [.85,.1,.05] and [.75,.2,.05] -> mean [.8,.15,.05]: q 0.8 >= 0.8 -> 1
  out = _adacm_step(state, 0, [[0.9, 0.05, 0.05]], [0], cfg,
                    ulb_w=[[0.9, 0.05, 0.05], [0.6, 0.35, 0.05], [0.85, 0.1, 0.05]],
                    ulb_w2=[[0.5, 0.45, 0.05], [0.2, 0.75, 0.05], [0.75, 0.2, 0.05]])
  np.testing.assert_array_equal(out.pseudo_labels, [0, 1, 0])
  # 0.8 = (0.85 + 0.75) / 2 is not exactly representable: compare with the computed mean
  q2 = (jax.nn.softmax(jnp.log(jnp.array([0.85, 0.1, 0.05])))
        + jax.nn.softmax(jnp.log(jnp.array([0.75, 0.2, 0.05])))).max() / 2
  np.testing.assert_array_equal(out.mask, [0, 0, float(q2 >= np.float32(0.8))])


def test_adacm_contrastive_only_on_low_confidence():
  cfg = cfg_with(adacm, temperature=0.5, base_temperature=0.5)
  state = adacm.init_state(cfg, 3, 0)
  ulb = [[0.9, 0.05, 0.05], [0.5, 0.3, 0.2], [0.6, 0.3, 0.1]]     # mask [1, 0, 0]
  f1 = np.array([[0.0, -1.0], [1.0, 0.0], [0.0, 1.0]], np.float32)
  f2 = np.array([[-1.0, 0.0], [0.6, 0.8], [0.8, 0.6]], np.float32)

  def loss_for(f1, f2):
    inputs = make_inputs(np.log(ulb), logits_w2=np.log(ulb), feats_w=f1, feats_w2=f2,
                         teacher_lb=np.log([[0.9, 0.05, 0.05]]), y_lb=[0])
    return run(adacm, state, inputs, cfg)
  out = loss_for(f1, f2)
  np.testing.assert_array_equal(out.mask, [1, 0, 0])
  # anchors a = f1[1] = [1,0], b = f1[2] = [0,1], c = f2[1] = [.6,.8], d = f2[2] = [.8,.6]
  # cosines: ab 0, ac .6, ad .8, bc .8, bd .6, cd .96; T = 0.5 -> s / T
  e = math.exp
  la = -math.log(e(1.2) / (e(0) + e(1.2) + e(1.6)))      # a: positive c; others b, c, d
  lb = -math.log(e(1.2) / (e(0) + e(1.6) + e(1.2)))      # b: positive d; others a, c, d
  lc = -math.log(e(1.2) / (e(1.2) + e(1.6) + e(1.92)))   # c: positive a; others a, b, d
  ld = -math.log(e(1.2) / (e(1.6) + e(1.2) + e(1.92)))   # d: positive b; others a, b, c
  con = (la + lb + lc + ld) / 4
  np.testing.assert_allclose(out.metrics["loss_con"], con, rtol=1e-5)
  # zero strong logits: CE = log 3; L_u = 1/3 log 3; total L_u + 0.1 L_con
  np.testing.assert_allclose(out.loss, math.log(3) / 3 + 0.1 * con, rtol=1e-5)
  # the confident sample's features do not enter the loss
  g1 = f1.copy(); g1[0] = [0.6, -0.8]
  np.testing.assert_allclose(loss_for(g1, f2).metrics["loss_con"], con, rtol=1e-6)
  # one low-confidence sample: its only contrast is its positive -> log 1 = 0
  assert abs(float(adacm.simclr_loss(f1, f2, jnp.array([0.0, 1.0, 0.0]), 0.07))) < 1e-6
  assert float(adacm.simclr_loss(f1, f2, jnp.zeros(3), 0.07)) == 0.0


# ----------------------------------------------------------------------------- 8 devices

def _random_case(name, rng, u=16, b=8, c=7, n=40):
  k = iter(jax.random.split(jax.random.PRNGKey(rng), 8))
  batch = {
      "logits_w": 6.0 * jax.random.normal(next(k), (u, c)),
      "logits_w2": 6.0 * jax.random.normal(next(k), (u, c)),
      "logits_s": jax.random.normal(next(k), (u, c)),
      "logits_lb": jax.random.normal(next(k), (b, c)),
      "teacher_lb": 4.0 * jax.random.normal(next(k), (b, c)),
      "y_lb": jax.random.randint(next(k), (b,), 0, c),
      "feats_w": jax.random.normal(next(k), (u, 5)),
      "feats_w2": jax.random.normal(next(k), (u, 5)),
      # repeated indices across shards exercise FlexMatch's deterministic scatter
      "idx": jnp.asarray(np.random.default_rng(rng).integers(0, n // 4, u), jnp.int32),
  }
  method = {"flexmatch": flexmatch, "freematch": freematch, "softmatch": softmatch,
            "adacm": adacm}[name]
  algo = algorithms.get_algorithm(name)
  cfg = method.default_config()
  if name in ("freematch", "softmatch"):
    cfg.ema_p = 0.5                      # make the statistics move visibly
  state = algo.init_state(cfg, c, n)
  if name == "flexmatch":
    state["selected"] = jnp.asarray(np.random.default_rng(rng + 1).integers(-1, c, n), jnp.int32)
    state["beta"] = jnp.linspace(0.0, 1.0, c, dtype=jnp.float32)
  return algo, cfg, state, batch


def _call(algo, cfg, state, batch):
  inputs = make_inputs(batch["logits_w"], logits_s=batch["logits_s"], idx=batch["idx"],
                       y_lb=batch["y_lb"], teacher_lb=batch["teacher_lb"],
                       logits_lb=batch["logits_lb"], logits_w2=batch["logits_w2"],
                       feats_w=batch["feats_w"], feats_w2=batch["feats_w2"], step=0,
                       steps_per_epoch=1)
  out = algo.unlabeled_loss(state, inputs, cfg)
  return out.loss, out.state, out.mask, out.pseudo_labels


@pytest.mark.parametrize("name", ["flexmatch", "freematch", "softmatch", "adacm"])
def test_state_update_8_devices_equals_1_device(name):
  devices = jax.devices()
  if len(devices) < 8:
    pytest.skip("needs 8 devices (XLA_FLAGS=--xla_force_host_platform_device_count=8 before "
                "jax is imported; tests/conftest.py sets it)")
  algo, cfg, state, batch = _random_case(name, 3)
  fn = jax.jit(lambda s, bt: _call(algo, cfg, s, bt))
  one = jax.device_put((state, batch), devices[0])
  ref = fn(*one)
  mesh = Mesh(np.asarray(devices[:8]), ("data",))
  sharded_batch = jax.device_put(batch, NamedSharding(mesh, P("data")))
  assert len(sharded_batch["logits_w"].sharding.device_set) == 8
  got = fn(jax.device_put(state, NamedSharding(mesh, P())), sharded_batch)
  for r, g in zip(jax.tree.leaves(ref), jax.tree.leaves(got)):
    r, g = np.asarray(r), np.asarray(g)
    if np.issubdtype(r.dtype, np.integer):
      np.testing.assert_array_equal(g, r)
    else:
      np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-6)
  if name == "flexmatch":   # the case really scatters: some q >= 0.95
    assert not np.array_equal(np.asarray(ref[1]["selected"]), np.asarray(state["selected"]))
