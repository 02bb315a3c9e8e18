"""Mesh, sharding rules and multi-host start-up: the one place that knows about devices.

Mesh. Three named axes, ``population`` x ``data`` x ``fsdp``. ``population``
(``config.mesh.population``, default 1) splits the members of a population run
(``population.py``) into device groups that never talk to each other; inside a group the
batch is split over ``data`` *and* ``fsdp`` (every device sees different rows), and
``fsdp`` (``config.mesh.fsdp`` devices per parameter shard; 1 = pure data parallelism)
only changes where the parameters live:

  * ``fsdp == 1``: everything is replicated; XLA all-reduces the gradients over ``data``.
  * ``fsdp > 1`` (ZeRO-3 / FSDP): every *large* leaf of the student parameters, the EMA
    teacher and the optimizer state (Adam moments, accumulated gradients) is split over
    ``fsdp`` along its largest divisible dimension; XLA all-gathers a layer's weights
    before use and reduce-scatters its gradient. Small leaves (BatchNorm scales, biases,
    the 7-class head) and the algorithm state / BatchNorm statistics stay replicated:
    sharding them would cost more collectives than the memory it saves.

The rules live in ``state_shardings``; nothing else in the code base names an axis. The
mesh is built with ``AxisType.Auto`` axes: jax 0.10's ``jax.make_mesh`` defaults to
Explicit axes, which linen's Dropout does not support.

Statistics. The train step is one ``jax.jit`` over the global batch, so a ``jnp.mean``
over the batch axis inside an algorithm (thresholds, class counts, EMAs) is a cross-device
reduction: the algorithm state is identical on every device and equal to a one-device
run on the same global batch (``tests/test_parallel.py`` checks this for ``dta_snl``).

Multi-host. ``maybe_initialize_distributed`` starts ``jax.distributed`` before any
computation (see its docstring); each host then feeds its own rows of the global batch
(``global_batch``) and orbax saves / restores the sharded state collectively.
"""

from __future__ import annotations

import logging
import os
from typing import Mapping

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

POPULATION = "population"
DATA = "data"
FSDP = "fsdp"

# Leaves with at least this many elements are sharded over ``fsdp`` (when fsdp > 1).
# 2**18 = 256k elements (1 MiB in float32): in ResNet-50 it catches every 3x3 conv of
# stages 2-4 and the 1x1 convs of stages 3-4 (about 94% of the parameters, see
# tests/test_parallel.py) and leaves the ~160 BatchNorm vectors alone. Tests lower it to
# shard a tiny model.
FSDP_MIN_SIZE = 2**18

# TrainState fields that the fsdp rule may shard (the rest is always replicated).
FSDP_FIELDS = ("params", "ema_params", "opt_state")

_SLURM_VARS = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID",
               "SLURM_LOCALID")
_TPU_VARS = ("TPU_WORKER_HOSTNAMES", "TPU_PROCESS_ADDRESSES", "MEGASCALE_COORDINATOR_ADDRESS")
_EXPLICIT_VARS = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")
MODES = ("auto", "explicit", "slurm", "tpu", "off")


# -- multi-host start-up --------------------------------------------------------------------
def _tpu_chips_present() -> bool:
  """True on a Cloud TPU VM (TPU PCI devices visible). Reads /sys only: no backend start."""
  try:
    from jax._src import hardware_utils  # private, but the same probe jax itself uses
    return hardware_utils.num_available_tpu_chips_and_device_id()[0] > 0
  except Exception:  # noqa: BLE001 - any failure of the probe means "not a TPU VM"
    return False


def detect_launcher(environ: Mapping[str, str] | None = None, tpu_present=None) -> str | None:
  """Which multi-host environment this process runs in, from its environment alone.

  Returns 'slurm' (inside an ``srun`` step with more than one task: jax reads
  SLURM_JOB_ID / SLURM_STEP_NODELIST / SLURM_NTASKS / SLURM_PROCID / SLURM_LOCALID),
  'tpu' (a Cloud TPU VM: TPU chips present or the TPU worker variables set; jax asks
  the TPU metadata server for the rest), 'explicit' (JAX_COORDINATOR_ADDRESS,
  JAX_NUM_PROCESSES and JAX_PROCESS_ID all set, as ``launch/local.sh`` does) or None
  (a single plain process: nothing to initialise). An ``sbatch`` script that runs
  python without ``srun`` has no SLURM_STEP_NODELIST and is treated as one process.
  """
  env = os.environ if environ is None else environ
  if all(v in env for v in _SLURM_VARS) and int(env["SLURM_NTASKS"]) > 1:
    return "slurm"
  if tpu_present is None:
    tpu_present = _tpu_chips_present
  if any(env.get(v) for v in _TPU_VARS) or tpu_present():
    return "tpu"
  if all(env.get(v) for v in _EXPLICIT_VARS):
    return "explicit"
  return None


