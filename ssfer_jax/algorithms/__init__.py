"""Registry of semi-supervised methods, chosen by ``config.algorithm``.

Adding a method: write ``algorithms/<name>.py`` defining an ``Algorithm`` (see
``base.py``: its views, a new view's augmentation, its ablation flags, its thresholds) and
add it to the ``register`` line below; code outside the package (bench/, tests) calls
``register`` itself. The train loop, the step and the input pipeline are not touched.
"""

from __future__ import annotations

from ssfer_jax.algorithms.adacm import ADACM
from ssfer_jax.algorithms.base import Ablation, Algorithm, StepInputs, UnlabeledOutput
from ssfer_jax.algorithms.dta_snl import DTA_SNL
from ssfer_jax.algorithms.dtm import DTM
from ssfer_jax.algorithms.fixmatch import FIXMATCH
from ssfer_jax.algorithms.flexmatch import FLEXMATCH
from ssfer_jax.algorithms.freematch import FREEMATCH
from ssfer_jax.algorithms.softmatch import SOFTMATCH
from ssfer_jax.algorithms.supervised import FULL_SUPERVISED, SUPERVISED

_REGISTRY: dict[str, Algorithm] = {}


def register(algorithm: Algorithm, *, replace: bool = False) -> Algorithm:
  """Makes ``algorithm`` selectable as ``config.algorithm=algorithm.name``. A name already
  registered raises unless ``replace``; so does an ablation flag another method, or the
  config's model/data ablations, already own with different settings."""
  if not replace and algorithm.name in _REGISTRY:
    raise ValueError(f"algorithm {algorithm.name!r} is already registered; pass replace=True "
                     "to override it")
  for flag, ablation in algorithm.ablations.items():
    for other in _REGISTRY.values():
      if other.name != algorithm.name and flag in other.ablations and (
          other.ablations[flag].settings != ablation.settings):
        raise ValueError(f"algorithm {algorithm.name!r}: ablation flag {flag!r} is already "
                         f"{other.name!r}'s with other settings; choose another name")
  _REGISTRY[algorithm.name] = algorithm
  return algorithm


def unregister(name: str) -> None:
  """Removes a registered method (tests that register a toy one clean up with it)."""
  _REGISTRY.pop(name, None)


def get_algorithm(name: str) -> Algorithm:
  if name not in _REGISTRY:
    raise ValueError(f"config.algorithm={name!r} is not a known method; choose one of "
                     f"{sorted(_REGISTRY)}")
  return _REGISTRY[name]


def names() -> list[str]:
  return sorted(_REGISTRY)


def ablations() -> dict[str, dict[str, Ablation]]:
  """``{flag: {method: Ablation}}`` over every registered method's own ablation flags."""
  out: dict[str, dict[str, Ablation]] = {}
  for name in names():
    for flag, ablation in _REGISTRY[name].ablations.items():
      out.setdefault(flag, {})[name] = ablation
  return out


for _algorithm in (SUPERVISED, FULL_SUPERVISED, FIXMATCH, DTA_SNL, DTM, FLEXMATCH, FREEMATCH,
                   SOFTMATCH, ADACM):
  register(_algorithm)

__all__ = ["Ablation", "Algorithm", "StepInputs", "UnlabeledOutput", "ablations",
           "get_algorithm", "names", "register", "unregister"]
