"""Log-likelihood of data under any ODE drift, and bits/dim.

The instantaneous change of variables (Chen et al. 2018) turns any ODE ``dx/dt = v(x, t)`` into a
density: integrating the augmented system

    d/dt [x, delta] = [v(x, t), div_x v(x, t)]

from ``t0`` (data) to ``t1`` (prior) gives ``log p_{t0}(x) = log p_{t1}(z) + delta(t1)``. The same
routine serves the probability-flow ODE of a score model, a CNF and a rectified flow: it only needs
``drift_fn(x, t)``.

The solve runs on the device through diffrax (adaptive Dopri5/Tsit5 with a PID controller, or a
fixed-step solver), inside ``jit``: no host round trips, unlike score_sde's scipy solver.

Divergence estimators:
  * ``exact``: the trace of the Jacobian from ``D`` forward-mode products (one per data dimension,
    vectorised), i.e. ``jacfwd``; for small ``D``.
  * ``rademacher`` / ``gaussian``: Hutchinson's estimator ``E[eps^T J eps]`` with the probes drawn
    once per solve (``num_probes`` per example, averaged), each computed with one ``jvp`` that also
    returns the drift itself, so drift and divergence cost one forward-mode pass.

Bits/dim convention (score_sde, Ho et al., Kingma et al.): data with ``K`` discrete levels per
dimension (``K = 256`` for 8-bit images) are uniformly dequantized, ``x = (k + u) / K`` with
``u ~ U[0, 1)``, and then affinely mapped to an interval of width ``W`` (``W = 2`` for [-1, 1],
``W = 1`` for [0, 1]). Each discrete value owns a cell of volume ``(W / K)^D``, so
``log P(k) >= E_u log p(x) + D log(W / K)`` and

    bits/dim = -log p(x) / (D ln 2) + log2(K / W),

which is score_sde's ``+ 7`` for 8-bit data in [-1, 1] and ``+ 8`` for [0, 1].
"""
from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Callable, ClassVar, Optional, Sequence, Tuple

import diffrax
import jax
import jax.numpy as jnp
import numpy as np

from jaxgen._checks import check_int, check_positive_number, is_int
from jaxgen._jit import jit_with_callables

Array = jax.Array
DriftFn = Callable[[Array, Array], Array]
ExtraFn = Callable[[Array, Array, Array, Array, Array], Array]



class RK4(diffrax.AbstractERK):
  """The classical fourth-order Runge-Kutta method (4 stages) as a diffrax solver, for the fixed
  grids that ``jaxgen.solvers.solve_ode``'s ``rk4`` uses; diffrax ships no classical RK4. Its
  embedded error estimate (against the midpoint method) is only there because diffrax's tableau
  asks for one: the likelihood uses it on a constant step size."""

  tableau: ClassVar[diffrax.ButcherTableau] = diffrax.ButcherTableau(
      c=np.array([0.5, 0.5, 1.0]),
      b_sol=np.array([1 / 6, 1 / 3, 1 / 3, 1 / 6]),
      b_error=np.array([1 / 6, 1 / 3 - 1.0, 1 / 3, 1 / 6]),
      a_lower=(np.array([0.5]), np.array([0.0, 0.5]), np.array([0.0, 0.0, 1.0])))
  interpolation_cls: ClassVar[Callable] = (
      diffrax.ThirdOrderHermitePolynomialInterpolation.from_k)

  def order(self, terms):
    return 4


DIVERGENCES = ("exact", "rademacher", "gaussian")
ADAPTIVE_SOLVERS = {"dopri5": diffrax.Dopri5, "tsit5": diffrax.Tsit5}
FIXED_SOLVERS = {"euler": diffrax.Euler, "heun": diffrax.Heun, "midpoint": diffrax.Midpoint,
                 "ralston": diffrax.Ralston, "rk4": RK4}
# Vector-field evaluations per step (first-same-as-last stages are counted once).
_EVALS_PER_STEP = {"dopri5": 6, "tsit5": 6, "euler": 1, "heun": 2, "midpoint": 2, "ralston": 2,
                   "rk4": 4}


# --------------------------------------------------------------------------------------------------
# divergence estimators
# --------------------------------------------------------------------------------------------------
def _flat_dim(x: Array) -> int:
  return math.prod(x.shape[1:])


