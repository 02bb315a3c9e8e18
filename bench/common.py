"""What every bench script needs, written once: the repository on ``sys.path``, the machine
header a timing is read against, per-call timing, round summaries and JSON files.

A script in bench/ starts with ``import common`` (``python bench/x.py`` puts bench/ first
on ``sys.path``, so this module is found; bench/ is not a package). Importing it puts the
repository root on ``sys.path``, so ``import ssfer_jax`` finds this checkout without an
install.

Timings are only comparable on a quiet machine: ``machine()`` records the 1-minute load
average beside the core count and the instruction set (which picks XLA:CPU's convolution
path), and every script prints ``machine_line`` before its numbers.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)


def machine() -> dict:
  """Where the numbers come from: the first jax device, jax's version, the CPU count, the
  x86 vector extension, the C allocator in the process (ssfer_jax/malloc.py: it moves CPU
  step times) and the 1-minute load average (os.getloadavg)."""
  import jax
  from ssfer_jax import malloc, xla_options
  dev = jax.devices()[0]
  return {"device": str(dev), "platform": dev.platform, "jax": jax.__version__,
          "cpu_count": os.cpu_count(), "instruction_set": xla_options.instruction_set(),
          "malloc": malloc.loaded(), "loadavg": os.getloadavg()}


def machine_line(m: dict) -> str:
  return (f"device {m['device']}, jax {m['jax']}, load average {m['loadavg'][0]:.1f} on "
          f"{m['cpu_count']} CPUs, instruction set {m['instruction_set']}, malloc "
          f"{m.get('malloc', '?')}")


def quiet(load: float) -> bool:
  """Whether a 1-minute load average is within the core count: above it, PyTorch's OpenMP
  barriers stall and a JAX / PyTorch ratio is not valid (the benches print none)."""
  return load <= (os.cpu_count() or 1)


def not_quiet_line(load: float) -> str:
  """What a bench prints instead of its JAX / PyTorch ratios when ``quiet(load)`` fails."""
  return (f"load average {load:.1f} > {os.cpu_count()} cores: no JAX / PyTorch ratio printed "
          "(PyTorch's OpenMP barriers stall under load)")


def per_call_s(fn, n: int, sync=None) -> float:
  """Seconds per call of ``fn()`` over ``n`` calls; ``sync(last result)`` (e.g.
  ``jax.block_until_ready``) is inside the timing, so asynchronous work is counted."""
  t0 = time.perf_counter()
  for _ in range(n):
    r = fn()
  if sync is not None:
    sync(r)
  return (time.perf_counter() - t0) / n


def rounds_summary(seconds: list, images_per_step: int) -> dict:
  """Seconds per step, one per timing round -> the median and the best round (on a shared
  machine the best is the least disturbed), as seconds and images/s."""
  med = statistics.median(seconds)
  return {"step_s": med, "step_s_best": min(seconds), "step_s_rounds": list(seconds),
          "images_per_s": images_per_step / med,
          "images_per_s_best": images_per_step / min(seconds)}


def error_text(e: BaseException) -> str:
  """``Type: first line of the message``: one table cell for a part that failed."""
  msg = str(e)
  return f"{type(e).__name__}: {msg.splitlines()[0] if msg else ''}"


def write_json(path: str, payload) -> None:
  """Writes ``payload`` whole (temporary file + rename), so that a script killed while
  writing leaves the previous version; numpy and jax scalars become floats."""
  folder, name = os.path.split(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  tmp = os.path.join(folder, f".{name}.tmp.{os.getpid()}")
  try:
    with open(tmp, "w") as f:
      json.dump(payload, f, indent=2, default=float)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.unlink(tmp)


def read_json(path: str):
  """The JSON in ``path``, or None if there is no such file."""
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)
