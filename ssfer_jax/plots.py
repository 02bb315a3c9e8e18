"""PNG figures written into the workdir (matplotlib, Agg backend, no display needed)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


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


def curves_png(steps, series: dict, path, title: str = "", ylabel: str = "") -> None:
  """One line per named series (e.g. per-class thresholds over steps)."""
  fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=110)
  for name, values in series.items():
    ax.plot(steps, values, label=name, linewidth=1.2)
  ax.set_xlabel("step")
  if ylabel:
    ax.set_ylabel(ylabel)
  if title:
    ax.set_title(title, fontsize=9)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7, ncol=2)
  fig.tight_layout()
  fig.savefig(str(path))
  plt.close(fig)
