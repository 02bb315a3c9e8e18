"""The algorithm interface: what every semi-supervised method is.

An algorithm is a handful of pure functions over its own state (a pytree carried in
``TrainState.algo``). The train step (``ssfer_jax/step.py``) never knows an algorithm
by name; it only

1. runs the student on the views the algorithm asks for (``student_views``, with
   gradients) and the pseudo-label source (EMA teacher or the student with a stop-
   gradient, ``config.pseudo_label_source``) on ``pseudo_views``, and hands their outputs
   over keyed by view name (``StepInputs.student`` / ``.pseudo``);
2. calls ``unlabeled_loss(state, inputs, cfg)`` which returns the (already weighted)
   unlabeled loss, the algorithm's new state, the per-sample mask/weight and
   pseudo-labels, its per-class thresholds if it has any, and any diagnostics;
3. adds ``lambda_x * CE(labeled)``.

Everything an algorithm computes runs inside the compiled step, on the *global* batch:
under ``jax.jit`` over a mesh a ``jnp.mean`` / ``jnp.sum`` over the batch axis is a
cross-device reduction, so statistics (thresholds, counts, EMAs) are the same on every
device and equal to a one-device run on the same global batch.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, NamedTuple, Optional, Union

import jax
import jax.numpy as jnp
import ml_collections

PyTree = Any


class StepInputs(NamedTuple):
  """What an algorithm may read. Shapes: B labeled, U unlabeled, C classes; float32 logits.

  The unlabeled views are mappings keyed by view name (``data/views.py``), so a method
  that asks for a new view reads it here without a new field:

  ``student``: ``{view: {'logits', 'features'}}`` for every view in ``student_views``, the
  student's outputs WITH gradient. ``pseudo``: ``{view: logits}`` for every view in
  ``pseudo_views_for(cfg)``, the pseudo-label source's (EMA teacher, or the student under a
  stop-gradient with ``config.pseudo_label_source='student'``), without gradient.
  ``teacher_logits_lb`` is the pseudo-label source's on the labeled batch (the EMA teacher
  instead with ``config.threshold_stats_source='teacher'``), None unless the method asks
  for it (``needs_teacher_on_labeled``); ``logits_lb`` the student's, with gradient.
  """
  logits_lb: jax.Array              # (B, C) student, labeled weak view
  y_lb: jax.Array                   # (B,) int32
  student: Mapping[str, dict]       # view -> {'logits': (U, C), 'features': (U, D)}
  pseudo: Mapping[str, jax.Array]   # view -> (U, C) pseudo-label source logits
  teacher_logits_lb: Optional[jax.Array]  # (B, C) pseudo-label source, labeled weak view
  idx_ulb: jax.Array                # (U,) int32 index of each unlabeled sample in its dataset
  y_ulb: jax.Array                  # (U,) int32 true label, -1 where unknown; diagnostics only
  step: jax.Array                   # () int32, the step being taken (0-based)
  epoch: jax.Array                  # () float32, step / steps_per_epoch
  steps_per_epoch: int              # static

  def student_logits(self, view: str) -> jax.Array:
    """The student's logits on ``view``; a clear error when the method did not ask for it."""
    return _view(self.student, view, "student", "student_views")["logits"]

  def student_features(self, view: str) -> jax.Array:
    return _view(self.student, view, "student", "student_views")["features"]

  def pseudo_logits(self, view: str) -> jax.Array:
    """The pseudo-label source's logits on ``view`` (no gradient)."""
    return _view(self.pseudo, view, "pseudo-label source", "pseudo_views")


def _view(table, view, who, field):
  if view not in table:
    raise ValueError(f"the {who} did not run on view {view!r} (it ran on {sorted(table)}); "
                     f"add it to the algorithm's {field}")
  return table[view]


class UnlabeledOutput(NamedTuple):
  loss: jax.Array            # () weighted sum of all unlabeled terms (added to lambda_x * L_x)
  state: PyTree              # the algorithm's new state
  mask: jax.Array            # (U,) float32 per-sample weight in [0, 1] of the pseudo-label loss
  pseudo_labels: jax.Array   # (U,) int32
  metrics: dict              # name -> scalar or small (C,) array, all jnp
  # (C,) float32 per-class thresholds this step's mask used, or None for a method without
  # them; the step logs them under the one key ``algo/tau`` (files: ``algo/tau/<class>``),
  # which thresholds.png and the report's threshold chart read.
  thresholds: Optional[jax.Array] = None


@dataclasses.dataclass(frozen=True)
class Ablation:
  """A named variant flag (``--config=FILE:no_snl``): ``settings`` maps dotted config paths
  (``'algo.use_snl'``, ``'model.attention'``) to the value the flag sets; ``effect`` is the
  line ``--list`` shows (default: the settings themselves)."""
  settings: Mapping[str, Any]
  effect: str = ""

  def describe(self) -> str:
    return self.effect or ", ".join(f"config.{k}={v!r}" for k, v in self.settings.items())


