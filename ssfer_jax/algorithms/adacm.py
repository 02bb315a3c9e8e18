"""Ada-CM (Li et al., CVPR 2022: "Towards Semi-Supervised Deep Facial Expression Recognition
with An Adaptive Confidence Margin"), as in the authors' code (hangyu94/Ada-CM, ``main.py``
and ``losses.py``).

What the reference does, and how it is encoded here:

* **Thresholds.** ``threshold = [0.8] * 7`` before epoch 1. Epochs are counted from 1. After
  training epoch ``e`` the EMA model (eval mode) is run over the whole labeled set, and for
  every class c, from the labeled samples of class c it classifies *correctly*,
  ``mu_c = mean max-softmax``; then ``tau_c = max(0.8, 0.97 * mu_c * sigmoid(e))``, and
  ``tau_c = 0.8`` when class c has no correctly classified sample. The new thresholds do
  not depend on the old ones (no memory between epochs). Consequences:
  epoch 1 trains with 0.8 (the initial value); the thresholds computed after epoch 1
  are all the floor 0.8, because ``0.97 * mu_c * sigmoid(1) <= 0.97 * 0.7311 = 0.709 < 0.8``;
  so epochs 1 AND 2 train with every threshold at 0.8, and a class can only rise above
  the floor from epoch 3 on (after epoch 2, ``0.97 * sigmoid(2) = 0.8545``, so only
  classes with ``mu_c > 0.936`` rise), tending to ``0.97 * mu_c``.
  Here the statistic is streamed: during epoch e, the pseudo-label source's logits on
  each labeled (weak) batch (``teacher_logits_lb``; the EMA teacher in eval mode by
  default) are accumulated into per-class sums and counts of correct confidences; at the
  last step of the epoch the rule above is applied with e = epochs completed and the
  accumulators are cleared. This replaces the reference's separate pass over the labeled
  set after the epoch (same model family, same rule; the statistic mixes the teacher of
  the whole epoch rather than only its final state). The threshold machinery is the DTA
  module's (``thresholds.py``: cadence 'epoch', rule 'adacm_ramp', source
  'labeled_correct', reset to 0.8 for an absent class or a mean below 0.8, which is the
  floor itself).
  Epoch length: the reference's "epoch" is a fixed ``--train-iteration`` = 800 steps, not
  a pass over the data; ``epoch_steps`` (> 0) sets it, 0 uses the trainer's
  ``steps_per_epoch``.
* **Pseudo-labels** from the mean of the softmax of two weak views:
  ``p = (softmax(w) + softmax(w2)) / 2``, ``q = max p``, ``yhat = argmax p``,
  ``mask = 1[q >= tau[yhat]]`` (``>=``, float32; ``base.two_view_confidence``, shared with
  DTM). (The reference computes them with the student in train mode and keeps the EMA model
  for the thresholds: ``config.pseudo_label_source='student'`` with
  ``config.threshold_stats_source='teacher'``, as ``configs/reference/adacm_rafdb.py`` sets.)
* **Losses**: ``L_u = mean(mask * CE(student strong, yhat))``; the low-confidence
  samples (mask = 0) go to a SimCLR loss (``SupConLoss`` without labels, T = 0.07,
  base temperature 0.07) on the student's L2-normalised features of their two weak views;
  0 when there is no such sample. Total ``0.5 L_x + L_u + 0.1 L_con``
  (``labeled_supervision_weight = 0.5``).
"""

from __future__ import annotations

import jax.numpy as jnp
import ml_collections

from ssfer_jax.algorithms import thresholds
from ssfer_jax.algorithms.base import (Algorithm, UnlabeledOutput, epoch_length, masked_mean_ce,
                                       two_view_confidence)

FLOOR = 0.8


def default_config():
  return ml_collections.ConfigDict({
      "lambda_u": 1.0, "lambda_con": 0.1, "temperature": 0.07, "base_temperature": 0.07,
      "epoch_steps": 0})


