r"""The train step on a GPU: ssfer_jax against PyTorch on CUDA, MFU, and the input pipeline.

    bash bench/gpu.sh              # the GPU machine: every part, < 8 minutes (see its header)
    SMOKE=1 bash bench/gpu.sh      # CPU dry run: tiny images and batches, every code path

Parts (``--part``; ``gpu.sh`` runs them in this order, each in its own process):

* ``steps``: cells (image size, B, step kind, compute dtype) in priority order (largest
  size and batch first, dta_snl before supervised, bfloat16 before float32) until
  ``--budget_s`` has passed; cells not started are listed as skipped. Each cell times the
  Trainer's jitted step (``train_step.JaxRunner``: ``config.model.compute_dtype``) and the
  PyTorch eager step (``torch_reference.TorchStep``, channels_last; bfloat16 cells under
  ``torch.autocast``), interleaved over ``--rounds`` rounds. FLOPs are XLA's count of the
  compiled step (``cost_analysis``); MFU = FLOPs / s / ``--peak_tflops`` (the H200's dense
  bfloat16 peak, 989 TFLOP/s; float32 cells are read against the same peak). The PyTorch
  step does the same network work, so the same FLOPs give its MFU.
* ``torch_compile``: the PyTorch step with ``torch.compile`` of both networks, in a process
  ``gpu.sh`` kills after a limit; its first step (the compile) must finish within
  ``--compile_limit_s``, else the cell reads "not used". Not interleaved with the JAX step
  (another process): the report compares it to the ``steps`` part's median.
* ``input``: images/s of the host input pipeline (``pipeline.TrainBatches``, dta_snl views,
  100 px sources resized) with ``num_workers`` = 0 and the machine's core count.
* ``report``: merges the parts' JSON files into ``gpu_bench.json`` and ``gpu_bench.md``
  and prints whether the targets are met: dta_snl at 224 px, B = 64, bfloat16: >= 1.5x
  PyTorch eager images/s and >= 35 % MFU.

Every part writes ``<out>/<part>.json`` after each cell, so a killed part keeps what it
measured. ``--out`` defaults to ``$OUT`` if set, else ``runs/gpu_bench``.
"""

from __future__ import annotations

import gc
import os
import tempfile
import time

import common  # bench/common.py: the repository on sys.path, timing and JSON helpers
from absl import flags

from ssfer_jax import cli

import train_step as ts  # (defines --sizes, --modes, --uratio, --steps, --rounds, --warmup)

_PART = flags.DEFINE_enum("part", "steps", ["steps", "torch_compile", "input", "report"],
                          "Which part to run (see the module docstring).")
_OUT = flags.DEFINE_string("out", os.environ.get("OUT") or "runs/gpu_bench", "Output folder.")
_BATCHES = flags.DEFINE_list("batches", ["64", "32"], "B values (labeled images per step).")
_DTYPES = flags.DEFINE_list("dtypes", ["bfloat16", "float32"], "config.model.compute_dtype values.")
_BUDGET = flags.DEFINE_float("budget_s", 200.0, "steps part: no new cell after this many seconds.")
_COMPILE_LIMIT = flags.DEFINE_float("compile_limit_s", 60.0,
                                    "torch_compile: the first (compiling) step must end within this.")
_PEAK = flags.DEFINE_float("peak_tflops", 989.0, "MFU reference: dense bfloat16 TFLOP/s (H200).")
_TARGET_RATIO = 1.5
_TARGET_MFU = 0.35
TARGET_CELL = {"size": 224, "batch": 64, "mode": "dta_snl", "dtype": "bfloat16"}


def cells():
  """(size, B, mode, dtype) in priority order."""
  sizes = sorted((int(s) for s in ts._SIZES.value), reverse=True)
  batches = sorted((int(b) for b in _BATCHES.value), reverse=True)
  modes = sorted(ts._MODES.value, key=lambda m: m != "dta_snl")
  dtypes = sorted(_DTYPES.value, key=lambda d: d != "bfloat16")
  return [(s, b, m, d) for b in batches for s in sizes for m in modes for d in dtypes]


def _write(part: str, payload) -> None:
  common.write_json(os.path.join(_OUT.value, part + ".json"), payload)


def _read(part: str):
  return common.read_json(os.path.join(_OUT.value, part + ".json"))


def torch_cell(mode, size, b, dtype, compile=False):
  """The PyTorch step (channels_last, the bench's default) on the JAX cell's host batches;
  bfloat16 cells under torch.autocast, as compute_dtype keeps float32 parameters."""
  import torch
  amp = torch.bfloat16 if dtype == "bfloat16" else None
  return ts.TorchRunner(mode, size, b, ts._URATIO.value, amp_dtype=amp, compile=compile)


def _summary(times, images_per_step, flops=None):
  out = common.rounds_summary(times, images_per_step)
  if flops:
    out["tflops_per_s"] = flops / out["step_s"] / 1e12
    out["mfu"] = flops / out["step_s"] / (_PEAK.value * 1e12)
  return out


