"""RAF-DB basic (Real-world Affective Faces), 7 expressions, aligned 100x100 faces.

Reads the official ``basic`` download exactly (SPEC §4):

    <manual_dir>/EmoLabel/list_patition_label.txt   (sic) lines "train_00001.jpg 5"
    <manual_dir>/Image/aligned/train_00001_aligned.jpg

(``manual_dir`` may also be the folder that contains ``basic/``). Labels 1..7 = Surprise,
Fear, Disgust, Happiness, Sadness, Anger, Neutral are mapped to the canonical order by
``classes.RAFDB``; the split comes from the ``train_`` / ``test_`` prefix (12,271 / 3,068).
Blank lines are ignored; the last line may lack its newline.
"""

from __future__ import annotations

from ssfer_jax.data import classes
from ssfer_jax.data.builders import common, files

LABEL_FILE = "EmoLabel/list_patition_label.txt"

INSTRUCTIONS = """\
Request RAF-DB from its authors (http://www.whdeng.cn/RAF/model1.html), unpack the
"basic" part and pass its folder as --manual_dir. It must contain
  EmoLabel/list_patition_label.txt   (the file name is misspelled in the release)
  Image/aligned/train_00001_aligned.jpg ... test_3068_aligned.jpg
"""


class SsferRafdb(common.FerBuilder):
  """RAF-DB basic, aligned faces, canonical 7-class labels."""

  MANUAL_DOWNLOAD_INSTRUCTIONS = INSTRUCTIONS
  HOMEPAGE = "http://www.whdeng.cn/RAF/model1.html"
  DESCRIPTION = "RAF-DB basic emotion subset (aligned), labels in the ssfer_jax canonical order."

  def _root(self, manual_dir):
    for root in (manual_dir, manual_dir / "basic"):
      if (root / LABEL_FILE).exists():
        return root
    files.find_file(manual_dir, [LABEL_FILE, "basic/" + LABEL_FILE], "RAF-DB label file", INSTRUCTIONS)

  def _split_generators(self, dl_manager):
    root = self._root(dl_manager.manual_dir)
    image_dir = root / "Image" / "aligned"
    if not image_dir.is_dir():
      raise FileNotFoundError(f"RAF-DB image folder {image_dir} does not exist.\n{INSTRUCTIONS}")
    rows = self._parse(root / LABEL_FILE)
    return {split: self._examples(split, self._generate(split, rows[split], image_dir))
            for split in ("train", "test")}

  def _parse(self, path):
    """{'train': [(name, label, 'file:line')], 'test': [...]} with every line checked."""
    rows = {"train": [], "test": []}
    for lineno, line in files.text_lines(path):
      if not line.strip():
        continue
      src = f"{path}:{lineno}"
      parts = line.split()
      split = parts[0].split("_", 1)[0] if parts else ""
      if len(parts) != 2 or split not in rows or not parts[0].endswith(".jpg"):
        self.bad_row(split if split in rows else "train", src,
                     f"expected '<train|test>_<id>.jpg <label 1-7>', got {line.strip()!r}")
        continue
      name, label = parts
      try:
        label = int(label)
      except ValueError:
        self.bad_row(split, src, f"label {label!r} is not an integer 1-7")
        continue
      canon = self.canonical(split, classes.RAFDB, label, src)
      if canon != common.SKIP and self.unique_key(split, name, src):
        rows[split].append((name, canon, src))
    return rows

  def _generate(self, split, rows, image_dir):
    for name, label, src in rows:
      aligned = name[:-len(".jpg")] + "_aligned.jpg"
      image = self.read_image(split, image_dir / aligned, source=f"{image_dir / aligned} (listed at {src})")
      if image is None:
        continue
      yield name, {"image": image, "label": label, "file_name": name}
