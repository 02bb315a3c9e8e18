"""AffectNet (manually annotated part), 7 or 8 expressions (BuilderConfigs ``7`` / ``8``).

Reads the official download exactly (SPEC §4):

    <manual_dir>/[Manually_Annotated_file_lists/]training.csv    header row, columns include
    <manual_dir>/[Manually_Annotated_file_lists/]validation.csv  subDirectory_filePath, expression
    <manual_dir>/Manually_Annotated_Images/<subDirectory_filePath>   (or
    <manual_dir>/Manually_Annotated/Manually_Annotated_Images/..., or <manual_dir>/<path>)

``validation.csv`` may lack the header; then training.csv's column order is used. Codes
0 Neutral, 1 Happy, 2 Sad, 3 Surprise, 4 Fear, 5 Disgust, 6 Anger, 7 Contempt map to the
canonical order through ``classes.AFFECTNET``; 8 None, 9 Uncertain, 10 Non-face are not
expressions and are dropped (counted per code), and so is 7 Contempt in the 7-class
config. The images are used as stored (no cropping with the face_x/face_y boxes).
Splits: ``train`` (imbalanced) and ``validation`` (balanced; the test set).
"""

from __future__ import annotations

import csv
import io

import tensorflow_datasets as tfds

from ssfer_jax.data import classes
from ssfer_jax.data.builders import common

NOT_EXPRESSIONS = {8: "none", 9: "uncertain", 10: "non_face"}
LIST_DIRS = ("", "Manually_Annotated_file_lists/")
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

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  BUILDER_CONFIGS = [
      tfds.core.BuilderConfig(name="7", description="7 expressions (contempt dropped)"),
      tfds.core.BuilderConfig(name="8", description="8 expressions (with contempt)"),
  ]
  DEFAULT_CONFIG_NAME = "7"
  MANUAL_DOWNLOAD_INSTRUCTIONS = INSTRUCTIONS
  HOMEPAGE = "http://mohammadmahoor.com/affectnet/"
  DESCRIPTION = "AffectNet manually annotated images, labels in the ssfer_jax canonical order."
  TEST_SPLIT = "validation"

  @property
  def num_classes(self) -> int:
    return int(self.builder_config.name)

  def class_names(self):
    return classes.class_names(self.num_classes)

  def _split_generators(self, dl_manager):
    root = dl_manager.manual_dir
    train_csv = common.find_file(root, [d + "training.csv" for d in LIST_DIRS], "AffectNet training.csv",
                                 INSTRUCTIONS)
    val_csv = common.find_file(root, [d + "validation.csv" for d in LIST_DIRS],
                               "AffectNet validation.csv", INSTRUCTIONS)
    header = self._header(train_csv)
    return {"train": self._examples("train", self._generate("train", train_csv, header, root)),
            "validation": self._examples("validation",
                                         self._generate("validation", val_csv, header, root))}

  def _header(self, path):
    with path.open("r") as f:
      first = next(csv.reader(f), [])
    names = [c.strip() for c in first]
    missing = [c for c in ("subDirectory_filePath", "expression") if c not in names]
    if missing:
      raise common.BadInputError(f"{path}:1: header lacks column(s) {missing}; got {names}. "
                                 "training.csv must start with the official header row")
    return names

  def _image_root(self, root, rel: str):
    for d in IMAGE_DIRS:
      base = root / d if d else root
      if (base / rel).exists():
        return base
    return None

  def _generate(self, split, path, header, root):
    rep = self.report(split)
    text = path.read_text()
    rows = csv.reader(io.StringIO(text))
    col_path, col_expr = header.index("subDirectory_filePath"), header.index("expression")
    image_root = None
    for lineno, row in enumerate(rows, 1):
      src = f"{path}:{lineno}"
      if not row or not "".join(row).strip():
        continue
      if lineno == 1 and [c.strip() for c in row] == header:
        continue  # the header (validation.csv may lack it)
      if len(row) != len(header):
        self.bad_row(split, src, f"expected {len(header)} columns like the header, got {len(row)}")
        continue
      rel, code = row[col_path].strip(), row[col_expr].strip()
      try:
        code = int(code)
      except ValueError:
        self.bad_row(split, src, f"expression {code!r} is not an integer code 0-10")
        continue
      if code in NOT_EXPRESSIONS:
        rep.count(f"dropped_code_{code}_{NOT_EXPRESSIONS[code]}")
        continue
      try:
        label = classes.to_canonical(classes.AFFECTNET, code, source=src, num_classes=self.num_classes)
      except ValueError as e:
        self.bad_row(split, src, str(e))
        continue
      if label is None:
        rep.count(f"dropped_code_{code}_{classes.CANONICAL8[classes.AFFECTNET[code]]}")
        continue
      if not rel:
        self.bad_row(split, src, "empty subDirectory_filePath")
        continue
      if image_root is None:
        image_root = self._image_root(root, rel)
      base = image_root if image_root is not None else root / IMAGE_DIRS[0]
      image = self.read_image(split, base / rel, source=f"{base / rel} (listed at {src})")
      if image is None:
        continue
      yield rel, {"image": image, "label": label, "file_name": rel}
