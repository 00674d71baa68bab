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

import functools
import math
from typing import Callable, Optional, Tuple

import jax
import jax.numpy as jnp

from jaxgen import augment as augment_lib, parallel, predictions
from jaxgen._checks import check_finite_number
from jaxgen.processes import (EDMPath, LinearPath, Process, SubVPSDE, VESDE, VPSDE, broadcast_to,
                              discrete_step)

Array = jax.Array
ModelFn = Callable[..., Array]


# --------------------------------------------------------------------------------------------------
# the network as a prediction
# --------------------------------------------------------------------------------------------------
def noise_conditioning(process: Process, t: Array, discrete: bool = False) -> Array:
  """What the network is told about the noise level, as in score_sde / EDM; ``(batch,)``.

  VE: ``sigma(t)`` (NCSN++'s Fourier embedding takes its log); EDM: ``log(sigma) / 4``;
  VP, sub-VP, linear path: ``999 t`` (score_sde's continuous-time labels), or with ``discrete``
  (DDPM-trained VP) the step ``t (N - 1) / T``, an integer on the DDPM grid.
  """
  if isinstance(process, VESDE):
    return process.sigma(t)
  if isinstance(process, EDMPath):
    return jnp.log(t) / 4.0
  if discrete and is_discrete_vp(process):
    return t * (process.N - 1) / process.T
  return 999.0 * t


def is_discrete_vp(process: Process) -> bool:
  """Whether discrete-time (DDPM) training of ``process`` has its own coefficients (VP, not sub-VP)."""
  return isinstance(process, VPSDE) and not isinstance(process, SubVPSDE)


def discrete_vp_coefficients(process: VPSDE, t: Array) -> Tuple[Array, Array]:
  """DDPM's ``(sqrt(alpha_bar_i), sqrt(1 - alpha_bar_i))`` at the grid step of ``t``; ``(batch,)``.

  They differ from the continuous ``alpha(t), sigma(t)`` of the same time (by 41 % in ``sigma`` at
  step 1): a DDPM-trained network's output is converted with these, as score_sde does.
  """
  alphas_cumprod = jnp.cumprod(1.0 - process.discrete_betas)
  bar = alphas_cumprod[discrete_step(t, process.N, process.T)]
  return jnp.sqrt(bar), jnp.sqrt(1.0 - bar)


def _check_ddpm_betas(process: VPSDE) -> None:
  """DDPM's betas ``beta_max / N`` must stay under 1 (else ``alpha_bar`` turns negative)."""
  if not process.beta_max / process.N < 1.0:
    raise ValueError(f"process N = {process.N} too small for DDPM's discretization of "
                     f"{type(process).__name__}: its betas reach beta_max / N = "
                     f"{process.beta_max / process.N:.3g} >= 1")


def _discrete_eps(process: VPSDE, x: Array, t: Array, out: Array, prediction: str) -> Array:
  """The eps of DDPM's ``x = a_i x0 + s_i eps`` that a ``prediction``-type output stands for."""
  a, s = (broadcast_to(c, x) for c in discrete_vp_coefficients(process, t))
  if prediction == "eps":
    return out
  if prediction == "score":
    return -s * out
  if prediction == "x0":
    return (x - a * out) / s
  raise ValueError(f"discrete-time (DDPM) training of a VP process cannot use model.prediction "
                   f"{prediction!r}: a velocity needs continuous time; use 'eps', 'x0' or 'score'")


def model_output_type(process: Process, prediction: str, *, edm_preconditioning: bool = False,
                      discrete: bool = False) -> str:
  """The prediction type that :func:`make_model_fn`'s ``model_fn`` returns for these options."""
  if edm_preconditioning:
    return "x0"
  if discrete and is_discrete_vp(process):
    return "score"
  return prediction