def exact_divergence(drift_fn: DriftFn, x: Array, t: Array) -> Tuple[Array, Array]:
  """Drift and exact divergence ``tr(d drift / dx)`` per example.

  Uses one forward-mode product per data dimension (vectorised with ``vmap``), so it costs ``D``
  drift evaluations' worth of compute; meant for small ``D``. Examples must not interact inside
  ``drift_fn`` (no batch statistics).

  Args:
    drift_fn: ``drift_fn(x, t) -> (batch, ...)``.
    x: ``(batch, ...)``; t: ``(batch,)``.
  Returns:
    ``(drift (batch, ...), divergence (batch,))``.
  """
  batch, d = x.shape[0], _flat_dim(x)
  fn = lambda y: drift_fn(y, t)

  def column(i):
    tangent = jnp.zeros((batch, d), x.dtype).at[:, i].set(1).reshape(x.shape)
    out, jv = jax.jvp(fn, (x,), (tangent,))
    return out, jv.reshape(batch, d)[:, i]

  outs, diag = jax.vmap(column)(jnp.arange(d))
  return outs[0], jnp.sum(diag, axis=0)


def sample_probes(key: Array, shape: Sequence[int], kind: str, num_probes: int = 1,
                  dtype=jnp.float32) -> Array:
  """Hutchinson probes ``(num_probes, batch, ...)`` with ``E[eps eps^T] = I``.

  ``kind`` is ``rademacher`` (+-1) or ``gaussian`` (standard normal).
  """
  shape = (check_int(num_probes, "`num_probes`"),) + tuple(shape)
  if kind == "rademacher":
    return jax.random.rademacher(key, shape, dtype=dtype)
  if kind == "gaussian":
    return jax.random.normal(key, shape, dtype=dtype)
  raise ValueError(f"unknown divergence/probe kind {kind!r}; expected 'rademacher' or 'gaussian'")


def hutchinson_divergence(drift_fn: DriftFn, x: Array, t: Array,
                          probes: Array) -> Tuple[Array, Array]:
  """Drift and Hutchinson divergence estimate ``mean_k eps_k^T J eps_k`` per example.

  Each probe costs one ``jvp`` that returns the drift and ``J eps`` together.

  Args:
    drift_fn: ``drift_fn(x, t) -> (batch, ...)``.
    x: ``(batch, ...)``; t: ``(batch,)``.
    probes: ``(num_probes, batch, ...)`` (or ``(batch, ...)`` for one probe).
  Returns:
    ``(drift (batch, ...), divergence estimate (batch,))``.
  """
  if probes.ndim == x.ndim:
    probes = probes[None]
  probes = probes.astype(x.dtype)  # jvp needs tangents of the primal's dtype
  fn = lambda y: drift_fn(y, t)
  axes = tuple(range(1, x.ndim))
  if probes.shape[0] == 1:
    out, jv = jax.jvp(fn, (x,), (probes[0],))
    return out, jnp.sum(probes[0] * jv, axis=axes)

  def one(eps):
    out, jv = jax.jvp(fn, (x,), (eps,))
    return out, jnp.sum(eps * jv, axis=axes)

  outs, divs = jax.vmap(one)(probes)
  return outs[0], jnp.mean(divs, axis=0)


def divergence(drift_fn: DriftFn, x: Array, t: Array, method: str = "exact",
               probes: Optional[Array] = None) -> Tuple[Array, Array]:
  """Dispatch to :func:`exact_divergence` or :func:`hutchinson_divergence` (needs ``probes``)."""
  if method == "exact":
    return exact_divergence(drift_fn, x, t)
  if method in ("rademacher", "gaussian"):
    if probes is None:
      raise ValueError(f"divergence={method!r} needs `probes` (see sample_probes)")
    return hutchinson_divergence(drift_fn, x, t, probes)
  raise ValueError(f"unknown divergence {method!r}; expected one of {DIVERGENCES}")


# --------------------------------------------------------------------------------------------------
# the augmented ODE
# --------------------------------------------------------------------------------------------------
def _as_time(value, name: str) -> float:
  """A concrete finite non-negative time (Python, NumPy or 0-d JAX scalar) as a float."""
  try:
    v = float(value)
  except (TypeError, ValueError, jax.errors.ConcretizationTypeError):
    raise ValueError(f"`{name}` must be a concrete finite non-negative number (not traced), got "
                     f"{value!r}") from None
  if isinstance(value, bool) or jnp.ndim(value) != 0 or not math.isfinite(v) or v < 0:
    raise ValueError(f"`{name}` must be a finite non-negative number, got {value!r}")
  return v


