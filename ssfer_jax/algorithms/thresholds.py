"""Per-class dynamic thresholds: the DTA state machine (SPEC §1.1) as small pure functions.

**[reconstructed]** The paper (Cai et al., 2026) names "Dynamic Threshold Adjustment"
but its update rule was not available. The rule here is reconstructed from the
authors' 2023 Dynamic Threshold Module (DTM) and from Ada-CM (CVPR 2022); every choice
is an option of ``ThresholdOptions`` so that DTA, DTM and the Ada-CM ramp are all
settings of the same machinery:

* **State** (a pytree of float32 arrays, carried in ``TrainState.algo``):
  ``tau`` (C,) the thresholds; ``sum`` (C,) / ``count`` (C,) the statistic accumulated
  since the last update (used by the ``epoch`` cadence; zero after every update).
* **Statistic** ``mu_c``, the mean max-softmax confidence of the pseudo-label source on
  the samples of class c. ``source='labeled_correct'``: labeled samples of class c that
  the source classifies correctly (the 2023 rule; needs ``teacher_logits_lb``).
  ``source='unlabeled'``: unlabeled samples whose pseudo-label (arg-max) is c.
* **Cadence** ``'step'``: update every step from that step's batch. ``'epoch'``:
  accumulate sums and counts over the epoch and update once, at the step with
  ``(step + 1) % steps_per_epoch == 0`` (selected with ``jnp.where``, inside jit).
* **Rule** ``'ema'``: ``tau_c <- clip(m * tau_c + (1 - m) * mu_c, tau_min, tau_max)``.
  ``'adacm_ramp'``: ``tau_c <- clip(max(tau_min, 0.97 * mu_c * sigmoid(e)), ., tau_max)``
  where ``e = (step + 1) / steps_per_epoch`` is the number of epochs completed after
  this step (so the first epoch's end is e = 1: Ada-CM counts epochs from 1). With
  either rule a class with no sample since the last update keeps its value.
* **DTM reset** (``dtm_reset=True``, SPEC §2.1): after the rule, a class whose mean is
  below ``reset_value`` or that has no (correctly classified) sample is set to
  ``reset_value`` (0.8 in the 2023 code); this overrides "an absent class keeps its value".
* **Mask** ``1[max p >= tau[argmax p]]`` in float32, ``>=``, no temperature (SPEC §2.1).

All reductions are plain ``jnp`` sums over the batch axis, so under ``jax.jit`` over a
mesh with the batch sharded they are global (cross-device) reductions: the thresholds
are identical on every device and equal to a one-device run on the same global batch.

Reuse by other methods: ``labeled_correct_stats`` / ``labeled_correct_mean_confidence``
compute the per-class mean confidence of correctly classified labeled samples (the
statistic Ada-CM's adaptive confidence margin is built from).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

SOURCES = ("labeled_correct", "unlabeled")
CADENCES = ("step", "epoch")
RULES = ("ema", "adacm_ramp")
ADACM_SCALE = 0.97


@dataclasses.dataclass(frozen=True)
class ThresholdOptions:
  """Static options of the threshold machinery (see the module docstring)."""
  source: str = "labeled_correct"   # 'labeled_correct' | 'unlabeled'
  cadence: str = "step"             # 'step' | 'epoch'
  rule: str = "ema"                 # 'ema' | 'adacm_ramp'
  momentum: float = 0.999           # m of the 'ema' rule (per update)
  tau_min: float = 0.8              # floor
  tau_max: float = 1.0              # ceiling
  init: float = 0.8                 # initial tau_c
  dtm_reset: bool = False           # DTM: reset to reset_value when mu_c < reset_value or no sample
  reset_value: float = 0.8

  def __post_init__(self):
    for name, value, allowed in (("source", self.source, SOURCES),
                                 ("cadence", self.cadence, CADENCES),
                                 ("rule", self.rule, RULES)):
      if value not in allowed:
        raise ValueError(f"threshold {name}={value!r} is not one of {allowed} "
                         "(config.algo.threshold_" + name + ")")
    if not 0.0 <= self.momentum <= 1.0:
      raise ValueError(f"threshold momentum={self.momentum} must be in [0, 1] "
                       "(config.algo.threshold_momentum)")
    if self.tau_min > self.tau_max:
      raise ValueError(f"threshold floor {self.tau_min} is above the ceiling {self.tau_max} "
                       "(config.algo.threshold_min / threshold_max)")


def init_state(num_classes: int, init: float = 0.8) -> dict:
  """{'tau': (C,) filled with ``init``, 'sum': zeros (C,), 'count': zeros (C,)}, float32."""
  return {"tau": jnp.full((num_classes,), init, jnp.float32),
          "sum": jnp.zeros((num_classes,), jnp.float32),
          "count": jnp.zeros((num_classes,), jnp.float32)}


def _probs(logits):
  return jax.nn.softmax(logits.astype(jnp.float32), axis=-1)


def class_sums(values, labels, weights, num_classes: int):
  """Per-class (sum of ``weights * values``, sum of ``weights``) grouped by ``labels``.

  values, weights: (N,) float; labels: (N,) int. A plain reduction over the batch axis.
  """
  onehot = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32) * weights[:, None]
  return onehot.T @ values.astype(jnp.float32), jnp.sum(onehot, axis=0)


def labeled_correct_stats(teacher_logits_lb, y_lb, num_classes: int):
  """Per-class (sum, count) of the max-softmax confidence over labeled samples of class c
  that the pseudo-label source classifies correctly (arg-max == label).

  For a correctly classified sample the max-softmax equals ``p[y]``. Returns two (C,)
  float32 arrays; sums over the batch axis (global under jit over a mesh). Accumulate
  them over an epoch and divide (see ``safe_mean``) for an epoch-level statistic.
  """
  probs = _probs(teacher_logits_lb)
  conf = jnp.max(probs, axis=-1)
  correct = (jnp.argmax(probs, axis=-1) == y_lb).astype(jnp.float32)
  return class_sums(conf, y_lb, correct, num_classes)


def labeled_correct_mean_confidence(teacher_logits_lb, y_lb, num_classes: int):
  """(mean (C,), count (C,)): per-class mean confidence of correctly classified labeled
  samples in this batch; the mean is 0 for a class with no such sample (check count).

  This is the statistic of Ada-CM's adaptive confidence margin and of DTA's
  ``labeled_correct`` source; ``ssfer_jax/algorithms/adacm.py`` may reuse it.
  """
  s, n = labeled_correct_stats(teacher_logits_lb, y_lb, num_classes)
  return safe_mean(s, n), n


def unlabeled_stats(conf, pseudo, num_classes: int):
  """Per-class (sum, count) of confidence ``conf`` (U,) grouped by pseudo-label (U,)."""
  return class_sums(conf, pseudo, jnp.ones_like(conf, jnp.float32), num_classes)


def safe_mean(total, count):
  """total / count, 0 where count == 0 (no NaN, no NaN gradient)."""
  return jnp.where(count > 0, total / jnp.maximum(count, 1.0), 0.0)


def apply_rule(tau, mean, count, opts: ThresholdOptions, epochs_done):
  """One threshold update from per-class ``mean``/``count`` (see the module docstring)."""
  if opts.rule == "ema":
    m = jnp.float32(opts.momentum)
    new = m * tau + (1.0 - m) * mean
  else:  # adacm_ramp
    ramp = jax.nn.sigmoid(jnp.asarray(epochs_done, jnp.float32))
    new = jnp.maximum(jnp.float32(opts.tau_min), ADACM_SCALE * mean * ramp)
  new = jnp.clip(new, jnp.float32(opts.tau_min), jnp.float32(opts.tau_max))
  present = count > 0
  new = jnp.where(present, new, tau)
  if opts.dtm_reset:
    reset = jnp.float32(opts.reset_value)
    new = jnp.where(~present | (mean < reset), reset, new)
  return new.astype(jnp.float32)


def update(state: dict, batch_sum, batch_count, opts: ThresholdOptions, *, step,
           steps_per_epoch: int) -> dict:
  """Adds this step's per-class statistic to the accumulators and, at an update point
  (every step, or the last step of an epoch), applies the rule and clears them.

  step: the 0-based step being taken (traced int is fine); steps_per_epoch: static int.
  """
  if steps_per_epoch <= 0:
    raise ValueError(f"steps_per_epoch must be positive, got {steps_per_epoch}")
  total = state["sum"] + batch_sum.astype(jnp.float32)
  count = state["count"] + batch_count.astype(jnp.float32)
  step = jnp.asarray(step, jnp.int32)
  epochs_done = (step + 1).astype(jnp.float32) / steps_per_epoch
  new_tau = apply_rule(state["tau"], safe_mean(total, count), count, opts, epochs_done)
  if opts.cadence == "step":
    is_update = jnp.bool_(True)
  else:
    is_update = (step + 1) % steps_per_epoch == 0
  zeros = jnp.zeros_like(total)
  return {"tau": jnp.where(is_update, new_tau, state["tau"]),
          "sum": jnp.where(is_update, zeros, total),
          "count": jnp.where(is_update, zeros, count)}


def batch_statistic(opts: ThresholdOptions, *, conf_ulb, pseudo_ulb, teacher_logits_lb, y_lb,
                    num_classes: int):
  """This step's per-class (sum, count) from the configured source."""
  if opts.source == "labeled_correct":
    if teacher_logits_lb is None:
      raise ValueError("threshold source 'labeled_correct' needs the pseudo-label source's "
                       "logits on the labeled batch: the Algorithm must set "
                       "needs_teacher_on_labeled=True")
    return labeled_correct_stats(teacher_logits_lb, y_lb, num_classes)
  return unlabeled_stats(conf_ulb, pseudo_ulb, num_classes)


def threshold_mask(conf, pseudo, tau):
  """1[conf >= tau[pseudo]] as float32 (``>=``, float32, no temperature)."""
  return (conf.astype(jnp.float32) >= tau[pseudo]).astype(jnp.float32)