def explicit_params(cfg, environ: Mapping[str, str] | None = None) -> dict:
  """coordinator_address / num_processes / process_id from ``cfg`` (config.distributed),
  each falling back to JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID."""
  env = os.environ if environ is None else environ
  addr = cfg.coordinator_address or env.get("JAX_COORDINATOR_ADDRESS", "")
  nproc = int(cfg.num_processes) or int(env.get("JAX_NUM_PROCESSES", "0") or 0)
  pid = int(cfg.process_id) if int(cfg.process_id) >= 0 else int(env.get("JAX_PROCESS_ID", "-1") or -1)
  missing = [name for name, bad in (("coordinator_address", not addr), ("num_processes", nproc <= 0),
                                    ("process_id", pid < 0)) if bad]
  if missing:
    raise ValueError(
        "config.distributed.mode='explicit' needs " + ", ".join(f"config.distributed.{m}" for m in missing)
        + " (or the environment variables JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, "
        "JAX_PROCESS_ID), e.g. --config.distributed.coordinator_address=host0:12355 "
        "--config.distributed.num_processes=2 --config.distributed.process_id=0")
  if ":" not in addr:
    raise ValueError(f"config.distributed.coordinator_address={addr!r} needs a port: HOST:PORT")
  if not 0 <= pid < nproc:
    raise ValueError(f"config.distributed.process_id={pid} must be in [0, num_processes={nproc})")
  return {"coordinator_address": addr, "num_processes": nproc, "process_id": pid}


def distributed_plan(cfg, environ: Mapping[str, str] | None = None, tpu_present=None):
  """``(launcher, kwargs for jax.distributed.initialize)``; launcher None = single process.

  ``cfg.mode`` (config.distributed.mode):
    auto      detect (``detect_launcher``): TPU pod, SLURM step, JAX_* variables, or nothing
    explicit  coordinator_address / num_processes / process_id (config keys or JAX_* env)
    slurm     force jax's SLURM detection (one process per task; one GPU per task unless
              JAX_LOCAL_DEVICE_IDS lists more, e.g. one process per node)
    tpu       force TPU detection (``jax.distributed.initialize()`` with no arguments)
    off       never initialise (a single process, whatever the environment says)
  """
  mode = cfg.mode
  if mode not in MODES:
    raise ValueError(f"config.distributed.mode must be one of {', '.join(MODES)}; got {mode!r}")
  if mode == "off":
    return None, {}
  launcher = detect_launcher(environ, tpu_present) if mode == "auto" else mode
  if launcher == "explicit":
    return launcher, explicit_params(cfg, environ)
  if launcher == "slurm":
    return launcher, {"cluster_detection_method": "slurm"}
  if launcher == "tpu":
    return launcher, {}
  return None, {}


def maybe_initialize_distributed(cfg) -> bool:
  """Starts multi-host JAX when ``cfg`` (config.distributed) and the environment ask for
  it (``distributed_plan``). Call it before anything touches a device. Returns whether
  ``jax.distributed.initialize`` was called. On CPU, cross-process collectives use gloo
  (jax 0.10's default, ``jax_cpu_collectives_implementation``)."""
  launcher, kwargs = distributed_plan(cfg)
  if launcher is None:
    return False
  logging.info("jax.distributed.initialize via %s %s", launcher, kwargs)
  jax.distributed.initialize(**kwargs)
  logging.info("process %d of %d: %d local / %d global devices", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())
  return True


