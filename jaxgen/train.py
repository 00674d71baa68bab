"""One training loop for every experiment: train state, jitted sharded step, orbax checkpoints.

Layout of a workdir::

    workdir/config.json        the config of the run (a resumed run must be compatible)
    workdir/checkpoints/<step> orbax checkpoints (train state + metadata incl. the data position)
    workdir/metrics.jsonl      one JSON object per logged step / evaluation
    workdir/tensorboard/       TensorBoard event files
    workdir/samples/           PNG grids / plots written at evaluation

Resuming is automatic: the newest checkpoint in the workdir is restored and the run continues
bit-identically (batches and random keys are pure functions of (seed, step)).
"""
from __future__ import annotations

import contextlib
import json
import logging as py_logging
import math
import os
import signal
import time
from typing import Any, Callable, Dict, Optional, Tuple

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from etils import epath
from jax.sharding import PartitionSpec as P

from jaxgen._checks import check_int, is_int
from jaxgen import augment as augment_lib
from jaxgen import data as data_lib
from jaxgen import losses, models, parallel, processes
from jaxgen.models import layers

Array = jax.Array


def ema_decay(step, ema_rate: float, rampup_ratio: float = 0.0):
  """The EMA decay of the update after ``step`` finished steps (int or int array; the first step
  is 0): ``new_ema = decay * ema + (1 - decay) * params``.

  ``rampup_ratio = 0``: ``ema_rate`` itself (a Python float; the train step's program does not
  change). ``rampup_ratio > 0``: EDM's EMA warm-up (Karras et al. 2022, ``ema_rampup_ratio``):
  the half-life, counted in steps, is ``min(h, rampup_ratio * step)`` with ``h = ln 0.5 / ln
  ema_rate`` the half-life of ``ema_rate``, and the decay ``0.5 ** (1 / half-life)``: 0 at
  step 0 (the EMA starts as the parameters), ``ema_rate`` from step ``h / rampup_ratio`` on.
  Returns a float32 scalar array then.
  """
  ema_rate, rampup_ratio = float(ema_rate), float(rampup_ratio)
  if not 0.0 <= ema_rate < 1.0:
    raise ValueError(f"ema_rate must be in [0, 1), got {ema_rate!r}")
  if not rampup_ratio >= 0.0 or math.isinf(rampup_ratio):
    raise ValueError(f"rampup_ratio must be a finite number >= 0, got {rampup_ratio!r}")
  if rampup_ratio == 0.0 or ema_rate == 0.0:
    return ema_rate
  half_life = math.log(0.5) / math.log(ema_rate)
  ramp = rampup_ratio * jnp.asarray(step, jnp.float32)
  return jnp.exp(math.log(0.5) / jnp.maximum(jnp.minimum(half_life, ramp), 1e-8))


def _global_norm(tree) -> Array:
  leaves = jax.tree_util.tree_leaves(tree)
  return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in leaves))


class NonFiniteLossError(FloatingPointError):
  """Raised when the loss (or its gradient or update) becomes NaN/inf and
  ``training.nonfinite == 'error'``."""


class CheckpointError(RuntimeError):
  """A checkpoint in the workdir is corrupt or does not fit the config; nothing is overwritten."""


@flax.struct.dataclass
class TrainState:
  """Everything a run needs to continue: ``step``, ``params``, ``ema_params``, ``opt_state``,
  ``key`` (the run's root key; per-step keys are ``fold_in(key, step)``), and ``bad_step``
  (first step whose loss was non-finite, -1 if none)."""
  step: Array
  params: Any
  ema_params: Any
  opt_state: Any
  key: Array
  bad_step: Array


# --------------------------------------------------------------------------------------------------
# building blocks from the config
# --------------------------------------------------------------------------------------------------
def get_process(config) -> processes.Process:
  """The noise process named by ``config.process.name`` with its parameters."""
  p = config.process
  name = p.name
  if config.data.get("source", ""):  # a linear path from a toy source instead of N(0, I)
    from jaxgen import rectified_flow  # pylint: disable=import-outside-toplevel
    return rectified_flow.source_path(config)
  # fields left None (configs/base.py's sigma_min / sigma_max) take the process's own defaults:
  # VE's 0.01 / 50 (score_sde) or EDM's 0.002 / 80 (Karras et al.)
  args = {arg: p.get(field) for field, arg in _PROCESS_ARGS.get(name, ())
          if p.get(field) is not None}
  return processes.get_process(name, **args)


# The config.process fields each process reads, as (config field, process argument); the others
# neither build the process nor decide a checkpoint (:func:`_comparable_process`).
_BETAS = (("beta_min", "beta_min"), ("beta_max", "beta_max"), ("num_scales", "N"))
_SIGMAS = (("sigma_min", "sigma_min"), ("sigma_max", "sigma_max"))
_PROCESS_ARGS = {"vp": _BETAS, "subvp": _BETAS, "ve": _SIGMAS + (("num_scales", "N"),),
                 "edm": _SIGMAS + (("sigma_data", "sigma_data"),), "linear": ()}


def make_optimizer(optim_config) -> optax.GradientTransformation:
  """Adam with linear warmup and global-norm gradient clipping (score_sde's ``optimization_manager``)."""
  if optim_config.optimizer.lower() not in ("adam", "adamw"):
    raise ValueError(f"unknown config.optim.optimizer {optim_config.optimizer!r}; expected 'adam'")
  warmup = int(optim_config.warmup)
  schedule = (optax.linear_schedule(0.0, optim_config.lr, warmup) if warmup > 0
              else optax.constant_schedule(optim_config.lr))
  parts = []
  if optim_config.grad_clip and optim_config.grad_clip > 0:
    parts.append(optax.clip_by_global_norm(optim_config.grad_clip))
  if optim_config.weight_decay:
    parts.append(optax.adamw(schedule, b1=optim_config.beta1, b2=optim_config.beta2,
                             eps=optim_config.eps, weight_decay=optim_config.weight_decay))
  else:
    parts.append(optax.adam(schedule, b1=optim_config.beta1, b2=optim_config.beta2,
                            eps=optim_config.eps))
  return optax.chain(*parts)


def data_shape(config) -> Tuple[int, ...]:
  """Shape of one example: ``(H, W, C)`` for images, ``(d,)`` for toy data."""
  if config.data.dataset.startswith("toy_"):
    return (int(config.data.get("dim", 2)),)
  return (config.data.image_size, config.data.image_size, config.data.num_channels)


METHODS = ("score", "edm", "flow", "rectified_flow", "distill", "cnf")


def validate_config(config, num_devices: Optional[int] = None, training: bool = True) -> None:
  """Reject a bad config before anything is compiled or written (names the bad field).

  ``training=False`` (evaluating or sampling a checkpoint): the training batch need not split
  over this machine's devices, only the evaluation batch (a run trained on 8 GPUs with batch 128
  can be evaluated on 6)."""
  if config.method not in METHODS:
    raise ValueError(f"unknown config.method {config.method!r}; expected one of {METHODS}")
  from jaxgen import evaluate, likelihood  # pylint: disable=import-outside-toplevel
  _validate_numbers(config)
  process = get_process(config)
  if config.method != "cnf":
    t0 = config.eval.get("t0", 1e-5)
    if not (isinstance(t0, (int, float)) and not isinstance(t0, bool) and 0 <= t0 < process.T):
      raise ValueError(f"config.eval.t0 must be in [0, T = {process.T}) (where the likelihood "
                       f"starts), got {t0!r}")
  evaluate.validate_sampling_config(config, process)
  _validate_time_sampling(config)  # first, so that its error names the field
  losses.validate_loss_config(config, process)
  models.validate_model_config(config.model, config.data)
  models.get_model(config.model, config.data)
  _validate_augment(config)
  if config.training.nonfinite not in ("error", "skip"):
    raise ValueError(f"config.training.nonfinite must be 'error' or 'skip', got "
                     f"{config.training.nonfinite!r}")
  if not isinstance(config.training.get("deterministic", False), bool):
    raise ValueError(f"config.training.deterministic must be True or False, got "
                     f"{config.training.deterministic!r}")
  try:   # the checks of the option itself (a string; an existing file unless '' or 'shipped')
    parallel.autotune_options(config.training.get("autotune_results", ""), backend="cpu")
  except ValueError as e:
    raise ValueError(f"config.training.autotune_results must be 'shipped', '' or an existing file "
                     f"of XLA autotune results: {e}") from None
  data_parallel_mode(config)
  evaluate.likelihood_precision(config.eval)
  if config.eval.get("divergence", "rademacher") not in likelihood.DIVERGENCES:
    raise ValueError(f"unknown config.eval.divergence {config.eval.divergence!r}; expected one "
                     f"of {likelihood.DIVERGENCES}")
  _validate_eval_solver(config)
  if config.method == "cnf":
    from jaxgen import cnf  # pylint: disable=import-outside-toplevel
    cnf.validate_config(config)
  num_devices = num_devices or jax.device_count()
  for name in ("training", "eval") if training else ("eval",):
    try:
      data_lib.check_batch_size(config[name].batch_size, num_devices, jax.process_count())
    except ValueError as e:
      raise ValueError(f"config.{name}.batch_size: {e}") from None


# Seeds are 32-bit: jax.random.PRNGKey(2**32) is PRNGKey(0) (without x64), 2**63 overflows.
_MAX_SEED = 2**32 - 1

