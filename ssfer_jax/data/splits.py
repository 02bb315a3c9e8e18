"""Label budgets: which training examples are labeled (and, optionally, held out for model
selection). Seeded, published, reproducible.

Protocols (``config.data.label_protocol``; SPEC §2.2):

* ``per_class`` (alias ``uniform``): ``labels_per_class`` examples of every class
  (Roy & Etemad; FixMatch's FER numbers).
* ``adacm``: the Ada-CM RAF-DB protocol (SPEC §3), fear under-sampled: ``num_labels`` N in
  {100, 400, 1000, 2000, 4000} gives fear 10/40/100/200/250 and every other class
  15/60/150/300/625.
* ``total_equal``: ``num_labels // C`` of every class (LEAF's RAF-DB protocol; the floor is
  USB's ``int(num_labels / num_classes)``; a remainder is reported, not drawn).
* ``percent``: ``label_percent`` % of the training set, stratified (SSFER: 5/10/25 % on
  RAF-DB and FERPlus, 1/5/10 % on AffectNet). The total is ``round(p * N)`` (half up) and
  is shared out by largest remainder: class c first gets ``floor(p * n_c)``, then the
  classes with the largest fractional parts ``p * n_c - floor(p * n_c)`` get one more
  each (ties: lower class index first). **[this project's rounding rule; SSFER does not
  say how it rounds]**. Exact rational arithmetic, no float error.
* ``long_tailed``: explicit per-class counts by class-frequency rank
  (``label_counts``): the most frequent class gets ``label_counts[0]``, the next
  ``label_counts[1]``, ... (ties: lower class index first), e.g. ReMoP's
  [500, 216, 94, 40, 17, 7, 3].

A budget larger than its class is a ``ValueError`` naming the class, its size and the budget
(a class with no training example at all, e.g. in CK+ folds, gets no labels and a warning).

Validation hold-out (``config.eval.val_fraction`` > 0): drawn *first*, stratified with the
``percent`` rule, from the whole training set; the labeled examples are then drawn from the
rest, and neither stream sees the held-out examples. With 0 nothing is held out and the
draw is the same as without this option.

``labeled_ids.json`` records the ids (positions in the training split as the data source
orders it), the per-class counts and a content hash: ``sha256`` of the sorted ids written
as decimal text joined by ',' (``split_hash``), so two groups can check that they train on
the same split. ``python -m ssfer_jax.data.splits`` writes and prints one without training.
"""

from __future__ import annotations

import fractions
import hashlib
import json
import logging

import numpy as np
from etils import epath

from ssfer_jax import rundir
from ssfer_jax.data.classes import CANONICAL7

ADACM_TOTALS = {100: (10, 15), 400: (40, 60), 1000: (100, 150), 2000: (200, 300), 4000: (250, 625)}
FEAR = CANONICAL7.index("fear")
PROTOCOLS = ("per_class", "adacm", "total_equal", "percent", "long_tailed")
ALIASES = {"uniform": "per_class"}


def canonical_protocol(protocol: str) -> str:
  protocol = ALIASES.get(protocol, protocol)
  if protocol not in PROTOCOLS:
    raise ValueError(f"config.data.label_protocol={protocol!r} is not a split protocol; use one of "
                     f"{list(PROTOCOLS)} (or 'uniform', an alias of 'per_class')")
  return protocol


def stratified_counts(class_sizes, fraction) -> np.ndarray:
  """Per-class counts of a stratified ``fraction`` of the examples: ``round(fraction * N)``
  in all, shared out by largest remainder (see the module docstring). Exact arithmetic."""
  frac = fractions.Fraction(str(fraction) if isinstance(fraction, float) else fraction)
  sizes = [int(n) for n in class_sizes]
  exact = [frac * n for n in sizes]
  counts = [int(e) for e in exact]  # floor: every value is >= 0
  total = int(frac * sum(sizes) + fractions.Fraction(1, 2))
  order = sorted(range(len(sizes)), key=lambda c: (-(exact[c] - counts[c]), c))
  for c in order[:max(0, total - sum(counts))]:
    counts[c] += 1
  return np.asarray(counts, np.int64)


