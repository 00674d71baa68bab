"""Training objectives, each a pure ``loss(params, key, batch) -> (loss, aux)``.

* denoising score matching (continuous time, with ``sigma^2`` or likelihood ``g^2`` weighting,
  optionally importance-sampled time; discrete DDPM / SMLD time as score_sde),
* EDM's loss with its preconditioning,
* the velocity loss of flow matching / rectified flow.

A network is seen through ``model_fn(params, x, t, *, train, key, labels) -> prediction`` built by
:func:`make_model_fn` from a Flax ``apply`` and the process: it feeds the network the noise
conditioning that score_sde / EDM use and returns the prediction type of the config
(``score``/``eps``/``x0``/``velocity``), so losses, samplers and likelihoods convert as needed.

Shapes: ``batch["image"]`` is ``(batch, ...)`` float data (already scaled), ``batch["label"]``
``(batch,)`` int (optional).
"""
from __future__ import annotations

import math
from typing import Any, Callable, Dict, Optional, Tuple

import jax
import jax.numpy as jnp

from jaxgen import parallel, predictions
from jaxgen.processes import EDMPath, LinearPath, Process, VESDE, VPSDE, broadcast_to

Array = jax.Array
ModelFn = Callable[..., Array]


# --------------------------------------------------------------------------------------------------
# the network as a prediction
# --------------------------------------------------------------------------------------------------
def noise_conditioning(process: Process, t: Array) -> Array:
  """What the network is told about the noise level, as in score_sde / EDM; ``(batch,)``.

  VE: ``sigma(t)`` (NCSN++'s Fourier embedding takes its log); EDM: ``log(sigma) / 4``;
  VP, sub-VP, linear path: ``999 t`` (score_sde's continuous-time labels).
  """
  if isinstance(process, VESDE):
    return process.sigma(t)
  if isinstance(process, EDMPath):
    return jnp.log(t) / 4.0
  return 999.0 * t


def make_model_fn(apply_fn: Callable[..., Array], process: Process, prediction: str,
                  edm_preconditioning: bool = False) -> ModelFn:
  """Wrap a Flax ``apply_fn(variables, x, cond, y=..., train=..., rngs=...)`` into
  ``model_fn(params, x, t, *, train=False, key=None, labels=None) -> (batch, ...)`` float32.

  With ``edm_preconditioning`` the network is EDM's ``F`` and the output is the denoiser
  ``D = c_skip x + c_out F(c_in x, c_noise)`` (an ``x0`` prediction).
  """
  if prediction not in predictions.PREDICTION_TYPES:
    raise ValueError(f"unknown model prediction {prediction!r}; expected one of "
                     f"{predictions.PREDICTION_TYPES}")

  def model_fn(params, x, t, *, train: bool = False, key: Optional[Array] = None,
               labels: Optional[Array] = None):
    rngs = {"dropout": key} if (train and key is not None) else {}
    kwargs = {"y": labels} if labels is not None else {}
    if edm_preconditioning:
      sigma = process.sigma(t)
      sigma_data = getattr(process, "sigma_data", 0.5)
      c_skip, c_out, c_in, c_noise = predictions.edm_preconditioning(sigma, sigma_data)
      raw = apply_fn({"params": params}, broadcast_to(c_in, x) * x, c_noise, train=train,
                     rngs=rngs, **kwargs).astype(jnp.float32)
      return broadcast_to(c_skip, x) * x + broadcast_to(c_out, x) * raw
    cond = noise_conditioning(process, t)
    return apply_fn({"params": params}, x, cond, train=train, rngs=rngs,
                    **kwargs).astype(jnp.float32)

  return model_fn


def score_fn_from_model(model_fn: ModelFn, params, process: Process, prediction: str,
                        labels=None) -> Callable[[Array, Array], Array]:
  """``score_fn(x, t)`` of a trained model (evaluation mode)."""
  fn = lambda x, t: model_fn(params, x, t, labels=labels)
  return predictions.as_score_fn(process, fn, prediction)


