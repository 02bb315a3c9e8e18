r"""Train-step throughput of ssfer_jax against a PyTorch eager implementation of the same step.

    python bench/train_step.py                          # B=2, 112 and 224 px, all parts
    python bench/train_step.py --batch=32 --steps=10    # on a GPU (chosen automatically)
    python bench/train_step.py --parts=step --sizes=112 --impls=jax

The step is the project's method, ``dta_snl``, with the RAF-DB settings
(``configs/rafdb_dta_snl.py``: ResNet-18, local attention + feature-map dropout 0.5,
head dropout 0.5, Adam 5e-4, EMA teacher 0.999, DTA thresholds + SNL): a labeled batch
of B images (weak view) and an unlabeled batch of U = uratio x B images (weak + strong
views; ``--uratio`` defaults to 7). One step = teacher forward on U weak + B labeled,
student forward/backward on B labeled + U strong, the DTA/SNL losses, Adam, the EMA
update. **images/s counts the B + U distinct images of a step** (each unlabeled image
is seen as two views; ``supervised_views`` counts its B + 2U labeled images).

The semi-supervised overhead is read against ``supervised_views``, the supervised step
on the B + 2U images that dta_snl puts through a network. ``supervised`` (B + U images)
is printed too; against it any pseudo-label step pays at least the weak views' forward
pass (docs/performance.md, "The cost of the semi-supervised parts").

Parts (``--parts``, comma-separated):

* ``step``: for every size, the modes (``--modes``)
    dta_snl       the method's step (above)
    pseudo_label  the same network work (teacher forward on U + B, student forward/backward
                  on B + U, EMA) with a plain pseudo-label CE: no thresholds, no mask, no SNL
                  (a bench-only Algorithm; the difference to dta_snl is the cost of DTA+SNL)
    supervised    the supervised step on B + U labeled images (student forward/backward on
                  the same number of images as dta_snl's student, EMA update; no teacher
                  forward)
    supervised_views
                  the supervised step on B + 2U labeled images: every image tensor the
                  dta_snl step puts through a network (B labeled, U weak, U strong)
    dta_snl_student
                  dta_snl with ``pseudo_label_source='student'`` (USB's layout): no
                  teacher forward; the weak views join the student's train-mode forward
                  (stop-gradient), so the student's forward/backward covers the same B + 2U
                  images as ``supervised_views``
  each in ssfer_jax (the Trainer's jitted step: shardings, donation, the batch put on
  the device every step as the loop does) and, for dta_snl and supervised, in PyTorch
  eager (``bench/torch_reference.py``; cuda if available). After ``--warmup`` steps,
  ``--rounds`` rounds alternate the implementations (``--steps`` steps each) so that a
  change of machine load hits both; the table shows the median round.
  Also: compile time (lower + compile of the step), model FLOPs per step from XLA's cost
  analysis of the compiled step, and the achieved FLOP/s against the peak.
  ``--xla_cpu_options`` (repeatable; default ``auto``, ``default``, ``eigen``, dropping
  values that resolve to an earlier one's options) adds a jax row per XLA:CPU convolution
  path (``config.train.xla_cpu_options``, ``ssfer_jax/xla_options.py``): ``jax/<mode>`` is
  the first (the Trainer's choice), ``jax@<value>/<mode>`` the others, in the same rounds.
  ``--jax_batch_norm=auto,flax`` (a list: the first is the baseline) adds a row per
  ``config.model.batch_norm``, named ``jax+<value>bn/<mode>``, with a paired ratio.
  Besides wall and process CPU time, the table shows the CPU time spent in the kernel
  (``sys s``: page faults above all) per step. Both implementations run under the
  process's C allocator, named in the header: ``--malloc`` as for ``ssfer_jax.main``
  (default ``auto``: tcmalloc where installed; ``--malloc=system`` for glibc's).
  **Load guard:** the JAX / PyTorch ratios are not printed when the load average exceeds
  the core count (PyTorch's OpenMP barriers stall under load; the JAX-vs-JAX A/B, same
  process and rounds, is still printed). The header prints the load and instruction set.
* ``algo``: the DTA + SNL logic alone (``dta_snl.unlabeled_loss`` jitted on logits,
  forward and forward + gradient w.r.t. the student logits).
* ``peak``: the peak FLOP/s: a measured large float32 matmul (``jnp.dot``), and on a CPU
  the nominal cores x clock x SIMD lanes x FMA units x 2 from lscpu / /proc/cpuinfo.
* ``loop``: host/device split of the training loop at ``--loop_config`` (default
  ``configs/default.py``, the CPU default job), built by ``train.Trainer``: steps/s of
  (a) the input pipeline alone (``next(TrainBatches)``, batches put on the mesh as the
  loop gets them), (b) the jitted step alone on one device-resident batch, (c) the loop's
  per-step work (next batch -> step, dispatch is asynchronous, so host and device overlap
  as in ``train.run``).
  (c) close to (a) and well below (b): the loop waits for input.
* ``input``: the host input pipeline (``pipeline.TrainBatches``: grain, RAF-DB-sized
  100 px source images resized, weak + strong augmentation) in images/s at each size,
  against the step's images/s (does the pipeline keep up?).

``--json=FILE`` writes every number.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time

import common  # bench/common.py: the repository on sys.path, timing and JSON helpers
import numpy as np
from absl import flags

from ssfer_jax import cli, config as config_lib, malloc

_BATCH = flags.DEFINE_integer("batch", 2, "B: labeled images per step (unlabeled: uratio x B).")
_URATIO = flags.DEFINE_integer("uratio", 7, "Unlabeled images per labeled image.")
_SIZES = flags.DEFINE_list("sizes", ["112", "224"], "Image sides in pixels.")
_IMPLS = flags.DEFINE_list("impls", ["jax", "torch"], "Implementations: jax, torch.")
MODES = ("dta_snl", "pseudo_label", "supervised", "supervised_views", "dta_snl_student")
_MODES = flags.DEFINE_list("modes", list(MODES), "Step kinds (see above).")
_PARTS = flags.DEFINE_list("parts", ["peak", "step", "algo", "input", "loop"],
                           "What to measure (also 'profile', not in the default).")
_WARMUP = flags.DEFINE_integer("warmup", 2, "Untimed steps per implementation (after compile).")
_STEPS = flags.DEFINE_integer("steps", 2, "Timed steps per implementation per round.")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Alternating timing rounds.")
_CHANNELS_LAST = flags.DEFINE_bool("torch_channels_last", True,
                                   "torch: channels_last layout (faster with oneDNN on CPU).")
_XLA_CPU = flags.DEFINE_multi_string(
    "xla_cpu_options", ["auto", "default", "eigen"],
    "jax variants, config.train.xla_cpu_options, one per flag (XLA:CPU convolution path; the "
    "first is the 'jax/' row, the others 'jax@<value>/'; a value resolving to the same "
    "options as an earlier one is dropped, so the default is auto's choice vs the other "
    "path). One row off CPU: the options are CPU-only.")
_MAXPOOL = flags.DEFINE_list("jax_maxpool", ["fast"],
                             "jax variants, config.model.max_pool: 'fast' (the models' default, "
                             "ssfer_jax/models/pooling.py) and/or 'xla' (flax nn.max_pool).")
_BATCH_NORM = flags.DEFINE_list("jax_batch_norm", ["auto"],
                                "jax variants, config.model.batch_norm: 'auto' (the default: "
                                "'fast' on CPU), 'fast' (ssfer_jax/models/batch_norm.py) and/or "
                                "'flax' (flax nn.BatchNorm), comma-separated in one flag (a "
                                "repeated flag keeps only its last value).")
_SETTLE = flags.DEFINE_float("settle_s", 0.5, "Pause between timed runners (lets threads park).")
_FMA_UNITS = flags.DEFINE_integer("fma_units", 2, "CPU nominal peak: FMA pipes per core.")
_INPUT_BATCHES = flags.DEFINE_integer("input_batches", 4, "input part: timed batches.")
_LOOP_CONFIG = flags.DEFINE_string("loop_config", "configs/default.py",
                                   "loop part: the config file[:variant] to time.")
_LOOP_STEPS = flags.DEFINE_integer("loop_steps", 30, "loop part: timed steps per measurement.")
_JSON = flags.DEFINE_string("json", "", "Write the results here as JSON.")
_MALLOC = flags.DEFINE_enum("malloc", "auto", malloc.MODES,
                            "C allocator of this process, so of both implementations "
                            "(ssfer_jax/malloc.py; as python -m ssfer_jax.main --malloc).")

NUM_CLASSES = 7
CONFIG_FILE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                           "configs", "rafdb_dta_snl.py")


# ---------------------------------------------------------------------------------------
# Configs and batches (also used by bench/parity.py and tests).

def _rafdb_config(arg):
  return config_lib.load(f"{CONFIG_FILE}:{arg or ''}")


def images_per_step(mode: str, b: int, uratio: int) -> int:
  """Images a step of ``mode`` counts: the B + U distinct images for the semi-supervised
  modes and ``supervised``; B + 2U labeled images for ``supervised_views``."""
  return b * (1 + 2 * uratio) if mode == "supervised_views" else b * (1 + uratio)


def bench_config(mode: str, size: int, b: int, uratio: int):
  """configs/rafdb_dta_snl.py (model, optimizer, method settings) on a tiny synthetic
  source (the bench feeds its own batches; the source only sizes the Trainer)."""
  if mode not in MODES:
    raise ValueError(f"--modes: unknown step kind {mode!r}; choose from {', '.join(MODES)}")
  supervised = mode.startswith("supervised")
  c = _rafdb_config("supervised" if supervised else "dta_snl")
  if mode == "pseudo_label":
    c.algorithm = "bench_pseudo_label"   # same hyper-parameter keys as dta_snl: validate passes
  if mode == "dta_snl_student":
    c.pseudo_label_source = "student"
  c.dataset.name = "synthetic"
  c.dataset.num_train = 200
  c.dataset.num_test = 8
  c.dataset.render_size = 16
  c.data.label_protocol = "uniform"
  c.data.labels_per_class = 4
  c.data.image_size = size
  c.data.uratio = uratio
  c.data.batch_size = images_per_step(mode, b, uratio) if supervised else b
  c.eval.batch_size = 8
  c.mesh.num_devices = 1
  return c


def register_pseudo_label():
  """A bench-only Algorithm: dta_snl's network work (teacher on U + B, student on B + U)
  with the plainest unlabeled loss, mean CE(strong, teacher arg-max): no threshold, mask
  or SNL. dta_snl minus this is the cost of the DTA + SNL logic inside the real step."""
  import jax.numpy as jnp
  from ssfer_jax import algorithms
  from ssfer_jax.algorithms import dta_snl
  from ssfer_jax.algorithms.base import (Algorithm, UnlabeledOutput, confidence_and_label,
                                         cross_entropy)

  def unlabeled_loss(state, inputs, cfg):
    del cfg
    _, pseudo, _ = confidence_and_label(inputs.pseudo_logits("ulb_w"))
    loss = jnp.mean(cross_entropy(inputs.student_logits("ulb_s"), pseudo))
    return UnlabeledOutput(loss=loss + 0.0 * jnp.sum(inputs.teacher_logits_lb), state=state,
                           mask=jnp.ones(pseudo.shape, jnp.float32), pseudo_labels=pseudo,
                           metrics={})

  algo = Algorithm(name="bench_pseudo_label", default_config=dta_snl.default_config,
                   init_state=dta_snl.init_state, unlabeled_loss=unlabeled_loss,
                   needs_teacher_on_labeled=True)
  return algorithms.register(algo, replace=True)


def random_batch(rng, config, algorithm, num_classes=NUM_CLASSES) -> dict:
  """A host batch as ``pipeline.TrainBatches`` yields it (uint8 NHWC images, int32 labels)."""
  s, b = config.data.image_size, config.data.batch_size
  u = b * config.data.uratio
  out = {"x_lb": rng.integers(0, 256, (b, s, s, 3), dtype=np.uint8),
         "y_lb": rng.integers(0, num_classes, (b,)).astype(np.int32)}
  if algorithm.uses_unlabeled:
    for v in algorithm.views:
      out["x_" + v] = rng.integers(0, 256, (u, s, s, 3), dtype=np.uint8)
    out["idx_ulb"] = np.arange(u, dtype=np.int32)
    out["y_ulb"] = rng.integers(0, num_classes, (u,)).astype(np.int32)
  return out


# ---------------------------------------------------------------------------------------
# Runners: each returns a callable doing n steps and waiting for them.

class JaxRunner:
  """The Trainer's jitted train step, compiled ahead of time (timed), fed as the loop feeds it."""

  def __init__(self, mode, size, b, uratio, workdir, seed=0, max_pool="fast",
               xla_cpu_options="auto", compute_dtype=None, batch_norm="auto"):
    import jax
    from ssfer_jax import parallel, train
    self.jax, self.parallel = jax, parallel
    self.config = bench_config(mode, size, b, uratio)
    self.config.model.max_pool = max_pool
    self.config.model.batch_norm = batch_norm
    self.config.train.xla_cpu_options = xla_cpu_options
    if compute_dtype:
      self.config.model.compute_dtype = compute_dtype
    self.trainer = train.Trainer(self.config, workdir)
    self.xla_cpu_path = self.trainer.xla_cpu_path
    rng = np.random.default_rng(seed)
    self.host = [random_batch(rng, self.config, self.trainer.algorithm) for _ in range(2)]
    self.state = self.trainer.fresh_state()
    batch = parallel.global_batch(self.host[0], self.trainer.batch_sharding)
    t0 = time.perf_counter()
    self.compiled = self.trainer.train_step.lower(self.state, batch).compile()
    self.compile_s = time.perf_counter() - t0
    cost = self.compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    self.flops = float(cost.get("flops", float("nan"))) if cost else float("nan")
    self.images_per_step = images_per_step(mode, b, uratio)
    self.k = 0
    self.metrics = None   # run(0), e.g. --warmup=0, waits on the state alone

  def run(self, n):
    for _ in range(n):
      hb = self.host[self.k % len(self.host)]
      self.k += 1
      batch = self.parallel.global_batch(hb, self.trainer.batch_sharding)
      self.state, self.metrics = self.compiled(self.state, batch)
    self.jax.block_until_ready((self.state, self.metrics))


