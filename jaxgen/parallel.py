"""Device mesh, shardings and multi-host plumbing (``jax.sharding`` + ``jax.jit``; no ``pmap``).

Data parallelism, as every jitted computation of jaxgen uses it:

* one :class:`~jax.sharding.Mesh` over every device of every host with a ``data`` axis and a
  ``model`` axis (size 1 for now, room for model parallelism later), see :func:`make_mesh`;
* the train state is replicated (:func:`replicated`), batches are split on their leading axis over
  ``data`` (:func:`batch_sharded`); ``jax.jit(f, in_shardings=..., out_shardings=...)`` then
  inserts the gradient all-reduce itself (``training.data_parallel='gspmd'``). With
  ``'shard_map'`` (what ``'auto'`` picks on two or more GPUs) the train step runs per device in
  :func:`shard_map` with one explicit all-reduce of the flat float32 gradient instead, each
  device drawing its rows of the global batch's randomness (:func:`global_batch_draw`); see
  ``jaxgen.train.make_sharded_train_step``;
* each host reads its own slice of the global batch and :func:`host_local_to_global` assembles the
  global array. The mesh orders devices host by host, so host ``i`` of ``n`` feeds rows
  ``[i b, (i + 1) b)`` of a global batch of ``n b`` rows (:func:`host_batch_rows`);
* :func:`to_host` brings (sharded, multi-host) results back to numpy, identical on every host;
* :func:`initialize_distributed` starts ``jax.distributed`` on TPU pods, SLURM clusters and with
  explicit coordinator flags (local multi-process runs, any other cluster).
"""
from __future__ import annotations

import collections
import glob
import importlib.util
import os
import re
from typing import Any, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxgen._checks import check_int

DATA_AXIS = "data"
MODEL_AXIS = "model"


# --------------------------------------------------------------------------------------------------
# XLA flags
# --------------------------------------------------------------------------------------------------
# jaxlib >= 0.10 autotunes every loop and reduction fusion between XLA's native emitters and
# Triton by compiling both. For the DDPM++ train step on an H100 that costs ~15 s of a ~70 s
# cold compile, and the chosen kernels run no faster (experiments/bench/NOTES.md, run 10).
DEFAULT_XLA_FLAGS = ("--xla_gpu_experimental_enable_fusion_autotuner=false",)


def default_xla_flags(env: Optional[Mapping[str, str]] = None) -> str:
  """``XLA_FLAGS`` with jaxgen's defaults (:data:`DEFAULT_XLA_FLAGS`) added.

  A flag the user already set (with any value) is left alone, and so is every jaxlib older than
  0.10, which may not know them (an unknown flag aborts the process).
  """
  env = os.environ if env is None else env
  flags = env.get("XLA_FLAGS", "")
  try:
    import jaxlib  # pylint: disable=import-outside-toplevel
    version = tuple(int(v) for v in re.findall(r"\d+", jaxlib.__version__)[:2])
  except Exception:  # pylint: disable=broad-except
    version = (0, 0)
  if version < (0, 10):
    return flags
  for flag in DEFAULT_XLA_FLAGS:
    if flag.split("=")[0] not in flags:
      flags = f"{flags} {flag}".strip()
  return flags


def configure_xla_flags() -> None:
  """Puts :func:`default_xla_flags` into ``os.environ`` (before JAX starts its backend)."""
  os.environ["XLA_FLAGS"] = default_xla_flags()


# Per-executable XLA options of ``training.deterministic``: only deterministic kernels (no
# convolution algorithms that split their reduction with atomics). On an H100 the DDPM++ train step
# then compiles cold in 37-43 s instead of 59-78 s (bf16; fewer candidates to autotune) and runs
# 3.6-3.7 % (bf16) / 7.7 % (fp32) slower (experiments/bench/NOTES.md, run 14). The CPU accepts
# and ignores it; TPU executables are deterministic already and get no options.
DETERMINISTIC_COMPILER_OPTIONS = {"xla_gpu_exclude_nondeterministic_ops": True}

