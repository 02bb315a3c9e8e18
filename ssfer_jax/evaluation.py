"""The one evaluation loop: confusion matrices of the teacher and the student over a test set.

    cms = evaluation.confusion_matrices(eval_step, state, images, labels,
                                        batch_size=B, sharding=batch_sharding)
    # {'teacher': (C, C), 'student': (C, C)} numpy counts, rows true, columns predicted

``eval_step`` is ``step.make_eval_step`` compiled over a mesh; the trainer calls this
with its live TrainState (``Trainer.evaluate``), and ``python -m ssfer_jax.tools.evaluate``
with the variables of a restored checkpoint (``run_confusions``). Both batch the same
way (``pipeline.eval_batches``: fixed-size global batches, the last one padded with
rows of valid=0), so a run's final checkpoint evaluated on its own test split gives the
counts its ``summary.json`` was computed from.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from ssfer_jax import models, parallel
from ssfer_jax import step as step_lib
from ssfer_jax.data import pipeline
from ssfer_jax.state import TrainState

NETS = ("teacher", "student")  # the eval step's outputs: the EMA teacher and the student


def confusion_matrices(eval_step, state, images, labels, batch_size: int, sharding) -> dict:
  """{net: (C, C) numpy confusion counts} of ``eval_step(state, x, y, valid)`` summed
  over fixed-size global batches of ``batch_size`` (placed with ``sharding``). The sum
  stays on the device; one transfer at the end. No examples: zero counts."""
  totals = None
  for x, y, valid in pipeline.eval_batches(images, labels, batch_size):
    b = parallel.global_batch({"x": x, "y": y, "valid": valid}, sharding)
    out = eval_step(state, b["x"], b["y"], b["valid"])
    totals = out if totals is None else jax.tree.map(jnp.add, totals, out)
  if totals is None:  # the step's output shapes, without running it
    spec = lambda shape, dtype: jax.ShapeDtypeStruct((batch_size,) + tuple(shape), dtype)
    shapes = jax.eval_shape(eval_step, state, spec(images.shape[1:], images.dtype),
                            spec((), np.int32), spec((), np.bool_))
    return {net: np.zeros(s.shape, s.dtype) for net, s in shapes.items()}
  return {net: np.asarray(cm) for net, cm in jax.device_get(totals).items()}


def eval_mesh(config):
  """The run's mesh (config.mesh) when this machine can hold it with
  config.eval.batch_size divisible; else one device (same counts, maybe a last-bit
  different logit)."""
  n = int(config.mesh.num_devices)
  devices = jax.devices()[:n] if n else jax.devices()
  if len(devices) == (n or len(devices)) and config.eval.batch_size % len(devices) == 0:
    try:
      return parallel.make_mesh(config.mesh, devices)
    except ValueError:
      pass
  one = ml_collections.ConfigDict({"fsdp": 1})
  return parallel.make_mesh(one, jax.devices()[:1])


def run_confusions(config, num_classes: int, teacher: dict, student: dict, images,
                   labels) -> dict:
  """``confusion_matrices`` of restored variables ({"params", "batch_stats"} of each net,
  ``inference.restore``) with the trainer's eval step on the run's mesh and
  ``config.eval.batch_size``."""
  mesh = eval_mesh(config)
  replicated = NamedSharding(mesh, P())
  batch_sharding = parallel.batch_sharding(mesh)
  state = TrainState(step=None, params=student["params"],
                     batch_stats=student.get("batch_stats", {}),
                     ema_params=teacher["params"], ema_batch_stats=teacher.get("batch_stats", {}),
                     opt_state=None, rng=None, algo=None)
  state = jax.device_put(state, replicated)
  model = models.build_model(config.model, num_classes)
  eval_step = jax.jit(step_lib.make_eval_step(model, config, num_classes),
                      in_shardings=(replicated,) + (batch_sharding,) * 3, out_shardings=replicated)
  return confusion_matrices(eval_step, state, images, labels, config.eval.batch_size,
                            batch_sharding)