def make_model_fn(apply_fn: Callable[..., Array], process: Process, prediction: str,
                  edm_preconditioning: bool = False, discrete: bool = False) -> ModelFn:
  """Wrap a Flax ``apply_fn(variables, x, cond, y=..., train=..., rngs=...)`` into
  ``model_fn(params, x, t, *, train=False, key=None, labels=None, augment_labels=None) ->
  (batch, ...)`` float32 (``augment_labels``: EDM's augmentation conditioning, passed on to the
  network only when given).

  With ``edm_preconditioning`` the network is EDM's ``F`` and the output is the denoiser
  ``D = c_skip x + c_out F(c_in x, c_noise)`` (an ``x0`` prediction). With ``discrete`` on a VP
  process (DDPM training, ``training.continuous=False``) the network gets the integer step and
  its ``prediction`` is read with DDPM's coefficients; the output is then the score, which every
  sampler and likelihood can use (see :func:`model_output_type`).
  """
  if prediction not in predictions.PREDICTION_TYPES:
    raise ValueError(f"unknown model prediction {prediction!r}; expected one of "
                     f"{predictions.PREDICTION_TYPES}")
  discrete_vp = discrete and is_discrete_vp(process) and not edm_preconditioning
  if discrete_vp:
    _check_ddpm_betas(process)
    if prediction == "velocity":
      _discrete_eps(process, jnp.zeros((1,)), jnp.zeros((1,)), jnp.zeros((1,)), prediction)

  def model_fn(params, x, t, *, train: bool = False, key: Optional[Array] = None,
               labels: Optional[Array] = None, augment_labels: Optional[Array] = None):
    rngs = {"dropout": key} if (train and key is not None) else {}
    kwargs = {"y": labels} if labels is not None else {}
    if augment_labels is not None:
      kwargs["augment_labels"] = augment_labels
    if edm_preconditioning:
      sigma = process.sigma(t)
      sigma_data = getattr(process, "sigma_data", 0.5)
      c_skip, c_out, c_in, c_noise = predictions.edm_preconditioning(sigma, sigma_data)
      raw = apply_fn({"params": params}, broadcast_to(c_in, x) * x, c_noise, train=train,
                     rngs=rngs, **kwargs).astype(jnp.float32)
      return broadcast_to(c_skip, x) * x + broadcast_to(c_out, x) * raw
    cond = noise_conditioning(process, t, discrete=discrete_vp)
    out = apply_fn({"params": params}, x, cond, train=train, rngs=rngs,
                   **kwargs).astype(jnp.float32)
    if discrete_vp:
      s = broadcast_to(discrete_vp_coefficients(process, t)[1], x)
      return -_discrete_eps(process, x, t, out, prediction) / s
    return out

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


TIME_SAMPLINGS = ("uniform", "logit_normal")


def check_time_sampling(kind: str) -> None:
  """``kind`` must be one of :data:`TIME_SAMPLINGS` (ValueError naming it)."""
  if kind not in TIME_SAMPLINGS:
    raise ValueError(f"unknown time_sampling {kind!r}; expected one of {TIME_SAMPLINGS}")


def sample_time(key: Array, batch: int, eps: float, T: float, kind: str = "uniform") -> Array:
  """``t`` on ``[eps, T]``: ``uniform`` or ``logit_normal`` (SD3's flow-matching choice)."""
  check_time_sampling(kind)
  if kind == "uniform":
    return eps + jax.random.uniform(key, (batch,)) * (T - eps)
  return eps + jax.nn.sigmoid(jax.random.normal(key, (batch,))) * (T - eps)


def _normal(key: Array, shape) -> Array:
  return jax.random.normal(key, shape, jnp.float32)


# A loss's per-example randomness is drawn for the global batch: inside a per-device train step
# (``training.data_parallel='shard_map'``) each device keeps its rows of that draw, so the step
# sees the same noise as a ``jit`` of the whole batch (``parallel.global_batch_draw``).
_rows = parallel.global_batch_draw


def _reduce(values: Array, reduce_mean: bool, half_sum: bool = False) -> Array:
  """Per-example mean, or sum (``half_sum``: ``0.5 * sum``, score_sde's score-matching losses)."""
  flat = values.reshape(values.shape[0], -1)
  if reduce_mean:
    return jnp.mean(flat, axis=-1)
  return (0.5 if half_sum else 1.0) * jnp.sum(flat, axis=-1)


def _check_eps(process: Process, eps: float, T: float) -> None:
  """The smallest training time must lie in ``[process.t_min, T)``."""
  if not process.t_min <= eps < T:
    raise ValueError(f"training eps={eps!r} must satisfy t_min <= eps < T, i.e. "
                     f"{process.t_min} <= eps < {T}, for {type(process).__name__}")


# --------------------------------------------------------------------------------------------------
# losses
# --------------------------------------------------------------------------------------------------
def importance_sampling_normalizer(process: Process, eps: float = 1e-5) -> float:
  """``Z = int_eps^T g^2 / sigma^2 dt`` (the log noise-to-signal ratio's range over
  ``[eps, T]``): the constant by which the importance-sampled likelihood-weighted loss is scaled
  so that it estimates the likelihood bound (score_flow's loss omits it)."""
  with jax.ensure_compile_time_eval():
    lo, hi = (float(v) for v in _log_snr_range(process, eps))
  return hi - lo


