"""Files as users really have them (issue #18's abuse findings), for every builder they
concern: byte-order marks and UTF-16, duplicate rows, split / class folders differing only
in case, unexpected folders, macOS resource forks, symlink loops, AffectNet validation.csv
with its own or no header, and one source position per message."""

from __future__ import annotations

import os
import re
import sys

import pytest

from ssfer_jax.data.builders import BadInputError
from ssfer_jax.data.prepare import prepare, summary
from tests import fixtures
from tests.test_builders import _build_and_load


def _recode(path, encoding):
  text = path.read_bytes().decode("utf-8")
  path.write_bytes(text.encode(encoding))


# ---------------------------------------------------------------- encodings

@pytest.mark.parametrize("name,index", [(n, i) for n, fs in fixtures.TEXT_FILES.items()
                                        for i in range(len(fs))])
def test_utf8_bom_is_read(tmp_path, name, index):
  expected = fixtures.write_dataset(name, tmp_path / "m")
  path = tmp_path / "m" / fixtures.TEXT_FILES[name][index]
  _recode(path, "utf-8-sig")
  assert path.read_bytes()[:3] == b"\xef\xbb\xbf"
  _build_and_load(name, tmp_path / "m", tmp_path / "data", expected, **fixtures.BUILD_ARGS[name])


@pytest.mark.parametrize("name", ["rafdb", "csv_list"])
def test_utf16_with_bom_is_read(tmp_path, name):
  expected = fixtures.write_dataset(name, tmp_path / "m")
  for rel in fixtures.TEXT_FILES[name]:
    _recode(tmp_path / "m" / rel, "utf-16")        # Python writes UTF-16 with its BOM
  _build_and_load(name, tmp_path / "m", tmp_path / "data", expected, **fixtures.BUILD_ARGS[name])


def test_utf16_without_bom_and_latin1_name_the_file(tmp_path):
  fixtures.write_dataset("rafdb", tmp_path / "m")
  path = tmp_path / "m" / fixtures.TEXT_FILES["rafdb"][0]
  _recode(path, "utf-16-le")
  with pytest.raises(BadInputError, match=r"list_patition_label.txt: contains NUL bytes, so it is "
                     r"UTF-16 without a byte-order mark, or not text; save it as UTF-8"):
    prepare("rafdb", tmp_path / "m", tmp_path / "d1")
  fixtures.write_dataset("csv_list", tmp_path / "c")
  with open(tmp_path / "c" / "train.csv", "ab") as f:
    f.write("images/caf\u00e9.png,happiness\n".encode("cp1252"))
  with pytest.raises(BadInputError, match=r"train.csv:16: not UTF-8 text \(byte 0xe9: invalid "
                     r"continuation byte; Latin-1 / Windows-1252\?\); save it as UTF-8"):
    prepare("csv_list", tmp_path / "c", tmp_path / "d2")


@pytest.mark.parametrize("name", ["rafdb", "csv_list", "fer2013"])
@pytest.mark.parametrize("newline", ["\r\n", "\r"])      # Windows; old Mac Excel "CSV"
def test_any_newline_convention_is_read(tmp_path, name, newline):
  expected = fixtures.write_dataset(name, tmp_path / "m")
  for rel in fixtures.TEXT_FILES[name]:
    path = tmp_path / "m" / rel
    path.write_bytes(newline.join(path.read_text().splitlines()).encode())
  _build_and_load(name, tmp_path / "m", tmp_path / "data", expected, **fixtures.BUILD_ARGS[name])


# ---------------------------------------------------------------- duplicates

def _append_copy(rel, line):
  """Appends a copy of line ``line`` of ``rel``; returns the new line's number."""
  def damage(root):
    path = root / rel
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines + [lines[line - 1]]) + "\n")
    return len(lines) + 1
  return damage


def _rename_ferplus_row(root):
  """fer2013new.csv line 3 gets line 2's image name (a plain copy would misalign the rows)."""
  path = root / "fer2013new.csv"
  lines = path.read_text().splitlines()
  cells = lines[2].split(",")
  cells[1] = lines[1].split(",")[1]
  lines[2] = ",".join(cells)
  path.write_text("\n".join(lines) + "\n")
  return 3


# dataset, damage, file, first line, key, split of the duplicate
DUPLICATES = [
    ("rafdb", _append_copy("EmoLabel/list_patition_label.txt", 3), "list_patition_label.txt", 3,
     "train_00003.jpg", "train"),
    ("affectnet7", _append_copy("Manually_Annotated_file_lists/training.csv", 2), "training.csv", 2,
     "101/img0001.jpg", "train"),
    ("affectnet7", _append_copy("Manually_Annotated_file_lists/validation.csv", 1), "validation.csv", 1,
     "101/img0019.jpg", "validation"),
    ("ferplus", _rename_ferplus_row, "fer2013new.csv", 2, "fer0000000.png", "train"),
    ("csv_list", _append_copy("test.csv", 2), "test.csv", 2, "images/test_0_0.png", "test"),
]


