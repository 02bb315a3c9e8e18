"""Population training: N members of one method, trained as one compiled program.

In semi-supervised FER the spread between seeds is larger than the differences between
methods, so one run per method says little. With ``config.population.size = N`` the
trainer stacks N train states along a leading *member* axis and runs ``init``, the train
step and the eval step over it, as one program:

* member k **is** the single run with ``config.seed + k``: its own initialisation, dropout
  keys and data order (its own grain pipeline), and with ``population.vary_split`` its own
  labeled split (``data.split_seed + k``); otherwise the split is shared.
  ``member_config`` returns exactly that single run's config.
* the members are vectorised with ``jax.vmap``: XLA batches their convolutions (grouped
  convolutions on CPU), so a member equals its single run up to float rounding, not bit
  for bit (measured: docs/population.md; tests/test_population.py bounds it).
* the mesh's ``population`` axis (``config.mesh.population``) splits the members over
  device groups; inside a group a member's batch is data-parallel as in a single run.

The workdir of a population run: ``config.json``, ``run_info.json``, ``checkpoints/``
(one orbax checkpoint of the stacked state and every member's iterator state),
``metrics.jsonl`` and ``tb/`` (the mean over members), ``members/<k>/`` (member k's
files, as a single run writes them: metrics.jsonl, tb/, eval/, thresholds.png,
summary.json, report.html), and ``summary.json`` with every member and the mean, the
sample standard deviation and the 95 % t-interval over members (``stats.describe``).

This is this project's own design, not a reconstruction: none of the reference code bases
(Ada-CM, SSL-DTM, USB) trains seeds together. So are its rules (the seed + k numbering,
the shared split by default, the ``auto`` vectorize choice measured here).
"""

from __future__ import annotations

import copy

import jax
import jax.numpy as jnp
import numpy as np

from ssfer_jax import console, metrics as metrics_lib, outputs, parallel, rundir, stats
from ssfer_jax import step as step_lib

# The summary.json keys described over members (per network), in the order shown.
SUMMARY_KEYS = ("final_top1", "best_top1", "final_mean_class_acc", "final_macro_f1",
                "best_mean_class_acc", "test_top1_at_val_best")


def size(config) -> int:
  return int(config.population.size)


def seeds(config) -> list[int]:
  return [int(config.seed) + k for k in range(size(config))]


def member_config(config, k: int):
  """The config of the single run that member ``k`` is: seed + k (and split_seed + k with
  ``population.vary_split``), population size 1."""
  c = copy.deepcopy(config)
  with c.unlocked():
    c.seed = int(config.seed) + k
    if config.population.vary_split:
      c.data.split_seed = int(config.data.split_seed) + k
    c.population.size = 1
    c.mesh.population = 1
  return c


def members(config, split, workdir):
  """(member configs, member training data) of a run: ``[config]`` and its split for a
  single run; otherwise ``member_config(config, k)`` for every k, sharing one labeled
  split or, with ``population.vary_split``, each drawing its own. ``split(config,
  directory)`` is ``pipeline.split_train`` writing labeled_ids.json into ``directory``
  (the run's, or members/<k>/ for a split of a member's own)."""
  shared = split(config, workdir)
  if size(config) == 1:
    return [config], [shared]
  configs = [member_config(config, k) for k in range(size(config))]
  if not config.population.vary_split:
    return configs, [shared] * len(configs)
  return configs, [split(c, member_workdir(workdir, k)) for k, c in enumerate(configs)]


def init_keys(config):
  """The PRNG key of every member (stacked), member k's being the single run's
  ``PRNGKey(seed + k)``; a single run's own key when ``population.size`` is 1."""
  if size(config) == 1:
    return jax.random.PRNGKey(int(config.seed))
  return jnp.stack([jax.random.PRNGKey(s) for s in seeds(config)])


# config.population.vectorize -> how the members share the program, by platform for
# 'auto': measured in bench/population.py (docs/population.md).
AUTO_VECTORIZE = {"cpu": "unroll"}
AUTO_DEFAULT = "vmap"


def how(config, platform: str) -> str:
  """'vmap' or 'unroll' for ``config.population.vectorize`` on ``platform``. A population
  mesh axis (``config.mesh.population`` > 1) needs vmap: the member axis is then a batch
  axis XLA shards over the device groups, where unrolled copies would slice it apart."""
  value = config.population.vectorize
  if value != "auto":
    return value
  if int(config.mesh.population) > 1:
    return "vmap"
  return AUTO_VECTORIZE.get(platform, AUTO_DEFAULT)


