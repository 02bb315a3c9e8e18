"""Scale-out on one host: mesh and fsdp rules, global statistics on 8 devices, distributed
start-up decisions, gradient accumulation and bfloat16 compute.

Every multi-device check runs the real ``Trainer.train_step`` (jit over the mesh, the
shardings of ``parallel.state_shardings``) against the same step on one device, on the
same global batches.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from conftest import tiny_config
from ssfer_jax import algorithms, optim, parallel, train
from ssfer_jax import state as state_lib
from ssfer_jax import step as step_lib
from ssfer_jax.data import pipeline

WORKDIR = "/tmp/ssfer_unused_workdir"
NUM_STEPS = 3


# -- distributed start-up (pure decisions; nothing is initialised here) -----------------------
def _dist(**kw):
  c = ml_collections.ConfigDict({"mode": "auto", "coordinator_address": "", "num_processes": 0,
                                 "process_id": -1})
  c.update(kw)
  return c


SLURM = {"SLURM_JOB_ID": "77", "SLURM_STEP_NODELIST": "gpu[01-02]", "SLURM_NTASKS": "16",
         "SLURM_PROCID": "3", "SLURM_LOCALID": "3"}
no_tpu = lambda: False


def test_auto_detects_slurm_tpu_explicit_env_and_plain_machine():
  assert parallel.distributed_plan(_dist(), SLURM, no_tpu) == (
      "slurm", {"cluster_detection_method": "slurm"})
  # sbatch without srun (no step variables) or a one-task step: a single process
  assert parallel.detect_launcher({k: v for k, v in SLURM.items() if k != "SLURM_STEP_NODELIST"},
                                  no_tpu) is None
  assert parallel.detect_launcher({**SLURM, "SLURM_NTASKS": "1"}, no_tpu) is None
  assert parallel.distributed_plan(_dist(), {"TPU_WORKER_HOSTNAMES": "t0,t1"}, no_tpu) == ("tpu", {})
  assert parallel.detect_launcher({}, lambda: True) == "tpu"
  env = {"JAX_COORDINATOR_ADDRESS": "h0:1234", "JAX_NUM_PROCESSES": "4", "JAX_PROCESS_ID": "2"}
  assert parallel.distributed_plan(_dist(), env, no_tpu) == (
      "explicit", {"coordinator_address": "h0:1234", "num_processes": 4, "process_id": 2})
  assert parallel.distributed_plan(_dist(), {}, no_tpu) == (None, {})
  assert parallel.distributed_plan(_dist(mode="off"), SLURM, no_tpu) == (None, {})


def test_explicit_mode_config_overrides_env_and_errors_name_the_keys():
  env = {"JAX_COORDINATOR_ADDRESS": "h0:1234", "JAX_NUM_PROCESSES": "4", "JAX_PROCESS_ID": "2"}
  cfg = _dist(mode="explicit", coordinator_address="h9:99", num_processes=2, process_id=1)
  assert parallel.distributed_plan(cfg, env, no_tpu)[1] == {
      "coordinator_address": "h9:99", "num_processes": 2, "process_id": 1}
  with pytest.raises(ValueError, match="config.distributed.num_processes.*process_id"):
    parallel.distributed_plan(_dist(mode="explicit", coordinator_address="h:1"), {}, no_tpu)
  with pytest.raises(ValueError, match="HOST:PORT"):
    parallel.distributed_plan(_dist(mode="explicit", coordinator_address="h", num_processes=2,
                                    process_id=0), {}, no_tpu)
  with pytest.raises(ValueError, match=r"process_id=2 must be in \[0, num_processes=2\)"):
    parallel.distributed_plan(_dist(mode="explicit", coordinator_address="h:1", num_processes=2,
                                    process_id=2), {}, no_tpu)
  with pytest.raises(ValueError, match="mode must be one of"):
    parallel.distributed_plan(_dist(mode="mpi"), {}, no_tpu)


def test_single_process_start_up_is_a_no_op():
  assert parallel.maybe_initialize_distributed(_dist(mode="off")) is False
  assert jax.process_count() == 1


# -- mesh and the fsdp rule -----------------------------------------------------------------
def test_mesh_shape_and_bad_fsdp():
  mesh = parallel.make_mesh(ml_collections.ConfigDict({"fsdp": 2}), jax.devices()[:8])
  assert dict(mesh.shape) == {"population": 1, "data": 4, "fsdp": 2}  # no population: one group
  with pytest.raises(ValueError, match=r"fsdp=3 .* divide the 8 devices; use one of \[1, 2, 4, 8\]"):
    parallel.make_mesh(ml_collections.ConfigDict({"fsdp": 3}), jax.devices()[:8])


def test_leaf_rule():
  assert parallel.leaf_spec((3, 3, 512, 512), 4, 2**18) == P(None, None, None, "fsdp")
  assert parallel.leaf_spec((2048, 7), 4, 2**10) == P("fsdp", None)
  assert parallel.leaf_spec((2048,), 4, 2**18) == P()            # small: replicated
  assert parallel.leaf_spec((7, 7, 3, 64), 1, 1) == P()          # no fsdp axis
  assert parallel.leaf_spec((1001, 1001), 4, 1) == P()           # nothing divisible


def test_fsdp_rule_shards_resnet50_params_teacher_and_adam_moments():
  """ResNet-50 on a (data=2, fsdp=4) mesh: >90% of the parameter, teacher and optimizer
  bytes are split four ways; BatchNorm statistics and the algorithm state are replicated."""
  c = tiny_config("dta_snl", **{"model.backbone": "resnet50", "mesh.fsdp": 4, "mesh.num_devices": 8})
  t = train.Trainer(c, WORKDIR)  # builds shardings from jax.eval_shape: nothing is compiled
  n_params = sum(x.size for x in jax.tree.leaves(t.abstract_state.params))
  assert n_params > 23_000_000  # ResNet-50 backbone (23.5M) + head
  report = parallel.sharding_report(t.abstract_state, t.state_shardings)
  for field in ("params", "ema_params", "opt_state"):
    r = report[field]
    assert r["sharded_bytes"] > 0.9 * r["bytes"], (field, r)
    unsharded = r["bytes"] - r["sharded_bytes"]
    assert r["bytes_per_device"] == r["sharded_bytes"] // 4 + unsharded, (field, r)
  for field in ("batch_stats", "ema_batch_stats", "algo", "rng", "step"):
    assert report[field]["sharded_bytes"] == 0, field
  # the largest kernel (a 3x3x512x512 conv of stage 4) is split on its output channels
  shapes = jax.tree.leaves(jax.tree.map(lambda x: x.shape, t.abstract_state.params),
                           is_leaf=lambda x: isinstance(x, tuple))
  biggest = max(shapes, key=lambda s: np.prod(s))
  leaves = zip(jax.tree.leaves(t.abstract_state.params), jax.tree.leaves(t.state_shardings.params))
  for leaf, sharding in leaves:
    if leaf.shape == biggest:
      assert sharding.spec == P(None, None, None, "fsdp")
      assert sharding.shard_shape(leaf.shape) == biggest[:3] + (biggest[3] // 4,)
  # the Adam moments follow the parameters leaf for leaf
  mu = t.state_shardings.opt_state[0].mu
  assert jax.tree.leaves(mu) and all(
      a.spec == b.spec for a, b in zip(jax.tree.leaves(mu), jax.tree.leaves(t.state_shardings.params)))


# -- multi-device == one device through the real trainer -----------------------------------
# SGD, not Adam: Adam divides by sqrt(v), so a float-rounding difference in a gradient
# element near zero becomes an O(lr) parameter difference (seen: 1 of 36,864 kernel
# entries off by 2.7e-5 after 3 Adam steps on a pure-fsdp mesh that matches to 1e-8
# with SGD). SGD keeps the comparison about the gradients and statistics themselves.
# threshold_init 0.6 is picked for the built-in data at its default nuisance: in the last
# of the 3 steps some samples pass the thresholds and some go to SNL (checked below).
DTA_SNL = {"algo.threshold_init": 0.6, "algo.threshold_min": 0.1, "algo.threshold_momentum": 0.5,
           "algo.k": 3, "algo.neg_rampup_steps": 1, "mesh.num_devices": 0,
           "optim.name": "sgd", "optim.lr": 0.05,
           # one XLA:CPU path, pinned: the Eigen path ('auto' on AVX2 and AVX-512) rounds one
           # momentum entry of the head 1.5e-5 apart between 1 and 8 devices, past 1e-5
           "train.xla_cpu_options": "default"}


def _batches(config):
  t = train.Trainer(config, WORKDIR, devices=jax.devices()[:1])
  it = pipeline.TrainBatches(t.train_data, config, t.algorithm)
  return [next(it) for _ in range(NUM_STEPS)]


def _run(config, devices, host_batches):
  t = train.Trainer(config, WORKDIR, devices=devices)
  state = t.fresh_state()
  metrics = []
  for hb in host_batches:
    state, m = t.train_step(state, parallel.global_batch(hb, t.batch_sharding))
    metrics.append(jax.device_get(m))
  return t, state, metrics


@pytest.fixture(scope="module")
def dta_snl_reference():
  config = tiny_config("dta_snl", **DTA_SNL)
  host = _batches(config)
  _, state, metrics = _run(config, jax.devices()[:1], host)
  return host, jax.device_get(state), metrics


def _compare(ref, got, rtol, atol):
  flat_ref = jax.tree_util.tree_flatten_with_path(ref)[0]
  for (path, a), b in zip(flat_ref, jax.tree.leaves(got)):
    np.testing.assert_allclose(a, b, rtol=rtol, atol=atol, err_msg=jax.tree_util.keystr(path))


@pytest.mark.parametrize("fsdp,n", [(1, 8), (2, 2), (2, 8)])
def test_dta_snl_on_a_mesh_equals_1_device(dta_snl_reference, fsdp, n, monkeypatch):
  """Thresholds, masks, SNL selections, parameters, teacher and momentum after 3 steps
  on a (n/fsdp, fsdp) mesh equal the one-device run (the per-class statistics are means
  over the global batch, reduced across devices by XLA).

  An earlier version of this test set the thresholds at 0.15, inside the cluster of
  confidences the fresh network gives; a float-reordering difference then flipped mask
  and complementary-label decisions and the fsdp x data mesh looked ~1e-4 off. With the
  thresholds away from that cluster every mesh matches, so all cases are strict.
  """
  monkeypatch.setattr(parallel, "FSDP_MIN_SIZE", 4096)  # shard the tiny CNN's 4 big kernels
  host, ref_state, ref_metrics = dta_snl_reference
  assert ref_metrics[-1]["mask_rate"] > 0 and ref_metrics[-1]["algo/neg_selected_rate"] > 0, \
      "both the pseudo-label and the SNL branch must be exercised"
  assert not np.allclose(ref_state.algo["tau"], DTA_SNL["algo.threshold_init"]), \
      "the thresholds must have moved"
  config = tiny_config("dta_snl", **DTA_SNL, **{"mesh.fsdp": fsdp})
  t, state, metrics = _run(config, jax.devices()[:n], host)
  sharded = [s for s in jax.tree.leaves(t.state_shardings.params) if s.spec != P()]
  assert len(sharded) == (4 if fsdp > 1 else 0)
  if fsdp > 1:  # really distributed: each device holds 1/fsdp of a sharded kernel
    kernel = state.params["backbone"]["conv2_1"]["kernel"]
    assert kernel.addressable_shards[0].data.shape[-1] == kernel.shape[-1] // fsdp
  _compare((ref_state, ref_metrics), (jax.device_get(state), metrics), 1e-5, 1e-5)


# -- gradient accumulation -------------------------------------------------------------------
class _Linear(nn.Module):
  """No BatchNorm, no dropout: the per-example loss is independent of the batch, so k
  micro-batches of B average to exactly the gradient of one batch of kB."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train
    self.variable("batch_stats", "unused", jnp.zeros, (1,))
    logits = nn.Dense(7)(x.reshape(x.shape[0], -1))
    return {"logits": logits, "features": logits}