class TorchRunner:
  """torch_reference.TorchStep on the same host batches (bench/gpu_bench.py: bfloat16
  autocast, ``compile=True`` for torch.compile of the networks)."""

  def __init__(self, mode, size, b, uratio, seed=0, amp_dtype=None, compile=False):
    import torch_reference as ref
    self.ref = ref
    self.dev = ref.device()
    self.step = ref.TorchStep(mode, channels_last=_CHANNELS_LAST.value, seed=seed, dev=self.dev,
                              amp_dtype=amp_dtype, compile=compile)
    config = bench_config(mode, size, b, uratio)
    from ssfer_jax import algorithms
    algo = algorithms.get_algorithm(config.algorithm)
    rng = np.random.default_rng(seed)
    self.host = [random_batch(rng, config, algo) for _ in range(2)]
    self.images_per_step = images_per_step(mode, b, uratio)
    self.k = 0

  def run(self, n):
    for _ in range(n):
      self.loss = self.step.step(self.host[self.k % len(self.host)])
      self.k += 1
    self.ref.synchronize(self.dev)


def time_interleaved(runners: dict, warmup: int, steps: int, rounds: int):
  """({name: [wall seconds per step, one per round]}, {name: [process CPU seconds per
  step]}, {name: [kernel-mode CPU seconds per step]}), the runners alternating within each
  round. CPU seconds (all threads) are less sensitive than wall time to other processes'
  load, but include spin-waiting; the kernel-mode part is page faults and other system
  calls."""
  for r in runners.values():
    r.run(warmup)
  wall = {name: [] for name in runners}
  cpu = {name: [] for name in runners}
  kernel = {name: [] for name in runners}
  for _ in range(rounds):
    for name, r in runners.items():
      time.sleep(_SETTLE.value)
      t0, c0, s0 = time.perf_counter(), time.process_time(), os.times().system
      r.run(steps)
      wall[name].append((time.perf_counter() - t0) / steps)
      cpu[name].append((time.process_time() - c0) / steps)
      kernel[name].append((os.times().system - s0) / steps)
  return wall, cpu, kernel