def init_state(cfg, num_classes, num_unlabeled):
  del cfg, num_unlabeled
  return thresholds.init_state(num_classes, FLOOR)


THRESHOLD_OPTIONS = thresholds.ThresholdOptions(
    source="labeled_correct", cadence="epoch", rule="adacm_ramp", tau_min=FLOOR, tau_max=1.0,
    init=FLOOR, dtm_reset=True, reset_value=FLOOR)


def simclr_loss(f1, f2, valid, temperature, base_temperature=0.07):
  """SupCon's unsupervised (SimCLR) form over the rows with ``valid`` = 1.

  f1, f2: (U, D) features of two views (L2-normalised here). For the n valid samples the 2n
  anchors are ``[f1; f2]``; anchor i's positive is the other view of its sample, its
  denominator every other valid anchor (itself excluded):
  ``loss = -(T / T_base) * mean_i log(exp(s_ip / T) / sum_{k != i} exp(s_ik / T))``.
  Returns 0 when no row is valid. Fixed shapes (masking instead of gathering), so it jits.
  """
  def norm(f):
    f = f.astype(jnp.float32)
    return f / jnp.maximum(jnp.linalg.norm(f, axis=-1, keepdims=True), 1e-12)

  u = f1.shape[0]
  z = jnp.concatenate([norm(f1), norm(f2)])
  v = jnp.concatenate([valid, valid]).astype(jnp.float32)
  # cosine <= 1, so subtracting 1/T keeps exp() <= 1 (the reference subtracts the row max).
  logits = (z @ z.T - 1.0) / jnp.float32(temperature)
  not_self = 1.0 - jnp.eye(2 * u, dtype=jnp.float32)
  denom = jnp.sum(jnp.exp(logits) * not_self * v[None, :], axis=1)
  log_denom = jnp.log(jnp.where(v > 0, denom, 1.0))
  partner = jnp.concatenate([jnp.arange(u) + u, jnp.arange(u)])
  pos = jnp.take_along_axis(logits, partner[:, None], axis=1)[:, 0]
  per_anchor = -(temperature / base_temperature) * (pos - log_denom)
  return jnp.sum(v * per_anchor) / jnp.maximum(jnp.sum(v), 1.0)


def unlabeled_loss(state, inputs, cfg):
  logits_w = inputs.pseudo_logits("ulb_w")
  num_classes = logits_w.shape[-1]
  conf, pseudo, _ = two_view_confidence(logits_w, inputs.pseudo_logits("ulb_w2"))
  mask = thresholds.threshold_mask(conf, pseudo, state["tau"])
  loss_u = cfg.lambda_u * masked_mean_ce(inputs.student_logits("ulb_s"), pseudo, mask)
  loss_con = simclr_loss(inputs.student_features("ulb_w"), inputs.student_features("ulb_w2"),
                         1.0 - mask, cfg.temperature, cfg.base_temperature)
  batch_sum, batch_count = thresholds.labeled_correct_stats(inputs.teacher_logits_lb,
                                                            inputs.y_lb, num_classes)
  new_state = thresholds.update(state, batch_sum, batch_count, THRESHOLD_OPTIONS,
                                step=inputs.step, steps_per_epoch=epoch_length(inputs, cfg))
  loss = loss_u + cfg.lambda_con * loss_con
  metrics = {"loss_u": loss_u, "loss_con": loss_con,
             "low_confidence_rate": jnp.mean(1.0 - mask)}
  return UnlabeledOutput(loss=loss, state=new_state, mask=mask, pseudo_labels=pseudo,
                         metrics=metrics, thresholds=state["tau"])


ADACM = Algorithm(name="adacm", default_config=default_config, init_state=init_state,
                  unlabeled_loss=unlabeled_loss, student_views=("ulb_s", "ulb_w", "ulb_w2"),
                  pseudo_views=("ulb_w", "ulb_w2"), needs_teacher_on_labeled=True,
                  labeled_supervision_weight=0.5)
