"""Writers of tiny fixture datasets in the exact official formats (SPEC §4), for tests.

Every image is a uniform colour that encodes its canonical label (``label_value``), so a
test can check that image and label stay paired all the way through a builder, the TFDS
records and the grain pipeline. Each writer returns ``{split: [(file_name, label), ...]}``
with the canonical labels the builder must produce.
"""

from __future__ import annotations

import csv
import os

import numpy as np
from PIL import Image

from ssfer_jax.data import classes

SIZE = 12


def label_value(label: int) -> int:
  """The grey level of every pixel of a fixture image of canonical class ``label``."""
  return 30 + 28 * int(label)


def write_image(path, label: int, *, mode: str = "RGB", size: int = SIZE, fmt: str | None = None):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  v = label_value(label)
  img = Image.new("L", (size, size), v)
  if mode != "L":
    img = img.convert(mode)
  jpeg = (fmt or "").upper() == "JPEG" or (fmt is None and str(path).lower().endswith((".jpg", ".jpeg")))
  img.save(path, format=fmt, **({"quality": 100} if jpeg else {}))


def _inverse(mapping):
  return {v: k for k, v in mapping.items()}


def write_rafdb(root, per_class=(2, 1), *, trailing_newline=False):
  """basic/EmoLabel/list_patition_label.txt + basic/Image/aligned/*_aligned.jpg."""
  inv = _inverse(classes.RAFDB)
  lines, expected = [], {"train": [], "test": []}
  for split, n, width in (("train", per_class[0], 5), ("test", per_class[1], 4)):
    k = 0
    for rep in range(n):
      for c in range(7):
        k += 1
        name = f"{split}_{k:0{width}d}.jpg"
        lines.append(f"{name} {inv[c]}")
        write_image(os.path.join(root, "Image", "aligned", name[:-4] + "_aligned.jpg"), c)
        expected[split].append((name, c))
  os.makedirs(os.path.join(root, "EmoLabel"), exist_ok=True)
  with open(os.path.join(root, "EmoLabel", "list_patition_label.txt"), "w") as f:
    f.write("\n".join(lines) + ("\n" if trailing_newline else ""))
  return expected


AFFECTNET_HEADER = ["subDirectory_filePath", "face_x", "face_y", "face_width", "face_height",
                    "facial_landmarks", "expression", "valence", "arousal"]


def write_affectnet(root, per_class=(2, 1), *, validation_header=False, extra_codes=(7, 8, 9, 10),
                    training_columns=None):
  """Manually_Annotated_file_lists/{training,validation}.csv + Manually_Annotated_Images/.

  Rows of codes 0-6 per_class times, plus one row of each code in ``extra_codes``.
  ``validation_header``: False (none, the columns in the official order), True (the
  official header) or a list: that column order, with its header. ``training_columns``:
  training.csv's column order (default the official one). Returns expected labels for
  the 8-class config (contempt = 7 kept)."""
  expected = {"train": [], "validation": []}
  lists = os.path.join(root, "Manually_Annotated_file_lists")
  os.makedirs(lists, exist_ok=True)
  k = 0
  for split, fname, n in (("train", "training.csv", per_class[0]),
                          ("validation", "validation.csv", per_class[1])):
    rows = []
    codes = [c for _ in range(n) for c in range(7)] + list(extra_codes)
    for code in codes:
      k += 1
      rel = f"{100 + k % 3}/img{k:04d}.jpg"
      canon = classes.AFFECTNET.get(code)
      write_image(os.path.join(root, "Manually_Annotated_Images", rel),
                  canon if canon is not None else 0)
      rows.append([rel, 10, 10, 80, 80, "1.0;2.0;3.0", code, 0.1, -0.2])
      if canon is not None:
        expected[split].append((rel, canon))
    order = training_columns if split == "train" else validation_header
    order = list(order) if isinstance(order, (list, tuple)) else AFFECTNET_HEADER
    with open(os.path.join(lists, fname), "w", newline="") as f:
      w = csv.writer(f)
      if split == "train" or validation_header:
        w.writerow(order)
      w.writerows([[row[AFFECTNET_HEADER.index(c)] for c in order] for row in rows])
  return expected


FER_SPLITS = {"train": "Training", "validation": "PublicTest", "test": "PrivateTest"}


def fer_rows(per_class=(2, 1, 1)):
  """[(usage, fer_code, canonical)] in file order: 7 classes per_class times per split."""
  inv = _inverse(classes.FER2013)
  rows = []
  for (split, usage), n in zip(FER_SPLITS.items(), per_class):
    for _ in range(n):
      for c in range(7):
        rows.append((usage, inv[c], c))
  return rows


def write_fer2013(root, per_class=(2, 1, 1), *, icml=False):
  """fer2013.csv (emotion,pixels,Usage) or icml_face_data.csv (emotion, Usage, pixels)."""
  rows = fer_rows(per_class)
  os.makedirs(root, exist_ok=True)
  path = os.path.join(root, "icml_face_data.csv" if icml else "fer2013.csv")
  split_of = {u: s for s, u in FER_SPLITS.items()}
  expected = {s: [] for s in FER_SPLITS}
  with open(path, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["emotion", " Usage", " pixels"] if icml else ["emotion", "pixels", "Usage"])
    for i, (usage, code, canon) in enumerate(rows):
      px = " ".join([str(label_value(canon))] * (48 * 48))
      w.writerow([code, usage, px] if icml else [code, px, usage])
      expected[split_of[usage]].append((f"fer{i:07d}.png", canon))
  return expected


