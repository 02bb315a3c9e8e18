"""One self-contained HTML report of one or more training runs.

    python -m ssfer_jax.report RUN [RUN ...] [--out=report.html] [--title=TEXT]

Per run (a workdir written by ``ssfer_jax.train``): the headline (method, dataset,
steps, labels), final and best test metrics of teacher and student, curves over steps
from ``metrics.jsonl`` (losses; evaluation accuracy; mask rate and pseudo-label
precision; complementary-label error and SNL selection rate where logged
(``algo/complementary_error``); per-class thresholds where logged (``algo/tau/<class>``)),
the final teacher confusion matrix, any cross-dataset evaluations
(``ssfer_jax.evaluate``, RUN/cross_eval/*/results.json), and the config (collapsed).
With several runs it starts with a comparison table and the main curves overlaid.

The file stands alone: figures are PNGs (matplotlib, Agg) inlined as base64 ``data:``
URIs, the style sheet is inline, there is no script and nothing is fetched. Rows of
``metrics.jsonl`` are de-duplicated by (kind, step), the later row winning (a resumed
run repeats the steps after its last checkpoint). Missing pieces (no evaluation yet,
no summary, a method without thresholds) leave their section out or say so.
``train.run`` writes WORKDIR/report.html of its own run when it finishes.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import io
import json
import logging
import re
import sys
import tempfile
import time
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from absl import flags  # noqa: E402
from etils import epath  # noqa: E402

from ssfer_jax import cli
from ssfer_jax import plots, rundir  # noqa: E402

NETS = ("teacher", "student")
_TAU = "algo/tau/"
_COLORS = plt.rcParams["axes.prop_cycle"].by_key()["color"]


# -- reading a run -------------------------------------------------------------------------
def dedupe_rows(rows: Sequence[dict]) -> dict:
  """{kind: [row, ...] sorted by step}, one row per (kind, step): the later one wins."""
  by_key = {}
  for r in rows:
    if "step" in r and "kind" in r:
      by_key[(r["kind"], int(r["step"]))] = r
  out = {}
  for (kind, step), r in sorted(by_key.items(), key=lambda kv: (kv[0][0], kv[0][1])):
    out.setdefault(kind, []).append(r)
  return out


def read_metrics(path) -> dict:
  """metrics.jsonl -> ``dedupe_rows``; a truncated last line (a killed run) is skipped,
  any other unreadable line is an error naming the file and line."""
  return dedupe_rows(rundir.read_jsonl(path))


_read_json = rundir.read_json  # None when missing; names file:line when it does not parse


@dataclasses.dataclass
class Run:
  """Everything the report shows of one workdir (each piece may be missing)."""
  path: epath.Path
  name: str
  config: dict | None
  info: dict
  summary: dict | None
  rows: dict                     # kind -> deduplicated rows
  final_eval: dict | None        # eval/step_N.json of the last evaluated step
  cross_evals: list

  @property
  def class_names(self) -> list:
    for src in (self.info, self.summary or {}, self.final_eval or {}):
      if src.get("class_names"):
        return list(src["class_names"])
    return []

  def get(self, key: str, default=None):
    """A field from run_info.json / summary.json / config.json, in that order."""
    for src in (self.info, self.summary or {}):
      if key in src:
        return src[key]
    if self.config and key in ("algorithm",):
      return self.config.get(key, default)
    return default


def load_run(path, name: str | None = None) -> Run:
  path = epath.Path(path)
  if not path.is_dir():
    raise FileNotFoundError(f"{path}: no such run directory")
  known = ("config.json", "metrics.jsonl", "run_info.json", "summary.json")
  if not any((path / f).exists() for f in known):
    raise FileNotFoundError(f"{path} holds none of {', '.join(known)}: not a run directory "
                            "written by `python -m ssfer_jax.main`")
  evals = {}
  if (path / "eval").is_dir():
    for p in (path / "eval").glob("step_*.json"):
      m = re.fullmatch(r"step_(\d+)\.json", p.name)
      if m:
        evals[int(m.group(1))] = p
  final_eval = _read_json(evals[max(evals)]) if evals else None
  cross = []
  if (path / "cross_eval").is_dir():
    for d in sorted((path / "cross_eval").iterdir()):
      res = _read_json(d / "results.json") if d.is_dir() else None
      if res:
        cross.append(res)
  return Run(path=path, name=name or path.name, config=_read_json(path / "config.json"),
             info=_read_json(path / "run_info.json") or {},
             summary=_read_json(path / "summary.json"), rows=read_metrics(path / "metrics.jsonl"),
             final_eval=final_eval, cross_evals=cross)


def run_names(paths: Sequence) -> list:
  """Short unique labels: the folder name, or more of the path where names collide."""
  parts = [epath.Path(p).resolve().parts if not str(p).startswith(("gs:", "s3:")) else
           str(p).rstrip("/").split("/") for p in paths]
  depth = 1
  while True:
    names = ["/".join(ps[-depth:]) for ps in parts]
    if len(set(names)) == len(names) or depth >= max(len(ps) for ps in parts):
      return names
    depth += 1


# -- numbers ---------------------------------------------------------------------------------
def series(rows: Sequence[dict], key: str):
  """(steps, values) of ``key`` over rows that have a finite value for it."""
  steps, values = [], []
  for r in rows:
    v = r.get(key)
    if isinstance(v, (int, float)) and np.isfinite(v):
      steps.append(int(r["step"]))
      values.append(float(v))
  return steps, values


def headline(run: Run) -> dict:
  """{net: {final_top1, final_mean_class_acc, final_macro_f1, best_top1, best_step,
  best_mean_class_acc, final_step}} from summary.json, else from the eval rows; nets
  without any evaluation are absent."""
  out = {}
  for net in NETS:
    rows = run.rows.get(f"eval_{net}", [])
    s = (run.summary or {}).get(net)
    if s:
      out[net] = dict(s, final_step=(run.summary or {}).get("num_steps"))
    elif rows:
      final = rows[-1]
      best = max(rows, key=lambda r: (r.get("top1", -1), -r["step"]))
      out[net] = {"final_top1": final.get("top1"), "final_mean_class_acc": final.get("mean_class_acc"),
                  "final_macro_f1": final.get("macro_f1"), "best_top1": best.get("top1"),
                  "best_step": best["step"], "final_step": final["step"],
                  "best_mean_class_acc": max(r.get("mean_class_acc", -1) for r in rows)}
  return out


def last_step(run: Run):
  steps = [rows[-1]["step"] for rows in run.rows.values() if rows]
  return max(steps) if steps else None


# -- figures ---------------------------------------------------------------------------------
def _png(fig) -> str:
  buf = io.BytesIO()
  fig.tight_layout()
  fig.savefig(buf, format="png")
  plt.close(fig)
  return base64.b64encode(buf.getvalue()).decode("ascii")


def line_chart(lines: dict, title: str, ylabel: str = "", styles: dict | None = None):
  """{label: (steps, values)} -> base64 PNG, or None when no line has points."""
  lines = {k: v for k, v in lines.items() if v[0]}
  if not lines:
    return None
  fig, ax = plt.subplots(figsize=(6.0, 3.3), dpi=100)
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
  ax.legend(fontsize=7, ncol=2 if len(lines) > 4 else 1)
  return _png(fig)


def loss_keys(train_rows: Sequence[dict]) -> list:
  """'loss', 'loss_*' and the algorithm's own 'algo/loss_*' (unless the same as a top-level key)."""
  keys = set()
  for r in train_rows:
    keys.update(k for k in r if k == "loss" or k.startswith("loss_"))
  for r in train_rows:
    keys.update(k for k in r if k.startswith("algo/loss_") and k[len("algo/"):] not in keys)
  return sorted(keys, key=lambda k: (k != "loss", k))


