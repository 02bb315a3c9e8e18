"""Reference-exact behaviours (issue #17): DTM's two-view pseudo-labels and Lx + 0.5 Lu,
FixMatch's soft targets, the reference EMA's weight decay, EMA-teacher threshold statistics
with student pseudo-labels, the held-out model selection, and the reference presets.

Expected numbers are worked out by hand in the comments.
"""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_config
from ssfer_jax import algorithms, rundir, selection, train
from ssfer_jax import step as step_lib
from ssfer_jax.algorithms import thresholds
from ssfer_jax.algorithms.base import StepInputs
from ssfer_jax.data import pipeline

LN4 = math.log(4.0)


def _inputs(p_w, p_w2=None, logits_s=None, step=0, spe=10):
  logits_w = jnp.log(jnp.asarray(p_w, jnp.float32))
  u, c = logits_w.shape
  pseudo = {"ulb_w": logits_w}
  if p_w2 is not None:
    pseudo["ulb_w2"] = jnp.log(jnp.asarray(p_w2, jnp.float32))
  logits_s = jnp.zeros((u, c)) if logits_s is None else jnp.asarray(logits_s, jnp.float32)
  return StepInputs(
      logits_lb=jnp.zeros((2, c)), y_lb=jnp.zeros((2,), jnp.int32),
      student={"ulb_s": {"logits": logits_s}}, pseudo=pseudo, teacher_logits_lb=jnp.zeros((2, c)),
      idx_ulb=jnp.arange(u, dtype=jnp.int32), y_ulb=jnp.full((u,), -1, jnp.int32),
      step=jnp.int32(step), epoch=jnp.float32(step / spe), steps_per_epoch=spe)


# Two weak views of 4 unlabeled samples, C = 4, every threshold at DTM's initial 0.8:
#   s0: mean of [.95,.03,.01,.01] and [.75,.10,.10,.05] = [.85,.065,.055,.03] -> 0, .85 >= .8: kept
#   s1: mean of [.90,.04,.03,.03] and [.50,.30,.10,.10] = [.70,.17,.065,.065] -> 0, .70: dropped
#       (the first view alone, .90, would pass)
#   s2: mean of [.05,.70,.20,.05] and [.02,.96,.01,.01] = [.035,.83,.105,.03] -> 1, .83: kept
#       (the first view alone, .70, would fail)
#   s3: mean of [.60,.4-2e-5,1e-5,1e-5] and [.10,.80,.05,.05] ~ [.35,.60,.025,.025] -> 1 (the
#       views disagree), .60: dropped
P_W = [[0.95, 0.03, 0.01, 0.01], [0.90, 0.04, 0.03, 0.03], [0.05, 0.70, 0.20, 0.05],
       [0.60, 0.40 - 2e-5, 1e-5, 1e-5]]
P_W2 = [[0.75, 0.10, 0.10, 0.05], [0.50, 0.30, 0.10, 0.10], [0.02, 0.96, 0.01, 0.01],
        [0.10, 0.80, 0.05, 0.05]]


def test_dtm_defaults_two_views_and_half_weight():
  dtm = algorithms.get_algorithm("dtm")
  cfg = dtm.default_config()
  assert cfg.pseudo_from_two_views and cfg.lambda_u == 0.5 and not cfg.use_snl
  assert dtm.labeled_supervision_weight == 1.0          # L = 1.0 * Lx + 0.5 * Lu
  assert dtm.pseudo_views_for(cfg) == ("ulb_w", "ulb_w2")
  assert dtm.views_for(cfg) == ("ulb_s", "ulb_w", "ulb_w2")
  dta = algorithms.get_algorithm("dta_snl")
  assert not dta.default_config().pseudo_from_two_views and dta.default_config().lambda_u == 1.0
  assert dta.views_for(dta.default_config()) == ("ulb_s", "ulb_w")


def test_dtm_two_view_mask_and_weighted_loss():
  dtm = algorithms.get_algorithm("dtm")
  cfg = dtm.default_config()
  state = dtm.init_state(cfg, 4, 4)
  out = dtm.unlabeled_loss(state, _inputs(P_W, P_W2), cfg)
  np.testing.assert_array_equal(out.mask, [1, 0, 1, 0])
  np.testing.assert_array_equal(out.pseudo_labels, [0, 0, 1, 1])
  # Strong logits all 0: CE = ln 4 for every sample. Lu = mean([1,0,1,0] * ln 4) = ln4 / 2;
  # DTM's unlabeled term 0.5 * Lu = ln4 / 4.
  np.testing.assert_allclose(out.loss, LN4 / 4, rtol=1e-6)
  # One weak view (dta_snl's default) masks differently: s1 .90 passes, s2 .70 fails.
  cfg1 = dtm.default_config()
  cfg1.pseudo_from_two_views = False
  out1 = dtm.unlabeled_loss(state, _inputs(P_W, P_W2), cfg1)
  np.testing.assert_array_equal(out1.mask, [1, 1, 0, 0])
  np.testing.assert_array_equal(out1.pseudo_labels, [0, 0, 1, 0])