@dataclasses.dataclass(frozen=True)
class Algorithm:
  """A semi-supervised method. All callables are pure and jit-compatible.

  name: the ``config.algorithm`` value.
  default_config: () -> ConfigDict of the method's hyper-parameters (``config.algo``).
  init_state: (cfg, num_classes, num_unlabeled) -> pytree of jnp arrays.
  unlabeled_loss: (state, StepInputs, cfg) -> UnlabeledOutput. ``None`` for labeled-only.
  student_views: unlabeled views the student runs on with gradient.
  pseudo_views: unlabeled views the pseudo-label source runs on: a tuple, or a function of
    ``config.algo`` (DTM / DTA's two-weak-view option); read it through
    ``pseudo_views_for(algo_cfg)``.
  needs_teacher_on_labeled: whether ``StepInputs.teacher_logits_lb`` is used: a bool, or a
    function of ``config.algo`` (DTA needs it only for the 'labeled_correct' statistic);
    read it through ``teacher_on_labeled(algo_cfg)``.
  labeled_supervision_weight: multiplies lambda_x (Ada-CM uses 0.5).
  new_views: views this method introduces, ``{name: augmentation}`` (e.g.
    ``{'ulb_s2': 'strong'}``); the standard ones ('ulb_w', 'ulb_w2', 'ulb_s') are in the
    one view table, ``data/views.VIEWS``, and need no entry. The input pipeline makes every
    view of ``views_for(cfg)`` with its augmentation; the step feeds it to
    ``StepInputs.student`` / ``pseudo``. A new view touches only the method's own file.
  ablations: the method's variant flags, ``{flag: Ablation}`` (e.g. dta_snl's ``no_snl``);
    ``config.apply_ablations`` and ``--list`` read them next to the model/data ones.
  """
  name: str
  default_config: Callable[[], ml_collections.ConfigDict]
  init_state: Callable[[ml_collections.ConfigDict, int, int], PyTree]
  unlabeled_loss: Optional[Callable[[PyTree, StepInputs, ml_collections.ConfigDict],
                                    UnlabeledOutput]]
  student_views: tuple[str, ...] = ("ulb_s",)
  pseudo_views: Union[tuple[str, ...], Callable[[ml_collections.ConfigDict], tuple[str, ...]]] = (
      "ulb_w",)
  needs_teacher_on_labeled: Union[bool, Callable[[ml_collections.ConfigDict], bool]] = False
  uses_unlabeled: bool = True
  uses_all_labels: bool = False
  labeled_supervision_weight: float = 1.0
  new_views: Mapping[str, str] = dataclasses.field(default_factory=dict, hash=False)
  ablations: Mapping[str, Ablation] = dataclasses.field(default_factory=dict, hash=False)

  def teacher_on_labeled(self, algo_cfg) -> bool:
    """Whether the pseudo-label source must also run on the labeled batch."""
    need = self.needs_teacher_on_labeled
    return bool(need(algo_cfg) if callable(need) else need)

  def pseudo_views_for(self, algo_cfg) -> tuple[str, ...]:
    """The unlabeled views the pseudo-label source runs on under ``algo_cfg``."""
    views = self.pseudo_views
    return tuple(views(algo_cfg) if callable(views) else views)

  def views_for(self, algo_cfg) -> tuple[str, ...]:
    """Every unlabeled view the input pipeline must produce under ``algo_cfg``."""
    if not self.uses_unlabeled:
      return ()
    return tuple(sorted(set(self.student_views) | set(self.pseudo_views_for(algo_cfg))))

  @property
  def views(self) -> tuple[str, ...]:
    """``views_for`` the method's default hyper-parameters."""
    return self.views_for(self.default_config())


# ---------------------------------------------------------------------------------------
# Small shared pieces the methods compose.

def cross_entropy(logits, labels):
  """Per-sample CE with integer labels, float32."""
  logp = jax.nn.log_softmax(logits.astype(jnp.float32))
  return -jnp.take_along_axis(logp, labels[:, None].astype(jnp.int32), axis=-1)[:, 0]


def confidence_and_label(logits):
  """(max softmax probability, arg-max) in float32, no temperature (SPEC §2.1)."""
  probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
  return jnp.max(probs, axis=-1), jnp.argmax(probs, axis=-1).astype(jnp.int32), probs


def two_view_confidence(logits_w, logits_w2):
  """Ada-CM / DTM pseudo-labels from two weak views: ``p = (softmax(w) + softmax(w2)) / 2``;
  returns (max p, arg-max p, p) in float32 like ``confidence_and_label``."""
  probs = (jax.nn.softmax(logits_w.astype(jnp.float32), axis=-1)
           + jax.nn.softmax(logits_w2.astype(jnp.float32), axis=-1)) / 2.0
  return jnp.max(probs, axis=-1), jnp.argmax(probs, axis=-1).astype(jnp.int32), probs


def masked_mean_ce(logits_s, pseudo_labels, mask):
  """mean over all U samples of mask * CE(student strong, pseudo) (the FixMatch form)."""
  return jnp.mean(mask * cross_entropy(logits_s, pseudo_labels))


def no_state(cfg, num_classes, num_unlabeled):
  del cfg, num_classes, num_unlabeled
  return {}


def epoch_length(inputs, cfg) -> int:
  """Steps between 'epoch'-cadence updates: ``cfg.epoch_steps`` when > 0 (the Ada-CM / DTM
  reference's fixed ``--train-iteration`` = 800), else the trainer's ``steps_per_epoch``."""
  return int(cfg.epoch_steps) if cfg.epoch_steps > 0 else int(inputs.steps_per_epoch)


def linear_rampup(step, rampup_steps):
  """0 -> 1 linearly over ``rampup_steps`` steps (1 at once when rampup_steps <= 0)."""
  if rampup_steps <= 0:
    return jnp.float32(1.0)
  return jnp.clip(step.astype(jnp.float32) / float(rampup_steps), 0.0, 1.0)