def run_charts(run: Run) -> list:
  """[(title, base64 PNG)] of one run's curves; charts with no data are left out."""
  train = run.rows.get("train", [])
  charts = []
  charts.append(("Losses", line_chart({k: series(train, k) for k in loss_keys(train)},
                                      "training losses (mean over each logging interval)", "loss")))
  acc = {}
  for net in NETS:
    rows = run.rows.get(f"eval_{net}", [])
    acc[f"{net} top-1"] = series(rows, "top1")
    acc[f"{net} mean per-class"] = series(rows, "mean_class_acc")
  styles = {f"{n} {m}": {"color": _COLORS[k], "linestyle": "--" if m != "top-1" else "-"}
            for k, n in enumerate(NETS) for m in ("top-1", "mean per-class")}
  charts.append(("Test accuracy", line_chart(acc, "test accuracy", "accuracy", styles)))
  charts.append(("Pseudo-labels", line_chart(
      {"mask rate": series(train, "mask_rate"),
       "pseudo-label precision (masked)": series(train, "pl_precision"),
       "pseudo-label accuracy (all)": series(train, "pl_accuracy_all")},
      "unlabeled data: mask rate and pseudo-label quality", "fraction")))
  charts.append(("Complementary labels", line_chart(
      {"complementary-label error": series(train, "algo/complementary_error"),
       "SNL selected rate": series(train, "algo/neg_selected_rate")},
      "selective negative learning", "fraction")))
  names = run.class_names or sorted({k[len(_TAU):] for r in train for k in r if k.startswith(_TAU)})
  charts.append(("Per-class thresholds", line_chart(
      {n: series(train, _TAU + n) for n in names}, "per-class thresholds", "tau")))
  return [(t, png) for t, png in charts if png]


