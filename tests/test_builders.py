"""Every builder from tiny fixtures in the official formats, read back through tfds_sources
and the grain pipeline; and every kind of bad input (clear error, or counted skip)."""

from __future__ import annotations

import os
import pickle
import shutil
import sys

import ml_collections
import numpy as np
import pytest
from PIL import Image

from ssfer_jax import algorithms
from ssfer_jax.config import base_config
from ssfer_jax.data import classes, pipeline, tfds_sources
from ssfer_jax.data.builders import BadInputError
from ssfer_jax.data.prepare import prepare, summary
from tests import fixtures


def _config(name, data_dir, **builder_kwargs):
  c = base_config()
  c.dataset.name = name
  c.dataset.data_dir = str(data_dir)
  c.dataset.builder_kwargs = ml_collections.ConfigDict(builder_kwargs)
  c.data.image_size = fixtures.SIZE
  c.data.batch_size = 4
  c.data.uratio = 2
  c.data.labels_per_class = 1
  c.data.num_workers = 0
  c.data.read_threads = 1
  c.data.prefetch = 1
  return c


def _grey(image):
  return float(np.asarray(image, np.float64).mean())


def _check_images_match_labels(images, labels):
  for img, lab in zip(images, labels):
    assert abs(_grey(img) - fixtures.label_value(lab)) <= 2, (lab, _grey(img))


def _check_split(source, expected):
  """Same multiset of (file_name, label) pairs, and each image carries its label's colour."""
  src = tfds_sources.tfds.data_source(source.name, split=source.split, data_dir=source.data_dir,
                                      download=False)
  got = sorted((ex["file_name"].decode(), int(ex["label"])) for ex in src)
  assert got == sorted((e[0], e[1]) for e in expected)
  np.testing.assert_array_equal(np.sort(source.labels), np.sort([e[1] for e in expected]))
  for i in range(len(source)):
    item = source[i]
    assert item["label"] == source.labels[i]
    assert abs(_grey(item["image"]) - fixtures.label_value(item["label"])) <= 2


def _build_and_load(name, manual, data_dir, expected, *, num_classes=7, channels=3,
                    test_split=None, prepare_kw=None, load_kw=None):
  builder = prepare(name, manual, data_dir, **(prepare_kw or {}))
  ds = tfds_sources.load(_config(name, data_dir, **(load_kw or {})))
  assert ds.num_classes == num_classes and len(ds.class_names) == num_classes
  assert ds.channels == channels
  _check_split(ds.train, expected["train"])
  _check_split(ds.test, expected[test_split or "test"])
  assert ds.train[0]["image"].shape[-1] == channels
  return builder, ds


def _through_pipeline(ds, algorithm="fixmatch"):
  """Two batches of TrainBatches and the eval arrays: images still match labels."""
  config = _config(ds.name, "unused")
  algo = algorithms.get_algorithm(algorithm)
  train = pipeline.split_train(ds, config, algo)
  batches = pipeline.TrainBatches(train, config, algo, channels=ds.channels)
  for _ in range(2):
    b = next(batches)
    assert b["x_lb"].shape == (4, fixtures.SIZE, fixtures.SIZE, ds.channels)
    _check_images_match_labels(b["x_lb"], b["y_lb"])
    if algo.uses_unlabeled:
      _check_images_match_labels(b["x_ulb_w"], b["y_ulb"])
    assert set(np.asarray(b["y_lb"])) <= set(np.asarray(ds.train.labels)[train.labeled_ids])
  images, labels = pipeline.eval_arrays(ds.test, fixtures.SIZE, ds.channels)
  assert images.shape == (len(ds.test), fixtures.SIZE, fixtures.SIZE, ds.channels)
  _check_images_match_labels(images, labels)


# ---------------------------------------------------------------- formats

