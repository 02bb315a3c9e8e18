"""Real faces: the CK+ frames shipped in the EmoPy 0.0.5 wheel (SPEC §5), laid out as an
image folder and as a RAF-DB tree, built with the builders, and trained on for a few steps.

The wheel is fetched with pip into the git-ignored tests/.cache/ at test time (its licence
forbids redistribution: never commit the images); the test skips when that fails (offline).
"""

from __future__ import annotations

import glob
import io
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest
from PIL import Image

from conftest import tiny_config
from ssfer_jax.data import classes, tfds_sources
from ssfer_jax.data.prepare import prepare, summary

CACHE = os.path.join(os.path.dirname(__file__), ".cache", "ckplus")
PREFIX = "EmoPy/examples/image_data/"
# wheel folder / file-name word -> canonical class name
WORDS = {"anger": "anger", "happiness": "happiness", "happy": "happiness", "surprise": "surprise",
         "disgust": "disgust"}
NEUTRAL_PER_SPLIT = (12, 6)     # of the 80 neutral first frames, keep a few (speed, balance)


def _wheel() -> str:
  found = glob.glob(os.path.join(CACHE, "EmoPy-0.0.5-*.whl"))
  if found:
    return found[0]
  os.makedirs(CACHE, exist_ok=True)
  try:
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                    "--python-version", "3.6.9", "emopy==0.0.5", "-d", CACHE, "-q"],
                   check=True, capture_output=True, timeout=120)
  except (subprocess.SubprocessError, OSError) as e:
    pytest.skip(f"could not download the EmoPy wheel with the CK+ frames (offline?): {e}")
  found = glob.glob(os.path.join(CACHE, "EmoPy-0.0.5-*.whl"))
  if not found:
    pytest.skip("pip download succeeded but no EmoPy-0.0.5 wheel appeared")
  return found[0]


def ckplus_frames():
  """[(subject_sequence, canonical class, PNG bytes)] of the 101 frames, sorted by path."""
  out = []
  with zipfile.ZipFile(_wheel()) as z:
    for name in sorted(z.namelist()):
      if not name.startswith(PREFIX) or not name.endswith(".png"):
        continue
      rel = name[len(PREFIX):]
      parts = rel.split("/")
      if parts[0] == "sample_image_series_directory":
        label = "neutral"                              # first frames of each sequence
      elif parts[0] == "sample_image_directory":
        label = WORDS[parts[1]]
      else:                                            # sample_<word>_image*.png
        label = WORDS[parts[0].split("_")[1]]
      out.append((rel, classes.CANONICAL7.index(label), z.read(name)))
  return out


@pytest.fixture(scope="module")
def frames():
  f = ckplus_frames()
  assert len(f) == 101
  counts = np.bincount([c for _, c, _ in f], minlength=7)
  assert counts[classes.CANONICAL7.index("neutral")] == 80 and counts.sum() - 80 == 21
  return f


def _split(frames):
  """Every third expressive frame goes to test; a few neutral frames to each split."""
  train, test, seen = [], [], {}
  neutral = classes.CANONICAL7.index("neutral")
  for rel, c, data in frames:
    k = seen.get(c, 0)
    seen[c] = k + 1
    if c == neutral:
      if k < NEUTRAL_PER_SPLIT[0]:
        train.append((rel, c, data))
      elif k < sum(NEUTRAL_PER_SPLIT):
        test.append((rel, c, data))
    elif c == classes.CANONICAL7.index("disgust"):
      train.append((rel, c, data))                   # a single disgust frame
    else:
      (test if k % 3 == 2 else train).append((rel, c, data))
  return {"train": train, "test": test}


def _write_image_folder(root, splits):
  for split, items in splits.items():
    for rel, c, data in items:
      path = os.path.join(root, split, classes.CANONICAL7[c], rel.replace("/", "__"))
      os.makedirs(os.path.dirname(path), exist_ok=True)
      with open(path, "wb") as f:
        f.write(data)