def drift_fn_from_model(model_fn: ModelFn, params, process: Process, prediction: str,
                        labels=None) -> Callable[[Array, Array], Array]:
  """Probability-flow drift ``drift_fn(x, t)`` of a trained model (evaluation mode)."""
  fn = lambda x, t: model_fn(params, x, t, labels=labels)
  return predictions.as_drift_fn(process, fn, prediction)


# --------------------------------------------------------------------------------------------------
# time sampling
# --------------------------------------------------------------------------------------------------
def log_noise_to_signal(process: Process, t: Array) -> Array:
  """``lambda(t) = log(sigma^2 / alpha^2)``; increasing in ``t``. Note ``g^2 = sigma^2 lambda'``."""
  return 2.0 * (jnp.log(process.sigma(t)) - jnp.log(process.alpha(t)))


def _log_snr_range(process: Process, eps: float) -> Tuple[Array, Array]:
  """``(lambda(eps), lambda(T))``; their difference is :func:`importance_sample_time`'s ``Z``."""
  lo = log_noise_to_signal(process, jnp.asarray([eps]))[0]
  hi = log_noise_to_signal(process, jnp.asarray([process.T]))[0]
  return lo, hi


def importance_sample_time(key: Array, process: Process, batch: int, eps: float
                           ) -> Tuple[Array, Array]:
  """Sample ``t`` on ``[eps, T]`` with density ``lambda'(t) / Z`` (``lambda`` = log noise/signal).

  For the likelihood weighting ``g^2 |score - true score|^2 = lambda' |sigma score + z|^2`` this is
  the exact importance distribution (Song et al. 2021, Kingma et al. 2021): the weighted loss is
  ``Z |sigma score + z|^2``. ``lambda`` is inverted by bisection, so any process works.

  Returns ``(t (batch,), Z)``.
  """
  lo, hi = _log_snr_range(process, eps)
  target = lo + jax.random.uniform(key, (batch,)) * (hi - lo)

  def body(_, bounds):
    a, b = bounds
    mid = 0.5 * (a + b)
    go_right = log_noise_to_signal(process, mid) < target
    return jnp.where(go_right, mid, a), jnp.where(go_right, b, mid)

  a, b = jax.lax.fori_loop(0, 50, body, (jnp.full((batch,), eps), jnp.full((batch,), process.T)))
  return 0.5 * (a + b), hi - lo


def sample_time(key: Array, batch: int, eps: float, T: float, kind: str = "uniform") -> Array:
  """``t`` on ``[eps, T]``: ``uniform`` or ``logit_normal`` (SD3's flow-matching choice)."""
  if kind == "uniform":
    return eps + jax.random.uniform(key, (batch,)) * (T - eps)
  if kind == "logit_normal":
    return eps + jax.nn.sigmoid(jax.random.normal(key, (batch,))) * (T - eps)
  raise ValueError(f"unknown time_sampling {kind!r}; expected 'uniform' or 'logit_normal'")


def _normal(key: Array, shape) -> Array:
  return jax.random.normal(key, shape, jnp.float32)


# A loss's per-example randomness is drawn for the global batch: inside a per-device train step
# (``training.data_parallel='shard_map'``) each device keeps its rows of that draw, so the step
# sees the same noise as a ``jit`` of the whole batch (``parallel.global_batch_draw``).
_rows = parallel.global_batch_draw


def _reduce(values: Array, reduce_mean: bool) -> Array:
  flat = values.reshape(values.shape[0], -1)
  return jnp.mean(flat, axis=-1) if reduce_mean else jnp.sum(flat, axis=-1)