@pytest.mark.parametrize("name,damage,file,first,key,split", DUPLICATES,
                         ids=[f"{d[0]}-{d[2]}" for d in DUPLICATES])
def test_duplicate_rows_name_both_lines(tmp_path, name, damage, file, first, key, split):
  fixtures.write_dataset(name, tmp_path / "m")
  line = damage(tmp_path / "m")
  args = fixtures.BUILD_ARGS[name].get("prepare_kw", {})
  with pytest.raises(BadInputError) as e:
    prepare(name, tmp_path / "m", tmp_path / "d1", **args)
  msg = str(e.value)
  assert re.fullmatch(rf"\S*/{file}:{line}: '{key}' is listed twice \(first at \S*/{file}:{first}\)\. "
                      r"Fix or delete this line, or prepare with skip_bad_rows=True \(--skip_bad_rows\) "
                      r"to skip such lines \(they are counted\)", msg), msg
  assert "tensorflow" not in sys.modules
  b = prepare(name, tmp_path / "m", tmp_path / "d2", skip_bad_rows=True, **args)
  assert b.info.metadata["report"][split]["events"]["skipped_bad_row"] == 1


def test_fer2013_identical_rows_are_both_kept(tmp_path):
  """FER2013's key is the row index (FERPlus aligns by it): a repeated row is two examples."""
  fixtures.write_fer2013(tmp_path / "m")
  _append_copy("fer2013.csv", 2)(tmp_path / "m")
  b = prepare("fer2013", tmp_path / "m", tmp_path / "d")
  assert b.info.splits["train"].num_examples == 15       # 14 written + the copy


# ---------------------------------------------------------------- folders

def _folder_dataset(name, root):
  if name == "sfew":
    return fixtures.write_sfew(root)
  return fixtures.write_image_folder(root, ["apple", "mango", "zebra"])   # classes 0, 1, 2


# dataset, folder to create (a case twin of an existing one), the two names in the error
CASE_TWINS = [
    ("image_folder", "Train", "Train/ and train/"),
    ("image_folder", "test/Mango", "Mango/ and mango/"),
    ("sfew", "train", "Train/ and train/"),
    ("sfew", "Val/happy", "Happy/ and happy/"),
]


@pytest.mark.parametrize("name,twin,names", CASE_TWINS, ids=[f"{c[0]}-{c[1]}" for c in CASE_TWINS])
def test_folders_differing_only_in_case_are_an_error(tmp_path, name, twin, names):
  _folder_dataset(name, tmp_path / "m")
  fixtures.write_image(str(tmp_path / "m" / twin / "extra" / "x.png"), 0)
  parent = os.path.dirname(str(tmp_path / "m" / twin))
  with pytest.raises(BadInputError, match=rf"^{re.escape(parent)}: folders {re.escape(names)} differ "
                     r"only in case \(one folder on macOS and Windows\); merge them or rename one$"):
    prepare(name, tmp_path / "m", tmp_path / "d")


def test_unexpected_split_folders_are_counted(tmp_path):
  expected = _folder_dataset("image_folder", tmp_path / "m")
  for extra in ("val", "notes"):       # test/ wins over val/; notes/ is no split
    fixtures.write_image(str(tmp_path / "m" / extra / "happy" / "x.png"), 1)
  b, _ = _build_and_load("image_folder", tmp_path / "m", tmp_path / "d", expected, num_classes=3)
  layout = b.info.metadata["layout"]
  assert layout["events"] == {"ignored_unexpected_folder": 2}
  assert layout["event_examples"]["ignored_unexpected_folder"][0].endswith(
      "/notes (split folders used: train=train/, test=test/)")
  assert "[manual_dir] ignored_unexpected_folder: 2" in summary(b)
  expected = fixtures.write_sfew(tmp_path / "s")
  fixtures.write_image(str(tmp_path / "s" / "Test" / "x.png"), 0)      # SFEW's unlabelled test set
  b, _ = _build_and_load("sfew", tmp_path / "s", tmp_path / "d2", expected, test_split="validation")
  assert b.info.metadata["layout"]["events"] == {"ignored_unexpected_folder": 1}


