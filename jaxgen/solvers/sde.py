"""Stochastic samplers: score_sde's predictor-corrector family on the reverse-time SDE.

Predictors (one step from ``t`` to the next grid time ``t + dt``, ``dt < 0``):

* ``euler_maruyama``: Euler-Maruyama on the reverse SDE ``dx = [f x - g^2 score] dt + g dw_bar``.
* ``reverse_diffusion``: the reverse of the process's own discretization ``x_{i+1} = x_i + f_i +
  G_i z`` (DDPM for VP, SMLD for VE): ``x <- x - f_i + G_i^2 score + G_i z``. Processes without
  :meth:`discretize` (sub-VP, linear, EDM) fall back to the Euler-Maruyama-like discretization
  ``f_i = f(t) x |dt|``, ``G_i = g(t) sqrt(|dt|)`` of score_sde's base ``SDE.discretize``.
* ``ancestral``: DDPM ancestral sampling (VP) or SMLD ancestral sampling (VE).
* ``none``: no predictor.

Correctors: ``langevin`` (score_sde's annealed Langevin step with a target signal-to-noise ratio,
step size scaled by DDPM's ``alpha_i = 1 - beta_i`` on VP/sub-VP), ``none``.

Time grid: ``linspace(T, eps, num_steps)`` as score_sde; the step from grid time ``t_i`` goes to
``t_{i+1}``, and the last one from ``eps`` to ``0`` (with score_sde's defaults, ``eps = 1/N``, every
step is exactly score_sde's ``dt = -1/N``). The discrete processes (DDPM/SMLD) are rebuilt with
``N = num_steps`` so one predictor step is one step of the chain. The last step returns its mean
(no noise) when ``denoise=True``.

Shapes: samples ``(batch, ...)``, ``t`` ``(batch,)``. Every sampler returns ``(samples, nfe)``,
``nfe`` the number of ``score_fn`` evaluations per sample trajectory.
"""
from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Callable, Tuple

import jax
import jax.numpy as jnp

from jaxgen._checks import check_int
from jaxgen._jit import jit_with_callables
from jaxgen.processes import (Process, SubVPSDE, VESDE, VPSDE, alpha_at_end, broadcast_to,
                              discrete_step, reverse_sde)
from jaxgen.solvers.ode import (_check_choice, _check_positive, _check_scalar,
                                _check_shape, _concrete, _full, _resolve_eps, _shape_checked)

Array = jax.Array
ScoreFn = Callable[[Array, Array], Array]

PREDICTORS = ("euler_maruyama", "reverse_diffusion", "ancestral", "none")
CORRECTORS = ("langevin", "none")
DEFAULT_NUM_STEPS = 1000  # for processes without a discretization size ``N``


def _discrete_index(process: Process, t: Array) -> Array:
  """score_sde's ``timestep = int(t (N - 1) / T)``, ``(batch,)`` int32: the same step as
  ``process.discretize`` picks (float32 rounding of a grid time cannot move it one step down)."""
  return discrete_step(t, process.N, process.T)


def has_discretize(process: Process) -> bool:
  """Whether ``process.discretize`` is implemented (VP and VE: yes; sub-VP, linear, EDM: no)."""
  fn = getattr(process, "discretize", None)
  if fn is None:
    return False
  x = jax.ShapeDtypeStruct((1, 1), jnp.float32)
  t = jax.ShapeDtypeStruct((1,), jnp.float32)
  try:
    jax.eval_shape(fn, x, t)
  except NotImplementedError:
    return False
  return True


def _with_num_steps(process: Process, num_steps: int) -> Process:
  """The process with its discretization size ``N`` set to ``num_steps`` (if it has one)."""
  names = {f.name for f in dataclasses.fields(process)}
  if "N" in names and process.N != num_steps:
    return dataclasses.replace(process, N=num_steps)
  return process


# --- predictors: (key, process, score_fn, x, t (batch,), dt scalar < 0) -> (x, x_mean) ------------
def euler_maruyama_step(key, process, score_fn, x, t, dt):
  """One Euler-Maruyama step of the reverse SDE from ``t`` to ``t + dt`` (``dt < 0``)."""
  drift, diffusion = reverse_sde(process, score_fn)(x, t)
  x_mean = x + drift * dt
  noise = jax.random.normal(key, x.shape, x.dtype)
  return x_mean + broadcast_to(diffusion * jnp.sqrt(-dt), x) * noise, x_mean