def _augmented(augment: Optional[Callable], key: Array, x0: Array, train: bool):
  """``(x0, extra model_fn kwargs)``: EDM's augmentation of a training batch (``augment(key, x0)
  -> (x0, labels)``, the labels passed on as ``augment_labels``), or the batch itself."""
  if augment is None or not train:
    return x0, {}
  x0, labels = augment(jax.random.fold_in(key, 3), x0)
  return x0, {"augment_labels": labels}


def dsm_loss(model_fn: ModelFn, process: Process, prediction: str, *, reduce_mean: bool = False,
             likelihood_weighting: bool = False, importance_sampling: bool = False,
             eps: float = 1e-5, augment: Optional[Callable] = None) -> Callable:
  """Continuous-time denoising score matching (score_sde's ``get_sde_loss_fn``).

  Weighting ``sigma^2`` gives ``|sigma score + z|^2``; likelihood weighting gives
  ``g^2 |score + z / sigma|^2``, optionally with importance-sampled time. Over data dimensions
  the per-example loss is their mean (``reduce_mean``) or, as in score_sde, half their sum. With
  likelihood weighting and half sums both estimators have the expectation
  ``1/2 int_eps^T g^2 E|score - grad log p_t|^2 dt`` up to a constant, the score term of the
  likelihood bound (Song et al. 2021). score_flow's importance-sampled loss leaves out the
  constant normalizer ``Z`` (:func:`importance_sampling_normalizer`; 23.86 on the VP SDE with
  ``eps = 1e-5``), so this loss and its gradients are ``Z`` times score_flow's: a recipe's
  ``grad_clip = c`` corresponds to ``c Z`` here (Adam itself does not see the constant).
  ``augment``: as in :func:`edm_loss` (EDM's non-leaky augmentation of training batches).
  """
  _check_eps(process, eps, process.T)
  if likelihood_weighting and importance_sampling:
    with jax.ensure_compile_time_eval():  # host arithmetic, also when built under a trace
      lo, hi = (float(v) for v in _log_snr_range(process, eps))
    if not (math.isfinite(lo) and math.isfinite(hi)):
      raise ValueError(
          f"importance-sampled likelihood weighting needs a finite log noise-to-signal ratio on "
          f"[eps, T] = [{eps}, {process.T}], but {type(process).__name__} has "
          f"log(sigma^2/alpha^2) = {lo} at eps and {hi} at T (alpha or sigma is 0 there)")
  half_sum = True

  def loss_fn(params, key, batch, train: bool = True):
    x0, extra = _augmented(augment, key, batch["image"], train)
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
    out = model_fn(params, x_t, t, train=train, key=k_drop, labels=batch.get("label"), **extra)
    score = predictions.convert(process, x_t, t, out, prediction, "score")
    if not likelihood_weighting:
      losses = _reduce(jnp.square(score * broadcast_to(std, x0) + z), reduce_mean, half_sum)
    elif importance_sampling:
      losses = _reduce(jnp.square(score * broadcast_to(std, x0) + z), reduce_mean,
                       half_sum) * z_norm
    else:  # uniform t: times (T - eps), so that it estimates the same integral
      g2 = process.diffusion_squared(t) * (process.T - eps)
      losses = _reduce(jnp.square(score + z / broadcast_to(std, x0)), reduce_mean, half_sum) * g2
    return jnp.mean(losses), {"loss_per_example": losses}

  return loss_fn


