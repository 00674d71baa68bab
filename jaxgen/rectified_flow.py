"""Rectified flow (Liu, Gong & Liu 2022): reflow, distillation, straightness, minibatch-OT coupling.

Convention of jaxgen's linear path: ``x_t = (1 - t) x + t z`` with data ``x`` at ``t = 0`` and
noise ``z`` at ``t = 1``; the velocity regressed is ``dx_t/dt = z - x`` and samples are drawn by
integrating ``dx/dt = v(x, t)`` from ``t = 1`` down to ``t = 0``.

The pieces, each on the shared core (processes, solvers, likelihood, train loop):

* **1-rectified flow**: ``method='flow'`` with ``process.name='linear'`` and a velocity network
  (:func:`jaxgen.losses.flow_matching_loss`; ``training.time_sampling`` is ``uniform`` or
  ``logit_normal``). :func:`source_path` swaps the ``N(0, I)`` end for a 2-D toy source
  (``config.data.source='toy_8gaussians'``): the source is the path's prior, so training, sampling
  and likelihood all use it. :func:`make_coupled_flow_loss_fn` adds minibatch-OT coupling
  (``training.coupling='minibatch_ot'``).
* **Reflow**: :func:`generate_pairs` solves ``x = ODE(z)`` (adaptive Dopri5 by default) in jitted
  batches sharded over every device of every host and writes ``.npz`` chunks to a directory
  (:mod:`jaxgen.data.pairs`), resumably; :func:`run_reflow` (``--mode=reflow``) does it for the
  trained flow of a workdir. The k-rectified flow is trained on the pairs by ``--mode=train`` with
  ``config.data.pairs_dir`` set (the pairs replace the training split), or warm-started from the
  previous flow by ``--mode=distill`` with ``method='flow'`` (as Liu et al. fine-tune). A
  class-conditional teacher draws a class per pair; the pairs keep it for a class-conditional
  student.
* **Distillation**: ``method='distill'`` trains an ``n``-step Euler generator
  ``x_hat = Euler_n(v_theta; z)`` (``n = config.distill.num_steps``; ``n = 1`` is
  ``x_hat = z - v_theta(z, 1)``) on ``|x - x_hat|^2`` over the pairs of a teacher
  (:func:`make_distill_loss_fn`, :func:`make_distilled_sample_fn`, :func:`run_distill`).
* **Measures**: :func:`trajectory_statistics` gives the straightness
  ``S = E int_0^1 |(z - x) - dx_s/ds|^2 ds`` along the ODE trajectory, its time rescaled to
  ``s in [0, 1]`` (Liu et al. 2022, Def. 3.2)
  and the transport cost ``E |x - z|^2``; :func:`sliced_wasserstein_distance` compares samples.
* **Likelihood**: :func:`log_likelihood` is :func:`jaxgen.likelihood.ode_log_likelihood` with the
  path's prior; bits/dim of a flow come from ``--mode=eval`` like every other model.

Minibatch OT (Tong et al. 2023, OT-CFM) needs an assignment inside the jitted step. An exact
assignment (Hungarian, ``scipy.optimize.linear_sum_assignment``) cannot be traced, and doing it on
the host would see integer image levels before dequantization and scaling. We solve the entropic
OT problem of the minibatch with a log-domain Sinkhorn (``ot_iters`` iterations, regularisation
``ot_reg`` relative to the mean cost) on the device and draw each data point's partner from its
row of the plan, so the pairing follows the plan's joint law (with a small ``ot_reg`` it is close
to the exact assignment). It runs on the global batch, whatever the sharding.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxgen._checks import check_int
from jaxgen import likelihood, losses, parallel, predictions, solvers
from jaxgen._jit import jit_with_callables
from jaxgen.closed_form import GaussianMixture
from jaxgen.data import pairs as pairs_lib
from jaxgen.data import toy
from jaxgen.processes import LinearPath, Process

Array = jax.Array
VelocityFn = Callable[..., Array]  # (params, x, t) -> v; a class-conditional one also takes labels
DriftFn = Callable[[Array, Array], Array]

COUPLINGS = ("independent", "minibatch_ot")
SOURCES = tuple("toy_" + name for name in toy.TOY_DATASETS)
PAIRS_SUBDIR = "reflow_pairs"


# --------------------------------------------------------------------------------------------------
# a linear path from a toy source
# --------------------------------------------------------------------------------------------------
def eight_gaussians_mixture() -> GaussianMixture:
  """The ``8gaussians`` toy set of :mod:`jaxgen.data.toy` as an exact Gaussian mixture."""
  angles = np.arange(8) * math.pi / 4.0
  means = 4.0 / 1.414 * np.stack([np.cos(angles), np.sin(angles)], axis=-1)
  covs = np.broadcast_to((0.5 / 1.414) ** 2 * np.eye(2), (8, 2, 2)).copy()
  return GaussianMixture(np.full((8,), 1.0 / 8.0), means, covs)


@dataclasses.dataclass(frozen=True)
class SourceLinearPath(LinearPath):
  """The linear path ``x_t = (1 - t) x + t z`` with ``z`` drawn from a 2-D toy set, not N(0, I).

  ``source`` is ``toy_<name>`` (:data:`SOURCES`). The source is the prior at ``t = 1``:
  :meth:`prior_sample` draws it (training noise, sampling, reflow pairs) and :meth:`prior_logp` is
  its exact log-density where one is known (``toy_8gaussians``), so likelihoods work too.
  """
  source: str = "toy_8gaussians"

  def __post_init__(self):
    if self.source not in SOURCES:
      raise ValueError(f"unknown source {self.source!r}; expected one of {SOURCES}")

  def prior_sample(self, key: Array, shape) -> Array:
    """``shape = (batch, 2)`` samples of the source."""
    shape = tuple(int(s) for s in shape)
    if len(shape) != 2 or shape[1] != 2:
      raise ValueError(f"source {self.source!r} is 2-D: samples must have shape (batch, 2), "
                       f"got {shape}")
    return toy.sample_toy(self.source[len("toy_"):], key, shape[0])

  def prior_logp(self, z: Array) -> Array:
    """Exact log-density of the source, ``(batch, 2)`` -> ``(batch,)``."""
    if self.source != "toy_8gaussians":
      raise ValueError(f"source {self.source!r} has no closed-form density; likelihoods need "
                       f"N(0, I) or 'toy_8gaussians'")
    return eight_gaussians_mixture().logp(z)


def source_path(config) -> Process:
  """The process of a config whose ``data.source`` names the ``t = 1`` end.

  ``''`` or ``'normal'``: :class:`~jaxgen.processes.LinearPath` (N(0, I)); ``'toy_<name>'``:
  :class:`SourceLinearPath`. Needs ``process.name == 'linear'``.
  """
  source = str(config.data.get("source", "") or "")
  if config.process.name != "linear":
    raise ValueError(f"config.data.source={source!r} needs process.name 'linear', got "
                     f"{config.process.name!r}")
  if source in ("", "normal"):
    return LinearPath()
  return SourceLinearPath(source)


# --------------------------------------------------------------------------------------------------
# minibatch optimal-transport coupling
# --------------------------------------------------------------------------------------------------
def sinkhorn_log_plan(cost: Array, reg: float, num_iters: int) -> Array:
  """Log of the entropic OT plan between uniform marginals, by log-domain Sinkhorn.

  Args:
    cost: ``(n, m)`` transport costs.
    reg: entropic regularisation (same units as ``cost``), ``> 0``.
    num_iters: Sinkhorn iterations (each one updates both potentials).
  Returns:
    ``(n, m)`` ``log pi``, ``pi`` with rows summing to ``1/n`` and columns to ``1/m`` at
    convergence.
  """
  n, m = cost.shape
  kernel = -cost / reg
  log_a, log_b = -math.log(n), -math.log(m)

  def body(_, potentials):
    f, g = potentials
    f = log_a - jax.nn.logsumexp(kernel + g[None, :], axis=1)
    g = log_b - jax.nn.logsumexp(kernel + f[:, None], axis=0)
    return f, g

  f, g = jax.lax.fori_loop(0, num_iters, body,
                           (jnp.zeros((n,), cost.dtype), jnp.zeros((m,), cost.dtype)))
  return kernel + f[:, None] + g[None, :]


def minibatch_ot_coupling(key: Array, x: Array, z: Array, *, reg: float = 0.05,
                          num_iters: int = 200) -> Array:
  """Re-pair noise with data along the entropic OT plan of the minibatch (OT-CFM).

  The cost is ``|x_i - z_j|^2`` divided by its mean (so ``reg`` is relative); each ``x_i`` gets
  ``z_j`` with ``j ~ pi(j | i)``.

  Args:
    key: PRNG key of the draw from the plan.
    x: data ``(batch, ...)``; z: noise ``(batch, ...)``.
    reg: entropic regularisation relative to the mean cost, ``> 0``.
    num_iters: Sinkhorn iterations.
  Returns:
    the re-paired noise ``(batch, ...)`` (rows of ``z``).
  """
  if x.shape != z.shape:
    raise ValueError(f"x and z must have the same shape (batch, ...), got {x.shape} and {z.shape}")
  if not reg > 0:
    raise ValueError(f"the OT regularisation must be positive, got {reg!r}")
  n = x.shape[0]
  xf = x.reshape(n, -1).astype(jnp.float32)
  zf = z.reshape(n, -1).astype(jnp.float32)
  cost = (jnp.sum(xf**2, -1)[:, None] + jnp.sum(zf**2, -1)[None, :] - 2.0 * xf @ zf.T)
  cost = jnp.maximum(cost, 0.0)
  cost = jax.lax.stop_gradient(cost / jnp.maximum(jnp.mean(cost), 1e-12))
  log_plan = sinkhorn_log_plan(cost, reg, check_int(num_iters, "`num_iters`"))
  partner = jax.random.categorical(key, log_plan, axis=1)
  return z[partner]


def make_coupled_flow_loss_fn(config, setup) -> Callable:
  """Flow-matching loss whose noise is re-paired with the data (``training.coupling``).

  ``'independent'``: :func:`jaxgen.losses.flow_matching_loss` as is (which refuses pairs whose
  shapes differ, :func:`jaxgen.losses.check_pair_shapes`). ``'minibatch_ot'``: the noise
  is drawn from the path's prior and coupled by :func:`minibatch_ot_coupling` (``training.ot_reg``,
  ``training.ot_iters``) before the loss; batches that carry their own ``noise`` (reflow pairs)
  are left as they are. Returns ``loss(params, key, batch, train=True) -> (loss, aux)``.
  """
  training = config.training
  coupling = training.get("coupling", "independent")
  if coupling not in COUPLINGS:
    raise ValueError(f"unknown config.training.coupling {coupling!r}; expected one of {COUPLINGS}")
  if config.method not in ("flow", "rectified_flow"):
    raise ValueError(f"config.training.coupling={coupling!r} needs method 'flow', got "
                     f"{config.method!r}")
  base = losses.flow_matching_loss(setup.model_fn, setup.process, setup.prediction,
                                   time_sampling=training.get("time_sampling", "uniform"),
                                   eps=training.eps, reduce_mean=training.reduce_mean)
  if coupling == "independent":
    return base
  reg, num_iters = float(training.get("ot_reg", 0.05)), int(training.get("ot_iters", 200))
  if not reg > 0 or num_iters <= 0:
    raise ValueError(f"config.training.ot_reg={reg} and ot_iters={num_iters} must be positive")
  process = setup.process

  def loss_fn(params, key, batch, train: bool = True):
    if "noise" in batch:  # base checks the pairs' shapes
      return base(params, key, batch, train)
    k_z, k_plan, k_loss = jax.random.split(key, 3)
    x = batch["image"]
    if isinstance(process, LinearPath):   # N(0, I) or the source of a SourceLinearPath
      z = process.prior_sample(k_z, x.shape)
    else:
      z = jax.random.normal(k_z, x.shape, jnp.float32)
    z = minibatch_ot_coupling(k_plan, x, z, reg=reg, num_iters=num_iters)
    return base(params, k_loss, {**batch, "noise": z}, train)

  return loss_fn


# --------------------------------------------------------------------------------------------------
# n-step Euler generators and distillation
# --------------------------------------------------------------------------------------------------
def euler_generate(drift_fn: DriftFn, z: Array, process: Process,
                   num_steps: int = 1) -> Tuple[Array, Array]:
  """``num_steps`` uniform Euler steps of ``dx/dt = drift_fn(x, t)`` from ``t = T`` to ``t_min``.

  With one step on the linear path this is ``x = z - v(z, 1)``. Differentiable (used as the
  distilled generator in training and sampling alike).

  Args:
    drift_fn: ``(batch, ...)``, ``(batch,)`` -> ``(batch, ...)``.
    z: prior samples ``(batch, ...)``.
    process: gives ``T`` and ``t_min``.
    num_steps: number of Euler steps (= network evaluations).
  Returns:
    ``(x (batch, ...), nfe)``.
  """
  return solvers.solve_ode(drift_fn, z, float(process.T), float(process.t_min), solver="euler",
                           num_steps=num_steps)


def _distill_steps(config) -> int:
  return check_int(config.get("distill", {}).get("num_steps", 1), "config.distill.num_steps")


def make_distill_loss_fn(config, setup) -> Callable:
  """Distillation loss of an ``n``-step Euler generator on reflow pairs ``(z, x)``.

  ``|x - Euler_n(v_theta; z)|^2`` (mean over dimensions if ``training.reduce_mean``, else sum),
  ``n = config.distill.num_steps``; for ``n = 1``, ``|x - (z - v_theta(z, 1))|^2``. Batches without
  ``noise`` (held-out real data in the periodic evaluation) get the flow-matching loss of
  ``v_theta`` instead, since they have no partner for the generator.

  Returns ``loss(params, key, batch, train=True) -> (loss, {'loss_per_example': (batch,)})``.
  """
  num_steps = _distill_steps(config)
  process, model_fn, prediction = setup.process, setup.model_fn, setup.prediction
  reduce_mean = bool(config.training.reduce_mean)
  fallback = losses.flow_matching_loss(model_fn, process, prediction,
                                       time_sampling=config.training.get("time_sampling",
                                                                         "uniform"),
                                       eps=config.training.eps, reduce_mean=reduce_mean)

  def loss_fn(params, key, batch, train: bool = True):
    if "noise" not in batch:
      return fallback(params, key, batch, train)
    losses.check_pair_shapes(batch)
    x, z = batch["image"], batch["noise"]
    labels = batch.get("label")
    network = lambda y, t: model_fn(params, y, t, train=train, key=key, labels=labels)
    drift_fn = predictions.as_drift_fn(process, network, prediction)
    x_hat, _ = euler_generate(drift_fn, z, process, num_steps)
    flat = jnp.square(x_hat - x).reshape(x.shape[0], -1)
    per_example = jnp.mean(flat, -1) if reduce_mean else jnp.sum(flat, -1)
    return jnp.mean(per_example), {"loss_per_example": per_example}

  return loss_fn


def make_distilled_sample_fn(setup, sampling_config) -> Callable:
  """``sample_fn(params, key, n) -> (samples (n, *shape), nfe)`` of a distilled generator:
  ``config.distill.num_steps`` Euler steps from the prior (the number of steps is part of the
  distilled model, so ``sampling_config`` gives only ``class_label``). A class-conditional
  generator samples classes as the other samplers do
  (:func:`jaxgen.evaluate.draw_class_labels`: uniform, or all ``sampling_config.class_label``)."""
  from jaxgen import evaluate  # pylint: disable=import-outside-toplevel
  num_steps = _distill_steps(setup.config)
  process, model_fn, prediction = setup.process, setup.model_fn, setup.prediction
  num_classes = int(setup.config.model.get("num_classes", 0) or 0)
  class_label = int(sampling_config.get("class_label", -1))

  def sample_fn(params, key, n):
    key, labels = evaluate.draw_class_labels(key, n, num_classes, class_label)
    z = process.prior_sample(key, (n,) + tuple(setup.shape))
    network = lambda x, t: model_fn(params, x, t, labels=labels)
    drift_fn = predictions.as_drift_fn(process, network, prediction)
    return euler_generate(drift_fn, z, process, num_steps)

  return sample_fn


# --------------------------------------------------------------------------------------------------
# straightness, transport cost, distances, likelihood
# --------------------------------------------------------------------------------------------------
@jit_with_callables(static_argnames=("num_points", "steps_per_point", "solver"),
                    callable_argnames=("drift_fn",))
def _trajectory(drift_fn, z, t_start, t_end, *, num_points, steps_per_point, solver):
  batch = z.shape[0]
  times = jnp.linspace(t_start, t_end, num_points + 1)

  def segment(x, t_pair):
    t, s = t_pair
    velocity = drift_fn(x, jnp.full((batch,), t, x.dtype))
    x_next, nfe = solvers.solve_ode(drift_fn, x, t, s, solver=solver, num_steps=steps_per_point)
    return x_next, (velocity, nfe)

  x_end, (velocities, nfes) = jax.lax.scan(segment, z, (times[:-1], times[1:]))
  last = drift_fn(x_end, jnp.full((batch,), t_end, x_end.dtype))
  velocities = jnp.concatenate([velocities, last[None]], axis=0)    # (K + 1, batch, ...)
  # On the rescaled time s in [0, 1] (Liu et al.'s), the straight line's velocity is z - x and the
  # trajectory's is (t_start - t_end) v: the deviation carries the span squared.
  span = t_start - t_end
  chord = z - x_end
  deviation = jnp.sum(jnp.square(chord[None] - span * velocities).reshape(num_points + 1, batch,
                                                                           -1), -1)
  weights = jnp.ones((num_points + 1,)).at[0].set(0.5).at[-1].set(0.5) / num_points
  straightness = jnp.sum(weights[:, None] * deviation, axis=0)       # trapezoid on [0, 1]
  transport_cost = jnp.sum(jnp.square(x_end - z).reshape(batch, -1), -1)
  return x_end, straightness, transport_cost, jnp.sum(nfes) + num_points + 1


def trajectory_statistics(drift_fn: DriftFn, z: Array, process: Process = LinearPath(), *,
                          t_end: Optional[float] = None, num_points: int = 64,
                          steps_per_point: int = 1, solver: str = "rk4") -> Dict[str, Array]:
  """Follow ``dx/dt = drift_fn(x, t)`` from ``z`` at ``t = T`` to ``t_end``; measure its shape.

  The trajectory is solved with ``solver`` (``steps_per_point`` steps) between ``num_points + 1``
  uniform times; the velocity is evaluated at each of them. With ``x`` the end point:

  * ``straightness = int_0^1 |(z - x) - dx/ds|^2 ds`` with the time rescaled to ``s in [0, 1]``
    (``dx/ds = (T - t_end) v(x_t, t)``; trapezoid rule over the grid), Liu et al. (2022)'s ``S``,
    in the units of ``transport_cost`` whatever the time span (``|z - x|^2``, not per unit time
    squared); zero exactly when the trajectory is a straight line run at constant speed;
  * ``transport_cost = |x - z|^2``.

  Args:
    drift_fn: velocity ``(batch, ...)``, ``(batch,)`` -> ``(batch, ...)``. A plain function is
      compiled once per function object; a ``jax.tree_util.Partial(apply, params)`` once per
      structure (its arrays are traced; see ``jaxgen._jit``).
    z: starting points ``(batch, ...)`` (prior samples).
    process: gives ``T`` and the default ``t_end = t_min``.
    num_points: number of grid segments.
    steps_per_point: solver steps per segment.
    solver: a fixed-step solver of :func:`jaxgen.solvers.solve_ode` (``euler``, ``heun``, ``rk4``).
  Returns:
    dict ``x (batch, ...)``, ``straightness (batch,)``, ``transport_cost (batch,)`` (both summed
    over dimensions) and ``nfe`` (int32, per trajectory).
  """
  if solver not in solvers.FIXED_STEP_SOLVERS:
    raise ValueError(f"solver {solver!r} must be a fixed-step solver {solvers.FIXED_STEP_SOLVERS}")
  num_points = check_int(num_points, "`num_points`")
  steps_per_point = check_int(steps_per_point, "`steps_per_point`")
  if jnp.ndim(z) < 2:
    raise ValueError(f"`z` must have shape (batch, ...) with at least one data axis, got shape "
                     f"{jnp.shape(z)}")
  t_end = float(process.t_min) if t_end is None else float(t_end)
  if not float(process.t_min) <= t_end < float(process.T):
    raise ValueError(f"`t_end` must lie in [t_min, T) = [{process.t_min}, {process.T}) of "
                     f"{type(process).__name__}, got {t_end}")
  x, straightness, cost, nfe = _trajectory(drift_fn, z, jnp.float32(process.T),
                                           jnp.float32(t_end), num_points=int(num_points),
                                           steps_per_point=int(steps_per_point), solver=solver)
  return {"x": x, "straightness": straightness, "transport_cost": cost, "nfe": nfe}


def sliced_wasserstein_distance(key: Array, a: Array, b: Array,
                                num_projections: int = 256) -> Array:
  """Sliced 2-Wasserstein distance between two equal-size samples.

  ``sqrt(E_theta W_2^2(theta . a, theta . b))`` with ``theta`` uniform on the sphere
  (``num_projections`` directions drawn from ``key``); 1-D ``W_2`` between empirical measures of
  equal size is the RMS difference of the sorted projections.

  Args:
    key: PRNG key of the directions.
    a, b: ``(n, ...)`` samples (flattened per example).
    num_projections: number of directions.
  Returns:
    scalar float32.
  """
  a = jnp.asarray(a, jnp.float32).reshape(a.shape[0], -1)
  b = jnp.asarray(b, jnp.float32).reshape(b.shape[0], -1)
  if a.shape != b.shape:
    raise ValueError(f"samples must have equal shapes (n, d), got {a.shape} and {b.shape}")
  theta = jax.random.normal(key, (a.shape[1], check_int(num_projections, "`num_projections`")))
  theta = theta / jnp.linalg.norm(theta, axis=0, keepdims=True)
  pa, pb = jnp.sort(a @ theta, axis=0), jnp.sort(b @ theta, axis=0)
  return jnp.sqrt(jnp.mean(jnp.square(pa - pb)))


def log_likelihood(drift_fn: DriftFn, x: Array, process: Process = LinearPath(), *,
                   key: Optional[Array] = None, t0: Optional[float] = None,
                   divergence: str = "exact", **kwargs):
  """Log-likelihood of data ``x`` ``(batch, ...)`` under a flow, with the path's prior at ``T``.

  :func:`jaxgen.likelihood.ode_log_likelihood` from ``t0`` (default ``process.t_min``, i.e. 0 on
  the linear path) to ``process.T``; ``kwargs`` go through (``solver``, ``rtol``, ``atol``, ...).
  Returns ``(logp (batch,) nats, z (batch, ...), nfe)``.
  """
  t0 = float(process.t_min) if t0 is None else float(t0)
  return likelihood.ode_log_likelihood(drift_fn, x, key=key, prior_logp=process.prior_logp, t0=t0,
                                       t1=float(process.T), divergence=divergence, **kwargs)


# --------------------------------------------------------------------------------------------------
# reflow pairs
# --------------------------------------------------------------------------------------------------
# The classes of a class-conditional teacher's pairs come from ``fold_in(key, LABEL_STREAM)``.
# Not ``fold_in(key, 1)``: with jax's partitionable threefry that equals ``split(key, n)[1]``, a
# key that the prior's own sampler may draw from (a toy source splits its key), so the classes
# would have been a function of the same bits as the noise.
LABEL_STREAM = 2**31 - 1
# meta.json fields that must agree for a generation to be resumed in the same directory.
_RESUME_FIELDS = ("format", "num_pairs", "chunk_size", "batch_size", "num_chunks", "shape", "seed",
                  "solver", "rtol", "atol", "num_steps", "eps", "process", "metadata",
                  "num_classes")


# ``metadata`` keys that ``run_reflow`` records since a later version (the data scaling,
# :func:`jaxgen.data.pairs.data_scaling`): a generation begun without them still resumes.
_LATER_METADATA_KEYS = tuple(pairs_lib.data_scaling({"dataset": "images"}))


def _same_field(old_meta, meta, field) -> bool:
  """Whether a resumed generation's ``meta.json`` (``old_meta``) agrees with ``meta`` on ``field``."""
  if field == "num_classes":  # absent: an unconditional teacher
    return pairs_lib.num_classes(old_meta) == pairs_lib.num_classes(meta)
  old, new = old_meta.get(field), meta[field]
  if field == "metadata" and isinstance(old, dict) and isinstance(new, dict):
    new = {k: v for k, v in new.items() if k in old or k not in _LATER_METADATA_KEYS}
  return old == new


