"""One self-contained HTML report of one or more training runs.

    python -m ssfer_jax.tools.report RUN [RUN ...] [--out=report.html] [--title=TEXT]

Per run (a workdir written by ``ssfer_jax.train``): the headline (method, dataset,
steps, labels), final and best test metrics of teacher and student, curves over steps
from ``metrics.jsonl`` (losses; evaluation accuracy; mask rate and pseudo-label
precision; complementary-label error and SNL selection rate where logged
(``algo/complementary_error``); per-class thresholds where logged (``algo/tau/<class>``)),
the final teacher confusion matrix, any cross-dataset evaluations
(``ssfer_jax.tools.evaluate``, RUN/cross_eval/*/results.json), the provenance and the
config (collapsed). A population run (``config.population.size`` > 1) shows its members
instead (``report_population``): the per-member table, mean ± std and 95 % t-interval over
members, and the test top-1 curves as the mean over members with a min-max band and each
member's thin line. With several runs it starts with a comparison table and the main
curves overlaid (a population as its mean over members). What is read of a workdir:
``report_runs``.

The file stands alone: figures are PNGs (matplotlib, Agg) inlined as base64 ``data:``
URIs, the style sheet is inline, there is no script and nothing is fetched. Rows of
``metrics.jsonl`` are de-duplicated by (kind, step), the later row winning (a resumed
run repeats the steps after its last checkpoint). Missing pieces (no evaluation yet,
no summary, a method without thresholds) leave their section out or say so.
``train.run`` writes WORKDIR/report.html of its own run when it finishes (a population:
members/<k>/report.html of every member and the population's own).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Sequence

from absl import flags
from etils import epath

from ssfer_jax import cli
from ssfer_jax.tools import report_population
from ssfer_jax.tools.report_figures import comparison_charts, confusion_image, run_charts
from ssfer_jax.tools.report_html import CSS, e as _e, figure as _figure, table as _table
from ssfer_jax.tools.report_runs import NETS, Run, headline, last_step, load_run, run_names


# -- HTML ------------------------------------------------------------------------------------
def _anchor(i: int) -> str:
  return f"run{i}"


def metrics_section(run: Run) -> str:
  h = headline(run)
  if not h:
    return '<p class="note">no evaluation yet: metrics.jsonl has no eval rows</p>'
  rows = []
  for net in NETS:
    if net in h:
      m = h[net]
      rows.append([net, m.get("final_top1"), m.get("final_mean_class_acc"), m.get("final_macro_f1"),
                   m.get("best_top1"), m.get("best_step"), m.get("best_mean_class_acc")])
  text = _table(["network", "final top-1", "final mean per-class", "final macro-F1",
                 "best top-1", "best at step", "best mean per-class"], rows)
  ev = run.final_eval
  names = (ev or {}).get("class_names") or run.class_names
  if ev and names and all("support" in ev.get(net, {}) for net in NETS):
    per = [[n, ev["teacher"]["support"][i], ev["teacher"]["per_class_precision"][i],
            ev["teacher"]["per_class_recall"][i], ev["student"]["per_class_precision"][i],
            ev["student"]["per_class_recall"][i]] for i, n in enumerate(names)]
    text += (f"<details><summary>per-class precision / recall at step {_e(ev.get('step'))}"
             "</summary>" + _table(["class", "support", "teacher precision", "teacher recall",
                                    "student precision", "student recall"], per) + "</details>")
  return text


def cross_eval_section(run: Run, who: str = "") -> str:
  """The run's cross-dataset evaluations; ``who``: whose (a population's member)."""
  if not run.cross_evals:
    return ""
  rows = []
  for r in run.cross_evals:
    rows.append([f"{r['dataset']}/{r['split']}", r.get("checkpoint_step"), r["num_evaluated"],
                 r["num_dropped"], ", ".join(r.get("model_classes_without_test_examples", [])) or "–",
                 r["teacher"]["top1"], r["teacher"]["mean_class_acc"], r["teacher"]["macro_f1"],
                 r["student"]["top1"]])
  return (f"<h3>Evaluations {'of ' + _e(who) + ' ' if who else ''}on other data "
          "(ssfer_jax.tools.evaluate)</h3>" + _table(
              ["dataset/split", "step", "evaluated", "dropped", "model classes without examples",
               "teacher top-1", "teacher mean per-class", "teacher macro-F1", "student top-1"],
              rows, left=1))


def provenance_section(run: Run) -> str:
  """How the run was made: commit, command line, package versions, devices (run_info.json)."""
  info = run.info
  if not info.get("versions"):
    return '<p class="note">run_info.json records no provenance (a run from before it did)</p>'
  dev = info.get("devices") or {}
  rows = [["git commit", info.get("git_commit") or "not a git checkout"],
          ["command line", info.get("command_line", "?")],
          ["devices", f"{dev.get('num_devices', '?')} x {dev.get('device_kind', '?')} "
                      f"({dev.get('platform', '?')}), {dev.get('num_processes', '?')} process(es)"]]
  rows += [[name, version or "not installed"] for name, version in info["versions"].items()]
  return "<h3>Provenance</h3>" + _table(["", ""], rows, left=2)


def single_body(run: Run) -> str:
  """A single run's results: metrics, curves, confusion matrix, other-data evaluations."""
  parts = []
  if run.summary is None:
    parts.append('<p class="note">no summary.json: the run has not finished (numbers below '
                 "come from metrics.jsonl)</p>")
  parts.append("<h3>Test metrics</h3>" + metrics_section(run))
  charts = run_charts(run)
  parts.append("<h3>Curves</h3>")
  if charts:
    parts.append('<div class="grid">' + "".join(_figure(t, png) for t, png in charts) + "</div>")
  else:
    parts.append('<p class="note">no metrics.jsonl rows yet</p>')
  cm = confusion_image(run)
  if cm:
    parts.append("<h3>Final confusion matrix</h3>"
                 f'<div class="grid">{_figure(cm[0], cm[1], caption=True, cls="cm")}</div>')
  parts.append(cross_eval_section(run))
  return "\n".join(parts)


