"""ssfer_jax.stats against hand-computed values, and the gathering, table and paired section
of bench/compare_methods.py on hand-made summaries (no training)."""

import json
import math
import os
import sys

import ml_collections
import numpy as np
import pytest

from ssfer_jax import stats

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))
import compare_methods as cm  # noqa: E402  (bench/ is not a package)

T975_4 = 2.7764451051977987  # t_{0.975} with 4 degrees of freedom
T975_2 = 0.95 / math.sqrt(2 * 0.975 * 0.025)  # closed form for df = 2: 4.3026...


# -- Student t ------------------------------------------------------------------------
@pytest.mark.parametrize("df, table", [(1, 12.706), (2, 4.303), (4, 2.776), (9, 2.262),
                                       (29, 2.045), (10**6, 1.960), (math.inf, 1.960)])
def test_t_quantile_matches_the_printed_table(df, table):
  assert stats.t_quantile(0.975, df) == pytest.approx(table, abs=1e-3)


@pytest.mark.parametrize("q", [0.6, 0.9, 0.975, 0.995, 0.9995])
def test_t_quantile_matches_the_closed_forms_of_df_1_and_2(q):
  assert stats.t_quantile(q, 1) == pytest.approx(math.tan(math.pi * (q - 0.5)), rel=1e-9)
  assert stats.t_quantile(q, 2) == pytest.approx((2 * q - 1) / math.sqrt(2 * q * (1 - q)),
                                                 rel=1e-9)
  assert stats.t_quantile(1 - q, 5) == -stats.t_quantile(q, 5)


def test_t_quantile_rejects_a_q_outside_0_1_and_a_non_positive_df():
  assert stats.t_quantile(0.5, 3) == 0.0
  with pytest.raises(ValueError, match="q=1.0"):
    stats.t_quantile(1.0, 3)
  with pytest.raises(ValueError, match="df=0"):
    stats.t_quantile(0.975, 0)


@pytest.mark.parametrize("x", [0.01, 0.3, 0.5, 0.77, 0.999])
def test_incomplete_beta_matches_its_closed_forms(x):
  assert stats._betainc(3.5, 1.0, x) == pytest.approx(x ** 3.5, rel=1e-12)
  assert stats._betainc(1.0, 2.5, x) == pytest.approx(1 - (1 - x) ** 2.5, rel=1e-12)
  assert stats._betainc(0.5, 0.5, x) == pytest.approx(2 / math.pi * math.asin(math.sqrt(x)),
                                                      rel=1e-12)


# -- describe -------------------------------------------------------------------------
def test_describe_a_known_sample():
  d = stats.describe([3.0, 1.0, 5.0, 2.0, 4.0])
  half = T975_4 * math.sqrt(2.5) / math.sqrt(5)  # 1.963243
  assert (d["n"], d["mean"], d["min"], d["max"]) == (5, 3.0, 1.0, 5.0)
  assert d["std"] == pytest.approx(math.sqrt(2.5), rel=1e-12)
  assert d["ci95"] == pytest.approx([3 - half, 3 + half], rel=1e-9)
  assert d["ci95"] == pytest.approx([1.036757, 4.963243], abs=1e-6)
  assert d["values"] == [3.0, 1.0, 5.0, 2.0, 4.0]


def test_describe_leaves_out_missing_values_and_has_no_spread_for_one():
  d = stats.describe([None, float("nan"), 2.0, 4.0])  # two values: half width = |x1 - x2| / 2 * t
  assert (d["n"], d["mean"]) == (2, 3.0)
  assert d["ci95"] == pytest.approx([3 - 12.7062047, 3 + 12.7062047], abs=1e-6)
  one = stats.describe([0.5])
  assert (one["n"], one["mean"], one["std"], one["ci95"]) == (1, 0.5, None, None)
  none = stats.describe([None])
  assert (none["n"], none["mean"], none["std"], none["ci95"], none["min"]) == (0, None, None,
                                                                            None, None)
  json.dumps(one), json.dumps(none)  # None, not NaN: valid JSON


def test_mean_std_text():
  assert stats.mean_std_text([0.5, 0.6, 0.7], 100.0) == "60.00 ± 10.00"
  assert stats.mean_std_text([10.0, 20.0], 1.0, 1) == "15.0 ± 7.1"
  assert stats.mean_std_text([0.5, None], 100.0) == "50.00"
  assert stats.mean_std_text([None], 100.0) == "—"