def _validate(x, t0, t1, divergence_name, solver, rtol, atol, num_probes, num_steps,
              max_steps):
  if not hasattr(x, "shape") or len(x.shape) < 2:
    raise ValueError(f"`x` must have shape (batch, ...) with at least one data axis, got shape "
                     f"{getattr(x, 'shape', None)}")
  t0, t1 = _as_time(t0, "t0"), _as_time(t1, "t1")
  if not t0 < t1:
    raise ValueError(f"need t0 < t1 (data at t0, prior at t1), got t0={t0!r}, t1={t1!r}")
  if divergence_name not in DIVERGENCES:
    raise ValueError(f"unknown divergence {divergence_name!r}; expected one of {DIVERGENCES}")
  if solver not in ADAPTIVE_SOLVERS and solver not in FIXED_SOLVERS:
    raise ValueError(f"unknown solver {solver!r}; expected one of "
                     f"{sorted(ADAPTIVE_SOLVERS) + sorted(FIXED_SOLVERS)}")
  if solver in ADAPTIVE_SOLVERS:
    for name, value in (("rtol", rtol), ("atol", atol)):
      if not value > 0:
        raise ValueError(f"`{name}` must be positive, got {value!r}")
    if num_steps is not None:
      raise ValueError(f"`num_steps={num_steps!r}` sets a fixed-step solver's grid, but solver="
                       f"{solver!r} picks its own steps (rtol/atol): pass num_steps=None, or a "
                       f"fixed-step solver {sorted(FIXED_SOLVERS)}")
  else:
    check_int(num_steps, "`num_steps`", note=f" for fixed-step solver {solver!r}")
  check_int(num_probes, "`num_probes`")
  check_int(max_steps, "`max_steps`")
  return t0, t1