def run_section(run: Run, index: int) -> str:
  parts = [f'<h2 id="{_anchor(index)}">{_e(run.name)}</h2>']
  algo = run.get("algorithm") or "?"
  dataset = run.get("dataset") or ((run.config or {}).get("dataset") or {}).get("name", "?")
  total = (run.config or {}).get("train", {}).get("num_steps")
  done = last_step(run)
  meta = [f"method <b>{_e(algo)}</b>", f"dataset <b>{_e(dataset)}</b>",
          f"steps {_e(done if done is not None else 0)}"
          + (f" of {_e(total)}" if total is not None else "")]
  if run.get("num_labeled") is not None:
    meta.append(f"{_e(run.get('num_labeled'))} labeled / {_e(run.get('num_unlabeled'))} unlabeled")
  if run.summary and run.summary.get("wall_time_s") is not None:
    meta.append(f"wall time {run.summary['wall_time_s']:.0f} s")
  if run.members:
    meta.append(report_population.meta(run))
  meta.append(f"<code>{_e(run.path)}</code>")
  parts.append('<p class="meta">' + " · ".join(meta) + "</p>")
  parts.append(report_population.body(run) if run.members else single_body(run))
  parts += [cross_eval_section(m, m.name) for m in run.members]
  parts.append(provenance_section(run))
  if run.config is not None:
    parts.append("<details><summary>config.json</summary><pre>"
                 + _e(json.dumps(run.config, indent=2, sort_keys=True)) + "</pre></details>")
  else:
    parts.append('<p class="note">no config.json</p>')
  return "\n".join(parts)