def _linear_run(accum, batches):
  config = tiny_config("supervised", **{"optim.accum_steps": accum, "optim.lr": 1e-2,
                                        "optim.schedule": "cosine", "optim.warmup_steps": 1,
                                        })
  algorithm = algorithms.get_algorithm("supervised")
  schedule, tx = optim.make_optimizer(config.optim, len(batches))  # num_steps counts batches
  model = _Linear()
  step = jax.jit(step_lib.make_train_step(model, tx, algorithm, config, steps_per_epoch=10,
                                          schedule=schedule))
  state = state_lib.create(model, tx, algorithm, config.algo, rng=jax.random.PRNGKey(0),
                           image_shape=(6, 6, 3), num_classes=7, num_unlabeled=0)
  history = []
  for b in batches:
    state, m = step(state, b)
    history.append((jax.device_get(state), jax.device_get(m)))
  return history


def test_accumulating_two_batches_of_b_equals_one_batch_of_2b():
  rng = np.random.default_rng(0)
  big = [{"x_lb": rng.integers(0, 256, (8, 6, 6, 3), dtype=np.uint8),
          "y_lb": rng.integers(0, 7, (8,)).astype(np.int32)} for _ in range(2)]
  small = [{k: v[h * 4:(h + 1) * 4] for k, v in b.items()} for b in big for h in (0, 1)]
  # 2 optimizer updates either way; the cosine schedule spans 2 updates in both runs
  one = _linear_run(1, big)
  two = _linear_run(2, small)
  s_first_micro = two[0][0]
  # after the first micro-batch: nothing applied, the teacher has not moved
  np.testing.assert_array_equal(s_first_micro.params["Dense_0"]["kernel"],
                                s_first_micro.ema_params["Dense_0"]["kernel"])
  for (s1, m1), (s2, m2) in zip(one, two[1::2]):
    for a, b in zip(jax.tree.leaves((s1.params, s1.ema_params, s1.opt_state)),
                    jax.tree.leaves((s2.params, s2.ema_params, s2.opt_state[2]))):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert m1["ema_decay"] == m2["ema_decay"] and m1["lr"] == m2["lr"]
  # and the run did move: the two updates changed the parameters
  assert not np.allclose(one[-1][0].params["Dense_0"]["kernel"], one[0][0].params["Dense_0"]["kernel"])


