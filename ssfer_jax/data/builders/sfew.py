"""SFEW 2.0 (Static Facial Expressions in the Wild), 7 expressions, class folders.

Reads the official layout (SPEC §4):

    <manual_dir>/Train/{Angry,Disgust,Fear,Happy,Neutral,Sad,Surprise}/*.png|jpg
    <manual_dir>/Val/{...}/...

A split folder that holds a single sub-folder containing the class folders (e.g.
``Train/Train_Aligned_Faces/Angry``) is also accepted. Folder names map to the canonical
order through ``classes.SFEW``; an unknown folder name is an error. Split folders are
matched case-insensitively (``train/`` + ``Train/`` is an error); other folders, such as
the unlabelled ``Test/``, and files that are not images are counted and logged; hidden
files (macOS ``._*`` resource forks) are counted. ``Val`` is the test set (``validation``).
"""

from __future__ import annotations

from ssfer_jax.data import classes
from ssfer_jax.data.builders import common, files

SPLIT_DIRS = {"train": "Train", "validation": "Val"}

INSTRUCTIONS = """\
Request SFEW 2.0 from its authors (https://users.cecs.anu.edu.au/~few_group/AFEW.html),
unpack Train and Val into one folder and pass it as --manual_dir: it must contain
Train/<Class>/ and Val/<Class>/ with Class in Angry Disgust Fear Happy Neutral Sad Surprise.
"""


class SsferSfew(common.FerBuilder):
  """SFEW 2.0, canonical 7-class labels; Val is the test set."""

  MANUAL_DOWNLOAD_INSTRUCTIONS = INSTRUCTIONS
  HOMEPAGE = "https://users.cecs.anu.edu.au/~few_group/AFEW.html"
  DESCRIPTION = "SFEW 2.0, labels in the ssfer_jax canonical order."
  TEST_SPLIT = "validation"

  def _split_generators(self, dl_manager):
    split_dirs = self.split_folders(dl_manager.manual_dir, {s: (d,) for s, d in SPLIT_DIRS.items()},
                                    INSTRUCTIONS)
    out = {}
    for split, split_dir in split_dirs.items():
      folders = self._class_folders(split, split_dir)
      unknown = [f.name for f in folders if f.name not in classes.SFEW]
      if unknown:
        raise common.BadInputError(f"{split_dir}: folder(s) {unknown} are not SFEW classes "
                                   f"{sorted(classes.SFEW)}; rename or remove them")
      out[split] = self._examples(split, self._generate(split, folders))
    return out

  def _class_folders(self, split, split_dir):
    """The class folders of one split (descending once into a single wrapper folder)."""
    subdirs = self.class_folders(split, split_dir)
    if len(subdirs) == 1 and subdirs[0].name not in classes.SFEW:
      inner = self.class_folders(split, subdirs[0])
      if inner:
        return inner
    return subdirs

  def _generate(self, split, folders):
    rep = self.report(split)
    for folder in folders:
      label = classes.to_canonical(classes.SFEW, folder.name, source=str(folder))
      for path in files.list_images(folder, rep):
        image = self.read_image(split, path)
        if image is None:
          continue
        name = f"{folder.name}/{path.name}"
        yield name, {"image": image, "label": label, "file_name": name}
