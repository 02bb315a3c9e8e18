"""ssfer_jax.tools.evaluate: a tiny trained run evaluated on its own data (reproduces
summary.json exactly) and on fixture datasets with other label sets (mapping through the
canonical order, dropped examples counted, model classes without examples reported)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ssfer_jax import train
from ssfer_jax.tools import evaluate
from ssfer_jax.data import classes
from ssfer_jax.data.prepare import prepare
from tests import fixtures
from tests.conftest import tiny_config


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  """A synthetic 7-class fixmatch run of 8 steps (checkpoint and eval at step 8)."""
  workdir = tmp_path_factory.mktemp("run")
  train.run(tiny_config("fixmatch"), workdir)
  return workdir


# -- label mapping (pure) ------------------------------------------------------------------
def test_map_labels_through_canonical_order():
  # Folder-style names in another order: matched by canonical meaning, not position.
  m = classes.map_labels(("Angry", "Happy", "sad"), classes.CANONICAL7)
  assert m.test_to_model.tolist() == [6, 1, 2]
  assert m.test_only == [] and m.model_only == ["neutral", "surprise", "fear", "disgust"]
  # AffectNet-8 test set, 7-class model: contempt has no model class.
  m = classes.map_labels(classes.CANONICAL8, classes.CANONICAL7)
  assert m.test_to_model.tolist() == list(range(7)) + [-1]
  assert m.test_only == ["contempt"] and m.model_only == []
  keep, mapped, dropped = classes.apply_label_map(np.array([7, 0, 7, 3, 6]), m)
  assert keep.tolist() == [1, 3, 4] and mapped.tolist() == [0, 3, 6]
  assert dropped == {"contempt": 2}
  # AffectNet-8 model on RAF-DB (7 classes): contempt is a model class the test set lacks.
  m = classes.map_labels(classes.CANONICAL7, classes.CANONICAL8)
  assert m.model_only == ["contempt"] and m.test_only == []
  # Names outside the canonical set match by name; no shared class is an error.
  m = classes.map_labels(("Mango", "apple"), ("apple", "mango", "zebra"))
  assert m.test_to_model.tolist() == [1, 0] and m.model_only == ["zebra"]
  with pytest.raises(ValueError, match="share no class"):
    classes.map_labels(("apple",), classes.CANONICAL7)
  with pytest.raises(ValueError, match="name one class twice"):
    classes.map_labels(("happy", "Happiness"), classes.CANONICAL7)
  with pytest.raises(ValueError, match="declares 7 classes"):
    classes.apply_label_map(np.array([0, 9]), classes.map_labels(classes.CANONICAL7,
                                                                   classes.CANONICAL7))


# -- end to end ----------------------------------------------------------------------------
def test_own_dataset_reproduces_summary(run_dir):
  summary = json.loads((run_dir / "summary.json").read_text())
  final = json.loads((run_dir / "eval" / "step_8.json").read_text())
  res = evaluate.evaluate(run_dir, "synthetic")
  assert res["split"] == "test" and res["checkpoint_step"] == 8
  assert res["num_evaluated"] == res["num_test_examples"] == 64 and res["num_dropped"] == 0
  for net in ("teacher", "student"):
    assert res[net]["top1"] == summary[net]["final_top1"]
    assert res[net]["mean_class_acc"] == summary[net]["final_mean_class_acc"]
    assert res[net]["macro_f1"] == summary[net]["final_macro_f1"]
    assert res[net]["confusion"] == final[net]["confusion"]
    assert res[net]["per_class_recall"] == final[net]["per_class_recall"]
  out = run_dir / "cross_eval" / "synthetic_test"
  saved = json.loads((out / "results.json").read_text())
  assert saved["teacher"]["confusion"] == final["teacher"]["confusion"]
  for net in ("teacher", "student"):
    assert (out / f"confusion_{net}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_affectnet8_contempt_dropped_and_counted(run_dir, tmp_path, capsys):
  """The 7-class run on an AffectNet-8 fixture (official CSV layout) through the CLI."""
  fixtures.write_affectnet(tmp_path / "an", per_class=(1, 2), extra_codes=(7, 7, 7, 8, 10))
  prepare("affectnet8", tmp_path / "an", tmp_path / "data")
  rc = evaluate.main([f"--workdir={run_dir}", "--dataset=affectnet8",
                      f"--data_dir={tmp_path / 'data'}"])
  printed = capsys.readouterr().out
  assert rc == 0
  assert "14 of 17 examples evaluated" in printed
  assert "dropped (class not in the model): contempt 3" in printed
  res = json.loads((run_dir / "cross_eval" / "affectnet8_validation" / "results.json").read_text())
  assert res["split"] == "validation"              # AffectNet's test split, by default
  assert res["test_class_names"] == list(classes.CANONICAL8)
  assert res["label_map"]["contempt"] is None
  assert res["label_map"]["happiness"] == "happiness"
  assert res["dropped"] == {"contempt": 3} and res["num_dropped"] == 3
  assert res["test_classes_missing_from_model"] == ["contempt"]
  assert res["model_classes_without_test_examples"] == []
  for net in ("teacher", "student"):
    cm = np.asarray(res[net]["confusion"])
    assert cm.shape == (7, 7) and cm.sum() == 14
    # Every fixture image of canonical class c landed in row c: 2 per class.
    assert cm.sum(1).tolist() == [2] * 7 == res[net]["support"]
    assert res[net]["top1"] == pytest.approx(np.trace(cm) / 14)


def test_subset_dataset_reports_model_classes_without_examples(run_dir, tmp_path):
  """An image folder with anger, happiness and contempt only: contempt is dropped, the
  model's other five classes have no examples and predictions into them are counted."""
  names = ["Angry", "happy", "contempt"]
  labels = {"Angry": 6, "happy": 1, "contempt": 7}
  fixtures.write_image_folder(tmp_path / "imgs", names, per_class=(1, 3), labels=labels)
  prepare("image_folder", tmp_path / "imgs", tmp_path / "data", allow_empty_classes=True)
  res = evaluate.evaluate(run_dir, "image_folder", data_dir=tmp_path / "data", write=False)
  assert res["num_test_examples"] == 9 and res["num_evaluated"] == 6
  assert res["dropped"] == {"contempt": 3}
  absent = ["neutral", "sadness", "surprise", "fear", "disgust"]
  assert res["model_classes_without_test_examples"] == absent
  for net in ("teacher", "student"):
    r = res[net]
    cm = np.asarray(r["confusion"])
    assert cm.sum(1).tolist() == [0, 3, 0, 0, 0, 0, 3]
    assert r["predictions_into_absent_classes"] == {
        n: int(cm[:, classes.CANONICAL7.index(n)].sum()) for n in absent}
    assert r["per_class"]["fear"]["recall"] is None and r["per_class"]["anger"]["support"] == 3
    # Mean per-class accuracy averages the two classes with examples only.
    assert r["mean_class_acc"] == pytest.approx((cm[1, 1] / 3 + cm[6, 6] / 3) / 2)
  assert not (run_dir / "cross_eval" / "image_folder_test").exists()


def test_errors_are_clear(run_dir, tmp_path, capsys):
  assert evaluate.main([f"--workdir={run_dir}", "--dataset=rafdb",
                        f"--data_dir={tmp_path}"]) == 2
  assert "not prepared" in capsys.readouterr().err
  assert evaluate.main([f"--workdir={run_dir}", "--dataset=synthetic", "--split=val"]) == 2
  assert "splits test and train" in capsys.readouterr().err
  assert evaluate.main([f"--workdir={tmp_path}", "--dataset=synthetic"]) == 2
  assert "config.json" in capsys.readouterr().err
