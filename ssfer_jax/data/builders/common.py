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

The user's label / CSV files and folders are read by ``files.py`` (text encodings,
hidden entries, names differing only in case). On top of it, here:

* a key (image name or path) listed twice in a split is a bad row whose message names
  both file:line positions (``unique_key``): TFDS needs unique keys, and its own
  duplicate check would fail on a missing TensorFlow instead;
* split folders (``split_folders``): a folder that is no expected split is a counted
  warning, not an error, since official downloads carry some (SFEW's unlabelled
  ``Test/``). A symlink loop is a bad image like an unreadable file.

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

# BadInputError is defined beside the file readers that raise it; builders use common's name.
from ssfer_jax.data import classes, images
from ssfer_jax.data.builders.files import BadInputError, scan_folder  # noqa: F401

_PASS_THROUGH_FORMATS = ("JPEG", "PNG")
log = logging.getLogger("ssfer_jax.data.builders")

SKIP = -1   # FerBuilder.canonical: the row was a bad row, skipped (and counted)


class SplitReport:
  """Counts of one split: kept examples per class, and every skip / drop / conversion.

  Class names are given when reporting, since a generic builder only knows them after it
  has scanned the folders (which already counts ignored files)."""

  def __init__(self, split: str):
    self.split = split
    self.labels = collections.Counter()
    self.events = collections.Counter()
    self.examples = collections.defaultdict(list)   # event -> first few sources

  def count(self, event: str, source: str | None = None, *, warn: bool = False) -> None:
    self.events[event] += 1
    if source is not None and len(self.examples[event]) < 5:
      self.examples[event].append(source)
    if warn:
      log.warning("[%s] %s: %s", self.split, event, source)

  def as_dict(self, class_names=()) -> dict:
    return {"examples": sum(self.labels.values()),
            "per_class": {n: self.labels[i] for i, n in enumerate(class_names)},
            "events": dict(sorted(self.events.items())),
            "event_examples": {k: list(v) for k, v in sorted(self.examples.items())}}


