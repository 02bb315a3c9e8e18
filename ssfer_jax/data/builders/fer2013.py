"""FER2013 (Kaggle / ICML 2013 challenge), 48x48 grayscale, 7 expressions.

Reads ``<manual_dir>/fer2013.csv`` (or ``fer2013/fer2013.csv`` as the Kaggle archive
unpacks, or the variant ``icml_face_data.csv`` whose column names carry leading spaces
and come in another order): columns ``emotion, pixels, Usage``; pixels are 2,304
space-separated integers 0-255. Codes 0 Angry, 1 Disgust, 2 Fear, 3 Happy, 4 Sad,
5 Surprise, 6 Neutral map to the canonical order through ``classes.FER2013``.
Splits: Usage ``Training`` -> train, ``PublicTest`` -> validation, ``PrivateTest`` ->
test (the test set). Images are encoded as PNG (mode L) with PIL. The file name feature
is ``fer%07d.png`` with the 0-based data-row number: FERPlus' own image names.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from ssfer_jax.data import classes
from ssfer_jax.data.builders import common, files

CSV_CANDIDATES = ("fer2013.csv", "fer2013/fer2013.csv", "icml_face_data.csv",
                  "fer2013/icml_face_data.csv")
USAGE_TO_SPLIT = {"Training": "train", "PublicTest": "validation", "PrivateTest": "test"}

INSTRUCTIONS = """\
Download FER2013 (https://www.kaggle.com/c/challenges-in-representation-learning-facial-expression-recognition-challenge/data)
and pass the folder holding fer2013.csv (or icml_face_data.csv) as --manual_dir.
"""


def read_fer_csv(path, on_bad_row):
  """Yields (row_index, split, fer_code, pixels uint8 (48,48), 'file:line') per data row.

  ``on_bad_row(split, source, why)`` is called for a malformed row (it raises or counts);
  such rows still consume their row index, so indices keep matching FERPlus' rows.
  Identical rows are both kept: the key is the row index, never the content, and FERPlus
  aligns with fer2013.csv by that index.
  """
  first_line, header, reader = files.csv_header(path)
  missing = [c for c in ("emotion", "pixels", "Usage") if c not in header]
  if missing:
    raise common.BadInputError(f"{path}:{first_line}: header lacks column(s) {missing}; got {header}. "
                               "Expected the official header 'emotion,pixels,Usage'")
  ie, ip, iu = header.index("emotion"), header.index("pixels"), header.index("Usage")
  index = -1
  for lineno, row in reader:
    index += 1
    src = f"{path}:{lineno}"
    if len(row) != len(header):
      on_bad_row("train", src, f"expected {len(header)} columns, got {len(row)}")
      continue
    usage = row[iu].strip()
    split = USAGE_TO_SPLIT.get(usage)
    if split is None:
      on_bad_row("train", src, f"Usage {usage!r} is not one of {sorted(USAGE_TO_SPLIT)}")
      continue
    try:
      code = int(row[ie])
    except ValueError:
      on_bad_row(split, src, f"emotion {row[ie]!r} is not an integer code 0-6")
      continue
    try:
      pixels = np.array(row[ip].split(), np.int64)
    except ValueError:
      on_bad_row(split, src, "pixels must be space-separated integers")
      continue
    if pixels.size != 48 * 48 or pixels.min(initial=0) < 0 or pixels.max(initial=0) > 255:
      on_bad_row(split, src, f"pixels must be 2304 integers in 0-255, got {pixels.size} "
                 f"in [{pixels.min(initial=0)}, {pixels.max(initial=0)}]")
      continue
    yield index, split, code, pixels.astype(np.uint8).reshape(48, 48), src


def png_bytes(pixels: np.ndarray) -> bytes:
  return common.encode_png(Image.fromarray(pixels, "L"))


def file_name(index: int) -> str:
  return f"fer{index:07d}.png"


class SsferFer2013(common.FerBuilder):
  """FER2013, 48x48 grayscale, canonical 7-class labels."""

  MANUAL_DOWNLOAD_INSTRUCTIONS = INSTRUCTIONS
  HOMEPAGE = "https://www.kaggle.com/c/challenges-in-representation-learning-facial-expression-recognition-challenge"
  DESCRIPTION = "FER2013, labels in the ssfer_jax canonical order."
  CHANNELS = 1

  def _split_generators(self, dl_manager):
    path = files.find_file(dl_manager.manual_dir, CSV_CANDIDATES, "FER2013 csv", INSTRUCTIONS)
    rows = {s: [] for s in USAGE_TO_SPLIT.values()}
    for index, split, code, pixels, src in read_fer_csv(path, self.bad_row):
      label = self.canonical(split, classes.FER2013, code, src)
      if label != common.SKIP:
        rows[split].append((index, label, pixels))
    return {s: self._examples(s, self._generate(r)) for s, r in rows.items()}

  def _generate(self, rows):
    for index, label, pixels in rows:
      name = file_name(index)
      yield name, {"image": png_bytes(pixels), "label": label, "file_name": name}
