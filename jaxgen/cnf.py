"""Continuous normalizing flows (FFJORD, Grathwohl et al. 2019) with RNODE regularization
(Finlay et al. 2020), on the shared likelihood routine.

A CNF block moves an example ``x`` (data side, ``s = 0``) to ``z`` (prior side, ``s = 1``) along
``dx/ds = g(x, s) = T f(params, x, T s)``: the network ``f`` is integrated over ``t in [0, T]``,
rewritten on the unit interval so that the end time ``T`` (learnable, as FFJORD's
``sqrt_end_time ** 2``) is an ordinary differentiable parameter. The log-density change
``log p(x) = log p(z) + int_0^1 div g ds`` comes from :func:`jaxgen.likelihood.ode_log_likelihood`
(the routine the probability-flow ODE uses) with the exact divergence (small ``D``) or
Hutchinson's estimator. Gradients flow either by backpropagation through the solver
(``adjoint='backprop'``, diffrax's ``RecursiveCheckpointAdjoint``) or by the continuous adjoint
(``adjoint='backsolve'``, ``BacksolveAdjoint``); the block's parameters travel as the solve's
``drift_args`` so both see them.

RNODE's regularizers are integrated along the same trajectory (``extra_fn`` of the likelihood
routine), with RNODE's per-dimension normalisation, per example, over the block's own time
``[0, T]`` as Finlay et al. (and ffjord-rnode, which integrates ``f`` over ``[0, T]``) define them:

* kinetic energy  ``K = int_0^T 0.5 |f|^2 / D dt = (1 / T) int_0^1 0.5 |g|^2 / D ds``;
* Jacobian norm   ``B = int_0^T |df/dx|_F^2 / D dt = (1 / T) int_0^1 |dg/dx|_F^2 / D ds`` (exact
  from the ``D`` Jacobian columns, or ``|(dg/dx) eps|^2`` with the Hutchinson probe, unbiased).

Both grow linearly with ``T`` (a constant field ``v``: ``K = 0.5 |v|^2 T / D``; a linear field
``A x``: ``B = |A|_F^2 T / D``). The unit-interval integrals alone would be ``T`` times larger
(``T^2`` growth), which penalises a learnable end time more than RNODE does.

The loss is ``NLL + kinetic_energy * mean K + jacobian_norm2 * mean B`` (summed over blocks).

A *flow* chains CNF blocks with fixed bijections (FFJORD's multiscale image model: logit input,
squeezes, factor-outs); its layout comes from the model (see :mod:`jaxgen.models.ffjord`). Any
Flax model ``model.apply({'params': p}, x, t)`` without a layout is used as one CNF block with a
fixed end time, so the CNF can be defined by any vector field ``f(params, x, t)``
(:func:`vector_field_flow`).

Config (``config.cnf``, defaults in :func:`default_cnf_config`): ``divergence``, ``num_probes``,
``solver``, ``rtol``, ``atol``, ``max_steps``, ``error_norm``, ``adjoint``, ``backsolve_norm``,
``kinetic_energy``, ``jacobian_norm2``, ``loss_units``.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import diffrax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxgen._checks import check_int, check_positive_number, is_int
from jaxgen import likelihood
from jaxgen import solvers

Array = jax.Array
VectorField = Callable[[Any, Array, Array], Array]

ADJOINTS = ("backprop", "backsolve")
BACKSOLVE_NORMS = ("rms", "seminorm")
LOSS_UNITS = ("auto", "nats", "bits_per_dim")
STEP_KINDS = ("cnf", "logit", "shift", "squeeze", "factor_out")
_LOG_2PI = math.log(2.0 * math.pi)


def default_cnf_config() -> ml_collections.ConfigDict:
  """``config.cnf`` with FFJORD's training defaults (dopri5, rtol = atol = 1e-5, exact
  divergence, adjoint method off, no regularization)."""
  cnf = ml_collections.ConfigDict()
  cnf.divergence = "exact"        # exact | rademacher | gaussian (training)
  cnf.num_probes = 1              # Hutchinson probes per example
  cnf.solver = "dopri5"           # dopri5 | tsit5 (adaptive) or euler | heun | midpoint | ralston
                                  # | rk4 (fixed-step, with num_steps)
  cnf.num_steps = 0               # steps of a fixed-step solver on [0, 1] (0 with an adaptive one)
  cnf.rtol = 1e-5
  cnf.atol = 1e-5
  cnf.max_steps = 4096            # step budget of one block's solve
  cnf.error_norm = "mixed_rms"    # step-size norm: mixed_rms (torchdiffeq's) | rms | per_example
  cnf.adjoint = "backprop"        # backprop (through the solver) | backsolve (adjoint method)
  cnf.backsolve_norm = "rms"      # rms (full) | seminorm (Kidger et al. 2021) for the adjoint solve
  cnf.kinetic_energy = 0.0        # RNODE lambda_K
  cnf.jacobian_norm2 = 0.0        # RNODE lambda_J
  cnf.loss_units = "auto"         # auto (nats for vectors, bits/dim for images) | nats | bits_per_dim
  return cnf


# --------------------------------------------------------------------------------------------------
# solver options
# --------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class SolveOptions:
  """How one CNF block is solved (hashable; built once per loss / nll function).

  ``throw``: raise when an adaptive solve fails (``max_steps`` exhausted, non-finite state), as
  diffrax does (training); ``False`` gives that batch NaN log-densities instead, which the
  evaluation counts in ``num_failed`` (:func:`jaxgen.evaluate.evaluate_likelihood`).
  """
  divergence: str = "exact"
  num_probes: int = 1
  solver: str = "dopri5"
  num_steps: Optional[int] = None
  rtol: float = 1e-5
  atol: float = 1e-5
  max_steps: int = 4096
  error_norm: str = "mixed_rms"
  adjoint: str = "backprop"
  backsolve_norm: str = "rms"
  checkpoints: int = 0
  throw: bool = True

  def __post_init__(self):
    if self.divergence not in likelihood.DIVERGENCES:
      raise ValueError(f"unknown cnf divergence {self.divergence!r}; expected one of "
                       f"{likelihood.DIVERGENCES}")
    if self.adjoint not in ADJOINTS:
      raise ValueError(f"unknown cnf adjoint {self.adjoint!r}; expected one of {ADJOINTS}")
    if self.backsolve_norm not in BACKSOLVE_NORMS:
      raise ValueError(f"unknown cnf backsolve_norm {self.backsolve_norm!r}; expected one of "
                       f"{BACKSOLVE_NORMS}")
    if self.error_norm not in likelihood.ERROR_NORMS:
      raise ValueError(f"unknown cnf error_norm {self.error_norm!r}; expected one of "
                       f"{sorted(likelihood.ERROR_NORMS)}")
    check_int(self.num_probes, "cnf num_probes")
    check_int(self.max_steps, "cnf max_steps")
    check_int(self.checkpoints, "cnf checkpoints", minimum=0)
    # The likelihood routine's solver tables (its own check runs only when a solve is traced).
    if self.solver in likelihood.ADAPTIVE_SOLVERS:
      for name in ("rtol", "atol"):
        value = getattr(self, name)
        if isinstance(value, (bool, str)) or not value > 0:
          raise ValueError(f"cnf {name} must be > 0 for the adaptive solver {self.solver!r}, "
                           f"got {value!r}")
      if self.num_steps is not None:
        raise ValueError(f"cnf num_steps={self.num_steps!r} sets a fixed-step solver's grid, but "
                         f"{self.solver!r} picks its own steps (rtol/atol): set num_steps=0, or "
                         f"a fixed-step solver {sorted(likelihood.FIXED_SOLVERS)}")
    elif self.solver in likelihood.FIXED_SOLVERS:
      if not is_int(self.num_steps) or self.num_steps < 1:
        raise ValueError(f"cnf solver {self.solver!r} is fixed-step: it needs num_steps, a "
                         f"positive int, got {self.num_steps!r}")
    else:
      raise ValueError(f"unknown cnf solver {self.solver!r}; expected one of "
                       f"{sorted(likelihood.ADAPTIVE_SOLVERS)} (adaptive) or "
                       f"{sorted(likelihood.FIXED_SOLVERS)} (fixed-step, with num_steps)")

  @classmethod
  def from_config(cls, cfg, **overrides) -> "SolveOptions":
    """From ``config.cnf`` (training) or ``config.eval`` / ``config.sampling`` (missing fields
    keep the defaults)."""
    get = cfg.get if hasattr(cfg, "get") else lambda k, d=None: getattr(cfg, k, d)
    kwargs = {}
    for field in dataclasses.fields(cls):
      value = get(field.name, None)
      if value is not None:
        kwargs[field.name] = value
    kwargs.update(overrides)
    # Counts become Python ints when they are integers; anything else (2.5, True) reaches the
    # checks above unchanged and is refused there, not truncated by int().
    if "num_steps" in kwargs:
      kwargs["num_steps"] = check_int(kwargs["num_steps"], "cnf num_steps", minimum=0,
                                      note=" (0: the adaptive solver's own steps)") or None
    for name in ("rtol", "atol"):
      if name in kwargs:
        kwargs[name] = float(kwargs[name])
    for name in ("num_probes", "max_steps", "checkpoints"):
      if name in kwargs and is_int(kwargs[name]):
        kwargs[name] = int(kwargs[name])
    return cls(**kwargs)


@functools.lru_cache(maxsize=None)
def _adjoint(options: SolveOptions) -> Optional[diffrax.AbstractAdjoint]:
  """The diffrax adjoint of ``options`` (one instance per options, so compiled solves are
  reused)."""
  if options.adjoint == "backprop":
    if options.checkpoints > 0:
      return diffrax.RecursiveCheckpointAdjoint(checkpoints=options.checkpoints)
    return None  # diffrax's default, RecursiveCheckpointAdjoint with O(sqrt(max_steps)) checkpoints
  if options.solver in likelihood.ADAPTIVE_SOLVERS:
    norm = {} if options.backsolve_norm == "rms" else {"norm": diffrax.adjoint_rms_seminorm}
    controller = diffrax.PIDController(rtol=options.rtol, atol=options.atol, **norm)
    solver = likelihood.ADAPTIVE_SOLVERS[options.solver]()
    return diffrax.BacksolveAdjoint(solver=solver, stepsize_controller=controller)
  return diffrax.BacksolveAdjoint(solver=likelihood.FIXED_SOLVERS[options.solver]())


# --------------------------------------------------------------------------------------------------
# one CNF block
# --------------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _rnode_extra_fn(exact: bool):
  """``extra_fn`` of the likelihood routine integrating RNODE's ``(K, B)`` integrands."""

  def extra_fn(x, t, drift, tangents, jvps):
    del t
    batch = x.shape[0]
    d = math.prod(x.shape[1:])
    kinetic = 0.5 * jnp.sum(jnp.square(drift.reshape(batch, -1)), axis=-1) / d
    sq = jnp.sum(jnp.square(jvps.reshape(jvps.shape[0], batch, -1)), axis=-1)  # (m, batch)
    frobenius = (jnp.sum(sq, axis=0) if exact else jnp.mean(sq, axis=0)) / d
    return jnp.stack([kinetic, frobenius], axis=-1)

  return extra_fn