# Numeric config fields checked by validate_config: (section, field, kind, low, high) with kind
# 'int' or 'float' and the value required in [low, high] (None: unbounded), or with an open
# upper end where high is written as ('<', value).
_NUMBER_FIELDS = (
    ("training", "n_iters", "int", 0, None),
    ("training", "log_every", "int", 1, None),
    ("training", "preemption_every", "int", 1, None),
    ("training", "eval_every", "int", 0, None),
    ("training", "snapshot_every", "int", 0, None),
    ("training", "keep_checkpoints", "int", 1, None),
    ("training", "max_wall_seconds", "float", 0.0, None),
    ("optim", "lr", "float", (">", 0.0), None),
    ("optim", "beta1", "float", 0.0, ("<", 1.0)),
    ("optim", "beta2", "float", 0.0, ("<", 1.0)),
    ("optim", "eps", "float", 0.0, None),
    ("optim", "warmup", "int", 0, None),
    ("optim", "weight_decay", "float", 0.0, None),
    ("optim", "grad_clip", "float", float("-inf"), None),  # <= 0 or inf: no clipping
    ("model", "ema_rate", "float", 0.0, ("<", 1.0)),
    ("model", "ema_rampup_ratio", "float", 0.0, None),
    ("training", "augment_p", "float", 0.0, 1.0),
    ("sampling", "batch_size", "int", 1, None),
    ("sampling", "num_samples", "int", 0, None),
    ("sampling", "class_label", "int", -1, None),  # -1: a class drawn per sample
    ("eval", "num_bpd_batches", "int", 0, None),
    ("eval", "num_probes", "int", 1, None),
    ("eval", "seed", "int", 0, _MAX_SEED),
    ("eval", "density_grid", "int", 0, None),
)


# Float fields where infinity means something (no clipping, no time limit); every other float of
# :data:`_NUMBER_FIELDS` must be finite (an infinite learning rate or EMA warm-up ratio failed
# only after the workdir was written, or as a "non-finite loss").
_INFINITY_ALLOWED = (("optim", "grad_clip"), ("training", "max_wall_seconds"))


def _validate_numbers(config) -> None:
  """The counts, intervals and optimizer numbers of :data:`_NUMBER_FIELDS` (a zero log interval
  divided by zero after the workdir was written; a negative learning rate trained uphill), and
  ``config.seed`` (``jax.random.PRNGKey`` keeps 32 bits: seeds 0 and 2**32 were the same run)."""
  if "seed" in config:
    seed = config.seed
    if not is_int(seed) or not 0 <= seed <= _MAX_SEED:
      raise ValueError(f"config.seed must be an int in [0, {_MAX_SEED}], got {seed!r}")
  for section, field, kind, low, high in _NUMBER_FIELDS:
    if section not in config or field not in config[section]:
      continue
    value = config[section][field]
    name = f"config.{section}.{field}"
    ok = is_int(value) if kind == "int" else (
        isinstance(value, (int, float)) and not isinstance(value, bool) and value == value)
    if not ok:
      raise ValueError(f"{name} must be {'an int' if kind == 'int' else 'a number'}, got "
                       f"{value!r}")
    if kind == "float" and not math.isfinite(value) and (section, field) not in _INFINITY_ALLOWED:
      raise ValueError(f"{name} must be a finite number, got {value!r}")
    low_ok = value > low[1] if isinstance(low, tuple) else value >= low
    high_ok = high is None or (value < high[1] if isinstance(high, tuple) else value <= high)
    if not (low_ok and high_ok):
      lo = f"> {low[1]}" if isinstance(low, tuple) else f">= {low}"
      hi = "" if high is None else (f" and < {high[1]}" if isinstance(high, tuple)
                                    else f" and <= {high}")
      raise ValueError(f"{name} must be {lo}{hi}, got {value!r}")


def _validate_eval_solver(config) -> None:
  """``config.eval.solver`` (one of the likelihood routine's solvers), ``rtol`` and ``atol``
  (``> 0``): the likelihood of the periodic and final evaluation."""
  from jaxgen import likelihood  # pylint: disable=import-outside-toplevel
  evaluation = config.eval
  solver = evaluation.get("solver", "dopri5")
  adaptive, fixed = sorted(likelihood.ADAPTIVE_SOLVERS), sorted(likelihood.FIXED_SOLVERS)
  if solver not in likelihood.ADAPTIVE_SOLVERS and solver not in likelihood.FIXED_SOLVERS:
    raise ValueError(f"unknown config.eval.solver {solver!r}; expected one of {adaptive} "
                     f"(adaptive) or, for a CNF, {fixed} (fixed-step, config.cnf.num_steps)")
  if solver in likelihood.FIXED_SOLVERS and config.method != "cnf":
    raise ValueError(f"config.eval.solver {solver!r} is a fixed-step solver; the "
                     f"probability-flow likelihood takes an adaptive one: {adaptive}")
  for name in ("rtol", "atol"):
    value = evaluation.get(name, 1e-5)
    if (isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0
        or not math.isfinite(value)):
      raise ValueError(f"config.eval.{name} must be a number > 0 and finite, got {value!r}")


AUGMENT_METHODS = ("score", "edm", "flow", "rectified_flow")


def _validate_augment(config) -> None:
  """``training.augment_p > 0`` (EDM's augmentation, :mod:`jaxgen.augment`): a denoising loss
  (``method`` score, edm, flow or rectified_flow) on images with independent noise (no reflow
  pairs, no coupling), and a network that reads the labels (``model.augment_dim =
  augment.AUGMENT_DIM``)."""
  p = config.training.get("augment_p", 0.0)
  if not p:
    return
  if config.method not in AUGMENT_METHODS:
    raise ValueError(f"config.training.augment_p={p} augments the images of a denoising loss; "
                     f"it needs config.method in {AUGMENT_METHODS}, got {config.method!r}")
  coupling = config.training.get("coupling", "independent")
  if coupling != "independent" or config.data.get("pairs_dir", ""):
    what = (f"config.training.coupling={coupling!r}" if coupling != "independent"
            else "config.data.pairs_dir (reflow pairs)")
    raise ValueError(f"config.training.augment_p={p} cannot augment coupled pairs ({what}): an "
                     f"augmented image would keep the noise of the original")
  if len(data_shape(config)) != 3:
    raise ValueError(f"config.training.augment_p={p} augments images; "
                     f"{config.data.dataset!r} is not an image data set")
  dim = config.model.get("augment_dim", 0)
  if dim != augment_lib.AUGMENT_DIM:
    raise ValueError(f"config.training.augment_p={p} needs config.model.augment_dim="
                     f"{augment_lib.AUGMENT_DIM} (the network reads the augmentation labels "
                     f"{augment_lib.LABELS}), got {dim!r}")


def _validate_time_sampling(config) -> None:
  """``config.training.time_sampling`` (:data:`jaxgen.losses.TIME_SAMPLINGS`)."""
  try:
    losses.check_time_sampling(config.training.get("time_sampling", "uniform"))
  except ValueError as e:
    raise ValueError(f"config.training.time_sampling: {e}") from None


def check_pairs_compatible(config) -> None:
  """With ``config.data.pairs_dir`` (reflow pairs as the training split): refuse pairs whose
  ``meta.json`` records another example shape or another noise source (the process's prior,
  ``config.data.source``) than the config (ValueError; see
  :func:`jaxgen.data.pairs.check_pairs_fit`), and an ``eval_split`` equal to the training split
  (the pairs would be evaluated as data), and a class-conditional network on pairs of a teacher
  without its classes (unlabelled pairs, or another ``num_classes``)."""
  directory = str(config.data.get("pairs_dir", "") or "")
  if directory:
    train_split = config.data.get("train_split", "train")
    if config.data.get("eval_split", "test") == train_split:
      raise ValueError(f"config.data.pairs_dir replaces the training split {train_split!r} with "
                       f"reflow pairs, but config.data.eval_split is the same split: evaluation "
                       f"would read the pairs as data; set config.data.eval_split to a held-out "
                       f"split")
    from jaxgen.data import pairs  # pylint: disable=import-outside-toplevel
    pairs.check_pairs_fit(directory, shape=data_shape(config), process=get_process(config),
                          data_config=config.data,
                          model_classes=int(config.model.get("num_classes", 0) or 0))


def train_compiler_options(config) -> Optional[Dict[str, Any]]:
  """XLA options of the jitted train step: ``training.deterministic`` and
  ``training.autotune_results`` (see :func:`jaxgen.parallel.compiler_options`)."""
  return parallel.compiler_options(config.training.get("deterministic", False),
                                   autotune_results=config.training.get("autotune_results", ""))


DATA_PARALLEL_MODES = ("auto", "gspmd", "shard_map")
# training.allreduce_buckets for configs without the field (configs/base.py sets the same).
DEFAULT_ALLREDUCE_BUCKETS = 8


