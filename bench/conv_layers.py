r"""ResNet-18's convolutions one by one: XLA:CPU against PyTorch eager (oneDNN).

    python bench/conv_layers.py [--size=112] [--images=16] [--rounds=7] [--json=conv.json]

For each distinct convolution of ResNet-18 at ``--size`` px (the 7x7 stem, the 3x3 and 1x1
convolutions of the four stages) on ``--images`` images, times three operations in each
library, alternating in rounds with a short pause and one untimed call (which wakes the
library's threads) before each timing of 5 calls:

* ``fwd``: the convolution;
* ``dx``: the gradient with respect to its input (XLA: the jitted VJP, with autodiff's
  flipped and channel-swapped kernel; PyTorch: ``aten.convolution_backward`` for the input
  only, channels_last);
* ``dw``: the gradient with respect to its kernel.

XLA runs with the Trainer's XLA:CPU options (``auto``). ``count`` is how many times ResNet-18
runs that shape per pass, and the totals weight each row by it (the stem's ``dx`` is never
needed: its input is the image). Per row: median milliseconds and jax / torch (> 1: JAX
slower). The load-average guard of ``bench/train_step.py`` applies: no ratio above the core
count. docs/performance.md (fourth session, "XLA:CPU's convolutions") has a run.
"""

from __future__ import annotations

import os
import statistics
import time

import common  # noqa: F401  (bench/common.py: the repository on sys.path)
import jax
import numpy as np
import torch
from absl import flags

from ssfer_jax import cli, xla_options

_SIZE = flags.DEFINE_integer("size", 112, "Image side in pixels.")
_IMAGES = flags.DEFINE_integer("images", 16, "Images per convolution (the dta_snl step's B + U).")
_ROUNDS = flags.DEFINE_integer("rounds", 7, "Alternating timing rounds.")
_JSON = flags.DEFINE_string("json", "", "Write the results here as JSON.")
OPS = ("fwd", "dx", "dw")


def shapes(size):
  """(name, input side, C_in, C_out, kernel, stride, count per pass) of ResNet-18's distinct
  convolutions at ``size`` px."""
  side = lambda s, k, st, p: (s + 2 * p - k) // st + 1
  s = side(size, 7, 2, 3)
  rows = [("stem 7x7/2", size, 3, 64, 7, 2, 1)]
  s = side(s, 3, 2, 1)                          # max-pool 3x3/2
  c = 64
  for stage in range(4):
    out_c = 64 * 2 ** stage
    if stage == 0:
      rows.append((f"layer1 3x3 {c}", s, c, c, 3, 1, 4))
      continue
    rows.append((f"layer{stage + 1} 3x3/2 {c}->{out_c}", s, c, out_c, 3, 2, 1))
    rows.append((f"layer{stage + 1} 1x1/2 {c}->{out_c}", s, c, out_c, 1, 2, 1))
    s, c = side(s, 3, 2, 1), out_c
    rows.append((f"layer{stage + 1} 3x3 {c}", s, c, c, 3, 1, 3))
  return rows