def reverse_diffusion_step(key, process, score_fn, x, t, dt):
  """Reverse of the discretization ``x_{i+1} = x_i + f_i + G_i z`` (score_sde's
  ReverseDiffusionPredictor); Euler-Maruyama-like ``f_i, G_i`` without ``process.discretize``."""
  if has_discretize(process):
    f, g = process.discretize(x, t)
  else:
    drift, diffusion = process.sde(x, t)
    f, g = drift * (-dt), diffusion * jnp.sqrt(-dt)
  g = broadcast_to(g, x)
  x_mean = x - (f - g**2 * score_fn(x, t))
  noise = jax.random.normal(key, x.shape, x.dtype)
  return x_mean + g * noise, x_mean


def ancestral_step(key, process, score_fn, x, t, dt):
  """score_sde's AncestralSamplingPredictor: DDPM ancestral sampling for VP, SMLD's for VE."""
  del dt
  timestep = _discrete_index(process, t)
  noise = jax.random.normal(key, x.shape, x.dtype)
  if isinstance(process, VESDE):
    sigma = process.discrete_sigmas[timestep]
    adjacent = jnp.where(timestep == 0, 0.0, process.discrete_sigmas[jnp.maximum(timestep - 1, 0)])
    x_mean = x + broadcast_to(sigma**2 - adjacent**2, x) * score_fn(x, t)
    std = jnp.sqrt(adjacent**2 * (sigma**2 - adjacent**2) / sigma**2)
    return x_mean + broadcast_to(std, x) * noise, x_mean
  beta = process.discrete_betas[timestep]
  x_mean = (x + broadcast_to(beta, x) * score_fn(x, t)) / broadcast_to(jnp.sqrt(1.0 - beta), x)
  return x_mean + broadcast_to(jnp.sqrt(beta), x) * noise, x_mean


_PREDICTOR_STEPS = {"euler_maruyama": euler_maruyama_step,
                    "reverse_diffusion": reverse_diffusion_step,
                    "ancestral": ancestral_step}


# --- corrector ------------------------------------------------------------------------------------
def langevin_step(key, process, score_fn, x, t, snr, n_steps_each):
  """score_sde's LangevinCorrector: ``n_steps_each`` Langevin steps at time ``t``.

  Step size ``2 alpha (snr |z| / |score|)^2`` with the norms averaged over the batch and
  ``alpha = 1 - beta_i`` (DDPM) on VP / sub-VP, ``1`` otherwise. ``x`` ``(batch, ...)``, ``t``
  ``(batch,)``. Returns ``(x, x_mean)``. The batch mean is needed, not only score_sde's habit:
  a step size from each example's own norms depends on where that example is, which biases the
  unadjusted Langevin chain (tried: the closed-form covariance test failed in 2, 16 and 64
  dimensions). The price, in corrector-only sampling (predictor ``'none'``): one step size for
  all directions, set by the average score norm, so a direction of small variance takes a large
  step relative to it (2-D Gaussian data on VE, snr 0.16: its variance comes out 16 % low,
  as the chain's own recursion predicts; tests/test_solvers.py).
  """
  batch = x.shape[0]
  if isinstance(process, VPSDE):  # sub-VP included, as score_sde intends
    alpha = 1.0 - process.discrete_betas[_discrete_index(process, t)]
  else:
    alpha = jnp.ones_like(t)

  def body(_, carry):
    key, x, _ = carry
    key, k_noise = jax.random.split(key)
    grad = score_fn(x, t)
    noise = jax.random.normal(k_noise, x.shape, x.dtype)
    grad_norm = jnp.mean(jnp.linalg.norm(grad.reshape(batch, -1), axis=-1))
    noise_norm = jnp.mean(jnp.linalg.norm(noise.reshape(batch, -1), axis=-1))
    step_size = (snr * noise_norm / grad_norm) ** 2 * 2.0 * alpha
    x_mean = x + broadcast_to(step_size, x) * grad
    return key, x_mean + broadcast_to(jnp.sqrt(2.0 * step_size), x) * noise, x_mean

  _, x, x_mean = jax.lax.fori_loop(0, n_steps_each, body, (key, x, x))
  return x, x_mean


# Below this batch size, in data of fewer than this many dimensions, pc_sample warns that the
# Langevin corrector's batch-averaged step size is unreliable (see pc_sample).
_LANGEVIN_MIN_BATCH = 64
_LANGEVIN_MIN_BATCH_DIM = 256