def test_rafdb_builds_reads_and_streams(tmp_path):
  expected = fixtures.write_rafdb(tmp_path / "basic")
  builder, ds = _build_and_load("rafdb", tmp_path / "basic", tmp_path / "data", expected)
  assert "tensorflow" not in sys.modules  # SPEC §6: no TensorFlow anywhere
  assert builder.info.splits["train"].num_examples == 14
  assert (tmp_path / "data" / "ssfer_rafdb" / "1.0.0").is_dir()
  assert any(f.name.startswith("ssfer_rafdb-train.array_record")
             for f in (tmp_path / "data" / "ssfer_rafdb" / "1.0.0").iterdir())
  assert ds.class_names == classes.CANONICAL7
  text = summary(builder)
  assert "4 fear" in text and "total" in text
  # picklable for grain worker processes; labels come along, the file handle does not
  clone = pickle.loads(pickle.dumps(ds.train))
  np.testing.assert_array_equal(clone.labels, ds.train.labels)
  np.testing.assert_array_equal(clone[3]["image"], ds.train[3]["image"])
  _through_pipeline(ds)


def test_rafdb_parent_folder_and_trailing_newline(tmp_path):
  expected = fixtures.write_rafdb(tmp_path / "raf" / "basic", trailing_newline=True)
  _build_and_load("rafdb", tmp_path / "raf", tmp_path / "data", expected)


@pytest.mark.parametrize("num_classes", [7, 8])
def test_affectnet(tmp_path, num_classes):
  expected = fixtures.write_affectnet(tmp_path / "an")
  if num_classes == 7:
    expected = {s: [e for e in v if e[1] < 7] for s, v in expected.items()}
  builder, ds = _build_and_load(f"affectnet{num_classes}", tmp_path / "an", tmp_path / "data",
                                expected, num_classes=num_classes, test_split="validation")
  events = builder.info.metadata["report"]["train"]["events"]
  assert events["dropped_code_8_none"] == 1 and events["dropped_code_10_non_face"] == 1
  assert ("dropped_code_7_contempt" in events) == (num_classes == 7)
  if num_classes == 8:
    _through_pipeline(ds, "supervised")


def test_affectnet_validation_with_header(tmp_path):
  expected = fixtures.write_affectnet(tmp_path / "an", validation_header=True, extra_codes=())
  _build_and_load("affectnet7", tmp_path / "an", tmp_path / "data", expected,
                  test_split="validation")


@pytest.mark.parametrize("icml", [False, True])
def test_fer2013(tmp_path, icml):
  expected = fixtures.write_fer2013(tmp_path / "fer", icml=icml)
  _, ds = _build_and_load("fer2013", tmp_path / "fer", tmp_path / "data", expected, channels=1)
  assert ds.train[0]["image"].shape == (48, 48, 1)
  ds_val = tfds_sources.load(_config("fer2013", tmp_path / "data", test_split="validation"))
  assert len(ds_val.test) == len(expected["validation"])
  if not icml:
    _through_pipeline(ds)


@pytest.mark.parametrize("num_classes", [8, 7])
def test_ferplus(tmp_path, num_classes):
  expected = fixtures.write_ferplus(tmp_path / "fp")
  votes = {e[0]: e[2] for v in expected.values() for e in v}
  if num_classes == 7:
    expected = {s: [e for e in v if e[1] < 7] for s, v in expected.items()}
  builder, ds = _build_and_load("ferplus", tmp_path / "fp", tmp_path / "data", expected,
                                num_classes=num_classes, channels=1,
                                prepare_kw={"num_classes": num_classes},
                                load_kw={"num_classes": num_classes})
  events = builder.info.metadata["report"]["train"]["events"]
  assert events["dropped_majority_NF"] == 1 and events["dropped_majority_unknown"] == 1
  assert events["dropped_no_majority"] == 1 and events["dropped_no_image_name"] == 1
  src = tfds_sources.tfds.data_source(ds.train.name, split="train", data_dir=ds.train.data_dir,
                                      download=False)
  for ex in src:
    np.testing.assert_array_equal(ex["votes"], votes[ex["file_name"].decode()])


