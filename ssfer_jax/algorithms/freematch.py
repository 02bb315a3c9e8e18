"""FreeMatch (Wang et al., ICLR 2023): self-adaptive thresholding (SAT) and the
self-adaptive fairness term, as in USB's ``semilearn/algorithms/freematch``.

State: ``time_p`` () the EMA of the global mean confidence (tau_t), ``p_model`` (C,) the EMA
of the mean probability vector (p~_t) and ``label_hist`` (C,) the EMA of the normalised
histogram of arg-max pseudo-labels; all start at 1/C (USB's current code; the paper's
initialisation).

One step, in the reference's order (statistics FIRST, then the mask with the new values):

1. ``time_p <- m time_p + (1-m) mean(q)`` (or the 0.8-quantile of q with ``use_quantile``;
   clipped to [0, 0.95] with ``clip_thresh``), ``p_model <- m p_model + (1-m) mean(p)``,
   ``label_hist <- m label_hist + (1-m) hist(yhat)/U``; m = ``ema_p`` = 0.999.
2. ``mask = 1[q >= time_p * p_model[yhat] / max(p_model)]`` (``>=``, float32).
3. ``L_u = mean(mask * CE(student strong, yhat))``.
4. Fairness term, only when the mask is non-empty (0 otherwise): over the masked samples'
   student strong-view probabilities p_s with arg-max histogram h_s (normalised),
   ``L_f = sum_c a_c log(b_c + 1e-12)`` with ``a = SumNorm(p_model * inv(label_hist))`` and
   ``b = SumNorm(mean(p_s) * inv(h_s))``, where ``inv(x) = 1/x`` and an infinity
   (empty class) is set to 0, as USB's ``replace_inf_to_zero``. Only ``mean(p_s)`` carries
   a gradient.

Sign of the fairness term: ``L_f`` is a negative cross-entropy, so ``L_f <= 0``. The
reference adds it with a positive sign (``total = sup + lambda_u * unsup + lambda_e *
ent_loss``, lambda_e = ``ent_loss_ratio`` = 0.01), so minimising the total *raises* the
cross-entropy between the two distributions. We match the reference by default
(``loss += lambda_fair * L_f``); ``flip_fairness_sign=True`` adds ``-lambda_fair * L_f``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from ssfer_jax.algorithms.base import (Algorithm, UnlabeledOutput, confidence_and_label,
                                       masked_mean_ce)


def default_config():
  return ml_collections.ConfigDict({
      "ema_p": 0.999, "lambda_u": 1.0, "lambda_fair": 0.01, "flip_fairness_sign": False,
      "use_quantile": False, "clip_thresh": False})


def init_state(cfg, num_classes, num_unlabeled):
  del cfg, num_unlabeled
  uniform = jnp.full((num_classes,), 1.0 / num_classes, jnp.float32)
  return {"time_p": jnp.mean(uniform), "p_model": uniform, "label_hist": uniform}


def update_statistics(state, probs, cfg):
  """The EMA update of step 1 (see the module docstring), on the global batch."""
  m = jnp.float32(cfg.ema_p)
  conf = jnp.max(probs, axis=-1)
  pseudo = jnp.argmax(probs, axis=-1)
  batch_stat = jnp.quantile(conf, 0.8) if cfg.use_quantile else jnp.mean(conf)
  time_p = state["time_p"] * m + (1.0 - m) * batch_stat
  if cfg.clip_thresh:
    time_p = jnp.clip(time_p, 0.0, 0.95)
  p_model = state["p_model"] * m + (1.0 - m) * jnp.mean(probs, axis=0)
  hist = jnp.bincount(pseudo, length=probs.shape[-1]).astype(jnp.float32)
  label_hist = state["label_hist"] * m + (1.0 - m) * hist / jnp.sum(hist)
  return {"time_p": time_p, "p_model": p_model, "label_hist": label_hist}


def sat_mask(state, conf, pseudo):
  """``1[q >= time_p * p_model[yhat] / max(p_model)]``, float32."""
  mod = state["p_model"] / jnp.max(state["p_model"])
  return (conf >= state["time_p"] * mod[pseudo]).astype(jnp.float32)


def _inv_or_zero(x):
  """1/x with the infinities (x == 0) replaced by 0, like USB's replace_inf_to_zero."""
  return jnp.where(x == 0, 0.0, 1.0 / jnp.where(x == 0, 1.0, x))


def _sum_norm(x):
  s = jnp.sum(x)
  return x / jnp.where(s == 0, 1.0, s)


def fairness_loss(mask, logits_s, p_model, label_hist):
  """USB's ``entropy_loss`` (module docstring, step 4); 0 when the mask is empty."""
  num_classes = logits_s.shape[-1]
  n = jnp.sum(mask)
  safe_n = jnp.maximum(n, 1.0)
  prob_s = jax.nn.softmax(logits_s.astype(jnp.float32), axis=-1)
  onehot = jax.nn.one_hot(jnp.argmax(prob_s, axis=-1), num_classes, dtype=jnp.float32)
  hist_s = jax.lax.stop_gradient(jnp.sum(mask[:, None] * onehot, axis=0) / safe_n)
  mod_prob_model = _sum_norm(p_model * _inv_or_zero(label_hist))
  mean_prob_s = jnp.sum(mask[:, None] * prob_s, axis=0) / safe_n
  mod_mean_prob_s = _sum_norm(mean_prob_s * _inv_or_zero(hist_s))
  loss = jnp.sum(jax.lax.stop_gradient(mod_prob_model) * jnp.log(mod_mean_prob_s + 1e-12))
  return jnp.where(n > 0, loss, 0.0)


def unlabeled_loss(state, inputs, cfg):
  conf, pseudo, probs = confidence_and_label(inputs.pseudo_logits("ulb_w"))
  state = update_statistics(state, probs, cfg)
  mask = sat_mask(state, conf, pseudo)
  logits_s = inputs.student_logits("ulb_s")
  loss_u = cfg.lambda_u * masked_mean_ce(logits_s, pseudo, mask)
  loss_fair = fairness_loss(mask, logits_s, state["p_model"], state["label_hist"])
  sign = -1.0 if cfg.flip_fairness_sign else 1.0
  loss = loss_u + sign * cfg.lambda_fair * loss_fair
  mod = state["p_model"] / jnp.max(state["p_model"])
  metrics = {"loss_u": loss_u, "loss_fair": loss_fair, "time_p": state["time_p"]}
  return UnlabeledOutput(loss=loss, state=state, mask=mask, pseudo_labels=pseudo,
                         metrics=metrics, thresholds=state["time_p"] * mod)


FREEMATCH = Algorithm(name="freematch", default_config=default_config, init_state=init_state,
                      unlabeled_loss=unlabeled_loss)
