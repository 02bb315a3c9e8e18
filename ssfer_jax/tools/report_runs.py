"""What ``ssfer_jax.tools.report`` reads of a workdir: one ``Run`` per run directory.

A single run's files (run_info.json, config.json, summary.json, metrics.jsonl, eval/,
cross_eval/) each may be missing: an unfinished run has no summary, a run without an
evaluation no eval/. A population run (``population.py``) has the same files at the top
(metrics.jsonl holding means over members, summary.json of ``"kind": "population"``) and
each member's own single-run directory under members/<k>/, loaded as ``Run.members``.
``headline`` gives the final and best numbers the report tables show: a single run's, or
for a population their mean over members (``stats.describe``, as summary.json has it).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

from etils import epath

from ssfer_jax import rundir, selection, stats

NETS = ("teacher", "student")
_read_json = rundir.read_json  # None when missing; names file:line when it does not parse
KNOWN_FILES = (rundir.CONFIG, rundir.METRICS, rundir.RUN_INFO, rundir.SUMMARY)
# The numbers described over the members of a population (summary.json's keys, and the
# ones computed here for an unfinished run), in the order shown, with their labels.
DESCRIBED = {"final_top1": "final top-1", "best_top1": "best top-1 (selected on test)",
             "final_mean_class_acc": "final mean per-class", "final_macro_f1": "final macro-F1",
             "best_mean_class_acc": "best mean per-class",
             "test_top1_at_val_best": "test top-1 at the step chosen on validation"}


# -- reading a run -------------------------------------------------------------------------
@dataclasses.dataclass
class Run:
  """Everything the report shows of one workdir (each piece may be missing)."""
  path: epath.Path
  name: str
  config: dict | None
  info: dict
  summary: dict | None
  rows: dict                     # kind -> deduplicated rows (rundir.read_metrics)
  evals: dict                    # step -> eval/step_N.json (rundir.eval_history)
  cross_evals: list
  members: list = dataclasses.field(default_factory=list)  # a population's member Runs

  @property
  def final_eval(self) -> dict | None:
    """eval/step_N.json of the last evaluated step."""
    return self.evals[max(self.evals)] if self.evals else None

  @property
  def class_names(self) -> list:
    for src in (self.info, self.summary or {}, self.final_eval or {}):
      if src.get("class_names"):
        return list(src["class_names"])
    return []

  def get(self, key: str, default=None):
    """A field from run_info.json / summary.json / config.json, in that order."""
    for src in (self.info, self.summary or {}):
      if key in src:
        return src[key]
    if self.config and key in ("algorithm",):
      return self.config.get(key, default)
    return default


def load_run(path, name: str | None = None) -> Run:
  path = epath.Path(path)
  if not path.is_dir():
    raise FileNotFoundError(f"{path}: no such run directory")
  if not any((path / f).exists() for f in KNOWN_FILES):
    raise FileNotFoundError(f"{path} holds none of {', '.join(KNOWN_FILES)}: not a run "
                            "directory written by `python -m ssfer_jax.main`")
  cross = []
  if (path / "cross_eval").is_dir():
    for d in sorted((path / "cross_eval").iterdir()):
      res = _read_json(d / "results.json") if d.is_dir() else None
      if res:
        cross.append(res)
  return Run(path=path, name=name or path.name, config=_read_json(path / rundir.CONFIG),
             info=_read_json(path / rundir.RUN_INFO) or {},
             summary=_read_json(path / rundir.SUMMARY), rows=rundir.read_metrics(path),
             evals=rundir.eval_history(path), cross_evals=cross, members=load_members(path))


def load_members(path) -> list:
  """The member Runs of a population workdir (members/<k>/ with any run file, by k), else []."""
  root = epath.Path(path) / rundir.MEMBERS_DIR
  dirs = sorted((d for d in root.iterdir() if d.is_dir() and d.name.isdigit()),
                key=lambda d: int(d.name)) if root.is_dir() else []
  return [load_run(d, f"member {d.name}") for d in dirs
          if any((d / f).exists() for f in KNOWN_FILES)]


def run_names(paths: Sequence) -> list:
  """Short unique labels: the folder name, or more of the path where names collide."""
  parts = [epath.Path(p).resolve().parts if not str(p).startswith(("gs:", "s3:")) else
           str(p).rstrip("/").split("/") for p in paths]
  depth = 1
  while True:
    names = ["/".join(ps[-depth:]) for ps in parts]
    if len(set(names)) == len(names) or depth >= max(len(ps) for ps in parts):
      return names
    depth += 1


# -- numbers ---------------------------------------------------------------------------------
def headline(run: Run) -> dict:
  """{net: {final_top1, final_mean_class_acc, final_macro_f1, best_top1, best_step,
  best_mean_class_acc, final_step, ...}} from summary.json, else from the evaluations so
  far (``selection.summarise``, as summary.json will have it); nets without any
  evaluation are absent. For a population: the means over members (``described``)."""
  if run.members:
    final = max((max(m.evals) for m in run.members if m.evals), default=None)
    return {net: dict({k: d["mean"] for k, d in keys.items()}, final_step=final)
            for net, keys in described(run).items()}
  out = {}
  for net in NETS:
    s = (run.summary or {}).get(net)
    history = {step: r for step, r in run.evals.items() if net in r}
    if s:
      out[net] = dict(s, final_step=(run.summary or {}).get("num_steps"))
    elif history:
      out[net] = dict(selection.summarise(history, net), final_step=max(history))
  return out


def last_step(run: Run):
  steps = [rows[-1]["step"] for rows in run.rows.values() if rows]
  return max(steps) if steps else None


def described(run: Run) -> dict:
  """{net: {key: stats.describe over members}} of a population: summary.json's when the
  run has finished, else from the members' evaluations so far (a net is left out until
  every member has one)."""
  if (run.summary or {}).get("kind") == "population":
    return {net: run.summary[net] for net in NETS if run.summary.get(net)}
  per = [headline(m) for m in run.members]
  out = {}
  for net in NETS:
    if per and all(net in h for h in per):
      out[net] = {key: stats.describe([h[net].get(key) for h in per])
                  for key in DESCRIBED if any(key in h[net] for h in per)}
  return out
