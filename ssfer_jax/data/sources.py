"""Random-access data sources and the ``Dataset`` record (``data/datasets.py`` loads one by name).

A source is anything with ``__len__``, ``__getitem__(i) -> {'image': uint8 (H,W,C),
'label': int}`` and a ``labels`` numpy array (so label budgets can be drawn without
decoding images). Grain reads sources directly.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np


class ArraySource:
  """In-memory images and labels (the synthetic data, cached test sets)."""

  def __init__(self, images: np.ndarray, labels: np.ndarray):
    if len(images) != len(labels):
      raise ValueError(f"{len(images)} images but {len(labels)} labels")
    self.images = images
    self.labels = np.asarray(labels, np.int32)

  def __len__(self):
    return len(self.labels)

  def __getitem__(self, i):
    i = int(i)
    return {"image": self.images[i], "label": self.labels[i]}

  def __repr__(self):
    return f"ArraySource(n={len(self)}, shape={self.images.shape[1:]})"


class SubsetSource:
  """The rows ``ids`` of ``source``; items also carry ``index``, the position in the subset."""

  def __init__(self, source, ids: np.ndarray):
    self.source = source
    self.ids = np.asarray(ids, np.int64)
    self.labels = np.asarray(source.labels)[self.ids]

  def __len__(self):
    return len(self.ids)

  def __getitem__(self, i):
    i = int(i)
    item = dict(self.source[int(self.ids[i])])
    item["index"] = i
    return item

  def __repr__(self):
    return f"SubsetSource({self.source!r}, n={len(self)})"


@dataclasses.dataclass
class Dataset:
  name: str
  train: Any
  test: Any
  num_classes: int
  class_names: tuple
  channels: int = 3