# -- paired ---------------------------------------------------------------------------
def test_paired_differences_1_2_3():
  p = stats.paired([3.0, 5.0, 7.0], [2.0, 3.0, 4.0])  # diffs 1, 2, 3
  half = T975_2 / math.sqrt(3)
  assert (p["n"], p["mean_diff"], p["std_diff"]) == (3, 2.0, 1.0)
  assert p["ci95"] == pytest.approx([2 - half, 2 + half], rel=1e-9)
  assert p["ci95"] == pytest.approx([-0.484138, 4.484138], abs=1e-6)
  # only all-plus and all-minus of the 8 sign patterns reach |sum| = 6
  assert p["p_signflip"] == 0.25 and p["p_method"] == "exact (8 sign patterns)"
  assert (p["wins"], p["losses"], p["ties"]) == (3, 0, 0)


def test_paired_p_values_by_hand():
  ten = stats.paired(list(range(1, 11)), [0] * 10)  # one sign, ten seeds
  assert ten["p_signflip"] == 2 / 1024
  mixed = stats.paired([1, -1, 2], [0, 0, 0])  # |±1 ±1 ±2| >= 2 for 6 of 8 patterns
  assert mixed["p_signflip"] == 0.75 and (mixed["wins"], mixed["losses"]) == (2, 1)
  # 0.1 + 0.2 - 0.3 is not 0 in floats; |±1 + (±0.1 ±0.2 ∓0.3)| >= 1 in 10 of 16 patterns,
  # the two ties with the observed sum counted whatever their rounding
  assert stats.paired([0.1, 0.2, -0.3, 1.0], [0.0] * 4)["p_signflip"] == 10 / 16
  # 1.1 + 2.2 - 3.3 + 1.0 sums to 1 + 4e-16; |±1 + (±1.1 ±2.2 ∓3.3)| >= 1 for all 16 patterns,
  # but two of them sum to exactly 1.0 in floats: without the tie tolerance p would be 14/16
  assert stats.paired([1.1, 2.2, -3.3, 1.0], [0.0] * 4)["p_signflip"] == 1.0


def test_paired_zero_differences_are_ties():
  same = stats.paired([0.5, 0.6, 0.7], [0.5, 0.6, 0.7])
  assert same["p_signflip"] == 1.0 and same["mean_diff"] == 0.0 and same["ci95"] == [0.0, 0.0]
  assert (same["wins"], same["losses"], same["ties"]) == (0, 0, 3)
  some = stats.paired([1.0, 2.0, 5.0], [1.0, 1.0, 3.0])  # diffs 0, 1, 2: |±1 ±2| >= 3 in 2 of 4
  assert some["p_signflip"] == 0.5 and (some["wins"], some["ties"]) == (2, 1)


def test_paired_with_fewer_than_two_pairs_and_missing_values():
  one = stats.paired([0.7], [0.6])
  assert one["n"] == 1 and one["mean_diff"] == pytest.approx(0.1)
  assert one["std_diff"] is None and one["ci95"] is None and one["p_signflip"] == 1.0
  none = stats.paired([None, 1.0], [0.5, float("nan")])
  assert none["n"] == 0 and none["mean_diff"] is None and none["p_signflip"] is None
  assert none["p_method"] is None
  dropped = stats.paired([1.0, None, 3.0], [0.0, 1.0, 1.0])
  assert dropped["diffs"] == [1.0, 2.0]
  with pytest.raises(ValueError, match="2 results of the method against 3"):
    stats.paired([1, 2], [1, 2, 3])


def test_paired_monte_carlo_above_16_seeds_is_seeded_and_close_to_exact():
  diffs = [0.5, -1.2, 2.0, 0.3, -0.7, 1.1, 0.9, -0.4, 1.5, -2.1, 0.8, 0.6, -0.2, 1.3, -0.9,
           0.4, 1.0]
  p = stats.paired(diffs, [0.0] * 17)
  assert p["p_method"] == "monte carlo (100000 random sign patterns, seed 0)"
  exact = stats._signflip_exact(np.array(diffs))
  assert 0.05 < exact < 0.5
  assert p["p_signflip"] == pytest.approx(exact, abs=0.01)  # MC std here is about 0.0015
  assert stats.paired(diffs, [0.0] * 17)["p_signflip"] == p["p_signflip"]
  one_sign = stats.paired(list(range(1, 21)), [0] * 20)["p_signflip"]  # exact: 2 / 2^20
  assert 1 / 100_001 <= one_sign <= 3 / 100_001


