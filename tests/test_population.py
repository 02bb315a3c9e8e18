"""Population training (ssfer_jax/population.py): N members as one program.

The claims checked here: member k of a population is the single run with seed + k (same
inputs, same keys; up to float rounding, as the program around the step differs), a population sharded over 8 devices equals one device, a killed and
resumed population run is bitwise-equal to an uninterrupted one, and the run writes every
member's files.
"""

import json

import jax
import numpy as np
import pytest

from conftest import Killed, restored_state, tiny_config
from ssfer_jax import config as config_lib, population, train

STEPS = 3
# DTA+SNL with thresholds low enough that pseudo-labels pass and SNL engages in 3 steps
# (the settings tests/test_parallel.py uses), SGD so that rounding stays rounding.
DTA_SNL = {"algo.threshold_init": 0.6, "algo.threshold_min": 0.1, "algo.threshold_momentum": 0.5,
           "algo.k": 3, "algo.neg_rampup_steps": 1, "optim.name": "sgd", "optim.lr": 0.05}


def _states(config, workdir, devices=None, steps=STEPS):
  """The train state and metrics after ``steps`` steps of the real Trainer and its input."""
  t = train.Trainer(config, workdir, devices=devices)
  batches = t.batches()
  state = t.fresh_state()
  metrics = []
  for _ in range(steps):
    state, m = t.train_step(state, next(batches))
    metrics.append(jax.device_get(m))
  return jax.device_get(state), metrics


@pytest.fixture(scope="module")
def singles(tmp_path_factory):
  """Three single runs, seeds 0, 1, 2."""
  out = []
  for seed in range(3):
    c = tiny_config("dta_snl", seed=seed, **DTA_SNL)
    out.append(_states(c, tmp_path_factory.mktemp(f"single{seed}")))
  return out


@pytest.mark.parametrize("vectorize", ["unroll", "vmap"])
def test_members_equal_single_runs(singles, tmp_path, vectorize):
  c = tiny_config("dta_snl", **DTA_SNL, **{"population.size": 3,
                                           "population.vectorize": vectorize})
  state, metrics = _states(c, tmp_path)
  assert state.step.shape == (3,) and list(state.step) == [STEPS] * 3
  assert any(m["mask_rate"] > 0 for _, ms in singles for m in ms), "pseudo-labels must pass"
  worst = 0.0
  for k, (single, single_metrics) in enumerate(singles):
    got = population.member(state, k)
    for x, y in zip(jax.tree.leaves(single), jax.tree.leaves(got)):
      if np.issubdtype(np.asarray(x).dtype, np.integer) or x.dtype == jax.dtypes.prng_key:
        np.testing.assert_array_equal(x, y, err_msg=f"member {k}")  # steps, keys, counters
      else:
        scale = max(float(np.max(np.abs(x), initial=0.0)), 1e-30)  # relative to the leaf
        worst = max(worst, float(np.max(np.abs(np.asarray(x, np.float64) - y), initial=0.0)) / scale)
    np.testing.assert_allclose(metrics[-1]["loss"][k], single_metrics[-1]["loss"], rtol=1e-5)
    np.testing.assert_allclose(metrics[-1]["algo/tau"][k], single_metrics[-1]["algo/tau"],
                               rtol=1e-5, atol=1e-6)
  # Same inputs, keys and counters, but not bit-equal: vmap batches the members'
  # convolutions (grouped convolutions on XLA:CPU), and even unrolled copies of the step in
  # one program are fused and scheduled otherwise than the single run's program (seen:
  # BatchNorm means 1e-8 apart from the second step). Measured worst difference over every
  # float leaf after 3 SGD steps, relative to that leaf's largest magnitude: 5.9e-6 with vmap
  # (docs/population.md). The members themselves differ from one another by O(1) of that
  # scale (checked next): each is its own run.
  assert 0.0 <= worst < 1e-4, worst
  fc = state.params["fc"]["kernel"]
  assert np.max(np.abs(fc[0] - fc[1])) > 0.1 * np.max(np.abs(fc[0])), "members are own runs"


