r"""Input-pipeline throughput: unlabeled images/s (weak + strong view each), grain vs a plain loop.

    python bench/input_pipeline.py [--num_images=512] [--batches=12] [--sizes=112,224]

Builds a RAF-DB-format tree of 100x100 RGB JPEGs (synthetic faces) in a temp folder,
prepares it with the ``rafdb`` builder (ArrayRecord), then for every image size measures

* ``plain loop``: one Python loop with PIL + NumPy doing the same work per image: read
  and decode the JPEG file, resize to the size (``pipeline.fit_image``), the weak view
  (``augment.weak``) and the strong view (``augment.strong``: weak + RandAugment(3) +
  Cutout), in the same process;
* ``grain, N workers``: the project's unlabeled stream (``pipeline.unlabeled_stream``:
  TFDS ArrayRecord source -> shuffle -> repeat -> random_map(views) -> batch), with
  ``config.data.num_workers`` = 0 (threads in this process), 1 and 2 worker processes.

The first batch (worker start-up, file opening) is not timed. The table prints images/s.
"""

from __future__ import annotations

import os
import tempfile
import time

import common  # bench/common.py: the repository on sys.path, timing helpers
import numpy as np
from absl import flags
from PIL import Image

from ssfer_jax import cli

_NUM_IMAGES = flags.DEFINE_integer("num_images", 512, "Images in the benchmark dataset.")
_BATCHES = flags.DEFINE_integer("batches", 12, "Timed batches per grain configuration.")
_BATCH = flags.DEFINE_integer("batch", 32, "Unlabeled images per batch.")
_SIZES = flags.DEFINE_list("sizes", ["112", "224"], "Image sizes (px).")
_WORKERS = flags.DEFINE_list("workers", ["0", "1", "2"], "grain worker counts.")


def make_rafdb_tree(root: str, n: int) -> list[str]:
  """n synthetic 100x100 faces as a RAF-DB basic tree (train only + a small test split)."""
  from ssfer_jax.data import classes, synthetic
  data = synthetic.make_split("train", n + 7, seed=0, size=100)
  inv = {v: k for k, v in classes.RAFDB.items()}
  os.makedirs(os.path.join(root, "Image", "aligned"), exist_ok=True)
  os.makedirs(os.path.join(root, "EmoLabel"), exist_ok=True)
  lines, paths = [], []
  labels = data["label"].copy()
  labels[n:] = np.arange(7)                       # every class in the test split
  for i, (img, lab) in enumerate(zip(data["image"], labels)):
    name = f"train_{i + 1:05d}" if i < n else f"test_{i - n + 1:04d}"
    path = os.path.join(root, "Image", "aligned", name + "_aligned.jpg")
    Image.fromarray(img).save(path, quality=95)
    lines.append(f"{name}.jpg {inv[int(lab)]}")
    if i < n:
      paths.append(path)
  with open(os.path.join(root, "EmoLabel", "list_patition_label.txt"), "w") as f:
    f.write("\n".join(lines))
  return paths


def plain_loop(paths, size, count, seed=0):
  """images/s of a single-process PIL + NumPy loop doing the pipeline's per-image work."""
  from ssfer_jax.data import augment, pipeline
  rng = np.random.default_rng(seed)
  order = rng.permutation(len(paths))
  t = time.perf_counter()
  for k in range(count):
    with Image.open(paths[order[k % len(paths)]]) as im:
      img = pipeline.fit_image(np.asarray(im.convert("RGB")), size, 3)
    augment.weak(img, rng, 4)
    augment.strong(img, rng, 4, 3, 0.5)
  return count / (time.perf_counter() - t)


def grain_stream(data_dir, size, workers, batch, batches):
  """images/s of pipeline.unlabeled_stream over the prepared ArrayRecord dataset."""
  from ssfer_jax import algorithms
  from ssfer_jax.config import base_config
  from ssfer_jax.data import pipeline, tfds_sources
  c = base_config()
  c.dataset.name, c.dataset.data_dir = "rafdb", data_dir
  c.data.image_size, c.data.batch_size, c.data.uratio = size, batch, 1
  c.data.labels_per_class = 1
  c.data.num_workers = workers
  c.data.read_threads = 2 if workers == 0 else 1
  c.data.prefetch = 4
  ds = tfds_sources.load(c)
  algo = algorithms.get_algorithm("fixmatch")          # views: weak + strong
  train = pipeline.split_train(ds, c, algo)
  it = iter(pipeline.unlabeled_stream(train, c, ds.channels, algo.views))
  first = next(it)
  assert first["x_ulb_s"].shape == (batch, size, size, 3)
  rate = batch / common.per_call_s(lambda: next(it), batches)
  del it
  return rate


def main(argv):
  del argv
  from ssfer_jax.data.prepare import prepare
  machine = common.machine()  # the load before the timings
  with tempfile.TemporaryDirectory() as tmp:
    paths = make_rafdb_tree(os.path.join(tmp, "basic"), _NUM_IMAGES.value)
    prepare("rafdb", os.path.join(tmp, "basic"), os.path.join(tmp, "data"))
    workers = [int(w) for w in _WORKERS.value]
    rows = []
    for size in (int(s) for s in _SIZES.value):
      n = _BATCHES.value * _BATCH.value
      loop = plain_loop(paths, size, n)
      rates = [grain_stream(os.path.join(tmp, "data"), size, w, _BATCH.value, _BATCHES.value)
               for w in workers]
      rows.append((size, loop, rates))
  print(f"\nunlabeled images/s (weak + strong view each), {_NUM_IMAGES.value} 100x100 JPEGs, "
        f"batch {_BATCH.value}, {_BATCHES.value} timed batches; {common.machine_line(machine)}")
  head = f"{'size':>6} {'plain loop':>11}" + "".join(f" {f'grain {w}w':>10}" for w in workers)
  print(head)
  for size, loop, rates in rows:
    print(f"{size:>6} {loop:>11.0f}" + "".join(f" {r:>10.0f}" for r in rates)
          + "   (grain/loop: " + ", ".join(f"{r / loop:.2f}x" for r in rates) + ")")


if __name__ == "__main__":
  cli.run_absl(main)
