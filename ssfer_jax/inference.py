"""Restoring a trained run for inference: the network's variables and how to feed it.

    run = inference.restore(workdir=RUN)                  # latest step, teacher weights
    run = inference.restore(checkpoint=RUN/checkpoints/STEP, weights="student")
    run = inference.restore(workdir=POPULATION_RUN, member=2)   # member 2's network
    probs = inference.probabilities(run.model(), run.variables, uint8_images, run.mean, run.std)

One owner for what ``predict``, ``evaluate`` and ``export`` all need: finding the
checkpoint in the layout ``checkpoint.py`` writes (``RUN/checkpoints/<step>/state``),
reading the run's ``config.json`` (model, image size, normalisation) and class names,
and a partial orbax restore of only the chosen network's parameters and BatchNorm
statistics (the teacher's EMA copy unless ``weights='student'``), so neither the dataset
nor the optimizer state is read. The channel count is read off the checkpoint's
parameter shapes (a grey run's first convolution takes one channel).

A population run (``config.population.size`` = N > 1, ``population.py``) saves every leaf
with a leading member axis of N: the chosen network's stacked leaves are restored (N times
one network, still nothing else) and member k's slice kept. ``RunInfo.config`` is then
member k's own config (``population.member_config``: the single run it equals), the class
names are the run's (top-level run_info.json). Without ``member`` the default is the
member whose chosen network did best on the held-out validation set
(``val_top1_at_val_best`` in summary.json, the lowest index on ties), or member 0 when the
run has no validation results; one stderr line says which and why (``default_member``).
"""

from __future__ import annotations

import dataclasses
import json
import sys

import jax
import jax.numpy as jnp
import ml_collections
import orbax.checkpoint as ocp
from etils import epath
from flax import traverse_util

from ssfer_jax import rundir
from ssfer_jax.data import classes, images
from ssfer_jax.models import build_model

# --weights -> the TrainState fields holding (params, batch_stats) of that network.
WEIGHTS = {"teacher": ("ema_params", "ema_batch_stats"), "student": ("params", "batch_stats")}


@dataclasses.dataclass
class RunInfo:
  """What inference needs from a run: the model's variables and how to feed it."""
  config: ml_collections.ConfigDict
  variables: dict              # {"params": ..., "batch_stats": ...}
  class_names: tuple
  channels: int
  step: int
  checkpoint_dir: epath.Path
  weights: str = "teacher"     # 'teacher' (EMA) or 'student'
  member: int | None = None    # the member of a population run; None for a single run

  @property
  def image_size(self) -> int:
    return int(self.config.data.image_size)

  @property
  def mean(self) -> tuple:
    return tuple(float(v) for v in self.config.data.mean)

  @property
  def std(self) -> tuple:
    return tuple(float(v) for v in self.config.data.std)

  def model(self):
    return build_model(self.config.model, len(self.class_names))


def probabilities(model, variables, x, mean, std):
  """The inference forward pass: uint8 (N, H, W, C) -> float32 softmax (N, classes),
  normalised as training normalises (``images.normalize``), BatchNorm in eval mode."""
  logits = model.apply(variables, images.normalize(x, mean, std), train=False)["logits"]
  return jax.nn.softmax(logits.astype(jnp.float32), axis=-1)


