"""FixMatch (Sohn et al., 2020): mask = 1[max p(weak) >= tau], CE(strong, arg-max p(weak))."""

from __future__ import annotations

import jax.numpy as jnp
import ml_collections

from ssfer_jax.algorithms.base import (Algorithm, UnlabeledOutput, confidence_and_label,
                                       masked_mean_ce, no_state)


def default_config():
  return ml_collections.ConfigDict({"tau": 0.95, "lambda_u": 1.0})


def unlabeled_loss(state, inputs, cfg):
  conf, pseudo, _ = confidence_and_label(inputs.logits_ulb_w)
  mask = (conf >= jnp.float32(cfg.tau)).astype(jnp.float32)
  loss = cfg.lambda_u * masked_mean_ce(inputs.logits_ulb_s, pseudo, mask)
  return UnlabeledOutput(loss=loss, state=state, mask=mask, pseudo_labels=pseudo,
                         metrics={"loss_u": loss})


FIXMATCH = Algorithm(name="fixmatch", default_config=default_config, init_state=no_state,
                     unlabeled_loss=unlabeled_loss)