def write_ferplus(root, per_class=(2, 1, 1)):
  """fer2013.csv + fer2013new.csv aligned by row; adds rows decided by votes.

  After the 7 canonical classes, each split gets: a contempt-majority row, an NF-majority
  row, an unknown-majority row, a no-majority row and a row with an empty image name.
  FER2013's own emotion column is deliberately unrelated to the votes."""
  rows = []
  for (split, usage), n in zip(FER_SPLITS.items(), per_class):
    for _ in range(n):
      for c in range(8):
        rows.append((usage, c, "ok"))
    for what in ("NF", "unknown", "none", "noname"):
      rows.append((usage, None, what))
  cols = classes.FERPLUS_COLUMNS
  inv = _inverse(classes.FERPLUS)
  os.makedirs(root, exist_ok=True)
  expected = {s: [] for s in FER_SPLITS}
  split_of = {u: s for s, u in FER_SPLITS.items()}
  with open(os.path.join(root, "fer2013.csv"), "w", newline="") as f_old, \
       open(os.path.join(root, "fer2013new.csv"), "w", newline="") as f_new:
    old, new = csv.writer(f_old), csv.writer(f_new)
    old.writerow(["emotion", "pixels", "Usage"])
    new.writerow(["Usage", "Image name", *cols])
    for i, (usage, canon, what) in enumerate(rows):
      votes = [0] * len(cols)
      name = f"fer{i:07d}.png"
      if what == "ok":
        votes[cols.index(inv[canon])] = 7
        votes[(cols.index(inv[canon]) + 1) % 8] = 2
        votes[(cols.index(inv[canon]) + 2) % 8] = 1      # a single vote: removed as outlier
        expected[split_of[usage]].append((name, canon, votes))
      elif what in ("NF", "unknown"):
        votes[cols.index(what)] = 8
        votes[0] = 2
      elif what == "none":
        votes[0], votes[1], votes[2] = 4, 4, 2              # 4 of 10: no majority
      else:
        votes[0] = 10
        name = ""
      px = " ".join([str(label_value(canon if canon is not None else 0))] * (48 * 48))
      old.writerow([i % 7, px, usage])
      new.writerow([usage, name, *votes])
  return expected


def write_sfew(root, per_class=(2, 1), *, wrapper=False):
  """Train/<Class>/*.png and Val/<Class>/*.png (optionally under one wrapper folder)."""
  expected = {"train": [], "validation": []}
  for split, d, n in (("train", "Train", per_class[0]), ("validation", "Val", per_class[1])):
    base = os.path.join(root, d, f"{d}_Aligned_Faces") if wrapper else os.path.join(root, d)
    for folder, c in sorted(classes.SFEW.items()):
      for j in range(n):
        name = f"{folder}/{d.lower()}_{j}.png"
        write_image(os.path.join(base, name), c)
        expected[split].append((name, c))
  return expected


def write_image_folder(root, names, per_class=(2, 1), *, labels=None, mode="RGB", ext=".png"):
  """train/<name>/*.png and test/<name>/*.png; ``labels[name]`` is the colour class."""
  expected = {"train": [], "test": []}
  for split, n in (("train", per_class[0]), ("test", per_class[1])):
    for k, name in enumerate(names):
      lab = labels[name] if labels else k
      for j in range(n):
        rel = f"{name}/{split}_{j}{ext}"
        write_image(os.path.join(root, split, rel), lab, mode=mode)
        expected[split].append((rel, lab))
  return expected


def write_csv_list(root, labels, per_class=(2, 1), *, header=True):
  """images/<split>_<k>.png and {train,test}.csv lines 'path,label' (``labels``: the label
  strings to write, one per class; colour class = position in ``labels``)."""
  expected = {"train": [], "test": []}
  for split, n in (("train", per_class[0]), ("test", per_class[1])):
    lines = [["path", "label"]] if header else []
    for c, lab in enumerate(labels):
      for j in range(n):
        rel = f"images/{split}_{c}_{j}.png"
        write_image(os.path.join(root, rel), c)
        lines.append([rel, lab])
        expected[split].append((rel, c))
    with open(os.path.join(root, f"{split}.csv"), "w", newline="") as f:
      csv.writer(f).writerows(lines)
  return expected


# The label / CSV files of each text-file dataset (relative to its manual_dir), and the
# arguments that build and load it in tests/test_builders.py's ``_build_and_load``.
TEXT_FILES = {
    "rafdb": ("EmoLabel/list_patition_label.txt",),
    "affectnet7": ("Manually_Annotated_file_lists/training.csv",
                   "Manually_Annotated_file_lists/validation.csv"),
    "fer2013": ("fer2013.csv",),
    "ferplus": ("fer2013new.csv", "fer2013.csv"),
    "csv_list": ("train.csv", "test.csv"),
}
BUILD_ARGS = {
    "rafdb": {},
    "affectnet7": {"test_split": "validation"},
    "fer2013": {"channels": 1},
    "ferplus": {"num_classes": 8, "channels": 1, "prepare_kw": {"num_classes": 8},
                "load_kw": {"num_classes": 8}},
    "csv_list": {},
}


def write_dataset(name, root):
  """Writes dataset ``name`` of TEXT_FILES; returns its expected {split: [(file, label)]}."""
  if name == "rafdb":
    return write_rafdb(root)
  if name == "affectnet7":
    return {s: [e for e in v if e[1] < 7] for s, v in write_affectnet(root).items()}
  if name == "fer2013":
    return write_fer2013(root)
  if name == "ferplus":
    return {s: [e[:2] for e in v] for s, v in write_ferplus(root).items()}
  if name == "csv_list":
    return write_csv_list(root, list(classes.CANONICAL7))
  raise ValueError(name)
