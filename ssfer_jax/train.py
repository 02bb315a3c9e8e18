"""The training loop: build everything from the config, train, evaluate, checkpoint, resume.

    run(config, workdir) -> summary dict   (also written to WORKDIR/summary.json)

A newcomer's trace of one batch: ``data/pipeline.py`` (grain: source -> views ->
batches, placed on the mesh as global arrays) -> here (``next(batches)``, the step) ->
``step.train_step`` (forward passes, ``algorithms/<method>.py`` for the unlabeled
loss and thresholds) -> back here for logging, evaluation and checkpoints.

Workdir contents (``outputs.py``): config.json, labeled_ids.json, checkpoints/, tb/ (TensorBoard),
metrics.jsonl (one JSON object a line: kind 'train' or 'eval'; after a resume the
steps past the restored checkpoint appear twice, the later row is the valid one),
eval/step_N.json + eval/confusion_teacher_step_N.png, thresholds.png (methods
with per-class thresholds), run_info.json (class names, channels, sizes: written at
start), summary.json, report.html (``ssfer_jax/tools/report.py``); ``python -m
ssfer_jax.tools.evaluate`` later adds cross_eval/<dataset>_<split>/.
"""

from __future__ import annotations

import logging
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from ssfer_jax import algorithms, checkpoint, cli, console, metrics as metrics_lib, optim, parallel
from ssfer_jax import evaluation, outputs, population, rundir, xla_options
from ssfer_jax import state as state_lib
from ssfer_jax import step as step_lib
from ssfer_jax.interrupts import Interrupted, LoopSignals, OutsideLoopSigint
from ssfer_jax.config import validate
from ssfer_jax.data import pipeline
from ssfer_jax.data.datasets import load_dataset
from ssfer_jax.data.sources import SubsetSource
from ssfer_jax.models import build_model
from ssfer_jax.outputs import check_workdir, ensure_writable


# Exit statuses ``main`` gives a run (besides 0 = finished, 2 = a usage / config / file
# error printed as one line), so a scheduler can tell them apart.
EXIT_NONFINITE = 3      # NaN/inf in the loss, gradients or state: stopped; checkpoints are finite
EXIT_PREEMPTED = 75     # EX_TEMPFAIL: SIGTERM; a checkpoint was saved, the same command resumes
EXIT_INTERRUPTED = cli.EXIT_INTERRUPTED  # 130: Ctrl-C; in-flight save finished, rerun resumes


class NonFiniteLossError(FloatingPointError):
  """NaN/inf in the loss, the gradients or the updated state (``EXIT_NONFINITE``)."""


class WorkdirLockedError(rundir.WorkdirLockedError, ValueError):
  """Another live run uses the workdir (a ValueError: printed as one line, status 2)."""


@jax.jit
def _accumulate(acc, metrics, step):
  f32 = lambda x: jnp.asarray(x, jnp.float32)
  bad = jnp.where(metrics["nonfinite"] > 0, step, jnp.iinfo(jnp.int32).max)
  if acc is None:
    return {"sum": jax.tree.map(f32, metrics), "n": jnp.float32(1.0), "bad_step": bad,
            "bad_kind": metrics["nonfinite"]}
  first = bad < acc["bad_step"]  # the flags of the first bad step are the ones reported
  return {"sum": jax.tree.map(lambda a, m: a + f32(m), acc["sum"], metrics),
          "n": acc["n"] + 1.0, "bad_step": jnp.minimum(acc["bad_step"], bad),
          "bad_kind": jnp.where(first, metrics["nonfinite"], acc["bad_kind"])}