def ode_log_likelihood(drift_fn: DriftFn,
                       x: Array,
                       *,
                       key: Optional[Array] = None,
                       prior_logp: Callable[[Array], Array],
                       t0: float = 1e-5,
                       t1: float = 1.0,
                       divergence: str = "exact",
                       num_probes: int = 1,
                       solver: str = "dopri5",
                       rtol: float = 1e-5,
                       atol: float = 1e-5,
                       num_steps: Optional[int] = None,
                       max_steps: int = 8192,
                       adjoint: Optional[diffrax.AbstractAdjoint] = None,
                       probes: Optional[Array] = None,
                       error_norm: str = "per_example",
                       return_stats: bool = False,
                       drift_args=None,
                       extra_fn: Optional[ExtraFn] = None,
                       divergence_baseline: Optional[Callable[[Array], Array]] = None,
                       throw: bool = True):
  """Log-likelihood of ``x`` under the ODE ``dx/dt = drift_fn(x, t)`` with prior at ``t1``.

  Solves ``d/dt [x, delta] = [drift, div drift]`` from ``t0`` (data) to ``t1`` (prior) and returns
  ``log p_{t0}(x) = prior_logp(z) + delta(t1)``. Differentiable (``adjoint`` picks diffrax's
  backpropagation-through-the-solver, the default, or ``diffrax.BacksolveAdjoint``).

  Args:
    drift_fn: ``drift_fn(x, t) -> (batch, ...)`` with ``t`` of shape ``(batch,)``.
    x: data ``(batch, ...)``.
    key: PRNG key for Hutchinson probes (needed unless ``divergence='exact'`` or ``probes`` given).
    prior_logp: ``prior_logp(z) -> (batch,)``, the log-density at ``t1``.
    t0, t1: integration interval, ``0 <= t0 < t1`` (concrete scalars).
    divergence: ``exact``, ``rademacher`` or ``gaussian``.
    num_probes: Hutchinson probes per example (averaged); drawn once per solve.
    solver: adaptive ``dopri5``/``tsit5`` or fixed-step
      ``euler``/``heun``/``midpoint``/``ralston``/``rk4`` (then ``num_steps`` is needed, and
      ``rtol``/``atol`` play no part).
    rtol, atol: tolerances of the adaptive step-size controller.
    num_steps: steps of a fixed-step solver; refused with an adaptive one.
    max_steps: step budget of the adaptive solver.
    adjoint: a diffrax adjoint (default ``RecursiveCheckpointAdjoint``). A ``BacksolveAdjoint``
      needs its own ``stepsize_controller`` for adaptive solvers (the forward error norm reads the
      ``(x, delta)`` state, not the adjoint's augmented one); see ``jaxgen.cnf``.
    probes: explicit probes ``(num_probes, batch, ...)`` or ``(batch, ...)`` for a Hutchinson
      divergence (instead of ``key``; ``num_probes`` then must be left at 1 or match).
    error_norm: ``per_example`` (each example meets rtol/atol on its own, the default) or ``rms``
      (one RMS over the whole batch, as scipy's solver in score_sde; fewer steps, looser);
      ``mixed_rms``: ``max(RMS(x), RMS(delta))``, torchdiffeq's (FFJORD's) convention.
    return_stats: also return a dict of solver statistics.
    drift_args: optional pytree of arrays (e.g. network parameters); when given, the drift is
      called as ``drift_fn(x, t, drift_args)`` and ``drift_args`` travels through diffrax's
      ``args``, so every adjoint (``BacksolveAdjoint`` included, which cannot differentiate
      arrays a closure captures) differentiates with respect to it.
    extra_fn: optional ``extra_fn(x, t, drift, tangents, jvps) -> (batch, k)``, integrated from
      ``t0`` to ``t1`` along the same trajectory (e.g. RNODE's kinetic energy ``|drift|^2`` and
      Jacobian norm ``|J v|^2``). ``tangents`` and ``jvps`` are ``(m, batch, ...)``: the vectors
      ``v`` the divergence estimator pushed through the Jacobian ``J`` and the products ``J v``,
      i.e. the ``m = D`` unit vectors for ``exact`` (``sum_m |J v_m|^2 = |J|_F^2``) or the probes
      for Hutchinson (``mean_m |J v_m|^2`` estimates ``|J|_F^2`` without bias). The extra states
      do not enter the step-size control.
    divergence_baseline: optional known part ``b`` of the divergence with its integral: an object
      with ``b(t) -> () or (batch,)`` and ``b.integral(t0, t1)``, e.g. ``D a(t)`` for a drift
      ``a(t) x + ...`` (:func:`linear_divergence_baseline` gives the one of a diffusion process;
      it must be hashable). The solver integrates ``div - b`` and adds ``b.integral(t0, t1)``, so
      that ``rtol`` applies to the rest of the log-density. Any correct ``b`` gives the same
      integral; only the error control changes. That pays where ``b`` is most of the integral:
      on the VP SDE with ``bench.py``'s DDPM++ (redrawn small output layers), ``D a(t)`` is
      ~15,400 of ~16,000 nats, and per-image solver errors of ~1e-2 bits/dim at
      ``rtol = 1e-5`` fall to ~1e-3 at ``1e-4`` (1.6x the NFE; NOTES.md run 19). Where the rest
      is larger than the whole, as for a trained score network, whose score part is roughly
      twice the total, it loosens the control instead.
    throw: raise when the adaptive solver fails (``max_steps`` exhausted, non-finite state), as
      diffrax does; ``False`` returns NaN log-likelihoods for a failed solve instead (long
      evaluations report the failure rather than dying on it).
  Returns:
    ``(logp (batch,), z (batch, ...), nfe)`` where ``nfe`` is the number of drift evaluations
    (int32 scalar) — then the integrals ``(batch, k)`` if ``extra_fn`` is given — plus ``stats``
    if ``return_stats``. ``logp`` is float32, or float64 for float64 ``x``.
  """
  t0, t1 = _validate(x, t0, t1, divergence, solver, rtol, atol, num_probes, num_steps,
                     max_steps)
  if probes is not None and divergence == "exact":
    raise ValueError("`probes` are Hutchinson probes, but divergence='exact' uses none: pass "
                     "divergence='rademacher' or 'gaussian', or drop `probes`")
  if divergence != "exact" and probes is None:
    if key is None:
      raise ValueError(f"divergence={divergence!r} needs a PRNG `key` (or explicit `probes`)")
    # drawn in at least float32 (Gaussian probes in bfloat16 would be coarse); the solver's state
    # is float32 for bfloat16 data, and the probes are cast to it where they are used
    probes = sample_probes(key, x.shape, divergence, num_probes,
                           jnp.promote_types(x.dtype, jnp.float32))
  if error_norm not in ERROR_NORMS:
    raise ValueError(f"unknown error_norm {error_norm!r}; expected one of {sorted(ERROR_NORMS)}")
  if probes is not None and (probes.ndim not in (x.ndim, x.ndim + 1)
                             or probes.shape[-x.ndim:] != x.shape):
    raise ValueError(f"`probes` must have shape (num_probes,) + {x.shape} or {x.shape}, got "
                     f"{probes.shape}")
  if probes is not None and num_probes != 1:
    given = probes.shape[0] if probes.ndim == x.ndim + 1 else 1
    if given != num_probes:
      raise ValueError(f"num_probes={num_probes} but the explicit `probes` hold {given} "
                       f"(shape {probes.shape}): drop num_probes or pass that many probes")
  owner = getattr(prior_logp, "__self__", None)  # a process's own prior_logp: its density at T
  owner_T = getattr(owner, "T", None) if hasattr(owner, "marginal") else None
  if owner_T is not None and not math.isclose(t1, float(owner_T), rel_tol=1e-6):
    warnings.warn(f"ode_log_likelihood: prior_logp is {type(owner).__name__}'s prior, its density "
                  f"at T = {owner_T}, but t1 = {t1} (pass t1=process.T)", stacklevel=2)
  prior_shape = jax.eval_shape(prior_logp, jax.ShapeDtypeStruct(x.shape, x.dtype)).shape
  if prior_shape != x.shape[:1]:
    raise ValueError(f"`prior_logp` must return one log-density per example, shape "
                     f"{x.shape[:1]}, got {prior_shape} (sum over the data axes only)")
  if adjoint is not None:
    adjoint = _Static(adjoint)
  if divergence_baseline is not None and not callable(getattr(divergence_baseline, "integral",
                                                              None)):
    raise ValueError(f"`divergence_baseline` {divergence_baseline!r} needs an `integral(t0, t1)` "
                     "method (see linear_divergence_baseline)")
  logp, z, nfe, stats, extras = _solve(drift_fn, x, probes, prior_logp, float(t0), float(t1),
                                       divergence, solver, float(rtol), float(atol), num_steps,
                                       int(max_steps), adjoint, error_norm, drift_args, extra_fn,
                                       bool(throw), divergence_baseline)
  out = (logp, z, nfe) + ((extras,) if extra_fn is not None else ())
  return out + (stats,) if return_stats else out


