"""The pure train step ``(state, batch) -> (state, metrics)`` and the eval step.

A batch is a dict of arrays (global batch; split over the mesh's data axis):

  x_lb (B,H,W,C) uint8, y_lb (B,) int32               labeled, weak view
  x_<view> (U,H,W,C) uint8                             each unlabeled view the algorithm asks
                                                       for (data/views.py: x_ulb_w, x_ulb_s, ...)
  idx_ulb (U,) int32, y_ulb (U,) int32 (-1 = unknown)    unlabeled index / true label (diagnostics)

Images travel as uint8 and are normalised here, on the device (``data/images.normalize``,
the rule prediction and export share). The step knows the
algorithm interface (``algorithms/base.py``), never an algorithm's or a view's name:
the student's and the pseudo-label source's outputs reach the algorithm keyed by view.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax

from ssfer_jax import optim
from ssfer_jax.algorithms.base import StepInputs, cross_entropy
from ssfer_jax.data.images import normalize
from ssfer_jax.reductions import any_nonfinite, global_norm
from ssfer_jax.state import TrainState


def ema_decay(step, decay, warmup: bool):
  """Teacher EMA decay; with warm-up, min(decay, (1 + step) / (10 + step)) (Mean Teacher's ramp)."""
  if not warmup:
    return jnp.float32(decay)
  s = step.astype(jnp.float32)
  return jnp.minimum(jnp.float32(decay), (1.0 + s) / (10.0 + s))


def ema_update(ema, new, decay):
  return jax.tree.map(lambda e, p: e * decay + p.astype(e.dtype) * (1.0 - decay), ema, new)


def shrink(tree, factor):
  """Every leaf times ``factor``: the weight decay Ada-CM / DTM / MixMatch put in their EMA
  step (``param.mul_(1 - wd)`` on the student after the EMA update, BatchNorm statistics
  included; ``config.ema.student_decay``)."""
  return jax.tree.map(lambda a: a * jnp.asarray(factor, a.dtype), tree)


def _split(tree, sizes):
  """Splits every leaf of a dict of batched arrays into consecutive chunks of ``sizes``."""
  offsets = [0]
  for s in sizes:
    offsets.append(offsets[-1] + s)
  return [jax.tree.map(lambda a, lo=lo, hi=hi: a[lo:hi], tree)
          for lo, hi in zip(offsets[:-1], offsets[1:])]


def make_train_step(model, tx, algorithm, config, *, steps_per_epoch: int, schedule=None):
  """Builds the (un-jitted) pure train step. ``parallel.jit_train_step`` compiles it."""
  algo_cfg = config.algo
  mean, std = tuple(config.data.mean), tuple(config.data.std)
  from_student = config.pseudo_label_source == "student"
  if config.pseudo_label_source not in ("student", "teacher"):
    raise ValueError("config.pseudo_label_source must be 'teacher' or 'student', got "
                     f"{config.pseudo_label_source!r}")
  student_views = list(algorithm.student_views) if algorithm.uses_unlabeled else []
  pseudo_views = list(algorithm.pseudo_views_for(algo_cfg)) if algorithm.uses_unlabeled else []
  # Views whose pseudo-labels come from the student but that the student does not
  # otherwise see: they join the student's forward pass (BatchNorm in train mode, as
  # in FixMatch's reference code) and are stop-gradiented.
  extra_views = [v for v in pseudo_views if from_student and v not in student_views]
  norm = functools.partial(normalize, mean=mean, std=std)
  teacher_on_labeled = algorithm.uses_unlabeled and algorithm.teacher_on_labeled(algo_cfg)
  if config.threshold_stats_source not in ("pseudo_label_source", "teacher"):
    raise ValueError("config.threshold_stats_source must be 'pseudo_label_source' or 'teacher', "
                     f"got {config.threshold_stats_source!r}")
  # The labeled-batch statistic (thresholds) comes from the EMA teacher when the pseudo-
  # labels do, or when asked for (Ada-CM / DTM: student pseudo-labels, EMA thresholds).
  stats_from_teacher = teacher_on_labeled and (
      not from_student or config.threshold_stats_source == "teacher")
  student_decay = float(config.ema.student_decay)

  def train_step(state: TrainState, batch):
    key = jax.random.fold_in(state.rng, state.step)
    x_lb = norm(batch["x_lb"])
    y_lb = batch["y_lb"].astype(jnp.int32)
    names = ["lb"] + student_views + extra_views
    inputs = [x_lb] + [norm(batch["x_" + v]) for v in names[1:]]
    sizes = [x.shape[0] for x in inputs]

    teacher = {}
    t_names = ([] if from_student else list(pseudo_views)) + (["lb"] if stats_from_teacher else [])
    if t_names:
      t_inputs = [x_lb if v == "lb" else norm(batch["x_" + v]) for v in t_names]
      t_out = model.apply({"params": state.ema_params, "batch_stats": state.ema_batch_stats},
                          jnp.concatenate(t_inputs), train=False)
      t_out = jax.lax.stop_gradient(t_out)
      teacher = dict(zip(t_names, _split(t_out, [x.shape[0] for x in t_inputs])))

    def loss_fn(params):
      out, mutated = model.apply({"params": params, "batch_stats": state.batch_stats},
                                 jnp.concatenate(inputs), train=True, rngs={"dropout": key},
                                 mutable=["batch_stats"])
      student = dict(zip(names, _split(out, sizes)))
      logits_lb = student["lb"]["logits"]
      loss_x = jnp.mean(cross_entropy(logits_lb, y_lb))
      weight_x = config.loss.lambda_x * algorithm.labeled_supervision_weight
      if not algorithm.uses_unlabeled:
        aux = dict(batch_stats=mutated["batch_stats"], algo=state.algo, loss_x=loss_x,
                   loss_u=jnp.float32(0.0), algo_metrics={}, mask=None, pseudo=None)
        return weight_x * loss_x, aux

      source = ({v: jax.lax.stop_gradient(student[v]) for v in pseudo_views + ["lb"]}
                if from_student else teacher)
      step_inputs = StepInputs(
          logits_lb=logits_lb, y_lb=y_lb,
          student={v: student[v] for v in student_views},
          pseudo={v: source[v]["logits"] for v in pseudo_views},
          teacher_logits_lb=((teacher if stats_from_teacher else source)["lb"]["logits"]
                             if teacher_on_labeled else None),
          idx_ulb=batch["idx_ulb"].astype(jnp.int32), y_ulb=batch["y_ulb"].astype(jnp.int32),
          step=state.step, epoch=state.step.astype(jnp.float32) / steps_per_epoch,
          steps_per_epoch=steps_per_epoch,
      )
      out_u = algorithm.unlabeled_loss(state.algo, step_inputs, algo_cfg)
      algo_metrics = dict(out_u.metrics)
      if out_u.thresholds is not None:  # the one key of per-class thresholds (algo/tau/<class>)
        algo_metrics["tau"] = out_u.thresholds
      aux = dict(batch_stats=mutated["batch_stats"], algo=out_u.state, loss_x=loss_x,
                 loss_u=out_u.loss, algo_metrics=algo_metrics, mask=out_u.mask,
                 pseudo=out_u.pseudo_labels)
      return weight_x * loss_x + out_u.loss, aux

    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    # Gradient accumulation (optax.MultiSteps): the teacher EMA moves only when the
    # optimizer applied an update, with the decay ramp counted in updates, so k
    # micro-batches of B behave like one batch of kB. BatchNorm statistics and the
    # algorithm's state are statistics of the data and update on every micro-batch.
    n_updates = optim.update_count(tx, state.opt_state, state.step)
    applied = optim.update_applied(tx, opt_state)
    decay = ema_decay(n_updates, config.ema.decay, config.ema.warmup)
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(applied, a, b), new, old)
    ema_params = keep(ema_update(state.ema_params, params, decay), state.ema_params)
    ema_batch_stats = keep(ema_update(state.ema_batch_stats, aux["batch_stats"], decay),
                           state.ema_batch_stats)
    batch_stats = aux["batch_stats"]
    if student_decay:  # after the EMA read them, as the reference WeightEMA.step does
      params = keep(shrink(params, 1.0 - student_decay), params)
      batch_stats = keep(shrink(batch_stats, 1.0 - student_decay), batch_stats)
    new_state = state.replace(
        step=state.step + 1, params=params, batch_stats=batch_stats,
        ema_params=ema_params, ema_batch_stats=ema_batch_stats, opt_state=opt_state,
        algo=aux["algo"])

    metrics = {"loss": loss, "loss_x": aux["loss_x"], "loss_u": aux["loss_u"],
               "grad_norm": global_norm(grads), "ema_decay": decay,
               "nonfinite": nonfinite_flags(loss, grads, new_state)}
    if schedule is not None:
      metrics["lr"] = jnp.asarray(schedule(n_updates), jnp.float32)
    if aux["mask"] is not None:
      metrics.update(pseudo_label_metrics(aux["mask"], aux["pseudo"],
                                          batch["y_ulb"].astype(jnp.int32)))
    metrics.update({"algo/" + k: v for k, v in aux["algo_metrics"].items()})
    return new_state, metrics

  return train_step


