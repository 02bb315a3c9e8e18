"""Label-split protocols (SPEC §2.2), the held-out validation part, the split file and its CLI.

Every expected count is worked out by hand in the comments.
"""

import json
import subprocess
import sys

import ml_collections
import numpy as np
import pytest

from ssfer_jax.data import splits
from ssfer_jax.data.classes import CANONICAL7

# Fixture: 4 classes of sizes 10, 7, 3, 9 (class c repeated n_c times, interleaved by a
# fixed permutation so that ids and classes are not aligned).
SIZES = np.array([10, 7, 3, 9])
LABELS = np.repeat(np.arange(4), SIZES)[np.random.default_rng(1).permutation(SIZES.sum())]


def counts_of(ids, labels=LABELS, c=4):
  return np.bincount(labels[ids], minlength=c).tolist()


def test_per_class_and_uniform_alias():
  for protocol in ("per_class", "uniform"):
    budget = splits.per_class_budget(SIZES, protocol=protocol, labels_per_class=3)
    assert budget.tolist() == [3, 3, 3, 3]
    ids = splits.select_labeled(LABELS, budget, seed=0)
    assert counts_of(ids) == [3, 3, 3, 3] and len(np.unique(ids)) == 12


def test_per_class_is_the_same_draw_as_before():
  # The pre-protocol implementation: default_rng([seed, 7919]), per class
  # rng.permutation(flatnonzero(labels == c))[:n], sorted. val_fraction = 0 must not move it.
  rng = np.random.default_rng([5, 7919])
  old = np.sort(np.concatenate([rng.permutation(np.flatnonzero(LABELS == c))[:2]
                                for c in range(4)]))
  assert splits.select_labeled(LABELS, np.full(4, 2), seed=5).tolist() == old.tolist()


def test_total_equal_floor():
  # 12 labels / 4 classes = 3 each; 14 / 4 -> floor 3 each (12 in all, the remainder reported).
  assert splits.per_class_budget(SIZES, protocol="total_equal", total=12).tolist() == [3, 3, 3, 3]
  assert splits.per_class_budget(SIZES, protocol="total_equal", total=14).tolist() == [3, 3, 3, 3]


def test_percent_largest_remainder():
  # 25 % of [10, 7, 3, 9]: exact 2.5, 1.75, 0.75, 2.25 -> floors [2, 1, 0, 2] (5);
  # total round(0.25 * 29 = 7.25) = 7 -> 2 more, to the largest fractional parts:
  # class 1 (.75) and class 2 (.75) (class 0 has .5, class 3 .25) -> [2, 2, 1, 2].
  assert splits.per_class_budget(SIZES, protocol="percent", percent=25).tolist() == [2, 2, 1, 2]
  # 10 %: exact 1.0, 0.7, 0.3, 0.9 -> floors [1, 0, 0, 0]; total round(2.9) = 3 -> 2 more:
  # class 3 (.9), class 1 (.7) -> [1, 1, 0, 1].
  assert splits.per_class_budget(SIZES, protocol="percent", percent=10).tolist() == [1, 1, 0, 1]
  # Exact arithmetic: 5 % of 20 is exactly 1 (no 1.0000000000000002 rounding up).
  assert splits.stratified_counts([20], 0.05).tolist() == [1]


def test_long_tailed_by_frequency_rank():
  # Sizes [10, 7, 3, 9]: rank 0 class 0 (10), rank 1 class 3 (9), rank 2 class 1 (7),
  # rank 3 class 2 (3); counts [5, 4, 2, 1] -> budget [5, 2, 1, 4].
  budget = splits.per_class_budget(SIZES, protocol="long_tailed", counts=(5, 4, 2, 1))
  assert budget.tolist() == [5, 2, 1, 4]
  assert counts_of(splits.select_labeled(LABELS, budget, seed=3)) == [5, 2, 1, 4]
  # Ties in frequency: the lower class index ranks first.
  budget = splits.per_class_budget([4, 6, 6], protocol="long_tailed", counts=(3, 2, 1))
  assert budget.tolist() == [1, 3, 2]


def test_remop_on_rafdb_class_sizes():
  # RAF-DB basic training split per canonical class (neutral, happiness, sadness, surprise,
  # fear, disgust, anger) = 2524, 4772, 1982, 1290, 281, 717, 705. Frequency rank: happiness,
  # neutral, sadness, surprise, disgust, anger, fear -> ReMoP's [500, 216, 94, 40, 17, 7, 3]
  # gives happiness 500, neutral 216, sadness 94, surprise 40, disgust 17, anger 7, fear 3.
  sizes = [2524, 4772, 1982, 1290, 281, 717, 705]
  budget = splits.per_class_budget(sizes, protocol="long_tailed",
                                   counts=(500, 216, 94, 40, 17, 7, 3))
  assert dict(zip(CANONICAL7, budget.tolist())) == {
      "neutral": 216, "happiness": 500, "sadness": 94, "surprise": 40, "fear": 3,
      "disgust": 17, "anger": 7}


def test_adacm_fear_undersampled():
  budget = splits.per_class_budget([700] * 7, protocol="adacm", total=4000)
  assert budget.tolist() == [625, 625, 625, 625, 250, 625, 625]  # fear is canonical 4
  with pytest.raises(ValueError, match="not an Ada-CM budget"):
    splits.per_class_budget([700] * 7, protocol="adacm", total=500)