def data_parallel_mode(config, mesh=None, backend: Optional[str] = None) -> str:
  """The train step's data parallelism, ``'gspmd'`` or ``'shard_map'``, from
  ``config.training.data_parallel`` (checked against the config; ``'auto'`` when absent).

  ``'auto'`` resolves to ``'shard_map'`` on GPUs when the batch is split over more than one
  device (``mesh``'s data axis; all devices when None) and the loss is per example (no
  minibatch coupling, not a CNF): its one float32 all-reduce of the flat gradient made two H200s
  1.7-2.4 % faster than XLA's partitioning, with the same losses (experiments/bench/NOTES.md,
  runs 24-25). Elsewhere (one device, CPUs, TPUs, whose all-reduces XLA schedules itself) it
  resolves to ``'gspmd'``.
  """
  mode = config.training.get("data_parallel", "auto")
  if mode not in DATA_PARALLEL_MODES:
    raise ValueError(f"config.training.data_parallel must be one of {DATA_PARALLEL_MODES}, got "
                     f"{mode!r}")
  buckets = config.training.get("allreduce_buckets", DEFAULT_ALLREDUCE_BUCKETS)
  check_int(buckets, "config.training.allreduce_buckets")
  coupling = config.training.get("coupling", "independent")
  per_example = coupling == "independent" and config.get("method") != "cnf"
  if mode == "shard_map" and coupling != "independent":
    raise ValueError(f"config.training.data_parallel='shard_map' computes the loss on each "
                     f"device's rows alone, but config.training.coupling={coupling!r} pairs noise "
                     f"and data across the whole batch: use data_parallel='gspmd' or 'auto'")
  if mode == "shard_map" and config.get("method") == "cnf":
    raise ValueError("config.training.data_parallel='shard_map' computes the loss on each "
                     "device's rows alone, but config.method='cnf' integrates the whole batch "
                     "as one ODE (its adaptive steps depend on every row): use "
                     "data_parallel='gspmd' or 'auto'")
  if mode != "auto":
    return mode
  shards = jax.device_count() if mesh is None else parallel.data_parallel_size(mesh)
  backend = backend or (jax.default_backend() if mesh is None else mesh.devices.flat[0].platform)
  return "shard_map" if backend == "gpu" and shards > 1 and per_example else "gspmd"


def make_sharded_train_step(setup: "Setup", mesh, flat_carry: Optional[bool] = None):
  """The training loop's jitted, data-parallel step on ``mesh``: ``(step, to_carry, as_tree)``.

  ``step(carry, batch) -> (carry, metrics)`` takes a replicated carry and a batch sharded on the
  mesh's ``data`` axis (``parallel.host_local_to_global``); the carry is donated, and
  ``training.deterministic`` becomes the step's XLA options. With ``optim.flat_update`` (and
  ``flat_carry`` not False) the carry holds parameters and EMA as flat vectors
  (:meth:`Setup.make_flat_train_step`); ``to_carry(state)`` and ``as_tree(carry)`` convert between
  a :class:`TrainState` and the carry (identities otherwise). :func:`train_and_evaluate` and the
  benchmarks in ``experiments/bench`` all run this one step.

  ``training.data_parallel`` picks how the batch is split (:func:`data_parallel_mode`):
  ``'gspmd'`` jits the global-batch step and lets XLA partition it (it all-reduces each gradient
  where it is computed); ``'shard_map'`` runs :meth:`Setup.make_per_device_train_step` in
  ``parallel.shard_map``: one float32 all-reduce of the flat gradient per step; ``'auto'``
  (default) picks one. Both draw the global batch's randomness, so a run's losses do not depend
  on the mode or the number of devices (up to float32 summation order).
  """
  mode = data_parallel_mode(setup.config, mesh)
  flat = setup.flat_update if flat_carry is None else bool(flat_carry) and setup.flat_update
  repl = parallel.replicated(mesh)
  if mode == "shard_map":
    body = parallel.shard_map(setup.make_per_device_train_step(flat), mesh,
                              in_specs=(P(), P(parallel.DATA_AXIS)), out_specs=(P(), P()))
  else:
    body = setup.make_flat_train_step() if flat else setup.make_train_step()
  step = parallel.jit(body, train_compiler_options(setup.config),
                      in_shardings=(repl, parallel.batch_sharded(mesh)),
                      out_shardings=(repl, repl), donate_argnums=(0,))
  if not flat:
    return step, lambda state: state, lambda carry: carry
  return (step, jax.jit(setup.to_flat_state, out_shardings=repl),
          jax.jit(setup.from_flat_state, out_shardings=repl))


def _aux_scalars(aux) -> Dict[str, Array]:
  """The scalar entries of a loss's ``aux`` dict as float32 (per-example arrays dropped)."""
  if not isinstance(aux, dict):
    return {}
  return {str(k): jnp.asarray(v, jnp.float32) for k, v in aux.items()
          if hasattr(v, "shape") and jnp.ndim(v) == 0}


def _with_aux(step_out, aux):
  """``(state, metrics)`` with the loss's scalar aux values as ``metrics['aux']`` (if any)."""
  state, metrics = step_out
  return (state, {**metrics, "aux": aux}) if aux else (state, metrics)


# (module name prefix, parameter) of the vectors that the layers use only after a cast to the
# compute dtype (``Setup.inference_params`` casts them once).
_COMPUTE_DTYPE_VECTORS = (("Conv", "bias"), ("Dense", "bias"), ("NIN", "b"))