@functools.lru_cache(maxsize=None)
def _unit_interval_drift(vector_field: VectorField):
  """``g(x, s, (params, T)) = T f(params, x, T s)``: a block on ``s in [0, 1]`` (cached per
  field so repeated calls reuse the compiled solve)."""

  def drift(x, s, args):
    params, end_time = args
    end_time = end_time.astype(x.dtype)
    return end_time * vector_field(params, x, end_time * s)

  return drift


def _zero_prior(z: Array) -> Array:
  return jnp.zeros(z.shape[:1], z.dtype if jnp.issubdtype(z.dtype, jnp.floating)
                   else jnp.float32)


def cnf_block(vector_field: VectorField, params: Any, x: Array, *, end_time=1.0,
              key: Optional[Array] = None, options: SolveOptions = SolveOptions(),
              regularize: bool = False) -> Tuple[Array, Array, Array, Optional[Array]]:
  """One CNF block from data (``t = 0``) to prior (``t = end_time``).

  Args:
    vector_field: ``f(params, x, t) -> (batch, ...)``, ``t`` of shape ``(batch,)``. Should be a
      long-lived function (module level or cached) so the compiled solve is reused.
    params: pytree the field depends on (differentiated by either adjoint).
    x: ``(batch, ...)``.
    end_time: ``T`` (Python float or scalar array, may be a learnable parameter).
    key: PRNG key for Hutchinson probes (unused for ``exact``).
    options: :class:`SolveOptions`.
    regularize: also integrate RNODE's kinetic energy and Jacobian norm.
  Returns:
    ``(z (batch, ...), log_det (batch,), nfe (int32), regs (batch, 2) or None)`` where
    ``log p(x) = log p(z) + log_det`` and ``regs[:, 0]``/``[:, 1]`` are ``K``/``B``, integrals
    over ``t in [0, end_time]`` (see the module docstring). A failed
    solve with ``options.throw=False`` gives ``log_det`` NaN for the whole batch.
  """
  drift = _unit_interval_drift(vector_field)
  end_time = jnp.asarray(end_time, jnp.promote_types(x.dtype, jnp.float32))
  if options.divergence != "exact" and key is None:
    raise ValueError(f"cnf_block with divergence={options.divergence!r} needs a PRNG `key`")
  extra_fn = _rnode_extra_fn(options.divergence == "exact") if regularize else None
  out = likelihood.ode_log_likelihood(
      drift, x, key=key, prior_logp=_zero_prior, t0=0.0, t1=1.0,
      divergence=options.divergence, num_probes=options.num_probes, solver=options.solver,
      rtol=options.rtol, atol=options.atol, num_steps=options.num_steps,
      max_steps=options.max_steps, adjoint=_adjoint(options), error_norm=options.error_norm,
      drift_args=(params, end_time), extra_fn=extra_fn, throw=options.throw)
  if regularize:
    log_det, z, nfe, regs = out
    # The solve integrates over s in [0, 1] with g = T f; RNODE's integrals over t in [0, T] are
    # 1/T of that (both integrands are quadratic in the field). T = 0 is the identity: no cost.
    positive = end_time > 0
    regs = jnp.where(positive, regs / jnp.where(positive, end_time, 1.0).astype(regs.dtype), 0.0)
  else:
    (log_det, z, nfe), regs = out, None
  return z, log_det, nfe, regs