def test_budget_larger_than_a_class_is_a_clear_error():
  # per_class 4: class 2 has only 3.
  with pytest.raises(ValueError, match=r"'per_class': class 2 has 3 training examples available "
                                       r"but its label budget is 4; lower the budget"):
    splits.per_class_budget(SIZES, protocol="per_class", labels_per_class=4)
  # long_tailed [5, 4, 8, 1]: rank 2 is class 1 (7 examples), asked for 8.
  with pytest.raises(ValueError, match=r"class 1 has 7 training examples available but its "
                                       r"label budget is 8"):
    splits.per_class_budget(SIZES, protocol="long_tailed", counts=(5, 4, 8, 1))
  # Ada-CM 100 labels: fear needs 10 but has 9; the class is named.
  with pytest.raises(ValueError, match=r"class 4 \(fear\) has 9 training examples available "
                                       r"but its label budget is 10"):
    splits.per_class_budget([20, 20, 20, 20, 9, 20, 20], protocol="adacm", total=100,
                            class_names=CANONICAL7)


def test_bad_protocol_and_arguments_are_named():
  with pytest.raises(ValueError, match="label_protocol='nope'"):
    splits.per_class_budget(SIZES, protocol="nope")
  with pytest.raises(ValueError, match="label_counts has 3 values but the dataset has 4"):
    splits.per_class_budget(SIZES, protocol="long_tailed", counts=(3, 2, 1))
  with pytest.raises(ValueError, match="label_percent"):
    splits.per_class_budget(SIZES, protocol="percent", percent=0)
  for bad in (-0.1, 1.0):
    with pytest.raises(ValueError, match=rf"config.eval.val_fraction={bad} must be in \[0, 1\)"):
      splits.resolve(LABELS, _Dataset, _dcfg(), val_fraction=bad)


def _dcfg(**kw):
  d = dict(label_protocol="per_class", labels_per_class=2, num_labels=0, label_percent=0.0,
           label_counts=(), split_seed=0, labeled_ids_file="")
  d.update(kw)
  return ml_collections.ConfigDict(d)


class _Dataset:
  name, num_classes, class_names = "fixture", 4, ("a", "b", "c", "d")


def test_validation_is_stratified_and_disjoint_and_zero_changes_nothing():
  # val 20 % of [10, 7, 3, 9]: exact 2, 1.4, .6, 1.8 -> floors [2, 1, 0, 1]; total
  # round(5.8) = 6 -> 2 more: class 3 (.8), class 2 (.6) -> [2, 1, 1, 2].
  ids, val = splits.resolve(LABELS, _Dataset, _dcfg(), val_fraction=0.2)
  assert counts_of(val) == [2, 1, 1, 2]
  assert counts_of(ids) == [2, 2, 2, 2]
  assert not np.intersect1d(ids, val).size
  ids0, val0 = splits.resolve(LABELS, _Dataset, _dcfg(), val_fraction=0.0)
  assert val0 is None
  assert ids0.tolist() == splits.select_labeled(LABELS, np.full(4, 2), 0).tolist()
  # A class left with fewer examples than its budget after the hold-out is an error.
  with pytest.raises(ValueError, match=r"class 2 \(c\) has 2 training examples available but "
                                       r"its label budget is 3"):
    splits.resolve(LABELS, _Dataset, _dcfg(labels_per_class=3), val_fraction=0.2)


def test_split_file_round_trip_hash_and_tamper(tmp_path):
  ids, val = splits.resolve(LABELS, _Dataset, _dcfg(), val_fraction=0.2)
  path = tmp_path / "labeled_ids.json"
  splits.write_ids(path, ids, dataset="fixture", num_train=len(LABELS), labels=LABELS,
                   num_classes=4, val_ids=val, protocol="per_class")
  obj = json.loads(path.read_text())
  assert obj["per_class"] == [2, 2, 2, 2] and obj["num_labeled"] == 8
  text = ",".join(str(i) for i in sorted(ids))
  import hashlib
  assert obj["sha256"] == hashlib.sha256(text.encode()).hexdigest() == splits.split_hash(ids)
  ids2, val2 = splits.resolve(LABELS, _Dataset, _dcfg(labeled_ids_file=str(path)), val_fraction=0.2)
  assert ids2.tolist() == ids.tolist() and val2.tolist() == val.tolist()
  obj["labeled_ids"][0] = int(np.setdiff1d(np.arange(len(LABELS)), np.concatenate([ids, val]))[0])
  path.write_text(json.dumps(obj))
  with pytest.raises(ValueError, match="do not match the file's sha256"):
    splits.read_split(path, dataset="fixture", num_train=len(LABELS))


def test_cli_writes_and_prints_a_synthetic_split_without_data_dir(tmp_path):
  out = tmp_path / "split.json"
  r = subprocess.run([sys.executable, "-m", "ssfer_jax.data.splits", "--dataset=synthetic",
                      "--protocol=percent", "--percent=5", f"--out={out}"],
                     capture_output=True, text=True, timeout=120)
  assert r.returncode == 0, r.stderr
  obj = json.loads(out.read_text())
  assert obj["protocol"] == "percent" and obj["num_labeled"] == 300  # 5 % of 6000
  assert f"sha256 {obj['sha256']}" in r.stdout and "neutral" in r.stdout
  bad = subprocess.run([sys.executable, "-m", "ssfer_jax.data.splits", "--protocol=per_class",
                        "--labels_per_class=100000", f"--out={tmp_path / 'x.json'}"],
                       capture_output=True, text=True, timeout=120)
  assert bad.returncode == 2
  last = bad.stderr.strip().splitlines()[-1]
  assert last.startswith("error: label split 'per_class': class 0 (neutral) has ")


def test_a_class_absent_from_the_data_gets_no_labels():
  # Class 1 has no example at all (CK+ folds lack classes): budget 0, not an error.
  budget = splits.per_class_budget([5, 0, 3], protocol="per_class", labels_per_class=2)
  assert budget.tolist() == [2, 0, 2]
