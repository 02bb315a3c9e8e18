"""Generic builders for data in no official format: ``image_folder`` and ``csv_list``.

**image_folder** (``SsferImageFolder``): ``<manual_dir>/train/<class>/*.jpg`` and
``<manual_dir>/test/<class>/...`` (the test folder may instead be named ``val`` or
``validation``, test first; split names are matched case-insensitively, and two that
differ only in case are an error; other folders are counted and logged, as are hidden
files such as macOS ``._*`` resource forks). **csv_list**
(``SsferCsvList``): ``<manual_dir>/train.csv`` and ``<manual_dir>/test.csv`` with lines
``path,label`` (an optional header ``path,label``); paths are relative to ``manual_dir``
(or absolute). A path listed twice in one file is a bad row naming both lines.

Class order (both builders), see ``common.resolve_class_names``: when every class name is
a canonical name or synonym (``happy``, ``Angry``, ``sadness``, ...; ``classes.SYNONYMS``),
labels are canonical indices (7 classes, 8 with contempt), comparable with RAF-DB and
AffectNet. Otherwise classes are the folder / label names in sorted order, 0..K-1. In a
csv_list, labels may instead all be integers: canonical indices 0-6 (7 = contempt). The
class names are stored in ``info.metadata['class_names']``. Images of any mode are
stored as RGB (grey ones converted, counted). An empty class folder is an error unless
``allow_empty_classes``. Each prepared data set needs its own ``data_dir``.
"""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from ssfer_jax.data import classes
from ssfer_jax.data.builders import common, files

FOLDER_INSTRUCTIONS = """\
Put your images in <manual_dir>/train/<class name>/ and <manual_dir>/test/<class name>/
(test may be named val or validation) and pass --manual_dir.
"""
CSV_INSTRUCTIONS = """\
Write <manual_dir>/train.csv and <manual_dir>/test.csv with lines "path,label" (path
relative to manual_dir; label a class name or a canonical index 0-6) and pass --manual_dir.
"""
TEST_DIR_NAMES = ("test", "val", "validation")


class _Generic(common.FerBuilder):
  """The user-data builders: class names as found in the data, integer labels."""

  def class_names(self):
    return self._class_names_found or ()

  def _label_feature(self):
    return tfds.features.Scalar(dtype=np.int64, doc="class index; names in metadata['class_names']")


class SsferImageFolder(_Generic):
  """One sub-folder per class, train/ and test/ splits."""

  MANUAL_DOWNLOAD_INSTRUCTIONS = FOLDER_INSTRUCTIONS
  DESCRIPTION = "A folder of class folders (see ssfer_jax/data/builders/generic.py)."

  def _split_generators(self, dl_manager):
    split_dirs = self.split_folders(dl_manager.manual_dir, {"train": ("train",), "test": TEST_DIR_NAMES},
                                    FOLDER_INSTRUCTIONS)
    folders = {s: self.class_folders(s, d) for s, d in split_dirs.items()}
    for s, fs in folders.items():
      if not fs:
        raise common.BadInputError(f"{split_dirs[s]} has no class folders.\n{FOLDER_INSTRUCTIONS}")
    names, mapping = common.resolve_class_names(f.name for fs in folders.values() for f in fs)
    self._class_names_found = names
    return {s: self._examples(s, self._generate(s, fs, mapping)) for s, fs in folders.items()}

  def _generate(self, split, folders, mapping):
    rep = self.report(split)
    listed = [(f, files.list_images(f, rep)) for f in folders]
    empty = [str(f) for f, paths in listed if not paths]
    if empty:
      if not self.allow_empty_classes:
        raise common.BadInputError(f"class folder(s) {empty} contain no image; add images, remove "
                                   "the folder, or prepare with allow_empty_classes=True")
      for e in empty:
        rep.count("empty_class_folder", e, warn=True)
    for folder, paths in listed:
      label = mapping[folder.name]
      for path in paths:
        image = self.read_image(split, path)
        if image is None:
          continue
        name = f"{folder.name}/{path.name}"
        yield name, {"image": image, "label": label, "file_name": name}


class SsferCsvList(_Generic):
  """``path,label`` lists: train.csv and test.csv."""

  MANUAL_DOWNLOAD_INSTRUCTIONS = CSV_INSTRUCTIONS
  DESCRIPTION = "Images listed in train.csv / test.csv (see ssfer_jax/data/builders/generic.py)."

  def _split_generators(self, dl_manager):
    root = dl_manager.manual_dir
    rows = {}
    for split in ("train", "test"):
      path = files.find_file(root, [f"{split}.csv"], f"csv_list {split}.csv", CSV_INSTRUCTIONS)
      rows[split] = self._parse(split, path)
    labels = [lab for rs in rows.values() for _, lab, _ in rs]
    as_int = [_int_or_none(x) for x in labels]
    if labels and all(i is not None for i in as_int):
      identity = {i: i for i in range(len(classes.CANONICAL8))}
      mapping = {}
      for rs in rows.values():
        for _, lab, src in rs:
          mapping[lab] = classes.to_canonical(identity, int(lab), source=src, num_classes=8)
      names = classes.class_names(8 if max(mapping.values(), default=0) == 7 else 7)
    elif any(i is not None for i in as_int):
      first = next(src for rs in rows.values() for _, lab, src in rs if _int_or_none(lab) is not None)
      raise common.BadInputError(f"{first}: labels mix integers and class names; use one kind")
    else:
      names, mapping = common.resolve_class_names(labels)
    self._class_names_found = names
    return {s: self._examples(s, self._generate(s, rs, mapping, root)) for s, rs in rows.items()}

  def _parse(self, split, path):
    out = []
    for lineno, row in files.csv_rows(path):
      src = f"{path}:{lineno}"
      if lineno == 1 and [c.strip().lower() for c in row] == ["path", "label"]:
        continue
      if len(row) != 2 or not row[0].strip() or not row[1].strip():
        self.bad_row(split, src, f"expected 'path,label', got {','.join(row)!r}")
        continue
      lab = row[1].strip()
      i = _int_or_none(lab)
      if i is not None and not 0 <= i < len(classes.CANONICAL8):
        self.bad_row(split, src, f"label {i} is out of range: integer labels are canonical "
                     f"indices 0-{len(classes.CANONICAL8) - 1} {classes.CANONICAL8}")
        continue
      if self.unique_key(split, row[0].strip(), src):
        out.append((row[0].strip(), lab, src))
    return out

  def _generate(self, split, rows, mapping, root):
    for rel, lab, src in rows:
      path = epath.Path(rel) if rel.startswith("/") or "://" in rel else root / rel
      image = self.read_image(split, path, source=f"{path} (listed at {src})")
      if image is None:
        continue
      yield rel, {"image": image, "label": mapping[lab], "file_name": rel}


def _int_or_none(s):
  try:
    return int(s)
  except ValueError:
    return None
