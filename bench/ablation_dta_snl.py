"""The DTA + SNL ablation on one dataset and label budget: supervised, FixMatch, DTA alone,
SNL alone, DTA + SNL, DTA + SNL with local attention and feature-map dropout, and DTA + SNL
with the unlabeled threshold statistic, N seeds
each, through the real trainer; prints a markdown table (mean ± std and per seed).

    python bench/ablation_dta_snl.py --config=configs/default.py --seeds=3 --set model.max_pool=xla --set model.batch_norm=flax --set train.xla_cpu_options=default --workdir=runs/bench_issue3

Rows are (config variant, method, overrides) of the same base config, so every row shares
the data, model, schedule and seeds; only the method part changes:

  supervised        ``:supervised``                    labeled data only
  fixmatch          ``:fixmatch``                      fixed threshold 0.95, no SNL
  dta_only          ``:no_snl`` with dta_snl            dynamic per-class thresholds only
  snl_only          ``:fixed_threshold`` with dta_snl   fixed 0.95 threshold + SNL
  dta_snl           dta_snl                             the method
  dta_snl_att_drop  dta_snl + ``model.attention=True, model.feature_dropout=0.5``
  dta_snl_unlabeled_stat  dta_snl + ``algo.threshold_source='unlabeled'`` (thresholds from
                    the teacher's confidence on the unlabeled batch per pseudo-class, not
                    on correctly classified labeled samples)

Each run lives in ``<workdir>/<row>/<method>/seed_<k>`` (the layout of
``compare_methods.py``); running the command again re-reads finished runs.
"""

from __future__ import annotations

import os
import sys

import common  # noqa: F401  (bench/common.py: the repository on sys.path)
import compare_methods as cm  # (bench/ is not a package)
from absl import flags

from ssfer_jax import cli, config as config_lib

ROWS = (  # (row name, variant, method, overrides)
    ("supervised", "", "supervised", ()),
    ("fixmatch", "", "fixmatch", ()),
    ("dta_only", "no_snl", "dta_snl", ()),
    ("snl_only", "fixed_threshold", "dta_snl", ()),
    ("dta_snl", "", "dta_snl", ()),
    ("dta_snl_att_drop", "", "dta_snl", (("model.attention", True), ("model.feature_dropout", 0.5))),
    ("dta_snl_unlabeled_stat", "", "dta_snl", (("algo.threshold_source", "unlabeled"),)),
)


FLAGS = flags.FlagValues()  # this script's own (compare_methods.py has its own --workdir etc.)
_CONFIG = flags.DEFINE_string("config", "configs/default.py", "base config file (no variant)",
                              flag_values=FLAGS)
_SEEDS = flags.DEFINE_integer("seeds", 3, "number of seeds (0, 1, ...)", lower_bound=1,
                              flag_values=FLAGS)
_STEPS = flags.DEFINE_integer("steps", None, "default: the config's", lower_bound=1,
                              flag_values=FLAGS)
_ROWS = flags.DEFINE_string("rows", ",".join(r[0] for r in ROWS),
                            "comma-separated rows of the table (see above)", flag_values=FLAGS)
_WORKDIR = flags.DEFINE_string("workdir", "runs/ablation_dta_snl", "root of the per-run workdirs",
                               flag_values=FLAGS)
_SET = flags.DEFINE_multi_string("set", [], "KEY=VALUE config override applied to every row "
                                 "before the row's own (repeatable)", flag_values=FLAGS)
flags.register_validator("rows", lambda v: set(v.split(",")) <= {r[0] for r in ROWS},
                         f"each row is one of {','.join(r[0] for r in ROWS)}", flag_values=FLAGS)


@cli.guard
def main(argv=None):
  cli.parse(FLAGS, argv, "bench/ablation_dta_snl.py", __doc__)
  get_config = config_lib.loader(_CONFIG.value)
  common = cm.parse_overrides(_SET.value)
  rows = [r for r in ROWS if r[0] in _ROWS.value.split(",")]
  seeds = list(range(_SEEDS.value))
  results = {name: {} for name, *_ in rows}
  specs = []
  for seed in seeds:
    for name, variant, method, overrides in rows:
      cfg = cm.build_config(get_config, variant, method, common + list(overrides), _STEPS.value,
                            seed, False)
      specs.append((name, method, seed, cfg.to_json(),
                    os.path.join(_WORKDIR.value, name, method, f"seed_{seed}")))
  first = cm.build_config(get_config, "", rows[0][2], common, _STEPS.value, 0, False)
  context = (f"DTA + SNL ablation, dataset {first.dataset.name}, "
             f"{first.data.labels_per_class} labels per class, {first.train.num_steps} steps, "
             f"seeds {seeds}, config {_CONFIG.value}")
  out = os.path.join(_WORKDIR.value, "table.md")
  os.makedirs(_WORKDIR.value, exist_ok=True)
  for k, (name, method, seed, cfg_json, workdir) in enumerate(specs, 1):
    results[name].update(cm.run_one(k, len(specs), f"{name} ({method})", [seed], cfg_json, workdir))
    table = cm.markdown_table(results, [r[0] for r in rows], context)
    with open(out, "w") as f:
      f.write(table)
  print(table)
  return 1 if any("error" in r for runs in results.values() for r in runs.values()) else 0


if __name__ == "__main__":
  sys.exit(main())
