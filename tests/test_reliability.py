"""A run never lies about its state (issue #18): non-finite state, damaged checkpoints,
torn run files, the workdir lock, config ranges, signals."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import SingleDeviceSharding

from conftest import Killed, restored_state, tiny_config
from ssfer_jax import checkpoint, config as config_lib, rundir, train

RESUME = {"train.num_steps": 12, "train.checkpoint_every": 4, "train.eval_every": 4}


def _assert_bitwise_equal(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
  """One uninterrupted 12-step run (checkpoints at 4, 8, 12) the resume tests compare to."""
  workdir = tmp_path_factory.mktemp("straight")
  config = tiny_config("fixmatch", **RESUME)
  summary = train.run(config, workdir)
  return workdir, config, summary, restored_state(workdir, config)


# -- non-finite state -----------------------------------------------------------------

def test_huge_lr_stops_and_no_checkpoint_holds_a_nonfinite_value(tmp_path):
  """lr=1e30: the loss of the first steps is finite, the state is not; the run stops
  naming the step and every checkpoint on disk is finite."""
  config = tiny_config("fixmatch", **{"optim.lr": 1e30, "train.num_steps": 8,
                                      "train.checkpoint_every": 1, "train.log_every": 4})
  with pytest.raises(train.NonFiniteLossError, match=r"non-finite .* at step \d+") as err:
    train.run(config, tmp_path)
  assert "updated state" in str(err.value)
  ckpt = checkpoint.Checkpointer(tmp_path, keep=5, async_save=False)
  steps = ckpt.manager.all_steps()
  abstract = train.Trainer(config, tmp_path).abstract_state
  for step in steps:
    leaves = jax.tree.leaves(jax.device_get(ckpt.restore_state(step, abstract)))
    assert all(np.isfinite(x).all() for x in leaves if np.issubdtype(x.dtype, np.floating)), step
  ckpt.close()
  bad = int(str(err.value).split(" at step ")[1].split(";")[0])
  assert max(steps, default=0) <= bad  # nothing saved after the first bad update


def test_nonfinite_flags_cover_state_and_gradients():
  from ssfer_jax import step as step_lib
  ok = {"w": jnp.ones(3)}
  nan = {"w": jnp.array([1.0, jnp.nan, 1.0])}
  assert int(step_lib.nonfinite_flags(jnp.float32(1.0), ok, ok)) == 0
  assert int(step_lib.nonfinite_flags(jnp.float32(1.0), ok, nan)) == step_lib.NONFINITE_STATE
  assert int(step_lib.nonfinite_flags(jnp.float32(1.0), nan, ok)) == step_lib.NONFINITE_GRADS
  assert int(step_lib.nonfinite_flags(jnp.float32(jnp.inf), ok, ok)) == step_lib.NONFINITE_LOSS
  assert train.describe_nonfinite(6) == "gradients and updated state"


# -- checkpoint integrity and fallback ----------------------------------------------------

def _tiny_tree(value):
  return {"w": jnp.full((300,), value, jnp.float32), "n": jnp.int32(7)}


def _abstract():
  s = SingleDeviceSharding(jax.devices()[0])
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), _tiny_tree(0.0))


def _largest_file(d):
  files = [os.path.join(r, f) for r, _, fs in os.walk(d) for f in fs]
  return max(files, key=os.path.getsize)


def _flip_byte(d):
  p = _largest_file(d / "state")
  data = bytearray(open(p, "rb").read())
  data[len(data) // 2] ^= 0x01
  open(p, "wb").write(bytes(data))


def _truncate(d):
  p = _largest_file(d / "state")
  os.truncate(p, os.path.getsize(p) // 2)


def _empty_dir(d):
  shutil.rmtree(d)
  d.mkdir()


DAMAGE = {
    "flipped_byte": _flip_byte,
    "truncated_data_file": _truncate,
    "empty_step_dir": _empty_dir,
    "missing_METADATA": lambda d: (d / "state" / "_METADATA").unlink(),
    "missing_CHECKPOINT_METADATA": lambda d: (d / "_CHECKPOINT_METADATA").unlink(),
    "missing_data_item": lambda d: shutil.rmtree(d / "data"),
    "missing_state_item": lambda d: shutil.rmtree(d / "state"),
    "missing_manifest": lambda d: (d / "state" / "manifest.ocdbt").unlink(),
    "torn_checksums": lambda d: (d / checkpoint.CHECKSUMS).write_text('{"algor'),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_newest_checkpoint_falls_back_to_the_previous(tmp_path, damage, capsys):
  ckpt = checkpoint.Checkpointer(tmp_path, keep=3, async_save=True)
  ckpt.save(1, _tiny_tree(1.0), {"it": 1})
  ckpt.save(2, _tiny_tree(2.0), {"it": 2})
  ckpt.close()
  step_dir = tmp_path / "checkpoints" / "2"
  DAMAGE[damage](step_dir)
  ckpt = checkpoint.Checkpointer(tmp_path, keep=3, async_save=True)
  step, state, data = ckpt.restore_latest(_abstract())
  assert (step, data) == (1, {"it": 1}) and float(state["w"][0]) == 1.0
  err = capsys.readouterr().err
  assert f"checkpoint step 2 skipped ({step_dir}" in err and "resuming from step 1" in err
  assert not step_dir.exists() and len(list((tmp_path / "checkpoints_damaged").iterdir())) == 1
  assert ckpt.latest_step() == 1
  ckpt.save(2, _tiny_tree(3.0), {"it": 3})  # the step number is free again
  ckpt.close()


def test_async_save_is_checksummed_once_finalised(tmp_path):
  import time
  ckpt = checkpoint.Checkpointer(tmp_path, keep=3, async_save=True)
  ckpt.save(1, _tiny_tree(1.0), {"it": 1})
  deadline = time.time() + 60
  while ckpt.manager.is_saving_in_progress():
    assert time.time() < deadline
    time.sleep(0.05)
  ckpt.poll()  # what the loop does at its logging steps, before any next save
  assert checkpoint.verify_checksums(tmp_path / "checkpoints" / "1")
  ckpt.close()


def test_nonfinite_checkpoint_is_skipped_and_all_bad_is_an_error(tmp_path):
  ckpt = checkpoint.Checkpointer(tmp_path, keep=3, async_save=False)
  ckpt.save(1, _tiny_tree(1.0), {"it": 1})
  ckpt.save(2, _tiny_tree(float("nan")), {"it": 2})  # as written by an older version
  assert ckpt.restore_latest(_abstract())[0] == 1
  _flip_byte(tmp_path / "checkpoints" / "1")
  ckpt.manager.reload()
  with pytest.raises(checkpoint.CheckpointDamagedError, match=r"step 1 .*SHA-256 mismatch"):
    ckpt.restore_latest(_abstract())
  ckpt.close()


def test_flipped_byte_in_newest_checkpoint_resumes_bitwise_equal(tmp_path, straight, capsys,
                                                                kill_after):
  _, config, summary, ref = straight
  kill_after(10)                                   # checkpoints at 4 and 8, then killed
  with pytest.raises(Killed):
    train.run(config, tmp_path)
  _flip_byte(tmp_path / "checkpoints" / "8")
  again = train.run(config, tmp_path)              # skips 8, resumes at 4
  out, err = capsys.readouterr()
  assert "checkpoint step 8 skipped" in err and "SHA-256 mismatch" in err
  assert "resuming from the checkpoint at step 4" in out  # the banner (console.say: stdout)
  _assert_bitwise_equal(ref, restored_state(tmp_path, config))
  assert again["teacher"] == summary["teacher"]


# -- torn run files ---------------------------------------------------------------------

def test_torn_summary_and_eval_files_are_rebuilt(tmp_path, straight):
  src, config, summary, _ = straight
  workdir = tmp_path / "run"
  shutil.copytree(src, workdir)
  (workdir / "summary.json").write_text("")                         # killed while writing
  (workdir / "eval" / "step_12.json").write_text('{"step": 12, "cl')
  (workdir / "eval" / "step_4.json").write_text('{"step": 4, "cl')
  (workdir / "config.json").write_text('{"algo": {')
  with open(workdir / "metrics.jsonl", "a") as f:
    f.write('{"step": 13, "kind": "tr')                               # a cut last line
  again = train.run(config, workdir)
  assert again["teacher"] == summary["teacher"] and again["student"] == summary["student"]
  assert again["train"] == summary["train"]
  assert again["wall_time_s"] == pytest.approx(summary["wall_time_s"], rel=0.5)
  assert json.loads((workdir / "summary.json").read_text()) == again
  assert json.loads((workdir / "eval" / "step_12.json").read_text())["step"] == 12
  assert json.loads((workdir / "config.json").read_text())["algorithm"] == "fixmatch"
  assert not (workdir / "config.previous.json").exists()  # a torn file is no "previous config"
  rows = rundir.read_jsonl(workdir / "metrics.jsonl")  # the cut line was cut off before appending
  assert (workdir / "metrics.jsonl").read_text().endswith("\n") and rows


def test_readers_name_the_file_and_line(tmp_path):
  p = tmp_path / "metrics.jsonl"
  p.write_text('{"step": 1}\n{"step": 2\n{"step": 3}\n')
  with pytest.raises(rundir.UnreadableFileError, match=r"metrics.jsonl line 2: not valid JSON"):
    rundir.read_jsonl(p)
  p.write_text('{"step": 1}\n{"step": 2')
  assert rundir.read_jsonl(p) == [{"step": 1}]
  (tmp_path / "config.json").write_text("")
  with pytest.raises(rundir.UnreadableFileError, match=r"config.json line 1 column 1: empty"):
    rundir.read_json(tmp_path / "config.json")


def test_atomic_write_leaves_the_old_file_on_failure(tmp_path, monkeypatch):
  p = tmp_path / "summary.json"
  rundir.write_json(p, {"a": 1})
  monkeypatch.setattr(os, "replace", lambda *a: (_ for _ in ()).throw(OSError(28, "No space")))
  with pytest.raises(OSError, match=r"cannot write .*summary.json"):
    rundir.write_json(p, {"a": 2})
  assert json.loads(p.read_text()) == {"a": 1} and os.listdir(tmp_path) == ["summary.json"]


# -- workdir lock -------------------------------------------------------------------------

def test_second_run_on_a_locked_workdir_is_refused(tmp_path):
  holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
  try:
    (tmp_path / ".lock").write_text(json.dumps(
        {"pid": holder.pid, "host": socket.gethostname(), "started": 0}))
    with pytest.raises(train.WorkdirLockedError,
                       match=rf"workdir {tmp_path} is in use by another run \(pid {holder.pid}"):
      train.run(tiny_config(), tmp_path)
  finally:
    holder.kill()
    holder.wait()
  assert not (tmp_path / "config.json").exists()  # refused before touching the run's files
  lock = rundir.WorkdirLock(tmp_path).acquire()   # the holder is dead now: stale, taken over
  assert json.loads((tmp_path / ".lock").read_text())["pid"] == os.getpid()
  lock.release()
  assert not (tmp_path / ".lock").exists()


# -- config ranges -------------------------------------------------------------------------

BAD_VALUES = [("train.checkpoint_every", 0), ("train.log_every", 0), ("train.eval_every", 0),
              ("data.batch_size", 0), ("data.uratio", 0), ("eval.batch_size", 0),
              ("data.image_size", 0), ("train.num_steps", -5), ("optim.lr", -0.01),
              ("optim.lr", float("nan")), ("ema.decay", 2.0), ("train.keep_checkpoints", 0)]


@pytest.mark.parametrize("key,value", BAD_VALUES)
def test_out_of_range_config_values_are_rejected_before_start_up(tmp_path, key, value):
  with pytest.raises(ValueError, match=rf"config\.{key}={value!r} is out of range: it must be"):
    train.run(tiny_config(**{key: value}), tmp_path / "run")
  assert not (tmp_path / "run").exists()


def test_range_messages_state_the_allowed_range():
  with pytest.raises(ValueError, match=r"config\.ema\.decay=2\.0 .* must be in \[0\.0, 1\.0\]"):
    config_lib.validate(tiny_config(**{"ema.decay": 2.0}))
  with pytest.raises(ValueError, match=r"config\.optim\.lr=0\.0 .* must be > 0\.0"):
    config_lib.validate(tiny_config(**{"optim.lr": 0.0}))
  config_lib.validate(tiny_config())


@pytest.mark.parametrize("value", ["Disallow", "off", "", None])
def test_transfer_guard_must_be_one_of_its_levels(tmp_path, value):
  with pytest.raises(ValueError, match=rf"config\.train\.transfer_guard={value!r} is not valid: "
                     "use one of 'allow', 'log', 'disallow'"):
    train.run(tiny_config(**{"train.transfer_guard": value}), tmp_path / "run")
  assert not (tmp_path / "run").exists()
  for level in ("allow", "log", "disallow"):
    config_lib.validate(tiny_config(**{"train.transfer_guard": level}))


# -- signals ---------------------------------------------------------------------------------

def test_sigterm_then_ctrl_c_then_resume_equals_uninterrupted(tmp_path, straight, monkeypatch):
  """SIGTERM: a checkpoint at the next step and {"preempted_at"}; Ctrl-C: the run stops
  after the step with ``Interrupted`` (one line), no new checkpoint; the same command
  then finishes bitwise-equal to the uninterrupted run."""
  _, config, summary, ref = straight
  plan = {}
  orig = train._accumulate

  def accumulate(acc, metrics, step):
    sig = plan.pop(int(step), None)
    if sig is not None:
      os.kill(os.getpid(), sig)
    return orig(acc, metrics, step)

  monkeypatch.setattr(train, "_accumulate", accumulate)
  plan[2] = signal.SIGTERM  # during the update from step 2 to 3
  assert train.run(config, tmp_path) == {"preempted_at": 3}
  assert sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir()) == [3]
  plan[6] = signal.SIGINT
  before = signal.getsignal(signal.SIGINT)
  with pytest.raises(train.Interrupted, match=r"after step 7; the checkpoint at step 4 .* is "
                                              r"complete"):
    train.run(config, tmp_path)
  assert signal.getsignal(signal.SIGINT) is before  # the run's handlers are undone
  again = train.run(config, tmp_path)
  _assert_bitwise_equal(ref, restored_state(tmp_path, config))
  assert again["teacher"] == summary["teacher"]
  assert not (tmp_path / ".lock").exists()


def test_ctrl_c_during_start_up_is_not_lost_when_a_library_swallows_it(tmp_path, monkeypatch):
  orig = checkpoint.Checkpointer.restore_latest

  def swallowing_restore(self, abstract_state):
    try:
      os.kill(os.getpid(), signal.SIGINT)
      sum(range(1000))  # the handler runs here, between bytecodes
    except KeyboardInterrupt:
      pass  # what a library catching BaseException would do
    return orig(self, abstract_state)

  monkeypatch.setattr(checkpoint.Checkpointer, "restore_latest", swallowing_restore)
  with pytest.raises(train.Interrupted, match=r"outside the training loop; no checkpoint was lost"):
    train.run(tiny_config(), tmp_path)
  assert not (tmp_path / "checkpoints" / "4").exists() and not (tmp_path / ".lock").exists()
