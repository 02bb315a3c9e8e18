"""Compare semi-supervised methods on one dataset and label budget through the real trainer.

Every method is run with ``ssfer_jax.train.run(config, workdir)`` from the same base
config, the same number of steps and the same seeds (seed k gives every method the same
initial weights and the same labeled split), and the summaries are gathered into a
markdown table: final and best teacher top-1, final teacher mean per-class accuracy,
final mask rate and pseudo-label precision (means over the last logging window), and
wall time, each as mean ± sample std over seeds.

    python bench/compare_methods.py --config=configs/default.py --steps=1500 --seeds=3 \\
        --out=runs/compare/table.md
    python bench/compare_methods.py --config=configs/default.py:labels=25 \\
        --methods=fixmatch,flexmatch --set data.batch_size=16 --set algo.lambda_u=2.0

The config file's variant (after ':') is passed to its ``get_config`` with the method name
prepended (``configs/default.py:labels=25`` -> ``get_config('flexmatch,labels=25')``); a
config whose ``get_config`` does not select the method gets ``set_algorithm`` afterwards.
``--set key=value`` overrides are applied last; ``algo.*`` keys only reach the methods
that have them. Each run writes its own workdir ``<workdir>/<method>/seed_<k>``; running
the same command again resumes (or just re-reads) finished runs. The raw summaries are
written next to the table as ``<out>.json``.
"""

from __future__ import annotations

import ast
import json
import math
import os
import sys
import time
import traceback

import common  # noqa: F401  (bench/common.py: the repository on sys.path)
from absl import flags

from ssfer_jax import cli, config as config_lib

DEFAULT_METHODS = ("supervised", "fixmatch", "flexmatch", "freematch", "softmatch", "adacm", "dtm",
                   "dta_snl", "full_supervised")

COLUMNS = (  # (header, getter over a summary dict, scale)
    ("final top-1 (teacher)", lambda s: s["teacher"]["final_top1"], 100.0),
    ("best top-1 (teacher)", lambda s: s["teacher"]["best_top1"], 100.0),
    ("mean per-class acc", lambda s: s["teacher"]["final_mean_class_acc"], 100.0),
    ("mask rate", lambda s: s["train"]["mask_rate"], 100.0),
    ("PL precision", lambda s: s["train"]["pl_precision"], 100.0),
    ("wall time (s)", lambda s: s["wall_time_s"], 1.0),
)


FLAGS = flags.FlagValues()  # this script's own flags (ablation_dta_snl.py imports it)
_CONFIG = flags.DEFINE_string("config", "configs/default.py", "config file, optionally with "
                              "':variant' (default configs/default.py)", flag_values=FLAGS)
_METHODS = flags.DEFINE_string("methods", ",".join(DEFAULT_METHODS),
                               "comma-separated method names", flag_values=FLAGS)
_SEEDS = flags.DEFINE_integer("seeds", 3, "number of seeds (default 3)", lower_bound=1,
                              flag_values=FLAGS)
_FIRST_SEED = flags.DEFINE_integer("first-seed", 0, "seeds are first-seed, first-seed+1, ...",
                                   flag_values=FLAGS)
_STEPS = flags.DEFINE_integer("steps", None,
                              "optimizer steps per run (default: the config's train.num_steps)",
                              lower_bound=1, flag_values=FLAGS)
_SET = flags.DEFINE_multi_string("set", [], "KEY=VALUE config override, e.g. "
                                 "data.labels_per_class=25 (repeatable)", flag_values=FLAGS)
_VARY_SPLIT = flags.DEFINE_bool("vary-split", False, "also set data.split_seed to the seed "
                                "(default: one labeled split for all)", flag_values=FLAGS)
_WORKDIR = flags.DEFINE_string("workdir", None,
                               "root of the per-run workdirs (default runs/compare_<time>)",
                               flag_values=FLAGS)
_OUT = flags.DEFINE_string("out", None, "markdown table path (default <workdir>/table.md)",
                           flag_values=FLAGS)
_JOBS = flags.DEFINE_integer("jobs", 1, "runs at once, each in its own process (wall times then "
                             "include contention; default 1)", flag_values=FLAGS)