def _broadcast_from_host0(mask: np.ndarray) -> np.ndarray:
  if jax.process_count() == 1:
    return mask
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
  return np.asarray(multihost_utils.broadcast_one_to_all(mask))


def _progress(total, initial, desc, enabled):
  if not enabled or jax.process_index() != 0:
    return None
  try:
    from tqdm import tqdm  # pylint: disable=import-outside-toplevel
    return tqdm(total=total, initial=initial, desc=desc, leave=True, mininterval=2.0)
  except ImportError:  # pragma: no cover
    return None


def chunk_key(seed: int, chunk: int, batch: int = 0) -> Array:
  """PRNG key of batch ``batch`` of chunk ``chunk``: ``fold_in(fold_in(PRNGKey(seed), chunk),
  batch)``; a chunk's pairs depend on nothing else, so any subset of chunks can be (re)made."""
  return jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(seed), chunk), batch)


def generate_pairs(velocity_fn: VelocityFn, params: Any, process: Process, shape: Sequence[int],
                   directory: str, *, num_pairs: int, chunk_size: int = 1000,
                   batch_size: Optional[int] = None, seed: int = 0, solver: str = "dopri5",
                   rtol: float = 1e-5, atol: float = 1e-5, num_steps: int = 100,
                   eps: float = 1e-3, mesh=None, max_chunks: Optional[int] = None,
                   progress: bool = True, metadata: Optional[Dict[str, Any]] = None,
                   compiler_options: Optional[Dict[str, Any]] = None,
                   num_classes: int = 0) -> Dict[str, Any]:
  """Coupled pairs ``(z, x = ODE(z))`` of a flow, written resumably in chunks to ``directory``.

  Chunk ``c`` holds pairs ``[c chunk_size, (c + 1) chunk_size)``, made in ``chunk_size //
  batch_size`` jitted calls; call ``b`` draws ``z = process.prior_sample(chunk_key(seed, c, b),
  (batch_size, *shape))`` and solves ``dx/dt = velocity_fn(params, x, t)`` from ``T`` to ``eps``
  with ``solver``, the batch sharded over every device of the mesh (all hosts). Host 0 writes each
  finished chunk atomically (:mod:`jaxgen.data.pairs`). A directory that already holds chunks of
  the same generation (same ``meta.json`` fields) is completed: only missing chunks are made, so
  an interrupted run resumed yields exactly the pairs of an uninterrupted one (on the same number
  of devices: an adaptive solve's error norm is a reduction over the batch).

  A class-conditional teacher (``num_classes > 0``) is solved as
  ``velocity_fn(params, x, t, labels)`` with classes ``labels`` ``(batch_size,)`` drawn uniformly
  from ``fold_in(chunk_key(seed, c, b), LABEL_STREAM)`` (so ``z`` is the same as for an
  unconditional teacher); each chunk stores them as ``y`` and ``meta.json`` records
  ``num_classes``.

  Args:
    velocity_fn: ``velocity_fn(params, x, t) -> (batch, ...)`` (the probability-flow drift; with
      ``num_classes`` ``velocity_fn(params, x, t, labels)``); keep one function object per model,
      it keys the compilation cache.
    params: its parameters (placed replicated on the mesh).
    process: gives ``T``, the prior sampler and is recorded in ``meta.json``.
    shape: shape of one example, e.g. ``(2,)`` or ``(32, 32, 3)``.
    directory: where ``meta.json`` and ``chunk_XXXXXX.npz`` go.
    num_pairs: pairs in total; the last chunk may be shorter.
    chunk_size: pairs per chunk file; a multiple of ``batch_size``.
    batch_size: global batch of one solve (default ``chunk_size``); a multiple of the device count.
    seed: seed of the noise.
    solver, rtol, atol, num_steps: as in :func:`jaxgen.solvers.solve_ode` (adaptive Dopri5 by
      default; ``num_steps`` for the fixed-step solvers).
    eps: final time of the solve, in ``[process.t_min, process.T)``.
    mesh: device mesh (default :func:`jaxgen.parallel.make_mesh`).
    max_chunks: make at most this many new chunks, then return (a time-limited job).
    progress: show a progress bar (host 0).
    metadata: JSON-serialisable facts that must match on resume (e.g. the model's step).
    compiler_options: XLA options of the jitted solve (e.g.
      :func:`jaxgen.parallel.autotune_options`); not part of ``meta.json``.
    num_classes: classes of a class-conditional teacher (0: unconditional, no labels).
  Returns:
    dict ``directory``, ``num_chunks``, ``generated`` (chunks made now), ``skipped`` (present
    before), ``complete``, ``mean_nfe`` (of the chunks made now), ``seconds``.
  """
  num_pairs = check_int(num_pairs, "`num_pairs`")
  chunk_size = check_int(chunk_size, "`chunk_size`")
  batch_size = chunk_size if batch_size is None else check_int(batch_size, "`batch_size`")
  if chunk_size % batch_size:
    raise ValueError(f"`chunk_size` ({chunk_size}) must be a multiple of `batch_size` "
                     f"({batch_size})")
  if solver not in solvers.SOLVERS:
    raise ValueError(f"unknown solver {solver!r}; expected one of {solvers.SOLVERS}")
  if max_chunks is not None:
    max_chunks = check_int(max_chunks, "`max_chunks`", minimum=0, note=" or None")
  num_classes = check_int(num_classes, "`num_classes`", minimum=0, note=" (0: unconditional)")
  if not float(process.t_min) <= float(eps) < float(process.T):
    raise ValueError(f"`eps` must lie in [t_min, T) = [{process.t_min}, {process.T}) of "
                     f"{type(process).__name__}, got {eps!r}")
  mesh = parallel.make_mesh() if mesh is None else mesh
  parallel.check_global_batch(batch_size, mesh, "batch_size")
  shape = tuple(int(s) for s in shape)
  num_chunks = -(-num_pairs // chunk_size)
  directory = os.fspath(directory)
  meta = {"format": pairs_lib.FORMAT_VERSION, "num_pairs": num_pairs, "chunk_size": chunk_size,
          "batch_size": batch_size, "num_chunks": num_chunks, "shape": list(shape),
          "seed": int(seed), "solver": solver, "rtol": float(rtol), "atol": float(atol),
          "num_steps": int(num_steps), "eps": float(eps), "process": repr(process),
          "metadata": json.loads(json.dumps(metadata or {}))}
  if num_classes:  # absent for an unconditional teacher: its meta.json is as before
    meta["num_classes"] = num_classes

  if os.path.exists(os.path.join(directory, pairs_lib.META_FILE)):
    old = pairs_lib.read_meta(directory)
    diffs = [k for k in _RESUME_FIELDS if not _same_field(old, meta, k)]
    if diffs:
      shown = lambda m, k: (pairs_lib.num_classes(m) if k == "num_classes" else m.get(k))
      detail = "; ".join(f"{k}: {shown(old, k)!r} there, {shown(meta, k)!r} now" for k in diffs)
      raise ValueError(f"pairs directory {directory!r} holds another generation ({detail}); "
                       f"use another directory or the same settings")
  if jax.process_index() == 0:
    os.makedirs(directory, exist_ok=True)
    pairs_lib.remove_partial_files(directory)
    if not os.path.exists(os.path.join(directory, pairs_lib.META_FILE)):
      pairs_lib.write_meta(directory, {**meta, "created": time.time()})
  missing = np.zeros((num_chunks,), np.bool_)
  missing[pairs_lib.missing_chunks(directory, num_chunks)] = True
  todo = np.flatnonzero(_broadcast_from_host0(missing)).tolist()

  repl, sharded = parallel.replicated(mesh), parallel.batch_sharded(mesh)
  if jax.process_count() == 1:
    params = jax.device_put(params, repl)
  example_shape = (batch_size,) + shape

  def generate(params, key):
    z = jax.lax.with_sharding_constraint(process.prior_sample(key, example_shape), sharded)
    if num_classes:
      labels = jax.random.randint(jax.random.fold_in(key, LABEL_STREAM), (batch_size,), 0,
                                  num_classes)
      labels = jax.lax.with_sharding_constraint(labels, sharded)
      drift_fn = lambda x, t: velocity_fn(params, x, t, labels)
    else:
      labels = None  # no labels to gather
      drift_fn = lambda x, t: velocity_fn(params, x, t)
    x, nfe = solvers.solve_ode(drift_fn, z, float(process.T), float(eps), solver=solver,
                               num_steps=num_steps, rtol=rtol, atol=atol)
    return z, x, labels, nfe

  run = parallel.jit(generate, compiler_options, in_shardings=(repl, repl),
                     out_shardings=(sharded, sharded, sharded if num_classes else None, repl))
  bar = _progress(num_chunks, num_chunks - len(todo), "reflow pairs", progress)
  t_start, made, nfes = time.time(), 0, []
  for chunk in todo:
    if max_chunks is not None and made >= max_chunks:
      break
    zs, xs, ys, chunk_nfe = [], [], [], []
    for b in range(chunk_size // batch_size):
      key = jax.device_put(chunk_key(seed, chunk, b), repl)
      z, x, y, nfe = run(params, key)
      zs.append(parallel.to_host(z))
      xs.append(parallel.to_host(x))
      if num_classes:
        ys.append(parallel.to_host(y))
      chunk_nfe.append(int(nfe))
    size = min(chunk_size, num_pairs - chunk * chunk_size)
    if jax.process_index() == 0:
      pairs_lib.write_chunk(directory, chunk, np.concatenate(zs)[:size],
                            np.concatenate(xs)[:size], np.asarray(chunk_nfe, np.int32),
                            labels=np.concatenate(ys)[:size] if num_classes else None)
    made += 1
    nfes.extend(chunk_nfe)
    if bar is not None:
      bar.update(1)
      bar.set_postfix(nfe=chunk_nfe[-1])
  if bar is not None:
    bar.close()
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
    multihost_utils.sync_global_devices("jaxgen reflow pairs written")
  left = len(todo) - made
  return {"directory": directory, "num_chunks": num_chunks, "generated": made,
          "skipped": num_chunks - len(todo), "complete": left == 0,
          "mean_nfe": float(np.mean(nfes)) if nfes else 0.0, "seconds": time.time() - t_start}


def velocity_fn_from_setup(setup) -> VelocityFn:
  """``velocity_fn(params, x, t, labels=None)``: the probability-flow drift of a trained model of a
  :class:`jaxgen.train.Setup` (any prediction type; a velocity network as it is); ``labels``
  ``(batch,)`` int: the classes of a class-conditional network."""
  process, model_fn, prediction = setup.process, setup.model_fn, setup.prediction

  def velocity_fn(params, x, t, labels=None):
    network = lambda y, s: model_fn(params, y, s, labels=labels)
    return predictions.as_drift_fn(process, network, prediction)(x, t)

  return velocity_fn


def pairs_directory(config, workdir: str) -> str:
  """Where ``--mode=reflow`` writes: ``config.reflow.pairs_dir`` or ``<workdir>/reflow_pairs``."""
  reflow = config.get("reflow", {})
  return str(reflow.get("pairs_dir", "") or "") or os.path.join(workdir, PAIRS_SUBDIR)


def run_reflow(config, workdir: str) -> Dict[str, Any]:
  """``--mode=reflow``: pairs ``(z, ODE(z))`` of the flow trained in ``workdir`` (EMA parameters).

  Reads ``config.reflow``: ``num_pairs``, ``chunk_size``, ``batch_size``, ``seed``, ``solver``,
  ``rtol``, ``atol``, ``num_steps``, ``eps``, ``pairs_dir`` (default ``<workdir>/reflow_pairs``),
  ``max_chunks`` (0: all). Resumes an interrupted generation. Returns the summary of
  :func:`generate_pairs` (also written to ``<pairs_dir>/summary.json``).
  """
  from jaxgen import evaluate, train  # pylint: disable=import-outside-toplevel
  if config.method in ("distill", "cnf"):
    raise ValueError(f"--mode=reflow needs a flow or score model (config.method 'flow' or "
                     f"'score'), got {config.method!r}")
  if "reflow" not in config:
    raise ValueError("--mode=reflow needs a config.reflow section (see configs/rectified_flow)")
  num_classes = int(config.model.get("num_classes", 0) or 0)
  reflow = config.reflow
  mesh = parallel.make_mesh()
  setup, state = train.load_state(config, workdir, mesh)
  directory = pairs_directory(config, workdir)
  max_chunks = int(reflow.get("max_chunks", 0)) or None
  classes = f", classes drawn uniformly from {num_classes}" if num_classes else ""
  train.log(f"reflow: {reflow.num_pairs} pairs of the model at step {int(state.step)} in "
            f"{workdir} -> {directory} ({reflow.solver}, {parallel.describe(mesh)}{classes})")
  summary = generate_pairs(
      velocity_fn_from_setup(setup), state.ema_params, setup.process, setup.shape, directory,
      num_pairs=int(reflow.num_pairs), chunk_size=int(reflow.chunk_size),
      batch_size=int(reflow.get("batch_size", 0)) or None, seed=int(reflow.get("seed", 0)),
      solver=str(reflow.solver), rtol=float(reflow.rtol), atol=float(reflow.atol),
      num_steps=int(reflow.num_steps), eps=float(reflow.eps), mesh=mesh, max_chunks=max_chunks,
      metadata={"model_step": int(state.step), "method": config.method,
                "model": str(config.model.name), **pairs_lib.data_scaling(config.data)},
      compiler_options=evaluate.xla_options(config), num_classes=num_classes)
  if jax.process_index() == 0:
    with open(os.path.join(directory, "summary.json"), "w") as f:
      json.dump(summary, f, indent=1)
  train.log(f"reflow: {summary['generated']} chunks made, {summary['skipped']} already there, "
            f"complete={summary['complete']}, mean NFE {summary['mean_nfe']:.1f}")
  return summary


# --------------------------------------------------------------------------------------------------
# warm start and --mode=distill
# --------------------------------------------------------------------------------------------------
def load_workdir_config(workdir: str):
  """The config a workdir was trained with (its ``config.json``) as a ``ConfigDict``."""
  import ml_collections  # pylint: disable=import-outside-toplevel
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise ValueError(f"{path} does not exist: {workdir!r} is not the workdir of a trained run")
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f)["config"])


