"""Conversions between the four things a network can predict at ``x_t = alpha x_0 + sigma eps``.

* ``score``    = grad log p_t(x_t) = -E[eps | x_t] / sigma
* ``eps``      = E[eps | x_t]                       (noise prediction, DDPM)
* ``x0``       = E[x_0 | x_t]                       (data / denoiser prediction, EDM)
* ``velocity`` = alpha' E[x_0 | x_t] + sigma' E[eps | x_t]   (flow matching; equals the
  probability-flow ODE drift of the process)

All functions are pure and work for any :class:`jaxgen.processes.Process`. ``x`` is
``(batch, ...)`` and ``t`` is ``(batch,)``; outputs have the shape of ``x``.
"""
from __future__ import annotations

from typing import Callable, Tuple

import jax
import jax.numpy as jnp

from jaxgen._checks import check_positive_number, concrete_float
from jaxgen.processes import Process, _check_batch, broadcast_to, float32_time

Array = jax.Array
PREDICTION_TYPES = ("score", "eps", "x0", "velocity")


def _coefficients(process: Process, t: Array, x: Array):
  t = float32_time(t)
  return (broadcast_to(process.alpha(t), x), broadcast_to(process.sigma(t), x),
          broadcast_to(process.alpha_dot(t), x), broadcast_to(process.sigma_dot(t), x))


def to_x0_eps(process: Process, x: Array, t: Array, prediction: Array,
              prediction_type: str) -> Tuple[Array, Array]:
  """Turn any prediction at ``(x, t)`` into the pair ``(x0, eps)`` with ``x = alpha x0 + sigma eps``.

  Args:
    process: the noise process.
    x: noisy input ``(batch, ...)``; t: ``(batch,)``.
    prediction: network output ``(batch, ...)``.
    prediction_type: one of ``score``, ``eps``, ``x0``, ``velocity``.
  Returns:
    ``(x0, eps)``, each ``(batch, ...)``.
  """
  alpha, sigma, alpha_dot, sigma_dot = _coefficients(process, t, x)
  if prediction_type == "score":
    eps = -sigma * prediction
    return (x - sigma * eps) / alpha, eps
  if prediction_type == "eps":
    return (x - sigma * prediction) / alpha, prediction
  if prediction_type == "x0":
    # Where sigma = 0 (the linear and EDM paths at t = 0) eps is 0/0; its limit for the exact
    # posterior mean is E[eps | x_0] = 0 (the noise is independent of the data), and eps = 0 is
    # taken there, so that the drift alpha' x0 + sigma' eps stays finite (with finite gradients).
    zero = sigma == 0
    eps = jnp.where(zero, 0.0, (x - alpha * prediction) / jnp.where(zero, 1.0, sigma))
    return prediction, eps
  if prediction_type == "velocity":
    # Where sigma' is infinite (VP at t = 0, where sigma = 0) the limit of both quotients is
    # taken: x0 = x / alpha, eps = 0. Each branch is finite where the other is selected, so no
    # inf * 0 reaches a gradient in x (alpha = 0 on the linear path at T, where sigma' = 1).
    finite = jnp.isfinite(sigma_dot)
    sigma_dot = jnp.where(finite, sigma_dot, 1.0)
    det = alpha * sigma_dot - sigma * alpha_dot
    x0 = jnp.where(finite, (sigma_dot * x - sigma * prediction) / det,
                   x / jnp.where(finite, 1.0, alpha))
    eps = jnp.where(finite, (alpha * prediction - alpha_dot * x) / det, 0.0)
    return x0, eps
  raise ValueError(f"unknown prediction_type {prediction_type!r}; expected one of {PREDICTION_TYPES}")