# --- samplers -------------------------------------------------------------------------------------
@jit_with_callables(static_argnames=("process", "shape", "predictor", "corrector", "n_steps_each",
                                     "num_steps", "denoise"), callable_argnames=("score_fn",))
def _pc_sample(key, snr, eps, *, process, score_fn, shape, predictor, corrector, n_steps_each,
               num_steps, denoise):
  batch = shape[0]
  score_fn = _shape_checked(score_fn, "score_fn")
  k_prior, k_loop = jax.random.split(key)
  x = process.prior_sample(k_prior, shape)
  times = jnp.linspace(process.T, eps, num_steps)
  next_times = jnp.concatenate([times[1:], jnp.zeros((1,), times.dtype)])

  def body(i, carry):
    key, x, x_mean = carry
    key, k_corrector, k_predictor = jax.random.split(key, 3)
    t = _full(times[i], batch, x.dtype)
    if corrector == "langevin":
      x, x_mean = langevin_step(k_corrector, process, score_fn, x, t, snr, n_steps_each)
    if predictor != "none":
      dt = (next_times[i] - times[i]).astype(x.dtype)
      x, x_mean = _PREDICTOR_STEPS[predictor](k_predictor, process, score_fn, x, t, dt)
    return key, x, x_mean

  _, x, x_mean = jax.lax.fori_loop(0, num_steps, body, (k_loop, x, x))
  return x_mean if denoise else x


def _check_score_time(process: Process, eps) -> None:
  """The last grid time of a score sampler needs ``sigma(eps) > 0`` (the score is infinite at
  ``sigma = 0``); checked when ``eps`` is concrete."""
  eps_value = _concrete(eps)
  if eps_value is None:
    return
  with jax.ensure_compile_time_eval():
    sigma_eps = float(process.sigma(jnp.asarray([eps_value], jnp.float32))[0])
  if not sigma_eps > 0:
    raise ValueError(f"`eps` = {eps!r}: sigma(eps) = 0 for {type(process).__name__}, where a "
                     f"score is infinite; the last grid time must be > {process.t_min}")


def check_pc_options(process: Process, *, predictor: str = "reverse_diffusion",
                     corrector: str = "langevin", snr: float = 0.16, n_steps_each: int = 1,
                     num_steps=None, eps=None) -> Tuple[int, int]:
  """Checks :func:`pc_sample`'s options for ``process`` (ValueError naming the bad one); with
  ``eps``, also that the last grid time has ``sigma(eps) > 0``.

  Returns ``(num_steps, n_steps_each)``, ``num_steps`` resolved (``None`` -> ``process.N``)."""
  _check_choice(predictor, PREDICTORS, "predictor")
  _check_choice(corrector, CORRECTORS, "corrector")
  if predictor == "none" and corrector == "none":
    raise ValueError("`predictor` and `corrector` cannot both be 'none'")
  if num_steps is None:
    num_steps = getattr(process, "N", DEFAULT_NUM_STEPS)
  num_steps = check_int(num_steps, "`num_steps`")
  if num_steps < 2 and "N" in {f.name for f in dataclasses.fields(process)}:
    # The samplers rebuild the process with N = num_steps (DDPM/SMLD chain of that length).
    raise ValueError(f"`num_steps` must be >= 2 for {type(process).__name__} (its discretization "
                     f"N is set to num_steps), got {num_steps}")
  n_steps_each = check_int(n_steps_each, "`n_steps_each`")
  _check_scalar(snr, "snr")
  _check_positive(snr, "snr", finite=True)  # inf: infinite Langevin steps, non-finite samples
  alpha_T = alpha_at_end(process)
  if not alpha_T > 0:
    raise ValueError(f"{type(process).__name__} has alpha(T) = {alpha_T}: its reverse SDE is "
                     f"singular at t = T, so the predictor-corrector / Euler-Maruyama samplers "
                     f"cannot start there; use ode_sample, heun_sample or ddim_sample")
  if predictor == "ancestral" and (isinstance(process, SubVPSDE)
                                   or not isinstance(process, (VPSDE, VESDE))):
    raise ValueError(f"`predictor` 'ancestral' supports VPSDE and VESDE only, got "
                     f"{type(process).__name__}")
  uses_betas = corrector == "langevin" or predictor == "ancestral" or (
      predictor == "reverse_diffusion" and has_discretize(process))
  if isinstance(process, VPSDE) and uses_betas and not process.beta_max / num_steps < 1.0:
    raise ValueError(f"`num_steps` = {num_steps} too small for the DDPM discretization of "
                     f"{type(process).__name__}: its betas reach beta_max / num_steps = "
                     f"{process.beta_max / num_steps:.3g} >= 1")
  if eps is not None:
    _check_score_time(process, eps)
  return num_steps, n_steps_each


