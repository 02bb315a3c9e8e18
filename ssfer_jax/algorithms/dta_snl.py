"""The project's method, DTA + SNL (SPEC §1); its 2023 predecessor DTM (SPEC §2), the same
machinery with other settings, is the record in ``dtm.py``.

``dta_snl`` (Cai et al., 2026): the pseudo-label source (EMA teacher by default) labels
the weak view of every unlabeled sample; samples whose confidence passes their class's
**dynamic threshold** (DTA, ``thresholds.py``) train the student's strong view with the
pseudo-label; samples that fail it train the strong view on their **complementary
labels** (SNL, ``snl.py``). Loss (the step adds ``lambda_x * CE(labeled)``)::

    lambda_u * mean(mask * CE(strong, pseudo)) + lambda_neg * ramp(step) * L_neg

``dtm`` (the authors' 2023 Dynamic Threshold Module, CZP-1/SSL-DTM ``train_dtm.py``): the
same machinery with the 2023 settings: labeled-correct statistics, an EMA with m = 0.9
applied once per epoch, floor 0.8, the reset rule (SPEC §2.1), no SNL; as in that code's
``train()``, the pseudo-label and its confidence come from the mean of the softmaxes of
**two weak views**, ``p = (softmax(w1) + softmax(w2)) / 2`` (the Ada-CM machinery,
``base.two_view_confidence``), and the loss is ``L_x + 0.5 L_u`` (``lambda_u = 0.5``).
``configs/reference/dtm.py`` adds the rest of the reference recipe (student pseudo-labels,
EMA-teacher threshold statistics, the EMA's weight decay).

``dta_snl`` keeps one weak view by default (``pseudo_from_two_views = False``): the 2026
paper describes "the weak view" and is silent on a second one, the project's published
default results must not move, and a second view costs one more forward pass of the
unlabeled batch through the pseudo-label source. ``pseudo_from_two_views = True`` gives
it DTM's two-view mean (the complementary labels of SNL are then read off that mean).

**[reconstructed]** Both the DTA update rule and SNL are reconstructions (SPEC §1.1,
§1.2); see the docstrings of ``thresholds.py`` and ``snl.py``. The defaults below that
the SPEC does not fix are this project's choices: ``threshold_max = 0.95`` for DTA
(a ceiling so that a teacher that becomes near-certain on its labeled set cannot starve
a class; ``threshold_max = 1.0`` removes it), ``lambda_neg = 1.0`` with a
1000-step linear ramp, ``neg_eps = 1e-7``, and masking with the thresholds from
*before* this step's update (``threshold_update_first = False``).

Hyper-parameters (``config.algo``):

  use_dta                 False: fixed threshold ``fixed_tau`` for every class (ablation)
  fixed_tau               the fixed threshold used when use_dta is False (FixMatch's 0.95)
  threshold_source        'labeled_correct' | 'unlabeled' (statistic mu_c)
  threshold_cadence       'step' | 'epoch'
  epoch_steps             > 0: length of an 'epoch' for that cadence (DTM's reference: 800
                          iterations); 0: the trainer's steps_per_epoch (a pass over the data)
  threshold_rule          'ema' | 'adacm_ramp' (tau = max(min, 0.97 mu sigmoid(epoch)))
  threshold_momentum      m of the EMA rule, per update
  threshold_min / _max    floor / ceiling
  threshold_init          initial tau_c
  threshold_dtm_reset     DTM's reset rule (reset to threshold_reset_value)
  threshold_reset_value   0.8
  threshold_update_first  True: mask with the thresholds updated on this step's batch
  pseudo_from_two_views   pseudo-labels from the mean softmax of two weak views (DTM's rule)
  lambda_u                weight of the positive pseudo-label loss
  use_snl                 Selective Negative Learning on/off (ablation)
  tau_neg                 complementary labels: classes (not the arg-max) with p < tau_neg
  k                       > 0: the k least likely classes instead (0: use tau_neg)
  lambda_neg              weight of L_neg, ramped linearly over neg_rampup_steps
  neg_rampup_steps        linear ramp-up of lambda_neg (0: full weight at once)
  neg_eps                 eps in log(1 - p + eps)

``UnlabeledOutput.thresholds``: the (C,) thresholds used for this step's mask (logged as
``algo/tau``). Metrics (``UnlabeledOutput.metrics``): ``loss_u`` (weighted positive loss);
with SNL: ``loss_neg`` (unweighted L_neg), ``neg_weight`` (lambda_neg * ramp),
``num_complementary`` (complementary labels per unlabeled sample), ``neg_selected_rate`` and
``complementary_error`` (fraction of complementary labels equal to the true class, over
samples with a known label, y >= 0).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from ssfer_jax.algorithms import snl, thresholds
from ssfer_jax.algorithms.base import (Ablation, Algorithm, UnlabeledOutput, confidence_and_label,
                                       epoch_length, linear_rampup, masked_mean_ce,
                                       two_view_confidence)


def default_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({
      "use_dta": True,
      "fixed_tau": 0.95,
      "threshold_source": "labeled_correct",
      "threshold_cadence": "step",
      "epoch_steps": 0,
      "threshold_rule": "ema",
      "threshold_momentum": 0.999,
      "threshold_min": 0.8,
      "threshold_max": 0.95,
      "threshold_init": 0.8,
      "threshold_dtm_reset": False,
      "threshold_reset_value": 0.8,
      "threshold_update_first": False,
      "pseudo_from_two_views": False,
      "lambda_u": 1.0,
      "use_snl": True,
      "tau_neg": 0.05,
      "k": 0,
      "lambda_neg": 1.0,
      "neg_rampup_steps": 1000,
      "neg_eps": 1e-7,
  })


def threshold_options(cfg) -> thresholds.ThresholdOptions:
  """``config.algo`` -> the static options of the threshold machinery."""
  return thresholds.ThresholdOptions(
      source=cfg.threshold_source, cadence=cfg.threshold_cadence, rule=cfg.threshold_rule,
      momentum=float(cfg.threshold_momentum), tau_min=float(cfg.threshold_min),
      tau_max=float(cfg.threshold_max), init=float(cfg.threshold_init),
      dtm_reset=bool(cfg.threshold_dtm_reset), reset_value=float(cfg.threshold_reset_value))


def init_state(cfg, num_classes: int, num_unlabeled: int):
  del num_unlabeled
  threshold_options(cfg)  # fail early on a bad option
  return thresholds.init_state(num_classes, float(cfg.threshold_init))


def unlabeled_loss(state, inputs, cfg) -> UnlabeledOutput:
  """One step of DTA (+ SNL); see the module docstring."""
  logits_w = jax.lax.stop_gradient(inputs.pseudo_logits("ulb_w"))
  if cfg.pseudo_from_two_views:
    conf, pseudo, probs = two_view_confidence(
        logits_w, jax.lax.stop_gradient(inputs.pseudo_logits("ulb_w2")))
  else:
    conf, pseudo, probs = confidence_and_label(logits_w)
  num_classes = logits_w.shape[-1]

  if cfg.use_dta:
    opts = threshold_options(cfg)
    teacher_lb = inputs.teacher_logits_lb
    if teacher_lb is not None:
      teacher_lb = jax.lax.stop_gradient(teacher_lb)
    batch_sum, batch_count = thresholds.batch_statistic(
        opts, conf_ulb=conf, pseudo_ulb=pseudo, teacher_logits_lb=teacher_lb, y_lb=inputs.y_lb,
        num_classes=num_classes)
    new_state = thresholds.update(state, batch_sum, batch_count, opts, step=inputs.step,
                                  steps_per_epoch=epoch_length(inputs, cfg))
    tau = new_state["tau"] if cfg.threshold_update_first else state["tau"]
  else:
    new_state = state
    tau = jnp.full((num_classes,), cfg.fixed_tau, jnp.float32)

  mask = thresholds.threshold_mask(conf, pseudo, tau)
  logits_s = inputs.student_logits("ulb_s")
  loss_u = cfg.lambda_u * masked_mean_ce(logits_s, pseudo, mask)
  loss = loss_u
  metrics = {"loss_u": loss_u}

  if cfg.use_snl:
    comp = snl.complementary_set(probs, tau_neg=float(cfg.tau_neg), k=int(cfg.k))
    selected = snl.selected_samples(comp, mask)
    loss_neg = snl.negative_loss(logits_s, comp, selected, eps=float(cfg.neg_eps))
    weight = cfg.lambda_neg * linear_rampup(inputs.step, int(cfg.neg_rampup_steps))
    loss = loss + weight * loss_neg
    metrics.update(loss_neg=loss_neg, neg_weight=jnp.asarray(weight, jnp.float32),
                   **snl.snl_metrics(comp, selected, inputs.y_ulb))

  return UnlabeledOutput(loss=loss, state=new_state, mask=mask, pseudo_labels=pseudo,
                         metrics=metrics, thresholds=tau)


def pseudo_views(cfg) -> tuple[str, ...]:
  """One weak view, or two with ``pseudo_from_two_views`` (DTM's default)."""
  return ("ulb_w", "ulb_w2") if cfg.pseudo_from_two_views else ("ulb_w",)


def needs_teacher_on_labeled(cfg) -> bool:
  """Only the 'labeled_correct' statistic reads the teacher's labeled-batch logits; the
  'unlabeled' source and the fixed-threshold ablation skip that 1/8 of the teacher pass."""
  return bool(cfg.use_dta) and cfg.threshold_source == "labeled_correct"


# The variant flags of this machinery (``--config=FILE:no_snl``); dtm shares them.
ABLATIONS = {
    "fixed_threshold": Ablation({"algo.use_dta": False}, "config.algo.use_dta=False (fixed "
                                "threshold config.algo.fixed_tau)"),
    "no_snl": Ablation({"algo.use_snl": False}),
}

DTA_SNL = Algorithm(name="dta_snl", default_config=default_config, init_state=init_state,
                    unlabeled_loss=unlabeled_loss, pseudo_views=pseudo_views,
                    needs_teacher_on_labeled=needs_teacher_on_labeled, ablations=ABLATIONS)
