"""Registry of semi-supervised methods, chosen by ``config.algorithm``.

Adding a method: write ``algorithms/<name>.py`` defining an ``Algorithm`` (see
``base.py``) and add it to ``_REGISTRY`` below. The train loop is not touched.
"""

from __future__ import annotations

from ssfer_jax.algorithms.adacm import ADACM
from ssfer_jax.algorithms.base import Algorithm, StepInputs, UnlabeledOutput
from ssfer_jax.algorithms.dta_snl import DTA_SNL, DTM
from ssfer_jax.algorithms.fixmatch import FIXMATCH
from ssfer_jax.algorithms.flexmatch import FLEXMATCH
from ssfer_jax.algorithms.freematch import FREEMATCH
from ssfer_jax.algorithms.softmatch import SOFTMATCH
from ssfer_jax.algorithms.supervised import FULL_SUPERVISED, SUPERVISED

_REGISTRY: dict[str, Algorithm] = {a.name: a for a in (SUPERVISED, FULL_SUPERVISED, FIXMATCH, DTA_SNL, DTM,
                                                    FLEXMATCH, FREEMATCH, SOFTMATCH, ADACM)}


def get_algorithm(name: str) -> Algorithm:
  if name not in _REGISTRY:
    raise ValueError(f"config.algorithm={name!r} is not a known method; choose one of "
                     f"{sorted(_REGISTRY)}")
  return _REGISTRY[name]


def names() -> list[str]:
  return sorted(_REGISTRY)


__all__ = ["Algorithm", "StepInputs", "UnlabeledOutput", "get_algorithm", "names"]