# ---------------------------------------------------------------------------------------
# Peak FLOP/s.

def measured_matmul_peak(n=None, reps=5) -> dict:
  """Best-of-``reps`` float32 ``jnp.dot`` of two n x n matrices, 2 n^3 flops each."""
  import jax
  import jax.numpy as jnp
  on_cpu = jax.devices()[0].platform == "cpu"
  n = n or (2048 if on_cpu else 8192)
  a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
  f = jax.jit(lambda x: jnp.dot(x, x, precision=jax.lax.Precision.HIGHEST))
  f(a).block_until_ready()
  best = min(common.per_call_s(lambda: f(a), 1, jax.block_until_ready) for _ in range(reps))
  return {"matmul_n": n, "matmul_flops_per_s": 2 * n**3 / best}


def nominal_cpu_peak(fma_units: int) -> dict:
  """cores x clock x float32 SIMD lanes x FMA units x 2, from /proc/cpuinfo flags."""
  try:
    text = open("/proc/cpuinfo").read()
  except OSError:
    return {}
  flags_line = next((l for l in text.splitlines() if l.startswith("flags")), "")
  mhz = [float(l.split(":")[1]) for l in text.splitlines() if l.startswith("cpu MHz")]
  lanes = 16 if " avx512f" in flags_line else 8 if " avx2" in flags_line else 4
  fma = " fma" in flags_line
  cores = os.cpu_count() or 1
  ghz = (max(mhz) / 1000.0) if mhz else float("nan")
  peak = cores * ghz * 1e9 * lanes * (fma_units if fma else 1) * (2 if fma else 1)
  return {"cores": cores, "ghz": ghz, "f32_lanes": lanes, "fma": fma, "fma_units": fma_units,
          "nominal_flops_per_s": peak}