# --------------------------------------------------------------------------------------------------
# losses
# --------------------------------------------------------------------------------------------------
def dsm_loss(model_fn: ModelFn, process: Process, prediction: str, *, reduce_mean: bool = False,
             likelihood_weighting: bool = False, importance_sampling: bool = False,
             eps: float = 1e-5) -> Callable:
  """Continuous-time denoising score matching (score_sde's ``get_sde_loss_fn``).

  Weighting ``sigma^2`` gives ``|sigma score + z|^2``; likelihood weighting gives
  ``g^2 |score + z / sigma|^2`` (a bound on the negative log-likelihood), optionally with
  importance-sampled time.
  """

  def loss_fn(params, key, batch, train: bool = True):
    x0 = batch["image"]
    n = x0.shape[0]
    k_t, k_z, k_drop = jax.random.split(key, 3)
    if likelihood_weighting and importance_sampling:
      lo, hi = _log_snr_range(process, eps)
      z_norm = hi - lo
      t = _rows(lambda k, s: importance_sample_time(k, process, s[0], eps)[0], k_t, (n,))
    else:
      t = _rows(lambda k, s: sample_time(k, s[0], eps, process.T), k_t, (n,))
    z = _rows(_normal, k_z, x0.shape)
    mean, std = process.marginal(x0, t)
    x_t = mean + broadcast_to(std, x0) * z
    out = model_fn(params, x_t, t, train=train, key=k_drop, labels=batch.get("label"))
    score = predictions.convert(process, x_t, t, out, prediction, "score")
    if not likelihood_weighting:
      losses = _reduce(jnp.square(score * broadcast_to(std, x0) + z), reduce_mean)
    elif importance_sampling:
      losses = _reduce(jnp.square(score * broadcast_to(std, x0) + z), reduce_mean) * z_norm
    else:
      g2 = process.diffusion_squared(t)
      losses = _reduce(jnp.square(score + z / broadcast_to(std, x0)), reduce_mean) * g2
    return jnp.mean(losses), {"loss_per_example": losses}

  return loss_fn


def discrete_dsm_loss(model_fn: ModelFn, process: Process, prediction: str, *,
                      reduce_mean: bool = False) -> Callable:
  """Discrete-time DDPM (VP) or SMLD (VE) loss, as score_sde's ``get_ddpm_loss_fn`` /
  ``get_smld_loss_fn``; the network gets the integer step (DDPM) or sigma (SMLD)."""
  if not isinstance(process, (VPSDE, VESDE)) or type(process).__name__ == "SubVPSDE":
    raise ValueError(f"discrete-time training needs a VP or VE process, got {type(process).__name__}")

  def loss_fn(params, key, batch, train: bool = True):
    x0 = batch["image"]
    n = x0.shape[0]
    k_t, k_z, k_drop = jax.random.split(key, 3)
    idx = _rows(lambda k, s: jax.random.randint(k, s, 0, process.N), k_t, (n,))
    z = _rows(_normal, k_z, x0.shape)
    t = idx.astype(jnp.float32) / (process.N - 1) * process.T
    if isinstance(process, VPSDE):
      alphas_cumprod = jnp.cumprod(1.0 - process.discrete_betas)
      a = jnp.sqrt(alphas_cumprod[idx])
      s = jnp.sqrt(1.0 - alphas_cumprod[idx])
      x_t = broadcast_to(a, x0) * x0 + broadcast_to(s, x0) * z
      out = model_fn(params, x_t, t, train=train, key=k_drop, labels=batch.get("label"))
      eps_hat = predictions.convert(process, x_t, t, out, prediction, "eps")
      losses = _reduce(jnp.square(eps_hat - z), reduce_mean)
    else:
      sigma = process.discrete_sigmas[idx]
      x_t = x0 + broadcast_to(sigma, x0) * z
      out = model_fn(params, x_t, t, train=train, key=k_drop, labels=batch.get("label"))
      score = predictions.convert(process, x_t, t, out, prediction, "score")
      target = -z / broadcast_to(sigma, x0)
      losses = _reduce(jnp.square(score - target), reduce_mean) * sigma**2
    return jnp.mean(losses), {"loss_per_example": losses}

  return loss_fn