class Setup:
  """Model, process, loss and the pure functions of one experiment, built from its config."""

  def __init__(self, config):
    self.config = config
    self.process = get_process(config)
    self.model = models.get_model(config.model, config.data)
    edm = config.method == "edm"
    discrete = losses.is_discrete_training(config)
    # What model_fn returns: the config's prediction, EDM's denoiser (x0), or for DDPM-trained VP
    # the score (its output read with DDPM's discrete coefficients).
    self.prediction = losses.model_output_type(self.process, config.model.prediction,
                                               edm_preconditioning=edm, discrete=discrete)
    self.model_fn = losses.make_model_fn(self.model.apply, self.process, config.model.prediction,
                                         edm_preconditioning=edm, discrete=discrete)
    # model.fused_norm's GroupNorm has a hand-written backward pass (a custom VJP), which has no
    # forward-mode derivative. The likelihood's divergence is a jvp, so it runs the same
    # function and parameters with XLA's GroupNorm (fused_norm is a speed-only field).
    self.eval_model_fn = self.model_fn
    if config.model.get("fused_norm", False) is True:
      if config.method == "cnf":
        raise ValueError("config.model.fused_norm=True: its GroupNorm has no forward-mode "
                         "derivative, which a CNF's divergence needs; set it to False")
      eval_model_config = ml_collections.ConfigDict(config.model.to_dict())
      eval_model_config.fused_norm = False
      self.eval_model_fn = losses.make_model_fn(
          models.get_model(eval_model_config, config.data).apply, self.process,
          config.model.prediction, edm_preconditioning=edm, discrete=discrete)
    if config.method == "cnf":
      from jaxgen import cnf  # pylint: disable=import-outside-toplevel
      self.loss_fn = cnf.make_loss_fn(config, self)
    elif config.method == "distill":
      from jaxgen import rectified_flow  # pylint: disable=import-outside-toplevel
      self.loss_fn = rectified_flow.make_distill_loss_fn(config, self)
    elif config.training.get("coupling", "independent") != "independent":
      from jaxgen import rectified_flow  # pylint: disable=import-outside-toplevel
      self.loss_fn = rectified_flow.make_coupled_flow_loss_fn(config, self)
    else:
      self.loss_fn = losses.get_loss_fn(config, self.model_fn, self.process)
    self.optimizer = make_optimizer(config.optim)
    # optim.flat_update: Adam, clipping, EMA and the non-finite guard run on one flat vector of
    # all parameters (a handful of kernels) instead of once per leaf (hundreds of tiny kernels on
    # a GPU); the optimizer state is then flat too (checkpoints differ from the per-leaf layout).
    self.flat_update = bool(config.optim.get("flat_update", False))
    optim = config.optim
    self._check_updates = not all(
        math.isfinite(float(optim.get(k, 0.0) or 0.0))
        for k in ("lr", "beta1", "beta2", "eps", "weight_decay", "grad_clip"))
    self._materialize_grads = bool(optim.get("materialize_grads", False))
    self.shape = data_shape(config)

  def inference_params(self, params):
    """``params`` with what the network casts to the compute dtype on every call cast once.

    That is every kernel (floating leaf of rank >= 2) and the biases of the convolutions, dense
    layers and NINs (``Conv_*/bias``, ``Dense_*/bias``, ``NIN_*/b``), which the layers add in the
    compute dtype. A sampler or ODE solver that calls the network hundreds of times inside one
    jitted loop then starts every call from the cast values: ~0.5 ms less per DDPM++ call on an
    H100 for the kernels (NOTES.md run 10), and ~115 one-microsecond convert kernels less for
    the biases (run 22). Normalization scales and offsets, and other vectors, stay float32, so
    the network computes exactly what it computes from ``params`` (tested bit for bit). A
    float32 model gets ``params`` back unchanged.
    """
    dtype = jnp.dtype(self.config.model.get("dtype", "float32"))
    if dtype == jnp.float32:
      return params

    def cast(path, p):
      if not jnp.issubdtype(p.dtype, jnp.floating):
        return p
      names = layers.param_path_names(path)
      bias = (p.ndim == 1 and len(names) >= 2
              and (names[-2].split("_")[0], names[-1]) in _COMPUTE_DTYPE_VECTORS)
      return p.astype(dtype) if p.ndim >= 2 or bias else p

    return jax.tree_util.tree_map_with_path(cast, params)

  def init_state(self, key: Array) -> TrainState:
    """Fresh float32 parameters, EMA copy and optimizer state."""
    k_init, k_run = jax.random.split(key)
    params = self._init_params(k_init)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      ema_params=jax.tree_util.tree_map(jnp.copy, params),
                      opt_state=self.init_opt_state(params), key=k_run,
                      bad_step=jnp.full((), -1, jnp.int32))

  def _init_params(self, key: Array):
    """Fresh float32 network parameters."""
    x = jnp.zeros((1,) + self.shape, jnp.float32)
    cond = jnp.ones((1,), jnp.float32)
    kwargs = {}
    if self.config.model.get("num_classes", 0):
      kwargs["y"] = jnp.zeros((1,), jnp.int32)
    params = self.model.init({"params": key, "dropout": key}, x, cond, train=False,
                             **kwargs)["params"]
    return jax.tree_util.tree_map(lambda p: p.astype(jnp.float32), params)

  def abstract_params(self):
    """Shapes and dtypes of the parameter tree (``jax.ShapeDtypeStruct`` leaves; traced once)."""
    if getattr(self, "_abstract_params", None) is None:
      self._abstract_params = jax.eval_shape(self._init_params, jax.random.PRNGKey(0))
    return self._abstract_params

  def flat_layout(self):
    """``(ravel, unravel)`` between the parameter tree and one float32 vector.

    One layout (tree-flatten order, ``ravel_pytree``'s) for the optimizer state, the per-step
    ravel of ``make_train_step`` and the flat carry of ``make_flat_train_step``.
    """
    if getattr(self, "_flat_layout", None) is None:
      leaves, treedef = jax.tree_util.tree_flatten(self.abstract_params())
      shapes = [leaf.shape for leaf in leaves]
      sizes = [int(np.prod(shape)) for shape in shapes]
      offsets = np.cumsum([0] + sizes)

      def ravel(tree):
        return jnp.concatenate([jnp.ravel(x).astype(jnp.float32)
                                for x in jax.tree_util.tree_leaves(tree)])

      def unravel(flat):
        return jax.tree_util.tree_unflatten(
            treedef, [flat[int(o):int(o) + n].reshape(shape)
                      for o, n, shape in zip(offsets[:-1], sizes, shapes)])

      self._flat_layout = (ravel, unravel)
    return self._flat_layout

  def to_flat_state(self, state: TrainState) -> TrainState:
    """The state with ``params`` and ``ema_params`` as flat vectors (see ``make_flat_train_step``)."""
    ravel, _ = self.flat_layout()
    return state.replace(params=ravel(state.params), ema_params=ravel(state.ema_params))

  def from_flat_state(self, flat_state: TrainState) -> TrainState:
    """Inverse of :meth:`to_flat_state`: parameter and EMA trees again."""
    _, unravel = self.flat_layout()
    return flat_state.replace(params=unravel(flat_state.params),
                              ema_params=unravel(flat_state.ema_params))

  def init_opt_state(self, params):
    """Fresh optimizer state for ``params`` (over their flat vector if ``optim.flat_update``)."""
    return self.optimizer.init(self.flat_layout()[0](params) if self.flat_update else params)

  def preprocess(self, key, batch: Dict[str, Array], train: bool) -> Dict[str, Array]:
    """A batch as the model sees it: images through ``data.preprocess`` (flips when ``train``,
    dequantization when configured), toy points and reflow pairs as float32; masks and unused
    labels dropped."""
    out = dict(batch)
    from_pairs = train and self.config.data.get("pairs_dir", "")  # reflow pairs: model space
    if not (self.config.data.dataset.startswith("toy_") or from_pairs):
      out["image"] = data_lib.preprocess(key, batch["image"], self.config.data, train=train)
    else:
      out["image"] = batch["image"].astype(jnp.float32)
    out.pop("mask", None)
    if not self.config.model.get("num_classes", 0):
      out.pop("label", None)
    return out

  def make_train_step(self) -> Callable[[TrainState, Dict[str, Array]], Tuple[TrainState, Dict]]:
    """``train_step(state, batch) -> (state, metrics)``; pure, to be jitted with shardings."""

    def train_step(state: TrainState, batch):
      loss, grads, aux = self._loss_and_grads(state, batch, state.params)
      if self.flat_update:
        return _with_aux(self._flat_tree_update(state, loss, self.flat_layout()[0](grads)), aux)
      return _with_aux(self._tree_update(state, loss, grads), aux)

    return train_step

  def _ema_decay(self, step):
    """:func:`ema_decay` of ``config.model.ema_rate`` and ``ema_rampup_ratio`` (default 0)."""
    model = self.config.model
    return ema_decay(step, model.ema_rate, model.get("ema_rampup_ratio", 0.0))

  def _loss_and_grads(self, state: TrainState, batch, params):
    """The step's loss, parameter gradients and the loss's scalar ``aux`` values (float32; e.g.
    a CNF's NLL, NFE, RNODE terms and end time), logged with the loss. Its randomness comes from
    ``state.key`` and ``state.step``. Inside a ``shard_map`` over ``parallel.DATA_AXIS`` each
    device draws its rows of the global batch's randomness (``parallel.global_batch_draw``)."""
    step_key = jax.random.fold_in(state.key, state.step)
    k_data, k_loss = jax.random.split(step_key)
    batch = self.preprocess(k_data, batch, train=True)
    (loss, aux), grads = jax.value_and_grad(self.loss_fn, has_aux=True)(params, k_loss, batch)
    return loss, grads, _aux_scalars(aux)

  def _tree_update(self, state: TrainState, loss, grads):
    """Optimizer, EMA and the non-finite guard, leaf by leaf (``optim.flat_update=False``)."""
    ema_rate = self._ema_decay(state.step)
    grad_norm = _global_norm(grads)
    updates, opt_state = self.optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ema = jax.tree_util.tree_map(lambda e, p: ema_rate * e + (1.0 - ema_rate) * p,
                                 state.ema_params, params)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & jnp.isfinite(_global_norm(updates))
    # The update of a non-finite step is always dropped; training.nonfinite='error' then stops.
    keep = lambda new, old: jax.tree_util.tree_map(lambda a, b: jnp.where(finite, a, b), new, old)
    params, ema, opt_state = (keep(params, state.params), keep(ema, state.ema_params),
                              keep(opt_state, state.opt_state))
    bad_step = jnp.where((state.bad_step < 0) & ~finite, state.step, state.bad_step)
    new_state = state.replace(step=state.step + 1, params=params, ema_params=ema,
                              opt_state=opt_state, bad_step=bad_step)
    return new_state, {"loss": loss, "grad_norm": grad_norm, "finite": finite}

  def _flat_tree_update(self, state: TrainState, loss, flat_grads):
    """:meth:`_flat_core` for a state whose parameters and EMA are trees."""
    ravel, unravel = self.flat_layout()
    new_params, new_ema, opt_state, bad_step, metrics = self._flat_core(
        state, loss, flat_grads, ravel(state.params), ravel(state.ema_params))
    return state.replace(step=state.step + 1, params=unravel(new_params),
                         ema_params=unravel(new_ema), opt_state=opt_state,
                         bad_step=bad_step), metrics

  def _flat_carry_update(self, state: TrainState, loss, flat_grads):
    """:meth:`_flat_core` for a flat carry (parameters and EMA already flat vectors)."""
    new_params, new_ema, opt_state, bad_step, metrics = self._flat_core(
        state, loss, flat_grads, state.params, state.ema_params)
    return state.replace(step=state.step + 1, params=new_params, ema_params=new_ema,
                         opt_state=opt_state, bad_step=bad_step), metrics

  def _flat_core(self, state, loss, flat_grads, flat_params, flat_ema):
    """Adam (+clipping), EMA and the non-finite guard on flat float32 vectors."""
    ema_rate = self._ema_decay(state.step)
    if self._materialize_grads:
      # One contiguous copy of the ~560 gradient leaves; the norm and Adam then read it, instead
      # of each indexing into a ~560-operand concatenation inside its own fusion.
      flat_grads = jax.lax.optimization_barrier(flat_grads)
    grad_norm = jnp.sqrt(jnp.sum(jnp.square(flat_grads)))
    updates, opt_state = self.optimizer.update(flat_grads, state.opt_state, flat_params)
    new_params = flat_params + updates
    new_ema = ema_rate * flat_ema + (1.0 - ema_rate) * new_params
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    if self._check_updates:
      # With finite optimizer constants a finite gradient norm means every g**2 is finite, so
      # Adam's moments and its update m / (sqrt(v) + eps) are finite too (the moments are by
      # induction: a non-finite step is dropped), and this second pass over the 62 M updates
      # (experiments/bench/NOTES.md, run 10) is only needed when a constant is not finite.
      finite = finite & jnp.isfinite(jnp.sum(jnp.square(updates)))
    new_params = jnp.where(finite, new_params, flat_params)
    new_ema = jnp.where(finite, new_ema, flat_ema)
    opt_state = jax.tree_util.tree_map(lambda a, b: jnp.where(finite, a, b), opt_state,
                                       state.opt_state)
    bad_step = jnp.where((state.bad_step < 0) & ~finite, state.step, state.bad_step)
    return new_params, new_ema, opt_state, bad_step, {"loss": loss, "grad_norm": grad_norm,
                                                      "finite": finite}

  def make_flat_train_step(self) -> Callable[[TrainState, Dict[str, Array]],
                                             Tuple[TrainState, Dict]]:
    """``step(flat_state, batch) -> (flat_state, metrics)`` for ``optim.flat_update``.

    The same update as :meth:`make_train_step`, but the parameters and EMA stay flat vectors
    between steps (:meth:`to_flat_state` / :meth:`from_flat_state` convert): no ravel of the
    parameter and EMA trees and no unravel of the results on every step, and two buffers instead
    of ~1,100 cross the jit boundary (host time per step on a GPU). The training loop uses it.
    """
    if not self.flat_update:
      raise ValueError("make_flat_train_step needs config.optim.flat_update=True")
    ravel, unravel = self.flat_layout()

    def step(state: TrainState, batch):
      # Differentiate with respect to the tree, not the flat vector: the transpose of ~560
      # slices would be ~560 full-length pads (on an H100: 89 ms/step and +3 GiB, NOTES.md run 9).
      loss, grads, aux = self._loss_and_grads(state, batch, unravel(state.params))
      return _with_aux(self._flat_carry_update(state, loss, ravel(grads)), aux)

    return step

  def make_per_device_train_step(self, flat_carry: bool = False) -> Callable:
    """``step(state, batch_shard) -> (state, metrics)`` to run inside ``parallel.shard_map``.

    Each device computes the loss and gradients of its own rows of the batch, with its rows of
    the global batch's randomness (the time, noise, flips, dequantization and dropout masks
    that a ``jit`` of the whole batch draws: the step is the ``'gspmd'`` step up to float32
    summation order, on any number of devices), ravels its gradients into one float32 vector
    and averages it over the devices with one ``pmean``: a single all-reduce of ``n_params``
    float32 values per step, in float32 also when the network computes in bfloat16. The
    optimizer, EMA and non-finite guard then run the same on every device. ``flat_carry``: the
    state's parameters and EMA are flat vectors (:meth:`make_flat_train_step`'s carry; needs
    ``optim.flat_update``).
    """
    if flat_carry and not self.flat_update:
      raise ValueError("make_per_device_train_step(flat_carry=True) needs "
                       "config.optim.flat_update=True")
    ravel, unravel = self.flat_layout()
    axis = parallel.DATA_AXIS
    buckets = self.allreduce_buckets()

    def reduce_grads(grads):
      if len(buckets) == 1:
        return jax.lax.pmean(ravel(grads), axis)  # the step's one gradient all-reduce
      leaves = [jnp.ravel(g).astype(jnp.float32) for g in jax.tree_util.tree_leaves(grads)]
      out = [None] * len(leaves)
      for bucket in buckets:
        reduced = jax.lax.pmean(jnp.concatenate([leaves[i] for i in bucket]), axis)
        offset = 0
        for i in bucket:
          out[i] = reduced[offset:offset + leaves[i].size]
          offset += leaves[i].size
      return jnp.concatenate(out)

    def step(state: TrainState, batch):
      params = parallel.to_varying(unravel(state.params) if flat_carry else state.params, axis)
      loss, grads, aux = self._loss_and_grads(state, batch, params)
      loss = jax.lax.pmean(loss, axis)
      aux = jax.lax.pmean(aux, axis) if aux else aux
      flat_grads = reduce_grads(grads)
      if flat_carry:
        return _with_aux(self._flat_carry_update(state, loss, flat_grads), aux)
      if self.flat_update:
        return _with_aux(self._flat_tree_update(state, loss, flat_grads), aux)
      return _with_aux(self._tree_update(state, loss, unravel(flat_grads)), aux)

    return step

  def backward_order(self):
    """Indices of the parameter leaves (tree-flatten order), last used by the forward pass first.

    The backward pass computes gradients roughly in this order; it is read from the jaxpr of one
    forward call (the equation that first reads each leaf).
    """
    abstract = self.abstract_params()
    kwargs = {"y": jnp.zeros((1,), jnp.int32)} if self.config.model.get("num_classes", 0) else {}

    def forward(params):
      return self.model.apply({"params": params}, jnp.zeros((1,) + self.shape, jnp.float32),
                              jnp.ones((1,), jnp.float32), train=False, **kwargs)

    jaxpr = jax.make_jaxpr(forward)(abstract).jaxpr
    position = {v: i for i, v in enumerate(jaxpr.invars)}
    first_use = [len(jaxpr.eqns)] * len(jaxpr.invars)
    for k, eqn in enumerate(jaxpr.eqns):
      for v in eqn.invars:
        i = None if type(v).__name__ == "Literal" else position.get(v)
        if i is not None and first_use[i] > k:
          first_use[i] = k
    return sorted(range(len(first_use)), key=lambda i: (-first_use[i], i))

  def allreduce_buckets(self):
    """At most ``training.allreduce_buckets`` groups of parameter-leaf indices, in backward
    order, of about equal size (a leaf is never split): ``data_parallel='shard_map'``
    all-reduces each group as soon as its gradients exist (one group: one all-reduce of the
    whole flat gradient after the backward pass)."""
    n = int(self.config.training.get("allreduce_buckets", DEFAULT_ALLREDUCE_BUCKETS))
    sizes = [int(np.prod(leaf.shape))
             for leaf in jax.tree_util.tree_leaves(self.abstract_params())]
    if n <= 1:
      return [list(range(len(sizes)))]
    total, groups, acc = sum(sizes), [[]], 0
    for i in self.backward_order():
      if acc >= total * len(groups) / n and len(groups) < n:
        groups.append([])
      groups[-1].append(i)
      acc += sizes[i]
    return [g for g in groups if g]

  def make_eval_loss(self, per_example: bool = False) -> Callable:
    """``eval_loss(params, key, batch) -> mean loss`` (no dropout); with ``per_example``, the
    losses of the rows, ``(batch,)`` (the loss's ``aux['loss_per_example']``; a loss without one
    gives its mean on every row), so that a padded batch can be averaged over its real rows."""

    def eval_loss(params, key, batch):
      k_data, k_loss = jax.random.split(key)
      batch = self.preprocess(k_data, batch, train=False)
      loss, aux = self.loss_fn(params, k_loss, batch, train=False)
      if not per_example:
        return loss
      rows = batch["image"].shape[0]
      if isinstance(aux, dict) and "loss_per_example" in aux:
        return jnp.reshape(aux["loss_per_example"], (rows,))
      return jnp.broadcast_to(loss, (rows,))

    return eval_loss


