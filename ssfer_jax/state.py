"""The train state: one pytree of arrays, nothing static, so it jits, shards and
checkpoints as a whole."""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp

PyTree = Any


@flax.struct.dataclass
class TrainState:
  step: jax.Array            # () int32, train steps (batches) taken; the optimizer updates every accum_steps
  params: PyTree             # student parameters
  batch_stats: PyTree        # student BatchNorm statistics
  ema_params: PyTree         # teacher parameters (EMA of the student)
  ema_batch_stats: PyTree    # teacher BatchNorm statistics (EMA of the student's)
  opt_state: PyTree          # optax state
  rng: jax.Array             # base PRNG key; step keys are fold_in(rng, step)
  algo: PyTree               # the algorithm's own state (thresholds, counters, EMAs)


def create(model, tx, algorithm, algo_cfg, *, rng, image_shape, num_classes, num_unlabeled):
  """Initial state. Pure: call it under ``jax.jit(..., out_shardings=...)``."""
  init_rng, state_rng = jax.random.split(rng)
  dummy = jnp.zeros((2,) + tuple(image_shape), jnp.float32)
  variables = model.init({"params": init_rng, "dropout": init_rng}, dummy, train=False)
  params = variables["params"]
  batch_stats = variables.get("batch_stats", {})
  return TrainState(
      step=jnp.zeros((), jnp.int32),
      params=params,
      batch_stats=batch_stats,
      ema_params=jax.tree.map(jnp.copy, params),
      ema_batch_stats=jax.tree.map(jnp.copy, batch_stats),
      opt_state=tx.init(params),
      rng=state_rng,
      algo=algorithm.init_state(algo_cfg, num_classes, num_unlabeled),
  )
