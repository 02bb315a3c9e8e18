"""ssfer_jax.tools.report from real run outputs: every section present, self-contained (inline
PNGs, no network references, no script), (kind, step) de-duplication, and runs with
missing pieces (no evaluation yet, no thresholds)."""

from __future__ import annotations

import base64
import json
import re
import shutil

import pytest

from ssfer_jax import plots, rundir, train
from ssfer_jax.tools import report
from tests.conftest import tiny_config

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  """A tiny dta_snl run: per-class thresholds and complementary-label error are logged."""
  workdir = tmp_path_factory.mktemp("runs") / "dta_snl"
  train.run(tiny_config("dta_snl"), workdir)
  return workdir


def _check_self_contained(text: str) -> None:
  assert not re.search(r"https?://", text)
  assert "<script" not in text.lower() and "<link" not in text.lower()
  srcs = re.findall(r'src="([^"]*)"', text)
  assert srcs
  for src in srcs:
    assert src.startswith("data:image/png;base64,")
    assert base64.b64decode(src.split(",", 1)[1])[:8] == PNG


def _alts(section: str) -> set:
  return set(re.findall(r'<img alt="([^"]*)"', section))


def test_train_writes_run_report(run_dir):
  text = (run_dir / "report.html").read_text()
  _check_self_contained(text)
  summary = json.loads((run_dir / "summary.json").read_text())
  for section in ("Test metrics", "Curves", "Final confusion matrix",
                  "<details><summary>config.json</summary>"):
    assert section in text
  assert {"Losses", "Test accuracy", "Pseudo-labels", "Complementary labels",
          "Per-class thresholds"} <= _alts(text)
  assert f"{summary['teacher']['final_top1']:.4f}" in text
  assert f"{summary['student']['final_macro_f1']:.4f}" in text
  assert "Comparison" not in text                  # one run: no comparison section
  assert "&quot;threshold_momentum&quot;: 0.999" in text  # the config: escaped JSON in <pre>


def test_dedupe_later_row_wins(run_dir):
  rows = [{"kind": "train", "step": 2, "loss": 1.0}, {"kind": "train", "step": 4, "loss": 2.0},
          {"kind": "eval_teacher", "step": 4, "top1": 0.1},
          {"kind": "train", "step": 4, "loss": 3.0}, {"kind": "train", "step": 6, "loss": 4.0}]
  out = rundir.dedupe_rows(rows)
  assert [r["loss"] for r in out["train"]] == [1.0, 3.0, 4.0]
  assert plots.series(out["train"], "loss") == ([2, 4, 6], [1.0, 3.0, 4.0])
  assert [r["step"] for r in out["eval_teacher"]] == [4]


def test_headline_without_summary_is_what_summary_json_holds(run_dir, tmp_path):
  # One best/final rule: an unfinished run's headline (from eval/step_N.json) is the
  # summary the finished run wrote; a torn last eval file falls back on its metrics rows.
  copy = tmp_path / "unfinished"
  shutil.copytree(run_dir, copy)
  summary = json.loads((copy / "summary.json").read_text())
  (copy / "summary.json").unlink()
  run = report.load_run(copy)
  assert run.summary is None
  for net in ("teacher", "student"):
    assert report.headline(run)[net] == dict(summary[net], final_step=summary["final_step"])
  last = max(run.evals)
  (copy / "eval" / f"step_{last}.json").write_text('{"step": ')
  run = report.load_run(copy)
  assert set(run.final_eval["teacher"]) == {"top1", "mean_class_acc", "macro_f1"}
  assert report.headline(run)["teacher"]["final_top1"] == summary["teacher"]["final_top1"]
  assert report.confusion_image(run) is None
  assert "Test metrics" in report.render([run])


def test_comparison_resumed_and_unfinished_runs(run_dir, tmp_path, capsys):
  # A resumed copy: metrics.jsonl repeats step 8 (the later row must win) and has a
  # truncated last line, as a killed writer leaves it.
  resumed = tmp_path / "resumed"
  shutil.copytree(run_dir, resumed)
  rows = [json.loads(line) for line in (resumed / "metrics.jsonl").read_text().splitlines()]
  last_train = [r for r in rows if r["kind"] == "train"][-1]
  with open(resumed / "metrics.jsonl", "a") as f:
    f.write(json.dumps(dict(last_train, loss=123.0)) + "\n" + '{"step": 9, "kind": "tr')
  run = report.load_run(resumed)
  assert plots.series(run.rows["train"], "loss")[1][-1] == 123.0
  assert len({r["step"] for r in run.rows["train"]}) == len(run.rows["train"])
  # An unfinished fixmatch run: config and two train rows, no evaluation, no summary.
  fresh = tmp_path / "fresh"
  fresh.mkdir()
  cfg = json.loads((run_dir / "config.json").read_text())
  cfg["algorithm"] = "fixmatch"
  (fresh / "config.json").write_text(json.dumps(cfg))
  (fresh / "metrics.jsonl").write_text("".join(json.dumps(
      {"step": s, "kind": "train", "loss": 2.0 / s, "loss_x": 1.5 / s, "loss_u": 0.5 / s,
       "mask_rate": 0.1 * s, "pl_precision": None}) + "\n" for s in (1, 2)))
  out = tmp_path / "out" / "report.html"
  assert report.main([str(run_dir), str(resumed), str(fresh), f"--out={out}"]) == 0
  assert "3 run(s)" in capsys.readouterr().out
  text = out.read_text()
  _check_self_contained(text)
  head, run0 = text.split('<h2 id="run0">')
  run0, run1 = run0.split('<h2 id="run1">')
  run1, run2 = run1.split('<h2 id="run2">')
  assert '<h2 id="comparison">Comparison</h2>' in head
  assert {"teacher test top-1", "training loss", "mask rate"} <= _alts(head)
  assert head.count("<tr") == 4                     # header + 3 runs
  assert "Per-class thresholds" in _alts(run0) and "Per-class thresholds" in _alts(run1)
  assert "no evaluation yet" in run2 and "no summary.json" in run2
  assert _alts(run2) == {"Losses", "Pseudo-labels"}  # no eval, no thresholds, no SNL
  assert "Final confusion matrix" not in run2
  assert "steps 2 of 8" in run2


def test_bad_inputs(tmp_path, capsys):
  assert report.main([str(tmp_path / "missing")]) == 2
  assert "no such run directory" in capsys.readouterr().err
  assert report.main([str(tmp_path)]) == 2
  assert "not a run directory" in capsys.readouterr().err
  (tmp_path / "metrics.jsonl").write_text('{"step": 1, "kind": "train"}\nnot json\n{}\n')
  assert report.main([str(tmp_path), f"--out={tmp_path / 'r.html'}"]) == 2
  assert "metrics.jsonl line 2" in capsys.readouterr().err
