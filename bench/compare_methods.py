"""Compare semi-supervised methods on one dataset and label budget through the real trainer.

Every method is run with ``ssfer_jax.train.run(config, workdir)`` from the same base
config, the same number of steps and the same seeds (seed k gives every method the same
initial weights and the same labeled split), and the summaries are gathered into a
markdown table: final and best teacher top-1, final teacher mean per-class accuracy,
final mask rate and pseudo-label precision (means over the last logging window), and
wall time, each as mean ± sample std over seeds. Below it, every method is compared seed
by seed with a reference method (``--reference``, default fixmatch): the mean per-seed
difference of the final and best top-1 and of the mean per-class accuracy in percentage
points, with its 95 % t-interval, a sign-flip permutation p-value and wins / losses
(``ssfer_jax.stats.paired``): the seed-to-seed spread is larger than most differences
between methods, and pairing by seed removes the part of it that both runs share.

    python bench/compare_methods.py --config=configs/default.py --steps=1500 --seeds=3 \\
        --out=runs/compare/table.md
    python bench/compare_methods.py --config=configs/default.py:labels=25 \\
        --methods=fixmatch,flexmatch --set data.batch_size=16 --set algo.lambda_u=2.0

The config file's variant (after ':') is passed to its ``get_config`` with the method name
prepended (``configs/default.py:labels=25`` -> ``get_config('flexmatch,labels=25')``); a
config whose ``get_config`` does not select the method gets ``set_algorithm`` afterwards.
``--set key=value`` overrides are applied last; ``algo.*`` keys only reach the methods
that have them. Each run writes its own workdir ``<workdir>/<method>/seed_<k>``; running
the same command again resumes (or just re-reads) finished runs. With ``--population``
each method is one population run instead (``config.population.size`` = ``--seeds``
members, seeds ``--first-seed``, ``--first-seed`` + 1, ...) in
``<workdir>/<method>/population``; its members are paired by seed in the same way. The
raw summaries and the paired results are written next to the table as ``<out>.json``.
"""

from __future__ import annotations

import ast
import json
import os
import sys
import time
import traceback

import common  # noqa: F401  (bench/common.py: the repository on sys.path)
from absl import flags

from ssfer_jax import cli, config as config_lib, stats

DEFAULT_METHODS = ("supervised", "fixmatch", "flexmatch", "freematch", "softmatch", "adacm", "dtm",
                   "dta_snl", "full_supervised")

COLUMNS = (  # (header, getter over a summary dict, scale, decimals)
    ("final top-1 (teacher)", lambda s: s["teacher"]["final_top1"], 100.0, 2),
    ("best top-1 (teacher)", lambda s: s["teacher"]["best_top1"], 100.0, 2),
    ("mean per-class acc", lambda s: s["teacher"]["final_mean_class_acc"], 100.0, 2),
    ("mask rate", lambda s: s["train"]["mask_rate"], 100.0, 2),
    ("PL precision", lambda s: s["train"]["pl_precision"], 100.0, 2),
    ("wall time (s)", lambda s: s["wall_time_s"], 1.0, 1),
)
PAIRED_COLUMNS = COLUMNS[:3]  # the metrics compared seed by seed against the reference


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
_REFERENCE = flags.DEFINE_string("reference", None, "method the others are compared with seed "
                                 "by seed (default fixmatch if in --methods, else the first)",
                                 flag_values=FLAGS)
