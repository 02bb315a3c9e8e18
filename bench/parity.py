"""Parity of the PyTorch reference step (bench/torch_reference.py) with ssfer_jax's step.

    python bench/parity.py

Runs one dta_snl step in both frameworks from the same weights and batch and prints the
losses, the new thresholds and the largest difference of the classifier after the update;
exit status 1 on a mismatch. The bench's timings are only comparable while this holds.
"""

from __future__ import annotations

import sys

import common  # noqa: F401  (bench/common.py: the repository on sys.path)
import jax
import jax.numpy as jnp
import numpy as np
import torch

import torch_reference as ref  # (bench/ is not a package)
import train_step as bench  # (the bench's config: same settings as the timings)
from ssfer_jax import algorithms, optim, step as step_lib, state as state_lib
from ssfer_jax.models import build_model


def parity_check(size=64, b=2, uratio=7, seed=0) -> dict:
  """Runs one dta_snl step in both frameworks from the same weights and batch (head and
  feature dropout off, so both are deterministic) and returns the two sets of numbers."""
  config = bench.bench_config("dta_snl", size, b, uratio)
  config.model.head_dropout = 0.0
  config.model.feature_dropout = 0.0
  # Settings under which every term moves on step 0 from random weights: a low floor and
  # initial threshold (some samples pass the mask, the rest go to SNL), SNL at full weight,
  # a fast threshold EMA.
  over = dict(threshold_min=0.0, threshold_init=0.255, threshold_momentum=0.5, tau_neg=0.084,
              neg_rampup_steps=0)
  for k, v in over.items():
    config.algo[k] = v
  rng = np.random.default_rng(seed)
  batch = bench.random_batch(rng, config, algorithms.get_algorithm("dta_snl"), 7)
  # A labeled batch the teacher partly gets right is needed for the DTA statistic to
  # move; with random weights, make labels the arg-max of the torch teacher's logits.
  ts = ref.TorchStep("dta_snl", head_dropout=0.0, feature_dropout=0.0, seed=seed,
                 dev=torch.device("cpu"), tau_min=0.0, tau_init=0.255, threshold_momentum=0.5,
                 tau_neg=0.084, neg_rampup_steps=0)
  with torch.no_grad():
    batch["y_lb"] = ts.teacher(ts.to_device(batch["x_lb"])).argmax(-1).numpy().astype(np.int32)
  model = build_model(config.model, 7)
  algorithm = algorithms.get_algorithm("dta_snl")
  _, tx = optim.make_optimizer(config.optim, config.train.num_steps)
  state = state_lib.create(model, tx, algorithm, config.algo, rng=jax.random.PRNGKey(seed),
                           image_shape=(size, size, 3), num_classes=7, num_unlabeled=100)
  params, stats = ref.torch_to_flax_variables(ts, state.params, state.batch_stats)
  params = jax.tree.map(jnp.asarray, params)
  stats = jax.tree.map(jnp.asarray, stats)
  state = state.replace(params=params, batch_stats=stats, ema_params=params,
                        ema_batch_stats=stats, opt_state=tx.init(params))
  fn = jax.jit(step_lib.make_train_step(model, tx, algorithm, config, steps_per_epoch=100))
  new_state, metrics = fn(state, {k: jnp.asarray(v) for k, v in batch.items()})
  loss_t = float(ts.step(batch))
  fc_t = ts.model.fc.weight.detach().numpy().T
  return {"jax_loss": float(metrics["loss"]), "torch_loss": loss_t,
          "jax_tau": np.asarray(new_state.algo["tau"]), "torch_tau": ts.tau.numpy(),
          "jax_mask_rate": float(metrics["mask_rate"]),
          "jax_loss_u": float(metrics["loss_u"]),
          "jax_neg_selected_rate": float(metrics["algo/neg_selected_rate"]),
          "fc_max_abs_diff_after_step": float(np.max(np.abs(
              np.asarray(new_state.params["fc"]["kernel"]) - fc_t)))}


def main() -> int:
  out = parity_check()
  for k, v in out.items():
    print(f"{k:>28}: {v}")
  ok = (abs(out["jax_loss"] - out["torch_loss"]) < 1e-3 * max(1.0, abs(out["torch_loss"]))
        and np.allclose(out["jax_tau"], out["torch_tau"], atol=1e-5))
  print("parity:", "OK" if ok else "MISMATCH")
  return 0 if ok else 1


if __name__ == "__main__":
  sys.exit(main())