# ---------------------------------------------------------------------------------------
# Profile: thunk time of the jax dta_snl step by kind of operation.

PROFILE_KINDS = (  # (kind, predicate over the thunk name), first match wins
    ("convolutions and dots (ynn_fusion)",
     lambda n: n.startswith(("ynn_fusion", "convolution", "dot"))),
    ("transposes", lambda n: "transpose" in n),
    ("copies", lambda n: n.startswith("copy")),
    ("reduce-window / select-and-scatter / scatter",
     lambda n: any(k in n for k in ("reduce-window", "select-and-scatter", "scatter"))),
    ("everything else (BN, elementwise, Adam, EMA, losses)", lambda n: True),
)


def profile_step(size, b, uratio, steps=3) -> dict:
  """Thunk time per step by kind. XLA:CPU emits per-thunk events only when the bench is
  started with XLA_FLAGS=--xla_cpu_enable_xprof_traceme=true."""
  import collections
  import glob
  import gzip
  import jax
  with tempfile.TemporaryDirectory() as tmp:
    r = JaxRunner("dta_snl", size, b, uratio, os.path.join(tmp, "run"))
    r.run(steps)                                   # warm
    trace_dir = os.path.join(tmp, "trace")
    jax.profiler.start_trace(trace_dir, create_perfetto_trace=True)
    r.run(steps)
    jax.profiler.stop_trace()
    files = glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True)
    with gzip.open(sorted(files)[-1]) as f:
      events = json.load(f)
  events = events["traceEvents"] if isinstance(events, dict) else events
  by_kind = collections.Counter()
  for e in events:
    name = e.get("name", "")
    if e.get("ph") != "X" or name.startswith(("ThunkExecutor", "$", "SlinkyThreadPool",
                                                "PjitFunction")):
      continue
    kind = next(k for k, pred in PROFILE_KINDS if pred(name))
    by_kind[kind] += e.get("dur", 0) / 1e3 / steps          # us -> ms per step
  total = sum(by_kind.values())
  return {"size": size, "total_ms": total, "ms_per_step": dict(by_kind),
          "share": {k: v / total for k, v in by_kind.items()} if total else {}}