def test_dta_snl_two_view_option_needs_the_view():
  dta = algorithms.get_algorithm("dta_snl")
  cfg = dta.default_config()
  cfg.pseudo_from_two_views = True
  assert dta.pseudo_views_for(cfg) == ("ulb_w", "ulb_w2")
  with pytest.raises(ValueError, match="did not run on view 'ulb_w2'.*pseudo_views"):
    dta.unlabeled_loss(dta.init_state(cfg, 4, 4), _inputs(P_W), cfg)


def test_fixmatch_soft_targets():
  fm = algorithms.get_algorithm("fixmatch")
  cfg = fm.default_config()
  assert cfg.hard_label
  # s0: p = [.96, .02, .01, .01] passes 0.95; s1: p = [.5, .3, .1, .1] is masked.
  p_w = [[0.96, 0.02, 0.01, 0.01], [0.5, 0.3, 0.1, 0.1]]
  # Strong logits log q with q = [1/2, 1/4, 1/8, 1/8]: -log q = [1, 2, 3, 3] * ln 2.
  logits_s = np.log([[0.5, 0.25, 0.125, 0.125]] * 2)
  hard = fm.unlabeled_loss({}, _inputs(p_w, logits_s=logits_s), cfg)
  # hard: CE(s0, class 0) = ln 2; mean over U = 2 with mask [1, 0] -> ln2 / 2.
  np.testing.assert_allclose(hard.loss, math.log(2) / 2, rtol=1e-6)
  cfg.hard_label = False
  soft = fm.unlabeled_loss({}, _inputs(p_w, logits_s=logits_s), cfg)
  # soft: -sum p log q = (.96*1 + .02*2 + .01*3 + .01*3) ln 2 = 1.06 ln 2; mean -> .53 ln 2.
  np.testing.assert_allclose(soft.loss, 0.53 * math.log(2), rtol=1e-5)
  np.testing.assert_array_equal(soft.mask, [1, 0])
  np.testing.assert_array_equal(soft.pseudo_labels, [0, 0])


def _one_step(tmp_path, name, algorithm="fixmatch", **overrides):
  config = tiny_config(algorithm, **overrides)
  trainer = train.Trainer(config, tmp_path / name)
  state = trainer.fresh_state()
  host = next(pipeline.TrainBatches(trainer.train_data, config, trainer.algorithm,
                                    trainer.dataset.channels))
  before = jax.device_get(state)
  new, metrics = trainer.train_step(state, jax.tree.map(jnp.asarray, host))
  return trainer, before, jax.device_get(new), host, jax.device_get(metrics)


def test_ema_student_decay_after_the_ema_update(tmp_path):
  d = 0.01
  plain = _one_step(tmp_path, "plain")[2]
  decayed = _one_step(tmp_path, "decayed", **{"ema.student_decay": d})[2]
  # Reference WeightEMA.step: ema <- a * ema + (1 - a) * param, THEN param *= 1 - wd (params
  # and BatchNorm statistics): the teacher is unchanged, the student is scaled by 1 - wd.
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b),
               plain.ema_params, decayed.ema_params)
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b),
               plain.ema_batch_stats, decayed.ema_batch_stats)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(b, a * (1 - d), rtol=1e-6, atol=0),
               plain.params, decayed.params)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(b, a * (1 - d), rtol=1e-6, atol=0),
               plain.batch_stats, decayed.batch_stats)
  assert jax.tree.leaves(plain.batch_stats)  # the small CNN has BatchNorm statistics


