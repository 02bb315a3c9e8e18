"""bench/reductions.py, bench/step_parts.py and bench/conv_layers.py at a tiny size: they
run, agree with the plain forms (reductions checks that itself) and write the JSON the docs
quote."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(script, *args):
  env = dict(os.environ, XLA_FLAGS="")   # one device, as the benches are run
  proc = subprocess.run([sys.executable, os.path.join(ROOT, "bench", script), *args],
                        capture_output=True, text=True, env=env, timeout=600)
  assert proc.returncode == 0, proc.stderr[-2000:]
  return proc.stdout


def test_reductions_bench(tmp_path):
  out = tmp_path / "r.json"
  printed = _run("reductions.py", "--rounds=1", "--calls=1", f"--json={out}")
  assert "instruction set" in printed and "XLA:CPU path" in printed
  res = json.loads(out.read_text())
  assert {"channel_sum (16, 56, 56, 64)", "global_norm (ResNet-18 params)",
          "any_nonfinite (4 x ResNet-18)"} <= set(res["cases"])
  for case in res["cases"].values():
    assert case["plain_s"] > 0 and case["ssfer_jax_s"] > 0 and case["paired_speedup"] > 0
    assert [len(v) for v in case["rounds"].values()] == [1, 1]


def test_step_parts_bench(tmp_path):
  pytest.importorskip("torch")
  out = tmp_path / "p.json"
  printed = _run("step_parts.py", "--size=32", "--images=2", "--rounds=1", f"--json={out}")
  assert "forward + backward" in printed
  res = json.loads(out.read_text())
  assert list(res["parts"]) == ["eval forward", "train forward", "forward + backward",
                                "adam + ema"]
  assert all(p["jax_s"] > 0 and p["torch_s"] > 0 for p in res["parts"].values())


def test_conv_layers_bench(tmp_path):
  pytest.importorskip("torch")
  out = tmp_path / "c.json"
  printed = _run("conv_layers.py", "--size=32", "--images=1", "--rounds=1", f"--json={out}")
  assert "one pass, weighted" in printed and "instruction set" in printed
  rows = json.loads(out.read_text())["rows"]
  # ResNet-18 at 32 px: stem 32 -> 16, max-pool -> 8, then stages at 8, 4, 2 and 1.
  assert [(r["input"][1], *r["kernel"], r["stride"], r["count"]) for r in rows.values()] == [
      (32, 7, 7, 3, 64, 2, 1), (8, 3, 3, 64, 64, 1, 4),
      (8, 3, 3, 64, 128, 2, 1), (8, 1, 1, 64, 128, 2, 1), (4, 3, 3, 128, 128, 1, 3),
      (4, 3, 3, 128, 256, 2, 1), (4, 1, 1, 128, 256, 2, 1), (2, 3, 3, 256, 256, 1, 3),
      (2, 3, 3, 256, 512, 2, 1), (2, 1, 1, 256, 512, 2, 1), (1, 3, 3, 512, 512, 1, 3)]
  assert all(v > 0 for r in rows.values() for k, v in r.items() if k.endswith("_s"))
  # the stem's input gradient is left out of the totals (the image needs none)
  res = json.loads(out.read_text())
  dx = sum(r["count"] * r["jax_dx_s"] for n, r in rows.items() if n != "stem 7x7/2")
  assert abs(res["totals_s"]["jax_dx"] - dx) < 1e-12
