"""The tools on a population run (ssfer_jax/population.py): predict, export and evaluate
with --member, the default member (best on held-out validation, else member 0) and how it
is said, the errors, and the population's report.html.

One tiny 2-member DTA+SNL run with a held-out validation part is shared by every test
(module fixture); tests that need another summary.json work on a copy of it.
"""

import json
import re
import shutil
import warnings

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from conftest import tiny_config
from ssfer_jax import inference, train
from ssfer_jax.tools import evaluate, export, predict, report, report_runs

STEPS = 4
NETS = {"teacher": "ema_", "student": ""}  # --weights -> the TrainState field prefix


@pytest.fixture(scope="module")
def pop(tmp_path_factory):
  """A finished 2-member population (seeds 0, 1), evaluated at steps 2 and 4 with a
  held-out validation part, one checkpoint at step 4."""
  workdir = tmp_path_factory.mktemp("pop") / "run"
  c = tiny_config("dta_snl", **{"population.size": 2, "train.num_steps": STEPS,
                                "train.eval_every": 2, "train.checkpoint_every": STEPS,
                                "eval.val_fraction": 0.1})
  train.run(c, workdir)
  return workdir


@pytest.fixture(scope="module")
def stacked(pop):
  """The whole saved state at step 4, every leaf with its member axis (read by hand)."""
  with warnings.catch_warnings():  # orbax: no target given, so it reads the saved shardings
    warnings.filterwarnings("ignore", "Sharding info not provided", UserWarning)
    return jax.device_get(ocp.PyTreeCheckpointer().restore(
        pop / "checkpoints" / str(STEPS) / "state"))


@pytest.fixture(scope="module")
def images(tmp_path_factory):
  d = tmp_path_factory.mktemp("images")
  rng = np.random.default_rng(0)
  from PIL import Image
  for i in range(3):
    Image.fromarray(rng.integers(0, 256, (30, 30, 3), dtype=np.uint8)).save(d / f"{i}.png")
  return d


def _slice(stacked, weights: str, k: int) -> dict:
  p = NETS[weights]
  return {"params": jax.tree.map(lambda a: a[k], stacked[p + "params"]),
          "batch_stats": jax.tree.map(lambda a: a[k], stacked[p + "batch_stats"])}


def _copy(pop, tmp_path, edit=None):
  """A copy of the run whose summary.json ``edit`` changed in place."""
  out = tmp_path / "run"
  shutil.copytree(pop, out)
  if edit is not None:
    summary = json.loads((out / "summary.json").read_text())
    edit(summary)
    (out / "summary.json").write_text(json.dumps(summary))
  return out


def _assert_trees_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


# -- restore ----------------------------------------------------------------------------
@pytest.mark.parametrize("weights", ["teacher", "student"])
def test_restore_member_is_its_slice_of_the_stacked_checkpoint(pop, stacked, weights):
  runs = [inference.restore(pop, member=k, weights=weights) for k in (0, 1)]
  for k, run in enumerate(runs):
    assert (run.member, run.step, run.weights) == (k, STEPS, weights)
    _assert_trees_equal(run.variables, _slice(stacked, weights, k))
    assert run.config.seed == k and run.config.population.size == 1  # member k's own run
  fc = [r.variables["params"]["fc"]["kernel"] for r in runs]
  assert np.max(np.abs(fc[0] - fc[1])) > 0.1 * np.max(np.abs(fc[0]))  # two different networks
  info = json.loads((pop / "run_info.json").read_text())
  assert list(runs[0].class_names) == info["class_names"]  # the run's, from the top level


def _said(capsys) -> list:
  """The lines about the member choice on stderr (orbax may log there too)."""
  return [line for line in capsys.readouterr().err.splitlines() if "population of" in line]


def test_default_member_rule():
  def val(*tops):  # a summary.json whose members' teachers scored ``tops`` on validation
    return {"members": [
        {"member": k, "seed": 10 + k, "teacher": {"val_top1_at_val_best": v, "val_best_step": 6},
         "student": {"val_top1_at_val_best": 1.0 - v, "val_best_step": 4}}
        for k, v in enumerate(tops)]}

  k, why = inference.default_member(val(0.5, 0.75, 0.25), "teacher", 3)
  assert k == 1 and why == ("member 1, seed 11 (the best teacher on held-out validation: "
                            "top-1 0.7500 at step 6)")
  assert inference.default_member(val(0.5, 0.75, 0.25), "student", 3)[0] == 2  # per network
  assert inference.default_member(val(0.5, 0.75, 0.75), "teacher", 3)[0] == 1  # ties: lowest
  no_val = (0, "member 0 (no held-out validation to choose by)")
  assert inference.default_member(None, "teacher", 3) == no_val           # no summary.json yet
  assert inference.default_member({"members": [{"teacher": {}}] * 3}, "teacher", 3) == no_val
  assert inference.default_member(val(0.5, 0.75), "teacher", 3) == no_val  # not every member