def confusion_image(run: Run):
  """(caption, base64 PNG) of the final teacher confusion matrix, or None."""
  ev = run.final_eval
  if not ev or "teacher" not in ev:
    return None
  step = ev.get("step")
  t = ev["teacher"]
  caption = (f"teacher, step {step}: top-1 {t['top1']:.3f}, mean per-class "
             f"{t['mean_class_acc']:.3f}")
  png = run.path / "eval" / f"confusion_teacher_step_{step}.png"
  if png.exists():
    return caption, base64.b64encode(png.read_bytes()).decode("ascii")
  names = ev.get("class_names") or run.class_names or [str(i) for i in range(len(t["confusion"]))]
  with tempfile.TemporaryDirectory(prefix="ssfer_report_") as tmp:
    out = epath.Path(tmp) / "confusion.png"
    plots.confusion_png(t["confusion"], names, out, caption)
    return caption, base64.b64encode(out.read_bytes()).decode("ascii")


# -- HTML ------------------------------------------------------------------------------------
CSS = """
body { font-family: -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
       margin: 0 auto; max-width: 1240px; padding: 16px 24px 48px; color: #1d2330;
       background: #fff; line-height: 1.45; font-size: 14px; }
h1 { font-size: 24px; margin: 8px 0 2px; }
h2 { font-size: 19px; margin: 36px 0 6px; padding-top: 10px; border-top: 2px solid #d8dde6; }
h3 { font-size: 15px; margin: 20px 0 6px; color: #364152; }
.meta { color: #5b6474; margin: 0 0 10px; }
table { border-collapse: collapse; margin: 6px 0 12px; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #d8dde6; padding: 4px 10px; text-align: right; }
th { background: #f1f3f7; font-weight: 600; }
td.l, th.l { text-align: left; }
tr.best td { background: #eef7ee; }
.grid { display: flex; flex-wrap: wrap; gap: 10px; }
figure { margin: 0; border: 1px solid #e3e6ec; border-radius: 4px; padding: 6px; background: #fff;
         box-sizing: border-box; flex: 0 1 calc(50% - 5px); }
figure.cm { flex: 0 1 auto; }
figure img { display: block; width: 100%; height: auto; }
figure.cm img { width: auto; max-width: 100%; }
figcaption { font-size: 12px; color: #5b6474; margin-top: 4px; }
details { margin: 8px 0; }
summary { cursor: pointer; color: #2a5db0; }
pre { background: #f6f8fa; border: 1px solid #e3e6ec; padding: 8px; font-size: 12px;
      overflow-x: auto; max-height: 480px; }
.note { color: #7a5b00; background: #fff8e1; border: 1px solid #f0dca0; padding: 4px 8px;
        display: inline-block; border-radius: 3px; }
nav a { margin-right: 14px; color: #2a5db0; }
"""


def _e(x) -> str:
  return html.escape(str(x), quote=True)


def _fmt(v, digits: int = 4) -> str:
  if v is None:
    return "–"
  if isinstance(v, float):
    return f"{v:.{digits}f}"
  return str(v)


def _img(b64: str, alt: str) -> str:
  return f'<img alt="{_e(alt)}" src="data:image/png;base64,{b64}">'


def _figure(title: str, b64: str, caption: bool = False, cls: str = "") -> str:
  """A figure; the chart PNGs carry their title, so a caption is only added on request."""
  cap = f"<figcaption>{_e(title)}</figcaption>" if caption else ""
  attr = f' class="{cls}"' if cls else ""
  return f"<figure{attr}>{_img(b64, title)}{cap}</figure>"