def test_population_axis_on_eight_devices_equals_one_device(tmp_path):
  assert jax.device_count() >= 8, "conftest sets 8 fake CPU devices"
  # vmap on both meshes ('auto' takes it for a population axis; unroll vs vmap would compare
  # two programs' rounding, not the sharding)
  # The elementwise bound below is aimed at sharding errors, so the comparison over STEPS
  # steps pins both choices that only move rounding: XLA's convolution path and flax's
  # BatchNorm. With the fast BatchNorm the first step agrees to 7e-7, but member 2 of
  # this config reaches loss 16 at step 2 and its SGD steps amplify rounding to 5e-3 by
  # step 3 (losses and masks still equal to 1e-6); so that variant is compared after one step.
  base = {"population.size": 4, "mesh.num_devices": 0, "train.xla_cpu_options": "default",
          "population.vectorize": "vmap"}
  for norm, steps, atol in (("flax", STEPS, 1e-5), ("auto", 1, 2e-6)):
    over = dict(base, **{"model.batch_norm": norm})
    one, _ = _states(tiny_config("dta_snl", **DTA_SNL, **over), tmp_path / f"one_{norm}",
                     devices=jax.devices()[:1], steps=steps)
    c8 = tiny_config("dta_snl", **DTA_SNL, **over, **{"mesh.population": 2})
    t8 = train.Trainer(c8, tmp_path / f"eight_{norm}", devices=jax.devices()[:8])
    assert dict(t8.mesh.shape) == {"population": 2, "data": 4, "fsdp": 1}
    assert t8.state_shardings.params["fc"]["kernel"].spec[0] == "population"
    eight, _ = _states(c8, tmp_path / f"eight_{norm}", devices=jax.devices()[:8], steps=steps)
    for x, y in zip(jax.tree.leaves(one), jax.tree.leaves(eight)):
      np.testing.assert_allclose(x, y, rtol=1e-4, atol=atol)  # max seen: 3.6e-6 / 7.2e-7


def test_population_run_files_and_kill_resume(tmp_path, kill_after):
  c = tiny_config("dta_snl", **DTA_SNL, **{"population.size": 2, "train.num_steps": 8,
                                           "train.checkpoint_every": 4})
  summary = train.run(c, tmp_path / "straight")
  kill_after(6)                                         # 2 steps after the checkpoint at 4
  with pytest.raises(Killed):
    train.run(c, tmp_path / "resumed")
  resumed = train.run(c, tmp_path / "resumed")
  a, b = restored_state(tmp_path / "straight", c), restored_state(tmp_path / "resumed", c)
  assert list(b.step) == [8, 8]
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)
  assert resumed["members"][1]["teacher"] == summary["members"][1]["teacher"]

  run = tmp_path / "straight"
  on_disk = json.loads((run / "summary.json").read_text())
  assert on_disk["kind"] == "population" and on_disk["population"]["seeds"] == [0, 1]
  finals = [m["teacher"]["final_top1"] for m in on_disk["members"]]
  d = on_disk["teacher"]["final_top1"]
  assert d["values"] == finals and d["mean"] == pytest.approx(np.mean(finals))
  assert d["std"] == pytest.approx(np.std(finals, ddof=1))
  for k in range(2):
    member = run / "members" / str(k)
    assert json.loads((member / "summary.json").read_text())["seed"] == k
    assert (member / "eval" / "step_8.json").exists() and (member / "thresholds.png").exists()
    assert (member / "metrics.jsonl").exists() and (member / "report.html").exists()
  # the run's metrics rows are the mean over members
  rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
  top = [r for r in rows if r["kind"] == "eval_teacher" and r["step"] == 8][-1]
  assert top["top1"] == pytest.approx(np.mean(finals))


def test_population_config_errors():
  c = tiny_config("fixmatch", **{"population.size": 3, "mesh.population": 2})
  with pytest.raises(ValueError, match="config.mesh.population=2 must divide"):
    config_lib.validate(c)
  with pytest.raises(ValueError, match="'unroll' cannot shard"):
    config_lib.validate(tiny_config("fixmatch", **{"population.size": 2, "mesh.population": 2,
                                                   "population.vectorize": "unroll"}))
  auto = tiny_config("fixmatch", **{"population.size": 2, "mesh.population": 2})
  assert population.how(auto, "cpu") == "vmap"
  assert population.how(tiny_config("fixmatch", **{"population.size": 2}), "cpu") == "unroll"
  with pytest.raises(ValueError, match="config.population.size=0 is out of range"):
    config_lib.validate(tiny_config("fixmatch", **{"population.size": 0}))


def test_member_config_is_the_single_run():
  c = tiny_config("fixmatch", seed=5, **{"population.size": 3, "population.vary_split": True})
  m = population.member_config(c, 2)
  assert (m.seed, m.data.split_seed, m.population.size) == (7, 2, 1)
  assert c.seed == 5 and c.population.size == 3           # the population's config untouched


def test_vary_split_members_have_their_own_split_and_validation(tmp_path):
  c = tiny_config("fixmatch", **{"population.size": 2, "population.vary_split": True,
                                 "eval.val_fraction": 0.2, "train.num_steps": 2,
                                 "train.eval_every": 2, "train.checkpoint_every": 2})
  summary = train.run(c, tmp_path)
  ids = [json.loads((tmp_path / "members" / str(k) / "labeled_ids.json").read_text())
         for k in range(2)]
  assert ids[0]["sha256"] != ids[1]["sha256"]
  assert [m["labeled_ids_sha256"] for m in summary["members"]] == [i["sha256"] for i in ids]
  t = train.Trainer(c, tmp_path)
  val0, val1 = t.val_arrays(0), t.val_arrays(1)
  assert not np.array_equal(val0[1], val1[1]) or not np.array_equal(val0[0], val1[0])
  # member k's held-out part is never in its own labeled set
  for k in range(2):
    assert not set(t.member_data[k].val_ids) & set(t.member_data[k].labeled_ids)
