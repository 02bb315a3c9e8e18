"""The algorithm contract is view-generic and self-describing (issue #15, item 1):

* a method with a view the core does not know (a second strong view 'ulb_s2') is defined
  and registered here, in this file only, and trains through ``train.run``: the view
  table, the input pipeline and the step are not edited;
* a method's own ablation flags come from its record (``--list``, parsing, applying);
* per-class thresholds travel in ``UnlabeledOutput.thresholds``, logged under the one key
  ``algo/tau/<class>``: FlexMatch and FreeMatch runs get thresholds.png and the report's
  threshold chart.
"""

from __future__ import annotations

import json

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from ssfer_jax import algorithms, catalog, config as config_lib, parallel, train
from ssfer_jax.algorithms.base import (Ablation, Algorithm, UnlabeledOutput, confidence_and_label,
                                       cross_entropy, no_state)
from ssfer_jax.data import pipeline, views
from tests.conftest import tiny_config

TOY = "toy_two_strong"


def _toy_loss(state, inputs, cfg):
  """CE of the student's SECOND strong view against the weak view's arg-max (``use_s2``;
  the first strong view with it off); metric ``s2_gap``: how far the two views' logits are."""
  _, pseudo, _ = confidence_and_label(inputs.pseudo_logits("ulb_w"))
  logits = inputs.student_logits("ulb_s2" if cfg.use_s2 else "ulb_s")
  loss = cfg.lambda_u * jnp.mean(cross_entropy(logits, pseudo))
  gap = jnp.mean(jnp.abs(inputs.student_logits("ulb_s2") - inputs.student_logits("ulb_s")))
  return UnlabeledOutput(loss=loss, state=state, mask=jnp.ones(pseudo.shape, jnp.float32),
                         pseudo_labels=pseudo, metrics={"loss_u": loss, "s2_gap": gap})


TOY_ALGORITHM = Algorithm(
    name=TOY, default_config=lambda: ml_collections.ConfigDict({"lambda_u": 1.0, "use_s2": True}),
    init_state=no_state, unlabeled_loss=_toy_loss, student_views=("ulb_s", "ulb_s2"),
    new_views={"ulb_s2": "strong"},
    ablations={"first_strong_only": Ablation({"algo.use_s2": False})})


@pytest.fixture
def toy():
  algorithms.register(TOY_ALGORITHM)
  yield TOY_ALGORITHM
  algorithms.unregister(TOY)


def _toy_config(**overrides):
  c = tiny_config("fixmatch", **overrides)
  config_lib.set_algorithm(c, TOY)
  return c


def test_a_new_view_is_declared_by_the_method_alone(toy, tmp_path):
  assert "ulb_s2" not in views.VIEWS          # the core table does not know the view
  assert views.augmentations(toy, toy.default_config()) == {
      "ulb_s": "strong", "ulb_s2": "strong", "ulb_w": "weak"}
  config = _toy_config()
  trainer = train.Trainer(config, tmp_path / "probe")
  batches = pipeline.TrainBatches(trainer.train_data, config, trainer.algorithm,
                                  trainer.dataset.channels)
  host = next(batches)
  u = config.data.batch_size * config.data.uratio
  assert host["x_ulb_s2"].shape == host["x_ulb_s"].shape == (u, 24, 24, 3)
  assert host["x_ulb_s2"].dtype == np.uint8
  assert not np.array_equal(host["x_ulb_s2"], host["x_ulb_s"])  # its own strong draw

  def loss_u(batch):
    _, metrics = trainer.train_step(trainer.fresh_state(),
                                    parallel.global_batch(batch, trainer.batch_sharding))
    return float(metrics["loss_u"])

  # The step feeds x_ulb_s2 to the algorithm as student['ulb_s2']: the toy's loss moves
  # with that view's images.
  assert loss_u(host) != loss_u(dict(host, x_ulb_s2=255 - host["x_ulb_s2"]))


def test_a_method_with_a_new_view_trains_through_run(toy, tmp_path):
  summary = train.run(_toy_config(**{"train.num_steps": 4, "train.eval_every": 4}), tmp_path)
  assert summary["num_steps"] == 4
  rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  train_rows = [r for r in rows if r.get("kind") == "train"]
  assert train_rows and all(r["algo/s2_gap"] > 0 and r["loss_u"] > 0 for r in train_rows)


def test_a_method_declares_its_own_ablations(toy):
  listing = catalog.listing()
  assert "first_strong_only" in listing and "config.algo.use_s2=False" in listing
  assert "no_snl" in listing and "fixed_threshold" in listing   # dta_snl's, from its record
  assert "no_snl" not in config_lib.ABLATIONS                    # not the config's own
  method, flags, _, _ = config_lib.parse_config_arg(f"{TOY},first_strong_only,no_attention",
                                                    source="x.py")
  assert (method, flags) == (TOY, ["first_strong_only", "no_attention"])
  c = config_lib.apply_ablations(_toy_config(), flags, source="x.py")
  assert c.algo.use_s2 is False and c.model.attention is False
  with pytest.raises(ValueError, match="'no_snl' applies to dta_snl/dtm, not config.algorithm="):
    config_lib.apply_ablations(_toy_config(), ["no_snl"], source="x.py")
  dta = config_lib.apply_ablations(tiny_config("dta_snl"), ["no_snl", "fixed_threshold"],
                                   source="x.py")
  assert dta.algo.use_snl is False and dta.algo.use_dta is False
  with pytest.raises(ValueError, match="already registered"):
    algorithms.register(TOY_ALGORITHM)


def test_an_undeclared_view_is_a_clear_error():
  bad = Algorithm(name="bad", default_config=ml_collections.ConfigDict, init_state=no_state,
                  unlabeled_loss=_toy_loss, student_views=("ulb_s3",))
  with pytest.raises(ValueError, match="'ulb_s3'.*declare it in the algorithm's new_views"):
    views.augmentations(bad, bad.default_config())


@pytest.mark.parametrize("method", ["flexmatch", "freematch"])
def test_flexmatch_freematch_runs_chart_their_thresholds(method, tmp_path):
  from ssfer_jax.tools import report
  train.run(tiny_config(method, **{"train.num_steps": 4, "train.eval_every": 4}), tmp_path)
  rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  last = [r for r in rows if r.get("kind") == "train"][-1]
  taus = {k: v for k, v in last.items() if k.startswith("algo/tau/")}
  assert len(taus) == 7 and all(0.0 <= v <= 1.0 for v in taus.values())
  assert not any("class_threshold" in k for k in last)   # one key for thresholds
  assert (tmp_path / "thresholds.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  text = (tmp_path / "report.html").read_text()
  assert '<img alt="Per-class thresholds"' in text
  assert report.main([str(tmp_path), f"--out={tmp_path / 'again.html'}"]) == 0
  assert '<img alt="Per-class thresholds"' in (tmp_path / "again.html").read_text()