# --------------------------------------------------------------------------------------------------
# checkpoints
# --------------------------------------------------------------------------------------------------
def _source_name(data_config) -> str:
  """``data.source`` with its two spellings of N(0, I) (``''``, ``'normal'``) made one."""
  source = str(data_config.get("source", "") or "")
  return "" if source == "normal" else source


def _config_fingerprint(config) -> Dict[str, Any]:
  """The parts of a config that a checkpoint must agree with to be restored.

  Besides the model, process, method, data shape and optimizer: what the parameters model and how
  the network is read (:data:`_FINGERPRINT_FIELDS`: the data set, ``data.source`` (the rectified
  flow's ``t = 1`` end), the data scaling ``data.centered`` / ``data.num_levels``, discrete-time
  training); ``training.batch_size`` and ``seed`` decide the data order of a resumed run, so the
  ``training`` section is compared only when a run resumes training
  (:func:`check_workdir_compatible`).
  """
  model = config.model.to_dict()
  if str(model.get("name", "")).lower() == "ffjord_multiscale":
    model["squeeze_order"] = _SQUEEZE_ORDER
  fingerprint = {"model": model, "process": config.process.to_dict(),
                 "method": config.method, "data_shape": list(data_shape(config)),
                 "optim": {"optimizer": config.optim.optimizer}}
  for (section, field), get in _FINGERPRINT_FIELDS.items():
    fingerprint.setdefault(section, {})[field] = get(config)
  return fingerprint


# Fingerprint fields added after workdirs were written, ``(section, field) -> value(config)``. A
# config.json without one is completed from its saved config; where that fails too, the field is
# not compared.
_FINGERPRINT_FIELDS = {
    ("data", "dataset"): lambda c: str(c.data.dataset),
    ("data", "source"): lambda c: _source_name(c.data),
    ("data", "centered"): lambda c: bool(c.data.centered),
    ("data", "num_levels"): lambda c: int(c.data.num_levels),
    ("reading", "discrete"): lambda c: bool(losses.is_discrete_training(c)),
    ("training", "batch_size"): lambda c: int(c.training.batch_size),
    ("training", "seed"): lambda c: int(c.seed),
}


# Model fields that change speed only, never the parameter values a checkpoint holds. ``remat``
# renames the residual blocks (flax's ``Checkpoint`` prefix); a restore converts the names
# (:func:`restore_state`), so a run can turn it on or off when it resumes.
_PERF_ONLY_MODEL_FIELDS = ("fused_norm", "pallas_norm", "fast_dropout", "temb_barrier",
                           "two_stage_grads", "remat_policy", "remat")
# Model fields added after checkpoints were written, with what those checkpoints hold
# (``zero_last`` only changes the initialization).
_MODEL_FIELDS_BEFORE = {"kernel_layout": "HWIO", "zero_last": False, "ema_rampup_ratio": 0.0,
                        "augment_dim": 0}
# FFJORD's multiscale squeeze order (channel c*4 + dy*2 + dx) since 2026-11-30; checkpoints of the
# order before ((dy*2 + dx)*C + c) compute another function with the same parameters, so their
# fingerprint (which lacks the field) is refused by name rather than silently evaluated.
_SQUEEZE_ORDER = "ffjord"
_MODELS_WITH_KERNEL_LAYOUT = ("ncsnpp", "ddpmpp")


