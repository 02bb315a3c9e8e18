"""Mesh, sharding rules and multi-host start-up: the one place that knows about devices.

The mesh has a ``data`` axis (batch split over it) and an optional ``fsdp`` axis;
with ``fsdp > 1`` large parameter and optimizer-state leaves are sharded over it
(ZeRO-3 style), everything else is replicated. The mesh is built with
``AxisType.Auto`` axes: jax 0.10's ``jax.make_mesh`` defaults to Explicit axes, which
linen's Dropout does not support.
"""

from __future__ import annotations

import logging
import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA = "data"
FSDP = "fsdp"


def maybe_initialize_distributed(cfg) -> None:
  """Starts multi-host JAX when asked: ``cfg.mode`` in {'auto', 'explicit', 'off'}.

  auto: TPU pods and SLURM are detected by ``jax.distributed.initialize()`` itself
  (TPU metadata, SLURM_* variables); on a single plain machine nothing happens.
  explicit: coordinator_address / num_processes / process_id from the config (or the
  JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID environment).
  """
  mode = cfg.mode
  if mode == "off":
    return
  if mode == "explicit":
    addr = cfg.coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS")
    nproc = cfg.num_processes or int(os.environ.get("JAX_NUM_PROCESSES", "0"))
    pid = cfg.process_id if cfg.process_id >= 0 else int(os.environ.get("JAX_PROCESS_ID", "-1"))
    if not addr or nproc <= 0 or pid < 0:
      raise ValueError("config.distributed.mode='explicit' needs coordinator_address, "
                       "num_processes and process_id (config keys or JAX_COORDINATOR_ADDRESS, "
                       "JAX_NUM_PROCESSES, JAX_PROCESS_ID)")
    jax.distributed.initialize(coordinator_address=addr, num_processes=nproc, process_id=pid)
  elif mode == "auto":
    if _looks_multihost():
      jax.distributed.initialize()
  else:
    raise ValueError(f"config.distributed.mode must be auto, explicit or off, got {mode!r}")
  logging.info("process %d of %d, %d local / %d global devices", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())


def _looks_multihost() -> bool:
  if int(os.environ.get("SLURM_NTASKS", "1")) > 1:
    return True
  if os.environ.get("TPU_WORKER_HOSTNAMES", "").count(",") > 0:
    return True
  return bool(os.environ.get("JAX_COORDINATOR_ADDRESS"))


def make_mesh(cfg, devices=None) -> Mesh:
  """``cfg.fsdp`` devices per parameter shard (1 = pure data parallel)."""
  devices = np.asarray(devices if devices is not None else jax.devices())
  fsdp = cfg.fsdp
  if devices.size % fsdp:
    raise ValueError(f"config.mesh.fsdp={fsdp} does not divide the {devices.size} devices")
  return Mesh(devices.reshape(devices.size // fsdp, fsdp), (DATA, FSDP))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P((DATA, FSDP)))


def state_shardings(mesh: Mesh, abstract_state, min_fsdp_size: int = 2**18):
  """Replicated, except leaves of >= min_fsdp_size elements whose largest divisible
  dimension is sharded over ``fsdp`` when the mesh has one."""
  n = mesh.shape[FSDP]

  def rule(leaf):
    shape = getattr(leaf, "shape", ())
    if n > 1 and np.prod(shape, dtype=np.int64) >= min_fsdp_size:
      for dim in np.argsort(shape)[::-1]:
        if shape[dim] % n == 0:
          spec = [None] * len(shape)
          spec[dim] = FSDP
          return NamedSharding(mesh, P(*spec))
    return NamedSharding(mesh, P())

  return jax.tree.map(rule, abstract_state)


def global_batch(local_batch: dict, sharding: NamedSharding) -> dict:
  """Per-host numpy shards -> global jax Arrays (each host passes its own rows)."""
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in local_batch.items()}


def check_batch_divisible(global_size: int, mesh: Mesh, what: str) -> None:
  if global_size % mesh.devices.size:
    raise ValueError(f"{what}={global_size} must be divisible by the number of devices "
                     f"({mesh.devices.size}); change the batch size or the mesh")