# ---------------------------------------------------------------------------------------
# The DTA + SNL logic alone.

def time_algorithm(b, uratio, iters=200) -> dict:
  import jax
  import jax.numpy as jnp
  from ssfer_jax.algorithms import dta_snl
  from ssfer_jax.algorithms.base import StepInputs
  config = _rafdb_config("dta_snl")
  cfg = config.algo
  u = b * uratio
  keys = jax.random.split(jax.random.PRNGKey(0), 4)
  arrays = dict(
      logits_lb=jax.random.normal(keys[0], (b, NUM_CLASSES)) * 4,
      y_lb=jnp.arange(b, dtype=jnp.int32) % NUM_CLASSES,
      logits_ulb_s=jax.random.normal(keys[1], (u, NUM_CLASSES)) * 4,
      logits_ulb_w=jax.random.normal(keys[2], (u, NUM_CLASSES)) * 4,
      teacher_logits_lb=jax.random.normal(keys[3], (b, NUM_CLASSES)) * 4,
      idx_ulb=jnp.arange(u, dtype=jnp.int32), y_ulb=jnp.zeros((u,), jnp.int32),
      step=jnp.int32(10), epoch=jnp.float32(0.1))
  state = dta_snl.init_state(cfg, NUM_CLASSES, u)

  def inputs_of(arr):
    arr = dict(arr)  # the views as StepInputs keys them; steps_per_epoch static, closed over
    return StepInputs(steps_per_epoch=100, student={"ulb_s": {"logits": arr.pop("logits_ulb_s")}},
                      pseudo={"ulb_w": arr.pop("logits_ulb_w")}, **arr)

  fwd = jax.jit(lambda st, arr: dta_snl.unlabeled_loss(st, inputs_of(arr), cfg))

  def loss_of_student(logits_s, st, arr):
    out = dta_snl.unlabeled_loss(st, inputs_of(dict(arr, logits_ulb_s=logits_s)), cfg)
    return out.loss, out

  grad = jax.jit(jax.grad(loss_of_student, has_aux=True))
  out = {}
  for name, fn, args in (("forward", fwd, (state, arrays)),
                         ("forward+grad", grad, (arrays["logits_ulb_s"], state, arrays))):
    jax.block_until_ready(fn(*args))
    out[name + "_us"] = common.per_call_s(lambda: fn(*args), iters, jax.block_until_ready) * 1e6
  # Dispatch floor: an empty jitted function with the same arguments.
  nop = jax.jit(lambda st, arr: st["tau"])
  jax.block_until_ready(nop(state, arrays))
  out["dispatch_floor_us"] = common.per_call_s(lambda: nop(state, arrays), iters,
                                               jax.block_until_ready) * 1e6
  return out


# ---------------------------------------------------------------------------------------
# Host input pipeline.

def time_input_pipeline(size, b, uratio, batches, workdir, num_workers=None) -> dict:
  """images/s of the real ``pipeline.TrainBatches`` (dta_snl views) on synthetic 100 px
  faces (RAF-DB's aligned size) resized to ``size``, with the config's worker settings."""
  from ssfer_jax import algorithms
  from ssfer_jax.data import pipeline
  from ssfer_jax.data.datasets import load_dataset
  c = bench_config("dta_snl", size, b, uratio)
  c.dataset.render_size = 100
  c.dataset.num_train = max(200, 2 * b * (1 + uratio))
  if num_workers is not None:
    c.data.num_workers = num_workers
  algo = algorithms.get_algorithm("dta_snl")
  ds = load_dataset(c)
  data = pipeline.split_train(ds, c, algo, None)
  it = pipeline.TrainBatches(data, c, algo, ds.channels)
  # Untimed: the first batch, then as many as the prefetch buffers can hold (worker
  # processes fill them while the first batch is made), so the timed ones are made in turn.
  untimed = 1 + (c.data.prefetch * max(1, c.data.num_workers) if c.data.num_workers else 0)
  for _ in range(untimed):
    next(it)
  per_batch_s = common.per_call_s(lambda: next(it), batches)
  return {"images_per_s": b * (1 + uratio) / per_batch_s, "num_workers": c.data.num_workers,
          "read_threads": c.data.read_threads, "timed_batches": batches,
          "untimed_batches": untimed}


# ---------------------------------------------------------------------------------------
# The training loop's host / device split.

def load_config_arg(arg: str):
  """'configs/x.py[:variant]' -> the config (paths relative to the repo root work too)."""
  return config_lib.load(arg)


