"""bench/reductions.py and bench/step_parts.py at a tiny size: they run, agree with the plain
forms (reductions checks that itself) and write the JSON the docs quote."""

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
