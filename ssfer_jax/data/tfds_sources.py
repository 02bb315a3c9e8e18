"""Real datasets as data sources: ``load(config) -> sources.Dataset`` from prepared TFDS data.

``config.dataset.name`` is one of rafdb, affectnet7, affectnet8, fer2013, ferplus, sfew,
image_folder, csv_list (builders in ``ssfer_jax/data/builders``); ``config.dataset.data_dir``
is where ``python -m ssfer_jax.data.prepare`` wrote it. Options under
``config.dataset.builder_kwargs``:

* ``num_classes`` (ferplus only): 8 (default) or 7, the prepared FERPlus config to read.
* ``test_split``: read this split as the test set instead of the builder's (e.g.
  ``validation`` for FER2013's PublicTest).

Items are ``{'image': uint8 (H, W, C), 'label': int}`` and each source has a ``labels``
array, read once from the records with image decoding skipped (the contract of
``sources.py``). Sources pickle as (name, data_dir, split) and reopen lazily, so grain
worker processes can use them.

TFDS without TensorFlow (checked with tensorflow-datasets 4.9.10, array-record 0.8.6,
Python 3.11, TensorFlow not installed; the tests in ``tests/test_builders.py`` repeat it):

* ``builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
  manual_dir=...))`` works for ``GeneratorBasedBuilder``s that live in an importable
  package and yield *encoded* image bytes (or paths) with ``file_format='array_record'``.
  Yielding numpy images does not: TFDS encodes them through a TensorFlow graph. So the
  builders pass JPEG/PNG bytes through and encode FER2013's pixel rows as PNG with PIL.
  TFDS's progress bars, key-hash shuffling, duplicate-key check and ``metadata.json``
  (``tfds.core.MetadataDict``) all work.
* ``tfds.data_source(name, split=..., data_dir=..., download=False)`` works: records are
  parsed with TFDS's numpy example parser and images decoded with PIL (OpenCV when
  installed). ``decoders={'image': tfds.decode.SkipDecoding()}`` returns the encoded bytes
  instead, which is how ``labels`` is read without decoding images. The data source pickles.
* The ``tfds build`` command line imports TensorFlow and fails; prepare from Python
  (``ssfer_jax.data.prepare``) instead.
"""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from ssfer_jax.data import builders, sources

_LABEL_CHUNK = 2048


def _builder_name(builder) -> str:
  config = builder.builder_config.name if builder.builder_config else None
  return builder.name + (f"/{config}" if config else "")


def read_labels(name: str, data_dir: str, split: str) -> np.ndarray:
  """All labels of a prepared split, in record order, without decoding images."""
  src = tfds.data_source(name, split=split, data_dir=data_dir, download=False,
                         decoders={"image": tfds.decode.SkipDecoding()})
  out = np.empty(len(src), np.int32)
  for start in range(0, len(src), _LABEL_CHUNK):
    stop = min(start + _LABEL_CHUNK, len(src))
    out[start:stop] = [int(ex["label"]) for ex in src.__getitems__(list(range(start, stop)))]
  return out


class TfdsSource:
  """One split of a prepared dataset: ``source[i] -> {'image', 'label'}`` plus ``labels``."""

  def __init__(self, name: str, data_dir: str, split: str, labels: np.ndarray | None = None):
    self.name, self.data_dir, self.split = name, str(data_dir), split
    self._source = None
    self.labels = read_labels(name, self.data_dir, split) if labels is None else labels

  def _open(self):
    if self._source is None:
      self._source = tfds.data_source(self.name, split=self.split, data_dir=self.data_dir,
                                      download=False)
    return self._source

  def __len__(self):
    return len(self.labels)

  def __getitem__(self, i):
    ex = self._open()[int(i)]
    return {"image": ex["image"], "label": np.int32(ex["label"])}

  def __getstate__(self):
    return {"name": self.name, "data_dir": self.data_dir, "split": self.split,
            "labels": self.labels}

  def __setstate__(self, state):
    self.__init__(**state)

  def __repr__(self):
    return f"TfdsSource({self.name!r}, split={self.split!r}, n={len(self)})"


def is_prepared(builder) -> bool:
  return (epath.Path(builder.data_dir) / "dataset_info.json").exists()


def prepare_command(dataset: str, data_dir) -> str:
  return (f"python -m ssfer_jax.data.prepare --dataset={dataset} --manual_dir=<your download> "
          f"--data_dir={data_dir}")


def load(config) -> sources.Dataset:
  """The prepared dataset ``config.dataset.name`` from ``config.dataset.data_dir``."""
  name = config.dataset.name
  data_dir = config.dataset.data_dir
  kw = dict(config.dataset.get("builder_kwargs", None) or {})
  unknown = sorted(set(kw) - {"num_classes", "test_split"})
  if unknown:
    raise ValueError(f"unknown config.dataset.builder_kwargs key(s) {unknown}; reading takes "
                     "num_classes (ferplus) and test_split. Preparation options "
                     f"({', '.join(builders.PREPARE_OPTIONS)}) are flags of ssfer_jax.data.prepare")
  if not data_dir:
    raise ValueError(f"config.dataset.data_dir is empty; set it to the folder you prepared "
                     f"{name!r} into ({prepare_command(name, '<data_dir>')})")
  if kw.get("num_classes") and name != "ferplus":
    raise ValueError("config.dataset.builder_kwargs.num_classes only applies to ferplus "
                     "(use affectnet7 / affectnet8 for AffectNet)")
  builder = builders.builder_for(name, data_dir=data_dir, num_classes=kw.get("num_classes"))
  if not is_prepared(builder):
    raise FileNotFoundError(f"dataset {name!r} is not prepared in {builder.data_dir}; run\n  "
                            f"{prepare_command(name, data_dir)}")
  meta = builder.info.metadata or {}
  class_names = tuple(meta.get("class_names") or builder.info.features["label"].names)
  test_split = kw.get("test_split") or meta.get("test_split") or builder.TEST_SPLIT
  splits = set(builder.info.splits.keys())
  if test_split not in splits or "train" not in splits:
    raise ValueError(f"{builder.data_dir} has splits {sorted(splits)}; need 'train' and "
                     f"{test_split!r} (config.dataset.builder_kwargs.test_split)")
  tfds_name = _builder_name(builder)
  train = TfdsSource(tfds_name, data_dir, "train")
  test = TfdsSource(tfds_name, data_dir, test_split)
  return sources.Dataset(name, train, test, len(class_names), class_names,
                         channels=builder.CHANNELS)