def test_ferplus_vote_rules():
  from ssfer_jax.data.builders.ferplus import vote_label
  assert vote_label([4, 4, 2, 0, 0, 0, 0, 0, 0, 0], "majority") is None
  assert vote_label([4, 4, 2, 0, 0, 0, 0, 0, 0, 0], "plurality") == "neutral"
  # single votes are outliers: 3 of (3 + 2) > half
  assert vote_label([3, 1, 1, 2, 1, 1, 1, 0, 0, 0], "majority") == "neutral"
  assert vote_label([0, 0, 0, 0, 0, 0, 0, 0, 2, 8], "majority") == "NF"


@pytest.mark.parametrize("wrapper", [False, True])
def test_sfew(tmp_path, wrapper):
  expected = fixtures.write_sfew(tmp_path / "sfew", wrapper=wrapper)
  (tmp_path / "sfew" / "Train" / ("Train_Aligned_Faces" if wrapper else "") / "Happy" /
   "Thumbs.db").write_bytes(b"junk")
  builder, _ = _build_and_load("sfew", tmp_path / "sfew", tmp_path / "data", expected,
                               test_split="validation")
  assert builder.info.metadata["report"]["train"]["events"]["ignored_non_image_file.db"] == 1


def test_image_folder_canonical_synonyms(tmp_path):
  names = ["Angry", "disgust", "fear", "happy", "Neutral", "sad", "surprised"]
  labels = {n: classes.SYNONYMS[n.lower()] for n in names}
  expected = fixtures.write_image_folder(tmp_path / "imgs", names, labels=labels)
  _, ds = _build_and_load("image_folder", tmp_path / "imgs", tmp_path / "data", expected)
  assert ds.class_names == classes.CANONICAL7
  _through_pipeline(ds)


def test_image_folder_other_names_sorted(tmp_path):
  names = ["zebra", "apple", "mango"]     # not expressions: sorted folder order
  labels = {"apple": 0, "mango": 1, "zebra": 2}
  expected = fixtures.write_image_folder(tmp_path / "imgs", names, labels=labels)
  _, ds = _build_and_load("image_folder", tmp_path / "imgs", tmp_path / "data", expected,
                          num_classes=3)
  assert ds.class_names == ("apple", "mango", "zebra")


def test_csv_list_names_and_indices(tmp_path):
  expected = fixtures.write_csv_list(tmp_path / "a", list(classes.CANONICAL7))
  _build_and_load("csv_list", tmp_path / "a", tmp_path / "da", expected)
  expected = fixtures.write_csv_list(tmp_path / "b", [str(i) for i in range(8)], header=False)
  _, ds = _build_and_load("csv_list", tmp_path / "b", tmp_path / "db", expected, num_classes=8)
  assert ds.class_names == classes.CANONICAL8


# ---------------------------------------------------------------- bad input

def _rafdb(tmp_path):
  manual = tmp_path / "basic"
  fixtures.write_rafdb(manual)
  return manual, manual / "EmoLabel" / "list_patition_label.txt"


def _replace_line(path, lineno, text):
  lines = path.read_text().splitlines()
  lines[lineno - 1] = text
  path.write_text("\n".join(lines))


def test_missing_files_and_folders(tmp_path):
  with pytest.raises(FileNotFoundError, match="is not a folder"):
    prepare("rafdb", tmp_path / "nope", tmp_path / "data")
  manual, label_file = _rafdb(tmp_path)
  shutil.rmtree(manual / "Image")
  with pytest.raises(FileNotFoundError, match="Image/aligned"):
    prepare("rafdb", manual, tmp_path / "data")
  label_file.unlink()
  with pytest.raises(FileNotFoundError, match="list_patition_label.txt"):
    prepare("rafdb", manual, tmp_path / "data")
  (tmp_path / "an").mkdir()
  with pytest.raises(FileNotFoundError, match="is empty"):
    prepare("affectnet7", tmp_path / "an", tmp_path / "data")
  (tmp_path / "an" / "readme.txt").write_text("x")
  with pytest.raises(FileNotFoundError, match="training.csv"):
    prepare("affectnet7", tmp_path / "an", tmp_path / "data")
  fixtures.write_sfew(tmp_path / "sfew")
  shutil.rmtree(tmp_path / "sfew" / "Val")
  with pytest.raises(FileNotFoundError, match="Val"):
    prepare("sfew", tmp_path / "sfew", tmp_path / "data")
  with pytest.raises(FileNotFoundError, match="(?s)not prepared.*ssfer_jax.data.prepare"):
    tfds_sources.load(_config("sfew", tmp_path / "data"))


