"""Continuous-time noise processes: ``x_t = alpha(t) x_0 + sigma(t) eps``.

Every process in this module is a Gaussian path with a linear SDE

    dx = f(t) x dt + g(t) dw,      f = d log alpha / dt,
                                   g^2 = d sigma^2 / dt - 2 f sigma^2,

so one base class derives the SDE, the marginal, the prior and the probability-flow drift from
``alpha`` and ``sigma`` (or, for the score-SDE processes, from ``beta``/``sigma`` schedules written
out in closed form as in score_sde).

Shapes: ``x`` is ``(batch, ...)`` and ``t`` is ``(batch,)`` everywhere. Per-example coefficients are
returned with shape ``(batch,)`` and broadcast against ``x`` by :func:`broadcast_to`.

The processes are frozen dataclasses: hashable, so they can be closed over or passed as static
arguments to ``jax.jit``.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, Tuple

import jax
import jax.numpy as jnp

from jaxgen._checks import is_whole_number

Array = jax.Array
ScoreFn = Callable[[Array, Array], Array]


def broadcast_to(coefficient: Array, x: Array) -> Array:
  """Reshape a per-example coefficient ``(batch,)`` to broadcast against ``x`` ``(batch, ...)``."""
  coefficient = jnp.asarray(coefficient)
  return coefficient.reshape(coefficient.shape + (1,) * (x.ndim - coefficient.ndim))


def _check_batch(x: Array, t: Array, name: str = "t") -> None:
  """Cheap static shape check: ``t`` must be ``(batch,)`` matching ``x``'s leading axis."""
  if jnp.ndim(t) != 1:
    raise ValueError(f"`{name}` must have shape (batch,), got shape {jnp.shape(t)}")
  if jnp.ndim(x) < 1 or jnp.shape(x)[0] != jnp.shape(t)[0]:
    raise ValueError(
        f"`x` must have shape (batch, ...) with batch = {jnp.shape(t)[0]} to match `{name}`, "
        f"got shape {jnp.shape(x)}")


def _standard_normal_logp(z: Array, scale: float = 1.0) -> Array:
  """log N(z; 0, scale^2 I) summed over all but the leading axis -> (batch,)."""
  d = math.prod(z.shape[1:])
  # At least float32 (bf16 inputs), float64 kept for float64 likelihoods.
  dtype = jnp.promote_types(jnp.result_type(z), jnp.float32)
  sq = jnp.sum(jnp.reshape(z, (z.shape[0], -1)).astype(dtype) ** 2, axis=-1)
  return -0.5 * d * math.log(2 * math.pi * scale**2) - 0.5 * sq / scale**2


def float32_time(t: Array) -> Array:
  """``t`` in at least float32: a bfloat16 ``t`` would round the coefficients (sigma by ~0.1 %,
  a VE eps -> score conversion by ~1 %). Shared by ``marginal``/``sde`` and
  :mod:`jaxgen.predictions`."""
  t = jnp.asarray(t)
  return t.astype(jnp.promote_types(t.dtype, jnp.float32))


def _require(condition: bool, process: str, message: str) -> None:
  if not condition:
    raise ValueError(f"{process}: {message}")


def discrete_step(t: Array, N: int, T: float) -> Array:
  """Index ``i`` of the grid time ``i T / (N - 1)`` at or just below ``t``, clipped to ``[0, N)``.

  +1e-4: float32 rounding must not move an exact grid time down to step ``i - 1``.
  """
  step = jnp.floor(t * (N - 1) / T + 1e-4).astype(jnp.int32)
  return jnp.clip(step, 0, N - 1)


