"""The unlabeled views: the one table from a view's name to the augmentation that makes it.

A view is a name (``'ulb_w'``) that the input pipeline turns into a batch key
(``'x_ulb_w'``) with an augmentation, and that the train step hands to the algorithm under
the same name (``StepInputs.student[view]`` / ``StepInputs.pseudo[view]``). The standard
views are below; a method that needs another one (a second strong view, say) declares it
in its own ``Algorithm.new_views`` instead of editing this table, the pipeline or the step.
"""

from __future__ import annotations

import numpy as np

from ssfer_jax.data import augment

# augmentation name -> f(img uint8 HxWxC, rng, pad, randaugment_n, cutout) -> uint8 image.
AUGMENTATIONS = {
    "weak": lambda img, rng, pad, ra_n, cutout: augment.weak(img, rng, pad),
    "strong": augment.strong,
}

# view name -> augmentation name: the standard views every method may ask for.
VIEWS = {"ulb_w": "weak", "ulb_w2": "weak", "ulb_s": "strong"}


def resolve(names, new_views=None, who: str = "the input pipeline") -> dict[str, str]:
  """``{view: augmentation}`` for ``names`` (in their order) from ``VIEWS`` and a method's
  ``new_views``; an unknown view or augmentation raises naming ``who``."""
  table = {**VIEWS, **(new_views or {})}
  out = {}
  for view in names:
    if view not in table:
      raise ValueError(f"{who} asks for the unlabeled view {view!r}, which is not a standard "
                       f"view ({sorted(VIEWS)}); declare it in the algorithm's new_views, "
                       f"e.g. new_views={{{view!r}: 'strong'}}")
    if table[view] not in AUGMENTATIONS:
      raise ValueError(f"{who}: view {view!r} has the unknown augmentation {table[view]!r}; "
                       f"choose one of {sorted(AUGMENTATIONS)}")
    out[view] = table[view]
  return out


def augmentations(algorithm, algo_cfg) -> dict[str, str]:
  """``{view: augmentation}`` for every unlabeled view ``algorithm`` needs under
  ``algo_cfg``, in the (sorted) order the pipeline draws them."""
  return resolve(algorithm.views_for(algo_cfg), algorithm.new_views,
                 who=f"algorithm {algorithm.name!r}")


def make(augmentation: str, img: np.ndarray, rng: np.random.Generator, *, pad: int,
         randaugment_n: int, cutout: float) -> np.ndarray:
  """One view of ``img``: the named augmentation, drawn from ``rng``."""
  return AUGMENTATIONS[augmentation](img, rng, pad, randaugment_n, cutout)
