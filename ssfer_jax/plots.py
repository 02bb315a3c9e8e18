"""PNG figures (matplotlib, Agg backend, no display needed): the ones written into the
workdir and the report's curves, all line charts drawn by ``line_chart``."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def confusion_title(step, teacher: dict) -> str:
  """The caption of the teacher confusion matrix at ``step`` (an eval record's teacher part)."""
  return (f"teacher, step {step}: top-1 {teacher['top1']:.3f}, mean per-class "
          f"{teacher['mean_class_acc']:.3f}")


def confusion_png(confusion, class_names, path, title: str = "") -> None:
  """Row-normalised confusion heat map with counts; rows = true class."""
  cm = np.asarray(confusion, np.float64)
  rows = cm.sum(1, keepdims=True)
  norm = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
  n = len(class_names)
  fig, ax = plt.subplots(figsize=(1.0 + 0.75 * n, 0.8 + 0.7 * n), dpi=110)
  ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
  for i in range(n):
    for j in range(n):
      ax.text(j, i, f"{norm[i, j]:.2f}\n{int(cm[i, j])}", ha="center", va="center", fontsize=7,
              color="white" if norm[i, j] > 0.5 else "black")
  ax.set_xticks(range(n), class_names, rotation=45, ha="right")
  ax.set_yticks(range(n), class_names)
  ax.set_xlabel("predicted")
  ax.set_ylabel("true")
  if title:
    ax.set_title(title, fontsize=9)
  fig.tight_layout()
  fig.savefig(str(path))
  plt.close(fig)


def series(rows, key: str):
  """(steps, values) of ``key`` over metrics.jsonl rows that have a finite value for it."""
  steps, values = [], []
  for r in rows:
    v = r.get(key)
    if isinstance(v, (int, float)) and np.isfinite(v):
      steps.append(int(r["step"]))
      values.append(float(v))
  return steps, values


def line_chart(lines: dict, title: str, ylabel: str = "", styles: dict | None = None,
               bands: dict | None = None):
  """{label: (steps, values)} -> PNG bytes of one line per label over steps, or None when
  no line has points (the report's curves and WORKDIR/thresholds.png). ``bands``:
  {label: (steps, low, high)}, shaded under the lines. ``styles``: matplotlib keywords
  per label; a label starting with "_" stays out of the legend."""
  lines = {k: v for k, v in lines.items() if v[0]}
  bands = {k: v for k, v in (bands or {}).items() if v[0]}
  if not lines and not bands:
    return None
  fig, ax = plt.subplots(figsize=(6.0, 3.3), dpi=100)
  for label, (steps, low, high) in bands.items():
    style = dict(alpha=0.2, linewidth=0)
    style.update((styles or {}).get(label, {}))
    ax.fill_between(steps, low, high, label=label, **style)
  for label, (steps, values) in lines.items():
    style = dict(linewidth=1.3)
    style.update((styles or {}).get(label, {}))
    if len(steps) == 1:
      style.setdefault("marker", "o")
    ax.plot(steps, values, label=label, **style)
  ax.set_title(title, fontsize=10)
  ax.set_xlabel("step")
  if ylabel:
    ax.set_ylabel(ylabel)
  ax.grid(alpha=0.3)
  shown = [k for k in list(bands) + list(lines) if not k.startswith("_")]
  if shown:
    ax.legend(fontsize=7, ncol=2 if len(shown) > 4 else 1)
  buf = io.BytesIO()
  fig.tight_layout()
  fig.savefig(buf, format="png")
  plt.close(fig)
  return buf.getvalue()


TAU = "algo/tau/"  # metrics.jsonl keys of per-class thresholds: algo/tau/<class name>


def thresholds_chart(train_rows, class_names=()):
  """PNG bytes of the per-class thresholds logged in ``train_rows`` (deduplicated), or
  None when none were logged; classes in ``class_names`` order, else by name."""
  names = list(class_names) or sorted({k[len(TAU):] for r in train_rows for k in r
                                       if k.startswith(TAU)})
  return line_chart({n: series(train_rows, TAU + n) for n in names}, "per-class thresholds",
                    "tau")