@dataclasses.dataclass(frozen=True)
class Process:
  """Base class of a Gaussian noising path ``x_t = alpha(t) x_0 + sigma(t) eps``.

  Subclasses define :meth:`alpha` and :meth:`sigma` (vectorised over ``t``) and the end time ``T``;
  derivatives come from forward-mode autodiff unless a subclass writes them out.
  """

  @property
  def T(self) -> float:  # pylint: disable=invalid-name
    """End time of the process (the prior lives at ``t = T``)."""
    return 1.0

  @property
  def t_min(self) -> float:
    """Smallest meaningful time (0 unless the process is only defined above some time)."""
    return 0.0

  @property
  def prior_std(self) -> float:
    """Standard deviation of the isotropic Gaussian prior at ``t = T``."""
    return 1.0

  # --- schedule ------------------------------------------------------------------------------
  def alpha(self, t: Array) -> Array:
    """Signal scale ``alpha(t)``; ``t`` ``(batch,)`` -> ``(batch,)``, in ``t``'s dtype (the schedule
    methods compute in it; ``marginal`` and ``sde`` read ``t`` in at least float32)."""
    raise NotImplementedError

  def sigma(self, t: Array) -> Array:
    """Noise scale ``sigma(t)``; ``t`` ``(batch,)`` -> ``(batch,)``."""
    raise NotImplementedError

  def alpha_dot(self, t: Array) -> Array:
    """``d alpha / dt``; ``(batch,)`` -> ``(batch,)``."""
    return jax.jvp(self.alpha, (t,), (jnp.ones_like(t),))[1]

  def sigma_dot(self, t: Array) -> Array:
    """``d sigma / dt``; ``(batch,)`` -> ``(batch,)``."""
    return jax.jvp(self.sigma, (t,), (jnp.ones_like(t),))[1]

  def drift_coefficient(self, t: Array) -> Array:
    """``f(t) = d log alpha / dt`` (the SDE drift is ``f(t) x``); ``(batch,)`` -> ``(batch,)``."""
    return self.alpha_dot(t) / self.alpha(t)

  def diffusion_squared(self, t: Array) -> Array:
    """``g(t)^2 = d sigma^2/dt - 2 f(t) sigma(t)^2``; ``(batch,)`` -> ``(batch,)``."""
    s = self.sigma(t)
    return 2.0 * s * self.sigma_dot(t) - 2.0 * self.drift_coefficient(t) * s**2

  # --- API -----------------------------------------------------------------------------------
  def marginal(self, x0: Array, t: Array) -> Tuple[Array, Array]:
    """Mean and std of ``p(x_t | x_0)``: ``x0`` ``(batch, ...)``, ``t`` ``(batch,)`` ->
    (mean ``(batch, ...)``, std ``(batch,)``)."""
    _check_batch(x0, t)
    t = float32_time(t)
    return broadcast_to(self.alpha(t), x0) * x0, self.sigma(t)

  def sde(self, x: Array, t: Array) -> Tuple[Array, Array]:
    """Forward SDE ``dx = drift dt + diffusion dw``: -> (drift ``(batch, ...)``, diffusion ``(batch,)``)."""
    _check_batch(x, t)
    t = float32_time(t)
    return broadcast_to(self.drift_coefficient(t), x) * x, jnp.sqrt(self.diffusion_squared(t))

  def prior_sample(self, key: Array, shape) -> Array:
    """Sample the prior at ``t = T``; ``shape = (batch, ...)``."""
    return self.prior_std * jax.random.normal(key, tuple(shape))

  def prior_logp(self, z: Array) -> Array:
    """Log-density of the prior, summed over data dimensions: ``(batch, ...)`` -> ``(batch,)``."""
    return _standard_normal_logp(z, self.prior_std)

  def perturb(self, key: Array, x0: Array, t: Array) -> Tuple[Array, Array]:
    """Draw ``x_t ~ p(x_t | x_0)``; returns ``(x_t, eps)``, both ``(batch, ...)``."""
    mean, std = self.marginal(x0, t)
    eps = jax.random.normal(key, x0.shape, x0.dtype)
    return mean + broadcast_to(std, x0) * eps, eps


@dataclasses.dataclass(frozen=True)
class VPSDE(Process):
  """score_sde's variance-preserving SDE: ``dx = -beta(t)/2 x dt + sqrt(beta(t)) dw``,
  ``beta(t) = beta_min + t (beta_max - beta_min)``, T = 1, prior N(0, I).

  ``N`` is the number of DDPM steps of the discretization (:meth:`discretize`).
  """
  beta_min: float = 0.1
  beta_max: float = 20.0
  N: int = 1000

  def __post_init__(self):
    name = type(self).__name__
    _require(0.0 <= self.beta_min <= self.beta_max and self.beta_max > 0.0, name,
             f"need 0 <= beta_min <= beta_max and beta_max > 0, got beta_min={self.beta_min!r}, "
             f"beta_max={self.beta_max!r}")
    _require(all(math.isfinite(v) for v in (self.beta_min, self.beta_max)), name,
             f"beta_min and beta_max must be finite, got {self.beta_min!r}, {self.beta_max!r}")
    _require(is_whole_number(self.N) and self.N >= 2, name, f"N must be an int >= 2, got {self.N!r}")
    object.__setattr__(self, "N", int(self.N))  # N = 1000.0 from a config indexes arrays too

  def beta(self, t: Array) -> Array:
    """The noise rate ``beta(t) = beta_min + t (beta_max - beta_min)``, ``(batch,)``."""
    return self.beta_min + t * (self.beta_max - self.beta_min)

  def _log_mean_coeff(self, t: Array) -> Array:
    return -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

  def alpha(self, t):
    return jnp.exp(self._log_mean_coeff(t))

  def sigma(self, t):
    return jnp.sqrt(-jnp.expm1(2.0 * self._log_mean_coeff(t)))

  def alpha_dot(self, t):
    return -0.5 * self.beta(t) * self.alpha(t)

  def drift_coefficient(self, t):
    return -0.5 * self.beta(t)

  def diffusion_squared(self, t):
    return self.beta(t)

  @property
  def discrete_betas(self) -> Array:
    """DDPM's betas ``linspace(beta_min / N, beta_max / N, N)``, shape ``(N,)``."""
    return jnp.linspace(self.beta_min / self.N, self.beta_max / self.N, self.N)

  def discretize(self, x: Array, t: Array) -> Tuple[Array, Array]:
    """DDPM discretization ``x_{i+1} = x_i + f_i + G_i z``: -> (f ``(batch, ...)``, G ``(batch,)``)."""
    _check_batch(x, t)
    timestep = discrete_step(t, self.N, self.T)
    beta = self.discrete_betas[timestep]
    f = broadcast_to(jnp.sqrt(1.0 - beta), x) * x - x
    return f, jnp.sqrt(beta)


