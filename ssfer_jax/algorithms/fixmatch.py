"""FixMatch (Sohn et al., 2020): mask = 1[max p(weak) >= tau], CE(strong, arg-max p(weak)).

``hard_label = False`` is USB's soft-label option (``use_hard_label=False``): the target of
the strong view is the weak view's probability vector itself, with no temperature applied
(USB passes the probabilities with ``softmax=False``), masked by the same
``1[max p >= tau]``: ``L_u = mean(mask * -sum_c p_c log softmax(strong)_c)``. The reported
pseudo-label stays the arg-max (diagnostics only).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from ssfer_jax.algorithms.base import (Algorithm, UnlabeledOutput, confidence_and_label,
                                       masked_mean_ce, no_state)


def default_config():
  return ml_collections.ConfigDict({"tau": 0.95, "lambda_u": 1.0, "hard_label": True})


def soft_cross_entropy(logits, targets):
  """Per-sample ``-sum_c targets_c log softmax(logits)_c`` in float32 (no gradient to targets)."""
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return -jnp.sum(jax.lax.stop_gradient(targets.astype(jnp.float32)) * logp, axis=-1)


def unlabeled_loss(state, inputs, cfg):
  conf, pseudo, probs = confidence_and_label(inputs.pseudo_logits("ulb_w"))
  mask = (conf >= jnp.float32(cfg.tau)).astype(jnp.float32)
  if cfg.hard_label:
    loss = cfg.lambda_u * masked_mean_ce(inputs.student_logits("ulb_s"), pseudo, mask)
  else:
    loss = cfg.lambda_u * jnp.mean(mask * soft_cross_entropy(inputs.student_logits("ulb_s"), probs))
  return UnlabeledOutput(loss=loss, state=state, mask=mask, pseudo_labels=pseudo,
                         metrics={"loss_u": loss})


FIXMATCH = Algorithm(name="fixmatch", default_config=default_config, init_state=no_state,
                     unlabeled_loss=unlabeled_loss)