def discrete_dsm_loss(model_fn: ModelFn, process: Process, prediction: str, *,
                      reduce_mean: bool = False, augment: Optional[Callable] = None) -> Callable:
  """Discrete-time DDPM (VP) or SMLD (VE) loss, as score_sde's ``get_ddpm_loss_fn`` /
  ``get_smld_loss_fn``; the network gets the integer step (DDPM) or sigma (SMLD).

  For VP, ``model_fn`` is best built with ``make_model_fn(..., discrete=True)`` (then
  ``prediction`` is ``'score'``); an ``eps``/``x0``/``score`` output is read with DDPM's discrete
  coefficients, the ones that made ``x_t``. Per example: mean or half sum over dimensions.
  ``augment``: as in :func:`edm_loss`.
  """
  if not isinstance(process, (VPSDE, VESDE)) or isinstance(process, SubVPSDE):
    raise ValueError(f"discrete-time training needs a VP or VE process, got {type(process).__name__}")
  if isinstance(process, VPSDE):
    _check_ddpm_betas(process)
    if prediction == "velocity":
      _discrete_eps(process, jnp.zeros((1,)), jnp.zeros((1,)), jnp.zeros((1,)), prediction)

  def loss_fn(params, key, batch, train: bool = True):
    x0, extra = _augmented(augment, key, batch["image"], train)
    n = x0.shape[0]
    k_t, k_z, k_drop = jax.random.split(key, 3)
    idx = _rows(lambda k, s: jax.random.randint(k, s, 0, process.N), k_t, (n,))
    z = _rows(_normal, k_z, x0.shape)
    t = idx.astype(jnp.float32) / (process.N - 1) * process.T
    if isinstance(process, VPSDE):
      a, s = discrete_vp_coefficients(process, t)
      x_t = broadcast_to(a, x0) * x0 + broadcast_to(s, x0) * z
      out = model_fn(params, x_t, t, train=train, key=k_drop, labels=batch.get("label"),
                     **extra)
      eps_hat = _discrete_eps(process, x_t, t, out, prediction)
      losses = _reduce(jnp.square(eps_hat - z), reduce_mean, half_sum=True)
    else:
      sigma = process.discrete_sigmas[idx]
      x_t = x0 + broadcast_to(sigma, x0) * z
      out = model_fn(params, x_t, t, train=train, key=k_drop, labels=batch.get("label"),
                     **extra)
      score = predictions.convert(process, x_t, t, out, prediction, "score")
      target = -z / broadcast_to(sigma, x0)
      losses = _reduce(jnp.square(score - target), reduce_mean, half_sum=True) * sigma**2
    return jnp.mean(losses), {"loss_per_example": losses}

  return loss_fn


def edm_loss(model_fn: ModelFn, process: EDMPath, *, p_mean: float = -1.2, p_std: float = 1.2,
             reduce_mean: bool = True, augment: Optional[Callable] = None) -> Callable:
  """EDM's loss ``lambda(sigma) |D(x + sigma n; sigma) - x|^2``, ``ln sigma ~ N(p_mean, p_std^2)``.

  ``model_fn`` must be built with ``edm_preconditioning=True`` (it returns the denoiser ``D``).
  ``augment``: optional ``augment(key, x) -> (x, labels)`` (EDM's non-leaky augmentation,
  :func:`jaxgen.augment.augment`), applied to the training images (``train=True``) before the
  noise, its labels passed to the network as ``augment_labels``; evaluation losses see the data.
  """
  check_finite_number(p_mean, "`p_mean`")
  check_finite_number(p_std, "`p_std`", minimum=0.0)

  def loss_fn(params, key, batch, train: bool = True):
    x0, extra = _augmented(augment, key, batch["image"], train)
    n = x0.shape[0]
    k_s, k_z, k_drop = jax.random.split(key, 3)
    sigma = jnp.exp(p_mean + p_std * _rows(_normal, k_s, (n,)))
    z = _rows(_normal, k_z, x0.shape)
    x_t = x0 + broadcast_to(sigma, x0) * z
    denoised = model_fn(params, x_t, sigma, train=train, key=k_drop, labels=batch.get("label"),
                        **extra)
    weight = predictions.edm_loss_weight(sigma, process.sigma_data)
    losses = _reduce(jnp.square(denoised - x0), reduce_mean) * weight
    return jnp.mean(losses), {"loss_per_example": losses}

  return loss_fn


def check_pair_shapes(batch) -> None:
  """A batch of coupled pairs (reflow pairs, an OT coupling) must hold one ``noise`` row per
  ``image`` row, of the same shape: shapes that merely broadcast (``(1, d)`` noise against
  ``(b, d)`` data) would train on another coupling without an error (ValueError)."""
  x_shape, z_shape = jnp.shape(batch["image"]), jnp.shape(batch["noise"])
  if x_shape != z_shape:
    raise ValueError(f"a batch of pairs needs batch['noise'] of the shape of batch['image'] "
                     f"(one coupled noise per example), got noise {z_shape} and image {x_shape}")