def locate(workdir=None, checkpoint=None, step: int | None = None):
  """-> (workdir, checkpoints directory, step). ``checkpoint`` is WORKDIR/checkpoints or
  one step directory inside it; its workdir is the folder holding config.json."""
  if (workdir is None) == (checkpoint is None):
    raise ValueError("pass exactly one of --workdir=RUN or --checkpoint=DIR")
  if workdir is not None:
    workdir = epath.Path(workdir)
    ckpt_dir = workdir / "checkpoints"
  else:
    ckpt_dir = epath.Path(checkpoint)
    if not ckpt_dir.exists():
      raise FileNotFoundError(f"--checkpoint={ckpt_dir}: no such directory")
    if (ckpt_dir / "state").is_dir() and ckpt_dir.name.isdigit():
      if step is not None and int(ckpt_dir.name) != step:
        raise ValueError(f"--checkpoint={ckpt_dir} is step {ckpt_dir.name} but --step={step}")
      step = int(ckpt_dir.name)
      ckpt_dir = ckpt_dir.parent
    workdir = ckpt_dir.parent
  if not (workdir / "config.json").exists():
    top = workdir.parent.parent  # members/<k>/ of a population run has no checkpoints
    if workdir.parent.name == rundir.MEMBERS_DIR and (top / "config.json").exists():
      raise FileNotFoundError(f"{workdir} is member {workdir.name} of the population run "
                              f"{top}: pass --workdir={top} --member={workdir.name}")
    raise FileNotFoundError(f"{workdir / 'config.json'} not found: point --workdir at a run "
                            "directory written by `python -m ssfer_jax.main`")
  steps = sorted(int(p.name) for p in ckpt_dir.glob("*")
                 if p.name.isdigit() and (p / "state").is_dir()) if ckpt_dir.exists() else []
  if not steps:
    raise FileNotFoundError(f"no checkpoint in {ckpt_dir}: the run has not saved one yet "
                            "(config.train.checkpoint_every)")
  if step is None:
    step = steps[-1]
  elif step not in steps:
    raise ValueError(f"--step={step} is not in {ckpt_dir} (available: {steps})")
  return workdir, ckpt_dir, step


def load_config(workdir) -> ml_collections.ConfigDict:
  path = epath.Path(workdir) / "config.json"
  try:
    return ml_collections.ConfigDict(json.loads(path.read_text()))
  except json.JSONDecodeError as e:
    raise ValueError(f"{path}: not valid JSON ({e})") from e


def run_class_names(workdir, num_classes: int) -> tuple:
  """The run's class names: from run_info.json (written when training starts), else its
  eval/summary files, else the canonical order."""
  workdir = epath.Path(workdir)
  candidates = ([workdir / "run_info.json", workdir / "summary.json"]
                + sorted((workdir / "eval").glob("step_*.json")))
  for p in candidates:
    if p.exists():
      names = json.loads(p.read_text()).get("class_names")
      if names and len(names) == num_classes:
        return tuple(names)
  return classes.class_names(num_classes)


def _leaf_shapes(tree) -> dict:
  """{"a/b/leaf": shape} of a nested dict of arrays, ShapeDtypeStructs or orbax metadata."""
  return {k: tuple(v.shape) for k, v in traverse_util.flatten_dict(tree, sep="/").items()}


def population_size(config) -> int:
  """N of a population run's config.json; 1 for a single run (or one from before populations)."""
  population = config.get("population")
  return int(population.get("size", 1)) if population else 1


def default_member(summary: dict | None, weights: str, n: int) -> tuple[int, str]:
  """(member, why) of a population of ``n`` when no ``--member`` is given: the member whose
  ``weights`` network has the highest held-out top-1 at its validation-selected step
  (summary.json ``members[k][weights]["val_top1_at_val_best"]``; the lowest index on ties),
  or member 0 when not every member has one (no ``config.eval.val_fraction``, or no
  summary.json yet)."""
  members = (summary or {}).get("members") or []
  scores = [m.get(weights, {}).get("val_top1_at_val_best") for m in members]
  if len(scores) != n or any(v is None for v in scores):
    return 0, "member 0 (no held-out validation to choose by)"
  k = max(range(n), key=lambda i: (scores[i], -i))
  m = members[k]
  return k, (f"member {k}, seed {m.get('seed', '?')} (the best {weights} on held-out "
             f"validation: top-1 {scores[k]:.4f} at step {m[weights].get('val_best_step', '?')})")


def pick_member(workdir, config, member: int | None, weights: str) -> int | None:
  """The member to restore: None for a single run, ``member`` checked against the
  population's size, or (``member`` None) ``default_member``, said on stderr."""
  n = population_size(config)
  if n == 1:
    if member is not None:
      raise ValueError(f"--member={member}: {workdir} is a single run, not a population "
                       "(config.population.size=1); leave --member out")
    return None
  if member is None:
    member, why = default_member(rundir.read_json(workdir / rundir.SUMMARY), weights, n)
    print(f"{workdir} is a population of {n} members: using {why}; --member=0..{n - 1} "
          "picks another", file=sys.stderr, flush=True)
  elif not 0 <= member < n:
    raise ValueError(f"--member={member} is out of range: {workdir} is a population of {n} "
                     f"members, --member=0..{n - 1}")
  return member