def _free():
  gc.collect()
  try:
    import torch
    if torch.cuda.is_available():
      torch.cuda.empty_cache()
  except ImportError:
    pass


def part_steps():
  t_start = time.perf_counter()
  m = common.machine()
  print(common.machine_line(m), flush=True)
  out = {**m, "uratio": ts._URATIO.value, "peak_tflops": _PEAK.value,
         "rounds": ts._ROUNDS.value, "steps": ts._STEPS.value, "cells": [], "skipped": []}
  for size, b, mode, dtype in cells():
    key = {"size": size, "batch": b, "mode": mode, "dtype": dtype}
    if time.perf_counter() - t_start > _BUDGET.value:
      out["skipped"].append(key)
      print(f"skipped (time budget {_BUDGET.value:.0f} s): {key}", flush=True)
      continue
    rec = dict(key)
    try:
      with tempfile.TemporaryDirectory() as tmp:
        j = ts.JaxRunner(mode, size, b, ts._URATIO.value, tmp, compute_dtype=dtype)
        rec.update(jax_compile_s=j.compile_s, flops_per_step=j.flops)
        runners = {"jax": j, "torch": torch_cell(mode, size, b, dtype)}
        wall, _, _ = ts.time_interleaved(runners, ts._WARMUP.value, ts._STEPS.value,
                                      ts._ROUNDS.value)
        rec["jax"] = _summary(wall["jax"], j.images_per_step, j.flops)
        rec["torch_eager"] = _summary(wall["torch"], j.images_per_step, j.flops)
        rec["jax_over_torch_eager"] = (rec["jax"]["images_per_s"]
                                       / rec["torch_eager"]["images_per_s"])
        del runners, j
    except Exception as e:  # one cell's failure (e.g. out of memory) must not end the run
      rec["error"] = common.error_text(e)
    _free()
    out["cells"].append(rec)
    _write("steps", out)
    print(_cell_line(rec), flush=True)
  out["wall_s"] = time.perf_counter() - t_start
  _write("steps", out)


def _cell_line(rec) -> str:
  head = f"{rec['size']}px B={rec['batch']} {rec['mode']} {rec['dtype']}: "
  if "error" in rec:
    return head + "ERROR " + rec["error"]
  j, t = rec["jax"], rec["torch_eager"]
  return (head + f"jax {j['step_s'] * 1e3:.1f} ms ({j['images_per_s']:.0f} img/s, MFU "
          f"{100 * j['mfu']:.1f} %, compile {rec['jax_compile_s']:.0f} s), torch eager "
          f"{t['step_s'] * 1e3:.1f} ms: {rec['jax_over_torch_eager']:.2f}x")


def part_torch_compile():
  out = {"compile_limit_s": _COMPILE_LIMIT.value, "cells": []}
  _write("torch_compile", out)
  for size, b, mode, dtype in cells():
    rec = {"size": size, "batch": b, "mode": mode, "dtype": dtype,
           "status": "killed by gpu.sh's time limit (building or compiling)"}
    out["cells"].append(rec)
    _write("torch_compile", out)   # what the report shows if this process is killed
    try:
      cell = torch_cell(mode, size, b, dtype, compile=True)
      t0 = time.perf_counter()
      cell.run(1)
      rec["compile_s"] = time.perf_counter() - t0
      if rec["compile_s"] > _COMPILE_LIMIT.value:
        rec["status"] = f"compiled in {rec['compile_s']:.0f} s > {_COMPILE_LIMIT.value:.0f} s: not used"
      else:
        cell.run(ts._WARMUP.value)
        times = [common.per_call_s(lambda: cell.run(ts._STEPS.value), 1) / ts._STEPS.value
                 for _ in range(ts._ROUNDS.value)]
        rec.update(_summary(times, cell.images_per_step))
        rec["status"] = "ok"
      del cell
    except Exception as e:
      rec["status"] = f"failed: {common.error_text(e)}"
    _free()
    _write("torch_compile", out)
    print(f"torch.compile {rec}", flush=True)


def part_input():
  size, b = max(int(s) for s in ts._SIZES.value), min(int(x) for x in _BATCHES.value)
  out = {"size": size, "batch": b, "uratio": ts._URATIO.value, "cpu_count": os.cpu_count(),
         "runs": []}
  for workers in sorted({0, os.cpu_count() or 1}):
    with tempfile.TemporaryDirectory() as tmp:
      r = ts.time_input_pipeline(size, b, ts._URATIO.value, ts._INPUT_BATCHES.value, tmp,
                                 num_workers=workers)
    out["runs"].append(r)
    _write("input", out)
    print(f"input pipeline {size}px B={b}: num_workers={workers}: "
          f"{r['images_per_s']:.0f} images/s", flush=True)


