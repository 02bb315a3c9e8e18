"""SoftMatch (Chen et al., ICLR 2023): truncated-Gaussian sample weighting with uniform
distribution alignment, as in USB's ``semilearn/algorithms/softmatch``
(``SoftMatchWeightingHook`` and ``DistAlignEMAHook``).

State: ``mu`` () and ``var`` () the EMA mean and unbiased variance of the confidence q
(init 1/C and 1.0); for distribution alignment ``p_model`` (C,) the EMA of the mean
unlabeled probability vector with ``p_model_ready`` () int32 (0 until the first batch,
whose mean *replaces* the placeholder, as USB's ``p_model = None`` start), and
``p_target`` (C,) (uniform 1/C; with ``dist_uniform=False`` an EMA of the mean labeled
student probability, init 1/C).

One step, in the reference's order (statistics FIRST, then weights with the new values):

1. Distribution alignment (``dist_align``, default on): update ``p_model`` (and
   ``p_target``), then ``p_al = SumNorm(p * (p_target + 1e-6) / (p_model + 1e-6))``.
2. ``q = max p_al`` (``max p`` without alignment);
   ``mu <- m mu + (1-m) mean(q)``, ``var <- m var + (1-m) var(q, ddof=1)``; m = 0.999.
3. ``w = exp(-(min(q - mu, 0))^2 / (2 var / n_sigma^2))`` with n_sigma = 2.
4. Pseudo-labels: arg-max of the RAW (unaligned) probabilities.
   ``L_u = lambda_u * mean(w * CE(student strong, yhat))``.

The unbiased variance needs at least 2 unlabeled samples per global batch.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from ssfer_jax.algorithms.base import (Algorithm, UnlabeledOutput, confidence_and_label,
                                       masked_mean_ce)


def default_config():
  return ml_collections.ConfigDict({
      "ema_p": 0.999, "n_sigma": 2.0, "lambda_u": 1.0, "dist_align": True,
      "dist_uniform": True})


def init_state(cfg, num_classes, num_unlabeled):
  del cfg, num_unlabeled
  uniform = jnp.full((num_classes,), 1.0 / num_classes, jnp.float32)
  return {"mu": jnp.float32(1.0 / num_classes), "var": jnp.float32(1.0),
          "p_model": uniform, "p_model_ready": jnp.int32(0), "p_target": uniform}


def distribution_align(state, probs_ulb, probs_lb, cfg):
  """Step 1: returns (aligned probabilities, new alignment state entries)."""
  m = jnp.float32(cfg.ema_p)
  batch_mean = jnp.mean(probs_ulb, axis=0)
  p_model = jnp.where(state["p_model_ready"] > 0,
                      state["p_model"] * m + (1.0 - m) * batch_mean, batch_mean)
  p_target = state["p_target"]
  if not cfg.dist_uniform:
    p_target = p_target * m + (1.0 - m) * jnp.mean(probs_lb, axis=0)
  aligned = probs_ulb * (p_target + 1e-6) / (p_model + 1e-6)
  aligned = aligned / jnp.sum(aligned, axis=-1, keepdims=True)
  return aligned, {"p_model": p_model, "p_model_ready": jnp.int32(1), "p_target": p_target}


def truncated_gaussian_weight(conf, mu, var, n_sigma):
  """Step 3: 1 above the mean, a Gaussian of std sqrt(var)/n_sigma below it."""
  d = jnp.minimum(conf - mu, 0.0)
  return jnp.exp(-(d * d) / (2.0 * var / (jnp.float32(n_sigma) ** 2)))


def unlabeled_loss(state, inputs, cfg):
  conf_raw, pseudo, probs = confidence_and_label(inputs.pseudo_logits("ulb_w"))
  if probs.shape[0] < 2:
    raise ValueError("softmatch needs >= 2 unlabeled samples per global batch for its unbiased "
                     f"variance, got {probs.shape[0]}: raise config.data.batch_size * uratio")
  new_state = dict(state)
  if cfg.dist_align:
    probs_lb = jax.nn.softmax(jax.lax.stop_gradient(inputs.logits_lb).astype(jnp.float32), -1)
    probs_w, da_state = distribution_align(state, probs, probs_lb, cfg)
    new_state.update(da_state)
    conf = jnp.max(probs_w, axis=-1)
  else:
    conf = conf_raw
  m = jnp.float32(cfg.ema_p)
  mu = state["mu"] * m + (1.0 - m) * jnp.mean(conf)
  var = state["var"] * m + (1.0 - m) * jnp.var(conf, ddof=1)
  new_state.update(mu=mu, var=var)
  weight = truncated_gaussian_weight(conf, mu, var, cfg.n_sigma)
  loss = cfg.lambda_u * masked_mean_ce(inputs.student_logits("ulb_s"), pseudo, weight)
  metrics = {"loss_u": loss, "mu": mu, "var": var}
  return UnlabeledOutput(loss=loss, state=new_state, mask=weight, pseudo_labels=pseudo,
                         metrics=metrics)


SOFTMATCH = Algorithm(name="softmatch", default_config=default_config, init_state=init_state,
                      unlabeled_loss=unlabeled_loss)
