"""``load_dataset(config) -> Dataset``: the dataset a config names, as random-access sources.

The built-in synthetic faces are generated in memory; every other name is a prepared TFDS
dataset (``data/tfds_sources.py``, imported only then: it pulls in tensorflow_datasets).
"""

from __future__ import annotations

from ssfer_jax.data import synthetic
from ssfer_jax.data.classes import class_names as canonical_names
from ssfer_jax.data.sources import ArraySource, Dataset


def load_dataset(config) -> Dataset:
  name = config.dataset.name
  if name == "synthetic":
    kw = dict(seed=config.dataset.seed, size=config.dataset.render_size,
              nuisance=config.dataset.nuisance)
    train = synthetic.make_split("train", config.dataset.num_train, **kw)
    test = synthetic.make_split("test", config.dataset.num_test, **kw)
    return Dataset(name, ArraySource(train["image"], train["label"]),
                   ArraySource(test["image"], test["label"]), 7, canonical_names(7))
  from ssfer_jax.data import tfds_sources  # real datasets (TFDS ArrayRecord)
  return tfds_sources.load(config)