def cnf_block_inverse(vector_field: VectorField, params: Any, z: Array, *, end_time=1.0,
                      options: SolveOptions = SolveOptions()) -> Tuple[Array, Array]:
  """The inverse of :func:`cnf_block`: solve from ``t = end_time`` back to ``0``.

  Returns ``(x (batch, ...), nfe)``; uses :func:`jaxgen.solvers.solve_ode` (dopri5/tsit5 with
  ``options.rtol``/``atol``, or a fixed-step solver with ``options.num_steps``).
  """
  drift = _unit_interval_drift(vector_field)
  end_time = jnp.asarray(end_time, jnp.promote_types(z.dtype, jnp.float32))
  fn = lambda y, s: drift(y, s, (params, end_time))
  solver = options.solver if options.solver in solvers.SOLVERS else "dopri5"
  return solvers.solve_ode(fn, z, 1.0, 0.0, solver=solver, rtol=options.rtol, atol=options.atol,
                           num_steps=options.num_steps or 100, max_steps=options.max_steps)


# --------------------------------------------------------------------------------------------------
# flows: CNF blocks chained with fixed bijections
# --------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Flow:
  """A chain of CNF blocks and fixed bijections, from data to a standard normal prior.

  Attributes:
    steps: layout tuples (see :mod:`jaxgen.models.ffjord`): ``("cnf", index, shape)``,
      ``("logit", alpha)``, ``("shift", value)``, ``("squeeze",)``, ``("factor_out",)``.
    velocity: ``velocity(block_params, x, t, index) -> (batch, ...)``, a long-lived function.
    block_params: ``block_params(params, index)``: the sub-tree block ``index`` depends on.
    end_time: ``end_time(params, index)``: block ``index``'s ``T`` (scalar).
  """
  steps: Tuple[tuple, ...]
  velocity: Callable
  block_params: Callable
  end_time: Callable

  def field(self, index: int) -> VectorField:
    """Block ``index``'s field as ``f(params, x, t)``."""
    return _block_field(self.velocity, index)

  @property
  def num_blocks(self) -> int:
    return sum(1 for s in self.steps if s[0] == "cnf")