# XLA's autotuning results (the convolution algorithm and GEMM tiling it measured fastest for each
# instruction), shipped with jaxgen: one file per GPU kind and jaxlib version, written by
# ``--xla_gpu_dump_autotune_results_to`` (how: autotune_results/README.md). XLA reads the file once
# per process, at the first compile that asks for it; a machine that never compiled the program
# then skips most of the autotuning. On an H200 the DDPM++ train step compiled cold in 37.6-43.3 s
# instead of 63.5-74.3 s (bf16) and 35.6-42.8 s instead of 51.2-53.1 s (fp32), with the same step
# time and loss (experiments/bench/NOTES.md, run 21). XLA keys each entry by fingerprints of the
# device and the instruction and by the cuDNN/Triton versions: an entry that does not match is a
# miss, and that instruction is autotuned as usual.
AUTOTUNE_RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "autotune_results")
_LOAD_FLAG = "xla_gpu_load_autotune_results_from"


def _slug(text: str) -> str:
  return re.sub(r"[^a-z0-9.]+", "_", text.lower()).strip("_")


def autotune_results_path(device_kind: str, jaxlib_version: str) -> str:
  """Where jaxgen keeps the autotune results of ``device_kind`` (e.g. ``"NVIDIA H200"``) under
  jaxlib ``jaxlib_version``: ``autotune_results/<kind>__jaxlib-<version>.pbtxt`` in the package."""
  return os.path.join(AUTOTUNE_RESULTS_DIR,
                      f"{_slug(device_kind)}__jaxlib-{_slug(jaxlib_version)}.pbtxt")


def shipped_autotune_results(device_kind: Optional[str] = None,
                             jaxlib_version: Optional[str] = None) -> Optional[str]:
  """Path of the autotune results shipped for this GPU kind and jaxlib version (``None``: none).

  Defaults: the first device's ``device_kind`` and the installed jaxlib
  (:func:`autotune_results_path`).
  """
  if device_kind is None:
    device_kind = jax.devices()[0].device_kind
  if jaxlib_version is None:
    import jaxlib  # pylint: disable=import-outside-toplevel
    jaxlib_version = jaxlib.__version__
  path = autotune_results_path(device_kind, jaxlib_version)
  return path if os.path.isfile(path) else None


def autotune_options(results: Optional[str] = "shipped", backend: Optional[str] = None,
                     env: Optional[Mapping[str, str]] = None, device_kind: Optional[str] = None,
                     jaxlib_version: Optional[str] = None) -> Optional[dict]:
  """XLA options that load autotune ``results`` into the first compile of the process.

  ``results``: ``"shipped"`` (the file for this GPU and jaxlib, :func:`shipped_autotune_results`,
  if jaxgen has one), a path of one's own (written by ``--xla_gpu_dump_autotune_results_to``), or
  ``""``/``None`` (nothing). Only GPU executables get the option; a load that the user already
  asked for in ``XLA_FLAGS`` wins over ``"shipped"``. ``device_kind`` and ``jaxlib_version``
  default to this machine's (see :func:`shipped_autotune_results`).
  """
  if not results:
    return None
  if not isinstance(results, str):
    raise ValueError(f"autotune results must be 'shipped', '' or a file path, got {results!r}")
  if results != "shipped" and not os.path.isfile(results):
    raise ValueError(f"autotune results file {results!r} does not exist")
  if (backend or jax.default_backend()) not in ("gpu", "cuda", "rocm"):
    return None
  if results == "shipped":
    if _LOAD_FLAG in (os.environ if env is None else env).get("XLA_FLAGS", ""):
      return None
    results = shipped_autotune_results(device_kind, jaxlib_version)
    if results is None:
      return None
  return {_LOAD_FLAG: os.path.abspath(results)}


