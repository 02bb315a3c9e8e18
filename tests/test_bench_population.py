"""bench/population.py at a tiny size (small CNN, 16 px, N = 1 and 2, one round): the table
and JSON it writes, the N-sequential arithmetic, its time budget and its user errors."""

import json
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))
import population as bench  # noqa: E402  (bench/ is not a package)

TINY = ["--models=small_cnn", "--members=2,1", "--vectorize=vmap", "--rounds=1", "--round_s=0",
        "--settle_s=0", "--cnn_image_size=16"]
# configs/default.py: B = 16 labeled and uratio 3 x 16 = 48 unlabeled images per member step
IMAGES_PER_MEMBER_STEP = 16 + 48


def test_tiny_run_writes_the_table_and_json(tmp_path, capsys):
  out = tmp_path / "pop.json"
  assert bench.main(TINY + [f"--json={out}"]) == 0
  printed = capsys.readouterr().out
  assert ("| model | N | candidate | s/step | images/s per member | vs N sequential | compile s |"
          in printed)
  assert "| small_cnn | 2 | 2 sequential runs |" in printed
  assert "| small_cnn | 2 | vmap |" in printed
  assert "load average" in printed and "instruction set" in printed
  res = json.loads(out.read_text())
  assert res["command"].startswith("bench/population.py --models=small_cnn")
  assert {"jax", "instruction_set", "loadavg", "loadavg_end", "date", "rows"} <= set(res)
  rows = {(r["members"], r["candidate"]): r for r in res["rows"]}
  assert list(rows) == [(1, "single"), (2, "sequential"), (2, "vmap")]  # N sorted
  for r in rows.values():
    assert r["images_per_s_per_member"] * r["step_s"] == pytest.approx(IMAGES_PER_MEMBER_STEP)
    assert r["compile_s"] > 0 and r["steps_per_round"] == 1 and len(r["step_s_rounds"]) == 1
  seq, vmap = rows[(2, "sequential")], rows[(2, "vmap")]
  assert seq["vs_sequential"] == 1.0 and rows[(1, "single")]["vs_sequential"] == 1.0
  assert seq["compile_s"] == rows[(1, "single")]["compile_s"]  # the single run's compile
  assert vmap["vs_sequential"] == pytest.approx(seq["step_s"] / vmap["step_s"])


def test_no_budget_skips_every_case(tmp_path, capsys):
  out = tmp_path / "pop.json"
  assert bench.main(TINY + ["--max_seconds=0", f"--json={out}"]) == 0
  rows = json.loads(out.read_text())["rows"]
  assert [(r["members"], r["candidate"]) for r in rows] == [
      (1, "single"), (2, "sequential"), (2, "vmap")]
  assert all(r["skipped"].startswith("skipped: estimated") and "step_s" not in r for r in rows)
  assert "| small_cnn | 2 | vmap | skipped: estimated" in capsys.readouterr().out


def test_budget_estimate_extrapolates_the_last_measured_n():
  b = bench.Budget(100.0)
  assert b.estimate("m", 2, ["unroll"], 3, 1.0, 0.0) == 0.0  # nothing measured yet
  b.note("m", "single", 1, 10.0, 2.0)   # build 10 s, 2 s a step
  # the single again: (1 + 3 rounds) x 2 s; unroll at N=4 from the single: build 10 x 4^2,
  # a step 4 x 2 s, once untimed and once per round: 160 + 8 + 3 x 8
  assert b.estimate("m", 4, ["unroll"], 3, 1.0, 0.0) == 8 + 192
  # vmap's build grows linearly: 10 x 4 + 8 + 3 x 8
  assert b.estimate("m", 4, ["unroll", "vmap"], 3, 1.0, 0.0) == 8 + 192 + 72
  b.note("m", "unroll", 2, 30.0, 0.25)  # N=2 measured: at N=4 build 30 x 2^2, a step 0.5 s
  # each run lasts at least round_s = 1 s, plus 0.5 s settle: 4 x 2.5 + 120 + 0.5 + 3 x 1.5
  assert b.estimate("m", 4, ["unroll"], 3, 1.0, 0.5) == 10 + 120 + 0.5 + 4.5


@pytest.mark.parametrize("flag, needle", [("--members=x", "--members"),
                                          ("--members=0", "--members"),
                                          ("--models=vgg", "vgg"),
                                          ("--vectorize=map", "map")])
def test_bad_flags_are_one_line_errors(flag, needle, capsys):
  assert bench.main([flag]) == 2
  err = capsys.readouterr().err.strip()
  assert err.startswith("error:") and needle in err and len(err.splitlines()) == 1