def parse_value(text: str):
  """'3' -> 3, '0.5' -> 0.5, 'true'/'False' -> bool, '(1, 2)' -> tuple, else the string."""
  if text.lower() in ("true", "false"):
    return text.lower() == "true"
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def parse_overrides(items):
  out = []
  for item in items:
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
      raise ValueError(f"--set {item!r}: expected KEY=VALUE, e.g. --set data.labels_per_class=25")
    out.append((key.strip(), parse_value(value.strip())))
  return out


def _has_key(cfg, key):
  node = cfg
  for part in key.split("."):
    if not hasattr(node, "keys") or part not in node.keys():
      return False
    node = node[part]
  return True


def apply_override(cfg, key, value):
  parts = key.split(".")
  node = cfg
  for part in parts[:-1]:
    node = node[part]
  old = node[parts[-1]]
  if isinstance(old, bool) and not isinstance(value, bool):
    raise ValueError(f"--set {key}={value!r}: expected true or false")
  if isinstance(old, float) and isinstance(value, int) and not isinstance(value, bool):
    value = float(value)
  if isinstance(old, tuple) and isinstance(value, list):
    value = tuple(value)
  node[parts[-1]] = value


def build_config(get_config, variant, method, overrides, steps, seed, vary_split):
  from ssfer_jax.config import set_algorithm
  arg = ",".join(p for p in (method, variant) if p)
  cfg = get_config(arg)
  if cfg.algorithm != method:
    set_algorithm(cfg, method)
  for key, value in overrides:
    if key.startswith("algo.") and not _has_key(cfg, key):
      continue  # a method-specific hyper-parameter this method does not have
    if not _has_key(cfg, key):
      raise ValueError(f"--set {key}=...: config.{key} does not exist (see ssfer_jax/config.py)")
    apply_override(cfg, key, value)
  if steps is not None:
    cfg.train.num_steps = steps
    cfg.train.eval_every = min(cfg.train.eval_every, steps)
    cfg.train.checkpoint_every = steps   # one checkpoint at the end: keeps wall times comparable
  cfg.seed = seed
  if vary_split:
    cfg.data.split_seed = seed
  return cfg


def mean_std(values):
  """(mean, sample std) of the finite values; std is nan for fewer than 2."""
  vals = [v for v in values if v is not None and math.isfinite(v)]
  if not vals:
    return None, None
  m = sum(vals) / len(vals)
  if len(vals) < 2:
    return m, None
  return m, math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1))


def _get(getter, summary):
  try:
    return float(getter(summary))
  except (KeyError, TypeError):
    return None


def format_cell(values, scale):
  m, s = mean_std(values)
  if m is None:
    return "—"
  digits = 2 if scale == 100.0 else 1
  text = f"{m * scale:.{digits}f}"
  return text + (f" ± {s * scale:.{digits}f}" if s is not None else "")


def markdown_table(results, methods, context):
  """results: {method: [summary or {'error': str}]} -> markdown text."""
  lines = [f"# Method comparison: {context}", "",
           "| method | " + " | ".join(h for h, _, _ in COLUMNS) + " | final top-1 per seed | runs |",
           "|---|" + "---|" * (len(COLUMNS) + 2)]
  for method in methods:
    runs = sorted(results.get(method, []), key=lambda r: r.get("seed", 0))
    ok = [r for r in runs if "error" not in r]
    cells = [format_cell([_get(g, r) for r in ok], scale) for _, g, scale in COLUMNS]
    per_seed = ", ".join(f"{r['teacher']['final_top1'] * 100:.1f}" for r in ok) or "—"
    failed = len(runs) - len(ok)
    lines.append(f"| {method} | " + " | ".join(cells) + f" | {per_seed} | {len(ok)}"
                 + (f" ({failed} failed)" if failed else "") + " |")
  lines += ["", "Accuracies and rates in %, mean ± sample std over seeds. Mask rate and PL "
            "precision (kept pseudo-labels that are correct) are means over the last logging "
            "window; SoftMatch's mask is its soft weight; — where a method has none. Wall time "
            "includes compilation and evaluation."]
  errors = [(m, r["seed"], r["error"]) for m in methods for r in results.get(m, [])
            if "error" in r]
  if errors:
    lines += ["", "Failed runs:"] + [f"- {m} seed {s}: {e}" for m, s, e in errors]
  return "\n".join(lines) + "\n"


