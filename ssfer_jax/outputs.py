"""What a training run writes into its workdir besides checkpoints and metrics rows.

``train.run`` calls these at fixed points: ``ensure_writable`` / ``check_workdir`` before
anything is written, ``save_config`` / ``write_run_info`` at start, ``write_eval`` at every
evaluation (eval/step_N.json, the confusion-matrix PNG, thresholds.png, the metrics rows),
and ``finish`` at the end (summary.json, report.html, the results table).
File names, atomic writers and readers are ``rundir``'s; the best/final rule is
``selection.summarise``'s; figures are ``plots``'.
"""

from __future__ import annotations

import json
import logging
import os

import jax
import numpy as np
from etils import epath

from ssfer_jax import config_json, console, plots, rundir, selection


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


# Resuming a workdir with another config (see ``resume_conflicts``): keys that may change
# freely (how the run is executed, not what it computes), keys that make it another run
# (refused), and everything else (hyper-parameters: accepted with train.allow_config_change).
RESUME_FREE = ("train.num_steps", "train.log_every", "train.eval_every", "train.checkpoint_every",
               "train.keep_checkpoints", "train.async_checkpoint", "train.progress",
               "train.allow_config_change", "train.xla_cpu_options", "train.transfer_guard",
               "population.vectorize", "model.max_pool", "model.batch_norm",
               "data.num_workers",
               "data.read_threads", "data.prefetch", "eval.batch_size", "dataset.data_dir",
               "mesh", "distributed")
RESUME_IDENTITY = ("algorithm", "dataset", "model", "data.image_size", "data.labels_per_class",
                   "data.num_labels", "data.label_percent", "data.label_counts",
                   "data.label_protocol", "data.labeled_ids_file",
                   "data.split_seed", "data.unlabeled_includes_labeled", "eval.val_fraction",
                   "optim.name", "optim.accum_steps", "population")


def _under(key: str, prefixes) -> bool:
  return any(key == p or key.startswith(p + ".") for p in prefixes)


def resume_conflicts(old: dict, new: dict):
  """(identity, hyper) lists of ``(key, old value, new value)`` where two configs (as
  config.json dicts) differ: ``identity`` keys make it a different run (another method,
  dataset, model or label split), ``hyper`` keys change what the rest of the run computes."""
  a, b = dict(config_json.leaves(old)), dict(config_json.leaves(new))
  missing = object()
  identity, hyper = [], []
  for key in sorted(set(a) | set(b)):
    va, vb = a.get(key, missing), b.get(key, missing)
    if va == vb or _under(key, RESUME_FREE):
      continue
    row = (key, None if va is missing else va, None if vb is missing else vb)
    (identity if _under(key, RESUME_IDENTITY) else hyper).append(row)
  return identity, hyper


def describe_changes(rows, limit: int = 6) -> str:
  shown = ", ".join(f"{k} {va!r} -> {vb!r}" for k, va, vb in rows[:limit])
  return shown + (f" (+{len(rows) - limit} more)" if len(rows) > limit else "")


def check_workdir(config, workdir) -> None:
  """Refuses, before anything is written, a workdir whose config.json is another run
  (method, dataset, model or label split differ) or the same run with other
  hyper-parameters (unless ``config.train.allow_config_change``)."""
  path = epath.Path(workdir) / rundir.CONFIG
  if not path.exists():
    return
  old = rundir.read_json_or_warn(path, what="it is rewritten from this run's config; the "
                                 "checkpoints' shapes are still checked on restore")
  if old is None:
    return
  new = json.loads(config.to_json_best_effort())
  identity, hyper = resume_conflicts(old, new)
  if identity:
    raise ValueError(f"--workdir={workdir} holds a different run ({path}): "
                     f"{describe_changes(identity)}; use a new --workdir for this "
                     "run (nothing was written)")
  if hyper and not config.train.allow_config_change:
    raise ValueError(f"--workdir={workdir} holds this run with other settings: "
                     f"{describe_changes(hyper)}; pass "
                     "--config.train.allow_config_change=True to resume with them (config.json "
                     "is then updated and the old one kept as config.previous.json), or use a "
                     "new --workdir (nothing was written)")


