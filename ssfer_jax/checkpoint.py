"""Orbax checkpoints of the whole run: the train state and the input iterators' state.

Layout: ``WORKDIR/checkpoints/<step>/{state,data,checksums.json}``. ``state`` is the
TrainState pytree (sharded arrays are saved and restored by every host); ``data`` is the
JSON state of the grain iterators, saved in the same step so a resumed run sees exactly
the batches an uninterrupted run would have seen.

Integrity: orbax (0.12) verifies no checksum of the array bytes (its zarr3 layout has a
crc32c only on the shard index; a flipped bit in an OCDBT data file restores silently),
so ``checksums.json`` holds the SHA-256 and size of every file of a step. Process 0
writes it once the step is finalised: right after a synchronous save, and for an
asynchronous one at the first ``poll`` (the loop's logging steps), ``save``, ``wait`` or
``close`` after it finalised. ``restore_latest`` verifies it, restores, checks that
every value is finite, and on any failure falls back to the next older step, moving the
damaged one to ``WORKDIR/checkpoints_damaged/`` and saying which and why. A step without
``checksums.json`` (killed between finalising and checksumming) is restored unverified.
"""

from __future__ import annotations

import hashlib
import logging
import sys
import time

import jax
import orbax.checkpoint as ocp
from etils import epath

from ssfer_jax import reductions, rundir

CHECKSUMS = "checksums.json"
DAMAGED_DIR = "checkpoints_damaged"