def _write_rafdb(root, splits):
  """The RAF-DB basic layout: 100x100 RGB aligned JPEGs and the label list."""
  inv = {v: k for k, v in classes.RAFDB.items()}
  os.makedirs(os.path.join(root, "Image", "aligned"), exist_ok=True)
  os.makedirs(os.path.join(root, "EmoLabel"), exist_ok=True)
  lines = []
  for split, width in (("train", 5), ("test", 4)):
    for k, (_, c, data) in enumerate(splits[split], 1):
      name = f"{split}_{k:0{width}d}"
      img = Image.open(io.BytesIO(data)).convert("RGB").resize((100, 100), Image.BILINEAR)
      img.save(os.path.join(root, "Image", "aligned", name + "_aligned.jpg"), quality=95)
      lines.append(f"{name}.jpg {inv[c]}")
  with open(os.path.join(root, "EmoLabel", "list_patition_label.txt"), "w") as f:
    f.write("\n".join(lines))


def _expected_counts(items):
  return np.bincount([c for _, c, _ in items], minlength=7)


def test_ckplus_image_folder_and_rafdb_layouts_build_and_train(frames, tmp_path):
  splits = _split(frames)
  _write_image_folder(str(tmp_path / "folder"), splits)
  _write_rafdb(str(tmp_path / "raf"), splits)

  b_folder = prepare("image_folder", tmp_path / "folder", tmp_path / "data_folder",
                     allow_empty_classes=True)
  b_raf = prepare("rafdb", tmp_path / "raf", tmp_path / "data_raf", allow_empty_classes=True)
  for b in (b_folder, b_raf):
    meta = b.info.metadata
    assert meta["class_names"] == list(classes.CANONICAL7)
    for split in ("train", "test"):
      got = np.array(list(meta["report"][split]["per_class"].values()))
      np.testing.assert_array_equal(got, _expected_counts(splits[split]))
    assert meta["report"]["test"]["events"]["empty_class"] == 1   # fear,sadness,disgust missing
  # CK+ frames are grey: every one was converted (and counted) for the RGB image folder
  converted = sum(v for s in ("train", "test")
                  for k, v in b_folder.info.metadata["report"][s]["events"].items()
                  if k.startswith("converted_"))
  assert converted == sum(len(v) for v in splits.values())
  assert "0 neutral" in summary(b_folder)

  from ssfer_jax import algorithms, train
  from ssfer_jax.data import pipeline
  for name, data_dir, shape in (("image_folder", tmp_path / "data_folder", (490, 640, 3)),
                                ("rafdb", tmp_path / "data_raf", (100, 100, 3))):
    cfg = tiny_config("fixmatch", **{
        "dataset.name": name, "dataset.data_dir": str(data_dir), "data.image_size": 32,
        "data.labels_per_class": 1, "train.num_steps": 3, "train.eval_every": 3,
        "train.checkpoint_every": 3, "train.log_every": 3, "model.backbone": "small_cnn"})
    ds = tfds_sources.load(cfg)
    assert ds.train[0]["image"].shape == shape and ds.train[0]["image"].dtype == np.uint8
    np.testing.assert_array_equal(np.bincount(ds.test.labels, minlength=7),
                                  _expected_counts(splits["test"]))
    if name == "image_folder":   # the grain pipeline on full-size real frames
      algo = algorithms.get_algorithm("fixmatch")
      batch = next(pipeline.TrainBatches(pipeline.split_train(ds, cfg, algo), cfg, algo))
      assert batch["x_lb"].shape == (8, 32, 32, 3) and batch["x_ulb_s"].shape == (16, 32, 32, 3)
      assert set(batch["y_lb"].tolist()) <= {0, 1, 3, 5, 6}
      continue
    result = train.run(cfg, tmp_path / f"work_{name}")   # the trainer on the RAF-DB tree
    assert result["dataset"] == name and result["num_steps"] == 3
    # 1 per class present (a budget above a class's size, e.g. 2 for disgust's 1, is an error)
    assert result["num_labeled"] == 5
    assert 0.0 <= result["teacher"]["final_top1"] <= 1.0
    assert all(np.isfinite(v) for v in result["train"].values()), result["train"]