@dataclasses.dataclass(frozen=True)
class SubVPSDE(VPSDE):
  """score_sde's sub-VP SDE: VP drift, diffusion ``beta(t) (1 - exp(-2 int_0^t beta))``;
  marginal std ``1 - exp(int_0^t -beta)`` (not its square root). T = 1, prior N(0, I)."""

  def sigma(self, t):
    return -jnp.expm1(2.0 * self._log_mean_coeff(t))

  def diffusion_squared(self, t):
    discount = -jnp.expm1(4.0 * self._log_mean_coeff(t))
    return self.beta(t) * discount

  def sigma_dot(self, t):
    return -2.0 * self.alpha_dot(t) * self.alpha(t)

  def discretize(self, x, t):
    raise NotImplementedError(
        "the sub-VP SDE has no DDPM-style discretization (score_sde falls back to Euler-Maruyama "
        "for it; so do jaxgen's reverse-diffusion and ancestral samplers)")


@dataclasses.dataclass(frozen=True)
class VESDE(Process):
  """score_sde's variance-exploding SDE: ``sigma(t) = sigma_min (sigma_max / sigma_min)^t``,
  ``dx = sigma(t) sqrt(2 log(sigma_max / sigma_min)) dw``; T = 1, prior N(0, sigma_max^2 I).

  As in score_sde, the marginal std is ``sigma(t)`` (the data is taken as already perturbed
  with ``sigma_min``).
  """
  sigma_min: float = 0.01
  sigma_max: float = 50.0
  N: int = 1000

  def __post_init__(self):
    _require(0.0 < self.sigma_min < self.sigma_max, "VESDE",
             f"need 0 < sigma_min < sigma_max, got sigma_min={self.sigma_min!r}, "
             f"sigma_max={self.sigma_max!r}")
    _require(math.isfinite(self.sigma_max), "VESDE",
             f"sigma_max must be finite, got {self.sigma_max!r}")
    _require(is_whole_number(self.N) and self.N >= 2, "VESDE", f"N must be an int >= 2, got {self.N!r}")
    object.__setattr__(self, "N", int(self.N))

  @property
  def prior_std(self):
    return self.sigma_max

  def alpha(self, t):
    return jnp.ones_like(t)

  def sigma(self, t):
    return self.sigma_min * (self.sigma_max / self.sigma_min) ** t

  def alpha_dot(self, t):
    return jnp.zeros_like(t)

  def sigma_dot(self, t):
    return self.sigma(t) * math.log(self.sigma_max / self.sigma_min)

  def drift_coefficient(self, t):
    return jnp.zeros_like(t)

  def diffusion_squared(self, t):
    return self.sigma(t) ** 2 * 2.0 * math.log(self.sigma_max / self.sigma_min)

  @property
  def discrete_sigmas(self) -> Array:
    """SMLD's noise levels ``exp(linspace(log sigma_min, log sigma_max, N))``, shape ``(N,)``."""
    return jnp.exp(jnp.linspace(math.log(self.sigma_min), math.log(self.sigma_max), self.N))

  def discretize(self, x: Array, t: Array) -> Tuple[Array, Array]:
    """SMLD discretization: -> (f = 0 ``(batch, ...)``, G ``(batch,)``)."""
    _check_batch(x, t)
    timestep = discrete_step(t, self.N, self.T)
    sigma = self.discrete_sigmas[timestep]
    adjacent = jnp.where(timestep == 0, 0.0, self.discrete_sigmas[jnp.maximum(timestep - 1, 0)])
    return jnp.zeros_like(x), jnp.sqrt(sigma**2 - adjacent**2)


