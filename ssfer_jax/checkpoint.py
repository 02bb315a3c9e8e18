"""Orbax checkpoints of the whole run: the train state and the input iterators' state.

Layout: ``WORKDIR/checkpoints/<step>/{state,data}``. ``state`` is the TrainState pytree
(sharded arrays are saved and restored by every host); ``data`` is the JSON state of
the grain iterators, saved in the same step so a resumed run sees exactly the batches
an uninterrupted run would have seen.
"""

from __future__ import annotations

import logging

import jax
import orbax.checkpoint as ocp
from etils import epath


def abstract_like(state, shardings):
  """ShapeDtypeStructs carrying the current mesh's shardings (restore target)."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      state, shardings)


class Checkpointer:

  def __init__(self, workdir, *, keep: int, async_save: bool = True):
    self.directory = epath.Path(workdir) / "checkpoints"
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                           enable_async_checkpointing=async_save)
    self.manager = ocp.CheckpointManager(self.directory, options=options,
                                         item_names=("state", "data"))

  def latest_step(self):
    return self.manager.latest_step()

  def save(self, step: int, state, data_state: dict) -> None:
    self.manager.save(int(step), args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state)), force=True)
    logging.info("checkpoint saved at step %d in %s", step, self.directory)

  def restore(self, step: int, abstract_state):
    restored = self.manager.restore(int(step), args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
    return restored["state"], restored["data"]

  def restore_state(self, step: int, abstract_state):
    """Only the train state (for evaluation / prediction)."""
    restored = self.manager.restore(int(step), args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state)))
    return restored["state"]

  def wait(self):
    self.manager.wait_until_finished()

  def close(self):
    self.manager.wait_until_finished()
    self.manager.close()
