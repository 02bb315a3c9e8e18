r"""Population training throughput: images/s per member of an N-member run against N
sequential single runs doing the same work.

    python bench/population.py                                   # CPU default (< 12 min)
    python bench/population.py --members=1,2,4,8,16 --resnet_max_members=16   # on a GPU
    python bench/population.py --models=small_cnn --vectorize=vmap --json=pop.json

Why: ``config.population.size = N`` trains N seeds as one program (ssfer_jax/population.py),
and ``population.vectorize`` picks how the members share it: ``vmap`` (one batched step, the
members' convolutions become grouped convolutions) or ``unroll`` (a copy of the single
run's step per member in the one program). Which is faster depends on the compiler's
backend, and against N separate runs (one after another) the question is whether one
program is worth it at all. This bench answers both, for

* ``small_cnn``: ``--cnn_config`` (default ``configs/default.py``: fixmatch, small CNN,
  40 px, B=16, uratio 3), as a user would train it;
* ``resnet18``: the RAF-DB step of ``bench/train_step.py`` (``configs/rafdb_dta_snl.py``
  settings: ResNet-18 with local attention, dta_snl) at ``--resnet_size`` px with
  ``--resnet_batch`` labeled and ``--resnet_uratio`` x as many unlabeled images, on the
  built-in synthetic data.

Every case is the Trainer's own jitted ``train_step`` (``train.Trainer`` with
``population.size = N`` and ``population.vectorize``), compiled ahead of time (the compile
time is reported) and fed as the loop feeds it: a host batch put on the device each step.
The host batches are made once per model (``train_step.random_batch``) and reused by every
case; member m of a population gets the single run's batches in a shifted order.

For one model and N, the candidates -- the single run (N = 1, no member axis), then every
``--vectorize`` value at N members -- alternate in ``--rounds`` rounds in this process, each
running ``--round_s`` seconds' worth of steps (at least one) per round, after one untimed
step. "N sequential" is N times the single run's step, timed in the same rounds: N runs one
after another do exactly that work (and each pays the single compile). The table shows the
median round: seconds per step of the whole population, images/s **per member** (B + U
distinct images a member's step sees, over the step time) and the ratio to N sequential
runs (median over rounds of the same-round ratio: > 1 means the population is faster).

``--max_seconds``: a case whose estimated cost (compile and timing, extrapolated from the
smaller N already measured) would end past the budget is skipped and listed as such, as
are the larger N of that model. ``--resnet_max_members`` caps N for ResNet-18 (its
unrolled compile grows with N). Device-agnostic: the first jax device is used.
"""

from __future__ import annotations

import copy
import gc
import os
import statistics
import sys
import tempfile
import time

import common  # bench/common.py: the repository on sys.path, timing and JSON helpers
import numpy as np
from absl import flags

from ssfer_jax import cli, config as config_lib

FLAGS = flags.FlagValues()  # its own: train_step.py (imported for its configs) has the global ones
_MODELS = flags.DEFINE_list("models", ["small_cnn", "resnet18"], "small_cnn and/or resnet18.",
                            flag_values=FLAGS)
_MEMBERS = flags.DEFINE_list("members", ["1", "2", "4", "8"], "population sizes N.",
                             flag_values=FLAGS)
_VECTORIZE = flags.DEFINE_list("vectorize", ["unroll", "vmap"],
                               "config.population.vectorize values to time.", flag_values=FLAGS)
_RESNET_MAX = flags.DEFINE_integer("resnet_max_members", 4, "resnet18: largest N timed "
                                   "(its unrolled compile grows with N).", flag_values=FLAGS)
_CNN_CONFIG = flags.DEFINE_string("cnn_config", "configs/default.py",
                                  "small_cnn: the config file[:variant].", flag_values=FLAGS)
_CNN_SIZE = flags.DEFINE_integer("cnn_image_size", 0, "small_cnn: image side (0: the config's).",
                                 flag_values=FLAGS)
_RESNET_SIZE = flags.DEFINE_integer("resnet_size", 112, "resnet18: image side in pixels.",
                                    flag_values=FLAGS)
_RESNET_BATCH = flags.DEFINE_integer("resnet_batch", 2, "resnet18: B, labeled images per member "
                                     "step.", flag_values=FLAGS)
_RESNET_URATIO = flags.DEFINE_integer("resnet_uratio", 7, "resnet18: unlabeled images per "
                                      "labeled image.", flag_values=FLAGS)