def warm_start(config, workdir: str, init_workdir: str) -> bool:
  """Write a step-0 checkpoint into ``workdir`` whose parameters (and EMA) are the EMA parameters
  of the run in ``init_workdir``; a fresh optimizer state. The train loop then starts from it.

  Does nothing (returns False) if ``workdir`` already holds a checkpoint, so a resumed run
  continues. The config (:func:`jaxgen.train.validate_config`), the workdir and the teacher's
  network are checked before anything is written: a bad config or another network (ValueError)
  leaves no checkpoint, ``config.json`` or empty ``checkpoints/`` behind.
  """
  from jaxgen import train  # pylint: disable=import-outside-toplevel
  train.validate_config(config)
  step = train.latest_checkpoint_step(workdir)
  if step is not None:
    train.log(f"{workdir} already holds a checkpoint (step {step}): continuing from it, not "
              f"warm-starting again")
    return False
  train.check_workdir_compatible(workdir, config, resume_training=True)
  mesh = parallel.make_mesh()
  repl = parallel.replicated(mesh)
  _, teacher = train.load_state(load_workdir_config(init_workdir), init_workdir, mesh)
  setup = train.Setup(config)
  state = jax.jit(setup.init_state, out_shardings=repl)(jax.random.PRNGKey(config.seed))
  mine = jax.tree_util.tree_map(lambda a: (a.shape, a.dtype), state.params)
  theirs = jax.tree_util.tree_map(lambda a: (a.shape, a.dtype), teacher.ema_params)
  if jax.tree_util.tree_structure(mine) != jax.tree_util.tree_structure(theirs) or (
      jax.tree_util.tree_leaves(mine) != jax.tree_util.tree_leaves(theirs)):
    classes = (int(load_workdir_config(init_workdir).model.get("num_classes", 0) or 0),
               int(config.model.get("num_classes", 0) or 0))
    hint = (f" (the teacher has num_classes={classes[0]}, config.model.num_classes="
            f"{classes[1]}: a warm-started student keeps its teacher's classes; an unconditional "
            f"student of labelled pairs trains from scratch with --mode=train and "
            f"config.data.pairs_dir)" if classes[0] != classes[1] else "")
    raise ValueError(f"the model of {init_workdir!r} does not match config.model "
                     f"({config.model.name!r}); a warm start needs the same network{hint}")
  params = teacher.ema_params
  state = state.replace(params=params, ema_params=jax.tree_util.tree_map(jnp.copy, params),
                        opt_state=jax.jit(setup.init_opt_state, out_shardings=repl)(params))
  manager = train.make_checkpoint_manager(workdir, config)
  try:
    train.write_config(workdir, config)
    if jax.process_index() == 0:  # before the checkpoint: a checkpoint never lacks its teacher
      with open(os.path.join(workdir, WARM_START_FILE), "w") as f:
        json.dump({"init_workdir": os.path.realpath(init_workdir),
                   "teacher_step": int(teacher.step)}, f)
    train.save_checkpoint(manager, state, 0, force=True)
    manager.wait_until_finished()
    train.log(f"warm start: {workdir} starts from the EMA parameters of {init_workdir} "
              f"(step {int(teacher.step)})")
    return True
  finally:
    manager.close()


