"""Device mesh, shardings and multi-host plumbing (``jax.sharding``; no ``pmap``).

The mesh has a ``data`` axis over every device of every host, and a ``model`` axis of size 1 kept
for later model parallelism. Train state is replicated; batches are sharded on their leading axis.
Each host feeds its own slice of the global batch (``host_local_to_global``).
"""
from __future__ import annotations

import os
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"
MODEL_AXIS = "model"


def make_mesh(devices: Optional[Sequence[jax.Device]] = None, model_parallel: int = 1) -> Mesh:
  """A ``(data, model)`` mesh over ``devices`` (default: all devices of all hosts)."""
  devices = list(jax.devices() if devices is None else devices)
  if len(devices) % model_parallel:
    raise ValueError(f"model_parallel={model_parallel} does not divide the {len(devices)} devices")
  grid = np.asarray(devices).reshape(len(devices) // model_parallel, model_parallel)
  return Mesh(grid, (DATA_AXIS, MODEL_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  """Sharding of an array copied on every device (parameters, optimizer state)."""
  return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  """Sharding of an array split over the ``data`` axis on its leading (batch) axis."""
  return NamedSharding(mesh, P(DATA_AXIS))


def data_parallel_size(mesh: Mesh) -> int:
  return mesh.shape[DATA_AXIS]


def check_global_batch(global_batch: int, mesh: Mesh, name: str = "batch_size") -> int:
  """Validate that the global batch splits evenly over devices and hosts; returns the host-local
  batch size. Raises ``ValueError`` naming both numbers otherwise."""
  devices = data_parallel_size(mesh)
  hosts = jax.process_count()
  if global_batch <= 0 or global_batch % devices:
    raise ValueError(f"{name}={global_batch} must be a positive multiple of the number of "
                     f"devices ({devices})")
  if global_batch % hosts:
    raise ValueError(f"{name}={global_batch} must be divisible by the number of hosts ({hosts})")
  return global_batch // hosts


def host_local_to_global(tree: Any, mesh: Mesh) -> Any:
  """Assemble host-local batches ``(local_batch, ...)`` into global arrays sharded on ``data``.

  On one host this is a sharded ``device_put``; on many hosts each contributes its slice
  (``jax.make_array_from_process_local_data``).
  """
  sharding = batch_sharded(mesh)

  def one(x):
    x = np.asarray(x)
    if jax.process_count() == 1:
      return jax.device_put(x, sharding)
    return jax.make_array_from_process_local_data(sharding, x)

  return jax.tree_util.tree_map(one, tree)


def replicate(tree: Any, mesh: Mesh) -> Any:
  """Place a pytree replicated on every device of the mesh."""
  return jax.device_put(tree, replicated(mesh))


def to_host(tree: Any) -> Any:
  """Fetch (possibly multi-host, sharded) arrays to numpy on every host.

  Fully replicated arrays are read locally; sharded ones are gathered across hosts.
  """

  def one(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable and not x.is_fully_replicated:
      return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)

  return jax.tree_util.tree_map(one, tree)


def initialize_distributed(coordinator_address: Optional[str] = None,
                           num_processes: Optional[int] = None,
                           process_id: Optional[int] = None,
                           local_device_ids: Optional[Sequence[int]] = None) -> None:
  """Start ``jax.distributed`` when running on several hosts.

  * TPU pods and SLURM clusters: no arguments (JAX reads the environment: TPU metadata,
    ``SLURM_*`` variables).
  * Anywhere else: explicit coordinator flags, or the environment variables
    ``JAXGEN_COORDINATOR``, ``JAXGEN_NUM_PROCESSES``, ``JAXGEN_PROCESS_ID``.
  Does nothing on a single host with no such setting.
  """
  coordinator_address = coordinator_address or os.environ.get("JAXGEN_COORDINATOR")
  if num_processes is None and "JAXGEN_NUM_PROCESSES" in os.environ:
    num_processes = int(os.environ["JAXGEN_NUM_PROCESSES"])
  if process_id is None and "JAXGEN_PROCESS_ID" in os.environ:
    process_id = int(os.environ["JAXGEN_PROCESS_ID"])
  on_slurm = "SLURM_JOB_ID" in os.environ and int(os.environ.get("SLURM_NTASKS", "1")) > 1
  on_tpu_pod = "TPU_WORKER_HOSTNAMES" in os.environ or "MEGASCALE_COORDINATOR_ADDRESS" in os.environ
  if coordinator_address:
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id,
                               local_device_ids=local_device_ids)
  elif on_slurm or on_tpu_pod:
    jax.distributed.initialize()


def global_mean(x: jax.Array) -> float:
  """Mean of a (sharded) array as a host float, identical on every host."""
  return float(jnp.mean(x))