def test_dtm_student_pseudo_labels_with_teacher_threshold_statistics(tmp_path):
  trainer, before, after, host, m = _one_step(
      tmp_path, "dtm", "dtm", pseudo_label_source="student",
      threshold_stats_source="teacher")
  assert "x_ulb_w2" in host  # the pipeline feeds DTM's second weak view
  cfg = trainer.config
  x = step_lib.normalize(jnp.asarray(host["x_lb"]), cfg.data.mean, cfg.data.std)
  logits = trainer.model.apply({"params": before.ema_params,
                                "batch_stats": before.ema_batch_stats}, x, train=False)["logits"]
  s, n = thresholds.labeled_correct_stats(logits, jnp.asarray(host["y_lb"]), 7)
  assert trainer.train_data.steps_per_epoch > 1  # epoch cadence: step 0 only accumulates
  np.testing.assert_allclose(after.algo["sum"], s, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(after.algo["count"], n)
  # The step's total is 1.0 * L_x + (0.5 L_u, already weighted by the algorithm).
  np.testing.assert_allclose(m["loss"], m["loss_x"] + m["loss_u"], rtol=1e-6)
  np.testing.assert_allclose(m["loss_u"], m["algo/loss_u"], rtol=1e-6)


def test_selection_by_validation_picks_the_val_best_step():
  rec = lambda t, v: {"teacher": {"top1": t, "mean_class_acc": t - .1, "macro_f1": t - .2},
                      "student": {"top1": t, "mean_class_acc": t, "macro_f1": t},
                      "val": {"teacher": {"top1": v}, "student": {"top1": v}}}
  # test top-1 .50/.70/.60, held-out .80/.75/.80: the held-out best is step 4 (earliest of
  # the tie at .80), where the test top-1 is .50 (the test-selected best would be .70).
  history = {4: rec(.50, .80), 8: rec(.70, .75), 12: rec(.60, .80)}
  got = selection.by_validation(history, "teacher")
  assert got["val_best_step"] == 4 and got["test_top1_at_val_best"] == .50
  assert got["test_mean_class_acc_at_val_best"] == pytest.approx(.40)
  assert selection.by_validation({4: {"teacher": {}}}, "teacher") == {}


def test_val_fraction_run_is_disjoint_and_reports_both_selections(tmp_path):
  config = tiny_config("fixmatch", **{"eval.val_fraction": 0.1, "train.num_steps": 4,
                                      "train.eval_every": 2})
  summary = train.run(config, tmp_path)
  obj = json.loads((tmp_path / "labeled_ids.json").read_text())
  val, ids = np.asarray(obj["val_ids"]), np.asarray(obj["labeled_ids"])
  assert len(val) == 24 and not np.intersect1d(val, ids).size       # 10 % of 240
  t = train.Trainer(config, tmp_path)
  assert not np.intersect1d(t.train_data.unlabeled.ids, val).size
  assert len(t.train_data.unlabeled) == 240 - 24 - 28
  hist = rundir.eval_history(tmp_path)
  assert set(hist) == {2, 4} and all("val" in r for r in hist.values())
  teacher = summary["teacher"]
  assert teacher["best_selected_on"] == "test"
  vb = teacher["val_best_step"]
  assert teacher["test_top1_at_val_best"] == hist[vb]["teacher"]["top1"]
  assert summary["labeled_ids_sha256"] == obj["sha256"] and summary["num_val"] == 24
  assert "selection on the test set" in summary["selection_note"]


@pytest.mark.parametrize("path,method", [("configs/reference/adacm_rafdb.py", "adacm"),
                                         ("configs/reference/dtm.py", "dtm")])
def test_reference_presets_load_and_encode_the_recipe(path, method):
  from test_thresholds import _load_config
  from ssfer_jax.config import validate
  get_config = _load_config(path)
  c = get_config(None)
  validate(c)
  assert (c.algorithm, c.dataset.name) == (method, "rafdb")
  assert (c.pseudo_label_source, c.threshold_stats_source) == ("student", "teacher")
  assert c.ema.student_decay == pytest.approx(0.02 * 5e-4) and not c.ema.warmup
  assert (c.data.batch_size, c.data.uratio, c.data.image_size) == (16, 1, 224)
  assert c.train.num_steps == 20 * 800 and c.train.eval_every == 800 == c.algo.epoch_steps
  assert (c.data.label_protocol, c.data.num_labels) == ("adacm", 4000)
  assert get_config("labels=1000,epochs=2").train.num_steps == 1600
  with pytest.raises(ValueError, match=path):
    get_config("no_snl")


@pytest.mark.parametrize("path", ["configs/reference/adacm_rafdb.py", "configs/reference/dtm.py"])
def test_reference_presets_train_on_synthetic_overrides(tmp_path, path):
  """The presets with ``--config.dataset.name=synthetic`` and small sizes (the CLI path)."""
  import subprocess
  import sys
  overrides = {"dataset.name": "synthetic", "dataset.num_train": 240, "dataset.num_test": 32,
               "dataset.render_size": 24, "data.image_size": 24, "model.backbone": "small_cnn",
               "data.label_protocol": "per_class", "data.labels_per_class": 4,
               "data.batch_size": 8, "train.num_steps": 4, "train.eval_every": 2,
               "train.checkpoint_every": 4, "algo.epoch_steps": 2, "mesh.num_devices": 1,
               "train.progress": False, "eval.batch_size": 32}
  args = [f"--config.{k}={v}" for k, v in overrides.items()]
  r = subprocess.run([sys.executable, "-m", "ssfer_jax.main", f"--config={path}",
                      f"--workdir={tmp_path}"] + args, capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  summary = json.loads((tmp_path / "summary.json").read_text())
  assert summary["num_steps"] == 4 and summary["teacher"]["best_selected_on"] == "test"
  assert "28 labeled (4 4 4 4 4 4 4 per class)" in r.stdout  # the banner
  assert f"sha256 {summary['labeled_ids_sha256']}" in r.stdout