WARM_START_FILE = "warm_start.json"


def _check_same_teacher(workdir: str, init_workdir: str) -> None:
  """A student workdir that was warm-started from another teacher is refused (its checkpoints
  hold that teacher's parameters); the teacher is recorded in ``workdir/warm_start.json``."""
  from jaxgen import train  # pylint: disable=import-outside-toplevel
  path = os.path.join(workdir, WARM_START_FILE)
  if train.latest_checkpoint_step(workdir) is None or not os.path.exists(path):
    return
  with open(path) as f:
    recorded = json.load(f).get("init_workdir")
  if recorded and os.path.realpath(recorded) != os.path.realpath(init_workdir):
    raise train.CheckpointError(
        f"workdir {workdir} was warm-started from the teacher {recorded!r}, not from "
        f"config.reflow.init_workdir = {init_workdir!r}; it is left untouched (use another "
        f"--workdir, or the teacher it started from)")


def run_distill(config, workdir: str) -> Dict[str, Any]:
  """``--mode=distill``: train on a teacher's reflow pairs, warm-started from the teacher.

  ``config.reflow.init_workdir`` is the teacher's workdir; the pairs are ``config.data.pairs_dir``
  or, if empty, ``<init_workdir>/reflow_pairs`` (make them with ``--mode=reflow`` there). With
  ``method='distill'`` this trains the ``config.distill.num_steps``-step generator; with
  ``method='flow'`` the k-rectified flow fine-tuned from the (k-1)-rectified one, as Liu et al.
  Returns the training summary (also in ``<workdir>/train_summary.json``).
  """
  from jaxgen import evaluate, train  # pylint: disable=import-outside-toplevel
  init = str(config.get("reflow", {}).get("init_workdir", "") or "")
  if not init:
    raise ValueError("--mode=distill needs config.reflow.init_workdir: the workdir of the teacher "
                     "flow to start from")
  config = config.copy_and_resolve_references()
  with config.unlocked():
    if not config.data.get("pairs_dir", ""):
      config.data.pairs_dir = os.path.join(init, PAIRS_SUBDIR)
  meta = pairs_lib.read_meta(config.data.pairs_dir)  # fails early, naming the directory
  # Before the warm start writes its step-0 checkpoint and config.json: a bad config, pairs of
  # another shape or noise source, or an unfinished generation leave the workdir untouched.
  train.validate_config(config)
  train.check_pairs_compatible(config)
  missing = pairs_lib.missing_chunks(config.data.pairs_dir, meta["num_chunks"])
  if missing:
    raise ValueError(f"the reflow pairs in {config.data.pairs_dir!r} are not finished: chunks "
                     f"{missing[:8]}{' ...' if len(missing) > 8 else ''} of {meta['num_chunks']} "
                     f"are missing (finish them with --mode=reflow in the teacher's workdir)")
  _check_same_teacher(workdir, init)
  warm_start(config, workdir, init)
  summary = train.train_and_evaluate(config, workdir,
                                     evaluate_fn=evaluate.make_periodic_evaluation(config))
  summary.pop("state")
  evaluate.write_json(os.path.join(workdir, "train_summary.json"), summary)
  return summary