def compiler_options(deterministic: bool = False, backend: Optional[str] = None,
                     autotune_results: Optional[str] = None) -> Optional[dict]:
  """XLA compiler options for ``jax.jit(..., compiler_options=...)`` (``None``: XLA's defaults).

  ``deterministic=True``: every kernel deterministic, so that a step repeated from the same state
  and batch on the same devices gives bitwise the same result. ``backend`` defaults to
  ``jax.default_backend()``; on ``tpu`` there is nothing to ask for. ``autotune_results``: see
  :func:`autotune_options` (default: none); a deterministic step ignores ``"shipped"``, whose
  algorithms were picked among all kernels.
  """
  if not isinstance(deterministic, bool):
    raise ValueError(f"deterministic must be True or False, got {deterministic!r}")
  backend = backend or jax.default_backend()
  options = {}
  if deterministic and backend != "tpu":
    options.update(DETERMINISTIC_COMPILER_OPTIONS)
  if not (deterministic and autotune_results == "shipped"):
    options.update(autotune_options(autotune_results, backend) or {})
  return options or None


def jit(fn, compiler_options: Optional[dict] = None, **kwargs):  # pylint: disable=redefined-outer-name
  """``jax.jit(fn, **kwargs)``, with ``compiler_options`` passed only when given."""
  if compiler_options:
    kwargs["compiler_options"] = compiler_options
  return jax.jit(fn, **kwargs)