# -- compare_methods: gathering, table, paired section --------------------------------
def summary(seed, final, best=None, mca=None, **extra):
  return {"seed": seed, "teacher": {"final_top1": final, "best_top1": final if best is None else best,
                                    "final_mean_class_acc": final if mca is None else mca},
          "train": {"mask_rate": 0.5, "pl_precision": 0.8}, "wall_time_s": 10.0, **extra}


def test_member_summaries_of_a_single_and_a_population_run():
  single = summary(3, 0.6)
  assert cm.member_summaries(single) == {3: single}
  members = [dict(summary(5 + k, 0.5 + k / 10), member=k) for k in range(3)]
  pop = {"kind": "population", "seed": 5, "members": members}
  assert cm.member_summaries(pop) == {5: members[0], 6: members[1], 7: members[2]}
  with pytest.raises(ValueError, match="share seeds"):
    cm.member_summaries({"kind": "population", "members": [members[0], members[0]]})
  with pytest.raises(ValueError, match="'members'"):
    cm.member_summaries({"kind": "population", "members": [{"member": 0}]})
  with pytest.raises(ValueError, match="no 'seed'"):
    cm.member_summaries({"teacher": {}})


def results_by_hand():
  """fixmatch and flexmatch over seeds 0-2 (flexmatch +1, +2, +3 points final top-1, equal best
  top-1, -2, 0, +1 mean per-class), and a dtm whose seed 2 failed."""
  return {
      "fixmatch": {s: summary(s, f, b, m) for s, f, b, m in
                   [(0, 0.50, 0.55, 0.40), (1, 0.60, 0.65, 0.50), (2, 0.70, 0.75, 0.60)]},
      "flexmatch": {s: summary(s, f, b, m) for s, f, b, m in
                    [(2, 0.73, 0.75, 0.61), (0, 0.51, 0.55, 0.38), (1, 0.62, 0.65, 0.50)]},
      "dtm": {0: summary(0, 0.40), 1: summary(1, 0.45), 2: {"seed": 2, "error": "boom"}},
  }


def test_markdown_table_rows_and_failed_runs():
  text = cm.markdown_table(results_by_hand(), ["fixmatch", "flexmatch", "dtm"], "ctx")
  assert text.startswith("# Method comparison: ctx\n")
  assert ("| fixmatch | 60.00 ± 10.00 | 65.00 ± 10.00 | 50.00 ± 10.00 | 50.00 ± 0.00 | "
          "80.00 ± 0.00 | 10.0 ± 0.0 | 50.0, 60.0, 70.0 | 3 |") in text
  assert "| flexmatch | 62.00 ± 11.00 |" in text and "| 51.0, 62.0, 73.0 | 3 |" in text
  assert "| dtm | 42.50 ± 3.54 |" in text and "| 40.0, 45.0 | 2 (1 failed) |" in text
  assert "- dtm seed 2: boom" in text


def test_paired_results_and_section():
  results = results_by_hand()
  paired = cm.paired_results(results, ["fixmatch", "flexmatch", "dtm"], "fixmatch")
  assert list(paired) == ["flexmatch", "dtm"]
  final = paired["flexmatch"]["final top-1 (teacher)"]
  assert final["seeds"] == [0, 1, 2] and final["diffs"] == pytest.approx([1.0, 2.0, 3.0])
  assert final["p_signflip"] == 0.25
  assert paired["dtm"]["final top-1 (teacher)"]["seeds"] == [0, 1]  # seed 2 failed
  assert paired["dtm"]["final top-1 (teacher)"]["diffs"] == pytest.approx([-10.0, -15.0])
  text = cm.paired_section(paired, "fixmatch")
  print(text)
  assert text.startswith("## Paired differences against fixmatch\n")
  assert "initial weights (config.seed) and the same labeled split" in text
  rows = [line for line in text.splitlines() if line.startswith("| flexmatch")]
  assert rows == [
      "| flexmatch | final top-1 (teacher) | 3 | +2.00 | [-0.48, +4.48] | 0.25 | 3 / 0 / 0 |",
      "| flexmatch | best top-1 (teacher) | 3 | +0.00 | [+0.00, +0.00] | 1 | 0 / 0 / 3 |",
      "| flexmatch | mean per-class acc | 3 | -0.33 | [-4.13, +3.46] | 1 | 1 / 1 / 1 |"]
  # dtm: diffs -10, -15 -> mean -12.5, half width 2.5 * 12.706 = 31.77; p = 2 / 4
  assert "| dtm | final top-1 (teacher) | 2 | -12.50 | [-44.27, +19.27] | 0.5 | 0 / 2 / 0 |" in text
  assert "cannot fall below 2/2^n." in text  # 3 and 2 seeds: no single floor stated
  assert "(0.25 for the 3 seeds here)" in cm.paired_section(
      {"flexmatch": paired["flexmatch"]}, "fixmatch")
  assert cm.paired_section({}, "fixmatch") == ""


