"""What a training run prints: the start banner, one line per evaluation, the final table,
and the provenance (commit, command line, versions, devices) that run_info.json records.

Only process 0 prints. Lines go to stdout (the live progress line goes to stderr).
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import shlex
import subprocess
import sys

import jax
import numpy as np

from ssfer_jax import malloc
from ssfer_jax.data import splits

PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "grain", "tensorflow-datasets",
            "ml-collections", "numpy")


def say(text: str) -> None:
  if jax.process_index() == 0:
    print(text, flush=True)


def git_commit() -> str | None:
  """The source checkout's commit (``+dirty`` with uncommitted changes); None if not a checkout."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  try:
    head = subprocess.run(["git", "-C", root, "rev-parse", "HEAD"], capture_output=True,
                          text=True, timeout=10)
    if head.returncode != 0:
      return None
    dirty = subprocess.run(["git", "-C", root, "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True, timeout=10).stdout.strip()
  except (OSError, subprocess.SubprocessError):
    return None
  return head.stdout.strip() + ("+dirty" if dirty else "")


def versions() -> dict:
  out = {"python": platform.python_version()}
  for name in PACKAGES:
    try:
      out[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      out[name] = None
  return out


def devices_info() -> dict:
  devs = jax.devices()
  return {"platform": devs[0].platform, "device_kind": devs[0].device_kind,
          "num_devices": len(devs), "num_local_devices": jax.local_device_count(),
          "num_processes": jax.process_count()}


def provenance() -> dict:
  """What run_info.json and report.html record about how and where a run was made."""
  return {"git_commit": git_commit(), "command_line": shlex.join(sys.argv),
          "cwd": os.getcwd(), "versions": versions(), "devices": devices_info(),
          "malloc": malloc.loaded()}


def banner(config, trainer, resumed_from: int | None, workdir) -> str:
  """The start banner: method, data and split, model, devices and mesh, schedule, workdir."""
  ds, td = trainer.dataset, trainer.train_data
  n_unl = len(td.unlabeled) if td.unlabeled else 0
  per_class = splits.class_counts(ds.train.labels, td.labeled_ids, ds.num_classes)
  m = config.model
  dev = devices_info()
  mesh = ", ".join(f"{k}={v}" for k, v in trainer.mesh.shape.items())
  lines = [
      f"ssfer_jax: {config.algorithm} on {config.dataset.name} "
      f"({ds.num_classes} classes: {', '.join(ds.class_names)})",
      f"  data    {len(ds.train)} train images: {len(td.labeled)} labeled "
      f"({' '.join(str(int(c)) for c in per_class)} per class), {n_unl} unlabeled; "
      f"{len(ds.test)} test; {config.data.image_size} px x {ds.channels} ch",
      f"  split   {config.data.label_protocol if not config.data.labeled_ids_file else 'from ' + config.data.labeled_ids_file}"
      f", seed {config.data.split_seed}, sha256 {td.split_hash}"
      + (f"; {len(td.val_ids)} held out for validation (model selection)"
         if td.val_ids is not None and len(td.val_ids) else ""),
      f"  model   {m.backbone}, attention {'on' if m.attention else 'off'}, feature dropout "
      f"{m.feature_dropout}, compute {m.compute_dtype}",
      f"  batch   {config.data.batch_size} labeled"
      + (f" + {config.data.batch_size * config.data.uratio} unlabeled" if n_unl else "")
      + f" per step; pseudo-labels from the {config.pseudo_label_source}",
      f"  steps   {config.train.num_steps} ({td.steps_per_epoch} per epoch); evaluate every "
      f"{config.train.eval_every}, checkpoint every {config.train.checkpoint_every}",
      f"  devices {dev['num_devices']} x {dev['device_kind']} ({dev['platform']}), "
      f"{dev['num_processes']} process(es); mesh {mesh}"
      + (f"; XLA:CPU path {trainer.xla_cpu_path}" if getattr(trainer, "xla_cpu_path", None)
         else "")
      + (f"; malloc {malloc.describe()}" if dev["platform"] == "cpu" else ""),
  ]
  if getattr(trainer, "stacked", False):
    seeds = [c.seed for c in trainer.member_configs]
    lines.append(
        f"  members {trainer.members} (population.size) trained as one program ({trainer.vectorize}): seeds "
        f"{seeds[0]}-{seeds[-1]}, " + ("each its own labeled split (data.split_seed + k)"
                                       if config.population.vary_split else "one shared labeled split")
        + f"; {trainer.mesh.shape['population']} device group(s); members/<k>/ holds member k's files")
  lines += [
      f"  workdir {workdir} "
      + (f"(resuming from the checkpoint at step {resumed_from})" if resumed_from is not None
         else "(new run)"),
  ]
  return "\n".join(lines)


def eval_line(step: int, total: int, results: dict, val: dict | None = None) -> str:
  parts = []
  for net in ("teacher", "student"):
    r = results[net]
    parts.append(f"{net} top-1 {r['top1']:.4f} mean/class {r['mean_class_acc']:.4f} "
                 f"macro-F1 {r['macro_f1']:.4f}")
  if val:
    parts.append(f"held-out val: teacher top-1 {val['teacher']['top1']:.4f}")
  return f"eval step {step}/{total}: " + " | ".join(parts)


def results_table(summary: dict, final_eval: dict, class_names, workdir) -> str:
  """The end of a run: headline accuracies, the per-class table and where the report is."""
  t, s = summary["teacher"], summary["student"]
  lines = [
      f"final test accuracy (teacher): {t['final_top1']:.4f}  mean per-class: "
      f"{t['final_mean_class_acc']:.4f}  macro-F1: {t['final_macro_f1']:.4f}  best: "
      f"{t['best_top1']:.4f} at step {t['best_step']} (selected on test)  | student final: "
      f"{s['final_top1']:.4f}",
  ]
  if "val_best_step" in t:
    lines.append(f"selected on the held-out validation part: step {t['val_best_step']}, test "
                 f"top-1 {t['test_top1_at_val_best']:.4f}, mean per-class "
                 f"{t['test_mean_class_acc_at_val_best']:.4f}")
  width = max(len(n) for n in class_names) + 2
  lines.append(f"  {'class':<{width}}{'support':>8}{'teacher P':>11}{'teacher R':>11}"
               f"{'student P':>11}{'student R':>11}")
  te, st = final_eval["teacher"], final_eval["student"]
  for i, name in enumerate(class_names):
    support = te["support"][i]
    rec = lambda m: f"{m['per_class_recall'][i]:.3f}" if support else "-"  # noqa: E731
    lines.append(f"  {name:<{width}}{support:>8}{te['per_class_precision'][i]:>11.3f}"
                 f"{rec(te):>11}{st['per_class_precision'][i]:>11.3f}{rec(st):>11}")
  lines.append(f"  summary: {workdir}/summary.json   report: {workdir}/report.html")
  return "\n".join(lines)


def format_duration(seconds: float) -> str:
  seconds = max(0, int(seconds))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}h{m:02d}m{s:02d}s" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


def progress_line(step, total, rate, eta, means, last_eval):
  """The live progress line (stderr, every config.train.log_every steps)."""
  parts = [f"step {step}/{total}", f"{rate:.2f} steps/s", f"ETA {format_duration(eta)}",
           f"loss {means.get('loss', float('nan')):.4f}"]
  for key, label in (("loss_x", "L_x"), ("loss_u", "L_u"), ("mask_rate", "mask"),
                     ("pl_precision", "pl_prec")):
    if key in means:
      parts.append(f"{label} {means[key]:.3f}")
  if last_eval is not None:
    parts.append(f"last eval: teacher top-1 {last_eval:.4f}")
  return " | ".join(parts)


def dry_run(config) -> str:
  """The resolved config and the label split (per-class counts), without training or
  writing anything: ``python -m ssfer_jax.main --dry_run``."""
  from ssfer_jax import algorithms  # the trainer's modules, only for this
  from ssfer_jax.config import validate
  from ssfer_jax.data import pipeline
  from ssfer_jax.data.datasets import load_dataset
  validate(config)
  algorithm = algorithms.get_algorithm(config.algorithm)
  dataset = load_dataset(config)
  data = pipeline.split_train(dataset, config, algorithm, None)
  labels = np.asarray(dataset.train.labels)
  lab = splits.class_counts(labels, data.labeled_ids, dataset.num_classes)
  allc = splits.class_counts(labels, np.arange(len(labels)), dataset.num_classes)
  width = max(len(n) for n in dataset.class_names) + 2
  lines = [config.to_json_best_effort(indent=2, sort_keys=True),
           f"split of {config.dataset.name} train ({len(labels)} images) for {config.algorithm}: "
           f"{len(data.labeled)} labeled, {len(data.unlabeled) if data.unlabeled else 0} "
           f"unlabeled, {len(dataset.test)} test; {data.steps_per_epoch} steps per epoch",
           f"  {'class':<{width}}{'train':>8}{'labeled':>9}"]
  lines += [f"  {n:<{width}}{int(a):>8}{int(b):>9}" for n, a, b in zip(dataset.class_names, allc, lab)]
  return "\n".join(lines)
