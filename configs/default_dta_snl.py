"""DTA + SNL on the built-in synthetic faces: small CNN, 48 px, CPU-friendly (minutes).

    python -m ssfer_jax.main --config=configs/default_dta_snl.py --workdir=runs/dta_snl
    python -m ssfer_jax.main --config=configs/default_dta_snl.py:fixed_threshold,no_snl --workdir=runs/abl

Same data, model and schedule as configs/default.py, plus the method's defaults:
class-balanced labeled sampling and local attention + feature-map dropout on. Because
the run is short (1500 steps), the per-step threshold EMA uses m = 0.99 (not 0.999) and
the SNL weight ramps up over 300 steps (not 1000).

Variant arguments (after ':', comma-separated, combinable):

  fixed_threshold     DTA off: one fixed threshold (config.algo.fixed_tau, 0.95) for every class
  no_snl              Selective Negative Learning off
  no_attention        local attention enhancement off (config.model.attention=False)
  no_feature_dropout  random feature-map dropout off (config.model.feature_dropout=0)
  no_balance          uniform instead of class-balanced labeled sampling
  dtm | fixmatch | ... another registered method with the same data/model settings
  labels=N            labels per class (default 10)
  steps=N             optimizer steps (default 1500)
"""

from ssfer_jax.config import apply_ablations, base_config, parse_config_arg, set_algorithm

SOURCE = "configs/default_dta_snl.py"


def get_config(arg=None):
  method, ablations, _, opts = parse_config_arg(arg, source=SOURCE,
                                                allowed_options=("labels", "steps"))
  c = base_config()
  set_algorithm(c, method)
  if method == "dta_snl":
    c.algo.threshold_momentum = 0.99
    c.algo.neg_rampup_steps = 300
  c.data.labels_per_class = int(opts.get("labels", 10))
  c.data.class_balanced = True
  c.model.attention = True
  c.model.feature_dropout = 0.5
  c.train.num_steps = int(opts.get("steps", c.train.num_steps))
  return apply_ablations(c, ablations, source=SOURCE)
