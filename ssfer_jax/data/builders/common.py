"""What every facial-expression builder shares: image checks, bad-input policy, counts.

Every builder in this package is a ``tfds.core.GeneratorBasedBuilder`` that reads a
user's manual download (``manual_dir``) and writes ArrayRecord. It never needs
TensorFlow: examples carry *encoded* image bytes (the source file's own bytes when it
is already an RGB JPEG/PNG, else a PNG re-encoded here with PIL), never numpy images.

Bad input, per builder option (``tfds.builder(name, skip_bad_images=True, ...)`` or the
flags of ``python -m ssfer_jax.data.prepare``):

* ``skip_bad_images`` (default False): a missing, unreadable, truncated or corrupt image
  is an error naming the file; with the option it is skipped, logged and counted.
* ``skip_bad_rows`` (default False): a malformed label line / CSV row, or a label the
  dataset does not define, is an error naming file and line; with the option it is
  skipped, logged and counted.
* ``allow_empty_classes`` (default False): a split in which a class has no example (an
  empty class folder, or no label line of that class) is an error; with the option it is
  a logged warning, recorded in the counts.

Grey (or palette, RGBA, CMYK, 16-bit) images in an RGB dataset are converted to RGB and
counted. Everything that was dropped, skipped or converted is counted per split in
``builder.info.metadata['report']`` (saved as ``metadata.json`` next to the records) and
logged at the end of each split; ``prepare.py`` prints it.
"""

from __future__ import annotations

import collections
import io
import logging
from typing import Iterable, Iterator

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from PIL import Image

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm")
_PASS_THROUGH_FORMATS = ("JPEG", "PNG")
log = logging.getLogger("ssfer_jax.data.builders")


class BadInputError(ValueError):
  """Input files that do not follow the dataset's official format."""


class SplitReport:
  """Counts of one split: kept examples per class, and every skip / drop / conversion."""

  def __init__(self, split: str, class_names: tuple):
    self.split = split
    self.class_names = tuple(class_names)
    self.per_class = np.zeros(len(class_names), np.int64)
    self.events = collections.Counter()
    self.examples = collections.defaultdict(list)   # event -> first few sources

  def count(self, event: str, source: str | None = None, *, warn: bool = False) -> None:
    self.events[event] += 1
    if source is not None and len(self.examples[event]) < 5:
      self.examples[event].append(source)
    if warn:
      log.warning("[%s] %s: %s", self.split, event, source)

  def as_dict(self) -> dict:
    return {"examples": int(self.per_class.sum()),
            "per_class": {n: int(c) for n, c in zip(self.class_names, self.per_class)},
            "events": dict(sorted(self.events.items())),
            "event_examples": {k: list(v) for k, v in sorted(self.examples.items())}}


class FerBuilder(tfds.core.GeneratorBasedBuilder):
  """Base class: options, features, image checks and per-split reports.

  Subclasses define ``VERSION``, ``MANUAL_DOWNLOAD_INSTRUCTIONS``, ``TEST_SPLIT`` (the
  split used as the test set), ``CHANNELS`` and ``_split_generators``, whose generators
  go through ``self._examples(split, items)``.
  """

  TEST_SPLIT = "test"
  CHANNELS = 3
  HOMEPAGE = ""
  DESCRIPTION = ""

  def __init__(self, *, skip_bad_images: bool = False, skip_bad_rows: bool = False,
               allow_empty_classes: bool = False, file_format="array_record", **kwargs):
    self.skip_bad_images = bool(skip_bad_images)
    self.skip_bad_rows = bool(skip_bad_rows)
    self.allow_empty_classes = bool(allow_empty_classes)
    self._reports: dict[str, SplitReport] = {}
    self._class_names_found: tuple | None = None
    super().__init__(file_format=file_format, **kwargs)

  # ---- what a subclass may override ----
  def class_names(self) -> tuple:
    """Class names in label order (canonical order for the official datasets)."""
    raise NotImplementedError

  def _label_feature(self):
    return tfds.features.ClassLabel(names=self.class_names())

  def _extra_features(self) -> dict:
    return {}

  # ---- TFDS ----
  def _info(self) -> tfds.core.DatasetInfo:
    shape = (None, None, self.CHANNELS) if self.CHANNELS == 3 else (48, 48, 1)
    features = {
        "image": tfds.features.Image(shape=shape, dtype=np.uint8),
        "label": self._label_feature(),
        "file_name": tfds.features.Text(),
        **self._extra_features(),
    }
    return self.dataset_info_from_configs(
        description=self.DESCRIPTION,
        features=tfds.features.FeaturesDict(features),
        supervised_keys=("image", "label"),
        homepage=self.HOMEPAGE,
        metadata=tfds.core.MetadataDict(),
    )

  def _generate_examples(self, **kwargs):
    raise NotImplementedError("FerBuilder subclasses return generators from _split_generators")

  # ---- helpers for subclasses ----
  def report(self, split: str) -> SplitReport:
    if split not in self._reports:
      self._reports[split] = SplitReport(split, self._current_class_names())
    return self._reports[split]

  def _current_class_names(self) -> tuple:
    return self._class_names_found or self.class_names()

  def bad_row(self, split: str, source: str, why: str) -> None:
    """A malformed line: raise naming ``source`` (file:line), or skip and count."""
    if not self.skip_bad_rows:
      raise BadInputError(f"{source}: {why}. Fix or delete this line, or prepare with "
                          "skip_bad_rows=True (--skip_bad_rows) to skip such lines (they are counted)")
    self.report(split).count("skipped_bad_row", f"{source}: {why}", warn=True)

  def read_image(self, split: str, path, *, source: str | None = None) -> bytes | None:
    """Encoded bytes of the image at ``path``, checked by decoding it fully.

    Returns None for a bad image when ``skip_bad_images`` (counted), raises otherwise.
    Non-RGB images are converted to RGB (counted as ``converted_<mode>_to_RGB``);
    formats other than JPEG/PNG are re-encoded as PNG (counted).
    """
    path = epath.Path(path)
    where = source or str(path)
    try:
      data = path.read_bytes()
    except (FileNotFoundError, IsADirectoryError, PermissionError) as e:
      return self._bad_image(split, where, f"cannot read {path} ({type(e).__name__})")
    return self.check_image_bytes(split, data, where)

  def check_image_bytes(self, split: str, data: bytes, where: str) -> bytes | None:
    try:
      with Image.open(io.BytesIO(data)) as img:
        img.load()
        fmt, mode = img.format, img.mode
        want = "RGB" if self.CHANNELS == 3 else "L"
        if mode == want and fmt in _PASS_THROUGH_FORMATS:
          return data
        rep = self.report(split)
        if mode != want:
          rep.count(f"converted_{mode}_to_{want}", where)
          img = _to_mode(img, want)
        else:
          rep.count(f"reencoded_{fmt}_as_PNG", where)
        return encode_png(img)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
      return self._bad_image(split, where, f"not a readable image ({e})")

  def _bad_image(self, split: str, where: str, why: str):
    if not self.skip_bad_images:
      raise BadInputError(f"{where}: {why}. Replace the file, or prepare with "
                          "skip_bad_images=True (--skip_bad_images) to skip bad images (they are counted)")
    self.report(split).count("skipped_bad_image", f"{where}: {why}", warn=True)
    return None

  def _examples(self, split: str, items: Iterable) -> Iterator:
    """Wraps a subclass generator of ``(key, example)``: counts classes, then checks
    that no class is empty, logs the report and stores it in the metadata."""
    rep = self.report(split)
    for key, ex in items:
      rep.per_class[int(ex["label"])] += 1
      yield key, ex
    empty = [n for n, c in zip(rep.class_names, rep.per_class) if c == 0]
    if empty:
      msg = (f"split {split!r} has no example of class(es) {empty} "
             f"(counts {rep.as_dict()['per_class']})")
      if not self.allow_empty_classes:
        raise BadInputError(msg + ". Check the manual download is complete, or prepare with "
                            "allow_empty_classes=True (--allow_empty_classes) to accept it")
      rep.count("empty_class", ",".join(empty))
      log.warning(msg)
    log.info("[%s] %s", split, rep.as_dict())
    self._store_reports()

  def _store_reports(self) -> None:
    md = self.info.metadata
    md["report"] = {s: r.as_dict() for s, r in self._reports.items()}
    md["class_names"] = list(self._current_class_names())
    md["test_split"] = self.TEST_SPLIT
    md["options"] = {"skip_bad_images": self.skip_bad_images, "skip_bad_rows": self.skip_bad_rows,
                     "allow_empty_classes": self.allow_empty_classes}


