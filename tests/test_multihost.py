"""Two JAX processes on localhost (CPU, gloo collectives, ``jax.distributed``).

* ``test_two_processes_equal_one_process_and_checkpoints_cross``: a driver (this file run
  as a script) trains 3 steps of dta_snl in 2 processes of 1 CPU device each on a
  (data=1, fsdp=2) mesh, so the big kernels are split across the two processes, feeding
  each process its half of the same global batches as a one-process run; the final state
  equals the one-process state. The 2-process run restores a checkpoint written by one
  process (1 -> 2) and writes one that one process restores (2 -> 1).
* ``test_launch_local_runs_main_in_two_processes``: ``launch/local.sh 2`` runs the real
  CLI (``python -m ssfer_jax.main``, distributed mode 'auto' -> JAX_* variables); only
  process 0 writes metrics and summaries; its checkpoint restores in one process.

Every subprocess has a deadline and is killed (its whole process group) on failure.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
STEPS = 3
DEADLINE_S = 150


def _env(extra=None):
  env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "SLURM_", "TPU_"))}
  env.update(XLA_FLAGS="--xla_force_host_platform_device_count=1", JAX_PLATFORMS="cpu",
             PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="2")
  env.update(extra or {})
  return env


def _run_all(cmds, env_list, cwd, deadline=DEADLINE_S):
  """Starts every command in its own process group, waits for all; on a failure or the
  deadline kills the rest. Returns the outputs; raises with them on failure."""
  procs = [subprocess.Popen(c, cwd=cwd, env=e, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True) for c, e in zip(cmds, env_list)]
  end = time.time() + deadline
  failed = None
  try:
    while any(p.poll() is None for p in procs):
      bad = [p for p in procs if p.poll() not in (None, 0)]
      if bad or time.time() > end:
        failed = "a process failed" if bad else f"deadline of {deadline}s passed"
        break
      time.sleep(0.2)
    if failed is None and any(p.returncode != 0 for p in procs):
      failed = "a process failed"
  finally:
    for p in procs:
      if p.poll() is None:
        os.killpg(p.pid, signal.SIGKILL)
    outs = [p.communicate()[0] for p in procs]
  if failed:
    raise AssertionError(failed + ":\n" + "\n".join(
        f"--- process {i} (rc {p.returncode}) ---\n{o[-3000:]}" for i, (p, o) in enumerate(zip(procs, outs))))
  return outs


def _config():
  from conftest import tiny_config
  return tiny_config("dta_snl", **{
      "algo.threshold_init": 0.6, "algo.threshold_min": 0.1, "algo.threshold_momentum": 0.5,
      "algo.k": 3, "algo.neg_rampup_steps": 1, "optim.name": "sgd", "optim.lr": 0.05,
      "mesh.num_devices": 0, "mesh.fsdp": 2,
      # one XLA:CPU path, pinned (as tests/test_parallel.py): Eigen's, 'auto' on AVX2 and
      # AVX-512, rounds one momentum entry of the head 1.6e-5 apart across the meshes
      "train.xla_cpu_options": "default"})


def _flat(tree):
  import jax
  return {jax.tree_util.keystr(p): np.asarray(v) for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _assert_close(ref: dict, got: dict, what: str, tol=1e-5):
  assert ref.keys() == got.keys(), what
  for k in ref:
    np.testing.assert_allclose(got[k], ref[k], rtol=tol, atol=tol, err_msg=f"{what}: {k}")


def test_two_processes_equal_one_process_and_checkpoints_cross(tmp_path):
  import jax
  import portpicker
  from ssfer_jax import checkpoint, parallel, train
  from ssfer_jax.data import pipeline

  config = _config()
  config_one = _config()
  config_one.mesh.fsdp = 1
  one = train.Trainer(config_one, tmp_path / "one", devices=jax.devices()[:1])
  it = pipeline.TrainBatches(one.train_data, config_one, one.algorithm)
  host = [next(it) for _ in range(STEPS)]
  np.savez(tmp_path / "batches.npz", **{f"{i}/{k}": v for i, b in enumerate(host) for k, v in b.items()})
  state = one.fresh_state()
  for hb in host:
    state, _ = one.train_step(state, parallel.global_batch(hb, one.batch_sharding))
  ref = _flat(jax.device_get(state))
  ckpt = checkpoint.Checkpointer(tmp_path / "one", keep=1, async_save=False)
  ckpt.save(STEPS, state, {"note": "written by one process"})
  ckpt.close()

  port = portpicker.pick_unused_port()
  args = {"config": config.to_json(), "batches": str(tmp_path / "batches.npz"),
          "restore_from": str(tmp_path / "one"), "workdir": str(tmp_path / "two"), "port": port}
  (tmp_path / "args.json").write_text(json.dumps(args))
  cmd = lambda pid: [sys.executable, __file__, str(tmp_path / "args.json"), str(pid)]
  outs = _run_all([cmd(0), cmd(1)], [_env(), _env()], cwd=REPO)
  assert "process 0 of 2, 2 devices, fsdp-sharded leaves: 4" in outs[0], outs[0][-2000:]

  restored_in_two = dict(np.load(tmp_path / "two" / "restored.npz"))
  _assert_close(ref, restored_in_two, "1-process checkpoint restored by 2 processes", tol=0)
  final_two = dict(np.load(tmp_path / "two" / "final.npz"))
  _assert_close(ref, final_two, "2-process training vs 1 process on the same global batches")

  ckpt2 = checkpoint.Checkpointer(tmp_path / "two", keep=1, async_save=False)
  assert ckpt2.latest_step() == STEPS
  back = ckpt2.restore_state(STEPS, one.abstract_state)
  ckpt2.close()
  _assert_close(final_two, _flat(jax.device_get(back)), "2-process checkpoint restored by 1 process",
                tol=0)


def _worker(args_file: str, pid: int) -> None:
  """One of the two driver processes (see the module docstring)."""
  args = json.loads(Path(args_file).read_text())
  import jax
  import ml_collections
  from jax.experimental import multihost_utils
  from jax.sharding import PartitionSpec as P

  from ssfer_jax import checkpoint, parallel, train

  config = ml_collections.ConfigDict(json.loads(args["config"]))
  config.distributed.mode = "explicit"
  config.distributed.coordinator_address = f"localhost:{args['port']}"
  config.distributed.num_processes = 2
  config.distributed.process_id = pid
  assert parallel.maybe_initialize_distributed(config.distributed)
  parallel.FSDP_MIN_SIZE = 4096  # as tests/test_parallel.py: shard the tiny CNN's big kernels
  t = train.Trainer(config, args["workdir"])
  n_sharded = sum(s.spec != P() for s in jax.tree.leaves(t.state_shardings.params))
  print(f"process {jax.process_index()} of {jax.process_count()}, {jax.device_count()} devices, "
        f"fsdp-sharded leaves: {n_sharded}", flush=True)
  gather = lambda tree: {k: np.asarray(v) for k, v in
                         _flat(multihost_utils.process_allgather(tree, tiled=True)).items()}
  out = Path(args["workdir"])

  ckpt_in = checkpoint.Checkpointer(args["restore_from"], keep=1, async_save=False)
  restored = gather(ckpt_in.restore_state(ckpt_in.latest_step(), t.abstract_state))
  ckpt_in.close()
  data = np.load(args["batches"])
  state = t.fresh_state()
  for i in range(STEPS):
    global_rows = {k.split("/", 1)[1]: data[k] for k in data.files if k.startswith(f"{i}/")}
    rows = parallel.host_rows(len(global_rows["y_lb"]))
    rows_u = parallel.host_rows(len(global_rows["idx_ulb"]))
    local = {k: v[rows if k.endswith("_lb") else rows_u] for k, v in global_rows.items()}
    state, _ = t.train_step(state, parallel.global_batch(local, t.batch_sharding))
  final = gather(state)
  # The pipeline's own per-host path (what train.run feeds): each process reads its slice
  # of the sources and its rows become its block of the global batch on the mesh.
  from ssfer_jax.data import pipeline
  local = next(pipeline.TrainBatches(t.train_data, config, t.algorithm))
  on_mesh = next(pipeline.TrainBatches(t.train_data, config, t.algorithm,
                                       sharding=t.batch_sharding))
  assert on_mesh.keys() == local.keys()
  for k, v in local.items():
    whole = np.asarray(multihost_utils.process_allgather(on_mesh[k], tiled=True))
    assert whole.shape == (2 * len(v),) + v.shape[1:], k
    np.testing.assert_array_equal(whole[parallel.host_rows(len(whole))], v, err_msg=k)
  ckpt_out = checkpoint.Checkpointer(out, keep=1, async_save=False)
  ckpt_out.save(STEPS, state, {"note": "written by two processes"})
  ckpt_out.close()
  if jax.process_index() == 0:
    np.savez(out / "restored.npz", **restored)
    np.savez(out / "final.npz", **final)
  multihost_utils.sync_global_devices("done")


def test_launch_local_runs_main_in_two_processes(tmp_path):
  import jax
  from ssfer_jax import checkpoint, train

  workdir = tmp_path / "run"
  flags = [f"--workdir={workdir}", "--config=configs/default.py",
           "--config.dataset.num_train=240", "--config.dataset.num_test=64",
           "--config.dataset.render_size=24", "--config.data.image_size=24",
           "--config.data.batch_size=8", "--config.data.uratio=2", "--config.data.labels_per_class=4",
           "--config.data.read_threads=1", "--config.eval.batch_size=32",
           "--config.train.num_steps=4", "--config.train.log_every=2", "--config.train.eval_every=4",
           "--config.train.checkpoint_every=4", "--config.train.async_checkpoint=False",
           "--config.train.progress=False"]
  outs = _run_all([["bash", "launch/local.sh", "2", "--"] + flags],
                  [_env({"LOG_DIR": str(tmp_path / "logs"), "PYTHON": sys.executable})], cwd=REPO)
  log1 = (tmp_path / "logs" / "process_1.log").read_text()
  assert "final test accuracy" in outs[0] and "final test accuracy" not in log1, (outs[0], log1)
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  train_steps = [r["step"] for r in rows if r["kind"] == "train"]
  assert train_steps == [2, 4], "exactly one writer (process 0): each step logged once"
  assert json.loads((workdir / "summary.json").read_text())["num_steps"] == 4
  # the 2-process checkpoint (2 global devices) restores in this single process
  import ml_collections
  config = ml_collections.ConfigDict(json.loads((workdir / "config.json").read_text()))
  config.data.mean, config.data.std = tuple(config.data.mean), tuple(config.data.std)
  t = train.Trainer(config, tmp_path / "scratch", devices=jax.devices()[:1])
  ckpt = checkpoint.Checkpointer(workdir, keep=2, async_save=False)
  state, data_state = ckpt.restore(4, t.abstract_state)
  ckpt.close()
  assert int(state.step) == 4 and data_state["labeled"] is not None


if __name__ == "__main__":
  _worker(sys.argv[1], int(sys.argv[2]))