def _comparable_process(process: Dict[str, Any]) -> Dict[str, Any]:
  """``config.process`` as the process reads it (:data:`_PROCESS_ARGS`): its own fields only, one
  left None (configs/base.py's sigmas) replaced by the process's default (so a VE workdir written
  when the base config spelled out 0.01 / 50 stays compatible)."""
  name = process.get("name")
  if name not in _PROCESS_ARGS:
    return process
  out = {"name": name}
  for field, arg in _PROCESS_ARGS[name]:
    value = process.get(field)
    out[field] = getattr(processes.PROCESSES[name](), arg) if value is None else value
  return out


def _comparable(fingerprint: Dict[str, Any]) -> Dict[str, Any]:
  """A fingerprint with the fields that do not decide the checkpoint's contents normalized."""
  fingerprint = dict(fingerprint)
  if isinstance(fingerprint.get("process"), dict):
    fingerprint["process"] = _comparable_process(fingerprint["process"])
  model = dict(fingerprint.get("model", {}))
  for key in _PERF_ONLY_MODEL_FIELDS:
    model.pop(key, None)
  for key, value in _MODEL_FIELDS_BEFORE.items():
    model.setdefault(key, value)
  if str(model.get("name", "")).lower() not in _MODELS_WITH_KERNEL_LAYOUT:
    model.pop("kernel_layout", None)
  if str(model.get("name", "")).lower() == "ffjord_multiscale":
    model.setdefault("squeeze_order", "jaxgen_before_2026_11_30")
  fingerprint["model"] = model
  return fingerprint


def _jsonable(obj):
  if isinstance(obj, dict):
    return {k: _jsonable(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [_jsonable(v) for v in obj]
  return obj


def make_checkpoint_manager(workdir: str, config) -> ocp.CheckpointManager:
  """Orbax manager: the loop saves (async) every ``preemption_every``-th and every
  ``snapshot_every``-th step; the newest ``keep_checkpoints`` are kept, plus every
  ``snapshot_every``-th step for good."""
  options = ocp.CheckpointManagerOptions(
      max_to_keep=max(1, int(config.training.keep_checkpoints)),
      keep_period=int(config.training.snapshot_every) or None,
      enable_async_checkpointing=True,
      create=True)
  return ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), "checkpoints"),
                               options=options, item_names=("state", "meta"))


def _added_sections(fingerprint: Dict[str, Any], saved_config: Any):
  """``(fingerprint, missing)``: an older fingerprint with the fields of
  :data:`_FINGERPRINT_FIELDS` it lacks filled in from the saved config where they can be read,
  and the ``(section, field)`` pairs that could not (not compared)."""
  fingerprint = {k: dict(v) if isinstance(v, dict) else v for k, v in fingerprint.items()}
  saved = None
  if isinstance(saved_config, dict):
    try:
      saved = ml_collections.ConfigDict(saved_config)
    except Exception:  # pylint: disable=broad-except
      saved = None
  missing = set()
  for (section, field), get in _FINGERPRINT_FIELDS.items():
    if field in fingerprint.get(section, {}):
      continue
    try:
      value = get(saved)
    except Exception:  # pylint: disable=broad-except  (an old or partial saved config)
      missing.add((section, field))
      continue
    fingerprint.setdefault(section, {})[field] = value
  return fingerprint, missing


def _has_checkpoints(workdir: str) -> bool:
  """Whether ``workdir/checkpoints`` holds a finished checkpoint (a step directory)."""
  path = os.path.join(os.path.abspath(workdir), "checkpoints")
  return os.path.isdir(path) and any(name.isdigit() for name in os.listdir(path))


def check_workdir_compatible(workdir: str, config, resume_training: bool = False) -> None:
  """Raise :class:`CheckpointError` if the workdir holds a run of an incompatible config.

  Compared: the model (but its speed-only fields), process, method, data shape, data set,
  ``data.source``, the data scaling (``data.centered``, ``data.num_levels``), discrete-time
  training and the optimizer; with ``resume_training`` (the train loop, a warm start) and a
  checkpoint in the workdir also ``training.batch_size`` and ``seed``, on which a resumed run's
  data order depends (evaluating or sampling with another batch size or seed is fine).
  """
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    return
  try:
    with open(path) as f:
      saved = json.load(f)
  except (OSError, ValueError) as e:
    raise CheckpointError(f"{path} is unreadable ({e}); refusing to touch this workdir") from e
  mine = _comparable(_jsonable(_config_fingerprint(config)))
  theirs = saved.get("fingerprint", {})
  if not theirs:
    return
  theirs, missing = _added_sections(theirs, saved.get("config"))
  theirs = _comparable(theirs)
  for section, field in missing:  # not recorded by the run that wrote config.json
    mine.get(section, {}).pop(field, None)
  for section in ("data", "reading", "training"):
    if not mine.get(section) and not theirs.get(section):
      mine.pop(section, None)
      theirs.pop(section, None)
  if not (resume_training and _has_checkpoints(workdir)):
    mine.pop("training", None)
    theirs.pop("training", None)
  if theirs == mine:
    return
  diffs = []
  for key in sorted(set(mine) | set(theirs)):
    a, b = mine.get(key), theirs.get(key)
    if a == b:
      continue
    if not (isinstance(a, dict) and isinstance(b, dict)):
      diffs.append(key)
      continue
    for field in sorted(set(a) | set(b)):
      if a.get(field) != b.get(field):
        diffs.append(f"{key}.{field}" if key == "model" else
                     f"{key}.{field} ({b.get(field)!r} there, {a.get(field)!r} now)")
  hint = ""
  if any(d.startswith(("training.batch_size", "training.seed")) for d in diffs):
    hint = (" A resumed run reads the data in the order of its seed and batch size; resume with "
            "the ones it was started with.")
  raise CheckpointError(
      f"workdir {workdir} holds a run with a different {', '.join(diffs)} config; it cannot be "
      f"resumed with this config and is left untouched (use another --workdir).{hint}")


def write_config(workdir: str, config) -> None:
  """Writes ``workdir/config.json`` (the config and its fingerprint) on process 0, atomically.

  Called when a run starts training, after :func:`check_workdir_compatible` passed: the file
  then describes the latest run (a failed first attempt's config does not stay behind).
  """
  if jax.process_index() != 0:
    return
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, "config.json")
  text = json.dumps({"fingerprint": _jsonable(_config_fingerprint(config)),
                     "config": json.loads(config.to_json_best_effort())}, indent=1)
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "w") as f:
    f.write(text)
  os.replace(tmp, path)


def save_checkpoint(manager: ocp.CheckpointManager, state: TrainState, data_step: int,
                    force: bool = False) -> bool:
  """Save ``state`` and the data position (async); returns whether a save started."""
  step = int(state.step)
  meta = {"step": step, "data_step": int(data_step), "time": time.time()}
  return manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                    meta=ocp.args.JsonSave(meta)), force=force)


# asyncio's report of a task that failed while ``asyncio.run`` cancels the rest of a restore.
_ASYNCIO_SHUTDOWN_REPORT = "unhandled exception during asyncio.run() shutdown"


class _DropAsyncioShutdownReports(py_logging.Filter):
  """Drops asyncio's "unhandled exception during asyncio.run() shutdown" records."""

  def filter(self, record: py_logging.LogRecord) -> bool:
    return not str(record.msg).startswith(_ASYNCIO_SHUTDOWN_REPORT)


@contextlib.contextmanager
def _quiet_cancelled_reads():
  """While a checkpoint is read: orbax < 0.12.8 reads it inside ``asyncio.run``, and when one
  array of a damaged checkpoint fails, every other read still in flight is cancelled and logged
  by asyncio with its whole TensorStore spec (8,615 lines before the error, once in 8 runs with
  orbax 0.12.4, run 31). The first failure is what :class:`CheckpointError` reports; those
  records add nothing. Other asyncio records pass."""
  logger, quiet = py_logging.getLogger("asyncio"), _DropAsyncioShutdownReports()
  logger.addFilter(quiet)
  try:
    yield
  finally:
    logger.removeFilter(quiet)


def restore_checkpoint(manager: ocp.CheckpointManager, abstract_state: TrainState,
                       step: Optional[int] = None) -> Tuple[TrainState, Dict[str, Any]]:
  """Restore the newest (or given) checkpoint onto ``abstract_state``'s shardings.

  Raises :class:`CheckpointError` (and touches nothing) when it is corrupt or does not fit.
  """
  step = manager.latest_step() if step is None else step
  try:
    with _quiet_cancelled_reads():
      restored = manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
  except Exception as e:  # orbax raises many types for corrupt / mismatched trees
    hint = ""
    if "opt_state" in str(e):
      hint = (" The optimizer-state layout follows config.optim.flat_update (flat vector when "
              "True, one entry per parameter when False): a checkpoint written with the other "
              "setting resumes with --config.optim.flat_update=<that setting>.")
    first_line = (str(e).strip().splitlines() or [""])[0]
    first_line = first_line if len(first_line) <= 200 else first_line[:200] + " ..."
    older = sorted((s for s in manager.all_steps() if s < step), reverse=True)
    if older:
      hint += (f" Older checkpoints in this workdir: steps {older[:5]}; moving step {step} "
               f"away resumes from step {older[0]}.")
    raise CheckpointError(
        f"checkpoint {step} in {manager.directory} is corrupt or incompatible with this config "
        f"({type(e).__name__}: {first_line}); it is left untouched — move it away or use "
        f"another --workdir.{hint}") from e
  return restored["state"], restored["meta"]