def abstract_like(state, shardings):
  """ShapeDtypeStructs carrying the current mesh's shardings (restore target)."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      state, shardings)


_any_nonfinite_jit = jax.jit(reductions.any_nonfinite)


class CheckpointDamagedError(ValueError):
  """A step directory failed verification or restore."""


def step_files(step_dir: epath.Path):
  """{relative path: file} of every file under a step directory but the checksum file."""
  out, todo = {}, [step_dir]
  while todo:  # a walk by hand: epath has no recursive glob on object stores
    for p in todo.pop().iterdir():
      if p.is_dir():
        todo.append(p)
      elif p.name != CHECKSUMS or p.parent != step_dir:
        out[str(p.relative_to(step_dir))] = p
  return dict(sorted(out.items()))


def _digest(path: epath.Path) -> str:
  h = hashlib.sha256()
  with path.open("rb") as f:
    for chunk in iter(lambda: f.read(1 << 22), b""):
      h.update(chunk)
  return h.hexdigest()


def write_checksums(step_dir: epath.Path) -> None:
  step_dir = epath.Path(step_dir)
  sums = {rel: {"sha256": _digest(p), "size": p.stat().length}
          for rel, p in step_files(step_dir).items()}
  rundir.write_json(step_dir / CHECKSUMS, {"algorithm": "sha256", "files": sums}, indent=1)


def verify_checksums(step_dir: epath.Path) -> bool:
  """Raises ``CheckpointDamagedError`` naming the first bad file; False when the step has
  no checksum file (nothing to verify), True when every listed file matches."""
  step_dir = epath.Path(step_dir)
  if not step_dir.is_dir():
    raise CheckpointDamagedError(f"{step_dir} is not a directory")
  try:
    listed = rundir.read_json(step_dir / CHECKSUMS)
  except rundir.UnreadableFileError as e:
    raise CheckpointDamagedError(f"checksum file unreadable: {e}") from None
  if listed is None:
    return False
  for rel, want in listed["files"].items():
    p = step_dir / rel
    if not p.exists():
      raise CheckpointDamagedError(f"{p} is missing")
    size = p.stat().length
    if size != want["size"]:
      raise CheckpointDamagedError(f"{p} has {size} bytes, {want['size']} when saved")
    if _digest(p) != want["sha256"]:
      raise CheckpointDamagedError(f"{p} has changed since it was saved (SHA-256 mismatch)")
  return True


class Checkpointer:

  def __init__(self, workdir, *, keep: int, async_save: bool = True, owner: bool = False):
    """``owner``: the training run that writes here (it deletes the temporary directories
    of saves a kill interrupted; a reader must not, as a live run may be saving)."""
    self.directory = epath.Path(workdir) / "checkpoints"
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                           enable_async_checkpointing=async_save,
                                           cleanup_tmp_directories=owner)
    self.manager = ocp.CheckpointManager(self.directory, options=options,
                                         item_names=("state", "data"))
    self.async_save = async_save
    self._unsummed = []  # saved steps whose checksum file is not written yet

  def latest_step(self):
    return self.manager.latest_step()

  def step_dir(self, step: int) -> epath.Path:
    return self.directory / str(int(step))

  def save(self, step: int, state, data_state: dict) -> None:
    self.wait()  # orbax would wait for the previous save here anyway; then checksum it
    self.manager.save(int(step), args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state)), force=True)
    self._unsummed.append(int(step))
    if not self.async_save:
      self._write_pending_checksums()
    logging.info("checkpoint saved at step %d in %s", step, self.directory)

  def poll(self) -> None:
    """Checksums an asynchronous save as soon as it has finalised (the loop calls this at
    its logging steps), so a kill soon after leaves a verifiable newest step."""
    if self._unsummed and not self.manager.is_saving_in_progress():
      self._write_pending_checksums()

  def _write_pending_checksums(self) -> None:
    pending, self._unsummed = self._unsummed, []
    if jax.process_index() != 0:
      return
    for step in pending:
      d = self.step_dir(step)
      if d.is_dir():  # max_to_keep may have removed it already
        write_checksums(d)

  def restore(self, step: int, abstract_state):
    restored = self.manager.restore(int(step), args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
    return restored["state"], restored["data"]

  def restore_state(self, step: int, abstract_state):
    """Only the train state (for evaluation / prediction)."""
    restored = self.manager.restore(int(step), args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state)))
    return restored["state"]

  def restore_latest(self, abstract_state):
    """(step, state, data_state) of the newest step that verifies, restores and is
    finite, or None when there is no checkpoint. Damaged newer steps are moved aside
    (one stderr line each: path and cause). When every step fails, raises naming each
    cause, since that is more likely a changed config than damage."""
    failures = []
    for step in sorted(self.manager.all_steps(), reverse=True):
      d = self.step_dir(step)
      try:
        verified = verify_checksums(d)
        state, data_state = self.restore(step, abstract_state)
        if bool(jax.device_get(_any_nonfinite_jit(state))):
          raise CheckpointDamagedError("it holds non-finite values (NaN/inf)")
      except Exception as e:  # noqa: BLE001 -- damage shows as any error type orbax raises
        cause = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        failures.append((step, d, f"{type(e).__name__}: {cause}"))
        continue
      if not verified:
        logging.warning("%s has no %s (saved by an older version, or killed before it "
                        "was written): restored unverified", d, CHECKSUMS)
      if failures:
        self._set_aside(failures, kept=step)
      return step, state, data_state
    if failures:
      raise CheckpointDamagedError(
          f"no checkpoint in {self.directory} could be restored: " + "; ".join(
              f"step {s} ({cause})" for s, _, cause in failures)
          + ". If the config changed, use a new --workdir; if they are damaged, move "
          f"{self.directory} away to start afresh")
    return None

  def _set_aside(self, failures, *, kept: int) -> None:
    dest_root = self.directory.parent / DAMAGED_DIR
    for step, d, cause in failures:
      print(f"checkpoint step {step} skipped ({d}: {cause}); resuming from step {kept}",
            file=sys.stderr, flush=True)
      if jax.process_index() == 0 and d.exists():
        dest_root.mkdir(parents=True, exist_ok=True)
        dest = dest_root / f"{step}-{int(time.time())}"
        d.rename(dest)
        logging.warning("moved the damaged checkpoint %s to %s", d, dest)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      multihost_utils.sync_global_devices("checkpoint_set_aside")
    self.manager.reload()

  def wait(self):
    self.manager.wait_until_finished()
    self._write_pending_checksums()

  def close(self):
    self.wait()
    self.manager.close()
