"""Evaluation metrics from confusion matrices, and the metric writers (TensorBoard + JSONL).

Only process 0 writes; other processes get a writer that does nothing.
"""

from __future__ import annotations

import json
import math
import time

import jax
import numpy as np
from etils import epath

from ssfer_jax import config_json, rundir


def classification_metrics(confusion) -> dict:
  """top-1, mean per-class accuracy (over classes present in the split), macro-F1,
  per-class precision / recall. ``confusion[i, j]`` = count of true i predicted j."""
  cm = np.asarray(confusion, np.float64)
  total = cm.sum()
  tp = np.diag(cm)
  support = cm.sum(1)
  predicted = cm.sum(0)
  present = support > 0
  recall = np.divide(tp, support, out=np.zeros_like(tp), where=present)
  precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
  f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros_like(tp),
                 where=(precision + recall) > 0)
  return {
      "top1": float(tp.sum() / total) if total else 0.0,
      "mean_class_acc": float(recall[present].mean()) if present.any() else 0.0,
      "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
      "per_class_recall": recall.tolist(),
      "per_class_precision": precision.tolist(),
      "support": support.astype(int).tolist(),
      "num_examples": int(total),
      "confusion": cm.astype(int).tolist(),
  }


def _scalar_items(metrics: dict, class_names):
  for name, value in metrics.items():
    arr = np.asarray(value)
    if arr.ndim == 0:
      yield name, float(arr)
    elif arr.ndim == 1 and len(arr) <= 64:
      for i, v in enumerate(arr):
        label = class_names[i] if class_names is not None and i < len(class_names) else str(i)
        yield f"{name}/{label}", float(v)


class MetricWriter:
  """TensorBoard event files in WORKDIR/tb and one JSON object a line in WORKDIR/metrics.jsonl.

  Per-class vectors (e.g. ``algo/tau``) are written as one scalar per class name.
  """

  def __init__(self, workdir, class_names=None):
    self.enabled = jax.process_index() == 0
    self.class_names = class_names
    if not self.enabled:
      return
    from tensorboardX import SummaryWriter  # local import: only the writing process needs it
    self.workdir = epath.Path(workdir)
    self.tb = SummaryWriter(str(self.workdir / "tb"))
    self.jsonl = rundir.open_append(self.workdir / rundir.METRICS)

  def write(self, step: int, metrics: dict, prefix: str = "train") -> None:
    if not self.enabled:
      return
    flat = dict(_scalar_items(metrics, self.class_names))
    for k, v in flat.items():
      if math.isfinite(v):
        self.tb.add_scalar(f"{prefix}/{k}", v, step)
    self.write_row({"step": int(step), "kind": prefix, "time": time.time(),
                    **{k: (v if math.isfinite(v) else None) for k, v in flat.items()}})

  def write_row(self, record: dict) -> None:
    """Appends one JSON line (one write call, so a kill cuts at most this line)."""
    if not self.enabled:
      return
    self.jsonl.write(json.dumps(record) + "\n")
    self.jsonl.flush()

  def config(self, config, metric_names=("eval_teacher/top1", "eval_teacher/mean_class_acc",
                                          "eval_student/top1")) -> None:
    """The run's config in TensorBoard: as text (TEXT tab) and as hyper-parameters
    (HPARAMS tab, one row per run, against the final ``metric_names``)."""
    if not self.enabled:
      return
    from tensorboardX.summary import hparams
    text = config.to_json_best_effort(indent=2, sort_keys=True)
    self.tb.add_text("config", "\n".join("    " + line for line in text.splitlines()), 0)
    flat = {}
    for key, value in config_json.leaves(json.loads(text)):
      flat[key] = value if isinstance(value, (bool, int, float, str)) else json.dumps(value)
    for summary in hparams(flat, {m: 0.0 for m in metric_names}):
      self.tb.file_writer.add_summary(summary)

  def image(self, tag: str, png_path, step: int) -> None:
    """A PNG written into the workdir (confusion matrix, thresholds) as a TensorBoard image."""
    if not self.enabled:
      return
    from PIL import Image
    with Image.open(str(png_path)) as im:
      self.tb.add_image(tag, np.asarray(im.convert("RGB")), step, dataformats="HWC")

  def flush(self):
    if self.enabled:
      self.tb.flush()
      self.jsonl.flush()

  def close(self):
    if self.enabled:
      self.tb.close()
      self.jsonl.close()