class Trainer:
  """Everything built from the config once; ``run`` drives it."""

  def __init__(self, config, workdir, devices=None):
    validate(config)
    self.config = config
    self.workdir = ensure_writable(workdir)
    self.is_main = jax.process_index() == 0
    self.algorithm = algorithms.get_algorithm(config.algorithm)
    self.dataset = load_dataset(config)
    # A population (config.population.size > 1) stacks its members' states along a
    # leading axis (population.py); member k is the single run member_configs[k].
    self.members = population.size(config)
    self.stacked = self.members > 1
    self.member_configs, self.member_data = population.members(
        config, lambda c, d: pipeline.split_train(self.dataset, c, self.algorithm,
                                                  d if self.is_main else None), self.workdir)
    self.train_data = self.member_data[0]
    if devices is None and config.mesh.num_devices:
      devices = jax.devices()[:config.mesh.num_devices]
    self.mesh = parallel.make_mesh(config.mesh, devices)
    parallel.check_batch_divisible(config.data.batch_size, self.mesh, "config.data.batch_size")
    if self.algorithm.uses_unlabeled:
      parallel.check_batch_divisible(config.data.batch_size * config.data.uratio, self.mesh,
                                     "config.data.batch_size * config.data.uratio")
    parallel.check_batch_divisible(config.eval.batch_size, self.mesh, "config.eval.batch_size")
    self.model = build_model(config.model, self.dataset.num_classes)
    self.schedule, self.tx = optim.make_optimizer(config.optim, config.train.num_steps)
    self.image_shape = (config.data.image_size, config.data.image_size, self.dataset.channels)
    self.batch_sharding = parallel.batch_sharding(self.mesh, members=self.stacked)  # train batches
    self.eval_sharding = parallel.batch_sharding(self.mesh)  # eval batches: every member sees them
    self.replicated = NamedSharding(self.mesh, P())
    self._build_state_fns()

  # -- state ---------------------------------------------------------------------------
  def _init_fn(self, rng):
    return state_lib.create(
        self.model, self.tx, self.algorithm, self.config.algo, rng=rng,
        image_shape=self.image_shape, num_classes=self.dataset.num_classes,
        num_unlabeled=len(self.train_data.unlabeled) if self.train_data.unlabeled else 0)

  def _build_state_fns(self):
    platform = self.mesh.devices.flat[0].platform
    self.vectorize = population.how(self.config, platform) if self.stacked else None
    vec = (lambda fn, in_axes: population.vectorize(fn, self.vectorize, in_axes)) if (
        self.stacked) else (lambda fn, in_axes: fn)
    init_fn = vec(self._init_fn, (0,))
    abstract = jax.eval_shape(init_fn, population.init_keys(self.config))
    self.state_shardings = parallel.state_shardings(self.mesh, abstract, members=self.stacked)
    self.abstract_state = checkpoint.abstract_like(abstract, self.state_shardings)
    self.init_state = jax.jit(init_fn, out_shardings=self.state_shardings)
    self.init_opt_state = jax.jit(vec(self.tx.init, (0,)),
                                  out_shardings=self.state_shardings.opt_state)
    # XLA:CPU convolution path (CPU only, per executable): shown in the banner / run_info.json.
    self.xla_cpu_path, compiler_options = xla_options.for_platform(
        self.config.train.xla_cpu_options, self.mesh.devices.flat[0].platform)
    step_fn = step_lib.make_train_step(self.model, self.tx, self.algorithm, self.config,
                                       steps_per_epoch=self.train_data.steps_per_epoch,
                                       schedule=self.schedule)
    if self.stacked:
      step_fn = population.vectorize_step(step_fn, self.vectorize)
    self.train_step = jax.jit(step_fn, in_shardings=(self.state_shardings, self.batch_sharding),
                              out_shardings=(self.state_shardings, self.replicated),
                              donate_argnums=(0,), compiler_options=compiler_options)
    eval_fn = vec(step_lib.make_eval_step(self.model, self.config, self.dataset.num_classes),
                  (0, None, None, None))
    self.eval_step = jax.jit(eval_fn, in_shardings=(self.state_shardings,) + (self.eval_sharding,) * 3,
                             out_shardings=self.replicated, compiler_options=compiler_options)

  def fresh_state(self):
    state = self.init_state(population.init_keys(self.config))
    if self.config.init_from:
      from ssfer_jax.models import pretrained  # only needed when importing weights
      host = jax.device_get((state.params, state.batch_stats))
      if self.stacked:  # every member starts from the same imported weights
        host = population.member(host, 0)
      params, batch_stats = pretrained.load_into(*host, self.config.init_from)
      if self.stacked:
        params, batch_stats = population.broadcast((params, batch_stats), self.members)
      state = state.replace(params=params, batch_stats=batch_stats, ema_params=params,
                            ema_batch_stats=batch_stats)
      state = jax.device_put(state, self.state_shardings)
      state = state.replace(opt_state=self.init_opt_state(state.params))
    return state

  # -- evaluation ------------------------------------------------------------------------
  def test_arrays(self):
    if not hasattr(self, "_test"):
      self._test = pipeline.eval_arrays(self.dataset.test, self.config.data.image_size,
                                        self.dataset.channels)
    return self._test

  def val_arrays(self, member: int = 0):
    """The held-out part of the training set (``config.eval.val_fraction``), or None; a
    population member's own with ``population.vary_split``."""
    ids = self.member_data[member].val_ids
    if ids is None:
      return None
    self._val = getattr(self, "_val", {})  # by the first member holding that split
    key = next(k for k, d in enumerate(self.member_data) if d is self.member_data[member])
    if key not in self._val:
      self._val[key] = pipeline.eval_arrays(SubsetSource(self.dataset.train, ids),
                                            self.config.data.image_size, self.dataset.channels)
    return self._val[key]

  def evaluate(self, state, arrays=None):
    """{net: classification metrics} on the test set (or ``arrays``); for a population,
    a list of those, one per member."""
    images, labels = self.test_arrays() if arrays is None else arrays
    cms = evaluation.confusion_matrices(self.eval_step, state, images, labels,
                                        self.config.eval.batch_size, self.eval_sharding)
    per = lambda k: {net: metrics_lib.classification_metrics(cm if k is None else cm[k])  # noqa: E731
                     for net, cm in cms.items()}
    return [per(k) for k in range(self.members)] if self.stacked else per(None)

  def batches(self):
    """The training input: the run's ``TrainBatches``, or a population's members' stacked."""
    make = lambda c, d, sharding: pipeline.TrainBatches(  # noqa: E731
        d, c, self.algorithm, self.dataset.channels, sharding=sharding)
    if not self.stacked:
      return make(self.config, self.train_data, self.batch_sharding)
    return population.StackedBatches(
        [make(c, d, None) for c, d in zip(self.member_configs, self.member_data)],
        self.batch_sharding)

  def overall(self, means: dict) -> dict:
    """Training means over the population (per member they keep a leading axis)."""
    return population.mean_over_members(means) if self.stacked else means