@functools.lru_cache(maxsize=None)
def _block_field(velocity, index):
  return lambda p, x, t: velocity(p, x, t, index)


@functools.lru_cache(maxsize=None)
def _flax_fields(model):
  """Long-lived ``velocity`` / ``block_params`` / ``end_time`` for a Flax model (cached by the
  model, a hashable dataclass)."""
  if hasattr(model, "layout") and hasattr(model, "net_module"):
    nets = [model.net_module(i) for i in range(model.num_nets())]  # built outside any trace

    def velocity(p, x, t, index):
      return nets[index].apply({"params": p}, x, t)

    def block_params(params, index):
      return params[f"block_{index}"]

    def end_time(params, index):
      if getattr(model, "train_T", False):
        return jnp.square(params[f"sqrt_end_time_{index}"])
      return jnp.asarray(float(model.time_length), jnp.float32)

    return velocity, block_params, end_time

  def velocity(p, x, t, index):
    del index
    return model.apply({"params": p}, x, t)

  return velocity, (lambda params, index: params), None


def make_flow(model, data_shape: Sequence[int], time_length: float = 1.0) -> Flow:
  """The :class:`Flow` of a Flax model: its ``layout`` for FFJORD models, else one CNF block
  with the model's ``apply(x, t)`` as the field and fixed end time ``time_length``."""
  velocity, block_params, end_time = _flax_fields(model)
  if hasattr(model, "layout"):
    steps = tuple(model.layout(tuple(data_shape)))
  else:
    steps = (("cnf", 0, tuple(int(s) for s in data_shape)),)
  if end_time is None:
    t_fixed = _check_positive_time(time_length, "make_flow time_length (config.model.time_length)")
    end_time = lambda params, index: jnp.asarray(t_fixed, jnp.float32)
  for step in steps:
    if step[0] not in STEP_KINDS:
      raise ValueError(f"unknown flow step {step!r}; expected kinds {STEP_KINDS}")
  return Flow(steps, velocity, block_params, end_time)