_ROUNDS = flags.DEFINE_integer("rounds", 3, "alternating timing rounds.", lower_bound=1,
                               flag_values=FLAGS)
_ROUND_S = flags.DEFINE_float("round_s", 1.0, "seconds of steps per candidate per round (at "
                              "least one step).", flag_values=FLAGS)
_SETTLE = flags.DEFINE_float("settle_s", 0.2, "pause before each timed run (lets threads park).",
                             flag_values=FLAGS)
_MAX_SECONDS = flags.DEFINE_float("max_seconds", 660.0, "time budget: cases that would end "
                                  "past it are skipped.", flag_values=FLAGS)
_JSON = flags.DEFINE_string("json", "", "write every number here as JSON.", flag_values=FLAGS)

MODELS = ("small_cnn", "resnet18")
SEQUENTIAL = "sequential"  # the row of N single runs one after another


def model_config(model: str):
  """The config of one single run of ``model`` on one device."""
  if model == "small_cnn":
    c = config_lib.load(_CNN_CONFIG.value)
    if _CNN_SIZE.value:
      c.data.image_size = _CNN_SIZE.value
  else:
    import train_step  # its RAF-DB step config (bench/ is not a package)
    c = train_step.bench_config("dta_snl", _RESNET_SIZE.value, _RESNET_BATCH.value,
                                _RESNET_URATIO.value)
  c.mesh.num_devices = 1
  return c


def host_batches(config, trainer, n=2) -> list:
  """``n`` host batches of the single run (uint8 images, int32 labels), made once."""
  import train_step
  rng = np.random.default_rng(0)
  return [train_step.random_batch(rng, config, trainer.algorithm, trainer.dataset.num_classes)
          for _ in range(n)]


class Runner:
  """One candidate: the Trainer's jitted step for ``members`` (1: the single run, no member
  axis) with ``vectorize``, compiled ahead of time; ``run(n)`` does n steps and waits."""

  def __init__(self, config, members: int, vectorize: str, host, workdir: str):
    import jax
    from ssfer_jax import parallel, train
    self.jax, self.parallel = jax, parallel
    c = copy.deepcopy(config)
    c.population.size = members
    c.population.vectorize = vectorize
    self.trainer = train.Trainer(c, workdir)
    self.members = members
    alg = self.trainer.algorithm
    self.images_per_step = c.data.batch_size * (1 + (c.data.uratio if alg.uses_unlabeled else 0))
    self.host_single = host = host or host_batches(c, self.trainer)
    # batch j of member m is the single run's host batch (j + m) mod len(host)
    self.host = [host[j] if members == 1 else
                 {k: np.stack([host[(j + m) % len(host)][k] for m in range(members)])
                  for k in host[0]} for j in range(len(host))]
    t0 = time.perf_counter()
    self.state = self.trainer.fresh_state()
    self.init_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    self.step = self.trainer.train_step.lower(self.state, self._batch(0)).compile()
    self.compile_s = time.perf_counter() - t0
    self.k = 0

  def _batch(self, j):
    return self.parallel.global_batch(self.host[j % len(self.host)], self.trainer.batch_sharding)

  def run(self, n: int) -> None:
    for _ in range(n):
      self.state, metrics = self.step(self.state, self._batch(self.k))
      self.k += 1
    self.jax.block_until_ready((self.state, metrics))


def time_rounds(runners: dict, rounds: int, round_s: float, settle_s: float):
  """({name: [seconds per step, one per round]}, {name: steps per round}): one untimed step
  each (its time sets the steps per round: ``round_s`` worth, at least one), then
  ``rounds`` rounds in which the runners alternate."""
  steps = {}
  for name, r in runners.items():
    t0 = time.perf_counter()
    r.run(1)
    steps[name] = int(min(1000, max(1, round(round_s / (time.perf_counter() - t0)))))
  times = {name: [] for name in runners}
  for _ in range(rounds):
    for name, r in runners.items():
      time.sleep(settle_s)
      t0 = time.perf_counter()
      r.run(steps[name])
      times[name].append((time.perf_counter() - t0) / steps[name])
  return times, steps