# Bits of the step's "nonfinite" metric (``train.describe_nonfinite`` spells them out).
NONFINITE_LOSS, NONFINITE_GRADS, NONFINITE_STATE = 1, 2, 4


def nonfinite_flags(loss, grads, new_state):
  """int32 bit mask: NaN/inf in the loss, the gradients, or the updated state (parameters,
  BatchNorm statistics, teacher, optimizer moments, algorithm state). The loss alone is
  not enough: it is computed before the update, and NaN parameters can give a finite loss
  (a constant prediction). The loop accumulates this on the device and reads it only at
  logging / evaluation / checkpoint steps, always before a save."""
  bit = lambda flag, value: jnp.where(flag, jnp.int32(value), jnp.int32(0))
  return (bit(~jnp.isfinite(loss), NONFINITE_LOSS) | bit(any_nonfinite(grads), NONFINITE_GRADS)
          | bit(any_nonfinite(new_state), NONFINITE_STATE))


def pseudo_label_metrics(mask, pseudo, y_true):
  """Mask rate, and where true labels are known (y >= 0) the precision of the kept
  pseudo-labels and the accuracy of all pseudo-labels."""
  known = (y_true >= 0).astype(jnp.float32)
  correct = (pseudo == y_true).astype(jnp.float32) * known
  kept = mask * known
  return {
      "mask_rate": jnp.mean(mask),
      "pl_precision": jnp.sum(kept * correct) / jnp.maximum(jnp.sum(kept), 1e-8),
      "pl_accuracy_all": jnp.sum(correct) / jnp.maximum(jnp.sum(known), 1.0),
  }


def make_eval_step(model, config, num_classes: int):
  """(state, x uint8, y, valid) -> per-network confusion matrices (C, C), float32 counts."""
  mean, std = tuple(config.data.mean), tuple(config.data.std)

  def confusion(logits, y, valid):
    pred = jnp.argmax(logits, -1)
    t = jax.nn.one_hot(y, num_classes) * valid[:, None]
    return t.T @ jax.nn.one_hot(pred, num_classes)

  def eval_step(state: TrainState, x, y, valid):
    x = normalize(x, mean, std)
    valid = valid.astype(jnp.float32)
    teacher = model.apply({"params": state.ema_params, "batch_stats": state.ema_batch_stats},
                          x, train=False)["logits"]
    student = model.apply({"params": state.params, "batch_stats": state.batch_stats},
                          x, train=False)["logits"]
    return {"teacher": confusion(teacher, y, valid), "student": confusion(student, y, valid)}

  return eval_step