def vectorize(fn, how: str, in_axes):
  """``fn`` over a leading member axis of the arguments whose ``in_axes`` entry is 0 (the
  others are shared by every member): ``jax.vmap`` (batched: XLA batches the members'
  convolutions into grouped ones) or ``'unroll'`` (each member's own copy of the step in
  the one program, its convolutions as a single run's; ``jax.lax.map``, a loop over
  members, measured 24x slower on XLA:CPU than this, see docs/population.md)."""
  if how == "vmap":
    return jax.vmap(fn, in_axes=in_axes)

  def mapped(*args):
    n = next(jnp.shape(jax.tree.leaves(a)[0])[0] for a, ax in zip(args, in_axes) if ax == 0)
    outs = [fn(*[member(a, k) if ax == 0 else a for a, ax in zip(args, in_axes)])
            for k in range(n)]
    return jax.tree.map(lambda *xs: jnp.stack(xs), *outs)

  return mapped


def vectorize_step(step_fn, how: str):
  """The train step over stacked states and batches. Its ``nonfinite`` flag becomes one
  bit mask for the whole population (any member's NaN stops the run); the other metrics
  keep their member axis."""
  stacked = vectorize(step_fn, how, (0, 0))

  def step(state, batch):
    state, metrics = stacked(state, batch)
    flags = metrics.pop("nonfinite")  # an OR over members, bit by bit (a max reduces over devices)
    metrics["nonfinite"] = sum(jnp.max(flags & bit) for bit in (
        step_lib.NONFINITE_LOSS, step_lib.NONFINITE_GRADS, step_lib.NONFINITE_STATE))
    return state, metrics

  return step


def member(tree, k: int):
  """Member ``k``'s slice of a stacked pytree."""
  return jax.tree.map(lambda a: a[k], tree)


def broadcast(tree, n: int):
  """``tree`` repeated along a new leading member axis of ``n``."""
  return jax.tree.map(lambda a: jnp.broadcast_to(a, (n,) + jnp.shape(a)), tree)


def mean_over_members(means: dict) -> dict:
  """Training means over members (population-wide values, like ``nonfinite``, as they are)."""
  return {k: np.mean(v, axis=0) if np.ndim(v) else v for k, v in means.items()}


class StackedBatches:
  """Every member's ``pipeline.TrainBatches`` (host numpy batches), stacked along a new
  leading member axis and placed on the mesh; ``get_state`` / ``set_state`` hold every
  member's iterator state for the checkpoint."""

  def __init__(self, members, sharding):
    self.members, self.sharding = list(members), sharding

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    rows = [next(b) for b in self.members]
    stacked = {k: np.stack([r[k] for r in rows]) for k in rows[0]}
    return parallel.global_batch(stacked, self.sharding)

  def get_state(self) -> dict:
    return {"members": [b.get_state() for b in self.members]}

  def set_state(self, state: dict) -> None:
    saved = state.get("members") if isinstance(state, dict) else None
    if not isinstance(saved, list) or len(saved) != len(self.members):
      raise ValueError(f"the checkpoint's input state is not that of a {len(self.members)}-"
                       "member population; was config.population changed? use a new --workdir")
    for b, s in zip(self.members, saved):
      b.set_state(s)


class PopulationWriter:
  """``metrics.MetricWriter``'s interface over a population: every member's values go to
  its own ``members/<k>/`` (metrics.jsonl, tb/), their mean over members to the run's."""

  def __init__(self, workdir, n: int, class_names=None):
    self.top = metrics_lib.MetricWriter(workdir, class_names)
    self.members = [metrics_lib.MetricWriter(member_workdir(workdir, k), class_names)
                    for k in range(n)]

  def write(self, step: int, metrics: dict, prefix: str = "train") -> None:
    for k, w in enumerate(self.members):
      w.write(step, outputs.member_values(metrics, k), prefix)
    self.top.write(step, mean_over_members(metrics), prefix)

  def write_row(self, record: dict) -> None:
    self.top.write_row(record)

  def config(self, config) -> None:
    self.top.config(config)

  def image(self, tag: str, png_path, step: int) -> None:
    self.top.image(tag, png_path, step)

  def flush(self) -> None:
    for w in [self.top] + self.members:
      w.flush()

  def close(self) -> None:
    for w in [self.top] + self.members:
      w.close()


def member_workdir(workdir, k: int):
  """members/<k>/ of a population workdir, created (on process 0)."""
  d = rundir.member_dir(workdir, k)
  if jax.process_index() == 0:
    d.mkdir(parents=True, exist_ok=True)
  return d


def write_eval(trainer, state, step, writer: PopulationWriter, workdir) -> float:
  """``outputs.write_eval`` for a population: every member's files in members/<k>/, the
  mean over members in the run's metrics rows, one console line. Returns the mean of the
  teachers' test top-1."""
  results = trainer.evaluate(state)
  val = trainer.val_arrays()
  if val is None:
    vals = [None] * len(results)
  elif trainer.config.population.vary_split:  # member k on its own held-out part
    vals = [trainer.evaluate(state, trainer.val_arrays(k))[k] for k in range(len(results))]
  else:
    vals = trainer.evaluate(state, val)
  for k, (res, v) in enumerate(zip(results, vals)):
    outputs.record_eval(trainer, step, res, {"val": v} if v is not None else {},
                        writer.members[k], member_workdir(workdir, k))
  mean = lambda rs: {net: {key: float(np.mean([r[net][key] for r in rs]))  # noqa: E731
                          for key in ("top1", "mean_class_acc", "macro_f1")} for net in rs[0]}
  overall = mean(results)
  outputs.eval_rows(writer.top, step, overall, {"val": mean(vals)} if val is not None else {})
  writer.flush()
  if trainer.is_main:
    console.say(eval_line(step, trainer.config.train.num_steps, results))
  return overall["teacher"]["top1"]


