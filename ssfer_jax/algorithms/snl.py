"""Selective Negative Learning (SNL, SPEC §1.2) as pure functions.

**[reconstructed]** The paper (Cai et al., 2026) states that unlabeled samples below the
dynamic threshold are trained on their *complementary labels* (classes the sample is
confidently NOT); the rule itself was not available. This reconstruction follows NLNL's
selective negative learning and UPS's negative pseudo-labels:

* Only samples that **fail** the positive mask are candidates.
* Complementary set from the pseudo-label source's probabilities ``p`` on the weak view:
  ``S_i = {c != argmax p_i : p_ic < tau_neg}`` (``k == 0``), or the ``k`` least likely
  classes (``k > 0``; ``k`` is capped at C - 1). The arg-max class is never in ``S_i``.
* A sample is *selected* when it fails the mask and ``|S_i| > 0``.
* Loss on the student's strong view ``q``:
  ``L_neg = mean over selected i of -(1/|S_i|) sum_{c in S_i} log(1 - q_ic + eps)``;
  no selected sample gives ``L_neg = 0`` with a finite (zero) gradient.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def complementary_set(probs, *, tau_neg: float, k: int = 0):
  """(U, C) float32 0/1 indicator of each sample's complementary labels.

  probs: (U, C) probabilities of the pseudo-label source (no gradient needed).
  k == 0: classes other than the arg-max with ``p < tau_neg``.
  k > 0: the ``min(k, C - 1)`` classes of lowest probability, never the arg-max (the
  arg-max is ranked last before selecting; ties broken by the lower class index).
  """
  probs = jax.lax.stop_gradient(probs.astype(jnp.float32))
  num_classes = probs.shape[-1]
  top = jax.nn.one_hot(jnp.argmax(probs, axis=-1), num_classes, dtype=jnp.bool_)
  if k < 0:
    raise ValueError(f"SNL k={k} must be >= 0 (config.algo.k; 0 uses tau_neg)")
  if k == 0:
    return ((probs < jnp.float32(tau_neg)) & ~top).astype(jnp.float32)
  kk = min(int(k), num_classes - 1)
  ranked = jnp.where(top, jnp.inf, probs)
  _, idx = jax.lax.top_k(-ranked, kk)                       # (U, kk) lowest classes
  return jnp.sum(jax.nn.one_hot(idx, num_classes, dtype=jnp.float32), axis=1)


def selected_samples(comp, mask):
  """(U,) float32: 1 for samples that fail the positive mask and have >= 1 complementary label."""
  return (1.0 - mask.astype(jnp.float32)) * (jnp.sum(comp, axis=-1) > 0).astype(jnp.float32)


def negative_loss(student_logits, comp, selected, eps: float = 1e-7):
  """mean over selected i of -(1/|S_i|) sum_{c in S_i} log(1 - q_ic + eps); 0 if none."""
  q = jax.nn.softmax(student_logits.astype(jnp.float32), axis=-1)
  per_class = -jnp.log(1.0 - q + jnp.float32(eps))   # softmax <= 1: finite
  size = jnp.sum(comp, axis=-1)
  per_sample = jnp.sum(comp * per_class, axis=-1) / jnp.maximum(size, 1.0)
  return jnp.sum(selected * per_sample) / jnp.maximum(jnp.sum(selected), 1.0)


def snl_metrics(comp, selected, y_true):
  """Diagnostics: ``num_complementary`` (complementary labels per unlabeled sample, over
  all U), ``neg_selected_rate`` (fraction of samples selected), and where the true label
  is known (y >= 0) ``complementary_error`` (fraction of the selected samples'
  complementary labels that are the true class; 0 when there are none)."""
  used = comp * selected[:, None]
  known = (y_true >= 0).astype(jnp.float32)
  truth = jax.nn.one_hot(jnp.maximum(y_true, 0), comp.shape[-1], dtype=jnp.float32)
  used_known = used * known[:, None]
  wrong = jnp.sum(used_known * truth)
  return {
      "num_complementary": jnp.mean(jnp.sum(used, axis=-1)),
      "neg_selected_rate": jnp.mean(selected),
      "complementary_error": wrong / jnp.maximum(jnp.sum(used_known), 1.0),
  }