def test_build_config_population_needs_the_key():
  def get_config(arg):
    c = ml_collections.ConfigDict({"algorithm": arg, "seed": 0, "data": {"split_seed": 0}})
    if with_key:
      c.population = ml_collections.ConfigDict({"size": 1, "vary_split": False})
    return c
  with_key = False
  with pytest.raises(ValueError, match="config.population.size does not exist"):
    cm.build_config(get_config, "", "fixmatch", [], None, 4, False, 3)
  assert cm.build_config(get_config, "", "fixmatch", [], None, 4, False).seed == 4
  with_key = True
  cfg = cm.build_config(get_config, "", "fixmatch", [], None, 4, True, 3)
  assert (cfg.seed, cfg.population.size, cfg.population.vary_split, cfg.data.split_seed) == (
      4, 3, True, 4)


POPULATION_CONFIG = '''
import ml_collections
from ssfer_jax import config as config_lib

def get_config(arg=None):
  c = config_lib.load("configs/default.py:" + (arg or ""))
  if "population" not in c.keys():
    c.population = ml_collections.ConfigDict({"size": 1})
  return c
'''


@pytest.mark.parametrize("population", [True, False])
def test_main_pairs_population_members_and_single_runs_by_seed(population, tmp_path,
                                                               monkeypatch, capsys):
  """main with train.run replaced: one population run per method (or one run per seed),
  gathered by seed, table and paired section in table.md and the JSON beside it."""
  from ssfer_jax import train
  calls = []
  offset = {"fixmatch": 0.0, "flexmatch": 0.02}

  def fake_run(cfg, workdir):
    calls.append((cfg.algorithm, cfg.seed, cfg.population.size, os.path.relpath(workdir, tmp_path)))
    runs = [summary(cfg.seed + k, 0.5 + 0.1 * (cfg.seed + k) + offset[cfg.algorithm])
            for k in range(cfg.population.size)]
    return {"kind": "population", "members": runs} if population else runs[0]
  monkeypatch.setattr(train, "run", fake_run)
  config = tmp_path / "pop_config.py"
  config.write_text(POPULATION_CONFIG)
  rc = cm.main([f"--config={config}", "--methods=flexmatch,fixmatch", "--seeds=3",
                "--first-seed=1", f"--workdir={tmp_path}"] + (["--population"] if population else []))
  assert rc == 0
  if population:
    assert calls == [("flexmatch", 1, 3, "flexmatch/population"),
                     ("fixmatch", 1, 3, "fixmatch/population")]
  else:
    assert sorted(calls) == sorted((m, s, 1, f"{m}/seed_{s}") for s in (1, 2, 3)
                                   for m in ("flexmatch", "fixmatch"))
  text = (tmp_path / "table.md").read_text()
  assert text in capsys.readouterr().out
  assert "| fixmatch | 70.00 ± 10.00 |" in text and "| flexmatch | 72.00 ± 10.00 |" in text
  assert ("| flexmatch | final top-1 (teacher) | 3 | +2.00 | [+2.00, +2.00] | 0.25 | 3 / 0 / 0 |"
          in text)
  assert ("one population run of 3 members per method" in text) == population
  data = json.loads((tmp_path / "table.json").read_text())
  assert data["paired"]["reference"] == "fixmatch"
  final = data["paired"]["methods"]["flexmatch"]["final top-1 (teacher)"]
  assert final["seeds"] == [1, 2, 3] and final["mean_diff"] == pytest.approx(2.0)
  assert [r["seed"] for r in data["results"]["fixmatch"]] == [1, 2, 3]


def test_main_reference_must_be_one_of_the_methods(capsys):
  rc = cm.main(["--methods=fixmatch,flexmatch", "--reference=dtm"])
  assert rc == 2 and "--reference=dtm: not in --methods" in capsys.readouterr().err
