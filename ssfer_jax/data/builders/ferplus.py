"""FERPlus: FER2013's images with 10 crowd votes each (BuilderConfigs ``8`` / ``7``).

Reads ``<manual_dir>/fer2013new.csv`` (header ``Usage,Image name,neutral,happiness,
surprise,sadness,anger,disgust,fear,contempt,unknown,NF``) and FER2013's ``fer2013.csv``
(or ``icml_face_data.csv``) from the same folder; rows align by position (SPEC §4). The
row counts and each row's Usage must agree, else it is an error.

Label (``vote`` option, default ``'majority'``) [the majority rule follows the FERPlus
repository's ``majority`` training mode, src/ferplus.py]: vote counts of 1 are removed as
outliers; the top column wins if it has more than half of the remaining votes, else the
row is "unknown". ``vote='plurality'``: the column with most votes (ties -> first column).
Rows whose winner is ``unknown`` or ``NF``, rows without a majority, and rows with an
empty ``Image name`` are dropped (counted per reason); so is contempt in the 7-class
config. The raw 10 vote counts (file column order, ``classes.FERPLUS_COLUMNS``) are kept
as the ``votes`` feature for soft-label training.
"""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

from ssfer_jax.data import classes
from ssfer_jax.data.builders import common, fer2013, files

INSTRUCTIONS = """\
Download fer2013new.csv from https://github.com/microsoft/FERPlus and FER2013's
fer2013.csv (see the fer2013 builder); put both in one folder and pass it as --manual_dir.
"""
HEADER = ("Usage", "Image name") + classes.FERPLUS_COLUMNS


def vote_label(votes: np.ndarray, rule: str) -> str | None:
  """The winning FERPlus column name (may be 'unknown' / 'NF'), or None (no majority)."""
  votes = np.asarray(votes, np.float64)
  if rule == "plurality":
    return classes.FERPLUS_COLUMNS[int(np.argmax(votes))] if votes.sum() > 0 else None
  if rule != "majority":
    raise ValueError(f"vote must be 'majority' or 'plurality', got {rule!r}")
  v = np.where(votes <= 1.0, 0.0, votes)
  if v.max() > 0.5 * v.sum():
    return classes.FERPLUS_COLUMNS[int(np.argmax(v))]
  return None


class SsferFerplus(common.FerBuilder):
  """FERPlus majority-vote labels on FER2013 images, canonical 8- or 7-class labels."""

  BUILDER_CONFIGS = [
      tfds.core.BuilderConfig(name="8", description="8 expressions (with contempt)"),
      tfds.core.BuilderConfig(name="7", description="7 expressions (contempt rows dropped)"),
  ]
  DEFAULT_CONFIG_NAME = "8"
  MANUAL_DOWNLOAD_INSTRUCTIONS = INSTRUCTIONS
  HOMEPAGE = "https://github.com/microsoft/FERPlus"
  DESCRIPTION = "FERPlus labels on FER2013 images, in the ssfer_jax canonical order."
  CHANNELS = 1

  def __init__(self, *, vote: str = "majority", **kwargs):
    if vote not in ("majority", "plurality"):
      raise ValueError(f"ferplus vote must be 'majority' or 'plurality', got {vote!r}")
    self.vote = vote
    super().__init__(**kwargs)

  def _extra_features(self):
    return {"votes": tfds.features.Tensor(shape=(len(classes.FERPLUS_COLUMNS),), dtype=np.int32)}

  def _store_reports(self):
    super()._store_reports()
    self.info.metadata["options"]["vote"] = self.vote

  def _split_generators(self, dl_manager):
    root = dl_manager.manual_dir
    new_csv = files.find_file(root, ["fer2013new.csv", "FERPlus/fer2013new.csv"],
                              "FERPlus fer2013new.csv", INSTRUCTIONS)
    old_csv = files.find_file(root, fer2013.CSV_CANDIDATES, "FER2013 csv (FERPlus needs its pixels)",
                              INSTRUCTIONS)
    votes = self._read_votes(new_csv)
    pixels = {i: (split, px, src) for i, split, _, px, src in fer2013.read_fer_csv(old_csv, self.bad_row)}
    n_old = len(pixels) and max(pixels) + 1
    if n_old != len(votes):
      raise common.BadInputError(f"{new_csv} has {len(votes)} data rows but {old_csv} has {n_old}; "
                                 "FERPlus rows align with fer2013.csv by position, so both must be "
                                 "the complete official files")
    rows = {s: [] for s in fer2013.USAGE_TO_SPLIT.values()}
    for i, (split, name, v, src) in enumerate(votes):
      if split is None:
        continue
      if i not in pixels:
        self.report(split).count("skipped_bad_fer2013_row", src, warn=True)
        continue
      old_split, px, old_src = pixels[i]
      if old_split != split:
        raise common.BadInputError(f"{src}: Usage {split!r} but the aligned row {old_src} says "
                                   f"{old_split!r}; the two files are not the aligned official ones")
      if name and not self.unique_key(split, name, src):
        continue
      rows[split].append((i, name, v, px, src))
    return {s: self._examples(s, self._generate(s, r)) for s, r in rows.items()}

  def _read_votes(self, path):
    out = []
    first_line, header, reader = files.csv_header(path)
    if tuple(header) != HEADER:
      raise common.BadInputError(f"{path}:{first_line}: header must be {','.join(HEADER)}; "
                                 f"got {','.join(header)}")
    for lineno, row in reader:
      src = f"{path}:{lineno}"
      split = fer2013.USAGE_TO_SPLIT.get(row[0].strip()) if row else None
      try:
        if len(row) != len(HEADER) or split is None:
          raise ValueError(f"expected {len(HEADER)} columns and a Usage in "
                           f"{sorted(fer2013.USAGE_TO_SPLIT)}, got {row[:2]}... ({len(row)} columns)")
        v = np.array([int(x) for x in row[2:]], np.int32)
        if v.min() < 0:
          raise ValueError("vote counts must be >= 0")
      except ValueError as e:
        self.bad_row(split or "train", src, str(e))
        out.append((None, None, None, src))  # keeps the row position
        continue
      out.append((split, row[1].strip(), v, src))
    return out

  def _generate(self, split, rows):
    rep = self.report(split)
    for index, name, votes, pixels, src in rows:
      if not name:
        rep.count("dropped_no_image_name", src)
        continue
      winner = vote_label(votes, self.vote)
      if winner is None:
        rep.count("dropped_no_majority", src)
        continue
      if winner in ("unknown", "NF"):
        rep.count(f"dropped_majority_{winner}", src)
        continue
      label = classes.to_canonical(classes.FERPLUS, winner, source=src, num_classes=self.num_classes)
      if label is None:
        rep.count(f"dropped_{winner}", src)
        continue
      yield name, {"image": fer2013.png_bytes(pixels), "label": label, "file_name": name,
                   "votes": votes}
