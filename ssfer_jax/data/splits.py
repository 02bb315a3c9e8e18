"""Label budgets: which training examples are labeled. Seeded, published, reproducible.

* ``labels_per_class=n``: n random examples of every class (all of a class that has
  fewer than n, with a warning naming it).
* ``total=N`` with ``protocol='adacm'``: the Ada-CM RAF-DB protocol (SPEC §3), fear
  under-sampled: N in {100, 400, 1000, 2000, 4000} gives fear 10/40/100/200/250 and
  every other class 15/60/150/300/625.
* ``ids_file``: the exact ids written by an earlier run (``labeled_ids.json``).

Ids are positions in the training split as the data source orders it.
"""

from __future__ import annotations

import json
import logging

import numpy as np
from etils import epath

from ssfer_jax import rundir
from ssfer_jax.data.classes import CANONICAL7

ADACM_TOTALS = {100: (10, 15), 400: (40, 60), 1000: (100, 150), 2000: (200, 300), 4000: (250, 625)}
FEAR = CANONICAL7.index("fear")


def per_class_budget(num_classes: int, *, labels_per_class: int = 0, total: int = 0,
                     protocol: str = "uniform") -> np.ndarray:
  if protocol == "adacm":
    if total not in ADACM_TOTALS:
      raise ValueError(f"config.data.num_labels={total} is not an Ada-CM budget; use one of "
                       f"{sorted(ADACM_TOTALS)} or protocol='uniform' with labels_per_class")
    fear, other = ADACM_TOTALS[total]
    budget = np.full(num_classes, other, np.int64)
    budget[FEAR] = fear
    return budget
  if protocol != "uniform":
    raise ValueError(f"config.data.label_protocol must be 'uniform' or 'adacm', got {protocol!r}")
  if labels_per_class <= 0:
    raise ValueError("config.data.labels_per_class must be > 0 (or use label_protocol='adacm' "
                     "with num_labels, or algorithm=full_supervised)")
  return np.full(num_classes, labels_per_class, np.int64)


def select_labeled(labels: np.ndarray, budget: np.ndarray, seed: int) -> np.ndarray:
  """Sorted indices: ``budget[c]`` random examples of each class c."""
  rng = np.random.default_rng([seed, 7919])
  chosen = []
  for c, n in enumerate(budget):
    idx = np.flatnonzero(labels == c)
    if len(idx) < n:
      logging.warning("class %d has only %d training examples, fewer than the %d asked for; "
                      "all of them are labeled", c, len(idx), n)
    chosen.append(rng.permutation(idx)[:n])
  return np.sort(np.concatenate(chosen)).astype(np.int64)


def write_ids(path, ids: np.ndarray, *, dataset: str, num_train: int) -> None:
  rundir.write_json(path, {"dataset": dataset, "num_train": int(num_train),
                          "labeled_ids": [int(i) for i in ids]})


def read_ids(path, *, dataset: str, num_train: int) -> np.ndarray:
  path = epath.Path(path)
  if not path.exists():
    raise FileNotFoundError(f"config.data.labeled_ids_file: {path} does not exist")
  try:
    obj = json.loads(path.read_text())
    ids = np.asarray(obj["labeled_ids"], np.int64)
  except (ValueError, KeyError, TypeError) as e:
    raise ValueError(f"{path}: not a labeled-ids file (expected JSON with 'labeled_ids'): {e}")
  if obj.get("dataset") not in (None, dataset) or obj.get("num_train") not in (None, num_train):
    raise ValueError(f"{path} was written for dataset={obj.get('dataset')!r} with "
                     f"{obj.get('num_train')} training examples, but this run has "
                     f"dataset={dataset!r} with {num_train}")
  if ids.size and (ids.min() < 0 or ids.max() >= num_train or len(np.unique(ids)) != len(ids)):
    raise ValueError(f"{path}: ids must be unique and in [0, {num_train})")
  return np.sort(ids)
