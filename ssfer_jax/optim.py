"""Optimizer and learning-rate schedule from ``config.optim``."""

from __future__ import annotations

import optax


def make_schedule(cfg, num_steps: int):
  if cfg.schedule == "constant":
    main = optax.constant_schedule(cfg.lr)
  elif cfg.schedule == "cosine":
    main = optax.cosine_decay_schedule(cfg.lr, max(1, num_steps - cfg.warmup_steps))
  else:
    raise ValueError(f"config.optim.schedule must be 'constant' or 'cosine', got {cfg.schedule!r}")
  if cfg.warmup_steps > 0:
    return optax.join_schedules([optax.linear_schedule(0.0, cfg.lr, cfg.warmup_steps), main],
                                [cfg.warmup_steps])
  return main


def make_optimizer(cfg, num_steps: int):
  """Returns (schedule, optax transformation).

  ``num_steps`` counts batches (train steps). With ``cfg.accum_steps = k > 1`` the
  optimizer is wrapped in ``optax.MultiSteps``: it averages the gradients of k
  consecutive batches and updates once, so the schedule (and ``warmup_steps``) runs
  over ``num_steps // k`` optimizer updates.
  """
  if cfg.accum_steps < 1:
    raise ValueError(f"config.optim.accum_steps must be >= 1, got {cfg.accum_steps}")
  schedule = make_schedule(cfg, max(1, num_steps // cfg.accum_steps))
  if cfg.name == "adam":
    opt = optax.adam(schedule)
    if cfg.weight_decay:
      opt = optax.chain(optax.add_decayed_weights(cfg.weight_decay), opt)
  elif cfg.name == "adamw":
    opt = optax.adamw(schedule, weight_decay=cfg.weight_decay)
  elif cfg.name == "sgd":
    opt = optax.chain(optax.add_decayed_weights(cfg.weight_decay),
                      optax.sgd(schedule, momentum=cfg.momentum, nesterov=True))
  else:
    raise ValueError(f"config.optim.name must be adam, adamw or sgd, got {cfg.name!r}")
  if cfg.grad_clip > 0:
    opt = optax.chain(optax.clip_by_global_norm(cfg.grad_clip), opt)
  if cfg.accum_steps > 1:
    opt = optax.MultiSteps(opt, every_k_schedule=cfg.accum_steps)
  return schedule, opt


def update_count(tx, opt_state, step):
  """Optimizer updates applied before this step: ``step`` itself, or with
  ``optax.MultiSteps`` its ``gradient_step`` counter (a step is a batch)."""
  if isinstance(tx, optax.MultiSteps):
    return opt_state.gradient_step
  return step


def update_applied(tx, new_opt_state):
  """Whether the step that produced ``new_opt_state`` changed the parameters (always,
  except on the accumulation-only micro-steps of ``optax.MultiSteps``)."""
  if isinstance(tx, optax.MultiSteps):
    return tx.has_updated(new_opt_state)
  return True