class Budget:
  """Wall-clock budget of the run, and a case's cost estimated from what was measured at
  the largest N of the same candidate so far (the single run before any): a step scaled
  linearly in N, building a runner (Trainer, init, compile) as N ** ``BUILD_GROWTH``. Both
  err long: the unrolled ResNet-18 step compiled 33x slower at N=8 than the single run's
  (N ** 1.7), the vmapped one 3.8x (docs/population_bench.md)."""

  BUILD_GROWTH = {"unroll": 2, "vmap": 1}

  def __init__(self, seconds: float):
    self.seconds, self.t0 = seconds, time.perf_counter()
    self.seen = {}  # (model, candidate) -> (N, build s, step s)

  def left(self) -> float:
    return self.seconds - (time.perf_counter() - self.t0)

  def note(self, model, candidate, n, build_s, step_s) -> None:
    self.seen[(model, candidate)] = (n, build_s, step_s)

  def estimate(self, model, n, candidates, rounds, round_s, settle_s) -> float:
    single = self.seen.get((model, "single"))
    if single is None:
      return 0.0
    total = (1 + rounds) * (max(single[2], round_s) + settle_s)  # the single, timed again
    for cand in candidates:
      n0, build0, step0 = self.seen.get((model, cand), single)
      build, step = build0 * (n / n0) ** self.BUILD_GROWTH[cand], step0 * n / n0
      total += build + step + rounds * (max(step, round_s) + settle_s)
    return total


def measure_model(model: str, ns: list, budget: Budget, tmp: str) -> list:
  """Every case of ``model`` (one per N), as table rows (dicts). The single run is built
  and timed (one step) first, so that every case's cost can be estimated before it runs."""
  import jax
  config = model_config(model)
  rows, single, skip_reason = [], None, None
  for n in ns:
    cands = list(_VECTORIZE.value) if n > 1 else []
    base, first = {"model": model, "members": n}, len(rows)
    names = ["single"] if n == 1 else [SEQUENTIAL] + cands
    if single is None and skip_reason is None and budget.left() > 0:
      try:
        single, single_build = build_single(config, model, budget, tmp)
      except Exception as e:  # the model cannot run here (e.g. out of memory)
        skip_reason = f"error: {common.error_text(e)}"
    if skip_reason is None:
      est = budget.estimate(model, n, cands, _ROUNDS.value, _ROUND_S.value, _SETTLE.value)
      if single is None or est > budget.left():
        skip_reason = (f"skipped: estimated {est:.0f} s, {max(budget.left(), 0):.0f} s left of "
                       f"--max_seconds={_MAX_SECONDS.value:.0f}")
    if skip_reason is not None:
      rows += [{**base, "candidate": c, "skipped": skip_reason} for c in names]
      print(f"{model} N={n}: {skip_reason}", flush=True)
      continue
    runners, info = {"single": single}, {}
    for v in cands:
      t0 = time.perf_counter()
      try:
        r = Runner(config, n, v, single.host_single, os.path.join(tmp, f"{model}_{n}_{v}"))
      except Exception as e:  # e.g. out of memory: the other candidates still run
        info[v] = {"error": common.error_text(e)}
        continue
      runners[v] = r
      info[v] = {"compile_s": r.compile_s, "build_s": time.perf_counter() - t0}
      print(f"{model} N={n} {v}: compiled in {r.compile_s:.1f} s", flush=True)
    times, steps = time_rounds(runners, _ROUNDS.value, _ROUND_S.value, _SETTLE.value)
    load = os.getloadavg()[0]
    ips = single.images_per_step
    seq = [n * s for s in times["single"]]
    budget.note(model, "single", 1, single_build, statistics.median(times["single"]))
    rows.append(row(base, names[0], seq, seq, ips, single.compile_s, steps["single"], load))
    for v in cands:
      if v in runners:
        rows.append(row(base, v, times[v], seq, ips, info[v]["compile_s"], steps[v], load))
        budget.note(model, v, n, info[v]["build_s"], rows[-1]["step_s"])
      else:
        rows.append({**base, "candidate": v, **info[v]})
    for r in rows[first:]:
      print(f"  {line(r)}", flush=True)
    del runners
    gc.collect()
  del single
  gc.collect()
  jax.clear_caches()
  return rows


def build_single(config, model, budget, tmp):
  """The single run's Runner and its build time, with one step timed for the budget."""
  t0 = time.perf_counter()
  single = Runner(config, 1, "auto", None, os.path.join(tmp, f"{model}_1"))
  build_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  single.run(1)
  budget.note(model, "single", 1, build_s, time.perf_counter() - t0)
  print(f"{model}: {describe(single)}; single run compiled in {single.compile_s:.1f} s",
        flush=True)
  return single, build_s