def vector_field_flow(vector_field: VectorField, data_shape: Sequence[int],
                      end_time: float = 1.0, num_blocks: int = 1) -> Flow:
  """A flow of ``num_blocks`` CNF blocks sharing any field ``f(params, x, t)`` (``params`` is
  the whole tree), each integrated over ``[0, end_time]``."""
  shape = tuple(int(s) for s in data_shape)
  velocity = _shared_velocity(vector_field)
  t_fixed = _check_positive_time(end_time, "vector_field_flow end_time")
  return Flow(tuple(("cnf", i, shape) for i in range(num_blocks)), velocity,
              lambda params, index: params,
              lambda params, index: jnp.asarray(t_fixed, jnp.float32))


def _check_positive_time(value, name: str) -> float:
  return check_positive_number(value, name, note=" (a CNF block's integration time T)")


def _check_block_input(x: Array, step: tuple, direction: str) -> None:
  """The examples reaching CNF block ``step`` must have the shape the flow's layout gives it."""
  if len(step) > 2 and tuple(x.shape[1:]) != tuple(step[2]):
    raise ValueError(f"{direction}: CNF block {step[1]} of this flow acts on examples of shape "
                     f"{tuple(step[2])}, got {tuple(x.shape[1:])} (batch shape {tuple(x.shape)}); "
                     f"the data shape does not match the flow's")


@functools.lru_cache(maxsize=None)
def _shared_velocity(vector_field):
  return lambda p, x, t, index: vector_field(p, x, t)


def standard_normal_logp(z: Array) -> Array:
  """``log N(z; 0, I)`` per example ``(batch,)``."""
  flat = z.reshape(z.shape[0], -1)
  return -0.5 * jnp.sum(jnp.square(flat) + _LOG_2PI, axis=-1)


