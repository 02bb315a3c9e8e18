"""Reading a user's manual download, for every builder: label / CSV text and folders.

* label and CSV files (``text_lines``, ``csv_rows``, ``csv_header``) may be UTF-8 with or
  without a byte-order mark (Excel's "CSV UTF-8", Windows editors) or UTF-16 with one;
  anything else is an error naming file (and line) that says how to re-save it. They
  are streamed, never held whole (FER2013's csv is 287 MB);
* folders (``scan_folder``, ``list_images``): hidden entries (``.DS_Store``, macOS
  ``._x.jpg`` resource forks, other dotfiles, ``__MACOSX``) are ignored and counted; two
  names in one folder that differ only in case (``train/`` + ``Train/``, one folder on
  macOS / Windows) are an error naming both.

What a builder does with what it read (bad-row policy, split folders, counts) is in
``common.py``; errors here are ``BadInputError``, which the builders raise too.
"""

from __future__ import annotations

import codecs
import csv
import io
from typing import TYPE_CHECKING, Iterable, Iterator

from etils import epath

if TYPE_CHECKING:
  from ssfer_jax.data.builders.common import SplitReport

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm")


class BadInputError(ValueError):
  """Input files that do not follow the dataset's official format."""


_BOMS = ((codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))
_RESAVE = "save it as UTF-8 (Excel: 'CSV UTF-8'; a byte-order mark is fine) or as UTF-16 with a byte-order mark"


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


def text_encoding(path) -> str:
  """A label / CSV file's encoding by its byte-order mark: ``utf-8-sig``, ``utf-16``, or
  ``utf-8`` without one. NUL bytes without a mark are an error naming the file."""
  with epath.Path(path).open("rb") as f:
    head = f.read(4096)
  enc = next((e for bom, e in _BOMS if head.startswith(bom)), "utf-8")
  if enc == "utf-8" and b"\x00" in head:
    raise BadInputError(f"{path}: contains NUL bytes, so it is UTF-16 without a byte-order mark, "
                        f"or not text; {_RESAVE}")
  return enc


def _lines(path, newline: str | None) -> Iterator[str]:
  """Streams the lines of a text file (FER2013's csv is 287 MB: never held as one str)."""
  enc = text_encoding(path)
  try:
    with epath.Path(path).open("rb") as b, io.TextIOWrapper(b, encoding=enc, newline=newline) as f:
      yield from f
  except UnicodeDecodeError:
    raise _not_text(epath.Path(path), enc) from None


def _not_text(path, enc: str) -> BadInputError:
  """The error for undecodable text, at its exact line (decodes the file once more)."""
  data = path.read_bytes()
  try:
    data.decode(enc)
  except UnicodeDecodeError as e:
    if enc == "utf-16":
      return BadInputError(f"{path}: not valid UTF-16 at byte {e.start} ({e.reason}); {_RESAVE}")
    line = data.count(b"\n", 0, e.start) + 1
    return BadInputError(f"{path}:{line}: not UTF-8 text (byte {data[e.start]:#04x}: {e.reason}; "
                         f"Latin-1 / Windows-1252?); {_RESAVE}")
  return BadInputError(f"{path}: not valid {enc} text; {_RESAVE}")


def text_lines(path) -> Iterator[tuple[int, str]]:
  """(line number, line without its newline) of a label file; any newline convention."""
  for lineno, line in enumerate(_lines(path, None), 1):
    yield lineno, line.rstrip("\n")


def csv_rows(path) -> Iterator[tuple[int, list]]:
  """(line number, row) of a CSV file; blank lines are left out."""
  reader = csv.reader(_lines(path, ""))
  try:
    for row in reader:
      if len(row) > 1 or (row and row[0].strip()):
        yield reader.line_num, row
  except csv.Error as e:
    raise BadInputError(f"{path}:{reader.line_num}: not a valid CSV line ({e})") from None


def csv_header(path) -> tuple[int, list, Iterator]:
  """(line number of the first row, its cells stripped, an iterator of the rows after it)."""
  rows = csv_rows(path)
  lineno, first = next(rows, (1, []))
  return lineno, [c.strip() for c in first], rows


def is_hidden(name: str) -> bool:
  """Dotfiles (.DS_Store, macOS ``._x.jpg`` resource forks) and macOS zip ``__MACOSX``."""
  return name.startswith(".") or name == "__MACOSX"


def scan_folder(folder, rep: SplitReport) -> tuple[list, list]:
  """(sub-folders, other entries) of ``folder``, each sorted by name.

  Hidden entries are left out and counted (``ignored_hidden``, not logged one by one:
  a macOS copy has one resource fork per image). Two sub-folders whose names differ
  only in case are an error naming both: macOS and Windows see one folder there, and
  keeping either would silently drop the other."""
  dirs, files = [], []
  for p in sorted(folder.iterdir(), key=lambda p: p.name):
    if is_hidden(p.name):
      rep.count("ignored_hidden", str(p))
    else:
      (dirs if p.is_dir() else files).append(p)
  first = {}
  for d in dirs:
    other = first.setdefault(d.name.casefold(), d)
    if other is not d:
      raise BadInputError(f"{folder}: folders {other.name}/ and {d.name}/ differ only in case "
                          "(one folder on macOS and Windows); merge them or rename one")
  return dirs, files


def list_images(folder, rep: SplitReport) -> list:
  """Image files directly in ``folder`` (sorted); everything else is counted, most logged."""
  dirs, files = scan_folder(folder, rep)
  for d in dirs:
    rep.count("ignored_subfolder", str(d), warn=True)
  out = []
  for p in files:
    if p.suffix.lower() in IMAGE_SUFFIXES:
      out.append(p)
    else:
      rep.count(f"ignored_non_image_file{p.suffix.lower() or '(no suffix)'}", str(p), warn=True)
  return out


