r"""The train step's reductions: XLA's plain forms against ``ssfer_jax/reductions.py``'s.

    python bench/reductions.py [--rounds=7] [--json=reductions.json]

Times, compiled for the default device with the XLA options the Trainer gives its step
(``--xla_cpu_options``, default ``auto``), in alternating rounds (median over rounds, and the
median of the same-round ratio):

* ``channel_sum``: BatchNorm's per-channel sum over (N, H, W) of the ResNet-18 activations
  at 112 px with 16 images (``x.sum((0, 1, 2))`` against the per-image matrix-vector form);
* ``global_norm``: the gradient norm the step logs, over a ResNet-18's parameters
  (``optax.tree.norm`` against the Gram-trace form);
* ``any_nonfinite``: the step's NaN/inf check over parameters, teacher and both Adam
  moments (four ResNet-18-sized trees; ``all(isfinite)`` per leaf against the
  ``zeros @ x`` form).

Each pair is also checked for agreement (the norm to 1e-5 relative, the check on a clean
tree and on one with a NaN). On GPU/TPU ``reductions`` uses the plain forms itself, so the
two rows time the same thing there.
"""

from __future__ import annotations

import os
import statistics
import time

import common  # noqa: F401  (bench/common.py: the repository on sys.path)
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import flags

from ssfer_jax import cli, reductions, xla_options
from ssfer_jax.config import base_config
from ssfer_jax.models import build_model

_ROUNDS = flags.DEFINE_integer("rounds", 7, "Alternating timing rounds.")
_CALLS = flags.DEFINE_integer("calls", 5, "Calls per timing.")
_JSON = flags.DEFINE_string("json", "", "Write the results here as JSON.")
_XLA = flags.DEFINE_string("xla_cpu_options", "auto",
                           "config.train.xla_cpu_options the functions are compiled with, as the "
                           "Trainer compiles its step (auto: 'eigen' on AVX2 / AVX-512).")

SHAPES = [(16, 56, 56, 64), (16, 28, 28, 64), (16, 14, 14, 128), (16, 7, 7, 256), (16, 4, 4, 512)]


def _resnet_params():
  cfg = base_config().model
  cfg.backbone = "resnet18"
  model = build_model(cfg, 7)
  key = jax.random.PRNGKey(0)
  return model.init({"params": key, "dropout": key}, jnp.zeros((1, 112, 112, 3)),
                    train=False)["params"]


def cases():
  """name -> (plain fn, ssfer_jax fn, argument)."""
  out = {}
  for shape in SHAPES:
    x = jax.random.normal(jax.random.PRNGKey(1), shape) + 1.0
    out[f"channel_sum {shape}"] = (lambda v: v.sum((0, 1, 2)), reductions.channel_sum, x)
  params = _resnet_params()
  out["global_norm (ResNet-18 params)"] = (optax.tree.norm, reductions.global_norm, params)
  state = [params, jax.tree.map(jnp.copy, params), jax.tree.map(jnp.zeros_like, params),
           jax.tree.map(jnp.ones_like, params)]
  out["any_nonfinite (4 x ResNet-18)"] = (reductions.plain_any_nonfinite,
                                          reductions.any_nonfinite, state)
  return out


def main(_):
  m = common.machine()
  path, options = xla_options.for_platform(_XLA.value, m["platform"])
  print(common.machine_line(m) + f"; XLA:CPU path {path}", flush=True)
  results = {"machine": m, "xla_cpu_path": path, "cases": {}}
  for name, (plain, ours, arg) in cases().items():
    fns = {k: jax.jit(f).lower(arg).compile(compiler_options=options)
           for k, f in (("plain", plain), ("ssfer_jax", ours))}
    a, b = (np.asarray(f(arg), np.float64) for f in fns.values())
    assert np.allclose(a, b, rtol=1e-5), (name, a, b)
    if name.startswith("any_nonfinite"):
      bad = [jax.tree.map(lambda v: v.at[(0,) * v.ndim].set(jnp.nan), arg[0])] + arg[1:]
      assert all(bool(f(bad)) for f in fns.values()) and not bool(fns["ssfer_jax"](arg))
    times = {k: [] for k in fns}
    for f in fns.values():
      jax.block_until_ready(f(arg))
    for _ in range(_ROUNDS.value):
      for k, f in fns.items():
        times[k].append(common.per_call_s(lambda: f(arg), _CALLS.value, jax.block_until_ready))
    med = {k: statistics.median(v) for k, v in times.items()}
    paired = statistics.median(p / s for p, s in zip(times["plain"], times["ssfer_jax"]))
    results["cases"][name] = {"plain_s": med["plain"], "ssfer_jax_s": med["ssfer_jax"],
                              "paired_speedup": paired, "rounds": times}
    print(f"  {name:<36} plain {1e3 * med['plain']:8.2f} ms   ssfer_jax "
          f"{1e3 * med['ssfer_jax']:8.2f} ms   paired {paired:5.2f}x", flush=True)
    time.sleep(0.2)
  results["loadavg_end"] = os.getloadavg()
  print(f"load average at the end: {results['loadavg_end'][0]:.1f}")
  if _JSON.value:
    common.write_json(_JSON.value, results)


if __name__ == "__main__":
  cli.run_absl(main)