@dataclasses.dataclass(frozen=True)
class LinearDivergenceBaseline:
  """``b(t) = D f(t)``: the divergence of a process's linear drift part ``f(t) x`` (``D`` the
  data dimension), for ``ode_log_likelihood(..., divergence_baseline=...)``.

  The probability-flow drift of ``x_t = alpha(t) x_0 + sigma(t) eps`` is ``f(t) x`` plus a
  multiple of the score, with ``f = d log alpha / dt`` (``process.drift_coefficient``): for the
  VP and sub-VP SDEs ``-beta(t) / 2``, for VE and EDM zero. So ``b`` integrates in closed form
  to ``D log(alpha(t1) / alpha(t0))``. Hashable, so a jitted solve compiles once per process and
  shape.
  """
  process: object
  dim: int

  def __call__(self, t: Array) -> Array:
    """``(batch,)`` -> ``(batch,)``."""
    return self.dim * self.process.drift_coefficient(t)

  def integral(self, t0: float, t1: float) -> Array:
    """``int_{t0}^{t1} b(t) dt = D (log alpha(t1) - log alpha(t0))``, a scalar."""
    ts = jnp.asarray([t0, t1], jnp.result_type(float))  # float64 under x64
    log_alpha = jnp.log(self.process.alpha(ts))
    return self.dim * (log_alpha[1] - log_alpha[0])


def linear_divergence_baseline(process, data_shape: Sequence[int]) -> LinearDivergenceBaseline:
  """The divergence baseline ``D f(t)`` of ``process`` for data of shape ``data_shape``."""
  return LinearDivergenceBaseline(process, math.prod(tuple(data_shape)))


class _Static:
  """Hashable holder for a static argument that is not hashable itself (``BacksolveAdjoint``
  keeps its options in a dict); equal when the held objects are equal."""

  def __init__(self, value):
    self.value = value

  def __hash__(self):
    return hash(type(self.value))

  def __eq__(self, other):
    return (isinstance(other, _Static) and type(other.value) is type(self.value)
            and bool(other.value == self.value))


def _jacobian_products(drift_fn, x, t, tangents):
  """Drift and ``J v`` for each of ``tangents`` ``(m, batch, ...)`` (one vmapped ``jvp`` each)."""
  fn = lambda y: drift_fn(y, t)
  outs, jvps = jax.vmap(lambda v: jax.jvp(fn, (x,), (v,)))(tangents)
  return outs[0], jvps


@jit_with_callables(
    static_argnames=("t0", "t1", "divergence_name", "solver", "rtol", "atol", "num_steps",
                     "max_steps", "adjoint", "error_norm", "throw", "baseline"),
    callable_argnames=("drift_fn", "prior_logp", "extra_fn"))