def from_x0_eps(process: Process, x: Array, t: Array, x0: Array, eps: Array,
                prediction_type: str) -> Array:
  """Inverse of :func:`to_x0_eps`: express ``(x0, eps)`` as a ``prediction_type`` output."""
  alpha, sigma, alpha_dot, sigma_dot = _coefficients(process, t, x)
  del alpha
  if prediction_type == "score":
    return -eps / sigma
  if prediction_type == "eps":
    return eps
  if prediction_type == "x0":
    return x0
  if prediction_type == "velocity":
    return alpha_dot * x0 + sigma_dot * eps
  raise ValueError(f"unknown prediction_type {prediction_type!r}; expected one of {PREDICTION_TYPES}")


def convert(process: Process, x: Array, t: Array, prediction: Array, source: str,
            target: str) -> Array:
  """Convert a ``source``-type prediction at ``(x, t)`` into a ``target``-type one.

  ``x``, ``prediction``: ``(batch, ...)``; ``t``: ``(batch,)``. Returns ``(batch, ...)``: the
  prediction itself when ``source == target``, otherwise computed with coefficients in at least
  float32. Score and eps convert into each other without dividing by ``alpha`` (safe at
  ``alpha = 0``); into ``x0`` or ``velocity`` they need ``1 / alpha``, infinite where ``alpha = 0``
  (the linear path at ``T``). A score becomes a velocity as the probability-flow drift ``f x - g^2 / 2 score`` (finite at ``t = 0``
  for VP / sub-VP, where ``sigma'`` is infinite).
  """
  for name in (source, target):
    if name not in PREDICTION_TYPES:
      raise ValueError(f"unknown prediction_type {name!r}; expected one of {PREDICTION_TYPES}")
  _check_batch(x, t)
  if jnp.shape(prediction) != jnp.shape(x):
    raise ValueError(f"prediction has shape {jnp.shape(prediction)} but x has shape {jnp.shape(x)}")
  if source == target:
    return prediction
  t = float32_time(t)
  sigma = broadcast_to(process.sigma(t), x)
  if {source, target} == {"score", "eps"}:
    return -sigma * prediction if source == "score" else -prediction / sigma
  if source == "score" and target == "velocity":
    f = broadcast_to(process.drift_coefficient(t), x)
    g2 = broadcast_to(process.diffusion_squared(t), x)
    return f * x - 0.5 * g2 * prediction
  x0, eps = to_x0_eps(process, x, t, prediction, source)
  return from_x0_eps(process, x, t, x0, eps, target)


def score_to_eps(process, x, t, score):
  """``eps = -sigma(t) score``; shapes ``(batch, ...)``."""
  return convert(process, x, t, score, "score", "eps")


def eps_to_score(process, x, t, eps):
  """``score = -eps / sigma(t)``; shapes ``(batch, ...)``."""
  return convert(process, x, t, eps, "eps", "score")


def eps_to_x0(process, x, t, eps):
  """``x0 = (x - sigma eps) / alpha``; shapes ``(batch, ...)``."""
  return convert(process, x, t, eps, "eps", "x0")


def x0_to_eps(process, x, t, x0):
  """``eps = (x - alpha x0) / sigma``; shapes ``(batch, ...)``."""
  return convert(process, x, t, x0, "x0", "eps")


def x0_to_score(process, x, t, x0):
  """``score = -(x - alpha x0) / sigma^2``; shapes ``(batch, ...)``."""
  return convert(process, x, t, x0, "x0", "score")


def score_to_velocity(process, x, t, score):
  """Velocity (= PF-ODE drift) from a score; shapes ``(batch, ...)``."""
  return convert(process, x, t, score, "score", "velocity")


def velocity_to_score(process, x, t, velocity):
  """Score from a velocity prediction; shapes ``(batch, ...)``."""
  return convert(process, x, t, velocity, "velocity", "score")


def as_score_fn(process: Process, model_fn: Callable[[Array, Array], Array],
                prediction_type: str) -> Callable[[Array, Array], Array]:
  """Wrap ``model_fn(x, t)`` predicting ``prediction_type`` into ``score_fn(x, t)`` (a
  ``jax.tree_util.Partial``, so that a pytree ``model_fn``'s arrays stay traced)."""
  return jax.tree_util.Partial(_converted, process, model_fn, prediction_type, "score")