def comparison_section(runs: Sequence[Run]) -> str:
  rows, classes_ = [], []
  best_top1 = max((headline(r).get("teacher", {}).get("final_top1") or -1) for r in runs)
  for i, r in enumerate(runs):
    h = headline(r)
    t, s = h.get("teacher", {}), h.get("student", {})
    name = r.name + (f" (mean of {len(r.members)} members)" if r.members else "")
    rows.append([name, r.get("algorithm") or "?", r.get("dataset") or "?", last_step(r),
                 r.get("num_labeled"), t.get("final_top1"), t.get("final_mean_class_acc"),
                 t.get("final_macro_f1"), t.get("best_top1"), t.get("best_step"),
                 s.get("final_top1"), s.get("final_mean_class_acc")])
    classes_.append("best" if t.get("final_top1") is not None and t.get("final_top1") == best_top1
                    else "")
  table = _table(["run", "method", "dataset", "steps", "labels", "teacher final top-1",
                  "teacher final mean per-class", "teacher final macro-F1", "teacher best top-1",
                  "best at step", "student final top-1", "student final mean per-class"],
                 rows, left=3, row_classes=classes_)
  charts = comparison_charts(runs)
  figs = "".join(_figure(t, png) for t, png in charts)
  return ('<h2 id="comparison">Comparison</h2>' + table
          + "<p class=\"meta\">green row: highest teacher final top-1</p>"
          + (f'<div class="grid">{figs}</div>' if figs else ""))


def render(runs: Sequence[Run], title: str = "ssfer_jax report") -> str:
  """The whole HTML document."""
  stamp = time.strftime("%Y-%m-%d %H:%M", time.localtime())
  body = [f"<h1>{_e(title)}</h1>", f'<p class="meta">{len(runs)} run(s) · generated {stamp} by '
          "<code>python -m ssfer_jax.tools.report</code></p>"]
  if len(runs) > 1:
    links = ['<a href="#comparison">comparison</a>'] + [
        f'<a href="#{_anchor(i)}">{_e(r.name)}</a>' for i, r in enumerate(runs)]
    body.append("<nav>" + "".join(links) + "</nav>")
    body.append(comparison_section(runs))
  body += [run_section(r, i) for i, r in enumerate(runs)]
  return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
          f"<title>{_e(title)}</title><style>{CSS}</style></head><body>\n"
          + "\n".join(body) + "\n</body></html>\n")


def write_report(run_dirs: Sequence, out, title: str = "ssfer_jax report") -> epath.Path:
  paths = [epath.Path(p) for p in run_dirs]
  runs = [load_run(p, n) for p, n in zip(paths, run_names(paths))]
  out = epath.Path(out)
  if out.parent and not out.parent.exists():
    out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(render(runs, title))
  return out


def write_run_report(workdir) -> None:
  """WORKDIR/report.html of one run (called by ``train.run`` at the end). A failure is
  logged, not raised: the run's results are already saved."""
  try:
    write_report([workdir], epath.Path(workdir) / "report.html", f"run {epath.Path(workdir).name}")
  except Exception as e:  # noqa: BLE001 - the report is a convenience, never fatal to training
    logging.warning("could not write %s/report.html: %s: %s", workdir, type(e).__name__, e)


FLAGS = flags.FlagValues()  # this tool's own flags: main() runs in-process next to the others
_OUT = flags.DEFINE_string("out", "report.html", "the HTML file to write", flag_values=FLAGS)
_TITLE = flags.DEFINE_string("title", "ssfer_jax report", "the report's heading",
                             flag_values=FLAGS)


@cli.guard
def main(argv=None) -> int:
  runs = cli.parse(FLAGS, argv, "python -m ssfer_jax.tools.report", __doc__, positional="RUN")
  out = write_report(runs, _OUT.value, _TITLE.value)
  print(f"wrote {out} ({len(out.read_bytes()) / 1024:.0f} KiB, {len(runs)} run(s))")
  return 0


if __name__ == "__main__":
  sys.exit(main())