def restore(workdir=None, checkpoint=None, *, step: int | None = None,
            weights: str = "teacher", member: int | None = None) -> RunInfo:
  """The network variables of a run's checkpoint (only those are read), on one device;
  of a population run, member ``member``'s (default: ``default_member``)."""
  if weights not in WEIGHTS:
    raise ValueError(f"--weights must be one of {sorted(WEIGHTS)}, got {weights!r}")
  workdir, ckpt_dir, step = locate(workdir, checkpoint, step)
  config = load_config(workdir)
  member = pick_member(workdir, config, member, weights)
  lead = () if member is None else (population_size(config),)  # the member axis
  state_dir = ckpt_dir / str(step) / "state"
  saved = ocp.StandardCheckpointer().metadata(state_dir).item_metadata.tree
  p_key, s_key = WEIGHTS[weights]
  if p_key not in saved:
    raise ValueError(f"{state_dir}: no '{p_key}' in the checkpoint (has {sorted(saved)})")
  saved_params = _leaf_shapes(saved[p_key])
  fc = saved_params.get("fc/kernel")
  if fc is None:
    raise ValueError(f"{state_dir}: no fc/kernel among the '{p_key}' leaves")
  num_classes = fc[-1]
  model = build_model(config.model, num_classes)
  channels, expected = None, None
  for c in (3, 1):  # the channel count is the one whose parameter shapes match the checkpoint
    shapes = jax.eval_shape(lambda c=c: model.init(
        {"params": jax.random.key(0), "dropout": jax.random.key(0)},
        jnp.zeros((1, config.data.image_size, config.data.image_size, c)), train=False))
    if {k: lead + s for k, s in _leaf_shapes(shapes["params"]).items()} == saved_params:
      channels, expected = c, shapes
      break
  if channels is None:
    raise ValueError(f"{state_dir}: the saved '{p_key}' do not match the model that "
                     f"{workdir / 'config.json'} describes (config.model.backbone="
                     f"{config.model.backbone!r}"
                     + (f", config.population.size={lead[0]}" if lead else "")
                     + "); was config.json edited after training?")
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  target = {key: jax.tree.map(lambda x: jax.ShapeDtypeStruct(lead + x.shape, x.dtype,
                                                             sharding=device), expected[col])
            for key, col in ((p_key, "params"), (s_key, "batch_stats")) if col in expected}
  restored = ocp.PyTreeCheckpointer().restore(
      state_dir, args=ocp.args.PyTreeRestore(
          item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
          partial_restore=True))
  if member is not None:
    from ssfer_jax import population  # only population runs need it
    restored = population.member(restored, member)
    config = population.member_config(config, member)
  variables = {"params": restored[p_key]}
  if s_key in restored:
    variables["batch_stats"] = restored[s_key]
  return RunInfo(config, variables, run_class_names(workdir, num_classes), channels, step,
                 ckpt_dir, weights, member)


def define_member_flag(fv):
  """``--member``: the member of a population run (predict, export and evaluate)."""
  from absl import flags  # only the command lines need absl
  return flags.DEFINE_integer("member", None, "the member of a population run "
                              "(config.population.size > 1) to use (default: the best on "
                              "held-out validation, else 0; the choice is printed)",
                              flag_values=fv)


class RunFlags:
  """The flags that pick a trained network (``--workdir`` or ``--checkpoint``, ``--step``,
  ``--weights``, ``--member``), defined on a tool's own ``FlagValues`` (predict and export
  share them)."""

  def __init__(self, fv):
    from absl import flags  # only the command lines need absl
    self.workdir = flags.DEFINE_string("workdir", None, "a run directory (config.json + "
                                       "checkpoints/)", flag_values=fv)
    self.checkpoint = flags.DEFINE_string("checkpoint", None, "RUN/checkpoints or "
                                          "RUN/checkpoints/STEP", flag_values=fv)
    self.step = flags.DEFINE_integer("step", None, "checkpoint step (default: latest)",
                                     flag_values=fv)
    self.weights = flags.DEFINE_enum("weights", "teacher", sorted(WEIGHTS),
                                     "the EMA teacher's or the student's weights", flag_values=fv)
    self.member = define_member_flag(fv)

  def restore(self) -> RunInfo:
    return restore(self.workdir.value, self.checkpoint.value, step=self.step.value,
                   weights=self.weights.value, member=self.member.value)