@pytest.mark.parametrize("name", ["image_folder", "sfew"])
def test_resource_forks_and_dotfiles_are_ignored_and_counted(tmp_path, name):
  expected = _folder_dataset(name, tmp_path / "m")
  root = tmp_path / "m"
  train = next(p for p in root.iterdir() if p.name.lower() == "train")
  cls = sorted(p for p in train.iterdir())[0]
  apple_double = b"\x00\x05\x16\x07" + b"\x00" * 60
  for img in sorted(cls.iterdir()):                         # one ._ fork per image, as macOS copies
    (cls / f"._{img.name}").write_bytes(apple_double)
  (cls / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
  (train / ".DS_Store").write_bytes(b"\x00")
  (root / ".DS_Store").write_bytes(b"\x00")
  fixtures.write_image(str(root / "__MACOSX" / train.name / "x.png"), 0)
  b, _ = _build_and_load(name, root, tmp_path / "d", expected,
                         test_split="validation" if name == "sfew" else None,
                         num_classes=7 if name == "sfew" else 3)
  # 2 images in the class folder -> 2 forks + .DS_Store there, + train/.DS_Store
  assert b.info.metadata["report"]["train"]["events"] == {"ignored_hidden": 4}
  assert b.info.metadata["layout"]["events"] == {"ignored_hidden": 2}    # .DS_Store, __MACOSX
  text = summary(b)
  assert "[train] ignored_hidden: 4" in text and "[manual_dir] ignored_hidden: 2" in text


# ---------------------------------------------------------------- symlink loops

@pytest.mark.parametrize("name", ["rafdb", "image_folder"])
def test_symlink_loop_is_a_bad_image(tmp_path, name):
  if name == "rafdb":
    fixtures.write_rafdb(tmp_path / "m")
    path = tmp_path / "m" / "Image" / "aligned" / "train_00003_aligned.jpg"
  else:
    _folder_dataset(name, tmp_path / "m")
    path = tmp_path / "m" / "train" / "mango" / "train_0.png"
  path.unlink()
  os.symlink("loop.png", path)
  os.symlink(path.name, path.parent / "loop.png")       # path -> loop.png -> path
  with pytest.raises(BadInputError, match=rf"^{re.escape(str(path.parent))}/(loop.png|{path.name})"
                     r"( \(listed at \S+\))?: cannot read the file \(Too many levels of symbolic "
                     r"links\)\. Replace the file, or prepare with skip_bad_images"):
    prepare(name, tmp_path / "m", tmp_path / "d1")
  b = prepare(name, tmp_path / "m", tmp_path / "d2", skip_bad_images=True)
  # image_folder lists loop.png too: both ends of the loop are skipped
  assert b.info.metadata["report"]["train"]["events"] == {"skipped_bad_image": 1 if name == "rafdb" else 2}
  assert b.info.splits["train"].num_examples == (13 if name == "rafdb" else 5)


# ---------------------------------------------------------------- AffectNet validation.csv

PERMUTED = ["expression", "valence", "face_x", "subDirectory_filePath", "arousal", "face_y",
            "face_width", "face_height", "facial_landmarks"]


@pytest.mark.parametrize("validation_header,training_columns", [
    (False, None), (True, None), (PERMUTED, None),
    (False, PERMUTED),          # headerless validation: the documented order, not training.csv's
], ids=["none", "official", "permuted", "none-training-permuted"])
def test_affectnet_validation_header(tmp_path, validation_header, training_columns):
  expected = fixtures.write_affectnet(tmp_path / "an", validation_header=validation_header,
                                      training_columns=training_columns)
  expected = {s: [e for e in v if e[1] < 7] for s, v in expected.items()}
  _build_and_load("affectnet7", tmp_path / "an", tmp_path / "d", expected, test_split="validation")


def test_affectnet_validation_partial_header_is_an_error(tmp_path):
  fixtures.write_affectnet(tmp_path / "an", validation_header=["subDirectory_filePath", "face_x"])
  with pytest.raises(BadInputError, match=r"validation.csv:1: header lacks column\(s\) \['expression'\]"
                     r".*\(or with no header: then its columns are read in that order\)$"):
    prepare("affectnet7", tmp_path / "an", tmp_path / "d")


# ---------------------------------------------------------------- one source per message

@pytest.mark.parametrize("name,rel,line,cells", [
    ("fer2013", "fer2013.csv", 4, {0: "7"}),
    ("affectnet7", "Manually_Annotated_file_lists/training.csv", 3, {6: "11"}),
])
def test_undefined_label_names_its_line_once(tmp_path, name, rel, line, cells):
  fixtures.write_dataset(name, tmp_path / "m")
  path = tmp_path / "m" / rel
  lines = path.read_text().splitlines()
  row = lines[line - 1].split(",")
  for i, v in cells.items():
    row[i] = v
  lines[line - 1] = ",".join(row)
  path.write_text("\n".join(lines) + "\n")
  with pytest.raises(BadInputError) as e:
    prepare(name, tmp_path / "m", tmp_path / "d")
  msg = str(e.value)
  assert msg.startswith(f"{path}:{line}: label {list(cells.values())[0]} is not one of the dataset's "
                        "labels [0, 1, 2, 3, 4, 5, 6"), msg
  assert msg.count(os.path.basename(rel)) == 1, msg


def test_affectnet_headerless_validation_row_with_missing_column(tmp_path):
  fixtures.write_affectnet(tmp_path / "an")
  path = tmp_path / "an" / "Manually_Annotated_file_lists" / "validation.csv"
  lines = path.read_text().splitlines()
  lines[2] = lines[2].rsplit(",", 1)[0]          # arousal cut off
  path.write_text("\n".join(lines) + "\n")
  with pytest.raises(BadInputError, match=r"validation.csv:3: expected 9 columns \(in the documented "
                     r"order: the file has no header\), got 8\. Fix or delete this line"):
    prepare("affectnet7", tmp_path / "an", tmp_path / "d")