def squeeze(x: Array) -> Array:
  """``(b, H, W, C) -> (b, H/2, W/2, 4C)``: each 2x2 patch becomes channels, FFJORD's order
  (``lib/layers/squeeze.py``) in NHWC: ``out[b, i, j, 4 c + 2 dy + dx] = x[b, 2i + dy, 2j + dx,
  c]``, so a factor-out keeps the same dimensions as FFJORD's."""
  b, h, w, c = x.shape
  x = x.reshape(b, h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 5, 2, 4)
  return x.reshape(b, h // 2, w // 2, 4 * c)


def unsqueeze(x: Array) -> Array:
  """Inverse of :func:`squeeze`: ``(b, H, W, 4C) -> (b, 2H, 2W, C)``."""
  b, h, w, c4 = x.shape
  c = c4 // 4
  x = x.reshape(b, h, w, c, 2, 2).transpose(0, 1, 4, 2, 5, 3)
  return x.reshape(b, 2 * h, 2 * w, c)


def _logit(x: Array, alpha: float) -> Tuple[Array, Array]:
  s = alpha + (1.0 - 2.0 * alpha) * x
  y = jnp.log(s) - jnp.log1p(-s)
  log_det = math.log(1.0 - 2.0 * alpha) - jnp.log(s) - jnp.log1p(-s)
  return y, jnp.sum(log_det.reshape(x.shape[0], -1), axis=-1)


def _sigmoid(y: Array, alpha: float) -> Array:
  return (jax.nn.sigmoid(y) - alpha) / (1.0 - 2.0 * alpha)


def flow_log_likelihood(flow: Flow, params: Any, x: Array, *, key: Optional[Array] = None,
                        options: SolveOptions = SolveOptions(),
                        regularize: bool = False) -> Dict[str, Array]:
  """``log p(x)`` under the flow with a standard normal prior.

  Args:
    flow: :class:`Flow`; params: its parameter tree; x: ``(batch, *data_shape)``.
    key: PRNG key (Hutchinson probes; a fresh sub-key per block).
    options: :class:`SolveOptions`; regularize: integrate RNODE's ``K`` and ``B``.
  Returns:
    dict with ``logp (batch,)``, ``nfe`` (int32, summed over blocks), ``kinetic (batch,)``,
    ``jacobian (batch,)`` (zeros unless ``regularize``; summed over blocks), ``z`` (the
    concatenated prior-side vector ``(batch, D)``).
  """
  batch = x.shape[0]
  dtype = jnp.promote_types(x.dtype, jnp.float32)
  log_det = jnp.zeros((batch,), dtype)
  regs = jnp.zeros((batch, 2), dtype)
  nfe = jnp.zeros((), jnp.int32)
  pieces = []
  for step in flow.steps:
    kind = step[0]
    if kind == "cnf":
      _check_block_input(x, step, "flow_log_likelihood")
      index = step[1]
      sub = None
      if key is not None:
        key, sub = jax.random.split(key)
      x, ld, n, r = cnf_block(flow.field(index), flow.block_params(params, index), x,
                              end_time=flow.end_time(params, index), key=sub, options=options,
                              regularize=regularize)
      log_det, nfe = log_det + ld, nfe + n
      if r is not None:
        regs = regs + r
    elif kind == "logit":
      x, ld = _logit(x, step[1])
      log_det = log_det + ld
    elif kind == "shift":
      x = x + step[1]
    elif kind == "squeeze":
      x = squeeze(x)
    elif kind == "factor_out":
      c = x.shape[-1] // 2
      pieces.append(x[..., c:])
      x = x[..., :c]
    else:
      raise ValueError(f"unknown flow step {step!r}")
  pieces.append(x)
  logp = sum(standard_normal_logp(p) for p in pieces) + log_det
  z = jnp.concatenate([p.reshape(batch, -1) for p in pieces], axis=-1)
  return {"logp": logp, "nfe": nfe, "kinetic": regs[:, 0], "jacobian": regs[:, 1], "z": z}


def _piece_shapes(flow: Flow, data_shape: Sequence[int]) -> Tuple[Tuple[int, ...], ...]:
  shape = tuple(int(s) for s in data_shape)
  pieces = []
  for step in flow.steps:
    if step[0] == "squeeze":
      shape = (shape[0] // 2, shape[1] // 2, shape[2] * 4)
    elif step[0] == "factor_out":
      shape = shape[:-1] + (shape[-1] // 2,)
      pieces.append(shape)
  pieces.append(shape)
  return tuple(pieces)


def flow_sample(flow: Flow, params: Any, key: Array, n: int, data_shape: Sequence[int], *,
                options: SolveOptions = SolveOptions()) -> Tuple[Array, Array]:
  """``n`` samples: prior draws pushed back through the flow. Returns ``(x (n, *data_shape),
  nfe)``."""
  n = check_int(n, "flow_sample's `n`")
  shapes = _piece_shapes(flow, data_shape)
  keys = jax.random.split(key, len(shapes))
  pieces = [jax.random.normal(k, (n,) + s, jnp.float32) for k, s in zip(keys, shapes)]
  x = pieces.pop()
  nfe = jnp.zeros((), jnp.int32)
  for step in reversed(flow.steps):
    kind = step[0]
    if kind == "cnf":
      _check_block_input(x, step, f"flow_sample with data_shape {tuple(data_shape)}")
      index = step[1]
      x, m = cnf_block_inverse(flow.field(index), flow.block_params(params, index), x,
                               end_time=flow.end_time(params, index), options=options)
      nfe = nfe + m
    elif kind == "factor_out":
      x = jnp.concatenate([x, pieces.pop()], axis=-1)
    elif kind == "squeeze":
      x = unsqueeze(x)
    elif kind == "logit":
      x = _sigmoid(x, step[1])
    elif kind == "shift":
      x = x - step[1]
  return x, nfe


# --------------------------------------------------------------------------------------------------
# the experiment hooks: loss, likelihood, sampling
# --------------------------------------------------------------------------------------------------
def _cnf_config(config):
  return config.cnf if "cnf" in config else default_cnf_config()


def _data_range(config) -> float:
  return 2.0 if config.data.get("centered", False) else 1.0


def data_shape(config) -> Tuple[int, ...]:
  """One example's shape: ``(data.dim,)`` for toy / vector data (``data.image_size`` 0), else
  ``(H, W, C)``."""
  if config.data.dataset.startswith("toy_") or not config.data.get("image_size", 0):
    return (int(config.data.get("dim", 2)),)
  return (int(config.data.image_size), int(config.data.image_size),
          int(config.data.num_channels))


def _shape(setup) -> Tuple[int, ...]:
  # train.Setup builds its loss before it sets `shape`.
  return tuple(getattr(setup, "shape", None) or data_shape(setup.config))


class StandaloneSetup:
  """The parts of :class:`jaxgen.train.Setup` the CNF hooks use (``config``, ``model``,
  ``shape``, ``init_params``), with the FFJORD model built here from ``config.model``: for
  scripts and tests that do not go through ``jaxgen.models.get_model``."""

  def __init__(self, config):
    from jaxgen.models import ffjord  # pylint: disable=import-outside-toplevel
    self.config = config
    if str(config.model.name).lower() in ffjord.FFJORD_MODELS:
      self.model = ffjord.from_config(config.model, config.data)
    else:
      from jaxgen import models  # pylint: disable=import-outside-toplevel
      self.model = models.get_model(config.model, config.data)
    self.shape = data_shape(config)

  def init_params(self, key: Array):
    """Float32 parameters, initialised as ``Setup.init_state`` does."""
    x = jnp.zeros((1,) + self.shape, jnp.float32)
    params = self.model.init({"params": key, "dropout": key}, x, jnp.ones((1,), jnp.float32),
                             train=False)["params"]
    return jax.tree_util.tree_map(lambda p: p.astype(jnp.float32), params)


def flow_from_setup(setup) -> Flow:
  """The :class:`Flow` of an experiment (``setup.model`` on ``setup.shape``)."""
  time_length = float(setup.config.model.get("time_length", 1.0))
  return make_flow(setup.model, _shape(setup), time_length)


def eval_solve_options(config, eval_config) -> SolveOptions:
  """The :class:`SolveOptions` of a CNF's evaluation (likelihood and held-out loss):
  ``eval_config``'s divergence, probes, solver and tolerances, the rest (``max_steps``,
  ``error_norm``) from ``config.cnf``; ``num_steps`` only for a fixed-step evaluation solver
  (``eval_config.num_steps``, else ``config.cnf.num_steps``), so that training with a fixed-step
  solver and evaluating with an adaptive one (RNODE's rk4 / dopri5) go together; backpropagation,
  and ``throw=False`` (a failed solve is NaN and counted in ``num_failed``, not an error)."""
  cnf_cfg = _cnf_config(config)
  get = eval_config.get if hasattr(eval_config, "get") else (
      lambda k, d=None: getattr(eval_config, k, d))
  num_steps = 0
  if eval_config.solver in likelihood.FIXED_SOLVERS:
    num_steps = get("num_steps", 0) or cnf_cfg.get("num_steps", 0)
  return SolveOptions.from_config(
      cnf_cfg, divergence=eval_config.divergence,
      num_probes=eval_config.num_probes, solver=eval_config.solver,
      rtol=float(eval_config.rtol), atol=float(eval_config.atol), num_steps=num_steps,
      adjoint="backprop", throw=False)


RNODE_WEIGHTS = ("kinetic_energy", "jacobian_norm2")


def validate_config(config) -> None:
  """Rejects a bad ``config.cnf`` (and the CNF's use of ``config.eval``) before training, naming
  the field: the solve options of training and evaluation (:class:`SolveOptions`), the RNODE
  weights (finite, ``>= 0``) and ``loss_units``."""
  cnf_cfg = _cnf_config(config)
  for name in RNODE_WEIGHTS:
    value = cnf_cfg.get(name, 0.0)
    if (isinstance(value, bool) or not isinstance(value, (int, float))
        or not math.isfinite(value) or value < 0):
      raise ValueError(f"config.cnf.{name} must be a finite number >= 0 (an RNODE penalty "
                       f"weight), got {value!r}")
  units = str(cnf_cfg.get("loss_units", "auto"))
  if units not in LOSS_UNITS:
    raise ValueError(f"unknown config.cnf.loss_units {units!r}; expected one of {LOSS_UNITS}")
  try:
    SolveOptions.from_config(cnf_cfg)
  except (TypeError, ValueError) as e:
    raise ValueError(f"config.cnf: {e}") from None
  try:
    eval_solve_options(config, config.eval)
  except (TypeError, ValueError) as e:
    raise ValueError(f"config.eval (the CNF's evaluation solve; max_steps, num_steps and "
                     f"error_norm come from config.cnf): {e}") from None


def make_loss_fn(config, setup) -> Callable:
  """``loss(params, key, batch, train=True) -> (loss, aux)``: mean NLL (nats, or bits/dim for
  images) plus RNODE's weighted ``K`` and ``B``; ``aux`` holds the scalars ``nll``, ``nfe``,
  ``kinetic``, ``jacobian`` and ``end_time`` (mean over blocks), which the train loop logs, and
  ``loss_per_example`` ``(batch,)`` (whose mean is the loss; the held-out loss averages it over
  the real rows of a padded batch).

  ``batch['image']`` is the preprocessed data (``(b, D)`` vectors, or ``(b, H, W, C)`` images in
  ``[0, 1]``, dequantized by the train loop's preprocessing when ``data.uniform_dequantization``).
  Training uses ``config.cnf``; ``train=False`` (held-out loss) uses ``config.eval``'s solver
  (:func:`eval_solve_options`: a failed solve gives NaN rather than an error).
  """
  cnf_cfg = _cnf_config(config)
  units = str(cnf_cfg.get("loss_units", "auto"))
  if units not in LOSS_UNITS:
    raise ValueError(f"unknown cnf.loss_units {units!r}; expected one of {LOSS_UNITS}")
  flow = flow_from_setup(setup)
  train_options = SolveOptions.from_config(cnf_cfg)
  eval_options = eval_solve_options(config, config.eval)
  lam_k, lam_j = float(cnf_cfg.kinetic_energy), float(cnf_cfg.jacobian_norm2)
  regularize = lam_k > 0 or lam_j > 0
  shape = _shape(setup)
  bits = units == "bits_per_dim" or (units == "auto" and len(shape) == 3)
  data_range = _data_range(config)
  num_levels = int(config.data.get("num_levels", 256))

  def loss_fn(params, key, batch, train=True):
    x = batch["image"].astype(jnp.float32)
    out = flow_log_likelihood(flow, params, x, key=key,
                              options=train_options if train else eval_options,
                              regularize=regularize and train)
    if bits:
      nll_per_example = likelihood.bits_per_dim(out["logp"], shape, num_levels=num_levels,
                                                data_range=data_range)
      nll = jnp.mean(nll_per_example)
    else:
      nll_per_example = -out["logp"]
      nll = -jnp.mean(out["logp"])
    kinetic, jac = jnp.mean(out["kinetic"]), jnp.mean(out["jacobian"])
    loss = nll + lam_k * kinetic + lam_j * jac
    end_times = jnp.stack([flow.end_time(params, s[1]) for s in flow.steps if s[0] == "cnf"])
    aux = {"nll": nll, "nfe": out["nfe"], "kinetic": kinetic, "jacobian": jac,
           "end_time": jnp.mean(end_times),
           "loss_per_example": nll_per_example + lam_k * out["kinetic"]
                               + lam_j * out["jacobian"]}
    return loss, aux

  return loss_fn


def make_nll_fn(setup, eval_config) -> Callable:
  """``nll_fn(params, key, batch) -> (values (batch,), nfe)``: nats for vector data, bits/dim
  for images (uniformly dequantized, :func:`jaxgen.likelihood.bits_per_dim`), solved with
  ``eval_config``'s divergence, solver and tolerances (:func:`eval_solve_options`). A solve that
  fails (``config.cnf.max_steps`` reached) gives its batch NaN values instead of raising, as the
  probability-flow likelihood does: :func:`jaxgen.evaluate.evaluate_likelihood` counts them in
  ``num_failed``."""
  from jaxgen import data as data_lib  # pylint: disable=import-outside-toplevel
  config = setup.config
  flow = flow_from_setup(setup)
  options = eval_solve_options(config, eval_config)
  shape = _shape(setup)
  images = len(shape) == 3
  data_config = config.data.copy_and_resolve_references()
  data_config.uniform_dequantization = True

  def nll_fn(params, key, batch):
    k_deq, k_probe = jax.random.split(key)
    if images:
      x = data_lib.preprocess(k_deq, batch["image"], data_config, train=False)
    else:
      x = batch["image"].astype(jnp.float32)
    out = flow_log_likelihood(flow, params, x, key=k_probe, options=options)
    if images:
      return likelihood.bits_per_dim(out["logp"], shape,
                                     num_levels=int(data_config.num_levels),
                                     data_range=_data_range(config)), out["nfe"]
    return -out["logp"], out["nfe"]

  return nll_fn


def make_sample_fn(setup, sampling_config) -> Callable:
  """``fn(params, key, n) -> (samples (n, *shape), nfe)``: prior draws solved back through the
  flow with dopri5 at ``sampling_config.rtol``/``atol``."""
  flow = flow_from_setup(setup)
  options = SolveOptions(solver="dopri5", rtol=float(sampling_config.rtol),
                         atol=float(sampling_config.atol))
  shape = _shape(setup)

  def fn(params, key, n):
    return flow_sample(flow, params, key, n, shape, options=options)

  return fn


def log_density_on_grid(setup, params, lim: float = 4.0, n: int = 200,
                        batch_size: int = 4000, eval_config=None) -> np.ndarray:
  """``log p`` of a 2-D flow on the ``n x n`` grid ``linspace(-lim, lim, n)^2`` (row ``i`` is
  ``y = ys[i]``), with the exact divergence and ``eval_config``'s tolerances. Returns
  ``(n, n)``. The same as :func:`jaxgen.evaluate.log_density_on_grid`, which serves every
  method."""
  from jaxgen import evaluate  # pylint: disable=import-outside-toplevel
  return evaluate.log_density_on_grid(setup, params, lim=lim, n=n, batch_size=batch_size,
                                      eval_config=eval_config)


def write_density(setup, params, path: str, lim: float = 4.0, n: int = 200) -> str:
  """PNG of the density ``exp(log p)`` of a 2-D flow on ``[-lim, lim]^2`` (see
  :func:`jaxgen.evaluate.write_density`)."""
  from jaxgen import evaluate  # pylint: disable=import-outside-toplevel
  return evaluate.write_density(setup, params, path, lim=lim, n=n)