def _to_mode(img: Image.Image, want: str) -> Image.Image:
  if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
    arr = np.asarray(img, np.float64)
    hi = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
    img = Image.fromarray(np.clip(arr / hi * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
  if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
    img = img.convert("RGBA")
    bg = Image.new("RGBA", img.size, (255, 255, 255, 255))
    img = Image.alpha_composite(bg, img)
  return img.convert(want)


def encode_png(img: Image.Image) -> bytes:
  buf = io.BytesIO()
  img.save(buf, format="PNG")
  return buf.getvalue()


def find_file(manual_dir, candidates: Iterable[str], what: str, instructions: str) -> epath.Path:
  """The first existing ``manual_dir/candidate``; a clear error listing them otherwise."""
  root = epath.Path(manual_dir)
  tried = []
  for rel in candidates:
    p = root / rel
    tried.append(str(p))
    if p.exists():
      return p
  raise FileNotFoundError(f"{what} not found; looked for: {', '.join(tried)}.\n{instructions}")


def list_images(folder: epath.Path, split: str, rep: SplitReport) -> list[epath.Path]:
  """Image files directly in ``folder`` (sorted); other files are counted and logged."""
  out = []
  for p in sorted(folder.iterdir(), key=lambda p: p.name):
    if p.is_dir():
      rep.count("ignored_subfolder", str(p), warn=True)
    elif p.suffix.lower() in IMAGE_SUFFIXES:
      out.append(p)
    else:
      rep.count(f"ignored_non_image_file{p.suffix.lower() or '(no suffix)'}", str(p), warn=True)
  return out


def resolve_class_names(names) -> tuple[tuple, dict]:
  """Class names found in a folder tree or CSV -> (class_names, {found name: index}).

  When every found name is a canonical class name or synonym (``classes.SYNONYMS``,
  case-insensitive, e.g. ``happy``, ``Angry``), labels are the canonical indices and
  class_names the canonical 7 (8 when contempt occurs). Otherwise the classes are the
  found names in sorted (Unicode) order, indices 0..K-1, and they are not comparable with
  the canonical datasets. Two found names that mean the same canonical class are an error.
  """
  from ssfer_jax.data import classes
  names = sorted(set(names))
  if names and all(n.strip().lower() in classes.SYNONYMS for n in names):
    mapping = {n: classes.SYNONYMS[n.strip().lower()] for n in names}
    seen = {}
    for n, i in mapping.items():
      if i in seen:
        raise BadInputError(f"class names {seen[i]!r} and {n!r} both mean canonical class "
                            f"{classes.CANONICAL8[i]!r}; merge them")
      seen[i] = n
    return classes.class_names(8 if max(mapping.values()) == 7 else 7), mapping
  return tuple(names), {n: i for i, n in enumerate(names)}