def _table(header: Sequence[str], rows: Sequence[Sequence], left: int = 1,
           row_classes: Sequence[str] | None = None) -> str:
  """``left``: how many leading columns are text (left-aligned)."""
  out = ["<table><tr>" + "".join(
      f'<th class="{"l" if i < left else ""}">{_e(h)}</th>' for i, h in enumerate(header)) + "</tr>"]
  for k, row in enumerate(rows):
    cls = f' class="{row_classes[k]}"' if row_classes and row_classes[k] else ""
    out.append(f"<tr{cls}>" + "".join(
        f'<td class="{"l" if i < left else ""}">{_e(_fmt(v))}</td>' for i, v in enumerate(row))
        + "</tr>")
  return "\n".join(out) + "</table>"


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
  if ev and names and all(net in ev for net in NETS):
    per = [[n, ev["teacher"]["support"][i], ev["teacher"]["per_class_precision"][i],
            ev["teacher"]["per_class_recall"][i], ev["student"]["per_class_precision"][i],
            ev["student"]["per_class_recall"][i]] for i, n in enumerate(names)]
    text += (f"<details><summary>per-class precision / recall at step {_e(ev.get('step'))}"
             "</summary>" + _table(["class", "support", "teacher precision", "teacher recall",
                                    "student precision", "student recall"], per) + "</details>")
  return text


def cross_eval_section(run: Run) -> str:
  if not run.cross_evals:
    return ""
  rows = []
  for r in run.cross_evals:
    rows.append([f"{r['dataset']}/{r['split']}", r.get("checkpoint_step"), r["num_evaluated"],
                 r["num_dropped"], ", ".join(r.get("model_classes_without_test_examples", [])) or "–",
                 r["teacher"]["top1"], r["teacher"]["mean_class_acc"], r["teacher"]["macro_f1"],
                 r["student"]["top1"]])
  return ("<h3>Evaluations on other data (ssfer_jax.evaluate)</h3>" + _table(
      ["dataset/split", "step", "evaluated", "dropped", "model classes without examples",
       "teacher top-1", "teacher mean per-class", "teacher macro-F1", "student top-1"], rows, left=1))


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
  meta.append(f"<code>{_e(run.path)}</code>")
  parts.append('<p class="meta">' + " · ".join(meta) + "</p>")
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
    rows.append([r.name, r.get("algorithm") or "?", r.get("dataset") or "?", last_step(r),
                 r.get("num_labeled"), t.get("final_top1"), t.get("final_mean_class_acc"),
                 t.get("final_macro_f1"), t.get("best_top1"), t.get("best_step"),
                 s.get("final_top1"), s.get("final_mean_class_acc")])
    classes_.append("best" if t.get("final_top1") is not None and t.get("final_top1") == best_top1
                    else "")
  table = _table(["run", "method", "dataset", "steps", "labels", "teacher final top-1",
                  "teacher final mean per-class", "teacher final macro-F1", "teacher best top-1",
                  "best at step", "student final top-1", "student final mean per-class"],
                 rows, left=3, row_classes=classes_)
  colors = {r.name: {"color": _COLORS[i % len(_COLORS)]} for i, r in enumerate(runs)}

  def overlay(kind, key, title, ylabel):
    return line_chart({r.name: series(r.rows.get(kind, []), key) for r in runs}, title, ylabel,
                      colors)

  charts = [("teacher test top-1", overlay("eval_teacher", "top1", "teacher test top-1", "accuracy")),
            ("teacher test mean per-class accuracy",
             overlay("eval_teacher", "mean_class_acc", "teacher test mean per-class accuracy",
                     "accuracy")),
            ("training loss", overlay("train", "loss", "training loss", "loss")),
            ("mask rate", overlay("train", "mask_rate", "mask rate", "fraction")),
            ("pseudo-label precision", overlay("train", "pl_precision",
                                               "pseudo-label precision (masked)", "precision"))]
  figs = "".join(_figure(t, png) for t, png in charts if png)
  return ('<h2 id="comparison">Comparison</h2>' + table
          + "<p class=\"meta\">green row: highest teacher final top-1</p>"
          + (f'<div class="grid">{figs}</div>' if figs else ""))


def render(runs: Sequence[Run], title: str = "ssfer_jax report") -> str:
  """The whole HTML document."""
  stamp = time.strftime("%Y-%m-%d %H:%M", time.localtime())
  body = [f"<h1>{_e(title)}</h1>", f'<p class="meta">{len(runs)} run(s) · generated {stamp} by '
          "<code>python -m ssfer_jax.report</code></p>"]
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
  runs = cli.parse(FLAGS, argv, "python -m ssfer_jax.report", __doc__, positional="RUN")
  out = write_report(runs, _OUT.value, _TITLE.value)
  print(f"wrote {out} ({len(out.read_bytes()) / 1024:.0f} KiB, {len(runs)} run(s))")
  return 0


if __name__ == "__main__":
  sys.exit(main())