def time_loop(config, steps, workdir) -> dict:
  """steps/s of the input pipeline alone, the step alone and the loop's per-step work."""
  import jax
  from ssfer_jax import train
  from ssfer_jax.data import pipeline
  t = train.Trainer(config, workdir)
  batches = pipeline.TrainBatches(t.train_data, config, t.algorithm, t.dataset.channels,
                                  sharding=t.batch_sharding)
  state = t.fresh_state()
  dev_batch = next(batches)
  state, m = t.train_step(state, dev_batch)          # traces and compiles
  jax.block_until_ready((state, m))
  out = {"config": _LOOP_CONFIG.value, "maxpool": config.model.max_pool,
         "batch": config.data.batch_size,
         "uratio": config.data.uratio if t.algorithm.uses_unlabeled else 0,
         "image_size": config.data.image_size, "backbone": config.model.backbone,
         "num_workers": config.data.num_workers, "read_threads": config.data.read_threads}
  out["input_steps_per_s"] = 1.0 / common.per_call_s(lambda: next(batches), steps)
  t0 = time.perf_counter()
  for _ in range(steps):
    state, m = t.train_step(state, dev_batch)
  jax.block_until_ready((state, m))
  out["step_steps_per_s"] = steps / (time.perf_counter() - t0)
  t0 = time.perf_counter()
  for _ in range(steps):
    state, m = t.train_step(state, next(batches))
  jax.block_until_ready((state, m))
  out["loop_steps_per_s"] = steps / (time.perf_counter() - t0)
  return out


# ---------------------------------------------------------------------------------------

def _fmt_rate(x):
  return f"{x:,.1f}" if x < 100 else f"{x:,.0f}"


def main(argv):
  del argv
  malloc.reexec_if_wanted(_MALLOC.value)  # before any timing: both implementations run under it
  import jax
  m = common.machine()
  results = {**m, "batch": _BATCH.value, "uratio": _URATIO.value, "command": " ".join(sys.argv),
             "steps": {}, "algo": None, "input": {}}
  results["loadavg_start"] = results.pop("loadavg")
  b, uratio = _BATCH.value, _URATIO.value
  sizes = [int(s) for s in _SIZES.value]
  parts = set(_PARTS.value)
  print(f"{common.machine_line(m)}; B={b}  U={b * uratio}  distinct images/step="
        f"{b * (1 + uratio)} (supervised_views: {images_per_step('supervised_views', b, uratio)})",
        flush=True)

  if "peak" in parts:
    peak = measured_matmul_peak()
    if jax.devices()[0].platform == "cpu":
      peak.update(nominal_cpu_peak(_FMA_UNITS.value))
    results["peak"] = peak
    print(f"peak: measured f32 matmul {peak['matmul_n']}^2: "
          f"{peak['matmul_flops_per_s'] / 1e9:.1f} GFLOP/s"
          + (f"; nominal {peak['cores']} cores x {peak['ghz']:.2f} GHz x {peak['f32_lanes']} lanes"
             f" x {peak['fma_units']} FMA x 2 = {peak['nominal_flops_per_s'] / 1e9:.0f} GFLOP/s"
             if "nominal_flops_per_s" in peak else ""), flush=True)

  if "step" in parts:
    if "pseudo_label" in _MODES.value:
      register_pseudo_label()
    for size in sizes:
      runners, info = {}, {}
      with tempfile.TemporaryDirectory() as tmp:
        for mode in _MODES.value:
          for pool, norm, xla in jax_variants(results["platform"]):
            name = jax_row_name(mode, pool, norm, xla)
            r = JaxRunner(mode, size, b, uratio, os.path.join(tmp, name.replace("/", "_")),
                          max_pool=pool, xla_cpu_options=xla, batch_norm=norm)
            runners[name] = r
            info[name] = {"compile_s": r.compile_s, "flops_per_step": r.flops,
                          "xla_cpu_path": r.xla_cpu_path}
            print(f"  {size}px {name}: compiled in {r.compile_s:.1f} s, "
                  f"{r.flops / 1e9:.1f} GFLOP/step (XLA cost analysis), XLA:CPU path "
                  f"{r.xla_cpu_path}", flush=True)
          if "torch" in _IMPLS.value and mode in ("dta_snl", "supervised"):
            runners[f"torch/{mode}"] = TorchRunner(mode, size, b, uratio)
        times, cpu, kernel = time_interleaved(runners, _WARMUP.value, _STEPS.value,
                                              _ROUNDS.value)
      for name, ts in times.items():
        rec = info.setdefault(name, {})
        rec.update(common.rounds_summary(ts, runners[name].images_per_step),
                   cpu_s=statistics.median(cpu[name]), cpu_s_rounds=cpu[name],
                   sys_s=statistics.median(kernel[name]), sys_s_rounds=kernel[name])
        if "flops_per_step" in rec:
          rec["flops_per_s"] = rec["flops_per_step"] / rec["step_s"]
      results["steps"][size] = info
      results.setdefault("loadavg_steps", {})[size] = os.getloadavg()
      _print_step_table(size, info, results.get("peak"), results)

  if "profile" in parts:
    results["profile"] = profile_step(sizes[0], b, uratio)
    pr = results["profile"]
    print(f"\nprofile, jax dta_snl at {pr['size']} px (thunk time summed over threads, "
          f"{pr['total_ms']:.0f} ms/step):", flush=True)
    for kind, ms in sorted(pr["ms_per_step"].items(), key=lambda kv: -kv[1]):
      print(f"  {kind:<55}{ms:8.1f} ms {100 * pr['share'][kind]:5.1f} %", flush=True)
    if pr["total_ms"] == 0:
      print("  (no thunk events: run with XLA_FLAGS=--xla_cpu_enable_xprof_traceme=true)")

  if "algo" in parts:
    results["algo"] = time_algorithm(b, uratio)
    a = results["algo"]
    print(f"\nDTA+SNL logic alone (unlabeled_loss on logits, U={b * uratio}, B={b}): "
          f"forward {a['forward_us']:.0f} us, forward+grad {a['forward+grad_us']:.0f} us "
          f"(empty jitted call: {a['dispatch_floor_us']:.0f} us)", flush=True)

  if "input" in parts:
    with tempfile.TemporaryDirectory() as tmp:
      for size in sizes:
        r = time_input_pipeline(size, b, uratio, _INPUT_BATCHES.value, tmp)
        results["input"][size] = r
        step = results["steps"].get(size, {}).get("jax/dta_snl")
        extra = (f" vs the jax dta_snl step's {_fmt_rate(step['images_per_s'])} images/s "
                 f"({r['images_per_s'] / step['images_per_s']:.2f}x)" if step else "")
        print(f"input pipeline {size}px (num_workers={r['num_workers']}, read_threads="
              f"{r['read_threads']}): {_fmt_rate(r['images_per_s'])} images/s{extra}", flush=True)

  if "loop" in parts:
    results["loop"] = []
    for pool in _MAXPOOL.value:
      config = load_config_arg(_LOOP_CONFIG.value)
      config.mesh.num_devices = 1
      config.model.max_pool = pool
      with tempfile.TemporaryDirectory() as tmp:
        r = time_loop(config, _LOOP_STEPS.value, tmp)
      results["loop"].append(r)
      print(f"\nloop split, {r['config']} ({r['backbone']}, {r['image_size']} px, "
            f"B={r['batch']}, uratio={r['uratio']}, num_workers={r['num_workers']}, "
            f"read_threads={r['read_threads']}, max-pool {pool}): input pipeline alone "
            f"{r['input_steps_per_s']:.2f} steps/s, step alone {r['step_steps_per_s']:.2f} "
            f"steps/s, loop {r['loop_steps_per_s']:.2f} steps/s", flush=True)

  results["loadavg_end"] = os.getloadavg()
  if _JSON.value:
    common.write_json(_JSON.value, results)