def checkpoint_remat(manager: ocp.CheckpointManager, step: Optional[int] = None) -> Optional[bool]:
  """Whether checkpoint ``step`` (default: the newest) holds residual blocks named as with
  ``model.remat=True`` (``CheckpointResnetBlock...``), False if named without, None if it has
  no residual blocks or its metadata cannot be read."""
  step = manager.latest_step() if step is None else step
  try:  # the tree metadata of the state item (the manager needs no handler registered for it)
    meta = ocp.StandardCheckpointHandler().metadata(
        epath.Path(str(manager.directory)) / str(step) / "state")
    keys = list(getattr(meta, "tree", meta)["params"].keys())
  except Exception:  # pylint: disable=broad-except  # (the restore then names what is wrong)
    return None
  if any(str(k).startswith("CheckpointResnetBlock") for k in keys):
    return True
  return False if any(str(k).startswith("ResnetBlock") for k in keys) else None


def convert_remat_names(source: "Setup", target: "Setup", state: TrainState) -> TrainState:
  """``state`` of ``source``'s network with its residual blocks named as ``target`` names them
  (the two configs differ in ``model.remat`` only). Parameters, EMA and optimizer state keep
  their values; a flat optimizer state (``optim.flat_update``) is reordered to the target's
  flat layout, whose tree-flatten order the renaming changes."""
  remat = bool(target.config.model.get("remat", False))
  rename = lambda tree: jax.tree_util.tree_map(
      lambda d: layers.remat_param_names(d, remat) if isinstance(d, dict) else d, tree,
      is_leaf=lambda x: isinstance(x, dict))
  opt_state = state.opt_state
  if source.flat_update:
    _, unravel = source.flat_layout()
    ravel, _ = target.flat_layout()
    n = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(state.params))
    opt_state = jax.tree_util.tree_map(
        lambda v: ravel(rename(unravel(v))) if v.ndim == 1 and v.shape[0] == n else v, opt_state)
  else:
    opt_state = rename(opt_state)
  return state.replace(params=rename(state.params), ema_params=rename(state.ema_params),
                       opt_state=opt_state)


def restore_state(manager: ocp.CheckpointManager, setup: "Setup", mesh,
                  step: Optional[int] = None) -> Tuple[TrainState, Dict[str, Any]]:
  """:func:`restore_checkpoint` of ``setup``'s replicated state on ``mesh``; a checkpoint
  written with the other ``model.remat`` setting is restored with its own block names and
  converted (:func:`convert_remat_names`), so that a run can resume with remat turned on (less
  memory) or off (faster)."""
  step = manager.latest_step() if step is None else step
  repl = parallel.replicated(mesh)

  def abstract(s):
    shapes = jax.eval_shape(s.init_state, jax.random.PRNGKey(s.config.seed))
    return jax.tree_util.tree_map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=repl), shapes)

  remat = bool(setup.config.model.get("remat", False))
  saved = checkpoint_remat(manager, step)
  if saved is None or saved == remat:
    return restore_checkpoint(manager, abstract(setup), step)
  config = ml_collections.ConfigDict(setup.config.to_dict())
  config.model.remat = saved
  source = Setup(config)
  state, meta = restore_checkpoint(manager, abstract(source), step)
  state = jax.jit(lambda st: convert_remat_names(source, setup, st), out_shardings=repl)(state)
  log(f"checkpoint {step} was written with model.remat={saved}: its residual blocks are renamed "
      f"for model.remat={remat}")
  return state, meta


# --------------------------------------------------------------------------------------------------
# metrics
# --------------------------------------------------------------------------------------------------
class MetricWriter:
  """JSON lines + TensorBoard events under the workdir (host 0 only).

  With ``start_step`` (a run starting or resuming there), what an interrupted earlier attempt
  logged after that step is dropped first (metrics.jsonl lines, TensorBoard's ``purge_step``): the
  resumed run logs those steps again, and each step keeps one line. Non-finite values are
  written as ``null`` (strict JSON).
  """

  def __init__(self, workdir: str, start_step: Optional[int] = None):
    self.active = jax.process_index() == 0
    self.path = os.path.join(workdir, "metrics.jsonl")
    self.tb = None
    if self.active:
      os.makedirs(workdir, exist_ok=True)
      if start_step is not None:
        self._truncate(int(start_step))
      try:
        from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
        purge = {} if start_step is None else {"purge_step": int(start_step) + 1}
        self.tb = SummaryWriter(os.path.join(workdir, "tensorboard"), **purge)
      except ImportError:  # pragma: no cover - tensorboardX is a dependency
        self.tb = None

  def _truncate(self, start_step: int) -> None:
    """Drops the metrics.jsonl lines of steps after ``start_step`` (atomically)."""
    if not os.path.exists(self.path):
      return
    with open(self.path) as f:
      lines = f.readlines()
    kept = []
    for line in lines:
      try:
        if int(json.loads(line)["step"]) <= start_step:
          kept.append(line if line.endswith("\n") else line + "\n")
      except (ValueError, KeyError, TypeError):
        continue  # a line cut short by a crash
    if len(kept) != len(lines):
      tmp = f"{self.path}.tmp-{os.getpid()}"
      with open(tmp, "w") as f:
        f.writelines(kept)
      os.replace(tmp, self.path)

  def has_logged(self, step: int, prefix: str) -> bool:
    """Whether metrics.jsonl holds a value named ``prefix...`` at ``step`` (host 0's answer;
    False on the other hosts)."""
    if not (self.active and os.path.exists(self.path)):
      return False
    with open(self.path) as f:
      for line in f:
        try:
          record = json.loads(line)
          if int(record["step"]) == step and any(k.startswith(prefix) for k in record):
            return True
        except (ValueError, KeyError, TypeError):
          continue
    return False

  def write(self, step: int, scalars: Dict[str, float]) -> None:
    """Appends ``scalars`` at ``step`` to metrics.jsonl (and TensorBoard when available)."""
    if not self.active:
      return
    from jaxgen.evaluate import json_safe  # pylint: disable=import-outside-toplevel
    line = json_safe({"step": int(step), **{k: float(v) for k, v in scalars.items()}})
    with open(self.path, "a") as f:
      f.write(json.dumps(line, allow_nan=False) + "\n")
    if self.tb is not None:
      for k, v in scalars.items():
        self.tb.add_scalar(k, float(v), int(step))
      self.tb.flush()

  def close(self):
    """Closes the TensorBoard writer."""
    if self.tb is not None:
      self.tb.close()


def log(msg: str) -> None:
  """Prints ``msg`` on process 0, flushed."""
  if jax.process_index() == 0:
    print(msg, flush=True)


# --------------------------------------------------------------------------------------------------
# the loop
# --------------------------------------------------------------------------------------------------
class _Preemption:
  """SIGTERM/SIGINT turn into a flag the loop polls: it saves a checkpoint and exits cleanly."""

  def __init__(self):
    self.requested = False
    self._old = {}

  def __enter__(self):
    for sig in (signal.SIGTERM, signal.SIGINT):
      try:
        self._old[sig] = signal.signal(sig, self._handler)
      except ValueError:  # not in the main thread
        pass
    return self

  def _handler(self, signum, frame):  # pylint: disable=unused-argument
    self.requested = True

  def __exit__(self, *exc):
    for sig, old in self._old.items():
      signal.signal(sig, old)