def test_accumulation_in_the_trainer_updates_params_and_teacher_every_k_batches():
  config = tiny_config("fixmatch", **{"optim.accum_steps": 2, "algo.tau": 0.3})
  host = _batches(config)[:2]
  t, s0, _ = _run(config, jax.devices()[:1], [])
  s0 = jax.device_get(s0)
  _, s1, m1 = _run(config, jax.devices()[:1], host[:1])
  _, s2, m2 = _run(config, jax.devices()[:1], host)
  s1, s2 = jax.device_get(s1), jax.device_get(s2)
  same = lambda a, b: all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
  assert same(s0.params, s1.params) and same(s0.ema_params, s1.ema_params)
  assert same(s0.ema_batch_stats, s1.ema_batch_stats)
  assert not same(s0.batch_stats, s1.batch_stats), "BatchNorm statistics follow every batch"
  assert not same(s1.params, s2.params) and not same(s1.ema_params, s2.ema_params)
  assert int(s2.step) == 2 and int(s2.opt_state.gradient_step) == 1


# -- mixed precision ----------------------------------------------------------------------
def test_bfloat16_compute_keeps_float32_params_and_trains():
  """compute_dtype='bfloat16': convolutions run in bf16 (seen in the compiled HLO), the
  parameters, teacher, optimizer state and logits stay float32, and repeated steps on
  one labeled batch bring its loss down."""
  config = tiny_config("supervised", **{"model.compute_dtype": "bfloat16", "optim.lr": 3e-3,
                                        "model.head_dropout": 0.0})
  t = train.Trainer(config, WORKDIR, devices=jax.devices()[:1])
  hb = next(pipeline.TrainBatches(t.train_data, config, t.algorithm))
  batch = parallel.global_batch(hb, t.batch_sharding)
  state = t.fresh_state()
  hlo = t.train_step.lower(state, batch).as_text()
  assert "bf16" in hlo and "convolution" in hlo
  losses = []
  for _ in range(12):
    state, m = t.train_step(state, batch)
    losses.append(float(m["loss"]))
  for leaf in jax.tree.leaves((state.params, state.ema_params, state.opt_state, state.batch_stats)):
    if jnp.issubdtype(leaf.dtype, jnp.floating):
      assert leaf.dtype == jnp.float32
  assert np.all(np.isfinite(losses))
  assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3]), losses
  out = t.model.apply({"params": state.params, "batch_stats": state.batch_stats},
                      jnp.zeros((2,) + t.image_shape), train=False)
  assert out["logits"].dtype == jnp.float32