def part_report():
  steps, comp, inp = _read("steps") or {}, _read("torch_compile") or {}, _read("input") or {}
  merged = {"steps": steps, "torch_compile": comp, "input": inp, "targets": {}}
  compiled = {(c["size"], c["batch"], c["mode"], c["dtype"]): c for c in comp.get("cells", [])}
  lines = [f"Device: {steps.get('device', '?')}, jax {steps.get('jax', '?')}; U = "
           f"{steps.get('uratio', '?')} x B; medians of {steps.get('rounds', '?')} interleaved "
           f"rounds x {steps.get('steps', '?')} steps; MFU against {_PEAK.value:.0f} TFLOP/s "
           "(dense bfloat16) with XLA's FLOP count of the step.", "",
           "| size | B | step | dtype | jax ms/step | jax images/s | jax MFU | torch eager ms | "
           "jax / torch eager | torch.compile ms | jax / torch.compile | jax compile s |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
  for rec in steps.get("cells", []):
    k = (rec["size"], rec["batch"], rec["mode"], rec["dtype"])
    head = f"| {k[0]} | {k[1]} | {k[2]} | {k[3]} |"
    if "error" in rec:
      lines.append(head + f" error: {rec['error']} |" + " |" * 7)
      continue
    j, t, c = rec["jax"], rec["torch_eager"], compiled.get(k)
    c_ms = c_ratio = "—"
    if c and c.get("status") == "ok":
      c_ms, c_ratio = f"{1e3 * c['step_s']:.1f}", f"{j['images_per_s'] / c['images_per_s']:.2f}x"
    elif c:
      c_ms = c["status"]
    lines.append(head + f" {1e3 * j['step_s']:.1f} | {j['images_per_s']:.0f} | "
                 f"{100 * j['mfu']:.1f} % | {1e3 * t['step_s']:.1f} | "
                 f"{rec['jax_over_torch_eager']:.2f}x | {c_ms} | {c_ratio} | "
                 f"{rec['jax_compile_s']:.0f} |")
  for s in steps.get("skipped", []):
    lines.append(f"| {s['size']} | {s['batch']} | {s['mode']} | {s['dtype']} | skipped "
                 "(time budget) |" + " |" * 7)
  for r in inp.get("runs", []):
    lines.append("")
    lines.append(f"Input pipeline, {inp['size']} px, B = {inp['batch']} labeled + "
                 f"{inp['uratio'] * inp['batch']} unlabeled (two views), num_workers = "
                 f"{r['num_workers']}: "
                 f"**{r['images_per_s']:.0f} images/s** on {inp['cpu_count']} cores "
                 f"({r['timed_batches']} batches timed after {r['untimed_batches']}).")
  target = next((r for r in steps.get("cells", []) if all(r.get(k) == v for k, v in
                                                          TARGET_CELL.items())), None)
  lines.append("")
  if target is None or "error" in target:
    lines.append("Targets: the 224 px, B = 64, bfloat16 dta_snl cell was not measured.")
  else:
    ratio, mfu = target["jax_over_torch_eager"], target["jax"]["mfu"]
    merged["targets"] = {"ratio": ratio, "ratio_met": ratio >= _TARGET_RATIO, "mfu": mfu,
                         "mfu_met": mfu >= _TARGET_MFU}
    for text, ok in ((f"jax / PyTorch eager >= {_TARGET_RATIO}x: {ratio:.2f}x", ratio >= _TARGET_RATIO),
                     (f"bf16 MFU >= {100 * _TARGET_MFU:.0f} %: {100 * mfu:.1f} %", mfu >= _TARGET_MFU)):
      lines.append(f"Target (dta_snl, 224 px, B = 64, bfloat16) {text}: "
                   f"{'met' if ok else 'NOT met'}.")
  if steps.get("platform") != "gpu":
    lines.insert(0, f"**Not measured on a GPU**: a dry run on {steps.get('device', '?')}; its "
                 "figures only show that every part runs.\n")
  text = "\n".join(lines) + "\n"
  os.makedirs(_OUT.value, exist_ok=True)
  with open(os.path.join(_OUT.value, "gpu_bench.md"), "w") as f:
    f.write(text)
  common.write_json(os.path.join(_OUT.value, "gpu_bench.json"), merged)
  print(text)


def main(argv):
  del argv
  {"steps": part_steps, "torch_compile": part_torch_compile, "input": part_input,
   "report": part_report}[_PART.value]()


if __name__ == "__main__":
  flags.FLAGS.set_default("modes", ["dta_snl", "supervised"])
  flags.FLAGS.set_default("sizes", ["224", "112"])
  flags.FLAGS.set_default("steps", 5)
  flags.FLAGS.set_default("rounds", 5)
  flags.FLAGS.set_default("warmup", 3)
  flags.FLAGS.set_default("settle_s", 0.2)
  flags.FLAGS.set_default("input_batches", 10)
  cli.run_absl(main)
