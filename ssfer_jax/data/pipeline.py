"""Grain input pipeline: labeled and unlabeled training streams, and the test batches.

    source --[per-host slice]--> shuffle / class-balanced order --> repeat
           --> random_map(views: weak / strong / second weak, from data/views.py)
           --> batch(local batch) --> [with a sharding] global arrays on the mesh

Each stream is a ``grain.MapDataset`` turned into a checkpointable iterator; the two
iterator states are saved with the train state (``checkpoint.py``), so a resumed run
reads exactly the batches an uninterrupted one would have read. Images stay uint8
until the device normalises them; both halves of that feeding rule are in ``images.py``.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Mapping

import grain
import jax
import numpy as np

from ssfer_jax import parallel
from ssfer_jax.data import augment, images, splits
from ssfer_jax.data import views as views_lib
from ssfer_jax.data.sources import SubsetSource


# The one image-feeding rule (resize, grey <-> RGB) lives in data/images.py; the old name
# stays for callers outside the package (bench/).
fit_image = images.fit


class BalancedOrder:
  """Class-balanced infinite index stream: position k has class perm_b[k % C] for block
  b = k // C (a seeded shuffle of the classes), and walks that class's own seeded
  permutation, re-drawn every time the class is exhausted. Pure function of (seed, k)."""

  def __init__(self, labels: np.ndarray, num_classes: int, seed: int):
    self.by_class = [np.flatnonzero(labels == c) for c in range(num_classes)]
    self.present = [c for c in range(num_classes) if len(self.by_class[c])]
    self.seed = seed

  def __len__(self):
    return sys.maxsize

  def __getitem__(self, k):
    k = int(k)
    n = len(self.present)
    block, pos = divmod(k, n)
    c = self.present[np.random.default_rng([self.seed, 1, block]).permutation(n)[pos]]
    members = self.by_class[c]
    epoch, j = divmod(block, len(members))
    return int(members[np.random.default_rng([self.seed, 2, c, epoch]).permutation(len(members))[j]])


class LabeledView(grain.transforms.RandomMap):
  def __init__(self, size, channels, pad):
    self.size, self.channels, self.pad = size, channels, pad

  def random_map(self, item, rng):
    img = images.fit(item["image"], self.size, self.channels)
    return {"x_lb": augment.weak(img, rng, self.pad), "y_lb": np.int32(item["label"])}


class UnlabeledViews(grain.transforms.RandomMap):
  """Makes ``x_<view>`` for every ``{view: augmentation}`` entry (``data/views.py``), in
  order, from one per-element generator."""

  def __init__(self, size, channels, pad, views, ra_n, cutout):
    self.size, self.channels, self.pad = size, channels, pad
    self.views, self.ra_n, self.cutout = dict(views), ra_n, cutout

  def random_map(self, item, rng):
    img = images.fit(item["image"], self.size, self.channels)
    out = {"idx_ulb": np.int32(item["index"]), "y_ulb": np.int32(item.get("label", -1))}
    for view, augmentation in self.views.items():
      out["x_" + view] = views_lib.make(augmentation, img, rng, pad=self.pad,
                                        randaugment_n=self.ra_n, cutout=self.cutout)
    return out


@dataclasses.dataclass
class TrainData:
  """The training streams of one run, with what the rest of the trainer needs to know."""
  labeled: SubsetSource
  unlabeled: SubsetSource | None
  labeled_ids: np.ndarray
  steps_per_epoch: int
  val_ids: np.ndarray | None = None   # held out for model selection (config.eval.val_fraction)
  split_hash: str = ""                # splits.split_hash(labeled_ids)


def split_train(dataset, config, algorithm, workdir=None) -> TrainData:
  """Chooses the labeled ids (budget or file) and the held-out validation ids
  (``config.eval.val_fraction``), writes them to the workdir and prints their hash."""
  train = dataset.train
  n = len(train)
  dcfg = config.data
  labels = np.asarray(train.labels)
  val_fraction = float(config.eval.val_fraction)
  ids, val = splits.resolve(labels, dataset, dcfg, val_fraction=val_fraction,
                            all_labels=algorithm.uses_all_labels)
  if workdir is not None and jax.process_index() == 0:
    protocol = ("all" if algorithm.uses_all_labels else "file" if dcfg.labeled_ids_file
                else splits.canonical_protocol(dcfg.label_protocol))
    splits.write_ids(f"{workdir}/labeled_ids.json", ids, dataset=dataset.name, num_train=n,
                     labels=labels, num_classes=dataset.num_classes, val_ids=val,
                     protocol=protocol)
  labeled = SubsetSource(train, ids)
  unlabeled = None
  if algorithm.uses_unlabeled:
    rest = np.arange(n) if dcfg.unlabeled_includes_labeled else np.setdiff1d(np.arange(n), ids)
    if val is not None:
      rest = np.setdiff1d(rest, val)
    unlabeled = SubsetSource(train, rest)
  if unlabeled is not None:
    steps = max(1, len(unlabeled) // (dcfg.batch_size * dcfg.uratio))
  else:
    steps = max(1, len(labeled) // dcfg.batch_size)
  return TrainData(labeled, unlabeled, ids, steps, val_ids=val, split_hash=splits.split_hash(ids))


def _host_slice(source_len: int):
  """Indices this process reads (every process_count-th row, from its index)."""
  return np.arange(jax.process_index(), source_len, jax.process_count())


def _finish(ds, batch_size, dcfg):
  ds = ds.batch(batch_size, drop_remainder=True)
  it_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=dcfg.read_threads,
                                               prefetch_buffer_size=dcfg.prefetch))
  if dcfg.num_workers > 0:
    it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=dcfg.num_workers))
  return it_ds


def _local_batch(global_size: int, what: str) -> int:
  if global_size % jax.process_count():
    raise ValueError(f"{what}={global_size} must be divisible by the {jax.process_count()} processes")
  return global_size // jax.process_count()


def labeled_stream(train: TrainData, config, channels: int):
  dcfg = config.data
  host_rows = _host_slice(len(train.labeled))
  local = SubsetSource(train.labeled, host_rows)
  if dcfg.class_balanced:
    order = BalancedOrder(np.asarray(local.labels), int(np.max(train.labeled.labels)) + 1,
                          seed=config.seed)
    ds = grain.MapDataset.source(order).map(_Lookup(local))
  else:
    ds = grain.MapDataset.source(local).seed(config.seed).shuffle().repeat()
  ds = ds.seed(config.seed + 1).random_map(LabeledView(dcfg.image_size, channels, dcfg.crop_pad))
  return _finish(ds, _local_batch(dcfg.batch_size, "config.data.batch_size"), dcfg)


def unlabeled_stream(train: TrainData, config, channels: int, views):
  """``views``: ``{view: augmentation}`` (``views.augmentations``), or standard view names."""
  dcfg = config.data
  if not isinstance(views, Mapping):
    views = views_lib.resolve(views)
  host_rows = _host_slice(len(train.unlabeled))
  local = _Reindexed(train.unlabeled, host_rows)
  ds = grain.MapDataset.source(local).seed(config.seed + 2).shuffle().repeat()
  ds = ds.seed(config.seed + 3).random_map(UnlabeledViews(
      dcfg.image_size, channels, dcfg.crop_pad, views, dcfg.randaugment_n, dcfg.cutout))
  return _finish(ds, _local_batch(dcfg.batch_size * dcfg.uratio, "batch_size * uratio"), dcfg)


class _Lookup(grain.transforms.Map):
  """index -> source[index] (a picklable class, for grain worker processes)."""

  def __init__(self, source):
    self.source = source

  def map(self, i):
    return self.source[i]


class _Reindexed:
  """Rows ``rows`` of a SubsetSource, keeping its ``index`` (position in the full unlabeled set)."""

  def __init__(self, source, rows):
    self.source, self.rows = source, np.asarray(rows)

  def __len__(self):
    return len(self.rows)

  def __getitem__(self, i):
    return self.source[int(self.rows[int(i)])]


class TrainBatches:
  """Merged labeled + unlabeled batches; ``get_state`` / ``set_state`` for checkpoints.

  With ``sharding`` (the trainer's batch sharding) each batch is yielded as global
  ``jax.Array``s already placed on the mesh: this process's rows (its ``_host_slice`` of
  each stream) become its block of the global batch (``parallel.global_batch``), so the
  loop just calls ``next`` and the step. Without it, this process's numpy rows (tests and
  benchmarks that look at the host data). The put is host -> device only, so it may run
  under the loop's device -> host transfer guard; the iterator state is the grain
  iterators' own, unaffected by where the batch is put."""

  def __init__(self, train: TrainData, config, algorithm, channels: int = 3, sharding=None):
    self.sharding = sharding
    self._lb_ds = labeled_stream(train, config, channels)
    self._ulb_ds = (unlabeled_stream(train, config, channels,
                                     views_lib.augmentations(algorithm, config.algo))
                    if algorithm.uses_unlabeled else None)
    self.lb = iter(self._lb_ds)
    self.ulb = iter(self._ulb_ds) if self._ulb_ds is not None else None

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    batch = dict(next(self.lb))
    if self.ulb is not None:
      batch.update(next(self.ulb))
    if self.sharding is not None:
      return parallel.global_batch(batch, self.sharding)
    return batch

  def get_state(self) -> dict:
    return {"labeled": self.lb.get_state(),
            "unlabeled": self.ulb.get_state() if self.ulb is not None else None}

  def set_state(self, state: dict) -> None:
    self.lb.set_state(state["labeled"])
    if self.ulb is not None:
      self.ulb.set_state(state["unlabeled"])


def eval_arrays(source, size: int, channels: int = 3):
  """The whole evaluation split decoded once: (images uint8 (N,size,size,C), labels)."""
  fitted = np.stack([images.fit(source[i]["image"], size, channels) for i in range(len(source))]
                    ) if len(source) else np.zeros((0, size, size, channels), np.uint8)
  return fitted, np.asarray(source.labels, np.int32)


def eval_batches(images, labels, global_batch: int):
  """Fixed-size global batches covering every example once; padding rows have valid=0.
  Yields this process's rows of each global batch."""
  n = len(labels)
  local = _local_batch(global_batch, "config.eval.batch_size")
  lo_row = jax.process_index() * local
  for start in range(0, n, global_batch):
    idx = np.arange(start + lo_row, start + lo_row + local)
    valid = idx < n
    idx = np.where(valid, idx, 0)
    yield images[idx], labels[idx], valid
