"""The project's one canonical expression order, and every dataset's mapping onto it.

Canonical order (index: name). It follows AffectNet's codes so that the 8-class
variant simply appends ``contempt``:

    0 neutral, 1 happiness, 2 sadness, 3 surprise, 4 fear, 5 disgust, 6 anger, [7 contempt]

Every builder, the synthetic data, evaluation and prediction map labels through
this module and nowhere else.
"""

from __future__ import annotations

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