def describe_nonfinite(flags: int) -> str:
  """The step's ``nonfinite`` bit mask in words."""
  parts = [name for bit, name in ((step_lib.NONFINITE_LOSS, "loss"),
                                  (step_lib.NONFINITE_GRADS, "gradients"),
                                  (step_lib.NONFINITE_STATE, "updated state"))
           if int(flags) & bit]
  return " and ".join(parts) or "values"


def _check_finite(acc_host, step, ckpt, workdir):
  """Called on the fetched accumulator before any log, evaluation or save, so no
  checkpoint ever holds a NaN/inf (each step's flag covers the state it produced)."""
  if acc_host is not None and acc_host["bad_step"] < np.iinfo(np.int32).max:
    last = ckpt.latest_step()
    kept = (f"the last checkpoint (step {last}, finite) is kept in {workdir}/checkpoints"
            if last is not None else "no checkpoint had been written yet")
    raise NonFiniteLossError(  # the step counter the bad update started from
        f"non-finite {describe_nonfinite(acc_host['bad_kind'])} (NaN/inf) at step "
        f"{int(acc_host['bad_step'])}; training stopped and {kept}. "
        "Lower config.optim.lr, enable config.optim.grad_clip, or check the input data; "
        "re-running the same command resumes from that checkpoint.")


def _means(acc_host) -> dict:
  n = float(acc_host["n"])
  return {k: np.asarray(v) / n for k, v in acc_host["sum"].items()}


def run(config, workdir, *, devices=None) -> dict:
  """Trains (or resumes) and returns the summary, or ``{"preempted_at": step}`` after a
  SIGTERM (``EXIT_PREEMPTED``). Raises ``Interrupted`` on Ctrl-C, ``NonFiniteLossError``
  on NaN/inf, ``WorkdirLockedError`` when a live run holds the workdir."""
  t_start = time.time()
  validate(config)  # before anything heavy, and before the workdir is touched
  check_workdir(config, workdir)  # another run's workdir is refused before anything is written
  workdir = ensure_writable(workdir)
  lock = rundir.WorkdirLock(workdir) if jax.process_index() == 0 else None
  if lock is not None:
    try:
      lock.acquire()
    except rundir.WorkdirLockedError as e:
      raise WorkdirLockedError(str(e)) from None
  try:
    with OutsideLoopSigint() as outside_loop:
      return _run(config, workdir, devices, t_start, outside_loop)
  finally:
    if lock is not None:
      lock.release()