def jax_variants(platform):
  """(max_pool, batch_norm, xla_cpu_options) of the jax rows: the first of each list is
  the baseline row; each other value of one list comes with the first of the others
  (other XLA paths on CPU only)."""
  if "jax" not in _IMPLS.value:
    return []
  from ssfer_jax import xla_options
  pools, norms, xlas, seen = _MAXPOOL.value, _BATCH_NORM.value, [], []
  for flag, values in (("--jax_maxpool", pools), ("--jax_batch_norm", norms)):
    if len(set(values)) != len(values):
      raise ValueError(f"{flag}={','.join(values)} repeats a value; give each once")
  for value in (_XLA_CPU.value if platform == "cpu" else _XLA_CPU.value[:1]):
    options = xla_options.parse(value)[1]
    if options not in seen:
      seen.append(options)
      xlas.append(value)
  return ([(pools[0], norms[0], xlas[0])] + [(p, norms[0], xlas[0]) for p in pools[1:]]
          + [(pools[0], n, xlas[0]) for n in norms[1:]]
          + [(pools[0], norms[0], x) for x in xlas[1:]])


def jax_row_name(mode, pool, norm, xla):
  name = ("jax" if pool == "fast" else "jax+xlapool") + (
      "" if norm == _BATCH_NORM.value[0] else f"+{norm}bn")
  return f"{name}/{mode}" if xla == _XLA_CPU.value[0] else f"jax@{xla}/{mode}"


def load_ok(results) -> tuple[bool, float]:
  """(whether the 1-min load average stayed within the core count, the highest seen)."""
  loads = [results["loadavg_start"][0]] + [l[0] for l in results.get("loadavg_steps", {}).values()]
  return common.quiet(max(loads)), max(loads)