def jax_ops(n, h, ci, co, k, st, options):
  pad = ((k // 2, k // 2),) * 2
  conv = lambda x, w: jax.lax.conv_general_dilated(x, w, (st, st), pad,
                                                   dimension_numbers=("NHWC", "HWIO", "NHWC"))
  rng = np.random.default_rng(0)
  x = jax.numpy.asarray(rng.standard_normal((n, h, h, ci), np.float32))
  w = jax.numpy.asarray(rng.standard_normal((k, k, ci, co), np.float32) / np.sqrt(k * k * ci))
  g = jax.numpy.ones(jax.eval_shape(conv, x, w).shape)
  compile_ = lambda f, *a: jax.jit(f).lower(*a).compile(compiler_options=options)
  fwd = compile_(conv, x, w)
  dx = compile_(lambda x, w, g: jax.vjp(lambda x_: conv(x_, w), x)[1](g)[0], x, w, g)
  dw = compile_(lambda x, w, g: jax.vjp(lambda w_: conv(x, w_), w)[1](g)[0], x, w, g)
  return {"fwd": lambda: fwd(x, w).block_until_ready(),
          "dx": lambda: dx(x, w, g).block_until_ready(),
          "dw": lambda: dw(x, w, g).block_until_ready()}


def torch_ops(n, h, ci, co, k, st):
  layer = torch.nn.Conv2d(ci, co, k, st, k // 2, bias=False).to(memory_format=torch.channels_last)
  x = torch.randn(n, ci, h, h).contiguous(memory_format=torch.channels_last).requires_grad_(True)
  with torch.no_grad():
    g = torch.ones_like(layer(x))
  args = (g, x, layer.weight, None, (st, st), (k // 2, k // 2), (1, 1), False, (0, 0), 1)

  def fwd():
    with torch.no_grad():
      layer(x)
  return {"fwd": fwd,
          "dx": lambda: torch.ops.aten.convolution_backward(*args, (True, False, False)),
          "dw": lambda: torch.ops.aten.convolution_backward(*args, (False, True, False))}


def main(_):
  m = common.machine()
  path, options = xla_options.for_platform("auto", m["platform"])
  print(common.machine_line(m) + f"; XLA:CPU path {path}; {_IMAGES.value} images at "
        f"{_SIZE.value} px; torch {torch.__version__} ({torch.get_num_threads()} threads)",
        flush=True)
  rows = shapes(_SIZE.value)
  impls = {}
  for name, h, ci, co, k, st, _ in rows:
    impls[(name, "jax")] = jax_ops(_IMAGES.value, h, ci, co, k, st, options)
    impls[(name, "torch")] = torch_ops(_IMAGES.value, h, ci, co, k, st)
  times = {(key, op): [] for key in impls for op in OPS}
  for ops in impls.values():
    for fn in ops.values():
      fn(), fn()
  for _ in range(_ROUNDS.value):
    for (key, op) in times:
      time.sleep(0.02)
      impls[key][op]()     # untimed: wakes the library's threads after the pause
      times[(key, op)].append(common.per_call_s(impls[key][op], 5))
  load_end = os.getloadavg()
  quiet = common.quiet(load_end[0])
  results = {"machine": m, "xla_cpu_path": path, "size": _SIZE.value, "images": _IMAGES.value,
             "loadavg_end": load_end, "rows": {}}
  print(f"{'convolution':<26}{'count':>6}" + "".join(f"{op + ' jax/torch ms':>22}" for op in OPS))
  totals = {(impl, op): 0.0 for impl in ("jax", "torch") for op in OPS}
  for name, h, ci, co, k, st, count in rows:
    med = {(impl, op): statistics.median(times[((name, impl), op)])
           for impl in ("jax", "torch") for op in OPS}
    results["rows"][name] = {"count": count, "input": [_IMAGES.value, h, h, ci],
                             "kernel": [k, k, ci, co], "stride": st,
                             **{f"{impl}_{op}_s": v for (impl, op), v in med.items()}}
    cells = []
    for op in OPS:
      if not (op == "dx" and name.startswith("stem")):
        for impl in ("jax", "torch"):
          totals[(impl, op)] += count * med[(impl, op)]
      j, t = med[("jax", op)], med[("torch", op)]
      cells.append(f"{1e3 * j:.2f}/{1e3 * t:.2f}" + (f" {j / t:.2f}x" if quiet else ""))
    print(f"{name:<26}{count:>6}" + "".join(f"{c:>22}" for c in cells), flush=True)
  cells = [f"{1e3 * totals[('jax', op)]:.1f}/{1e3 * totals[('torch', op)]:.1f}"
           + (f" {totals[('jax', op)] / totals[('torch', op)]:.2f}x" if quiet else "")
           for op in OPS]
  print(f"{'one pass, weighted':<32}" + "".join(f"{c:>22}" for c in cells))
  results["totals_s"] = {f"{impl}_{op}": v for (impl, op), v in totals.items()}
  if not quiet:
    print(common.not_quiet_line(load_end[0]))
  if _JSON.value:
    common.write_json(_JSON.value, results)


if __name__ == "__main__":
  cli.run_absl(main)