def _solve(drift_fn, x, probes, prior_logp, t0, t1, divergence_name, solver, rtol, atol,
           num_steps, max_steps, adjoint, error_norm, drift_args, extra_fn, throw, baseline):
  batch = x.shape[0]
  delta_dtype = jnp.promote_types(x.dtype, jnp.float32)
  vector_field = _augmented_field(drift_fn, batch, divergence_name, extra_fn, delta_dtype,
                                  baseline)
  term = diffrax.ODETerm(vector_field)
  state0 = (x, jnp.zeros((batch,), delta_dtype))
  if extra_fn is not None:
    probe_shape = jax.ShapeDtypeStruct(x.shape, x.dtype)
    tangent_shape = jax.ShapeDtypeStruct((1,) + x.shape, x.dtype)
    num_extra = jax.eval_shape(extra_fn, probe_shape, jax.ShapeDtypeStruct((batch,), x.dtype),
                               probe_shape, tangent_shape, tangent_shape).shape[-1]
    state0 = state0 + (jnp.zeros((batch, num_extra), delta_dtype),)
  if solver in ADAPTIVE_SOLVERS:
    stepper = ADAPTIVE_SOLVERS[solver]()
    controller = diffrax.PIDController(rtol=rtol, atol=atol, norm=ERROR_NORMS[error_norm])
    dt0 = None
  else:
    stepper = FIXED_SOLVERS[solver]()
    controller = diffrax.ConstantStepSize()
    dt0 = (t1 - t0) / num_steps
    max_steps = num_steps
  kwargs = {} if adjoint is None else {"adjoint": adjoint.value}
  if solver in ADAPTIVE_SOLVERS and not isinstance(
      kwargs.get("adjoint"), (diffrax.BacksolveAdjoint, diffrax.ImplicitAdjoint)):
    # The first step's first stage, handed to diffrax's FSAL solvers: left to diffrax, it would be
    # evaluated again after every rejection of the first step, which the count cannot see. It is
    # computed on the state as diffrax promotes it (to the times' dtype: float32, or float64 under
    # x64), the only state diffrax's stages see. (The backsolve and implicit adjoints take no
    # differentiable solver state.)
    with jax.numpy_dtype_promotion("standard"):
      time_dtype = jnp.result_type(t0, t1)
      if not jnp.issubdtype(time_dtype, jnp.floating):
        time_dtype = jnp.result_type(float)
      state0 = jax.tree_util.tree_map(
          lambda y: jnp.asarray(y, jnp.result_type(y, time_dtype)), state0)
    f0 = vector_field(jnp.asarray(t0, time_dtype), state0, (probes, drift_args))
    kwargs["solver_state"] = (jnp.asarray(False), jax.tree_util.tree_map(
        lambda f, y: f.astype(y.dtype), f0, state0))
  sol = diffrax.diffeqsolve(term, stepper, t0=t0, t1=t1, dt0=dt0, y0=state0,
                            args=(probes, drift_args),
                            stepsize_controller=controller, max_steps=max_steps,
                            saveat=diffrax.SaveAt(t1=True), throw=throw, **kwargs)
  z, delta = sol.ys[0][0], sol.ys[1][0]
  if baseline is not None:  # its integral, in closed form
    delta = delta + jnp.broadcast_to(jnp.asarray(baseline.integral(t0, t1), delta_dtype), (batch,))
  extras = sol.ys[2][0] if extra_fn is not None else None
  logp = prior_logp(z) + delta
  if not throw:
    logp = jnp.where(sol.result == diffrax.RESULTS.successful, logp, jnp.nan)
  nfe = _nfe_from_stats(sol.stats, solver, adaptive_init=dt0 is None)
  return logp, z, nfe, sol.stats, extras


def _augmented_field(drift_fn, batch, divergence_name, extra_fn, delta_dtype, baseline=None):
  """``vector_field(t, (x, delta[, extras]), (probes, drift_args))`` of the augmented ODE; with a
  ``baseline``, ``delta`` integrates ``div - baseline(t)`` (its integral is added after the solve)."""

  def log_density_rate(div, tt):
    div = div.astype(delta_dtype)
    if baseline is None:
      return div
    return div - jnp.broadcast_to(jnp.asarray(baseline(tt), delta_dtype), (batch,))

  def vector_field(t, state, args):
    y = state[0]
    probes, drift_args = args
    fn = drift_fn if drift_args is None else (lambda y_, t_: drift_fn(y_, t_, drift_args))
    tt = jnp.full((batch,), t, dtype=y.dtype)
    if extra_fn is not None:
      d = _flat_dim(y)
      if divergence_name == "exact":
        tangents = jnp.broadcast_to(jnp.eye(d, dtype=y.dtype)[:, None, :], (d, batch, d))
        tangents = tangents.reshape((d,) + y.shape)
      else:
        tangents = (probes if probes.ndim > y.ndim else probes[None]).astype(y.dtype)
      dy, jvps = _jacobian_products(fn, y, tt, tangents)
      if divergence_name == "exact":
        div = jnp.sum(jnp.diagonal(jvps.reshape(d, batch, d), axis1=0, axis2=2), axis=-1)
      else:
        div = jnp.mean(jnp.sum((tangents * jvps).reshape(tangents.shape[0], batch, -1), -1), 0)
      extra = extra_fn(y, tt, dy, tangents, jvps)
      return dy, log_density_rate(div, tt), extra.astype(delta_dtype)
    if divergence_name == "exact":
      dy, div = exact_divergence(fn, y, tt)
    else:
      dy, div = hutchinson_divergence(fn, y, tt, probes)
    return dy, log_density_rate(div, tt)

  return vector_field