def _run(config, workdir, devices, t_start, outside_loop) -> dict:
  console.say(f"building the {config.dataset.name} data and the {config.model.backbone} model "
              f"for {config.algorithm} ...")
  trainer = Trainer(config, workdir, devices)
  workdir = trainer.workdir
  if trainer.is_main:
    outputs.save_config(config, workdir)
    (workdir / rundir.EVAL_DIR).mkdir(exist_ok=True)
    outputs.write_run_info(trainer, workdir)
  tcfg = config.train
  ckpt = checkpoint.Checkpointer(workdir, keep=tcfg.keep_checkpoints,
                                 async_save=tcfg.async_checkpoint, owner=True)
  batches = trainer.batches()
  out = population if trainer.stacked else outputs  # where evaluations and the summary go
  restored = ckpt.restore_latest(trainer.abstract_state)
  if restored is not None:
    latest, state, data_state = restored
    batches.set_state(data_state)
    logging.info("resumed from step %d in %s", latest, ckpt.directory)
  else:
    latest, state = None, trainer.fresh_state()
  console.say(console.banner(config, trainer, latest, workdir))
  writer = (population.PopulationWriter(workdir, trainer.members, trainer.dataset.class_names)
            if trainer.stacked else metrics_lib.MetricWriter(workdir, trainer.dataset.class_names))
  if latest is None:
    writer.config(config)
  start_step = int(np.max(jax.device_get(state.step)))
  total = tcfg.num_steps
  # wall time of the segments that led to the restored checkpoint (so a resumed run's
  # summary reports the whole run's time, and a finished run's summary can be rebuilt)
  wall_before = rundir.checkpoint_row(workdir, start_step).get("wall_time_s", 0.0) if start_step else 0.0
  last_eval = None
  acc = None
  last_means = {}
  t_log, step_log = time.time(), start_step
  compile_s = None
  try:
    outside_loop.check()
    with LoopSignals() as sigterm:
      step = start_step
      while step < total:
        # The steady-state part: nothing here may copy device arrays to the host (only
        # the logging / eval / checkpoint block below does); config.train.transfer_guard
        # ("disallow" by default) enforces it, tests/test_transfers.py also on CPU.
        with jax.transfer_guard_device_to_host(tcfg.transfer_guard):
          batch = next(batches)  # already global arrays on the mesh
          t0 = time.time()
          if compile_s is None:
            console.say(f"compiling the train step (step {step + 1} of {total}) ...")
          state, step_metrics = trainer.train_step(state, batch)
          acc = _accumulate(acc, step_metrics, jnp.int32(step))
        step += 1
        if compile_s is None:
          jax.block_until_ready(state.step)
          compile_s = time.time() - t0
          t_log, step_log = time.time(), step
        if sigterm.interrupted:
          ckpt.wait()  # the in-flight save completes (and gets its checksum)
          last = ckpt.latest_step()
          raise Interrupted(f"interrupted (Ctrl-C) after step {step}; " + (
              f"the checkpoint at step {last} in {ckpt.directory} is complete; run the same "
              "command to resume" if last is not None else "no checkpoint had been written"))
        preempted = sigterm.raised or (jax.process_count() > 1 and
                                       ckpt.manager.reached_preemption(step))
        do_log = step % tcfg.log_every == 0 or step == total
        do_ckpt = step % tcfg.checkpoint_every == 0 or step == total or preempted
        do_eval = step % tcfg.eval_every == 0 or step == total
        if do_log or do_ckpt or do_eval:
          acc_host = jax.device_get(acc)
          _check_finite(acc_host, step, ckpt, workdir)
          ckpt.poll()
          if do_log:
            now = time.time()
            rate = (step - step_log) / max(now - t_log, 1e-9)
            t_log, step_log = now, step
            last_means = _means(acc_host)
            writer.write(step, last_means, "train")
            if tcfg.progress and trainer.is_main:
              print(console.progress_line(step, total, rate, (total - step) / max(rate, 1e-9),
                                   trainer.overall(last_means), last_eval), file=sys.stderr,
                    flush=True)
            acc = None
        if do_eval:
          last_eval = out.write_eval(trainer, state, step, writer, workdir)
        if do_ckpt:
          if trainer.is_main:
            writer.write_row(outputs.run_row(trainer, step, wall_before + time.time() - t_start,
                                      compile_s, last_means))
          ckpt.save(step, state, batches.get_state())
        if preempted:
          ckpt.wait()
          print(f"preempted: checkpoint saved at step {step}; run the same command to resume "
                f"(exit status {EXIT_PREEMPTED})", file=sys.stderr)
          return {"preempted_at": step}
    if start_step >= total:  # already finished: re-evaluate the final state for the summary
      last_eval = out.write_eval(trainer, state, total, writer, workdir)
  finally:
    ckpt.close()
    writer.close()
  return out.finish(trainer, workdir, last_means, wall_before + time.time() - t_start,
                    compile_s, rerun=start_step >= total)