def row(base, candidate, seconds, sequential, images_per_step, compile_s, steps, load) -> dict:
  """A table row: median step time, images/s per member, the ratio to N sequential runs
  (median over rounds of the same-round ratio), compile time, steps per round, load."""
  med = statistics.median(seconds)
  return {**base, "candidate": candidate, "step_s": med, "step_s_rounds": list(seconds),
          "images_per_s_per_member": images_per_step / med,
          "vs_sequential": statistics.median(q / s for q, s in zip(sequential, seconds)),
          "compile_s": compile_s, "steps_per_round": steps, "loadavg_1m": load}


def describe(runner) -> str:
  c = runner.trainer.config
  u = c.data.batch_size * c.data.uratio if runner.trainer.algorithm.uses_unlabeled else 0
  return (f"{c.model.backbone}, {c.algorithm}, {c.data.image_size} px, B={c.data.batch_size} "
          f"U={u}: {runner.images_per_step} images per member step")


def line(r: dict) -> str:
  head = f"{r['model']} N={r['members']} {r['candidate']}: "
  if "step_s" not in r:
    return head + r.get("skipped", r.get("error", ""))
  return (head + f"{r['step_s']:.3f} s/step, {r['images_per_s_per_member']:,.1f} images/s per "
          f"member, {r['vs_sequential']:.2f}x N sequential, compile {r['compile_s']:.1f} s")


def markdown_table(rows: list) -> str:
  out = ["| model | N | candidate | s/step | images/s per member | vs N sequential | compile s "
         "| load 1m |", "|---|---:|---|---:|---:|---:|---:|---:|"]
  for r in rows:
    cand = (f"{r['members']} sequential runs" if r["candidate"] == SEQUENTIAL
            else r["candidate"])
    if "step_s" not in r:
      out.append(f"| {r['model']} | {r['members']} | {cand} | {r.get('skipped') or r['error']} "
                 "| | | | |")
      continue
    compile_s = f"{r['compile_s']:.1f}" + (" each" if r["candidate"] == SEQUENTIAL else "")
    out.append(f"| {r['model']} | {r['members']} | {cand} | {r['step_s']:.3f} | "
               f"{r['images_per_s_per_member']:,.1f} | {r['vs_sequential']:.2f}x | {compile_s} "
               f"| {r['loadavg_1m']:.1f} |")
  return "\n".join(out)


def parse_members() -> list:
  try:
    ns = sorted({int(n) for n in _MEMBERS.value})
  except ValueError:
    raise cli.UserError(f"--members: {','.join(_MEMBERS.value)} is not a list of integers"
                        ) from None
  if not ns or ns[0] < 1:
    raise cli.UserError("--members: give population sizes >= 1, e.g. --members=1,2,4,8")
  return ns


@cli.guard
def main(argv=None):
  argv = list(argv)
  cli.parse(FLAGS, argv, "bench/population.py", __doc__)
  ns = parse_members()
  models = [m.strip() for m in _MODELS.value]
  bad = [m for m in models if m not in MODELS] + [v for v in _VECTORIZE.value
                                                  if v not in ("unroll", "vmap")]
  if bad:
    raise cli.UserError(f"--models / --vectorize: unknown {bad}; models: {', '.join(MODELS)}; "
                        "vectorize: unroll, vmap")
  m = common.machine()
  print(common.machine_line(m), flush=True)
  budget = Budget(_MAX_SECONDS.value)
  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    for model in models:
      cap = [n for n in ns if model != "resnet18" or n <= _RESNET_MAX.value]
      rows += measure_model(model, cap, budget, tmp)
  m["loadavg_end"] = os.getloadavg()
  print(f"\n{len(rows)} rows; ratio = the population's images/s per member over N sequential "
        f"runs' (median over {_ROUNDS.value} rounds of the same-round ratio; > 1: faster); "
        f"load average {m['loadavg'][0]:.1f} at the start, {m['loadavg_end'][0]:.1f} at the "
        f"end, on {m['cpu_count']} CPUs\n", flush=True)
  print(markdown_table(rows), flush=True)
  if _JSON.value:
    common.write_json(_JSON.value, {**m, "command": " ".join(["bench/population.py"] + argv),
                                    "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                                    "flags": FLAGS.flag_values_dict(),
                                    "wall_s": time.perf_counter() - budget.t0, "rows": rows})
  return 0


if __name__ == "__main__":
  sys.exit(main())