# -- mesh and shardings ----------------------------------------------------------------------
def make_mesh(cfg, devices=None) -> Mesh:
  """A (population, data, fsdp) mesh over ``devices`` (default: every device of every
  process) with ``cfg.population`` member groups and ``cfg.fsdp`` (config.mesh) devices per
  parameter shard.

  With all devices, ``jax.make_mesh`` orders them for the physical topology (TPU ICI
  rings, NVLink islands) and the fsdp axis, the innermost, stays inside a host when
  ``fsdp`` divides the local device count.
  """
  fsdp, groups = int(cfg.fsdp), int(cfg.get("population", 1))
  n = len(devices) if devices is not None else jax.device_count()
  if fsdp < 1 or n % fsdp:
    raise ValueError(f"config.mesh.fsdp={fsdp} must be >= 1 and divide the {n} devices; "
                     f"use one of {[d for d in range(1, n + 1) if n % d == 0]}")
  if groups < 1 or n % (groups * fsdp):
    raise ValueError(f"config.mesh.population={groups} times config.mesh.fsdp={fsdp} must "
                     f"divide the {n} devices; use a population axis in "
                     f"{[g for g in range(1, n // fsdp + 1) if (n // fsdp) % g == 0]}")
  if jax.process_count() > 1 and groups > 1:
    raise ValueError("config.mesh.population > 1 is not supported across processes yet "
                     "(each host would feed only its own members); with several hosts keep "
                     "config.mesh.population=1 (members are then vmapped on every device)")
  if jax.process_count() > 1 and fsdp > 1 and jax.local_device_count() % fsdp:
    logging.warning("config.mesh.fsdp=%d spans hosts (%d devices per host): the per-layer "
                    "all-gathers then cross the slower inter-host network", fsdp,
                    jax.local_device_count())
  shape, names = (groups, n // (groups * fsdp), fsdp), (POPULATION, DATA, FSDP)
  types = (AxisType.Auto,) * 3
  if devices is None:
    return jax.make_mesh(shape, names, axis_types=types)
  return Mesh(np.asarray(devices).reshape(shape), names, axis_types=types)


def batch_sharding(mesh: Mesh, members: bool = False) -> NamedSharding:
  """Leading (batch) dimension split over every device of a member group; with
  ``members``, a leading member dimension first, split over the population axis."""
  return NamedSharding(mesh, P(POPULATION, (DATA, FSDP)) if members else P((DATA, FSDP)))


def batch_devices(mesh: Mesh) -> int:
  """Devices one member's batch is split over (a member group: data x fsdp)."""
  return mesh.shape[DATA] * mesh.shape[FSDP]


def leaf_spec(shape, fsdp: int, min_size: int) -> P:
  """The fsdp rule for one leaf: ``P()`` (replicated) unless fsdp > 1 and the leaf has at
  least ``min_size`` elements and a dimension divisible by ``fsdp``; then the largest
  such dimension (the last one on ties, i.e. output channels of a conv kernel) is split."""
  shape = tuple(shape)
  if fsdp <= 1 or not shape or int(np.prod(shape, dtype=np.int64)) < min_size:
    return P()
  candidates = [d for d in range(len(shape)) if shape[d] % fsdp == 0 and shape[d] >= fsdp]
  if not candidates:
    return P()
  dim = max(candidates, key=lambda d: (shape[d], d))
  spec = [None] * len(shape)
  spec[dim] = FSDP
  return P(*spec)


def _top_field(path) -> str | None:
  key = path[0] if path else None
  return getattr(key, "name", None) or getattr(key, "key", None)


def state_shardings(mesh: Mesh, abstract_state, min_fsdp_size: int | None = None,
                    members: bool = False):
  """NamedShardings for the whole TrainState (a pytree of the same structure).

  Leaves under ``FSDP_FIELDS`` (student params, EMA teacher, optimizer state) follow
  ``leaf_spec`` with the mesh's fsdp size; everything else (step, rng, BatchNorm
  statistics, the algorithm's state) is replicated. With ``members`` (a population's
  stacked state) every leaf's leading member dimension is split over the population axis
  and the rule applies to the rest of its shape.
  """
  n = mesh.shape[FSDP]
  min_size = FSDP_MIN_SIZE if min_fsdp_size is None else min_fsdp_size

  def rule(path, leaf):
    shape = tuple(getattr(leaf, "shape", ()))
    lead, shape = ((POPULATION,), shape[1:]) if members else ((), shape)
    spec = leaf_spec(shape, n, min_size) if _top_field(path) in FSDP_FIELDS else P()
    return NamedSharding(mesh, P(*lead, *spec))

  return jax.tree_util.tree_map_with_path(rule, abstract_state)


def sharding_report(abstract_state, shardings) -> dict:
  """Bytes in total and per device (largest shard), and the fraction of bytes sharded,
  for each top-level field: what fsdp saves, for logs and tests."""
  out = {}
  flat = jax.tree_util.tree_flatten_with_path(abstract_state)[0]
  flat_s = jax.tree.leaves(shardings)
  for (path, leaf), sharding in zip(flat, flat_s):
    field = _top_field(path) or "?"
    itemsize = np.dtype(leaf.dtype).itemsize
    total = int(np.prod(leaf.shape, dtype=np.int64)) * itemsize
    local = int(np.prod(sharding.shard_shape(leaf.shape), dtype=np.int64)) * itemsize
    rec = out.setdefault(field, {"bytes": 0, "bytes_per_device": 0, "sharded_bytes": 0})
    rec["bytes"] += total
    rec["bytes_per_device"] += local
    rec["sharded_bytes"] += total if local < total else 0
  return out


def global_batch(local_batch: dict, sharding: NamedSharding) -> dict:
  """Per-host numpy rows -> global jax Arrays. Each process passes its own contiguous
  block of rows (process p: rows [p*B/P, (p+1)*B/P) of the global batch of B rows)."""
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in local_batch.items()}


def host_rows(global_size: int) -> slice:
  """The rows of a global batch that this process feeds to ``global_batch``."""
  if global_size % jax.process_count():
    raise ValueError(f"a global batch of {global_size} rows cannot be split over "
                     f"{jax.process_count()} processes; make it a multiple")
  local = global_size // jax.process_count()
  return slice(jax.process_index() * local, (jax.process_index() + 1) * local)


def check_batch_divisible(global_size: int, mesh: Mesh, what: str) -> None:
  n = batch_devices(mesh)
  if global_size % n:
    raise ValueError(f"{what}={global_size} must be divisible by the number of devices a "
                     f"member's batch is split over ({n}); change the batch size or the mesh")
