"""The figures of ``ssfer_jax.tools.report``, as base64 PNGs ready to inline into the page.

Charts are drawn by ``plots.line_chart`` (the one line-chart function; the per-class
thresholds chart is ``plots.thresholds_chart``, also WORKDIR/thresholds.png) from the
de-duplicated metrics.jsonl rows of a ``report_runs.Run``; a chart with no data is left
out. A population's curves (``population_charts``) come from its members' own rows: the
mean over members, the min-max band (every member lies inside it) and each member thin.
"""

from __future__ import annotations

import base64
import tempfile
from typing import Sequence

import matplotlib
import numpy as np
from etils import epath

from ssfer_jax import plots, rundir
from ssfer_jax.plots import series
from ssfer_jax.tools.report_runs import NETS

COLORS = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]


def b64(png: bytes | None) -> str | None:
  return base64.b64encode(png).decode("ascii") if png else None


def loss_keys(train_rows: Sequence[dict]) -> list:
  """'loss', 'loss_*' and the algorithm's own 'algo/loss_*' (unless the same as a top-level key)."""
  keys = set()
  for r in train_rows:
    keys.update(k for k in r if k == "loss" or k.startswith("loss_"))
  for r in train_rows:
    keys.update(k for k in r if k.startswith("algo/loss_") and k[len("algo/"):] not in keys)
  return sorted(keys, key=lambda k: (k != "loss", k))


def run_charts(run, evals: bool = True) -> list:
  """[(title, base64 PNG)] of one run's curves; charts with no data are left out.
  ``evals=False``: the training curves only (a population draws its evaluations and
  thresholds per member, ``population_charts``)."""
  train = run.rows.get("train", [])
  charts = []
  charts.append(("Losses", plots.line_chart({k: series(train, k) for k in loss_keys(train)},
                                            "training losses (mean over each logging interval)",
                                            "loss")))
  acc = {}
  for net in NETS:
    rows = run.rows.get(f"eval_{net}", [])
    acc[f"{net} top-1"] = series(rows, "top1")
    acc[f"{net} mean per-class"] = series(rows, "mean_class_acc")
  styles = {f"{n} {m}": {"color": COLORS[k], "linestyle": "--" if m != "top-1" else "-"}
            for k, n in enumerate(NETS) for m in ("top-1", "mean per-class")}
  if evals:
    charts.append(("Test accuracy", plots.line_chart(acc, "test accuracy", "accuracy", styles)))
  charts.append(("Pseudo-labels", plots.line_chart(
      {"mask rate": series(train, "mask_rate"),
       "pseudo-label precision (masked)": series(train, "pl_precision"),
       "pseudo-label accuracy (all)": series(train, "pl_accuracy_all")},
      "unlabeled data: mask rate and pseudo-label quality", "fraction")))
  charts.append(("Complementary labels", plots.line_chart(
      {"complementary-label error": series(train, "algo/complementary_error"),
       "SNL selected rate": series(train, "algo/neg_selected_rate")},
      "selective negative learning", "fraction")))
  if evals:
    charts.append(("Per-class thresholds", plots.thresholds_chart(train, run.class_names)))
  return [(t, b64(png)) for t, png in charts if png]


def comparison_charts(runs: Sequence) -> list:
  """[(title, base64 PNG)] of the main curves of several runs overlaid, one colour a run."""
  colors = {r.name: {"color": COLORS[i % len(COLORS)]} for i, r in enumerate(runs)}

  def overlay(kind, key, title, ylabel):
    return plots.line_chart({r.name: series(r.rows.get(kind, []), key) for r in runs}, title,
                            ylabel, colors)

  charts = [("teacher test top-1", overlay("eval_teacher", "top1", "teacher test top-1", "accuracy")),
            ("teacher test mean per-class accuracy",
             overlay("eval_teacher", "mean_class_acc", "teacher test mean per-class accuracy",
                     "accuracy")),
            ("training loss", overlay("train", "loss", "training loss", "loss")),
            ("mask rate", overlay("train", "mask_rate", "mask rate", "fraction")),
            ("pseudo-label precision", overlay("train", "pl_precision",
                                               "pseudo-label precision (masked)", "precision"))]
  return [(t, b64(png)) for t, png in charts if png]