def _sync_flag(flag: bool) -> bool:
  """True on every host if it is true on any (so all hosts stop at the same step)."""
  if jax.process_count() == 1:
    return flag
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
  return bool(np.max(multihost_utils.process_allgather(np.asarray([int(flag)]))))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       evaluate_fn: Optional[Callable] = None) -> Dict[str, Any]:
  """Train (resuming from the workdir if it holds checkpoints); returns a summary dict.

  ``evaluate_fn(setup, state, step, workdir, mesh) -> dict`` is called every
  ``training.eval_every`` steps and at the end (see :mod:`jaxgen.evaluate`).
  """
  validate_config(config)
  mesh = parallel.make_mesh()
  local_batch = parallel.check_global_batch(config.training.batch_size, mesh,
                                            "config.training.batch_size")
  setup = Setup(config)
  check_workdir_compatible(workdir, config, resume_training=True)
  check_pairs_compatible(config)
  train_ds = data_lib.get_dataset(config.data, config.data.train_split, seed=config.seed)

  repl = parallel.replicated(mesh)
  manager = make_checkpoint_manager(workdir, config)
  writer = None
  # The checkpoint manager (its async threads) and the metric writer are closed on every exit:
  # a failed restore, a raised NonFiniteLossError or an interrupt included.
  try:
    if manager.latest_step() is not None:
      state, _ = restore_state(manager, setup, mesh)
      log(f"resumed from {manager.directory} at step {int(state.step)}")
    else:
      state = jax.jit(setup.init_state, out_shardings=repl)(jax.random.PRNGKey(config.seed))
    write_config(workdir, config)

    # With optim.flat_update the loop carries parameters and EMA as flat vectors; trees are made
    # only to save and evaluate (checkpoints keep the tree layout).
    train_step, to_carry, as_tree = make_sharded_train_step(setup, mesh)
    carry = to_carry(state)
    n_params = models.count_params(state.params)
    del state
    training = config.training
    n_iters = int(training.n_iters)
    start = int(carry.step)
    writer = MetricWriter(workdir, start_step=start if start < n_iters else None)
    log(f"training {config.model.name} ({n_params:,} parameters) on "
        f"{config.data.dataset} with {jax.device_count()} device(s), steps {start} -> {n_iters}")
    if data_parallel_mode(config, mesh) == "shard_map":
      log(f"data parallel: shard_map, the float32 gradient all-reduced in "
          f"{len(setup.allreduce_buckets())} piece(s)")
    else:
      log("data parallel: gspmd (XLA partitions the global-batch step)")

    def evaluate_and_log(step, tree):
      """``evaluate_fn``'s results at ``step``, their numbers written to the metrics."""
      results = evaluate_fn(setup, tree, step, workdir, mesh)
      writer.write(step, {f"eval/{k}": v for k, v in results.items()
                          if isinstance(v, (int, float))})
      return results

    summary: Dict[str, Any] = {"start_step": start}
    already_done = start >= n_iters
    if already_done:  # e.g. a requeued job of a finished run: keep what that run reported
      log(f"already trained to step {start} (config.training.n_iters = {n_iters}); nothing to "
          f"train: raise training.n_iters to continue")
      previous = _read_summary(workdir)
      if previous is not None and not (previous.get("final_step") == start
                                       and not previous.get("stopped_early")):
        previous = None  # another (shorter) run's summary: not this step's results
      if previous is not None:
        summary = {**previous, "already_complete": True}
      elif evaluate_fn is not None and training.eval_every:
        log(f"no train_summary.json of the run that reached step {start}: running its final "
            f"evaluation")
        summary.update(evaluate_and_log(start, as_tree(carry)), eval_step=start)
    elif (start > 0 and evaluate_fn is not None and training.eval_every
          and start % training.eval_every == 0
          and _sync_flag(not writer.has_logged(start, "eval/") and writer.active)):
      # The checkpoint of an evaluation step is saved before its evaluation: a run killed during
      # that evaluation (a preemption's grace period is shorter than most evaluations) resumes
      # here, and the evaluation is run now rather than lost.
      log(f"the periodic evaluation of step {start} did not finish before the run stopped: "
          f"running it")
      summary.update(evaluate_and_log(start, as_tree(carry)), eval_step=start)
    # The first call compiles the step (tens of seconds for a large network on a GPU, less from
    # the persistent cache): say so, and how long it took, before the first loss line.
    if start < n_iters:
      log("compiling the train step (its first call)")
    t_start = time.time()
    # The rate and ETA count training time only: the interval since the last log line starts
    # after the first step's compile, and evaluation and blocking saves are taken out of it.
    t_last, step_last = time.time(), start
    losses_since, aux_since = [], []
    step = start
    stopped_early = False
    snapshot_every = int(training.snapshot_every)

    def check_finite_updates():
      """Raise, saving nothing, when a step since the last check had a non-finite loss."""
      bad = int(carry.bad_step)
      if bad >= 0 and training.nonfinite == "error":
        manager.wait_until_finished()
        raise NonFiniteLossError(
            f"non-finite loss at step {bad} (config.training.nonfinite='error'); its update "
            f"was dropped and the last good checkpoint "
            f"({manager.latest_step()}) in {manager.directory} is kept")

    with _Preemption() as preemption:
      while step < n_iters:
        batch = train_ds.get_batch(step, local_batch)
        batch = parallel.host_local_to_global(batch, mesh)
        carry, metrics = train_step(carry, batch)
        if step == start:
          jax.block_until_ready(metrics)
          summary["first_step_seconds"] = time.time() - t_start
          log(f"first train step (compile and run): {summary['first_step_seconds']:.1f} s")
          t_last, step_last = time.time(), start + 1
        step += 1
        losses_since.append(metrics["loss"])
        if "aux" in metrics:
          aux_since.append(metrics["aux"])
        at_log = step % training.log_every == 0 or step == n_iters
        # snapshot_every multiples are saved too (orbax's keep_period keeps them for good).
        at_save = (step % training.preemption_every == 0 or step == n_iters
                   or (snapshot_every > 0 and step % snapshot_every == 0))
        if at_log or at_save:
          check_finite_updates()
        if at_log:
          now = time.time()
          loss_mean = float(jnp.mean(jnp.stack(losses_since)))
          # The loss's scalar aux values (a CNF: nll, nfe, kinetic, jacobian, end_time), averaged
          # over the steps since the last log line as the loss is.
          aux_means = {f"train/{k}": float(jnp.mean(jnp.stack([a[k] for a in aux_since])))
                       for k in (aux_since[0] if aux_since else {})}
          losses_since, aux_since = [], []
          if step == step_last:  # only the first step since: its time includes the compile
            t_last, step_last = t_start, start
          rate = (step - step_last) * config.training.batch_size / max(now - t_last, 1e-9)
          eta = (n_iters - step) * (now - t_last) / max(step - step_last, 1)
          log(f"step {step:>7d}/{n_iters}  loss {loss_mean:.4f}  {rate:,.0f} img/s  "
              f"ETA {_fmt_seconds(eta)}")
          writer.write(step, {"train/loss": loss_mean, "train/images_per_second": rate,
                              "train/grad_norm": float(metrics["grad_norm"]), **aux_means})
          t_last, step_last = now, step
          summary["train_loss"] = loss_mean
        tree = None
        saved_now = False
        t_pause = time.time()
        if at_save:
          tree = as_tree(carry)
          saved_now = save_checkpoint(manager, tree, step)
        if evaluate_fn is not None and training.eval_every and (
            step % training.eval_every == 0 or step == n_iters):
          tree = as_tree(carry) if tree is None else tree
          summary.update(evaluate_and_log(step, tree), eval_step=step)
        t_last += time.time() - t_pause
        too_long = (training.max_wall_seconds and time.time() - t_start > training.max_wall_seconds)
        # Single host: react at once. Several hosts: agree (one small all-gather) at log steps only.
        # At n_iters the run has finished (saved and evaluated): a stop request then changes
        # nothing, and the run is not reported as stopped early.
        check_now = (jax.process_count() == 1 or at_log) and step < n_iters
        if check_now and _sync_flag(preemption.requested or bool(too_long)):
          why = "preemption signal" if preemption.requested else "time limit"
          check_finite_updates()  # a non-finite step since the last check: raise, do not save
          # A step just saved (n_iters, a preemption_every multiple) is not saved again: orbax
          # refuses a second save of a step (StepAlreadyExistsError).
          if saved_now or manager.latest_step() == step:
            log(f"stopping at step {step} ({why}); its checkpoint is already saved")
          else:
            log(f"stopping at step {step} ({why}); saving a checkpoint")
            save_checkpoint(manager, as_tree(carry), step, force=True)
          stopped_early = True
          break
        del tree
    manager.wait_until_finished()
  finally:
    manager.close()
    if writer is not None:
      writer.close()
  state = as_tree(carry)
  summary.update({"final_step": int(state.step), "stopped_early": stopped_early})
  if not (already_done and "wall_seconds" in summary):
    summary["wall_seconds"] = time.time() - t_start
  summary["state"] = state
  return summary


def _read_summary(workdir: str) -> Optional[Dict[str, Any]]:
  """``workdir/train_summary.json`` (what a finished run reported), or None."""
  path = os.path.join(workdir, "train_summary.json")
  try:
    with open(path) as f:
      summary = json.load(f)
  except (OSError, ValueError):
    return None
  return summary if isinstance(summary, dict) else None


def _fmt_seconds(s: float) -> str:
  s = int(max(s, 0))
  return f"{s // 3600:d}:{s % 3600 // 60:02d}:{s % 60:02d}"


def latest_checkpoint_step(workdir: str) -> Optional[int]:
  """The newest checkpoint step in ``workdir`` (None if there is none); creates nothing."""
  ckpt_dir = os.path.join(os.path.abspath(workdir), "checkpoints")
  if not os.path.isdir(ckpt_dir):
    return None
  manager = ocp.CheckpointManager(ckpt_dir, options=ocp.CheckpointManagerOptions(
      create=False, read_only=True), item_names=("state", "meta"))
  try:
    return manager.latest_step()
  finally:
    manager.close()


def load_state(config, workdir: str, mesh=None, step: Optional[int] = None) -> Tuple["Setup", TrainState]:
  """Build the experiment and restore its newest (or given) checkpoint from ``workdir``.

  Raises :class:`CheckpointError` if there is none or it does not fit the config.
  """
  validate_config(config, training=False)
  mesh = mesh or parallel.make_mesh()
  setup = Setup(config)
  check_workdir_compatible(workdir, config)
  ckpt_dir = os.path.join(os.path.abspath(workdir), "checkpoints")
  if not os.path.isdir(ckpt_dir):
    raise CheckpointError(f"no checkpoints in {ckpt_dir}: train first (--mode=train)")
  manager = ocp.CheckpointManager(ckpt_dir, options=ocp.CheckpointManagerOptions(
      create=False, read_only=True), item_names=("state", "meta"))
  try:  # closed on the error paths too, as in train_and_evaluate
    if manager.latest_step() is None:
      raise CheckpointError(f"no checkpoints in {ckpt_dir}: train first (--mode=train)")
    state, _ = restore_state(manager, setup, mesh, step)
  finally:
    manager.close()
  return setup, state