@dataclasses.dataclass(frozen=True)
class LinearPath(Process):
  """Rectified flow / flow matching path ``x_t = (1 - t) x_0 + t eps``; T = 1, prior N(0, I).

  Its SDE is singular at ``t = 1`` (``alpha = 0``); flows use the velocity
  ``v = eps - x_0`` directly (see :mod:`jaxgen.predictions`).
  """

  def alpha(self, t):
    return 1.0 - t

  def sigma(self, t):
    return t

  def alpha_dot(self, t):
    return -jnp.ones_like(t)

  def sigma_dot(self, t):
    return jnp.ones_like(t)


@dataclasses.dataclass(frozen=True)
class EDMPath(Process):
  """EDM's path ``x_t = x_0 + t eps`` (``sigma = t``) on ``[sigma_min, sigma_max]``;
  prior N(0, sigma_max^2 I)."""
  sigma_min: float = 0.002
  sigma_max: float = 80.0
  sigma_data: float = 0.5

  def __post_init__(self):
    _require(0.0 < self.sigma_min < self.sigma_max, "EDMPath",
             f"need 0 < sigma_min < sigma_max, got sigma_min={self.sigma_min!r}, "
             f"sigma_max={self.sigma_max!r}")
    _require(math.isfinite(self.sigma_max), "EDMPath",
             f"sigma_max must be finite, got {self.sigma_max!r}")
    _require(self.sigma_data > 0.0 and math.isfinite(self.sigma_data), "EDMPath",
             f"sigma_data must be finite and > 0, got {self.sigma_data!r}")

  @property
  def T(self):
    return self.sigma_max

  @property
  def t_min(self):
    return self.sigma_min

  @property
  def prior_std(self):
    return self.sigma_max

  def alpha(self, t):
    return jnp.ones_like(t)

  def sigma(self, t):
    return t

  def alpha_dot(self, t):
    return jnp.zeros_like(t)

  def sigma_dot(self, t):
    return jnp.ones_like(t)

  def drift_coefficient(self, t):
    return jnp.zeros_like(t)

  def diffusion_squared(self, t):
    return 2.0 * t


def alpha_at_end(process: Process) -> float:
  """``alpha(T)`` as a Python float (host arithmetic, also under a trace): 0 on the linear path,
  whose SDE and EDM-style schedules are singular at ``T``."""
  with jax.ensure_compile_time_eval():
    return float(process.alpha(jnp.asarray([process.T], jnp.float32))[0])


def probability_flow_drift(process: Process, score_fn: ScoreFn) -> Callable[[Array, Array], Array]:
  """Drift of the probability-flow ODE ``dx/dt = f(t) x - g(t)^2 / 2 * score(x, t)``.

  Args:
    process: a :class:`Process`.
    score_fn: ``score_fn(x, t)`` with ``x`` ``(batch, ...)``, ``t`` ``(batch,)`` -> ``(batch, ...)``.
  Returns:
    ``drift_fn(x, t) -> (batch, ...)``, a ``jax.tree_util.Partial``: the arrays a pytree
    ``score_fn`` carries stay traced in the samplers (see ``jaxgen._jit``).
  """
  return jax.tree_util.Partial(_probability_flow_drift, process, score_fn)


def _probability_flow_drift(process, score_fn, x, t):
  f = broadcast_to(process.drift_coefficient(t), x)
  g2 = broadcast_to(process.diffusion_squared(t), x)
  return f * x - 0.5 * g2 * score_fn(x, t)


def reverse_sde(process: Process, score_fn: ScoreFn, probability_flow: bool = False):
  """Reverse-time SDE ``dx = [f x - g^2 score] dt + g dw_bar`` (or the PF-ODE if asked).

  Returns ``rsde(x, t) -> (drift (batch, ...), diffusion (batch,))``, the drift written for time
  running forward (integrate with negative ``dt``).
  """

  def rsde(x, t):
    drift, diffusion = process.sde(x, t)
    score = score_fn(x, t)
    scale = 0.5 if probability_flow else 1.0
    drift = drift - broadcast_to(diffusion**2, x) * score * scale
    diffusion = jnp.zeros_like(diffusion) if probability_flow else diffusion
    return drift, diffusion

  return rsde


PROCESSES = {
    "vp": VPSDE,
    "subvp": SubVPSDE,
    "ve": VESDE,
    "linear": LinearPath,
    "edm": EDMPath,
}


def get_process(name: str, **kwargs) -> Process:
  """Build a process from its config name (``vp``, ``subvp``, ``ve``, ``linear``, ``edm``)."""
  if name not in PROCESSES:
    raise ValueError(f"unknown process name {name!r}; expected one of {sorted(PROCESSES)}")
  cls = PROCESSES[name]
  fields = {f.name for f in dataclasses.fields(cls)}
  unknown = set(kwargs) - fields
  if unknown:
    raise ValueError(f"unknown argument(s) {sorted(unknown)} for process {name!r}; "
                     f"accepted: {sorted(fields)}")
  return cls(**kwargs)