def eval_line(step: int, total: int, results) -> str:
  parts = []
  for net in ("teacher", "student"):
    d = stats.describe([r[net]["top1"] for r in results])
    parts.append(f"{net} top-1 {d['mean']:.4f} ± {d['std'] or 0.0:.4f} "
                 f"({d['min']:.4f}-{d['max']:.4f})")
  return f"eval step {step}/{total} over {len(results)} members: " + " | ".join(parts)


def finish(trainer, workdir, last_means, wall, compile_s, *, rerun: bool) -> dict:
  """``outputs.finish`` for a population: members/<k>/summary.json and report.html for
  every member, then the run's summary.json (members, mean ± std, 95 % t-interval) and
  the results table. ``last_means`` keep their member axis."""
  summary_path = workdir / rundir.SUMMARY
  old, old_train = {}, [None] * trainer.members
  if rerun:  # the run had finished: its timing and last training means are kept
    old = (rundir.read_json_or_warn(summary_path, what="rebuilt from metrics.jsonl")
           or rundir.checkpoint_row(workdir, trainer.config.train.num_steps))
    old_train = ([m.get("train") for m in old["members"]] if "members" in old
                 else old.get("members_train", old_train))
  members = []
  for k in range(trainer.members):
    m = outputs.summarise(trainer, rundir.eval_history(member_workdir(workdir, k)),
                          outputs.member_values(last_means, k), wall, compile_s,
                          config=trainer.member_configs[k], train_data=trainer.member_data[k])
    if old_train[k] is not None:
      m["train"] = old_train[k]
    m["member"] = k
    members.append(m)
  summary = population_summary(trainer.config, members)
  summary.update({"wall_time_s": wall, "compile_s": compile_s})
  if rerun:
    summary.update({k: old[k] for k in ("wall_time_s", "compile_s") if k in old})
  if trainer.is_main:
    from ssfer_jax.tools import report  # members' report.html (logs, never raises, on failure)
    for k, m in enumerate(members):
      m.update({k2: summary[k2] for k2 in ("wall_time_s", "compile_s")})
      rundir.write_json(member_workdir(workdir, k) / rundir.SUMMARY, m, indent=2)
      report.write_run_report(member_workdir(workdir, k))
    rundir.write_json(summary_path, summary, indent=2)
    report.write_run_report(workdir)  # the population's report.html: members, band, table
    console.say(results_table(summary, workdir))
  return summary


def population_summary(config, members: list[dict]) -> dict:
  """The population's summary.json: what was trained, every member's summary, and per
  network each of ``SUMMARY_KEYS`` described over members (``stats.describe``)."""
  out = {"kind": "population", "algorithm": config.algorithm, "dataset": config.dataset.name,
         "num_steps": int(config.train.num_steps),
         "population": {"size": len(members), "seeds": [m["seed"] for m in members],
                        "vary_split": bool(config.population.vary_split)},
         "members": members}
  for net in ("teacher", "student"):
    out[net] = {key: stats.describe([m[net][key] for m in members])
                for key in SUMMARY_KEYS if all(key in m[net] for m in members)}
  return out


def results_table(summary: dict, workdir) -> str:
  """The end of a population run: one line per member and the description over members."""
  lines = [f"  {'member':>6}{'seed':>6}{'final top-1':>13}{'best top-1':>12}"
           f"{'mean/class':>12}{'student':>10}"]
  for m in summary["members"]:
    t = m["teacher"]
    lines.append(f"  {m['member']:>6}{m['seed']:>6}{t['final_top1']:>13.4f}{t['best_top1']:>12.4f}"
                 f"{t['final_mean_class_acc']:>12.4f}{m['student']['final_top1']:>10.4f}")
  for key, label in (("final_top1", "final top-1"), ("best_top1", "best top-1 (on test)"),
                     ("final_mean_class_acc", "final mean per-class")):
    d = summary["teacher"][key]
    ci = (f", 95% CI [{d['ci95'][0]:.4f}, {d['ci95'][1]:.4f}]" if d["ci95"] else "")
    std = f" ± {d['std']:.4f}" if d["std"] is not None else ""
    lines.append(f"  teacher {label}: {d['mean']:.4f}{std} over {d['n']} members{ci}")
  lines.append(f"  summary: {workdir}/summary.json   members: {workdir}/{rundir.MEMBERS_DIR}/<k>/")
  return "\n".join(lines)
