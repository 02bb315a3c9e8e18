"""Checkpointable input: TrainBatches restored with set_state continues exactly like an
uninterrupted iterator (shuffled and class-balanced labeled streams, unlabeled stream),
for an in-memory source and for a prepared TFDS (ArrayRecord) source."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ssfer_jax import algorithms
from ssfer_jax.config import base_config
from ssfer_jax.data import pipeline, sources, tfds_sources
from ssfer_jax.data.classes import CANONICAL7
from ssfer_jax.data.prepare import prepare
from tests import fixtures


def _config(class_balanced, num_workers=0, name="synthetic", data_dir=""):
  c = base_config()
  c.dataset.name, c.dataset.data_dir = name, data_dir
  c.data.image_size = fixtures.SIZE
  c.data.batch_size = 4
  c.data.uratio = 2
  c.data.labels_per_class = 2
  c.data.class_balanced = class_balanced
  c.data.num_workers = num_workers
  c.data.read_threads = 1
  c.data.prefetch = 2
  return c


def _array_dataset():
  rng = np.random.default_rng(0)
  labels = np.repeat(np.arange(7), [6, 9, 4, 3, 2, 3, 3]).astype(np.int32)
  images = rng.integers(0, 255, (len(labels), fixtures.SIZE, fixtures.SIZE, 3), np.uint8)
  src = sources.ArraySource(images, labels)
  return sources.Dataset("synthetic", src, src, 7, CANONICAL7)


@pytest.fixture(scope="module")
def tfds_dataset(tmp_path_factory):
  root = tmp_path_factory.mktemp("resume")
  fixtures.write_rafdb(root / "basic", per_class=(3, 1))
  prepare("rafdb", root / "basic", root / "data")
  return tfds_sources.load(_config(False, name="rafdb", data_dir=str(root / "data"))), str(root / "data")


def _batches(ds, config, algo, state=None, sharding=None):
  it = pipeline.TrainBatches(pipeline.split_train(ds, config, algo), config, algo,
                             sharding=sharding)
  if state is not None:
    it.set_state(state)
  return it


def _assert_same(a, b):
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def _check_resume(ds, config, k=3, n=4, reference_config=None):
  algo = algorithms.get_algorithm("fixmatch")
  reference = _batches(ds, reference_config or config, algo)
  expected = [next(reference) for _ in range(k + n)]
  first = _batches(ds, config, algo)
  for i in range(k):
    _assert_same(next(first), expected[i])
  state = json.loads(json.dumps(first.get_state(), default=lambda b: b.decode()))  # as saved
  state = {key: (v.encode() if isinstance(v, str) else v) for key, v in state.items()}
  resumed = _batches(ds, config, algo, state)
  for i in range(k, k + n):
    _assert_same(next(resumed), expected[i])
  # the stream does move on: later batches differ from the first ones
  assert not np.array_equal(expected[k]["x_lb"], expected[0]["x_lb"])


@pytest.mark.parametrize("class_balanced", [False, True])
def test_resume_in_memory(class_balanced):
  _check_resume(_array_dataset(), _config(class_balanced))


@pytest.mark.parametrize("class_balanced", [False, True])
def test_resume_tfds_source(tfds_dataset, class_balanced):
  ds, data_dir = tfds_dataset
  _check_resume(ds, _config(class_balanced, name="rafdb", data_dir=data_dir))


def test_resume_with_worker_process(tfds_dataset):
  """One grain worker process: the TFDS source pickles, the worker reads the same batches as
  the in-process pipeline, and its state restores."""
  from absl import flags
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()  # grain reads its absl flags in the parent (SPEC §6)
  ds, data_dir = tfds_dataset
  _check_resume(ds, _config(True, num_workers=1, name="rafdb", data_dir=data_dir), k=2, n=2,
                reference_config=_config(True, name="rafdb", data_dir=data_dir))


def test_batches_on_the_mesh_equal_the_host_rows_and_resume_exactly():
  """With the trainer's batch sharding the iterator yields global arrays split over the
  devices, holding the host iterator's rows; its state restores to the same batches."""
  import jax
  from ssfer_jax import parallel

  mesh = parallel.make_mesh(base_config().mesh, jax.devices()[:4])
  sharding = parallel.batch_sharding(mesh)
  ds, config, algo = _array_dataset(), _config(False), algorithms.get_algorithm("fixmatch")
  host = _batches(ds, config, algo)
  expected = [next(host) for _ in range(4)]
  on_mesh = _batches(ds, config, algo, sharding=sharding)
  first = next(on_mesh)
  for k, v in first.items():
    assert isinstance(v, jax.Array) and v.sharding == sharding, k
    assert len(v.addressable_shards) == 4 and v.addressable_shards[0].data.shape[0] == len(v) // 4
  _assert_same(first, expected[0])
  next(on_mesh)
  resumed = _batches(ds, config, algo, on_mesh.get_state(), sharding=sharding)
  for i in (2, 3):
    _assert_same(next(resumed), expected[i])
