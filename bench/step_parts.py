r"""Where the JAX step loses to PyTorch eager: the parts of the step, timed one by one.

    python bench/step_parts.py [--size=112] [--images=16] [--rounds=5] [--json=parts.json]

ResNet-18 FER network (the dta_snl step's: attention, feature-map dropout) on ``--images``
images, in ssfer_jax (compiled with the Trainer's XLA:CPU options, ``auto``) and in
``bench/torch_reference.py``'s PyTorch twin (channels_last), alternating in rounds with a
pause before each timing (so one library's spinning threads do not slow the other):

* ``eval forward``: the teacher's pass (BatchNorm on running statistics, no gradient);
* ``train forward``: the student's pass (batch statistics), without backward;
* ``forward + backward``: the student's pass and the gradient of the summed logits;
* ``adam + ema``: one Adam update of the parameters and the EMA of the teacher.

The full step is these plus the losses and the algorithm's statistics; ``bench/train_step.py``
times it whole. Per part: median seconds, and the ratio jax / torch (> 1: JAX slower).
The load-average guard of ``bench/train_step.py`` applies: no ratio above the core count.
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
import torch
import torch_reference as ref
from absl import flags

from ssfer_jax import cli, xla_options
from ssfer_jax.config import base_config
from ssfer_jax.models import build_model

_SIZE = flags.DEFINE_integer("size", 112, "Image side in pixels.")
_IMAGES = flags.DEFINE_integer("images", 16, "Images per pass (the dta_snl step's B + U).")
_ROUNDS = flags.DEFINE_integer("rounds", 5, "Alternating timing rounds.")
_JSON = flags.DEFINE_string("json", "", "Write the results here as JSON.")
_BATCH_NORM = flags.DEFINE_string("batch_norm", "auto", "config.model.batch_norm of the jax network.")


def jax_parts(size, n, options, batch_norm="auto"):
  cfg = base_config().model
  cfg.batch_norm = batch_norm
  cfg.backbone, cfg.attention, cfg.feature_dropout, cfg.norm_scale = "resnet18", True, 0.5, 16.0
  model = build_model(cfg, 7)
  x = jax.random.uniform(jax.random.PRNGKey(0), (n, size, size, 3))
  key = jax.random.PRNGKey(1)
  v = model.init({"params": key, "dropout": key}, x, train=False)
  params, stats = v["params"], v["batch_stats"]

  def train_forward(p, x):
    out, upd = model.apply({"params": p, "batch_stats": stats}, x, train=True,
                           mutable=["batch_stats"], rngs={"dropout": key})
    return jnp.sum(out["logits"]), upd

  tx = optax.adam(5e-4)

  def adam_ema(g, o, p, t):   # outputs in the donated inputs' order, as the train step's state
    u, o = tx.update(g, o, p)
    p = optax.apply_updates(p, u)
    return o, p, jax.tree.map(lambda a, b: 0.999 * a + 0.001 * b, t, p)

  compile_ = lambda f, *a, **k: jax.jit(f, **k).lower(*a).compile(compiler_options=options)
  fwd = compile_(lambda p, x: model.apply({"params": p, "batch_stats": stats}, x,
                                          train=False)["logits"], params, x)
  tfwd = compile_(train_forward, params, x)
  fb = compile_(jax.grad(train_forward, has_aux=True), params, x)
  grads = jax.tree.map(lambda a: jnp.full_like(a, 1e-3), params)
  state = {"o": tx.init(params), "p": jax.tree.map(jnp.copy, params),
           "t": jax.tree.map(jnp.copy, params)}
  opt = compile_(adam_ema, grads, state["o"], state["p"], state["t"], donate_argnums=(1, 2, 3))

  def run_opt():
    state["o"], state["p"], state["t"] = opt(grads, state["o"], state["p"], state["t"])
    return state["p"]

  sync = jax.block_until_ready
  return {"eval forward": lambda: sync(fwd(params, x)),
          "train forward": lambda: sync(tfwd(params, x)),
          "forward + backward": lambda: sync(fb(params, x)),
          "adam + ema": lambda: sync(run_opt())}


def torch_parts(size, n):
  step = ref.TorchStep("dta_snl", channels_last=True, seed=0, dev=torch.device("cpu"))
  x = torch.rand(n, 3, size, size).contiguous(memory_format=torch.channels_last)

  def train_forward():
    step.model.train()
    with torch.no_grad():
      step.model(x).sum()

  def forward_backward():
    step.model.train()
    step.model.zero_grad(set_to_none=True)
    step.model(x).sum().backward()

  def eval_forward():
    with torch.no_grad():
      step.teacher(x)

  for p in step.model.parameters():
    p.grad = torch.full_like(p, 1e-3)

  def adam_ema():
    step.opt.step()
    with torch.no_grad():
      torch._foreach_lerp_(step.ema_dst, step.ema_src, 1e-3)

  return {"eval forward": eval_forward, "train forward": train_forward,
          "forward + backward": forward_backward, "adam + ema": adam_ema}


def main(_):
  m = common.machine()
  path, options = xla_options.for_platform("auto", m["platform"])
  print(common.machine_line(m) + f"; XLA:CPU path {path}; batch_norm {_BATCH_NORM.value}; "
        f"{_IMAGES.value} images at {_SIZE.value} px", flush=True)
  impls = {"jax": jax_parts(_SIZE.value, _IMAGES.value, options, _BATCH_NORM.value),
           "torch": torch_parts(_SIZE.value, _IMAGES.value)}
  times = {(i, p): [] for i, parts in impls.items() for p in parts}
  for fn in (f for parts in impls.values() for f in parts.values()):
    fn(), fn()
  for _ in range(_ROUNDS.value):
    for (impl, part) in times:
      time.sleep(0.3)
      impls[impl][part]()
      times[(impl, part)].append(common.per_call_s(impls[impl][part], 2))
  load = os.getloadavg()[0]
  quiet = common.quiet(load)
  results = {"machine": m, "xla_cpu_path": path, "batch_norm": _BATCH_NORM.value,
             "size": _SIZE.value, "images": _IMAGES.value,
             "loadavg_end": os.getloadavg(), "parts": {}}
  print(f"{'part':<22}{'jax ms':>9}{'torch ms':>10}{'jax / torch':>13}")
  for part in impls["jax"]:
    j, t = (statistics.median(times[(i, part)]) for i in ("jax", "torch"))
    results["parts"][part] = {"jax_s": j, "torch_s": t, "jax_rounds": times[("jax", part)],
                              "torch_rounds": times[("torch", part)]}
    print(f"{part:<22}{1e3 * j:>9.1f}{1e3 * t:>10.1f}"
          + (f"{j / t:>12.2f}x" if quiet else "   (load)"), flush=True)
  if not quiet:
    print(common.not_quiet_line(load))
  if _JSON.value:
    common.write_json(_JSON.value, results)


if __name__ == "__main__":
  cli.run_absl(main)