def test_missing_image_error_or_counted_skip(tmp_path):
  manual, _ = _rafdb(tmp_path)
  (manual / "Image" / "aligned" / "train_00003_aligned.jpg").unlink()
  with pytest.raises(BadInputError, match=r"train_00003_aligned.jpg.*list_patition_label.txt:3"):
    prepare("rafdb", manual, tmp_path / "d1")
  b = prepare("rafdb", manual, tmp_path / "d2", skip_bad_images=True, allow_empty_classes=True)
  assert b.info.splits["train"].num_examples == 13
  assert b.info.metadata["report"]["train"]["events"]["skipped_bad_image"] == 1


def test_malformed_line_names_file_and_line(tmp_path):
  manual, label_file = _rafdb(tmp_path)
  _replace_line(label_file, 5, "train_00005.jpg")
  with pytest.raises(BadInputError, match=r"list_patition_label.txt:5: expected"):
    prepare("rafdb", manual, tmp_path / "d1")
  b = prepare("rafdb", manual, tmp_path / "d2", skip_bad_rows=True)
  assert b.info.splits["train"].num_examples == 13
  assert b.info.metadata["report"]["train"]["events"]["skipped_bad_row"] == 1


def test_label_out_of_range(tmp_path):
  manual, label_file = _rafdb(tmp_path)
  _replace_line(label_file, 2, "train_00002.jpg 8")
  with pytest.raises(BadInputError, match=r"list_patition_label.txt:2: label 8 is not one of the "
                     r"dataset's labels \[1, 2, 3, 4, 5, 6, 7\]\. Fix or delete this line") as e:
    prepare("rafdb", manual, tmp_path / "d1")
  assert str(e.value).count("list_patition_label.txt") == 1
  fixtures.write_csv_list(tmp_path / "c", [str(i) for i in range(7)])
  with open(tmp_path / "c" / "train.csv", "a") as f:
    f.write("images/train_0_0.png,9\n")
  with pytest.raises(BadInputError, match=r"train.csv:16: label 9 is out of range"):
    prepare("csv_list", tmp_path / "c", tmp_path / "d2")
  fixtures.write_fer2013(tmp_path / "fer")
  text = (tmp_path / "fer" / "fer2013.csv").read_text().splitlines()
  text[3] = "7" + text[3][1:]
  (tmp_path / "fer" / "fer2013.csv").write_text("\n".join(text))
  with pytest.raises(BadInputError, match=r"fer2013.csv:4: .*label 7"):
    prepare("fer2013", tmp_path / "fer", tmp_path / "d3")


def test_bad_csv_rows(tmp_path):
  fixtures.write_fer2013(tmp_path / "fer")
  path = tmp_path / "fer" / "fer2013.csv"
  lines = path.read_text().splitlines()
  lines[2] = "0,1 2 3,Training"
  path.write_text("\n".join(lines))
  with pytest.raises(BadInputError, match=r"fer2013.csv:3: pixels must be 2304"):
    prepare("fer2013", tmp_path / "fer", tmp_path / "d1")
  b = prepare("fer2013", tmp_path / "fer", tmp_path / "d2", skip_bad_rows=True)
  assert b.info.metadata["report"]["train"]["events"]["skipped_bad_row"] == 1
  fixtures.write_csv_list(tmp_path / "c", ["happy", "sad"])
  with open(tmp_path / "c" / "test.csv", "a") as f:
    f.write("images/test_0_1.png,3\n")
  with pytest.raises(BadInputError, match="mix integers and class names"):
    prepare("csv_list", tmp_path / "c", tmp_path / "d3", allow_empty_classes=True)