def flow_matching_loss(model_fn: ModelFn, process: Process, prediction: str = "velocity", *,
                       time_sampling: str = "uniform", eps: float = 1e-5,
                       reduce_mean: bool = True, augment: Optional[Callable] = None) -> Callable:
  """Conditional flow matching: regress ``alpha' x0 + sigma' z`` at ``x_t = alpha x0 + sigma z``.

  For the linear path the target is ``z - x0`` (rectified flow). ``batch["noise"]``, if present,
  is used as the coupled ``z`` (reflow pairs); otherwise ``z ~ N(0, I)``, or on a linear path its
  prior (``N(0, I)``, or the source distribution of :func:`jaxgen.rectified_flow.source_path`).
  ``augment``: as in :func:`edm_loss`; refused on coupled pairs (an augmented image would lose
  its noise).
  """

  t_max = process.T - (eps if isinstance(process, LinearPath) else 0.0)
  _check_eps(process, eps, t_max)
  check_time_sampling(time_sampling)

  def loss_fn(params, key, batch, train: bool = True):
    if augment is not None and "noise" in batch:
      raise ValueError("augmentation of coupled pairs (batch['noise']) would pair an augmented "
                       "image with the noise of the original: train pairs without augmentation")
    x0, extra = _augmented(augment, key, batch["image"], train)
    n = x0.shape[0]
    k_t, k_z, k_drop = jax.random.split(key, 3)
    t = _rows(lambda k, s: sample_time(k, s[0], eps, t_max, time_sampling), k_t, (n,))
    if "noise" in batch:
      check_pair_shapes(batch)
      z = batch["noise"]
    elif isinstance(process, LinearPath):  # the noise end is the prior (N(0, I) or a source)
      z = _rows(process.prior_sample, k_z, x0.shape)
    else:
      z = _rows(_normal, k_z, x0.shape)
    alpha, sigma = broadcast_to(process.alpha(t), x0), broadcast_to(process.sigma(t), x0)
    x_t = alpha * x0 + sigma * z
    target = (broadcast_to(process.alpha_dot(t), x0) * x0
              + broadcast_to(process.sigma_dot(t), x0) * z)
    out = model_fn(params, x_t, t, train=train, key=k_drop, labels=batch.get("label"), **extra)
    velocity = predictions.convert(process, x_t, t, out, prediction, "velocity")
    losses = _reduce(jnp.square(velocity - target), reduce_mean)
    return jnp.mean(losses), {"loss_per_example": losses}

  return loss_fn


def is_discrete_training(config) -> bool:
  """Whether ``config`` trains in discrete time (score_sde's DDPM / SMLD losses)."""
  return config.method == "score" and not config.training.continuous


def get_loss_fn(config, model_fn: ModelFn, process: Process) -> Callable:
  """The loss named by ``config.method`` / ``config.training`` (see ``configs/base.py``).

  ``model_fn`` is :func:`make_model_fn`'s for the same config (its output type is
  :func:`model_output_type`'s).
  """
  training, method = config.training, config.method
  prediction = model_output_type(process, config.model.prediction,
                                 edm_preconditioning=method == "edm",
                                 discrete=is_discrete_training(config))
  augment_p = float(training.get("augment_p", 0.0))
  augment_fn = functools.partial(augment_lib.augment, p=augment_p) if augment_p > 0 else None
  if method == "score":
    if training.continuous:
      return dsm_loss(model_fn, process, prediction, reduce_mean=training.reduce_mean,
                      likelihood_weighting=training.likelihood_weighting,
                      importance_sampling=training.importance_sampling, eps=training.eps,
                      augment=augment_fn)
    return discrete_dsm_loss(model_fn, process, prediction, reduce_mean=training.reduce_mean,
                             augment=augment_fn)
  if method == "edm":
    if not isinstance(process, EDMPath):
      raise ValueError(f"method 'edm' needs process.name 'edm', got {type(process).__name__}")
    return edm_loss(model_fn, process, reduce_mean=training.reduce_mean, augment=augment_fn)
  if method in ("flow", "rectified_flow"):
    return flow_matching_loss(model_fn, process, prediction,
                              time_sampling=training.get("time_sampling", "uniform"),
                              eps=training.eps, reduce_mean=training.reduce_mean,
                              augment=augment_fn)
  raise ValueError(f"unknown config.method {method!r}; expected 'score', 'edm', 'flow'")


def validate_loss_config(config, process: Process) -> None:
  """Build the config's loss once (without a network) so that its options are checked before
  training: ``training.eps``, importance sampling, a discrete-time prediction; names the field."""
  if config.method not in ("score", "edm", "flow", "rectified_flow"):
    return
  no_network = lambda *args, **kwargs: None
  try:
    make_model_fn(no_network, process, config.model.prediction,
                  edm_preconditioning=config.method == "edm",
                  discrete=is_discrete_training(config))
    get_loss_fn(config, no_network, process)
    if config.method != "edm":  # EDM's network is read as a denoiser (x0)
      predictions.as_drift_fn(process, no_network, str(config.model.prediction))
  except ValueError as e:
    raise ValueError(f"config.training / config.model: {e}") from None