def _per_example_norm(state) -> Array:
  """Error norm of the augmented state ``(x, delta)``: the worst example's
  ``max(RMS over its x entries, |delta error|)``.

  Every example then meets the tolerance as if it were solved alone, whatever else shares the
  batch. A plain RMS over the whole state (scipy's and diffrax's default, so score_sde's) lets the
  batch and the ``D`` entries of ``x`` drown the error of one example's log-density.
  """
  y, delta = state[0], state[1]  # extra integrals (if any) do not steer the step size
  per_x = jnp.sqrt(jnp.mean(jnp.square(y.reshape(y.shape[0], -1).astype(jnp.float32)), axis=1))
  return jnp.max(jnp.maximum(per_x, jnp.abs(delta.astype(jnp.float32))))


def _global_rms_norm(state) -> Array:
  """RMS over every entry of the augmented state (scipy / score_sde's convention)."""
  y, delta = state[0], state[1]
  total = jnp.sum(jnp.square(y.astype(jnp.float32))) + jnp.sum(jnp.square(delta))
  return jnp.sqrt(total / (y.size + delta.size))


def _mixed_rms_norm(state) -> Array:
  """Largest RMS of the state's parts, ``max(RMS(x), RMS(delta))``: torchdiffeq's norm for tuple
  states, so FFJORD's; the data and the log-density each meet the tolerance on batch average."""
  y, delta = state[0], state[1]
  rms = lambda a: jnp.sqrt(jnp.mean(jnp.square(a.astype(jnp.float32))))
  return jnp.maximum(rms(y), rms(delta))


ERROR_NORMS = {"per_example": _per_example_norm, "rms": _global_rms_norm,
               "mixed_rms": _mixed_rms_norm}


def _nfe_from_stats(stats, solver, adaptive_init):
  """Drift evaluations of a diffrax solve, from its step counts.

  Each attempted step (accepted or rejected) of an explicit Runge-Kutta method costs its new
  stages (Dopri5 and Tsit5 reuse their last stage as the next first one), plus one evaluation of
  the first step's first stage (:func:`_solve` hands it to diffrax; diffrax's own initial step
  here is a constant and costs none). With the backsolve or implicit adjoint diffrax evaluates
  that stage itself, and again after each rejection of the first step, which this count misses.
  Checked against a counting drift in the tests.
  """
  nfe = _EVALS_PER_STEP[solver] * stats["num_steps"]
  if adaptive_init:
    nfe = nfe + 1
  return jnp.asarray(nfe, jnp.int32)


# --------------------------------------------------------------------------------------------------
# dequantization and bits/dim
# --------------------------------------------------------------------------------------------------
def _float32_steps(x: Array, steps: int, direction: float) -> Array:
  """``x`` moved ``steps`` representable float32 values toward ``direction`` (+-inf)."""
  for _ in range(steps):
    x = jnp.nextafter(x, jnp.float32(direction))
  return x


# Bin edges ``k / K`` computed on a device may be off by an ulp or two when ``K`` is not a power of
# two (XLA may divide through a reciprocal); values are kept this many floats inside them.
_EDGE_ULPS = 3


def check_num_levels(num_levels, name: str = "`num_levels`") -> int:
  """``num_levels`` as an int ``>= 2`` (an integer-valued float such as ``256.0`` from a config is
  accepted; ``True``, ``2.5`` or ``1`` are refused with a ValueError naming ``name``)."""
  if isinstance(num_levels, (float, np.floating)) and float(num_levels).is_integer():
    num_levels = int(num_levels)
  return check_int(num_levels, name, minimum=2)