def save_config(config, workdir: epath.Path) -> None:
  path = workdir / rundir.CONFIG
  text = config.to_json_best_effort(indent=2, sort_keys=True)
  if rundir.read_json_or_warn(path, what="rewritten from this run's config") is None:
    path.unlink(missing_ok=True)
  if path.exists() and path.read_text() != text:
    _, hyper = resume_conflicts(json.loads(path.read_text()), json.loads(text))
    if hyper:
      logging.warning("resuming %s with changed settings: %s", workdir,
                      describe_changes(hyper, limit=50))
      rundir.write_text(workdir / rundir.CONFIG_PREVIOUS, path.read_text())
  rundir.write_text(path, text)


def write_run_info(trainer, workdir: epath.Path) -> None:
  """WORKDIR/run_info.json at start: class names, channels, sizes, the label split's
  sizes and the provenance (commit, command line, versions, devices)."""
  config, data = trainer.config, trainer.train_data
  rundir.write_text(workdir / rundir.RUN_INFO, json.dumps({
      "dataset": config.dataset.name, "class_names": list(trainer.dataset.class_names),
      "num_classes": trainer.dataset.num_classes, "channels": trainer.dataset.channels,
      "image_size": config.data.image_size, "algorithm": config.algorithm,
      "num_labeled": len(data.labeled),
      "num_unlabeled": len(data.unlabeled) if data.unlabeled else 0,
      "steps_per_epoch": data.steps_per_epoch,
      "xla_cpu_path": trainer.xla_cpu_path,
      **console.provenance()}, indent=2))


def write_eval(trainer, state, step, writer, workdir) -> float:
  """Evaluates ``state`` on the test set (and the held-out part, if any); writes the
  metrics rows and, on process 0, eval/step_N.json, the confusion PNG and thresholds.png.
  Returns the teacher's test top-1."""
  results = trainer.evaluate(state)
  val = trainer.val_arrays()
  extra = {"val": trainer.evaluate(state, val)} if val is not None else {}
  record_eval(trainer, step, results, extra, writer, workdir)
  if trainer.is_main:
    console.say(console.eval_line(step, trainer.config.train.num_steps, results, extra.get("val")))
  return results["teacher"]["top1"]


def eval_rows(writer, step, results, extra) -> None:
  """The metrics rows of one evaluation: top-1, mean per-class accuracy and macro-F1 per
  network, for the test set (eval_<net>) and the held-out part (val_<net>)."""
  for prefix, res in (("eval", results), ("val", extra.get("val", {}))):
    for net, m in res.items():
      writer.write(step, {"top1": m["top1"], "mean_class_acc": m["mean_class_acc"],
                          "macro_f1": m["macro_f1"]}, f"{prefix}_{net}")


def record_eval(trainer, step, results, extra, writer, workdir) -> None:
  """Writes one evaluation's results (``{net: classification_metrics}``, ``extra``: the
  held-out part's under "val") into ``workdir``: the metrics rows and, on process 0,
  eval/step_N.json, the confusion PNG and thresholds.png."""
  eval_rows(writer, step, results, extra)
  if trainer.is_main:
    (epath.Path(workdir) / rundir.EVAL_DIR).mkdir(parents=True, exist_ok=True)
    rundir.write_json(rundir.eval_file(workdir, step),
                      {"step": step, "class_names": list(trainer.dataset.class_names), **results,
                       **extra})
    png = rundir.confusion_file(workdir, step)
    plots.confusion_png(results["teacher"]["confusion"], trainer.dataset.class_names, png,
                        plots.confusion_title(step, results["teacher"]))
    writer.image("eval_teacher/confusion", png, step)
    if plot_thresholds(workdir, trainer.dataset.class_names):
      writer.image("algo/thresholds", epath.Path(workdir) / rundir.THRESHOLDS, step)
  writer.flush()