_POPULATION = flags.DEFINE_bool("population", False, "train each method as one population run "
                                "of --seeds members (config.population.size) in "
                                "<workdir>/<method>/population (default: one run per seed)",
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


def build_config(get_config, variant, method, overrides, steps, seed, vary_split, population=0):
  """The config of one run of ``method``; ``population`` > 0: of one population run of that
  many members, seeds ``seed``, ``seed`` + 1, ... (config.population.size)."""
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
  if population:
    for key in ("population.size",) + (("population.vary_split",) if vary_split else ()):
      if not _has_key(cfg, key):
        raise ValueError(f"--population: config.{key} does not exist in this version of "
                         "ssfer_jax (population training, issue #16); run without --population")
    cfg.population.size = population
    if vary_split:
      cfg.population.vary_split = True
  return cfg


def _get(getter, summary):
  try:
    return float(getter(summary))
  except (KeyError, TypeError):
    return None


def member_summaries(summary: dict) -> dict:
  """{seed: summary} of a run's summary.json: the members of a population run
  (``"kind": "population"``, one entry per member with its ``"seed"``) or the one run."""
  if summary.get("kind") != "population":
    if "seed" not in summary:
      raise ValueError("summary has no 'seed'; pass a summary.json written by ssfer_jax.train")
    return {summary["seed"]: summary}
  members = summary.get("members")
  if not members or any("seed" not in m for m in members):
    raise ValueError("population summary without 'members' that each name their 'seed'; "
                     "pass the summary.json of a population run")
  out = {m["seed"]: m for m in members}
  if len(out) != len(members):
    raise ValueError(f"population summary: members share seeds {[m['seed'] for m in members]}")
  return out


def _ok(runs: dict) -> dict:
  """The finished runs of {seed: summary or {'error': ...}}, by seed."""
  return {s: r for s, r in sorted(runs.items()) if "error" not in r}


def markdown_table(results, methods, context):
  """results: {method: {seed: summary or {'error': str}}} -> markdown text."""
  lines = [f"# Method comparison: {context}", "",
           "| method | " + " | ".join(c[0] for c in COLUMNS) + " | final top-1 per seed | runs |",
           "|---|" + "---|" * (len(COLUMNS) + 2)]
  for method in methods:
    runs = results.get(method, {})
    ok = list(_ok(runs).values())
    cells = [stats.mean_std_text([_get(g, r) for r in ok], scale, digits)
             for _, g, scale, digits in COLUMNS]
    per_seed = ", ".join(f"{r['teacher']['final_top1'] * 100:.1f}" for r in ok) or "—"
    failed = len(runs) - len(ok)
    lines.append(f"| {method} | " + " | ".join(cells) + f" | {per_seed} | {len(ok)}"
                 + (f" ({failed} failed)" if failed else "") + " |")
  lines += ["", "Accuracies and rates in %, mean ± sample std over seeds. Mask rate and PL "
            "precision (kept pseudo-labels that are correct) are means over the last logging "
            "window; SoftMatch's mask is its soft weight; — where a method has none. Wall time "
            "includes compilation and evaluation."]
  errors = [(m, s, r["error"]) for m in methods for s, r in sorted(results.get(m, {}).items())
            if "error" in r]
  if errors:
    lines += ["", "Failed runs:"] + [f"- {m} seed {s}: {e}" for m, s, e in errors]
  return "\n".join(lines) + "\n"


def paired_results(results, methods, reference) -> dict:
  """{method: {metric: stats.paired(...)}} of every method but ``reference`` against it, in
  percentage points, over the seeds both finished (listed as "seeds")."""
  ref = _ok(results.get(reference, {}))
  out = {}
  for method in methods:
    if method == reference:
      continue
    runs = _ok(results.get(method, {}))
    seeds = [s for s in runs if s in ref]
    out[method] = {}
    for header, getter, scale, _ in PAIRED_COLUMNS:
      a, b = (_scaled(getter, scale, [r[s] for s in seeds]) for r in (runs, ref))
      out[method][header] = {"seeds": seeds, **stats.paired(a, b)}
  return out


def _scaled(getter, scale, summaries):
  return [None if v is None else v * scale for v in (_get(getter, r) for r in summaries)]


def _signed(x):
  return f"{x:+.2f}"


def paired_section(paired, reference) -> str:
  """The markdown of ``paired_results``: one row per method and metric."""
  if not paired:
    return ""
  ns = sorted({p["n"] for rows in paired.values() for p in rows.values()})
  floor = (f" ({2 / 2 ** ns[0]:.3g} for the {ns[0]} seeds here)"
           if len(ns) == 1 and 0 < ns[0] <= stats.EXACT_MAX_N else "")
  lines = [f"## Paired differences against {reference}", "",
           f"Per seed, method minus {reference}, in percentage points. Seed k of every method "
           "starts from the same initial weights (config.seed) and the same labeled split "
           "(data.split_seed, which --vary-split sets to the seed), so the two runs of a pair "
           "differ only in the method. Mean difference with its 95 % t-interval; p: two-sided "
           "sign-flip permutation test of the mean difference (exact over all 2^n sign patterns "
           f"up to {stats.EXACT_MAX_N} seeds, else {stats.MC_DRAWS} seeded random ones); with n "
           f"seeds p cannot fall below 2/2^n{floor}. W / L / T: seeds where the method is "
           "better / worse / equal.", "",
           "| method | metric | seeds | mean diff (pp) | 95 % CI (pp) | p | W / L / T |",
           "|---|---|---|---|---|---|---|"]
  for method, rows in paired.items():
    for header, p in rows.items():
      mean = "—" if p["mean_diff"] is None else _signed(p["mean_diff"])
      ci = "—" if p["ci95"] is None else f"[{_signed(p['ci95'][0])}, {_signed(p['ci95'][1])}]"
      pval = "—" if p["p_signflip"] is None else f"{p['p_signflip']:.3g}"
      lines.append(f"| {method} | {header} | {p['n']} | {mean} | {ci} | {pval} | "
                   f"{p['wins']} / {p['losses']} / {p['ties']} |")
  return "\n".join(lines) + "\n"


def report(results, methods, context, reference) -> tuple[str, dict]:
  """(markdown: the table and the paired section, the JSON written next to it)."""
  paired = paired_results(results, methods, reference)
  text = markdown_table(results, methods, context)
  section = paired_section(paired, reference)
  if section:
    text += "\n" + section
  data = {"context": context,
          "results": {m: [r for _, r in sorted(results.get(m, {}).items())] for m in methods},
          "paired": {"reference": reference, "unit": "percentage points", "methods": paired}}
  return text, data


def _seeds_text(seeds):
  return f"seed {seeds[0]}" if len(seeds) == 1 else f"seeds {seeds[0]}..{seeds[-1]}"


def run_one(k, total, method, seeds, config_json, workdir):
  """One training run, a single seed or one population run over ``seeds`` (also the unit of
  work of ``--jobs``) -> {seed: summary or {'seed', 'error'}}; never raises."""
  import ml_collections
  from ssfer_jax import train
  cfg = ml_collections.ConfigDict(json.loads(config_json))
  what = f"[{k}/{total}] {method} {_seeds_text(seeds)}"
  print(f"{what}: {cfg.train.num_steps} steps -> {workdir}", file=sys.stderr, flush=True)
  t0 = time.time()
  try:
    summary = train.run(cfg, workdir)
    if "teacher" not in summary and "members" not in summary:
      raise RuntimeError(f"run did not finish: {summary}")
    if summary.get("kind") != "population":
      summary.setdefault("wall_time_s", time.time() - t0)
      summary["seed"] = seeds[0]
    runs = member_summaries(summary)
    if any("teacher" not in r for r in runs.values()):
      raise RuntimeError(f"a member of the run did not finish: {summary}")
    if sorted(runs) != sorted(seeds):
      raise RuntimeError(f"the run's summary has seeds {sorted(runs)}, expected {seeds}")
  except Exception as e:  # keep going: one broken method must not lose the others
    traceback.print_exc()
    runs = {s: {"seed": s, "error": f"{type(e).__name__}: {e}"} for s in seeds}
  ok = list(_ok(runs).values())
  done = "failed" if not ok else (
      "final " + stats.mean_std_text([r["teacher"]["final_top1"] for r in ok], 1.0, 4)
      + ", best " + stats.mean_std_text([r["teacher"]["best_top1"] for r in ok], 1.0, 4))
  print(f"{what}: {done} ({time.time() - t0:.1f} s)", file=sys.stderr, flush=True)
  return runs


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
  reference = _REFERENCE.value or ("fixmatch" if "fixmatch" in methods else methods[0])
  if reference not in methods:
    raise cli.UserError(f"--reference={reference}: not in --methods {methods}; pick one of them")
  population = len(seeds) if _POPULATION.value else 0
  root = _WORKDIR.value or os.path.join("runs", time.strftime("compare_%Y%m%d_%H%M%S"))
  out = _OUT.value or os.path.join(root, "table.md")

  if population:  # one run per method over all seeds
    jobs = [(seeds, method, "population") for method in methods]
  else:  # seed-major: a partial table covers every method
    jobs = [([seed], method, f"seed_{seed}") for seed in seeds for method in methods]
  specs = []
  for k, (run_seeds, method, name) in enumerate(jobs, 1):
    cfg = build_config(get_config, variant, method, overrides, _STEPS.value, run_seeds[0],
                       _VARY_SPLIT.value, population)
    specs.append((k, len(jobs), method, run_seeds, cfg.to_json(), os.path.join(root, method, name)))
  first = build_config(get_config, variant, methods[0], overrides, _STEPS.value, seeds[0],
                       _VARY_SPLIT.value)
  context = (f"dataset {first.dataset.name}, {first.data.label_protocol} labels "
             f"({first.data.num_labels or first.data.labels_per_class} "
             f"{'total' if first.data.label_protocol == 'adacm' else 'per class'}), "
             f"{first.train.num_steps} steps, seeds {seeds}"
             + (f" (one population run of {population} members per method)" if population else "")
             + f", config {_CONFIG.value}")
  os.makedirs(root, exist_ok=True)
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)

  results = {m: {} for m in methods}
  text, _ = report(results, methods, context, reference)

  def record(runs, method):
    nonlocal text
    results[method].update(runs)
    text, data = report(results, methods, context, reference)
    with open(out, "w") as f:
      f.write(text)
    with open(os.path.splitext(out)[0] + ".json", "w") as f:
      json.dump(data, f, indent=2, default=str)

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
  print(text)
  print(f"table: {out}", file=sys.stderr)
  return 1 if any("error" in r for runs in results.values() for r in runs.values()) else 0


if __name__ == "__main__":
  sys.exit(main())