# --------------------------------------------------------------------------------------------------
# mesh and shardings
# --------------------------------------------------------------------------------------------------
def make_mesh(devices: Optional[Sequence[jax.Device]] = None, model_parallel: int = 1) -> Mesh:
  """A ``(data, model)`` mesh over ``devices`` (default: all devices of all hosts).

  Devices are ordered host by host (``process_index``, then ``id``), so the rows of a batch
  sharded on ``data`` that live on one host are contiguous: host ``i`` holds rows
  ``[i b, (i + 1) b)`` of a global batch of ``n b`` rows.

  Args:
    devices: the devices to use (default ``jax.devices()``).
    model_parallel: size of the ``model`` axis; must divide the number of devices.
  Returns:
    a mesh of shape ``(len(devices) // model_parallel, model_parallel)``.
  """
  devices = list(jax.devices() if devices is None else devices)
  if not devices:
    raise ValueError("make_mesh needs at least one device, got an empty list")
  check_int(model_parallel, "model_parallel")
  if len(devices) % model_parallel:
    raise ValueError(f"model_parallel={model_parallel!r} must divide the {len(devices)} devices")
  devices = sorted(devices, key=lambda d: (d.process_index, d.id))
  per_host = collections.Counter(d.process_index for d in devices)
  if len(per_host) > 1 and any(n % model_parallel for n in per_host.values()):
    # a model group across hosts would hold different "replicated" rows on each host
    raise ValueError(f"model_parallel={model_parallel} must divide each host's device count "
                     f"({sorted(set(per_host.values()))}): a model group cannot span hosts")
  grid = np.asarray(devices, dtype=object).reshape(len(devices) // model_parallel, model_parallel)
  return Mesh(grid, (DATA_AXIS, MODEL_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  """Sharding of an array copied on every device (parameters, optimizer state, keys)."""
  return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  """Sharding of an array split over the ``data`` axis on its leading (batch) axis."""
  return NamedSharding(mesh, P(DATA_AXIS))


def _to_varying_fn():
  """jax's cast of a replicated value to a per-device one inside ``shard_map`` (None if absent)."""
  if hasattr(jax.lax, "pcast"):
    return lambda tree, axis: jax.lax.pcast(tree, axis, to="varying")
  if hasattr(jax.lax, "pvary"):
    return jax.lax.pvary
  return None


def shard_map(fn, mesh: Mesh, in_specs, out_specs):
  """``jax.shard_map`` (``jax.experimental.shard_map`` on older jax).

  ``fn`` sees one device's block of every argument; collectives (``jax.lax.psum`` over
  ``DATA_AXIS``) are explicit. Where jax tracks which values vary over devices, outputs with
  spec ``P()`` are checked to be the same on every device; use :func:`to_varying` on replicated
  parameters before differentiating per device (see there).
  """
  if hasattr(jax, "shard_map"):
    return jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs,
                         check_vma=_to_varying_fn() is not None)
  from jax.experimental.shard_map import shard_map as _shard_map  # pylint: disable=import-outside-toplevel
  return _shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_rep=False)


def to_varying(tree: Any, axis: str = DATA_AXIS) -> Any:
  """Inside :func:`shard_map`: ``tree`` (replicated over ``axis``) as per-device values.

  The gradient of a per-device loss with respect to replicated parameters is summed over the
  devices by jax itself, one all-reduce per parameter; with respect to their per-device copies
  it stays per device, to be reduced by the caller (e.g. one ``pmean`` of the flat gradient).
  A no-op where jax does not track replication (there gradients stay per device anyway).
  """
  cast = _to_varying_fn()
  return tree if cast is None else cast(tree, axis)


def batch_rows(rows: int, axis: str = DATA_AXIS):
  """``(offset, total)``: where a device's ``rows`` batch rows sit in the global batch.

  Inside :func:`shard_map` over ``axis`` with the batch split on its leading axis, device ``i``
  of ``n`` holds rows ``[i rows, (i + 1) rows)`` of ``n rows``: ``(i rows, n rows)``, ``offset``
  a traced int32 scalar. Anywhere else (a ``jit`` of the global batch, or no mapping at all) the
  rows are the whole batch: ``(0, rows)``.
  """
  try:
    index = jax.lax.axis_index(axis)
  except NameError:  # ``axis`` is not bound: not inside a shard_map over it
    return 0, rows
  size = jax.lax.axis_size(axis) if hasattr(jax.lax, "axis_size") else jax.lax.psum(1, axis)
  return index * rows, int(size) * rows


def global_batch_draw(draw, key, shape: Sequence[int]):
  """``draw(key, shape)`` as the rows of the global batch's draw that this device holds.

  ``draw(key, shape) -> array`` of leading axis ``shape[0]`` (e.g. ``jax.random.normal``).
  Outside a :func:`shard_map` over :data:`DATA_AXIS` this is ``draw(key, shape)``. Inside one,
  each device draws for the whole global batch (``shape[0]`` times the number of devices) and
  keeps its own rows (:func:`batch_rows`), so that a per-device train step draws exactly the
  noise a ``jit`` of the global batch draws, whatever the number of devices. On GPUs XLA fuses
  the counter-based threefry draw into the slice and computes only the device's rows: the cost
  and memory do not grow with the device count (``experiments/bench/draws.py``, run 26: 0.02 ms
  per 128 image-shaped rows for 1 to 256 simulated devices, no temporary). XLA's CPU backend
  does compute the whole draw. Dropout masks use :func:`batch_rows` directly.
  """
  shape = tuple(int(d) for d in shape)
  if not shape:
    return draw(key, shape)
  offset, total = batch_rows(shape[0])
  if total == shape[0]:
    return draw(key, shape)
  full = draw(key, (total,) + shape[1:])
  return jax.lax.dynamic_slice_in_dim(full, offset, shape[0], axis=0)


def data_parallel_size(mesh: Mesh) -> int:
  """Number of batch shards (size of the ``data`` axis)."""
  return mesh.shape[DATA_AXIS]


def _mesh_processes(mesh: Mesh) -> int:
  return len({d.process_index for d in mesh.devices.flat})


def _local_data_shards(mesh: Mesh) -> int:
  """Number of ``data`` positions whose devices belong to this host."""
  me = jax.process_index()
  rows = mesh.devices  # (data, model)
  return int(sum(any(d.process_index == me for d in row) for row in rows))


def check_global_batch(global_batch: int, mesh: Mesh, name: str = "batch_size") -> int:
  """Validate that a global batch splits evenly over the mesh's devices and hosts.

  Args:
    global_batch: rows summed over all devices of all hosts.
    mesh: the mesh the batch is sharded over.
    name: the config field, for the error message.
  Returns:
    the host-local batch size ``global_batch // number of hosts``.
  Raises:
    ValueError naming the field, its value and the device / host count otherwise.
  """
  devices = data_parallel_size(mesh)
  hosts = _mesh_processes(mesh)
  global_batch = check_int(global_batch, name)
  if global_batch % devices:
    raise ValueError(f"{name}={global_batch} is not divisible by the number of devices "
                     f"({devices}); use a multiple of {devices}")
  if global_batch % hosts:
    raise ValueError(f"{name}={global_batch} is not divisible by the number of hosts ({hosts})")
  return int(global_batch) // hosts


def host_batch_rows(global_batch: int, mesh: Mesh, process_index: Optional[int] = None) -> slice:
  """Rows of a global batch (sharded by :func:`batch_sharded`) that ``process_index`` feeds.

  With the host-major mesh of :func:`make_mesh` these are contiguous: ``slice(i b, (i + 1) b)``
  where ``b = global_batch // number of hosts``.
  """
  local = check_global_batch(global_batch, mesh)
  i = jax.process_index() if process_index is None else process_index
  return slice(i * local, (i + 1) * local)


def host_local_to_global(tree: Any, mesh: Mesh) -> Any:
  """Assemble host-local batches into global arrays sharded on ``data``.

  Args:
    tree: pytree of host-local arrays ``(local_batch, ...)``, the same ``local_batch`` on every
      host; it must split evenly over this host's devices.
    mesh: the mesh (see :func:`make_mesh`).
  Returns:
    pytree of global ``jax.Array`` s ``(num_hosts * local_batch, ...)`` sharded by
    :func:`batch_sharded`; host ``i``'s rows are ``[i local_batch, (i + 1) local_batch)``.
  Raises:
    ValueError if a leaf has no batch axis or its batch does not split over the local devices.

  On one host this is a sharded ``device_put``; on many, each host contributes its rows through
  ``jax.make_array_from_process_local_data``.
  """
  sharding = batch_sharded(mesh)
  local_shards = _local_data_shards(mesh)
  multi_host = _mesh_processes(mesh) > 1

  def one(path, x):
    x = np.asarray(x)
    if x.ndim == 0:
      raise ValueError(f"batch leaf {jax.tree_util.keystr(path)} is a scalar; every leaf needs a "
                       f"leading batch axis")
    if x.shape[0] % local_shards:
      raise ValueError(
          f"batch leaf {jax.tree_util.keystr(path)} has {x.shape[0]} rows on this host, not "
          f"divisible by its {local_shards} devices (a global batch of {x.shape[0]} rows per "
          f"host x {_mesh_processes(mesh)} host(s) over {data_parallel_size(mesh)} devices)")
    if not multi_host:
      return jax.device_put(x, sharding)
    return jax.make_array_from_process_local_data(sharding, x)

  return jax.tree_util.tree_map_with_path(one, tree)


def replicate(tree: Any, mesh: Mesh) -> Any:
  """Place a pytree replicated on every device of the mesh.

  On several hosts every host must pass the same values (e.g. from the same seed).
  """
  sharding = replicated(mesh)
  if _mesh_processes(mesh) == 1:
    return jax.device_put(tree, sharding)

  def one(x):
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

  return jax.tree_util.tree_map(one, tree)


def to_host(tree: Any) -> Any:
  """Fetch (possibly sharded, multi-host) arrays to numpy, the same full value on every host.

  Fully replicated or fully addressable arrays are read locally; arrays sharded across hosts are
  gathered (``process_allgather``; every host must call this together).
  """

  def one(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable and not x.is_fully_replicated:
      return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)

  return jax.tree_util.tree_map(one, tree)


def global_mean(x: jax.Array) -> float:
  """Mean of a (sharded) array as a host float, identical on every host."""
  return float(jax.jit(jnp.mean)(x))


def describe(mesh: Optional[Mesh] = None) -> str:
  """One line for logs: processes, devices, mesh shape."""
  text = (f"process {jax.process_index()}/{jax.process_count()}, "
          f"{jax.local_device_count()} local / {jax.device_count()} global "
          f"{jax.devices()[0].platform} device(s)")
  if mesh is not None:
    text += f", mesh {dict(mesh.shape)}"
  return text


# --------------------------------------------------------------------------------------------------
# jax.distributed start-up
# --------------------------------------------------------------------------------------------------
def _on_tpu_vm() -> bool:
  """True on a Cloud TPU VM (libtpu installed and TPU chips present), checked without starting
  the JAX backend."""
  if any(k in os.environ for k in ("TPU_WORKER_HOSTNAMES", "TPU_PROCESS_ADDRESSES",
                                   "MEGASCALE_COORDINATOR_ADDRESS")):
    return True
  if importlib.util.find_spec("libtpu") is None:
    return False
  return bool(glob.glob("/dev/accel[0-9]*") or glob.glob("/dev/vfio/[0-9]*"))


def _tasks_per_node(env: Mapping[str, str]) -> int:
  """Tasks of this SLURM step on this node (``SLURM_STEP_TASKS_PER_NODE='8(x2)'`` -> 8)."""
  for key in ("SLURM_STEP_TASKS_PER_NODE", "SLURM_TASKS_PER_NODE", "SLURM_NTASKS_PER_NODE"):
    match = re.match(r"\s*(\d+)", env.get(key, ""))
    if match:
      return int(match.group(1))
  nodes = int(env.get("SLURM_STEP_NUM_NODES", env.get("SLURM_JOB_NUM_NODES", "1")) or 1)
  return max(1, int(env.get("SLURM_NTASKS", "1")) // max(nodes, 1))


def _gpus_per_task(env: Mapping[str, str]) -> Optional[int]:
  """GPUs per task of a ``--gpus-per-task=[type:]k`` launch (``SLURM_GPUS_PER_TASK``, or
  ``gres/gpu[:type]=k`` in ``SLURM_TRES_PER_TASK``), else None."""
  match = re.fullmatch(r"\s*(?:[\w.-]+:)?(\d+)\s*", env.get("SLURM_GPUS_PER_TASK", ""))
  if match is None:
    match = re.search(r"gpu(?::[\w.-]+)?[=:](\d+)", env.get("SLURM_TRES_PER_TASK", ""))
  return int(match.group(1)) if match else None


def slurm_local_device_ids(env: Optional[Mapping[str, str]] = None) -> Optional[list]:
  """The local GPU ids this SLURM task should use, or ``None`` to keep JAX's default.

  JAX's SLURM detection gives each task the single GPU ``[SLURM_LOCALID]``; that is right for one
  task per GPU with all GPUs visible, and wrong for one task per node (it would use one GPU) or
  for tasks bound to their own GPUs (``--gpus-per-task``: each sees its GPUs as 0..k-1).

  Rules, with ``v`` GPUs visible to the task (``CUDA_VISIBLE_DEVICES``, else
  ``SLURM_GPUS_ON_NODE``) and ``t`` tasks on the node:
  ``JAXGEN_LOCAL_DEVICE_IDS`` (comma list) wins; ``t == 1``, ``v < t``, or ``v`` equal to the
  task's own GPU count (``SLURM_GPUS_PER_TASK`` / ``SLURM_TRES_PER_TASK``; bound GPUs): all
  ``range(v)``; ``v == t``: ``None`` (JAX's ``[SLURM_LOCALID]``); ``v`` a multiple of ``t``:
  the task's block of ``v // t`` GPUs.
  """
  env = os.environ if env is None else env
  explicit = env.get("JAXGEN_LOCAL_DEVICE_IDS", "").strip()
  if explicit:
    return [int(i) for i in explicit.split(",") if i.strip()]
  visible = env.get("CUDA_VISIBLE_DEVICES", "").strip()
  if visible:
    num_visible = len([v for v in visible.split(",") if v.strip()])
  elif env.get("SLURM_GPUS_ON_NODE", "").strip().isdigit():
    num_visible = int(env["SLURM_GPUS_ON_NODE"])
  else:
    return None
  tasks = _tasks_per_node(env)
  if num_visible == 0:
    return None
  if tasks == 1 or num_visible < tasks or (visible and num_visible == _gpus_per_task(env)):
    return list(range(num_visible))
  if num_visible == tasks:
    return None
  if num_visible % tasks == 0:
    per_task = num_visible // tasks
    local_id = int(env.get("SLURM_LOCALID", "0"))
    return list(range(local_id * per_task, (local_id + 1) * per_task))
  return None


def _use_gloo_for_cpu_collectives() -> None:
  """CPU devices of different processes talk through gloo (needed for multi-process CPU runs;
  no effect on GPU/TPU). The option's name has changed across JAX versions."""
  for name, value in (("jax_cpu_collectives_implementation", "gloo"),
                      ("jax_cpu_enable_gloo_collectives", True)):
    try:
      jax.config.update(name, value)
      return
    except (AttributeError, KeyError, ValueError):
      continue


def initialize_distributed(coordinator_address: Optional[str] = None,
                           num_processes: Optional[int] = None,
                           process_id: Optional[int] = None,
                           local_device_ids: Optional[Sequence[int]] = None,
                           initialization_timeout: int = 300) -> bool:
  """Start ``jax.distributed`` when running on several hosts; call before any other JAX use.

  * Explicit: ``coordinator_address`` (``host:port`` of process 0), ``num_processes`` and
    ``process_id`` — or the environment variables ``JAXGEN_COORDINATOR``,
    ``JAXGEN_NUM_PROCESSES``, ``JAXGEN_PROCESS_ID``. Used by ``launch/local_multiprocess.sh``.
  * Cloud TPU VMs (pod slices, multislice): no arguments; JAX reads the TPU metadata.
  * An ``srun`` step of more than one task: no arguments; JAX reads ``SLURM_*`` and the GPUs each
    task uses follow :func:`slurm_local_device_ids` (one task per node or per GPU both work).
  * ``JAXGEN_DISTRIBUTED=1`` forces JAX's auto-detection elsewhere, ``=0`` turns start-up off.

  CPU collectives across processes use gloo. Does nothing on a single host with no such setting,
  or when ``jax.distributed`` is already running.

  Returns:
    whether ``jax.distributed`` was started by this call.
  """
  mode = os.environ.get("JAXGEN_DISTRIBUTED", "").strip().lower()
  if mode in ("0", "false", "off", "no"):
    return False
  if jax.distributed.is_initialized():
    return False
  coordinator_address = coordinator_address or os.environ.get("JAXGEN_COORDINATOR") or None
  if num_processes is None and os.environ.get("JAXGEN_NUM_PROCESSES"):
    num_processes = int(os.environ["JAXGEN_NUM_PROCESSES"])
  if process_id is None and os.environ.get("JAXGEN_PROCESS_ID"):
    process_id = int(os.environ["JAXGEN_PROCESS_ID"])
  # SLURM: only inside an `srun` step of several tasks (a lone python in an allocation of many
  # tasks would otherwise wait for peers that never come).
  slurm_tasks = os.environ.get("SLURM_STEP_NUM_TASKS", os.environ.get("SLURM_NTASKS", "1"))
  on_slurm = ("SLURM_JOB_ID" in os.environ and "SLURM_STEP_NODELIST" in os.environ
              and int(slurm_tasks or 1) > 1)
  forced = mode in ("1", "true", "on", "yes", "auto")

  if coordinator_address:
    if num_processes is None or process_id is None:
      raise ValueError(f"coordinator_address={coordinator_address!r} also needs num_processes "
                       f"({num_processes!r}) and process_id ({process_id!r})")
    if not 0 <= process_id < num_processes:
      raise ValueError(f"process_id={process_id} is not in [0, num_processes={num_processes})")
  elif not (on_slurm or forced or _on_tpu_vm()):
    if (num_processes is not None and num_processes > 1) or process_id is not None:
      raise ValueError(f"num_processes={num_processes!r} / process_id={process_id!r} were given "
                       f"(arguments or JAXGEN_NUM_PROCESSES / JAXGEN_PROCESS_ID) but no "
                       f"coordinator address (coordinator_address or JAXGEN_COORDINATOR): the "
                       f"processes would each train alone into one workdir")
    return False
  if on_slurm and local_device_ids is None:
    local_device_ids = slurm_local_device_ids()
  _use_gloo_for_cpu_collectives()
  jax.distributed.initialize(coordinator_address=coordinator_address,
                             num_processes=num_processes, process_id=process_id,
                             local_device_ids=local_device_ids,
                             initialization_timeout=initialization_timeout)
  return True