def summarise(trainer, history, last_means, wall, compile_s, *, config=None,
              train_data=None) -> dict:
  """The summary.json of the run: what was trained, its timing and last training means,
  and per network the final and best results (``selection.summarise``) over the
  evaluations (``history``: step -> eval record) up to ``config.train.num_steps``.
  ``config`` / ``train_data``: a population member's own (default: the trainer's)."""
  cfg = trainer.config if config is None else config
  data = trainer.train_data if train_data is None else train_data
  history = {s: r for s, r in history.items() if s <= cfg.train.num_steps}
  out = {"algorithm": cfg.algorithm, "dataset": cfg.dataset.name, "seed": cfg.seed,
         "num_steps": cfg.train.num_steps, "final_step": max(history),
         "num_labeled": len(data.labeled),
         "num_unlabeled": len(data.unlabeled) if data.unlabeled else 0,
         "class_names": list(trainer.dataset.class_names),
         "labeled_ids_sha256": data.split_hash,
         "num_val": 0 if data.val_ids is None else len(data.val_ids),
         "selection_note": selection.NOTE,
         "wall_time_s": wall, "compile_s": compile_s,
         "train": scalars(last_means)}
  for net in ("teacher", "student"):
    out[net] = selection.summarise(history, net)
  return out


def finish(trainer, workdir, last_means, wall, compile_s, *, rerun: bool) -> dict:
  """summary.json, report.html and the results table at the end of a run;
  returns the summary. ``rerun``: the run had already finished, so its timing and last
  training means are kept from summary.json or (killed before writing it) from the final
  checkpoint's metrics row."""
  history = rundir.eval_history(workdir)
  summary = summarise(trainer, history, last_means, wall, compile_s)
  summary_path = workdir / rundir.SUMMARY
  if rerun:
    old = (rundir.read_json_or_warn(summary_path, what="rebuilt from metrics.jsonl")
           or rundir.checkpoint_row(workdir, trainer.config.train.num_steps))
    summary.update({k: old[k] for k in ("wall_time_s", "compile_s", "train") if k in old})
  if trainer.is_main:
    rundir.write_json(summary_path, summary, indent=2)  # thresholds.png: by the final write_eval
    from ssfer_jax.tools import report  # WORKDIR/report.html (logs, never raises, on failure)
    report.write_run_report(workdir)
    final_eval = history[summary["final_step"]]
    console.say(console.results_table(summary, final_eval, trainer.dataset.class_names, workdir))
  return summary


def scalars(means) -> dict:
  """The scalar training means as floats (what metrics rows and summary.json keep)."""
  return {k: float(v) for k, v in means.items() if np.ndim(v) == 0}


def plot_thresholds(workdir, class_names) -> bool:
  """WORKDIR/thresholds.png from the logged per-class thresholds (the report's chart of
  them); False if none were logged."""
  png = plots.thresholds_chart(rundir.read_metrics(workdir).get("train", []), class_names)
  if png is None:
    return False
  (epath.Path(workdir) / rundir.THRESHOLDS).write_bytes(png)
  return True


def run_row(trainer, step, wall, compile_s, means) -> dict:
  """The ``kind: run`` metrics row saved with each checkpoint (``rundir.checkpoint_row``):
  wall and compile time so far and the last training means (per member in a population)."""
  row = {"step": step, "kind": "run", "wall_time_s": wall, "compile_s": compile_s,
         "train": scalars(trainer.overall(means))}
  if trainer.stacked:
    row["members_train"] = [scalars(member_values(means, k))
                            for k in range(trainer.members)]
  return row


def member_values(means: dict, k: int) -> dict:
  """Member ``k``'s training means of a population run (population-wide values, like
  ``nonfinite``, as they are)."""
  return {name: np.asarray(v)[k] if np.ndim(v) else v for name, v in means.items()}