def edm_loss(model_fn: ModelFn, process: EDMPath, *, p_mean: float = -1.2, p_std: float = 1.2,
             reduce_mean: bool = True) -> Callable:
  """EDM's loss ``lambda(sigma) |D(x + sigma n; sigma) - x|^2``, ``ln sigma ~ N(p_mean, p_std^2)``.

  ``model_fn`` must be built with ``edm_preconditioning=True`` (it returns the denoiser ``D``).
  """

  def loss_fn(params, key, batch, train: bool = True):
    x0 = batch["image"]
    n = x0.shape[0]
    k_s, k_z, k_drop = jax.random.split(key, 3)
    sigma = jnp.exp(p_mean + p_std * _rows(_normal, k_s, (n,)))
    z = _rows(_normal, k_z, x0.shape)
    x_t = x0 + broadcast_to(sigma, x0) * z
    denoised = model_fn(params, x_t, sigma, train=train, key=k_drop, labels=batch.get("label"))
    weight = predictions.edm_loss_weight(sigma, process.sigma_data)
    losses = _reduce(jnp.square(denoised - x0), reduce_mean) * weight
    return jnp.mean(losses), {"loss_per_example": losses}

  return loss_fn


def flow_matching_loss(model_fn: ModelFn, process: Process, prediction: str = "velocity", *,
                       time_sampling: str = "uniform", eps: float = 1e-5,
                       reduce_mean: bool = True) -> Callable:
  """Conditional flow matching: regress ``alpha' x0 + sigma' z`` at ``x_t = alpha x0 + sigma z``.

  For the linear path the target is ``z - x0`` (rectified flow). ``batch["noise"]``, if present,
  is used as the coupled ``z`` (reflow pairs); otherwise ``z ~ N(0, I)``, or on a linear path its
  prior (``N(0, I)``, or the source distribution of :func:`jaxgen.rectified_flow.source_path`).
  """

  def loss_fn(params, key, batch, train: bool = True):
    x0 = batch["image"]
    n = x0.shape[0]
    k_t, k_z, k_drop = jax.random.split(key, 3)
    t_max = process.T - (eps if isinstance(process, LinearPath) else 0.0)
    t = _rows(lambda k, s: sample_time(k, s[0], eps, t_max, time_sampling), k_t, (n,))
    if "noise" in batch:
      z = batch["noise"]
    elif isinstance(process, LinearPath):  # the noise end is the prior (N(0, I) or a source)
      z = _rows(process.prior_sample, k_z, x0.shape)
    else:
      z = _rows(_normal, k_z, x0.shape)
    alpha, sigma = broadcast_to(process.alpha(t), x0), broadcast_to(process.sigma(t), x0)
    x_t = alpha * x0 + sigma * z
    target = (broadcast_to(process.alpha_dot(t), x0) * x0
              + broadcast_to(process.sigma_dot(t), x0) * z)
    out = model_fn(params, x_t, t, train=train, key=k_drop, labels=batch.get("label"))
    velocity = predictions.convert(process, x_t, t, out, prediction, "velocity")
    losses = _reduce(jnp.square(velocity - target), reduce_mean)
    return jnp.mean(losses), {"loss_per_example": losses}

  return loss_fn


def get_loss_fn(config, model_fn: ModelFn, process: Process) -> Callable:
  """The loss named by ``config.method`` / ``config.training`` (see ``configs/base.py``)."""
  training, prediction = config.training, config.model.prediction
  method = config.method
  if method == "score":
    if training.continuous:
      return dsm_loss(model_fn, process, prediction, reduce_mean=training.reduce_mean,
                      likelihood_weighting=training.likelihood_weighting,
                      importance_sampling=training.importance_sampling, eps=training.eps)
    return discrete_dsm_loss(model_fn, process, prediction, reduce_mean=training.reduce_mean)
  if method == "edm":
    if not isinstance(process, EDMPath):
      raise ValueError(f"method 'edm' needs process.name 'edm', got {type(process).__name__}")
    return edm_loss(model_fn, process, reduce_mean=training.reduce_mean)
  if method in ("flow", "rectified_flow"):
    return flow_matching_loss(model_fn, process, prediction,
                              time_sampling=training.get("time_sampling", "uniform"),
                              eps=training.eps, reduce_mean=training.reduce_mean)
  raise ValueError(f"unknown config.method {method!r}; expected 'score', 'edm', 'flow'")