def confusion_image(run):
  """(caption, base64 PNG) of the final teacher confusion matrix, or None (no evaluation,
  or only the metrics.jsonl rows of a torn eval file)."""
  ev = run.final_eval
  if not ev or "confusion" not in ev.get("teacher", {}):
    return None
  step = ev.get("step")
  t = ev["teacher"]
  caption = plots.confusion_title(step, t)
  png = rundir.confusion_file(run.path, step)
  if png.exists():
    return caption, b64(png.read_bytes())
  names = ev.get("class_names") or run.class_names or [str(i) for i in range(len(t["confusion"]))]
  with tempfile.TemporaryDirectory(prefix="ssfer_report_") as tmp:
    out = epath.Path(tmp) / "confusion.png"
    plots.confusion_png(t["confusion"], names, out, caption)
    return caption, b64(out.read_bytes())


def member_band(member_rows: Sequence, key: str):
  """(steps, mean, low, high) of ``key`` over members (each a list of metrics rows) at the
  steps where every member has a value: the mean, minimum and maximum over members."""
  per = [dict(zip(*series(rows, key))) for rows in member_rows]
  steps = sorted(set.intersection(*(set(p) for p in per))) if per else []
  values = np.array([[p[s] for p in per] for s in steps]).reshape(len(steps), len(per))
  return steps, values.mean(1).tolist(), values.min(1).tolist(), values.max(1).tolist()


def band_chart(member_rows: Sequence, key: str, title: str, ylabel: str):
  """PNG of ``key`` over steps for a population: the mean over members (bold), the min-max
  band and each member's thin line (one legend entry for them all)."""
  color = COLORS[0]
  lines, styles = {}, {}
  for k, rows in enumerate(member_rows):
    label = "each member" if k == 0 else f"_member {k}"
    lines[label] = series(rows, key)
    styles[label] = {"color": color, "linewidth": 0.7, "alpha": 0.55}
  steps, mean, low, high = member_band(member_rows, key)
  lines[f"mean of {len(member_rows)}"] = (steps, mean)
  styles[f"mean of {len(member_rows)}"] = {"color": "black", "linewidth": 2.0}
  styles["min-max over members"] = {"color": color, "alpha": 0.2}
  return plots.line_chart(lines, title, ylabel, styles,
                          bands={"min-max over members": (steps, low, high)})


def population_charts(run) -> list:
  """[(title, base64 PNG)] of a population: test top-1 of teacher and student over
  members (``band_chart``), the per-class thresholds as the mean over members with their
  min-max band (methods with thresholds), then the training curves of the run's own
  metrics.jsonl (means over members)."""
  n = len(run.members)
  charts = [(f"{net} test top-1 over members", band_chart(
      [m.rows.get(f"eval_{net}", []) for m in run.members], "top1",
      f"{net} test top-1: mean of {n} members, min-max band, each member thin", "accuracy"))
      for net in NETS]
  names = run.class_names or sorted({k[len(plots.TAU):] for m in run.members
                                     for r in m.rows.get("train", []) for k in r
                                     if k.startswith(plots.TAU)})
  lines, bands, styles = {}, {}, {}
  for i, name in enumerate(names):
    steps, mean, low, high = member_band([m.rows.get("train", []) for m in run.members],
                                         plots.TAU + name)
    lines[name], bands[f"_{name} band"] = (steps, mean), (steps, low, high)
    styles[name] = {"color": COLORS[i % len(COLORS)]}
    styles[f"_{name} band"] = {"color": COLORS[i % len(COLORS)], "alpha": 0.15}
  charts.append(("Per-class thresholds over members", plots.line_chart(
      lines, f"per-class thresholds: mean of {n} members, min-max band", "tau", styles, bands)))
  return [(t, b64(png)) for t, png in charts if png] + run_charts(run, evals=False)