def pc_sample(key: Array, process: Process, score_fn: ScoreFn, shape, *,
              predictor: str = "reverse_diffusion", corrector: str = "langevin",
              snr: float = 0.16, n_steps_each: int = 1, num_steps=None, eps=None,
              denoise: bool = True) -> Tuple[Array, Array]:
  """score_sde's predictor-corrector sampler (corrector, then predictor, at each grid time).

  Args:
    key: PRNG key.
    process: the noise process; ``ancestral`` needs :class:`~jaxgen.processes.VPSDE` (not
      sub-VP) or :class:`~jaxgen.processes.VESDE`.
    score_fn: ``score_fn(x, t)``, ``x`` ``(batch, ...)``, ``t`` ``(batch,)`` -> ``(batch, ...)``.
    shape: ``(batch, ...)`` of the samples.
    predictor: one of :data:`PREDICTORS`.
    corrector: one of :data:`CORRECTORS`. The ``langevin`` corrector's step size comes from
      norms averaged over the batch (score_sde's), so samples depend on the rest of the batch.
      In high dimension (images) the norms concentrate and that does not matter; in low
      dimension small batches are unreliable (2-D Gaussian data, exact score: covariance
      40x too large at batch 1, 1.8x at batch 4, 1.1x at 64), and a warning says so.
    snr: Langevin target signal-to-noise ratio (> 0).
    n_steps_each: Langevin steps per grid time (>= 1).
    num_steps: grid size; ``None`` -> ``process.N`` (1000 for processes without ``N``).
    eps: last grid time in ``[process.t_min, T)``; ``None`` -> ``max(1e-3, process.t_min)``.
    denoise: return the mean of the last update (its noise left out).
  Returns:
    ``(samples (batch, ...), nfe)``, ``nfe = num_steps * ([predictor != 'none'] +
    n_steps_each * [corrector != 'none'])``.
  """
  num_steps, n_steps_each = check_pc_options(
      process, predictor=predictor, corrector=corrector, snr=snr, n_steps_each=n_steps_each,
      num_steps=num_steps)
  shape = _check_shape(shape)
  eps = _resolve_eps(process, eps)
  _check_score_time(process, eps)
  if corrector == "langevin" and shape[0] < _LANGEVIN_MIN_BATCH \
      and math.prod(shape[1:]) < _LANGEVIN_MIN_BATCH_DIM:
    warnings.warn(f"pc_sample: the Langevin corrector's step size averages norms over the batch; "
                  f"a batch of {shape[0]} examples of dimension {math.prod(shape[1:])} makes it "
                  f"noisy and the samples too spread (use batch >= {_LANGEVIN_MIN_BATCH}, or "
                  f"corrector='none')", stacklevel=2)
  process = _with_num_steps(process, num_steps)
  samples = _pc_sample(key, jnp.asarray(snr, jnp.float32), jnp.asarray(eps, jnp.float32),
                       process=process, score_fn=score_fn, shape=shape, predictor=predictor,
                       corrector=corrector, n_steps_each=n_steps_each, num_steps=num_steps,
                       denoise=bool(denoise))
  nfe = num_steps * (int(predictor != "none") + n_steps_each * int(corrector != "none"))
  return samples, jnp.asarray(nfe, jnp.int32)


def euler_maruyama_sample(key: Array, process: Process, score_fn: ScoreFn, shape, *,
                          num_steps=None, eps=None, denoise: bool = True) -> Tuple[Array, Array]:
  """Euler-Maruyama on the reverse SDE: :func:`pc_sample` with ``predictor='euler_maruyama'``,
  no corrector. Returns ``(samples (batch, ...), nfe = num_steps)``."""
  return pc_sample(key, process, score_fn, shape, predictor="euler_maruyama", corrector="none",
                   num_steps=num_steps, eps=eps, denoise=denoise)
