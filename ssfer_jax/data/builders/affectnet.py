"""AffectNet (manually annotated part), 7 or 8 expressions (BuilderConfigs ``7`` / ``8``).

Reads the official download exactly (SPEC §4):

    <manual_dir>/[Manually_Annotated_file_lists/]training.csv    header row, columns include
    <manual_dir>/[Manually_Annotated_file_lists/]validation.csv  subDirectory_filePath, expression
    <manual_dir>/Manually_Annotated_Images/<subDirectory_filePath>   (or
    <manual_dir>/Manually_Annotated/Manually_Annotated_Images/..., or <manual_dir>/<path>)

Each file is parsed by its own header row; ``validation.csv`` may lack it (SPEC §4), and
its columns then follow the documented order (``COLUMNS``, training.csv's official header). Codes
0 Neutral, 1 Happy, 2 Sad, 3 Surprise, 4 Fear, 5 Disgust, 6 Anger, 7 Contempt map to the
canonical order through ``classes.AFFECTNET``; 8 None, 9 Uncertain, 10 Non-face are not
expressions and are dropped (counted per code), and so is 7 Contempt in the 7-class
config. The images are used as stored (no cropping with the face_x/face_y boxes).
Splits: ``train`` (imbalanced) and ``validation`` (balanced; the test set).
"""

from __future__ import annotations

import itertools

import tensorflow_datasets as tfds

from ssfer_jax.data import classes
from ssfer_jax.data.builders import common, files

NOT_EXPRESSIONS = {8: "none", 9: "uncertain", 10: "non_face"}
LIST_DIRS = ("", "Manually_Annotated_file_lists/")
COLUMNS = ("subDirectory_filePath", "face_x", "face_y", "face_width", "face_height",
           "facial_landmarks", "expression", "valence", "arousal")   # the official header
NEEDED = ("subDirectory_filePath", "expression")
IMAGE_DIRS = ("Manually_Annotated_Images", "Manually_Annotated/Manually_Annotated_Images", "")

INSTRUCTIONS = """\
Request AffectNet from its authors (http://mohammadmahoor.com/affectnet/), unpack the
manually annotated part and pass the folder as --manual_dir. It must contain
  training.csv and validation.csv (directly or in Manually_Annotated_file_lists/), and
  Manually_Annotated_Images/<subDirectory_filePath> for every listed image
  (or Manually_Annotated/Manually_Annotated_Images/..., or the paths directly under it).
"""


class SsferAffectnet(common.FerBuilder):
  """AffectNet manually annotated images, canonical 7- or 8-class labels."""

  BUILDER_CONFIGS = [
      tfds.core.BuilderConfig(name="7", description="7 expressions (contempt dropped)"),
      tfds.core.BuilderConfig(name="8", description="8 expressions (with contempt)"),
  ]
  DEFAULT_CONFIG_NAME = "7"
  MANUAL_DOWNLOAD_INSTRUCTIONS = INSTRUCTIONS
  HOMEPAGE = "http://mohammadmahoor.com/affectnet/"
  DESCRIPTION = "AffectNet manually annotated images, labels in the ssfer_jax canonical order."
  TEST_SPLIT = "validation"

  def _split_generators(self, dl_manager):
    root = dl_manager.manual_dir
    train_csv = files.find_file(root, [d + "training.csv" for d in LIST_DIRS], "AffectNet training.csv",
                                INSTRUCTIONS)
    val_csv = files.find_file(root, [d + "validation.csv" for d in LIST_DIRS],
                              "AffectNet validation.csv", INSTRUCTIONS)
    return {"train": self._examples("train", self._generate("train", train_csv, root)),
            "validation": self._examples("validation", self._generate("validation", val_csv, root))}

  def _columns(self, split, path, lineno, names):
    """(column names, whether the first row ``names`` is the header). Only validation.csv
    may lack the header; a first row naming none of the columns then is data."""
    if all(c in names for c in NEEDED):
      return names, True
    if split == "validation" and not set(names) & set(COLUMNS):
      return list(COLUMNS), False
    missing = [c for c in NEEDED if c not in names]
    raise common.BadInputError(
        f"{path}:{lineno}: header lacks column(s) {missing}; got {names}. Start the "
        f"file with the official header {','.join(COLUMNS)}"
        + (" (or with no header: then its columns are read in that order)" if split == "validation" else ""))

  def _image_root(self, root, rel: str):
    for d in IMAGE_DIRS:
      base = root / d if d else root
      if (base / rel).exists():
        return base
    return None

  def _generate(self, split, path, root):
    rep = self.report(split)
    first_line, first, rows = files.csv_header(path)
    columns, has_header = self._columns(split, path, first_line, first)
    if first and not has_header:
      rows = itertools.chain([(first_line, first)], rows)
    layout = "as in its header" if has_header else "in the documented order: the file has no header"
    col_path, col_expr = columns.index("subDirectory_filePath"), columns.index("expression")
    image_root = None
    for lineno, row in rows:
      src = f"{path}:{lineno}"
      if len(row) != len(columns):
        self.bad_row(split, src, f"expected {len(columns)} columns ({layout}), got {len(row)}")
        continue
      rel, code = row[col_path].strip(), row[col_expr].strip()
      if not rel:
        self.bad_row(split, src, "empty subDirectory_filePath")
        continue
      if not self.unique_key(split, rel, src):
        continue
      try:
        code = int(code)
      except ValueError:
        self.bad_row(split, src, f"expression {code!r} is not an integer code 0-10")
        continue
      if code in NOT_EXPRESSIONS:
        rep.count(f"dropped_code_{code}_{NOT_EXPRESSIONS[code]}")
        continue
      label = self.canonical(split, classes.AFFECTNET, code, src, num_classes=self.num_classes)
      if label == common.SKIP:
        continue
      if label is None:
        rep.count(f"dropped_code_{code}_{classes.CANONICAL8[classes.AFFECTNET[code]]}")
        continue
      if image_root is None:
        image_root = self._image_root(root, rel)
      base = image_root if image_root is not None else root / IMAGE_DIRS[0]
      image = self.read_image(split, base / rel, source=f"{base / rel} (listed at {src})")
      if image is None:
        continue
      yield rel, {"image": image, "label": label, "file_name": rel}