def _converted(process, model_fn, source, target, x, t):
  return convert(process, x, t, model_fn(x, t), source, target)


def as_drift_fn(process: Process, model_fn: Callable[[Array, Array], Array],
                prediction_type: str) -> Callable[[Array, Array], Array]:
  """Wrap ``model_fn(x, t)`` into the probability-flow drift ``drift_fn(x, t)`` (the velocity).

  Refuses ``score``/``eps`` predictions on a path with ``alpha(T) = 0`` (the linear path): their
  drift is infinite at ``T``, where every sampler and likelihood solve starts or ends.
  An ``x0`` prediction's drift divides by ``sigma(t)``; where ``sigma = 0`` (the linear and EDM
  paths at ``t = 0``) it takes the limit of the exact field, ``eps = 0``: the drift there is
  ``alpha'(0) x0_hat``, finite, so solves may end at ``process.t_min``.
  """
  if prediction_type in ("score", "eps"):
    from jaxgen.processes import alpha_at_end  # pylint: disable=import-outside-toplevel
    if alpha_at_end(process) == 0.0:
      raise ValueError(f"a {prediction_type!r} prediction on {type(process).__name__} (alpha(T) "
                       f"= 0) has no finite probability-flow drift at t = T: predict "
                       f"'velocity' or 'x0' there")
  if prediction_type == "velocity":
    return model_fn
  if prediction_type == "score":
    from jaxgen.processes import probability_flow_drift  # pylint: disable=import-outside-toplevel
    return probability_flow_drift(process, model_fn)
  return jax.tree_util.Partial(_converted, process, model_fn, prediction_type, "velocity")


# --- EDM preconditioning (Karras et al. 2022, Table 1) --------------------------------------------
def edm_preconditioning(sigma: Array, sigma_data: float = 0.5) -> Tuple[Array, Array, Array, Array]:
  """EDM's ``(c_skip, c_out, c_in, c_noise)`` for noise levels ``sigma`` ``(batch,)``.

  The denoiser is ``D(x; sigma) = c_skip x + c_out F(c_in x; c_noise)``, each ``(batch,)``.
  ``sigma_data`` (the data's standard deviation) must be positive: at 0 the denoiser would
  ignore its network.
  """
  if concrete_float(sigma_data) is not None:  # (traced, or an array of several: the caller's)
    check_positive_number(sigma_data, "`sigma_data`")
  sigma = jnp.asarray(sigma)
  total = sigma**2 + sigma_data**2
  c_skip = sigma_data**2 / total
  c_out = sigma * sigma_data / jnp.sqrt(total)
  c_in = 1.0 / jnp.sqrt(total)
  c_noise = jnp.log(sigma) / 4.0
  return c_skip, c_out, c_in, c_noise


def edm_denoiser(network_fn: Callable[[Array, Array], Array], sigma_data: float = 0.5):
  """Wrap a raw network ``F(x_scaled, c_noise)`` into EDM's denoiser ``D(x, sigma) -> x0`` (a
  ``jax.tree_util.Partial``, so that a pytree ``network_fn``'s arrays stay traced)."""
  return jax.tree_util.Partial(_edm_denoise, network_fn, sigma_data)


def _edm_denoise(network_fn, sigma_data, x, sigma):
  c_skip, c_out, c_in, c_noise = edm_preconditioning(sigma, sigma_data)
  raw = network_fn(broadcast_to(c_in, x) * x, c_noise)
  return broadcast_to(c_skip, x) * x + broadcast_to(c_out, x) * raw


def edm_loss_weight(sigma: Array, sigma_data: float = 0.5) -> Array:
  """EDM's loss weight ``lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2``."""
  return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2
