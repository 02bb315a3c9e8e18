"""The part of ``ssfer_jax.tools.report`` that shows a population run (``population.py``).

A population's point is the spread over seeds, so its section shows every member and what
the members say together, not one set of numbers: the per-member table (seed, final and
best test top-1, mean per-class accuracy, the validation-selected figures where there are
held-out results), the mean, sample standard deviation and 95 % t-interval over members
(summary.json's ``stats.describe``; for an unfinished run computed the same way from the
members' evaluations so far), and the curves of ``report_figures.population_charts``.
Each member's own report is members/<k>/report.html.
"""

from __future__ import annotations

from ssfer_jax import rundir
from ssfer_jax.tools.report_figures import population_charts
from ssfer_jax.tools.report_html import e, figure, fmt, table
from ssfer_jax.tools.report_runs import DESCRIBED, described, headline


def seeds(run) -> list:
  """Member k's seed: summary.json's, else its own summary's, else config seed + k."""
  listed = ((run.summary or {}).get("population") or {}).get("seeds")
  if listed and len(listed) == len(run.members):
    return list(listed)
  base = (run.config or {}).get("seed")
  return [(m.summary or {}).get("seed", None if base is None else base + int(m.path.name))
          for m in run.members]


def meta(run) -> str:
  """The headline's population part: how many members and their seeds."""
  s = seeds(run)
  shared = not ((run.config or {}).get("population") or {}).get("vary_split")
  return (f"population of <b>{len(run.members)}</b> members (seeds {e(', '.join(map(str, s)))}; "
          + ("one shared labeled split" if shared else "a labeled split per member") + ")")


def members_table(run) -> str:
  """One row per member: its seed and results (``report_runs.headline``)."""
  heads = [headline(m) for m in run.members]
  val = any("test_top1_at_val_best" in h.get("teacher", {}) for h in heads)
  header = ["member", "seed", "teacher final top-1", "teacher best top-1 (on test)",
            "best at step", "teacher final mean per-class"]
  header += ["val-selected step", "teacher val top-1 there", "teacher test top-1 there"] if (
      val) else []
  header += ["student final top-1", "student final mean per-class", "directory"]
  rows = []
  for m, seed, h in zip(run.members, seeds(run), heads):
    t, s = h.get("teacher", {}), h.get("student", {})
    row = [m.path.name, seed, t.get("final_top1"), t.get("best_top1"), t.get("best_step"),
           t.get("final_mean_class_acc")]
    row += [t.get("val_best_step"), t.get("val_top1_at_val_best"),
            t.get("test_top1_at_val_best")] if val else []
    row += [s.get("final_top1"), s.get("final_mean_class_acc"),
            f"{rundir.MEMBERS_DIR}/{m.path.name}/"]
    rows.append(row)
  return table(header, rows)


def description_table(run) -> str:
  """Per network and number: n, mean ± sample std, the 95 % t-interval, min and max."""
  rows = []
  for net, keys in described(run).items():
    for key, d in keys.items():
      ci = d.get("ci95")
      rows.append([net, DESCRIBED.get(key, key), d["n"], d["mean"], d["std"],
                   f"[{fmt(ci[0])}, {fmt(ci[1])}]" if ci else None, d["min"], d["max"]])
  if not rows:
    return '<p class="note">no member has been evaluated yet</p>'
  return table(["network", "", "members", "mean", "std", "95% t-interval", "min", "max"],
               rows, left=2)


def body(run) -> str:
  """The results part of a population's section (the page's headline, provenance and
  config are ``report.run_section``'s)."""
  parts = []
  if (run.summary or {}).get("kind") != "population":
    parts.append('<p class="note">no population summary.json: the run has not finished '
                 "(the numbers come from the members' evaluations so far)</p>")
  parts.append("<h3>Members</h3>" + members_table(run)
               + '<p class="meta">each member is the single run with its seed; its own '
               "report: members/&lt;k&gt;/report.html. predict, export and evaluate use "
               "--member=K, by default the best on held-out validation (val top-1), else "
               "member 0</p>")
  parts.append("<h3>Over members: mean, sample std (ddof 1), 95 % t-interval of the mean</h3>"
               + description_table(run))
  charts = population_charts(run)
  parts.append("<h3>Curves</h3>")
  if charts:
    parts.append('<div class="grid">' + "".join(figure(t, png) for t, png in charts) + "</div>"
                 '<p class="meta">test top-1 and thresholds: bold / lines = mean over members, '
                 "shaded = min-max over members, thin = each member; training curves: "
                 "the run's metrics.jsonl, means over members</p>")
  else:
    parts.append('<p class="note">no metrics.jsonl rows yet</p>')
  return "\n".join(parts)