def per_class_budget(class_sizes, *, protocol: str = "per_class", labels_per_class: int = 0,
                     total: int = 0, percent: float = 0.0, counts=(),
                     class_names=None) -> np.ndarray:
  """Labels to draw from each class under ``protocol``; checked against ``class_sizes``
  (the examples each class has to draw from)."""
  sizes = np.asarray(class_sizes, np.int64)
  num_classes = len(sizes)
  protocol = canonical_protocol(protocol)
  if protocol == "adacm":
    if total not in ADACM_TOTALS:
      raise ValueError(f"config.data.num_labels={total} is not an Ada-CM budget; use one of "
                       f"{sorted(ADACM_TOTALS)} or another config.data.label_protocol")
    fear, other = ADACM_TOTALS[total]
    budget = np.full(num_classes, other, np.int64)
    budget[FEAR] = fear
  elif protocol == "per_class":
    if labels_per_class <= 0:
      raise ValueError("config.data.labels_per_class must be > 0 with label_protocol='per_class' "
                       "(or choose another config.data.label_protocol, or "
                       "algorithm=full_supervised)")
    budget = np.full(num_classes, labels_per_class, np.int64)
  elif protocol == "total_equal":
    if total < num_classes:
      raise ValueError(f"config.data.num_labels={total} must be at least the {num_classes} classes "
                       "with label_protocol='total_equal'")
    budget = np.full(num_classes, total // num_classes, np.int64)
    if total % num_classes:
      logging.warning("total_equal: num_labels=%d is not a multiple of %d classes; %d per class "
                      "(%d labels in all)", total, num_classes, total // num_classes, budget.sum())
  elif protocol == "percent":
    if not 0 < percent <= 100:
      raise ValueError(f"config.data.label_percent={percent} must be in (0, 100] with "
                       "label_protocol='percent'")
    budget = stratified_counts(sizes, fractions.Fraction(str(float(percent))) / 100)
  else:  # long_tailed
    counts = [int(n) for n in counts]
    if len(counts) != num_classes:
      raise ValueError(f"config.data.label_counts has {len(counts)} values but the dataset has "
                       f"{num_classes} classes (label_protocol='long_tailed': one count per class, "
                       "most frequent class first)")
    budget = np.zeros(num_classes, np.int64)
    budget[np.argsort(-sizes, kind="stable")] = counts
  _check_budget(budget, sizes, protocol, class_names)
  return budget


def _check_budget(budget, sizes, protocol, class_names):
  """A class the training data does not have at all gets no labels (a warning names it);
  any other class must have at least its budget (a one-line error otherwise)."""
  for c, (n, size) in enumerate(zip(budget, sizes)):
    if size == 0 and n > 0:
      logging.warning("label split %r: class %d%s has no training example; it gets no labels",
                      protocol, c, f" ({class_names[c]})" if class_names is not None else "")
      budget[c] = 0
    elif n < 0 or n > size:
      name = f" ({class_names[c]})" if class_names is not None else ""
      raise ValueError(f"label split {protocol!r}: class {c}{name} has {size} training examples "
                       f"available but its label budget is {n}; lower the budget")


def _draw(labels, budget, rng, available) -> np.ndarray:
  chosen = [rng.permutation(np.flatnonzero((labels == c) & available))[:n]
            for c, n in enumerate(budget)]
  return np.sort(np.concatenate(chosen)).astype(np.int64)


def select_labeled(labels: np.ndarray, budget: np.ndarray, seed: int, exclude=None) -> np.ndarray:
  """Sorted indices: ``budget[c]`` random examples of each class c, none in ``exclude``."""
  available = np.ones(len(labels), bool)
  if exclude is not None:
    available[np.asarray(exclude, np.int64)] = False
  return _draw(np.asarray(labels), budget, np.random.default_rng([seed, 7919]), available)


def select_validation(labels: np.ndarray, fraction: float, seed: int, num_classes: int,
                      exclude=None) -> np.ndarray:
  """Sorted indices of a stratified held-out ``fraction`` of the examples not in ``exclude``."""
  if not 0 < fraction < 1:
    raise ValueError(f"config.eval.val_fraction={fraction} must be in [0, 1)")
  labels = np.asarray(labels)
  available = np.ones(len(labels), bool)
  if exclude is not None:
    available[np.asarray(exclude, np.int64)] = False
  sizes = np.bincount(labels[available], minlength=num_classes)
  return _draw(labels, stratified_counts(sizes, fraction),
               np.random.default_rng([seed, 104729]), available)


def class_counts(labels, ids, num_classes: int) -> list[int]:
  return [int(n) for n in np.bincount(np.asarray(labels)[np.asarray(ids, np.int64)],
                                      minlength=num_classes)]


def split_hash(ids) -> str:
  """sha256 of the sorted ids as decimal text joined by ','."""
  text = ",".join(str(int(i)) for i in np.sort(np.asarray(ids, np.int64)))
  return hashlib.sha256(text.encode()).hexdigest()


def write_ids(path, ids: np.ndarray, *, dataset: str, num_train: int, labels=None,
              num_classes: int = 0, val_ids=None, protocol: str = "") -> None:
  obj = {"dataset": dataset, "num_train": int(num_train), "protocol": protocol,
         "sha256": split_hash(ids), "num_labeled": int(len(ids))}
  if labels is not None:
    obj["per_class"] = class_counts(labels, ids, num_classes)
  obj["labeled_ids"] = [int(i) for i in ids]
  if val_ids is not None and len(val_ids):
    obj["val_sha256"] = split_hash(val_ids)
    obj["val_ids"] = [int(i) for i in val_ids]
  rundir.write_json(path, obj)


def read_split(path, *, dataset: str, num_train: int):
  """(labeled ids, held-out ids or None) from a ``labeled_ids.json``; its hashes are checked."""
  path = epath.Path(path)
  if not path.exists():
    raise FileNotFoundError(f"config.data.labeled_ids_file: {path} does not exist")
  try:
    obj = json.loads(path.read_text())
    ids = np.asarray(obj["labeled_ids"], np.int64)
    val = np.asarray(obj["val_ids"], np.int64) if "val_ids" in obj else None
  except (ValueError, KeyError, TypeError) as e:
    raise ValueError(f"{path}: not a labeled-ids file (expected JSON with 'labeled_ids'): {e}")
  if obj.get("dataset") not in (None, dataset) or obj.get("num_train") not in (None, num_train):
    raise ValueError(f"{path} was written for dataset={obj.get('dataset')!r} with "
                     f"{obj.get('num_train')} training examples, but this run has "
                     f"dataset={dataset!r} with {num_train}")
  for what, arr, key in (("labeled", ids, "sha256"), ("held-out", val, "val_sha256")):
    if arr is None:
      continue
    if arr.size and (arr.min() < 0 or arr.max() >= num_train or len(np.unique(arr)) != len(arr)):
      raise ValueError(f"{path}: {what} ids must be unique and in [0, {num_train})")
    if key in obj and obj[key] != split_hash(arr):
      raise ValueError(f"{path}: the {what} ids do not match the file's {key} (edited by hand?)")
  if val is not None and np.intersect1d(ids, val).size:
    raise ValueError(f"{path}: labeled_ids and val_ids overlap")
  return np.sort(ids), (None if val is None else np.sort(val))


def read_ids(path, *, dataset: str, num_train: int) -> np.ndarray:
  return read_split(path, dataset=dataset, num_train=num_train)[0]


def describe(ids, labels, class_names, val_ids=None) -> str:
  """One line: how many, per class, the hash (and the held-out part's)."""
  per = ", ".join(f"{name} {n}" for name, n in
                  zip(class_names, class_counts(labels, ids, len(class_names))))
  line = f"labeled split: {len(ids)} ids ({per}), sha256 {split_hash(ids)}"
  if val_ids is not None and len(val_ids):
    line += f"; held out for validation: {len(val_ids)} ids, sha256 {split_hash(val_ids)}"
  return line


def choose(labels, num_classes: int, dcfg, *, val=None, class_names=None):
  """(labeled ids, ``val``) for ``config.data`` (no ids file), none of them in ``val``."""
  labels = np.asarray(labels)
  available = np.ones(len(labels), bool)
  if val is not None:
    available[val] = False
  budget = per_class_budget(
      np.bincount(labels[available], minlength=num_classes), protocol=dcfg.label_protocol,
      labels_per_class=dcfg.labels_per_class, total=dcfg.num_labels,
      percent=dcfg.label_percent, counts=tuple(dcfg.label_counts), class_names=class_names)
  return select_labeled(labels, budget, dcfg.split_seed, exclude=val), val


def resolve(labels, dataset, dcfg, *, val_fraction: float = 0.0, all_labels: bool = False):
  """A run's (labeled ids, held-out ids or None): every example (fully supervised), the
  ids file, or a fresh draw. An ids file's own held-out ids are used when it has them;
  otherwise they are drawn from the examples the file does not label."""
  n = len(labels)
  if not 0 <= val_fraction < 1:
    raise ValueError(f"config.eval.val_fraction={val_fraction} must be in [0, 1)")
  if all_labels:  # fully supervised: every example not held out (an ids file is not read)
    val = (select_validation(labels, val_fraction, dcfg.split_seed, dataset.num_classes)
           if val_fraction > 0 else None)
    return np.setdiff1d(np.arange(n), val if val is not None else []).astype(np.int64), val
  if dcfg.labeled_ids_file:
    ids, val = read_split(dcfg.labeled_ids_file, dataset=dataset.name, num_train=n)
    if val is not None and val_fraction <= 0:
      logging.warning("%s holds %d held-out ids but config.eval.val_fraction=0: they are "
                      "trained on as unlabeled data", dcfg.labeled_ids_file, len(val))
      val = None
    elif val is None and val_fraction > 0:
      val = select_validation(labels, val_fraction, dcfg.split_seed, dataset.num_classes,
                              exclude=ids)
    return ids, val
  val = (select_validation(labels, val_fraction, dcfg.split_seed, dataset.num_classes)
         if val_fraction > 0 else None)
  return choose(labels, dataset.num_classes, dcfg, val=val, class_names=dataset.class_names)


# ---------------------------------------------------------------------------------------
# Command line: publish a split before training.

def main(argv):
  from absl import flags
  from ssfer_jax.config import base_config
  from ssfer_jax.data.datasets import load_dataset
  f = flags.FLAGS
  if len(argv) > 1:
    raise ValueError(f"unexpected arguments: {' '.join(argv[1:])}")
  c = base_config()
  c.dataset.name = f.dataset
  c.dataset.data_dir = f.data_dir
  d = c.data
  d.label_protocol, d.split_seed = f.protocol, f.seed
  d.labels_per_class, d.num_labels, d.label_percent = f.labels_per_class, f.num_labels, f.percent
  d.label_counts = tuple(int(x) for x in f.counts)
  dataset = load_dataset(c)
  labels = np.asarray(dataset.train.labels)
  ids, val = resolve(labels, dataset, d, val_fraction=f.val_fraction)
  write_ids(f.out, ids, dataset=dataset.name, num_train=len(labels), labels=labels,
            num_classes=dataset.num_classes, val_ids=val, protocol=canonical_protocol(f.protocol))
  print(describe(ids, labels, dataset.class_names, val))
  print(f"written to {f.out}; train with --config.data.labeled_ids_file={f.out}")


def _define_flags():
  from absl import flags
  flags.DEFINE_string("dataset", "synthetic", "config.dataset.name (synthetic needs no data_dir).")
  flags.DEFINE_string("data_dir", "", "Where the prepared TFDS datasets live.")
  flags.DEFINE_string("protocol", "per_class", f"One of {list(PROTOCOLS)} (or 'uniform').")
  flags.DEFINE_string("out", "labeled_ids.json", "The split file to write.")
  flags.DEFINE_integer("seed", 0, "config.data.split_seed.")
  flags.DEFINE_integer("labels_per_class", 10, "per_class: labels of every class.")
  flags.DEFINE_integer("num_labels", 0, "adacm / total_equal: total labels.")
  flags.DEFINE_float("percent", 0.0, "percent: % of the training set, stratified.")
  flags.DEFINE_list("counts", [], "long_tailed: per-class counts, most frequent class first.")
  flags.DEFINE_float("val_fraction", 0.0, "config.eval.val_fraction: stratified held-out part.")


if __name__ == "__main__":
  from ssfer_jax import cli
  _define_flags()
  cli.run_absl(main)