class FerBuilder(tfds.core.GeneratorBasedBuilder):
  """Base class: options, features, image checks and per-split reports.

  Subclasses define ``MANUAL_DOWNLOAD_INSTRUCTIONS``, ``_split_generators`` (whose
  generators go through ``self._examples(split, items)``) and, where the defaults below do
  not fit, ``TEST_SPLIT`` (the split used as the test set), ``CHANNELS`` and
  ``BUILDER_CONFIGS`` named by class count ("7", "8"). Every builder is at its first
  release; one that changes what it writes sets its own ``VERSION`` and notes.
  """

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
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
    self._keys: dict[str, dict] = {}
    self.layout = SplitReport("manual_dir")   # what the folder scans of manual_dir ignored
    self._class_names_found: tuple | None = None
    super().__init__(file_format=file_format, **kwargs)

  # ---- what a subclass may override ----
  @property
  def num_classes(self) -> int:
    """7, or the class count the builder config is named after (AffectNet, FERPlus)."""
    return int(self.builder_config.name) if self.builder_config else 7

  def class_names(self) -> tuple:
    """Class names in label order: the canonical order for the official datasets (the
    generic builders return the names they found)."""
    return classes.class_names(self.num_classes)

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
      self._reports[split] = SplitReport(split)
    return self._reports[split]

  def _current_class_names(self) -> tuple:
    return self._class_names_found or self.class_names()

  def bad_row(self, split: str, source: str, why: str) -> None:
    """A malformed line: raise naming ``source`` (file:line) once, or skip and count."""
    why = why.removeprefix(f"{source}: ")
    if not self.skip_bad_rows:
      raise BadInputError(f"{source}: {why}. Fix or delete this line, or prepare with "
                          "skip_bad_rows=True (--skip_bad_rows) to skip such lines (they are counted)")
    self.report(split).count("skipped_bad_row", f"{source}: {why}", warn=True)

  def canonical(self, split: str, mapping: dict, label, source: str, *, num_classes: int = 7):
    """``classes.to_canonical`` with a label the dataset does not define a bad row:
    the canonical index, None (a class outside the label set, e.g. contempt in a 7-class
    config) or ``SKIP`` (the row was skipped and counted)."""
    from ssfer_jax.data import classes
    if label not in mapping:
      self.bad_row(split, source, f"label {label!r} is not one of the dataset's labels "
                   f"{sorted(mapping, key=str)}")
      return SKIP
    return classes.to_canonical(mapping, label, source=source, num_classes=num_classes)

  def unique_key(self, split: str, key: str, source: str) -> bool:
    """True the first time ``key`` is listed in ``split``; a repeat is a bad row naming
    both positions (False when skipped). Checked here because TFDS rejects duplicate keys
    only at the end of a split, through TensorFlow, which this project does not have."""
    seen = self._keys.setdefault(split, {})
    if key in seen:
      self.bad_row(split, source, f"{key!r} is listed twice (first at {seen[key]})")
      return False
    seen[key] = source
    return True

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
    except OSError as e:   # missing, a folder, no permission, a symlink loop, I/O error
      return self._bad_image(split, where, f"cannot read the file ({e.strerror or type(e).__name__})")
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
          img = images.pil_to_mode(img, want)
        else:
          rep.count(f"reencoded_{fmt}_as_PNG", where)
        return encode_png(img)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
      return self._bad_image(split, where, f"not a readable image ({e})")

  def split_folders(self, root, expected: dict, instructions: str) -> dict:
    """{split: folder} of ``root``: names matched case-insensitively with ``expected[split]``
    (alternatives, the first present wins). A split without a folder is an error listing
    what was found. Any other folder (a less preferred alternative too) is logged and
    counted as ``ignored_unexpected_folder`` in ``metadata['layout']``: a warning, not an
    error, since every needed split was found and official downloads carry extra folders
    (SFEW's unlabelled Test/); prepare's summary shows the count."""
    dirs, _ = scan_folder(epath.Path(root), self.layout)
    by_name = {d.name.casefold(): d for d in dirs}
    out = {}
    for split, names in expected.items():
      found = [by_name[n.casefold()] for n in names if n.casefold() in by_name]
      if not found:
        raise FileNotFoundError(f"{root}: no {split} folder ({' or '.join(n + '/' for n in names)}); "
                                f"found {[d.name + '/' for d in dirs]}.\n{instructions}")
      out[split] = found[0]
    using = ", ".join(f"{s}={d.name}/" for s, d in out.items())
    for d in dirs:
      if d not in out.values():
        self.layout.count("ignored_unexpected_folder", f"{d} (split folders used: {using})", warn=True)
    return out

  def class_folders(self, split: str, split_dir) -> list:
    """The sub-folders of a split folder (``scan_folder``); files beside them are counted."""
    rep = self.report(split)
    dirs, files = scan_folder(split_dir, rep)
    for f in files:
      rep.count("ignored_file_beside_class_folders", str(f), warn=True)
    return dirs

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
      rep.labels[int(ex["label"])] += 1
      yield key, ex
    names = self._current_class_names()
    empty = [n for i, n in enumerate(names) if rep.labels[i] == 0]
    if empty:
      msg = (f"split {split!r} has no example of class(es) {empty} "
             f"(counts {rep.as_dict(names)['per_class']})")
      if not self.allow_empty_classes:
        raise BadInputError(msg + ". Check the manual download is complete, or prepare with "
                            "allow_empty_classes=True (--allow_empty_classes) to accept it")
      rep.count("empty_class", ",".join(empty))
      log.warning(msg)
    log.info("[%s] %s", split, rep.as_dict(names))
    self._store_reports()

  def _store_reports(self) -> None:
    md = self.info.metadata
    names = self._current_class_names()
    md["report"] = {s: r.as_dict(names) for s, r in self._reports.items()}
    md["layout"] = {k: v for k, v in self.layout.as_dict().items() if k.startswith("event")}
    md["class_names"] = list(names)
    md["test_split"] = self.TEST_SPLIT
    md["options"] = {"skip_bad_images": self.skip_bad_images, "skip_bad_rows": self.skip_bad_rows,
                     "allow_empty_classes": self.allow_empty_classes}


def encode_png(img: Image.Image) -> bytes:
  buf = io.BytesIO()
  img.save(buf, format="PNG")
  return buf.getvalue()


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
