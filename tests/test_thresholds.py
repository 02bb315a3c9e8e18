"""DTA threshold state machine (ssfer_jax/algorithms/thresholds.py) and the dta_snl / dtm
algorithms, against hand-computed values."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from ssfer_jax.algorithms import StepInputs, get_algorithm
from ssfer_jax.algorithms import thresholds as th


def opts(**kw):
  base = dict(source="unlabeled", cadence="step", rule="ema", momentum=0.5, tau_min=0.0,
              tau_max=1.0, init=0.8)
  base.update(kw)
  return th.ThresholdOptions(**base)


def stats(conf, pseudo, num_classes):
  return th.unlabeled_stats(jnp.asarray(conf, jnp.float32), jnp.asarray(pseudo, jnp.int32),
                            num_classes)


def run(o, batches, num_classes, steps_per_epoch=1, init_tau=None):
  """Feeds (conf, pseudo) batches through ``update``; returns the state after each step."""
  state = th.init_state(num_classes, o.init)
  if init_tau is not None:
    state["tau"] = jnp.asarray(init_tau, jnp.float32)
  out = []
  for step, (conf, pseudo) in enumerate(batches):
    s, n = stats(conf, pseudo, num_classes)
    state = th.update(state, s, n, o, step=jnp.int32(step), steps_per_epoch=steps_per_epoch)
    out.append(jax.tree.map(np.asarray, state))
  return out


def test_ema_sequence_per_class_and_absent_class_keeps_value():
  # m = 0.5, init 0.8, no floor/ceiling.
  # step 0: class 0 confidences (0.5, 0.7) -> mean 0.6 -> 0.5*0.8 + 0.5*0.6 = 0.70;
  #         class 1 absent -> stays 0.8.
  # step 1: class 0 (0.9,) -> 0.5*0.70 + 0.5*0.9 = 0.80; class 1 (0.4,) -> 0.5*0.8 + 0.5*0.4 = 0.60.
  # step 2: class 0 absent -> 0.80;  class 1 (1.0, 0.8) mean 0.9 -> 0.5*0.6 + 0.5*0.9 = 0.75.
  states = run(opts(), [((0.5, 0.7), (0, 0)), ((0.9, 0.4), (0, 1)), ((1.0, 0.8), (1, 1))], 2)
  np.testing.assert_allclose([s["tau"] for s in states],
                             [[0.70, 0.80], [0.80, 0.60], [0.80, 0.75]], rtol=1e-6)
  # Step cadence: accumulators are cleared every step.
  assert all(np.all(s["sum"] == 0) and np.all(s["count"] == 0) for s in states)


def test_classes_are_independent():
  # Class 1's data differ between the two runs; class 0's trajectory must not.
  a = run(opts(), [((0.5, 0.9), (0, 1)), ((0.9, 0.2), (0, 1))], 2)
  b = run(opts(), [((0.5, 0.1, 0.3), (0, 1, 1)), ((0.9,), (0,))], 2)
  np.testing.assert_allclose([s["tau"][0] for s in a], [0.65, 0.775], rtol=1e-6)  # 0.4+0.25, 0.325+0.45
  np.testing.assert_allclose([s["tau"][0] for s in b], [0.65, 0.775], rtol=1e-6)
  # class 1: a: 0.5*0.8+0.5*0.9 = 0.85, then 0.425+0.1 = 0.525; b: mean 0.2 -> 0.5, then absent 0.5.
  np.testing.assert_allclose([s["tau"][1] for s in a], [0.85, 0.525], rtol=1e-6)
  np.testing.assert_allclose([s["tau"][1] for s in b], [0.5, 0.5], rtol=1e-6)


def test_floor_and_ceiling_hold():
  o = opts(tau_min=0.75, tau_max=0.9, init=0.85)
  # class 0: mean 1.0 -> 0.5*0.85 + 0.5*1.0 = 0.925 -> ceiling 0.9, then stays at 0.9.
  # class 1: mean 0.4 -> 0.425 + 0.2 = 0.625 -> floor 0.75, then 0.375 + 0.2 = 0.575 -> 0.75.
  states = run(o, [((1.0, 0.4), (0, 1)), ((1.0, 0.4), (0, 1))], 2)
  np.testing.assert_allclose([s["tau"] for s in states], [[0.9, 0.75], [0.9, 0.75]], rtol=1e-6)


def test_epoch_cadence_updates_only_at_epoch_ends_with_pooled_mean():
  o = opts(cadence="epoch")
  batches = [((0.9, 0.7), (0, 0)),   # class 0: sum 1.6, n 2
             ((1.0,), (0,)),         # sum 2.6, n 3
             ((0.2, 0.6), (0, 1)),   # class 0: sum 2.8, n 4 (pooled mean 0.7, not the mean of
                                     # batch means 0.667); class 1: 0.6, n 1
             ((0.1,), (0,))]         # next epoch: accumulates, tau unchanged
  states = run(o, batches, 2, steps_per_epoch=3)
  # Steps 0 and 1: tau still the initial 0.8, accumulators growing.
  for s, (sum0, n0) in zip(states[:2], [(1.6, 2), (2.6, 3)]):
    np.testing.assert_allclose(s["tau"], [0.8, 0.8])
    np.testing.assert_allclose(s["sum"], [sum0, 0.0], rtol=1e-6)
    np.testing.assert_allclose(s["count"], [n0, 0.0])
  # Step 2 ((2+1) % 3 == 0): class 0 -> 0.5*0.8 + 0.5*0.7 = 0.75; class 1 -> 0.4 + 0.3 = 0.7.
  np.testing.assert_allclose(states[2]["tau"], [0.75, 0.7], rtol=1e-6)
  np.testing.assert_allclose(states[2]["count"], [0.0, 0.0])
  # Step 3: new epoch, thresholds kept, accumulator restarted from zero.
  np.testing.assert_allclose(states[3]["tau"], [0.75, 0.7], rtol=1e-6)
  np.testing.assert_allclose(states[3]["sum"], [0.1, 0.0], rtol=1e-6)


def test_dtm_reset_rule():
  o = opts(momentum=0.9, tau_min=0.8, dtm_reset=True, reset_value=0.8)
  # init (0.9, 0.9, 0.9). class 0 mean 0.95 -> 0.9*0.9 + 0.1*0.95 = 0.905;
  # class 1 mean 0.7 < 0.8 -> reset to 0.8; class 2 absent -> reset to 0.8.
  states = run(o, [((0.95, 0.7), (0, 1))], 3, init_tau=(0.9, 0.9, 0.9))
  np.testing.assert_allclose(states[0]["tau"], [0.905, 0.8, 0.8], rtol=1e-6)


def test_adacm_ramp():
  o = opts(rule="adacm_ramp", tau_min=0.8)
  # step 8, 3 steps/epoch: epochs done e = 9/3 = 3; sigmoid(3) = 0.95257413;
  # class 0 mean 0.99: 0.97*0.99*0.95257413 = 0.91475694 (above the floor).
  # class 1 mean 0.5: 0.97*0.5*0.9526 = 0.462 -> floor 0.8. class 2 absent: keeps init 0.8.
  state = th.init_state(3, 0.8)
  s, n = stats((0.99, 0.5), (0, 1), 3)
  new = th.update(state, s, n, o, step=jnp.int32(8), steps_per_epoch=3)
  np.testing.assert_allclose(new["tau"], [0.91475694, 0.8, 0.8], rtol=1e-6)
  # At the end of the first epoch (e = 1): 0.97*0.99*sigmoid(1)=0.9603*0.73105858 = 0.70203556 -> 0.8.
  new = th.update(state, s, n, o, step=jnp.int32(2), steps_per_epoch=3)
  np.testing.assert_allclose(new["tau"], [0.8, 0.8, 0.8])


def test_labeled_correct_statistic():
  p = np.array([[0.6, 0.3, 0.1],     # y 0, correct: class 0 gets 0.6
                [0.2, 0.7, 0.1],     # y 0, wrong: ignored
                [0.05, 0.9, 0.05],   # y 1, correct: 0.9
                [0.3, 0.5, 0.2]],    # y 1, correct: 0.5 -> class 1 mean 0.7
               np.float32)
  y = jnp.array([0, 0, 1, 1])
  s, n = th.labeled_correct_stats(jnp.log(p), y, 3)
  np.testing.assert_allclose(s, [0.6, 1.4, 0.0], rtol=1e-5)
  np.testing.assert_allclose(n, [1, 2, 0])
  mean, n = th.labeled_correct_mean_confidence(jnp.log(p), y, 3)
  np.testing.assert_allclose(mean, [0.6, 0.7, 0.0], rtol=1e-5)


def test_mask_is_ge_in_float32_per_class():
  tau = jnp.array([0.95, 0.5], jnp.float32)
  below = np.nextafter(np.float32(0.95), np.float32(0))
  conf = jnp.array([np.float32(0.95), below, 0.6, 0.6], jnp.float32)
  pseudo = jnp.array([0, 0, 1, 0])
  np.testing.assert_array_equal(th.threshold_mask(conf, pseudo, tau), [1.0, 0.0, 1.0, 0.0])


def test_bad_option_is_a_clear_error():
  with pytest.raises(ValueError, match="threshold_cadence"):
    th.ThresholdOptions(cadence="weekly")
  with pytest.raises(ValueError, match="threshold_min"):
    th.ThresholdOptions(tau_min=0.9, tau_max=0.8)


# ---------------------------------------------------------------------------------------
# The algorithms (dta_snl, dtm) under jit and over a mesh.

U, B, C, SPE = 16, 8, 4, 2


def make_batches(n_steps):
  rng = np.random.default_rng(0)
  out = []
  for _ in range(n_steps):
    y_lb = rng.integers(0, C, B).astype(np.int32)
    # A teacher that is mostly right and confident on the labeled batch.
    hint = 4.0 * np.eye(C, dtype=np.float32)[y_lb] * (rng.random((B, 1)) < 0.75)
    out.append(dict(
        logits_lb=rng.normal(size=(B, C)).astype(np.float32),
        y_lb=y_lb,
        student={"ulb_s": {"logits": rng.normal(size=(U, C)).astype(np.float32)}},
        # dtm's second weak view (dta_snl's default reads one view and ignores it)
        pseudo={"ulb_w": (4 * rng.normal(size=(U, C))).astype(np.float32),
                "ulb_w2": (4 * rng.normal(size=(U, C))).astype(np.float32)},
        teacher_logits_lb=(rng.normal(size=(B, C)) + hint).astype(np.float32),
        idx_ulb=np.arange(U, dtype=np.int32),
        y_ulb=np.where(rng.random(U) < 0.5, rng.integers(0, C, U), -1).astype(np.int32)))
  return out


def algo_cfg(name):
  cfg = get_algorithm(name).default_config()
  # Small momentum / low floor so that the thresholds visibly move in a few steps.
  cfg.threshold_momentum = 0.5
  cfg.threshold_min = 0.3
  cfg.neg_rampup_steps = 2
  cfg.tau_neg = 0.1
  return cfg


def step_fn(name, cfg):
  algo = get_algorithm(name)

  def f(state, batch, step):
    inputs = StepInputs(step=step, epoch=step.astype(jnp.float32) / SPE, steps_per_epoch=SPE,
                        **batch)
    out = algo.unlabeled_loss(state, inputs, cfg)
    return out.state, (out.loss, out.mask, dict(out.metrics, thresholds=out.thresholds))

  return f


def roll(f, cfg, batches, num_steps):
  state = th.init_state(C, cfg.threshold_init)
  outs = []
  for step in range(num_steps):
    state, out = f(state, batches[step], jnp.int32(step))
    outs.append(jax.tree.map(np.asarray, (state, out)))
  return outs


@pytest.mark.parametrize("name", ["dta_snl", "dtm"])
def test_jit_equals_eager_and_thresholds_move(name):
  cfg = algo_cfg(name)
  batches = make_batches(4)
  eager = roll(step_fn(name, cfg), cfg, batches, 4)
  jitted = roll(jax.jit(step_fn(name, cfg)), cfg, batches, 4)
  for a, b in zip(eager, jitted):
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6), a, b)
  taus = [s["tau"] for s, _ in eager]
  assert not np.allclose(taus[-1], 0.8), "the thresholds never moved"
  if name == "dtm":   # per-epoch cadence (2 steps/epoch): unchanged after steps 0 and 2
    np.testing.assert_array_equal(taus[0], np.full(C, 0.8, np.float32))
    np.testing.assert_array_equal(taus[2], taus[1])
    assert "loss_neg" not in eager[0][1][2]
  else:
    metrics = eager[-1][1][2]
    assert set(metrics) >= {"thresholds", "loss_u", "loss_neg", "num_complementary",
                            "neg_selected_rate", "complementary_error"}
    assert metrics["thresholds"].shape == (C,)


def _sharded_roll(name, devices):
  cfg = algo_cfg(name)
  mesh = Mesh(np.asarray(devices), ("data",))
  batch_sh = NamedSharding(mesh, P("data"))
  repl = NamedSharding(mesh, P())
  batches = [{k: jax.device_put(v, batch_sh) for k, v in b.items()} for b in make_batches(4)]
  f = jax.jit(step_fn(name, cfg), in_shardings=(repl, batch_sh, repl))
  return roll(f, cfg, batches, 4)


@pytest.mark.parametrize("name", ["dta_snl", "dtm"])
def test_eight_devices_equal_one(name):
  if len(jax.devices()) < 8:
    pytest.skip("needs 8 devices: XLA_FLAGS=--xla_force_host_platform_device_count=8 "
                "(set by tests/conftest.py)")
  one = _sharded_roll(name, jax.devices()[:1])
  eight = _sharded_roll(name, jax.devices()[:8])
  for a, b in zip(one, eight):
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6), a, b)


# ---------------------------------------------------------------------------------------
# The configs' ablation variants.

def _load_config(path):
  from ssfer_jax import config as config_lib
  return config_lib.loader(path)


@pytest.mark.parametrize("path", ["configs/rafdb_dta_snl.py", "configs/affectnet_dta_snl.py",
                                  "configs/default_dta_snl.py"])
def test_config_variants_combine_and_validate(path):
  from ssfer_jax.config import validate
  get_config = _load_config(path)
  full = get_config(None)
  validate(full)
  assert (full.algorithm, full.algo.use_dta, full.algo.use_snl) == ("dta_snl", True, True)
  assert full.model.attention and full.model.feature_dropout > 0 and full.data.class_balanced
  abl = get_config("fixed_threshold,no_snl,no_attention,no_feature_dropout,no_balance")
  validate(abl)
  assert not (abl.algo.use_dta or abl.algo.use_snl or abl.model.attention
              or abl.data.class_balanced)
  assert abl.model.feature_dropout == 0.0
  dtm = get_config("dtm,no_attention")
  validate(dtm)
  assert dtm.algorithm == "dtm" and dtm.algo.threshold_cadence == "epoch"
  assert not dtm.algo.use_snl and not dtm.model.attention
  with pytest.raises(ValueError, match=path):
    get_config("no_snll")


def test_affectnet_variants_pick_the_class_set():
  get_config = _load_config("configs/affectnet_dta_snl.py")
  assert get_config(None).dataset.name == "affectnet7"
  assert get_config("8,no_snl").dataset.name == "affectnet8"
  assert get_config("7").dataset.name == "affectnet7"