@pytest.mark.parametrize("damage", ["truncated", "corrupt"])
def test_truncated_or_corrupt_image(tmp_path, damage):
  manual, _ = _rafdb(tmp_path)
  path = manual / "Image" / "aligned" / "test_0002_aligned.jpg"
  # a bigger, noisy JPEG, so that truncation cuts into the entropy-coded data
  Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(path)
  data = path.read_bytes()
  path.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"\x00not an image" * 9)
  with pytest.raises(BadInputError, match="test_0002_aligned.jpg.*not a readable image"):
    prepare("rafdb", manual, tmp_path / "d1")
  b = prepare("rafdb", manual, tmp_path / "d2", skip_bad_images=True, allow_empty_classes=True)
  assert b.info.metadata["report"]["test"]["events"] == {"skipped_bad_image": 1, "empty_class": 1}
  assert b.info.splits["test"].num_examples == 6
  assert "skipped_bad_image: 1" in summary(b)


def test_grey_mixed_with_rgb_is_converted_and_counted(tmp_path):
  manual, _ = _rafdb(tmp_path)
  fixtures.write_image(str(manual / "Image" / "aligned" / "train_00004_aligned.jpg"), 0, mode="L")
  fixtures.write_image(str(manual / "Image" / "aligned" / "train_00005_aligned.jpg"), 1,
                       mode="RGBA", fmt="PNG")   # a PNG named .jpg, with alpha
  b = prepare("rafdb", manual, tmp_path / "data")
  events = b.info.metadata["report"]["train"]["events"]
  assert events == {"converted_L_to_RGB": 1, "converted_RGBA_to_RGB": 1}
  ds = tfds_sources.load(_config("rafdb", tmp_path / "data"))
  shapes = {ds.train[i]["image"].shape for i in range(len(ds.train))}
  assert shapes == {(fixtures.SIZE, fixtures.SIZE, 3)}


def test_empty_class(tmp_path):
  names = list(classes.CANONICAL7)
  fixtures.write_image_folder(tmp_path / "imgs", names)
  for f in (tmp_path / "imgs" / "test" / "fear").iterdir():
    f.unlink()
  with pytest.raises(BadInputError, match=r"test/fear'?\] contain no image"):
    prepare("image_folder", tmp_path / "imgs", tmp_path / "d1")
  b = prepare("image_folder", tmp_path / "imgs", tmp_path / "d2", allow_empty_classes=True)
  events = b.info.metadata["report"]["test"]["events"]
  assert events["empty_class_folder"] == 1 and events["empty_class"] == 1
  # a label-file dataset with a class missing from a split
  manual, label_file = _rafdb(tmp_path)
  lines = [l for l in label_file.read_text().splitlines() if not l.endswith(" 2")]
  label_file.write_text("\n".join(lines))
  with pytest.raises(BadInputError, match=r"no example of class\(es\) \['fear'\]"):
    prepare("rafdb", manual, tmp_path / "d3")


def test_sfew_unknown_folder_and_ferplus_misaligned(tmp_path):
  fixtures.write_sfew(tmp_path / "sfew")
  (tmp_path / "sfew" / "Train" / "Contempt").mkdir()
  with pytest.raises(BadInputError, match=r"\['Contempt'\] are not SFEW classes"):
    prepare("sfew", tmp_path / "sfew", tmp_path / "d1")
  fixtures.write_ferplus(tmp_path / "fp")
  path = tmp_path / "fp" / "fer2013new.csv"
  path.write_text("\n".join(path.read_text().splitlines()[:-1]))
  with pytest.raises(BadInputError, match="rows align with fer2013.csv by position"):
    prepare("ferplus", tmp_path / "fp", tmp_path / "d2")


def test_unknown_builder_kwargs_and_dataset(tmp_path):
  with pytest.raises(ValueError, match="unknown config.dataset.builder_kwargs"):
    tfds_sources.load(_config("rafdb", tmp_path, skip_bad_rows=True))
  with pytest.raises(ValueError, match="unknown dataset"):
    prepare("raf", tmp_path, tmp_path)
