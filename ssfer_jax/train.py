"""The training loop: build everything from the config, train, evaluate, checkpoint, resume.

    run(config, workdir) -> summary dict   (also written to WORKDIR/summary.json)

A newcomer's trace of one batch: ``data/pipeline.py`` (grain: source -> views ->
batches) -> ``parallel.global_batch`` (host shards -> global arrays on the mesh) ->
``step.train_step`` (forward passes, ``algorithms/<method>.py`` for the unlabeled
loss) -> back here for logging, evaluation and checkpoints.

Workdir contents: config.json, labeled_ids.json, checkpoints/, tb/ (TensorBoard),
metrics.jsonl (one JSON object a line: kind 'train' or 'eval'; after a resume the
steps past the restored checkpoint appear twice, the later row is the valid one),
eval/step_N.json + eval/confusion_teacher_step_N.png, thresholds.png (methods
with per-class thresholds), run_info.json (class names, channels, sizes: written at
start), summary.json, report.html (``ssfer_jax/report.py``); ``python -m
ssfer_jax.evaluate`` later adds cross_eval/<dataset>_<split>/.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath
from jax.sharding import NamedSharding, PartitionSpec as P

from ssfer_jax import algorithms, checkpoint, console, metrics as metrics_lib, optim, parallel, plots
from ssfer_jax import evaluation, selection, xla_options
from ssfer_jax import state as state_lib
from ssfer_jax import step as step_lib
from ssfer_jax import config as config_lib
from ssfer_jax.config import validate
from ssfer_jax.data import pipeline
from ssfer_jax.data.datasets import load_dataset
from ssfer_jax.data.sources import SubsetSource
from ssfer_jax.models import build_model


# jax.transfer_guard level for the per-step part of the loop ("allow" | "log" | "disallow").
STEP_TRANSFER_GUARD = "allow"


class NonFiniteLossError(FloatingPointError):
  pass


class _Interrupted(Exception):
  """Raised by the test hook ``interrupt_at`` to simulate a killed process."""


def ensure_writable(workdir) -> epath.Path:
  """The workdir as an absolute path (orbax needs one), created and checked writable."""
  if "://" not in str(workdir):  # local path (cloud buckets like gs://... are absolute)
    workdir = os.path.abspath(os.fspath(workdir))
  workdir = epath.Path(workdir)
  try:
    workdir.mkdir(parents=True, exist_ok=True)
    probe = workdir / f".write_probe_{jax.process_index()}"  # one per process: hosts may share it
    probe.write_text("ok")
    probe.unlink()
  except OSError as e:
    raise PermissionError(f"--workdir={workdir} is not writable ({e.__class__.__name__}: {e}); "
                          "pass a directory you can create and write to") from e
  return workdir


def check_workdir(config, workdir) -> None:
  """Refuses, before anything is written, a workdir whose config.json is another run
  (method, dataset, model or label split differ) or the same run with other
  hyper-parameters (unless ``config.train.allow_config_change``)."""
  path = epath.Path(workdir) / "config.json"
  if not path.exists():
    return
  try:
    old = json.loads(path.read_text())
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ValueError(f"{path} is unreadable ({e}); if the run was killed while writing it, "
                     "delete that file and run again (the checkpoints are kept)") from e
  new = json.loads(config.to_json_best_effort())
  identity, hyper = config_lib.resume_conflicts(old, new)
  if identity:
    raise ValueError(f"--workdir={workdir} holds a different run ({path}): "
                     f"{config_lib.describe_changes(identity)}; use a new --workdir for this "
                     "run (nothing was written)")
  if hyper and not config.train.allow_config_change:
    raise ValueError(f"--workdir={workdir} holds this run with other settings: "
                     f"{config_lib.describe_changes(hyper)}; pass "
                     "--config.train.allow_config_change=True to resume with them (config.json "
                     "is then updated and the old one kept as config.previous.json), or use a "
                     "new --workdir (nothing was written)")


def _save_config(config, workdir: epath.Path) -> None:
  path = workdir / "config.json"
  text = config.to_json_best_effort(indent=2, sort_keys=True)
  if path.exists() and path.read_text() != text:
    _, hyper = config_lib.resume_conflicts(json.loads(path.read_text()), json.loads(text))
    if hyper:
      logging.warning("resuming %s with changed settings: %s", workdir,
                      config_lib.describe_changes(hyper, limit=50))
      (workdir / "config.previous.json").write_text(path.read_text())
  path.write_text(text)


class _SigtermFlag:
  """Sets a flag on SIGTERM (preemption) so the loop saves and exits at the next step."""

  def __init__(self):
    self.raised = False
    self._old = None

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      self._old = signal.signal(signal.SIGTERM, self._handle)
    return self

  def _handle(self, signum, frame):
    del signum, frame
    logging.warning("SIGTERM received: saving a checkpoint at the next step and exiting")
    self.raised = True

  def __exit__(self, *exc):
    if self._old is not None:
      signal.signal(signal.SIGTERM, self._old)


@jax.jit
def _accumulate(acc, metrics, step):
  f32 = lambda x: jnp.asarray(x, jnp.float32)
  bad = jnp.where(metrics["nonfinite"] > 0, step, jnp.iinfo(jnp.int32).max)
  if acc is None:
    return {"sum": jax.tree.map(f32, metrics), "n": jnp.float32(1.0), "bad_step": bad}
  return {"sum": jax.tree.map(lambda a, m: a + f32(m), acc["sum"], metrics),
          "n": acc["n"] + 1.0, "bad_step": jnp.minimum(acc["bad_step"], bad)}


class Trainer:
  """Everything built from the config once; ``run`` drives it."""

  def __init__(self, config, workdir, devices=None):
    validate(config)
    self.config = config
    self.workdir = ensure_writable(workdir)
    self.is_main = jax.process_index() == 0
    self.algorithm = algorithms.get_algorithm(config.algorithm)
    self.dataset = load_dataset(config)
    self.train_data = pipeline.split_train(self.dataset, config, self.algorithm,
                                           self.workdir if self.is_main else None)
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
    self.batch_sharding = parallel.batch_sharding(self.mesh)
    self.replicated = NamedSharding(self.mesh, P())
    self._build_state_fns()

  # -- state ---------------------------------------------------------------------------
  def _init_fn(self, rng):
    return state_lib.create(
        self.model, self.tx, self.algorithm, self.config.algo, rng=rng,
        image_shape=self.image_shape, num_classes=self.dataset.num_classes,
        num_unlabeled=len(self.train_data.unlabeled) if self.train_data.unlabeled else 0)

  def _build_state_fns(self):
    rng = jax.random.PRNGKey(self.config.seed)
    abstract = jax.eval_shape(self._init_fn, rng)
    self.state_shardings = parallel.state_shardings(self.mesh, abstract)
    self.abstract_state = checkpoint.abstract_like(abstract, self.state_shardings)
    self.init_state = jax.jit(self._init_fn, out_shardings=self.state_shardings)
    # XLA:CPU convolution path (CPU only, per executable): shown in the banner / run_info.json.
    self.xla_cpu_path, compiler_options = xla_options.for_platform(
        self.config.train.xla_cpu_options, self.mesh.devices.flat[0].platform)
    step_fn = step_lib.make_train_step(self.model, self.tx, self.algorithm, self.config,
                                       steps_per_epoch=self.train_data.steps_per_epoch,
                                       schedule=self.schedule)
    self.train_step = jax.jit(step_fn, in_shardings=(self.state_shardings, self.batch_sharding),
                              out_shardings=(self.state_shardings, self.replicated),
                              donate_argnums=(0,), compiler_options=compiler_options)
    eval_fn = step_lib.make_eval_step(self.model, self.config, self.dataset.num_classes)
    self.eval_step = jax.jit(eval_fn, in_shardings=(self.state_shardings,) + (self.batch_sharding,) * 3,
                             out_shardings=self.replicated, compiler_options=compiler_options)

  def fresh_state(self):
    state = self.init_state(jax.random.PRNGKey(self.config.seed))
    if self.config.init_from:
      from ssfer_jax import pretrained  # only needed when importing weights
      params, batch_stats = pretrained.load_into(jax.device_get(state.params),
                                                 jax.device_get(state.batch_stats),
                                                 self.config.init_from)
      state = state.replace(params=params, batch_stats=batch_stats, ema_params=params,
                            ema_batch_stats=batch_stats)
      state = jax.device_put(state, self.state_shardings)
      state = state.replace(opt_state=jax.jit(self.tx.init, out_shardings=self.state_shardings.opt_state)(state.params))
    return state

  # -- evaluation ------------------------------------------------------------------------
  def test_arrays(self):
    if not hasattr(self, "_test"):
      self._test = pipeline.eval_arrays(self.dataset.test, self.config.data.image_size,
                                        self.dataset.channels)
    return self._test

  def val_arrays(self):
    """The held-out part of the training set (``config.eval.val_fraction``), or None."""
    if self.train_data.val_ids is None:
      return None
    if not hasattr(self, "_val"):
      self._val = pipeline.eval_arrays(SubsetSource(self.dataset.train, self.train_data.val_ids),
                                       self.config.data.image_size, self.dataset.channels)
    return self._val

  def evaluate(self, state, arrays=None) -> dict:
    images, labels = self.test_arrays() if arrays is None else arrays
    cms = evaluation.confusion_matrices(self.eval_step, state, images, labels,
                                        self.config.eval.batch_size, self.batch_sharding)
    return {net: metrics_lib.classification_metrics(cm) for net, cm in cms.items()}


def _check_finite(acc_host, step, ckpt, workdir):
  if acc_host is not None and acc_host["bad_step"] < np.iinfo(np.int32).max:
    last = ckpt.latest_step()
    kept = (f"the last good checkpoint (step {last}) is kept in {workdir}/checkpoints"
            if last is not None else "no checkpoint had been written yet")
    raise NonFiniteLossError(
        f"non-finite loss at step {int(acc_host['bad_step'])}; training stopped and {kept}. "
        "Lower config.optim.lr, enable config.optim.grad_clip, or check the input data; "
        "re-running the same command resumes from that checkpoint.")


def _progress_line(step, total, rate, eta, means, last_eval):
  parts = [f"step {step}/{total}", f"{rate:.2f} steps/s", f"ETA {metrics_lib.format_duration(eta)}",
           f"loss {means.get('loss', float('nan')):.4f}"]
  for key, label in (("loss_x", "L_x"), ("loss_u", "L_u"), ("mask_rate", "mask"),
                     ("pl_precision", "pl_prec")):
    if key in means:
      parts.append(f"{label} {means[key]:.3f}")
  if last_eval is not None:
    parts.append(f"last eval: teacher top-1 {last_eval:.4f}")
  return " | ".join(parts)


def _means(acc_host) -> dict:
  n = float(acc_host["n"])
  return {k: np.asarray(v) / n for k, v in acc_host["sum"].items()}


def run(config, workdir, *, devices=None, interrupt_at: int | None = None) -> dict:
  """Trains (or resumes) and returns the summary. ``interrupt_at`` is a test hook that
  stops the process-equivalent abruptly (no final checkpoint) after that step."""
  t_start = time.time()
  validate(config)
  check_workdir(config, workdir)
  console.say(f"building the {config.dataset.name} data and the {config.model.backbone} model "
              f"for {config.algorithm} ...")
  trainer = Trainer(config, workdir, devices)
  workdir = trainer.workdir
  if trainer.is_main:
    _save_config(config, workdir)
    (workdir / "eval").mkdir(exist_ok=True)
    (workdir / "run_info.json").write_text(json.dumps({
        "dataset": config.dataset.name, "class_names": list(trainer.dataset.class_names),
        "num_classes": trainer.dataset.num_classes, "channels": trainer.dataset.channels,
        "image_size": config.data.image_size, "algorithm": config.algorithm,
        "num_labeled": len(trainer.train_data.labeled),
        "num_unlabeled": len(trainer.train_data.unlabeled) if trainer.train_data.unlabeled else 0,
        "steps_per_epoch": trainer.train_data.steps_per_epoch,
        "xla_cpu_path": trainer.xla_cpu_path,
        **console.provenance()}, indent=2))
  tcfg = config.train
  ckpt = checkpoint.Checkpointer(workdir, keep=tcfg.keep_checkpoints,
                                 async_save=tcfg.async_checkpoint)
  batches = pipeline.TrainBatches(trainer.train_data, config, trainer.algorithm,
                                  trainer.dataset.channels)
  latest = ckpt.latest_step()
  if latest is not None:
    state, data_state = ckpt.restore(latest, trainer.abstract_state)
    batches.set_state(data_state)
    logging.info("resumed from step %d in %s", latest, ckpt.directory)
  else:
    state = trainer.fresh_state()
  console.say(console.banner(config, trainer, latest, workdir))
  writer = metrics_lib.MetricWriter(workdir, trainer.dataset.class_names)
  if latest is None:
    writer.config(config)
  start_step = int(jax.device_get(state.step))
  total = tcfg.num_steps
  last_eval = None
  acc = None
  last_means = {}
  t_log, step_log = time.time(), start_step
  compile_s = None
  try:
    with _SigtermFlag() as sigterm:
      step = start_step
      while step < total:
        # The steady-state part: nothing here may copy device arrays to the host (only
        # the logging / eval / checkpoint block below does); tests/test_transfers.py runs
        # this loop with STEP_TRANSFER_GUARD = "disallow".
        with jax.transfer_guard_device_to_host(STEP_TRANSFER_GUARD):
          host_batch = next(batches)
          batch = parallel.global_batch(host_batch, trainer.batch_sharding)
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
        if interrupt_at is not None and step == interrupt_at:
          raise _Interrupted(f"interrupted after step {step}")
        preempted = sigterm.raised or (jax.process_count() > 1 and
                                       ckpt.manager.reached_preemption(step))
        do_log = step % tcfg.log_every == 0 or step == total
        do_ckpt = step % tcfg.checkpoint_every == 0 or step == total or preempted
        do_eval = step % tcfg.eval_every == 0 or step == total
        if do_log or do_ckpt or do_eval:
          acc_host = jax.device_get(acc)
          _check_finite(acc_host, step, ckpt, workdir)
          if do_log:
            now = time.time()
            rate = (step - step_log) / max(now - t_log, 1e-9)
            t_log, step_log = now, step
            last_means = _means(acc_host)
            writer.write(step, last_means, "train")
            if tcfg.progress and trainer.is_main:
              print(_progress_line(step, total, rate, (total - step) / max(rate, 1e-9),
                                   last_means, last_eval), file=sys.stderr, flush=True)
            acc = None
        if do_eval:
          last_eval = _write_eval(trainer, state, step, writer, workdir)
        if do_ckpt:
          ckpt.save(step, state, batches.get_state())
        if preempted:
          ckpt.wait()
          print(f"preempted: checkpoint saved at step {step}; run the same command to resume",
                file=sys.stderr)
          return {"preempted_at": step}
    if start_step >= total:  # already finished: re-evaluate the final state for the summary
      last_eval = _write_eval(trainer, state, total, writer, workdir)
  finally:
    ckpt.close()
    writer.close()
  summary = _summarise(trainer, workdir, last_means, time.time() - t_start, compile_s)
  summary_path = workdir / "summary.json"
  if start_step >= total and summary_path.exists():  # re-run of a finished run: keep its
    old = json.loads(summary_path.read_text())       # timing and its last training metrics
    summary.update({k: old[k] for k in ("wall_time_s", "compile_s", "train") if k in old})
  if trainer.is_main:
    summary_path.write_text(json.dumps(summary, indent=2))
    _plot_thresholds(workdir, trainer.dataset.class_names)
    from ssfer_jax import report  # WORKDIR/report.html (logs, never raises, on failure)
    report.write_run_report(workdir)
    final_eval = eval_history(workdir)[summary["final_step"]]
    console.say(console.results_table(summary, final_eval, trainer.dataset.class_names, workdir))
  return summary


def _write_eval(trainer, state, step, writer, workdir) -> float:
  results = trainer.evaluate(state)
  val = trainer.val_arrays()
  extra = {"val": trainer.evaluate(state, val)} if val is not None else {}
  for prefix, res in (("eval", results), ("val", extra.get("val", {}))):
    for net, m in res.items():
      writer.write(step, {"top1": m["top1"], "mean_class_acc": m["mean_class_acc"],
                          "macro_f1": m["macro_f1"]}, f"{prefix}_{net}")
  if trainer.is_main:
    (workdir / "eval" / f"step_{step}.json").write_text(json.dumps(
        {"step": step, "class_names": list(trainer.dataset.class_names), **results, **extra}))
    png = workdir / "eval" / f"confusion_teacher_step_{step}.png"
    plots.confusion_png(results["teacher"]["confusion"], trainer.dataset.class_names, png,
                        f"teacher, step {step}: top-1 {results['teacher']['top1']:.3f}, "
                        f"mean per-class {results['teacher']['mean_class_acc']:.3f}")
    writer.image("eval_teacher/confusion", png, step)
    if _plot_thresholds(workdir, trainer.dataset.class_names):
      writer.image("algo/thresholds", workdir / "thresholds.png", step)
    console.say(console.eval_line(step, trainer.config.train.num_steps, results, extra.get("val")))
  writer.flush()
  return results["teacher"]["top1"]


def eval_history(workdir) -> dict:
  """{step: eval result} from WORKDIR/eval/step_N.json."""
  out = {}
  for p in (epath.Path(workdir) / "eval").glob("step_*.json"):
    rec = json.loads(p.read_text())
    out[int(rec["step"])] = rec
  return dict(sorted(out.items()))


def _summarise(trainer, workdir, last_means, wall, compile_s) -> dict:
  cfg = trainer.config
  history = {s: r for s, r in eval_history(workdir).items() if s <= cfg.train.num_steps}
  final_step = max(history)
  out = {"algorithm": cfg.algorithm, "dataset": cfg.dataset.name, "seed": cfg.seed,
         "num_steps": cfg.train.num_steps, "final_step": final_step, "num_labeled": len(trainer.train_data.labeled),
         "num_unlabeled": len(trainer.train_data.unlabeled) if trainer.train_data.unlabeled else 0,
         "class_names": list(trainer.dataset.class_names),
         "labeled_ids_sha256": trainer.train_data.split_hash,
         "num_val": 0 if trainer.train_data.val_ids is None else len(trainer.train_data.val_ids),
         "selection_note": selection.NOTE,
         "wall_time_s": wall, "compile_s": compile_s,
         "train": {k: float(v) for k, v in last_means.items() if np.ndim(v) == 0}}
  for net in ("teacher", "student"):
    best_step = max(history, key=lambda s: (history[s][net]["top1"], -s))
    final = history[final_step][net]
    out[net] = {"final_top1": final["top1"], "final_mean_class_acc": final["mean_class_acc"],
                "final_macro_f1": final["macro_f1"], "best_top1": history[best_step][net]["top1"],
                "best_step": best_step,
                "best_mean_class_acc": max(r[net]["mean_class_acc"] for r in history.values()),
                "best_selected_on": "test", **selection.by_validation(history, net)}
  return out


def _plot_thresholds(workdir, class_names) -> bool:
  """WORKDIR/thresholds.png from the logged per-class thresholds; False if there are none."""
  rows = [r for r in metrics_lib.read_jsonl(workdir / "metrics.jsonl", "train")
          if any(k.startswith("algo/tau/") for k in r)]
  if not rows:
    return False
  by_step = {r["step"]: r for r in rows}  # a resumed run's repeated steps: the later row wins
  steps = sorted(by_step)
  series = {name: [by_step[s].get(f"algo/tau/{name}") for s in steps] for name in class_names
            if f"algo/tau/{name}" in rows[-1]}
  plots.curves_png(steps, series, workdir / "thresholds.png", "per-class thresholds", "tau")
  return True


def dry_run(config) -> str:
  """The resolved config and the label split (per-class counts), without training or
  writing anything: ``python -m ssfer_jax.main --dry_run``."""
  validate(config)
  algorithm = algorithms.get_algorithm(config.algorithm)
  dataset = load_dataset(config)
  data = pipeline.split_train(dataset, config, algorithm, None)
  labels = np.asarray(dataset.train.labels)
  lab = np.bincount(labels[np.asarray(data.labeled_ids)], minlength=dataset.num_classes)
  allc = np.bincount(labels, minlength=dataset.num_classes)
  width = max(len(n) for n in dataset.class_names) + 2
  lines = [config.to_json_best_effort(indent=2, sort_keys=True),
           f"split of {config.dataset.name} train ({len(labels)} images) for {config.algorithm}: "
           f"{len(data.labeled)} labeled, {len(data.unlabeled) if data.unlabeled else 0} "
           f"unlabeled, {len(dataset.test)} test; {data.steps_per_epoch} steps per epoch",
           f"  {'class':<{width}}{'train':>8}{'labeled':>9}"]
  lines += [f"  {n:<{width}}{int(a):>8}{int(b):>9}" for n, a, b in zip(dataset.class_names, allc, lab)]
  return "\n".join(lines)
