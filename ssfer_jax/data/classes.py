"""The project's one canonical expression order, and every dataset's mapping onto it.

Canonical order (index: name). It follows AffectNet's codes so that the 8-class
variant simply appends ``contempt``:

    0 neutral, 1 happiness, 2 sadness, 3 surprise, 4 fear, 5 disgust, 6 anger, [7 contempt]

Every builder, the synthetic data, evaluation and prediction map labels through
this module and nowhere else; ``map_labels`` matches one dataset's classes to a
model's (``python -m ssfer_jax.tools.evaluate`` on another dataset) through it.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

CANONICAL7 = ("neutral", "happiness", "sadness", "surprise", "fear", "disgust", "anger")
CANONICAL8 = CANONICAL7 + ("contempt",)


def class_names(num_classes: int) -> tuple[str, ...]:
  if num_classes == 7:
    return CANONICAL7
  if num_classes == 8:
    return CANONICAL8
  raise ValueError(f"num_classes must be 7 or 8 for the canonical order, got {num_classes}")


# Dataset label -> canonical index. Keys are the label as it appears in the source files.
# RAF-DB basic: 1 Surprise, 2 Fear, 3 Disgust, 4 Happiness, 5 Sadness, 6 Anger, 7 Neutral.
RAFDB = {1: 3, 2: 4, 3: 5, 4: 1, 5: 2, 6: 6, 7: 0}
# AffectNet: 0 Neutral, 1 Happy, 2 Sad, 3 Surprise, 4 Fear, 5 Disgust, 6 Anger, 7 Contempt
# (8 None, 9 Uncertain, 10 Non-face are not expressions and are dropped by the builder).
AFFECTNET = {0: 0, 1: 1, 2: 2, 3: 3, 4: 4, 5: 5, 6: 6, 7: 7}
# FER2013: 0 Angry, 1 Disgust, 2 Fear, 3 Happy, 4 Sad, 5 Surprise, 6 Neutral.
FER2013 = {0: 6, 1: 5, 2: 4, 3: 1, 4: 2, 5: 3, 6: 0}
# FERPlus vote columns, in file order, to canonical (unknown and NF are not classes).
FERPLUS_COLUMNS = ("neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear",
                   "contempt", "unknown", "NF")
FERPLUS = {"neutral": 0, "happiness": 1, "surprise": 3, "sadness": 2, "anger": 6, "disgust": 5,
           "fear": 4, "contempt": 7}
# SFEW 2.0 folder names.
SFEW = {"Neutral": 0, "Happy": 1, "Sad": 2, "Surprise": 3, "Fear": 4, "Disgust": 5, "Angry": 6}


def to_canonical(mapping: dict, label, *, source: str, num_classes: int = 7) -> int | None:
  """Maps a dataset label to the canonical index.

  Returns None for a label that is a valid class of the dataset but outside the
  requested label set (e.g. contempt when num_classes=7); raises for a label the
  dataset does not define, naming ``source`` (file and line) so the user can fix it.
  """
  if label not in mapping:
    raise ValueError(f"{source}: label {label!r} is not one of the dataset's labels "
                     f"{sorted(mapping, key=str)}; fix or remove this entry")
  index = mapping[label]
  return index if index < num_classes else None


# Folder / CSV class names (lower-cased) that mean a canonical class: used by the generic
# ``image_folder`` and ``csv_list`` builders (CK+, JAFFE, KDEF-style folder names, RAF-DB words).
SYNONYMS = {
    "neutral": 0, "neu": 0, "calm": 0,
    "happiness": 1, "happy": 1, "hap": 1, "joy": 1,
    "sadness": 2, "sad": 2,
    "surprise": 3, "surprised": 3, "sur": 3,
    "fear": 4, "fearful": 4, "afraid": 4,
    "disgust": 5, "disgusted": 5, "dis": 5,
    "anger": 6, "angry": 6, "ang": 6,
    "contempt": 7,
}


# -- one dataset's classes onto a model's ----------------------------------------------
def class_key(name: str):
  """What identifies a class across datasets: its canonical index when the name is a
  canonical class or synonym, else its lower-cased name."""
  low = str(name).strip().lower()
  if low in SYNONYMS:
    return ("canonical", SYNONYMS[low])
  return ("name", low)


@dataclasses.dataclass
class LabelMap:
  """How the test set's label indices map onto the model's."""
  test_names: tuple
  model_names: tuple
  test_to_model: np.ndarray     # (num test classes,) model index, -1 = the model lacks it

  @property
  def test_only(self) -> list:
    """Test classes the model does not have (their examples are dropped)."""
    return [n for n, m in zip(self.test_names, self.test_to_model) if m < 0]

  @property
  def model_only(self) -> list:
    """Model classes that are not in the test set's label set."""
    mapped = set(int(m) for m in self.test_to_model if m >= 0)
    return [n for i, n in enumerate(self.model_names) if i not in mapped]

  def as_dict(self) -> dict:
    return {t: (self.model_names[m] if m >= 0 else None)
            for t, m in zip(self.test_names, self.test_to_model)}


def map_labels(test_names: Sequence[str], model_names: Sequence[str]) -> LabelMap:
  """Matches test classes to model classes by ``class_key``. Raises when the two share
  no class, or when two classes on one side mean the same class."""
  model_index = {}
  for i, n in enumerate(model_names):
    k = class_key(n)
    if k in model_index:
      raise ValueError(f"model classes {model_names[model_index[k]]!r} and {n!r} mean the same "
                       "class; the run's class names are ambiguous")
    model_index[k] = i
  test_keys = [class_key(n) for n in test_names]
  if len(set(test_keys)) != len(test_keys):
    raise ValueError(f"test class names {list(test_names)} name one class twice")
  mapping = np.asarray([model_index.get(k, -1) for k in test_keys], np.int32)
  if not (mapping >= 0).any():
    raise ValueError(f"the test set's classes {list(test_names)} share no class with the "
                     f"model's {list(model_names)}; nothing can be evaluated")
  return LabelMap(tuple(test_names), tuple(model_names), mapping)


def apply_label_map(labels: np.ndarray, label_map: LabelMap):
  """-> (kept positions, model-index labels of the kept examples, {test class: dropped})."""
  labels = np.asarray(labels, np.int64)
  if len(labels) and (labels.min() < 0 or labels.max() >= len(label_map.test_names)):
    raise ValueError(f"test labels span [{labels.min()}, {labels.max()}] but the dataset "
                     f"declares {len(label_map.test_names)} classes")
  mapped = label_map.test_to_model[labels] if len(labels) else np.zeros(0, np.int32)
  keep = np.flatnonzero(mapped >= 0)
  dropped = {n: int(np.sum(labels == i)) for i, n in enumerate(label_map.test_names)
             if label_map.test_to_model[i] < 0}
  return keep, mapped[keep].astype(np.int32), dropped