def _print_step_table(size, info, peak, results):
  """Median and best round per step kind, then the ratios (on median rounds; on best rounds
  in brackets: under a shared machine's load the best round is the least disturbed)."""
  print(f"\n{size} px, B={_BATCH.value}, U={_BATCH.value * _URATIO.value}, "
        f"{_ROUNDS.value} rounds x {_STEPS.value} steps:")
  print(f"  {'step':<26}{'s/step':>8}{'CPU s':>7}{'sys s':>7}{'images/s':>10}{'best img/s':>11}"
        f"{'compile s':>10}{'GFLOP/step':>11}{'GFLOP/s':>9}{'% peak':>8}")
  ref = peak.get("matmul_flops_per_s") if peak else None
  for name, r in info.items():
    fl = r.get("flops_per_step")
    fps = r.get("flops_per_s")
    print(f"  {name:<26}{r['step_s']:>8.3f}{r['cpu_s']:>7.2f}{r['sys_s']:>7.3f}"
          f"{_fmt_rate(r['images_per_s']):>10}"
          f"{_fmt_rate(r['images_per_s_best']):>11}"
          + (f"{r['compile_s']:>10.1f}{fl / 1e9:>11.1f}{fps / 1e9:>9.1f}" if fl else " " * 30)
          + (f"{100 * fps / ref:>7.0f}%" if fl and ref else ""))

  lines, paired_lines = [], []
  quiet, load = load_ok(results)

  def compare(text, a, b, unit):
    """A ratio line, when both rows ran: a's / b's seconds per step (median round, best
    round, CPU time). unit 'x' reads it as b's images/s over a's, '%' as a's extra cost."""
    if a in info and b in info:
      lines.append((text, *(info[a][k] / info[b][k] for k in ("step_s", "step_s_best", "cpu_s")),
                    unit))

  def paired(a, b):
    """Median over rounds of a's / b's same-round seconds (robust to load that drifts over
    rounds), or None unless both rows ran."""
    if a in info and b in info:
      return statistics.median(x / y for x, y in zip(info[a]["step_s_rounds"],
                                                     info[b]["step_s_rounds"]))
    return None

  for jax_name in ("jax", "jax+xlapool"):
    for mode in ("dta_snl", "supervised"):
      if quiet:
        compare(f"{mode}: {jax_name} / torch images/s", f"torch/{mode}", f"{jax_name}/{mode}", "x")
    d, sup, pl = f"{jax_name}/dta_snl", f"{jax_name}/supervised", f"{jax_name}/pseudo_label"
    views, student = f"{jax_name}/supervised_views", f"{jax_name}/dta_snl_student"
    compare(f"{jax_name} dta_snl over supervised on the same B+U images", d, sup, "%")
    compare(f"{jax_name} dta_snl over supervised on the same B+2U image tensors", d, views, "%")
    compare(f"{jax_name} dta_snl_student over supervised_views (same network work)", student,
            views, "%")
    compare(f"{jax_name} dta_snl over pseudo_label (same network work)", d, pl, "%")
    if jax_name == "jax":
      compare("dta_snl: jax (fast max-pool) / jax+xlapool images/s", "jax+xlapool/dta_snl",
              "jax/dta_snl", "x")
  for norm in _BATCH_NORM.value[1:]:
    for mode in _MODES.value:
      a_, b_ = f"jax+{norm}bn/{mode}", f"jax/{mode}"
      compare(f"{mode}: jax (batch_norm {_BATCH_NORM.value[0]}) / jax+{norm}bn images/s",
              a_, b_, "x")
      ratio = paired(a_, b_)
      if ratio is not None:
        paired_lines.append(f"  {mode}: jax / jax+{norm}bn images/s, paired: {ratio:.2f}x")
  for xla in _XLA_CPU.value[1:]:
    for mode in _MODES.value:
      a_, b_ = f"jax@{xla}/{mode}", f"jax/{mode}"
      compare(f"{mode}: jax ({_XLA_CPU.value[0]} = {info.get(b_, {}).get('xla_cpu_path')}"
              f") / jax@{xla} images/s", a_, b_, "x")
      ratio = paired(a_, b_)
      if ratio is not None:
        info[b_].setdefault("paired_speedup", {})[xla] = ratio
        paired_lines.append(f"  {mode}: jax / jax@{xla} images/s, paired (median over rounds of "
                            f"the same-round ratio): {ratio:.2f}x")
  compare("torch dta_snl over supervised", "torch/dta_snl", "torch/supervised", "%")
  if not quiet and any(k.startswith("torch/") for k in info):
    print(f"  {common.not_quiet_line(load)}; the JAX-vs-JAX lines hold")
  results.setdefault("ratios", {})[size] = {t: {"median": m, "best": b_, "cpu": c, "unit": u}
                                            for t, m, b_, c, u in lines}
  for text, med, best, cpu, unit in lines:
    if unit == "%":
      print(f"  {text}: {100 * (med - 1):+.0f}%  [best rounds: {100 * (best - 1):+.0f}%, "
            f"CPU time: {100 * (cpu - 1):+.0f}%]")
    else:
      print(f"  {text}: {med:.2f}x  [best rounds: {best:.2f}x, CPU time: {cpu:.2f}x]")
  for line in paired_lines:
    print(line)
  if not quiet and "torch/dta_snl" in info:
    print(f"  target: dta_snl jax / PyTorch eager >= 1.0x at {size} px: not judged under load")
  elif "torch/dta_snl" in info and "jax/dta_snl" in info:
    ratio = info["torch/dta_snl"]["step_s"] / info["jax/dta_snl"]["step_s"]
    target = 1.0 if results["platform"] == "cpu" else 1.5
    met = "met" if ratio >= target else "NOT met"
    print(f"  target: dta_snl jax / PyTorch eager images/s >= {target:.1f}x at {size} px on "
          f"{results['platform']}: {met} ({ratio:.2f}x)")
    results.setdefault("targets", {})[size] = {"ratio": ratio, "target": target, "met": ratio >= target}
  sys.stdout.flush()


if __name__ == "__main__":
  cli.run_absl(main)