def test_default_member_is_said_on_stderr(pop, stacked, tmp_path, capsys):
  summary = json.loads((pop / "summary.json").read_text())
  tops = [m["teacher"]["val_top1_at_val_best"] for m in summary["members"]]
  best = int(np.argmax(tops))  # the earliest of equal maxima, as the rule breaks ties
  run = inference.restore(pop)
  said = _said(capsys)
  assert run.member == best and len(said) == 1
  assert said[0] == (f"{pop} is a population of 2 members: using member {best}, seed {best} "
                    f"(the best teacher on held-out validation: top-1 {tops[best]:.4f} at step "
                    f"{summary['members'][best]['teacher']['val_best_step']}); --member=0..1 "
                    "picks another")

  def favour_1(s):  # member 1 ahead on validation, whatever the run measured
    s["members"][1]["teacher"]["val_top1_at_val_best"] = 1.0
  run = inference.restore(_copy(pop, tmp_path / "a", favour_1))
  assert run.member == 1 and "using member 1, seed 1 (the best teacher" in _said(capsys)[0]
  _assert_trees_equal(run.variables, _slice(stacked, "teacher", 1))

  def no_validation(s):
    for m in s["members"]:
      for net in ("teacher", "student"):
        m[net].pop("val_top1_at_val_best")
  run = inference.restore(_copy(pop, tmp_path / "b", no_validation))
  assert run.member == 0
  assert "using member 0 (no held-out validation to choose by)" in _said(capsys)[0]
  inference.restore(pop, member=1)
  assert _said(capsys) == []  # an explicit member is not announced


# -- the command lines ------------------------------------------------------------------
def test_predict_member_equals_its_slice(pop, stacked, images, tmp_path, capsys):
  x = np.stack([predict.read_image(images / f"{i}.png") for i in range(3)])
  run0 = inference.restore(pop, member=0)
  probs = {}
  for k in (0, 1):
    out = tmp_path / f"m{k}.json"
    assert predict.main([f"--workdir={pop}", f"--member={k}", f"--out={out}", str(images)]) == 0
    assert f"teacher weights of member {k} of {pop}/checkpoints step {STEPS}" in (
        capsys.readouterr().out)
    records = json.loads(out.read_text())["predictions"]
    probs[k] = np.array([[r["probabilities"][n] for n in run0.class_names] for r in records])
    fitted = np.stack([predict.images.fit(img, run0.image_size, run0.channels) for img in x])
    by_hand = inference.probabilities(run0.model(), _slice(stacked, "teacher", k), fitted,
                                      run0.mean, run0.std)
    np.testing.assert_allclose(probs[k], np.asarray(by_hand), rtol=1e-5, atol=1e-6)
  assert np.max(np.abs(probs[0] - probs[1])) > 1e-3  # the two members predict differently


def test_export_member(pop, stacked, images, tmp_path, capsys):
  out = tmp_path / "exported"
  assert export.main([f"--workdir={pop}", "--member=1", "--weights=student", f"--output={out}",
                      "--platforms=cpu"]) == 0
  assert f"exported student weights of member 1 of step {STEPS}" in capsys.readouterr().out
  fn, meta = export.load(out)
  assert meta["source"]["member"] == 1 and meta["source"]["weights"] == "student"
  with (out / "params.npz").open("rb") as f:
    saved = dict(np.load(f))
  flat = export.flat_variables(_slice(stacked, "student", 1))
  assert sorted(saved) == sorted(flat)
  for name, value in flat.items():
    np.testing.assert_array_equal(saved[name], value)
  run = inference.restore(pop, member=1, weights="student")
  x = np.stack([predict.images.fit(predict.read_image(images / f"{i}.png"), run.image_size,
                                   run.channels) for i in range(3)])
  np.testing.assert_allclose(np.asarray(fn(x)), np.asarray(inference.probabilities(
      run.model(), run.variables, x, run.mean, run.std)), rtol=1e-5, atol=1e-6)


