"""Kills a real ``python -m ssfer_jax.main`` run with SIGKILL at random points and checks
that re-running the same command until it finishes ends bitwise-equal to a run that was
never killed (issue #18).

    python bench/fault_injection.py --kills=8 [--seed=0] [--workdir=/tmp/ssfer_faults]

One uninterrupted reference run is timed (in total and to its first progress line).
Then, for each kill point, a fresh workdir is run, killed after a random delay (even
points: uniform over the reference's start-up, from the start; odd points: uniform over
the length of its training part, counted from the run's first progress line, where steps,
evaluations and asynchronous checkpoint saves alternate), and the same command is run
again to the end (a run that finished before its kill is
redrawn, up to three times). Each kill is classified by what the
process had shown (an orbax temporary directory: a save in flight; no progress line:
start-up). A kill point counts as bitwise-equal when the rerun exits 0, every leaf of
its final train state (checkpoints/<num_steps>/state) equals the reference's and
summary.json's teacher / student evaluations are identical. Prints one line per run
and ``k/N kill points bitwise-equal``.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import common  # bench/common.py: the repository on sys.path
import numpy as np
from absl import flags

from ssfer_jax import cli

TINY = ["--config.dataset.num_train=240", "--config.dataset.num_test=64",
        "--config.dataset.render_size=24", "--config.data.image_size=24",
        "--config.data.batch_size=8", "--config.data.uratio=2",
        "--config.data.labels_per_class=4", "--config.data.read_threads=1",
        "--config.eval.batch_size=32", "--config.train.num_steps=60",
        "--config.train.checkpoint_every=5", "--config.train.eval_every=10",
        "--config.train.log_every=5", "--config.train.keep_checkpoints=2",
        "--config.mesh.num_devices=1"]


STEPS = int(next(f for f in TINY if "num_steps" in f).split("=")[1])


def command(workdir: str) -> list:
  return [sys.executable, "-m", "ssfer_jax.main", "--config=configs/default.py",
          f"--workdir={workdir}"] + TINY


def _in_flight_save(workdir: str) -> bool:
  d = os.path.join(workdir, "checkpoints")
  return os.path.isdir(d) and any("tmp" in name for name in os.listdir(d))


def run_once(workdir: str, kill_after: float | None, log, *, from_first_step=False):
  """(return code, phase at the kill or None, stderr tail, seconds to the first progress
  line or None). ``from_first_step``: ``kill_after`` counts from the first progress line
  (so the kill lands in training however long start-up took on a loaded machine)."""
  err_path = os.path.join(workdir + ".stderr")
  with open(err_path, "w") as err:
    t0 = time.time()
    proc = subprocess.Popen(command(workdir), cwd=common.ROOT, stdout=subprocess.DEVNULL, stderr=err,
                            env={**os.environ, "PYTHONPATH": common.ROOT})
    phase, first_step = None, None
    deadline = None if kill_after is None or from_first_step else t0 + kill_after
    while proc.poll() is None and (deadline is None or time.time() < deadline):
      if first_step is None and f"/{STEPS} |" in open(err_path).read():
        first_step = time.time() - t0
        if from_first_step:
          deadline = time.time() + kill_after
      time.sleep(0.05)
    if proc.poll() is None:
      text = open(err_path).read()
      phase = ("save in flight" if _in_flight_save(workdir) else
               "start-up" if f"/{STEPS} |" not in text else "training/eval")
      os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
  tail = open(err_path).read()[-1500:]
  log(f"  rc={proc.returncode} killed={'yes (' + phase + ')' if phase else 'no'}")
  return proc.returncode, phase, tail, first_step


def final_state(workdir: str, step: int) -> dict:
  import orbax.checkpoint as ocp
  import jax
  tree = ocp.StandardCheckpointer().restore(os.path.join(workdir, "checkpoints", str(step), "state"))
  return {jax.tree_util.keystr(k): np.asarray(v) for k, v in jax.tree_util.tree_leaves_with_path(tree)}


FLAGS = flags.FlagValues()
_KILLS = flags.DEFINE_integer("kills", 8, "number of kill points", lower_bound=1, flag_values=FLAGS)
_SEED = flags.DEFINE_integer("seed", 0, "seed of the kill delays", flag_values=FLAGS)
_WORKDIR = flags.DEFINE_string("workdir", "/tmp/ssfer_faults",
                               "scratch directory (deleted and recreated)", flag_values=FLAGS)


@cli.guard
def main(argv=None) -> int:
  cli.parse(FLAGS, argv, "bench/fault_injection.py", __doc__)
  kills = _KILLS.value
  rng = random.Random(_SEED.value)
  shutil.rmtree(_WORKDIR.value, ignore_errors=True)
  os.makedirs(_WORKDIR.value)
  log = lambda s: print(s, flush=True)
  ref_dir = os.path.join(_WORKDIR.value, "reference")

  log("reference run (never killed)")
  t0 = time.time()
  rc, _, tail, first_step = run_once(ref_dir, None, log)
  ref_time = time.time() - t0
  if rc != 0:
    log(tail)
    return 1
  log(f"  {ref_time:.1f} s, the first progress line after {first_step:.1f} s")

  ref_state = final_state(ref_dir, STEPS)
  ref_summary = json.load(open(os.path.join(ref_dir, "summary.json")))
  phases, equal, killed = [], 0, 0
  for i in range(kills):
    run_dir = os.path.join(_WORKDIR.value, f"kill_{i}")
    for _ in range(3):  # a run that finishes before its kill (timing varies) is redrawn
      # even points in start-up, odd ones in training (steps, evaluations, saves)
      in_training = i % 2 == 1
      delay = rng.uniform(0.0, (ref_time - first_step) if in_training else first_step)
      log(f"kill point {i + 1}/{kills}: SIGKILL {delay:.1f} s after "
          + ("the first progress line" if in_training else "the start"))
      shutil.rmtree(run_dir, ignore_errors=True)
      _, phase, _, _ = run_once(run_dir, delay, log, from_first_step=in_training)
      if phase is not None:
        break
    phases.append(phase or "none (finished first)")
    rc, _, tail, _ = run_once(run_dir, None, log)  # the same command again, to the end
    if rc != 0:
      log(tail)
      continue
    state = final_state(run_dir, STEPS)
    summary = json.load(open(os.path.join(run_dir, "summary.json")))
    same = (state.keys() == ref_state.keys()
            and all(np.array_equal(state[k], ref_state[k]) for k in state)
            and all(summary[n] == ref_summary[n] for n in ("teacher", "student")))
    equal += same and phase is not None
    killed += phase is not None
    log(f"  final state and evaluation bitwise-equal: {same}; wall_time_s "
        f"{summary['wall_time_s']:.1f} (reference {ref_summary['wall_time_s']:.1f})")
  log("kill phases: " + ", ".join(f"{p}: {phases.count(p)}" for p in sorted(set(phases))))
  log(f"{equal}/{killed} kill points bitwise-equal"
      + (f" ({kills - killed} runs finished before their kill)" if killed < kills else ""))
  return 0 if equal == killed == kills else 1


if __name__ == "__main__":
  sys.exit(main())