def dequantized_in_bins(levels: Array, u: Array, num_levels: int) -> Array:
  """``(k + u) / K`` in float32, kept inside the bin of its level: ``k / K <= x < (k + 1) / K``.

  ``levels``: integer levels ``k`` (any shape, integer or float dtype); ``u``: float32 draws in
  ``[0, 1)`` of the same shape; returns float32 of that shape in ``[0, 1)``. In float32 ``k + u``
  rounds up to ``k + 1`` when ``u`` is within half an ulp of ``k + 1`` (for ``k >= 128``,
  ``u > 1 - 2**-17``: about 5 values in a million), which would put ``x`` on the lower edge of the
  next bin (``x = 1.0`` exactly for ``k = K - 1``); such sums are moved to the largest float32
  below ``k + 1``. For ``K`` a power of two the division is exact; otherwise its rounding can cross
  a bin edge too, and values within 3 ulps of an edge are moved inside (a shift far below the
  float32 resolution of ``k + u`` itself). Other values are unchanged.
  """
  num_levels = check_num_levels(num_levels)
  levels = jnp.asarray(levels).astype(jnp.float32)
  upper = levels + 1.0  # exact for levels below 2**24
  x = jnp.minimum(levels + u, _float32_steps(upper, 1, -jnp.inf)) / num_levels
  if num_levels & (num_levels - 1):  # not a power of two: k / K and (k + 1) / K are rounded
    low = jnp.where(levels > 0, _float32_steps(levels / num_levels, _EDGE_ULPS, jnp.inf), 0.0)
    x = jnp.clip(x, low, _float32_steps(upper / num_levels, _EDGE_ULPS, -jnp.inf))
  return x


def uniform_dequantize(key: Array, levels: Array, num_levels: int = 256, low: float = -1.0,
                       high: float = 1.0) -> Array:
  """Map integer levels ``k in {0..K-1}`` to ``low + (high - low) (k + u) / K``, ``u ~ U[0, 1)``.

  ``levels``: integer (or integer-valued) array of any shape, values in ``[0, K)``; returns float32
  of the same shape. Values are checked where they are concrete (not under ``jit``): data already
  scaled to ``[0, 1]`` (``k / 255``) or levels ``>= K`` are refused.
  """
  num_levels = check_num_levels(num_levels)
  if not (math.isfinite(low) and math.isfinite(high) and low < high):
    raise ValueError(f"need finite low < high, got low={low!r}, high={high!r}")
  levels = jnp.asarray(levels)
  try:
    values = np.asarray(levels)
  except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
    values = None  # traced: the caller's data pipeline checks its dtype
  if values is not None and values.size:
    if not np.all(values == np.round(values)):
      raise ValueError(f"`levels` must be integer levels in [0, {num_levels}), got non-integer "
                       f"values such as {values[values != np.round(values)].flat[0]!r} (data "
                       f"already scaled to [0, 1]? pass the integer levels)")
    if values.min() < 0 or values.max() >= num_levels:
      raise ValueError(f"`levels` must lie in [0, {num_levels}), got values in "
                       f"[{values.min()}, {values.max()}]")
  u = jax.random.uniform(key, levels.shape, jnp.float32)
  return low + (high - low) * dequantized_in_bins(levels, u, num_levels)


def bits_per_dim(logp: Array, data_shape: Sequence[int], *, num_levels: Optional[int] = 256,
                 data_range: float = 2.0) -> Array:
  """Bits per dimension of dequantized discrete data from its continuous log-density.

  ``bpd = -logp / (D ln 2) + log2(num_levels / data_range)`` (see the module docstring); with the
  defaults (8-bit data in [-1, 1]) this adds score_sde's 7 bits; use ``data_range=1.0`` for data in
  [0, 1] (adds 8). ``num_levels=None`` gives continuous bits/dim (no offset).

  Args:
    logp: log-density in nats ``(batch,)``.
    data_shape: shape of one example, e.g. ``(32, 32, 3)``: ``x.shape[1:]``, without the batch
      axis (with it, every value would be divided by the batch size).
  Returns:
    ``(batch,)`` bits/dim.
  """
  d = _num_dims(data_shape)
  bpd = -logp / (d * math.log(2.0))
  if num_levels is not None:
    num_levels = check_num_levels(num_levels)
    data_range = check_positive_number(data_range, "`data_range`")
    bpd = bpd + math.log2(num_levels / data_range)
  return bpd


def _num_dims(data_shape: Sequence[int]) -> int:
  shape = tuple(data_shape)
  if not shape or not all(is_int(n) and n > 0 for n in shape):
    raise ValueError(f"`data_shape` must be non-empty and positive, got {shape}")
  return math.prod(shape)


def discrete_log_likelihood_bound(logp: Array, data_shape: Sequence[int], *, num_levels: int = 256,
                                  data_range: float = 2.0) -> Array:
  """Lower bound on the discrete log-probability in nats: ``logp + D log(data_range / K)``
  (``logp (batch,)`` -> ``(batch,)``; ``data_shape`` without the batch axis)."""
  d = _num_dims(data_shape)
  num_levels = check_num_levels(num_levels)
  data_range = check_positive_number(data_range, "`data_range`")
  return logp + d * math.log(data_range / num_levels)