def test_evaluate_member_reproduces_its_summary(pop, capsys):
  assert evaluate.main([f"--workdir={pop}", "--dataset=synthetic", "--member=1"]) == 0
  assert capsys.readouterr().out.startswith(f"{pop} member 1 step {STEPS} on synthetic/test")
  results = json.loads((pop / "members" / "1" / "cross_eval" / "synthetic_test" /
                        "results.json").read_text())
  summary = json.loads((pop / "members" / "1" / "summary.json").read_text())
  assert results["member"] == 1 and summary["seed"] == 1
  for net in ("teacher", "student"):
    assert results[net]["top1"] == summary[net]["final_top1"]
    assert results[net]["mean_class_acc"] == summary[net]["final_mean_class_acc"]
  assert not (pop / "cross_eval").exists()  # a member's results live in its own directory


def test_member_errors(pop, images, tmp_path, capsys):
  for argv, message in [
      (["--member=2"], f"error: --member=2 is out of range: {pop} is a population of 2 members, "
                       "--member=0..1"),
      (["--member=-1"], f"error: --member=-1 is out of range: {pop} is a population of 2 "
                        "members, --member=0..1")]:
    assert predict.main([f"--workdir={pop}", str(images)] + argv) == 2
    assert capsys.readouterr().err.strip() == message
  assert evaluate.main([f"--workdir={pop}", "--dataset=synthetic", "--member=5"]) == 2
  assert "--member=5 is out of range" in capsys.readouterr().err
  assert export.main([f"--workdir={pop / 'members' / '1'}", f"--output={tmp_path / 'x'}"]) == 2
  assert capsys.readouterr().err.strip() == (
      f"error: {pop / 'members' / '1'} is member 1 of the population run {pop}: pass "
      f"--workdir={pop} --member=1")
  single = _copy(pop, tmp_path / "single")  # the same files, declared a single run
  config = json.loads((single / "config.json").read_text())
  config["population"]["size"] = 1
  (single / "config.json").write_text(json.dumps(config))
  with pytest.raises(ValueError, match=r"^--member=0: .* is a single run, not a population "
                     r"\(config.population.size=1\); leave --member out$"):
    inference.restore(single, member=0)


# -- the report -------------------------------------------------------------------------
def test_population_report(pop, tmp_path):
  text = (pop / "report.html").read_text()  # written by population.finish
  summary = json.loads((pop / "summary.json").read_text())
  assert not re.search(r"https?://", text) and "<script" not in text
  alts = set(re.findall(r'<img alt="([^"]*)"', text))
  assert {"teacher test top-1 over members", "student test top-1 over members",
          "Per-class thresholds over members", "Losses"} <= alts
  assert "Test accuracy" not in alts  # the single-run chart of the mean is not shown
  assert "population of <b>2</b> members (seeds 0, 1; one shared labeled split)" in text
  members = text.split("<h3>Members</h3>")[1].split("</table>")[0]
  for m in summary["members"]:
    t = m["teacher"]
    row = (f'<td class="l">{m["member"]}</td><td class="">{m["seed"]}</td>'
           f'<td class="">{t["final_top1"]:.4f}</td><td class="">{t["best_top1"]:.4f}</td>'
           f'<td class="">{t["best_step"]}</td><td class="">{t["final_mean_class_acc"]:.4f}</td>'
           f'<td class="">{t["val_best_step"]}</td>'
           f'<td class="">{t["val_top1_at_val_best"]:.4f}</td>'
           f'<td class="">{t["test_top1_at_val_best"]:.4f}</td>')
    assert row in members
  d = summary["teacher"]["final_top1"]
  described = text.split("95 % t-interval of the mean</h3>")[1].split("</table>")[0]
  assert (f'<td class="l">teacher</td><td class="l">final top-1</td><td class="">2</td>'
          f'<td class="">{d["mean"]:.4f}</td><td class="">{d["std"]:.4f}</td>'
          f'<td class="">[{d["ci95"][0]:.4f}, {d["ci95"][1]:.4f}]</td>') in described
  assert "<h3>Provenance</h3>" in text and "shaded = min-max over members" in text


def test_population_report_unfinished_and_compared(pop, tmp_path):
  """Without summary.json the description is computed from the members' own results and
  equals what summary.json holds; in a comparison a population is its mean."""
  summary = json.loads((pop / "summary.json").read_text())
  unfinished = _copy(pop, tmp_path / "u")
  (unfinished / "summary.json").unlink()
  run = report.load_run(unfinished)
  assert [m.name for m in run.members] == ["member 0", "member 1"]
  for net in ("teacher", "student"):
    for key, d in report_runs.described(run)[net].items():
      assert d == summary[net][key], (net, key)
  text = report.render([run])
  assert "no population summary.json: the run has not finished" in text
  both = report.render([report.load_run(pop), report.load_run(pop / "members" / "1", "m1")])
  assert "run (mean of 2 members)" in both
  assert f"{summary['teacher']['final_top1']['mean']:.4f}" in both.split("Comparison")[1]
