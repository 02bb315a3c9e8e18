"""FlexMatch (Zhang et al., NeurIPS 2021): curriculum pseudo-labelling with class-wise
flexible thresholds, as in USB's ``semilearn/algorithms/flexmatch`` (its
``FlexMatchThresholdingHook``).

State (carried in ``TrainState.algo``):

* ``selected`` (N,) int32, one entry per unlabeled sample (indexed by
  ``StepInputs.idx_ulb``): -1, or the last class whose confidence passed the fixed
  ``tau`` (0.95) for that sample. Never reset.
* ``beta`` (C,) float32, the class-wise learning effect ("classwise_acc" in USB),
  initially 0.

One step, in the reference's order:

1. ``mask = 1[q >= tau * M(beta_prev[yhat])]`` with the convex mapping
   ``M(b) = b / (2 - b)`` and ``beta_prev`` the state's ``beta`` (the value computed at the
   end of the *previous* step). A class with ``beta = 0`` has threshold 0, so at the start
   of training every sample passes.
2. ``selected[idx] = yhat`` for the samples with ``q >= tau`` (the fixed threshold).
   When one index occurs several times in the global batch, the last selected occurrence
   wins (deterministic, so 1 device and N devices agree).
3. ``sigma_c = #{i: selected[i] = c}``; with ``thresh_warmup`` (default)
   ``beta_c = sigma_c / max(max_c sigma_c, #{selected = -1})``, without it
   ``beta_c = sigma_c / max_c sigma_c``. This update is skipped (``beta`` keeps its value)
   when a single value fills the whole array (all -1, or every sample the same class),
   exactly as USB's ``if max(pseudo_counter.values()) < ulb_dest_len``.

Every comparison is ``>=`` in float32; no temperature; hard pseudo-labels = arg-max.
Unlabeled loss: ``lambda_u * mean(mask * CE(student strong, yhat))``.
"""

from __future__ import annotations

import jax.numpy as jnp
import ml_collections

from ssfer_jax.algorithms.base import (Algorithm, UnlabeledOutput, confidence_and_label,
                                       masked_mean_ce)


def default_config():
  return ml_collections.ConfigDict({"tau": 0.95, "lambda_u": 1.0, "thresh_warmup": True})


def init_state(cfg, num_classes, num_unlabeled):
  del cfg
  if num_unlabeled <= 0:
    raise ValueError(f"flexmatch needs the number of unlabeled samples (got {num_unlabeled}); "
                     "it keeps one 'selected' entry per unlabeled index")
  return {"selected": jnp.full((num_unlabeled,), -1, jnp.int32),
          "beta": jnp.zeros((num_classes,), jnp.float32)}


def flex_threshold(beta, tau):
  """Per-class threshold ``tau * beta / (2 - beta)`` (USB's 'convex' mapping), float32."""
  beta = beta.astype(jnp.float32)
  return jnp.float32(tau) * (beta / (2.0 - beta))


def scatter_last(table, idx, values, write):
  """``table[idx[i]] = values[i]`` for the rows with ``write[i]``; where an index repeats
  among the written rows, the last row (in batch order) wins. Deterministic: the actual
  scatter sees unique indices only (out-of-range ones are dropped)."""
  n = idx.shape[0]
  pos = jnp.arange(n)
  later_dup = (idx[:, None] == idx[None, :]) & write[None, :] & (pos[None, :] > pos[:, None])
  keep = write & ~jnp.any(later_dup, axis=1)
  target = jnp.where(keep, idx, table.shape[0])
  return table.at[target].set(values.astype(table.dtype), mode="drop")


def learning_effect(selected, beta_prev, num_classes, thresh_warmup):
  """beta from the ``selected`` array (see the module docstring for the exact rule)."""
  counts = jnp.bincount(selected + 1, length=num_classes + 1)  # [count(-1), count(0), ...]
  class_counts = counts[1:].astype(jnp.float32)
  max_all = jnp.max(counts)
  denom = max_all if thresh_warmup else jnp.max(counts[1:])
  beta = class_counts / jnp.maximum(denom, 1).astype(jnp.float32)
  return jnp.where(max_all < selected.shape[0], beta, beta_prev)


def unlabeled_loss(state, inputs, cfg):
  conf, pseudo, probs = confidence_and_label(inputs.pseudo_logits("ulb_w"))
  num_classes = probs.shape[-1]
  beta_prev = state["beta"]
  threshold = flex_threshold(beta_prev, cfg.tau)
  mask = (conf >= threshold[pseudo]).astype(jnp.float32)
  select = conf >= jnp.float32(cfg.tau)
  selected = scatter_last(state["selected"], inputs.idx_ulb.astype(jnp.int32), pseudo, select)
  beta = learning_effect(selected, beta_prev, num_classes, bool(cfg.thresh_warmup))
  loss = cfg.lambda_u * masked_mean_ce(inputs.student_logits("ulb_s"), pseudo, mask)
  metrics = {"loss_u": loss, "selected_fraction": jnp.mean((selected >= 0).astype(jnp.float32))}
  return UnlabeledOutput(loss=loss, state={"selected": selected, "beta": beta}, mask=mask,
                         pseudo_labels=pseudo, metrics=metrics, thresholds=threshold)


FLEXMATCH = Algorithm(name="flexmatch", default_config=default_config, init_state=init_state,
                      unlabeled_loss=unlabeled_loss)