def run_one(k, total, method, seed, config_json, workdir):
  """One training run (also the unit of work of ``--jobs``); never raises."""
  import ml_collections
  from ssfer_jax import train
  cfg = ml_collections.ConfigDict(json.loads(config_json))
  print(f"[{k}/{total}] {method} seed {seed}: {cfg.train.num_steps} steps -> {workdir}",
        file=sys.stderr, flush=True)
  t0 = time.time()
  try:
    summary = train.run(cfg, workdir)
    if "teacher" not in summary:
      raise RuntimeError(f"run did not finish: {summary}")
    summary.setdefault("wall_time_s", time.time() - t0)
    summary["seed"] = seed
  except Exception as e:  # keep going: one broken method must not lose the others
    traceback.print_exc()
    summary = {"seed": seed, "error": f"{type(e).__name__}: {e}"}
  done = "failed" if "error" in summary else (
      f"final {summary['teacher']['final_top1']:.4f}, best {summary['teacher']['best_top1']:.4f}")
  print(f"[{k}/{total}] {method} seed {seed}: {done} ({time.time() - t0:.1f} s)",
        file=sys.stderr, flush=True)
  return summary


@cli.guard
def main(argv=None):
  cli.parse(FLAGS, argv, "bench/compare_methods.py", __doc__)
  path, _, variant = _CONFIG.value.partition(":")
  methods = [m.strip() for m in _METHODS.value.split(",") if m.strip()]
  from ssfer_jax import algorithms
  unknown = [m for m in methods if m not in algorithms.names()]
  if unknown:
    raise cli.UserError(f"--methods: unknown {unknown}; known: {algorithms.names()}")
  get_config = config_lib.loader(path)
  overrides = parse_overrides(_SET.value)
  algo_keys = [k for k, _ in overrides if k.startswith("algo.")]
  for key in algo_keys:
    if not any(_has_key(build_config(get_config, variant, m, [], None, 0, False), key)
               for m in methods):
      raise cli.UserError(f"--set {key}=...: no method in {methods} has config.{key}")
  seeds = list(range(_FIRST_SEED.value, _FIRST_SEED.value + _SEEDS.value))
  root = _WORKDIR.value or os.path.join("runs", time.strftime("compare_%Y%m%d_%H%M%S"))
  out = _OUT.value or os.path.join(root, "table.md")
  os.makedirs(root, exist_ok=True)
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)

  results = {m: [] for m in methods}
  jobs = [(seed, method) for seed in seeds for method in methods]  # seed-major: a partial
  total = len(jobs)                                                # table covers every method
  first = build_config(get_config, variant, methods[0], overrides, _STEPS.value, seeds[0],
                       _VARY_SPLIT.value)
  context = (f"dataset {first.dataset.name}, {first.data.label_protocol} labels "
             f"({first.data.num_labels or first.data.labels_per_class} "
             f"{'total' if first.data.label_protocol == 'adacm' else 'per class'}), "
             f"{first.train.num_steps} steps, seeds {seeds}, config {_CONFIG.value}")
  specs = []
  for k, (seed, method) in enumerate(jobs, 1):
    cfg = build_config(get_config, variant, method, overrides, _STEPS.value, seed,
                       _VARY_SPLIT.value)
    specs.append((k, total, method, seed, cfg.to_json(), os.path.join(root, method, f"seed_{seed}")))
  table = markdown_table(results, methods, context)

  def record(summary, method):
    nonlocal table
    results[method].append(summary)
    table = markdown_table(results, methods, context)
    with open(out, "w") as f:
      f.write(table)
    with open(os.path.splitext(out)[0] + ".json", "w") as f:
      json.dump({"context": context, "results": results}, f, indent=2, default=str)

  if _JOBS.value <= 1:
    for spec in specs:
      record(run_one(*spec), spec[2])
  else:
    import concurrent.futures
    import multiprocessing
    with concurrent.futures.ProcessPoolExecutor(
        _JOBS.value, mp_context=multiprocessing.get_context("spawn")) as pool:
      futures = {pool.submit(run_one, *spec): spec[2] for spec in specs}
      for fut in concurrent.futures.as_completed(futures):
        record(fut.result(), futures[fut])
  print(table)
  print(f"table: {out}", file=sys.stderr)
  return 1 if any("error" in r for rs in results.values() for r in rs) else 0


if __name__ == "__main__":
  sys.exit(main())
