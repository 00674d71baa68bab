"""Exact marginals of Gaussian and Gaussian-mixture data under any noise process.

Data ``x_0 ~ sum_k w_k N(mu_k, Sigma_k)`` (flat vectors of dimension ``d``) noised by
``x_t = alpha(t) x_0 + sigma(t) eps`` has marginal ``sum_k w_k N(alpha mu_k, alpha^2 Sigma_k +
sigma^2 I)``: its log-density, score, velocity (the PF-ODE drift) and samples are known exactly.
These are the references every test and benchmark of the core is measured against.

Every contraction here runs at the highest matrix-product precision, whatever the caller's
default: on NVIDIA GPUs XLA's default for float32 is TF32 (10-bit mantissa), which would put
~1e-3 relative errors into a reference (3e-4 nats/dim in a likelihood test on an H200).
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from jaxgen._checks import check_int
from jaxgen.processes import Process

Array = jax.Array


def _highest_precision(method):
  """Trace ``method`` with every matrix product at float32's full precision (not TF32)."""
  @functools.wraps(method)
  def wrapper(*args, **kwargs):
    with jax.default_matmul_precision("highest"):
      return method(*args, **kwargs)
  return wrapper


@dataclasses.dataclass(frozen=True)
class GaussianMixture:
  """A mixture of ``K`` full-covariance Gaussians in ``d`` dimensions.

  Attributes:
    weights: ``(K,)`` mixture weights (sum to 1).
    means: ``(K, d)``.
    covs: ``(K, d, d)`` symmetric positive definite.
  """
  weights: np.ndarray
  means: np.ndarray
  covs: np.ndarray

  def __post_init__(self):
    w, m, c = (np.asarray(a, np.float64) for a in (self.weights, self.means, self.covs))
    k = w.shape[0] if w.ndim == 1 else -1
    if w.ndim != 1 or m.shape[:1] != (k,) or m.ndim != 2 or c.shape != (k,) + m.shape[1:] * 2:
      raise ValueError(f"GaussianMixture needs weights (K,), means (K, d) and covs (K, d, d), got "
                       f"shapes {w.shape}, {m.shape} and {c.shape}")
    if not (np.all(w > 0) and abs(w.sum() - 1.0) < 1e-6):
      raise ValueError(f"GaussianMixture: weights must be positive and sum to 1, got {w.tolist()}")

  @property
  def dim(self) -> int:
    return int(self.means.shape[-1])

  @classmethod
  def gaussian(cls, mean, cov) -> "GaussianMixture":
    """A single Gaussian ``N(mean, cov)``."""
    mean = np.asarray(mean, np.float64)
    return cls(np.ones((1,)), mean[None], np.asarray(cov, np.float64)[None])

  # --- exact quantities at time t --------------------------------------------------------------
  def _components(self, process: Optional[Process], t: Optional[Array]):
    means = jnp.asarray(self.means, jnp.float32)
    covs = jnp.asarray(self.covs, jnp.float32)
    if process is None:
      return means[None], covs[None]
    alpha = process.alpha(t)[:, None, None]
    sigma = process.sigma(t)[:, None, None]
    eye = jnp.eye(self.dim, dtype=jnp.float32)
    m = alpha * means[None]                                   # (B, K, d)
    c = alpha[..., None] ** 2 * covs[None] + sigma[..., None] ** 2 * eye  # (B, K, d, d)
    return m, c

  # --- single Gaussian: one eigendecomposition, then O(d^2) per example at any t ------------------
  def _eig(self):
    lam, u = np.linalg.eigh(np.asarray(self.covs[0], np.float64))
    return jnp.asarray(lam, jnp.float32), jnp.asarray(u, jnp.float32)

  def _gaussian_terms(self, x, t, process):
    """(log p_t (B,), score (B, d), E[x0|x_t] (B, d)) for K = 1 in the covariance eigenbasis."""
    lam, u = self._eig()
    mu = jnp.asarray(self.means[0], jnp.float32)
    if process is None:
      alpha, sigma = jnp.ones((x.shape[0],)), jnp.zeros((x.shape[0],))
    else:
      alpha, sigma = process.alpha(t), process.sigma(t)
    var = alpha[:, None] ** 2 * lam[None] + sigma[:, None] ** 2           # (B, d) eigenvalues of C_t
    proj = (x - alpha[:, None] * mu) @ u                                    # (B, d)
    logp = (-0.5 * jnp.sum(proj**2 / var, -1) - 0.5 * jnp.sum(jnp.log(var), -1)
            - 0.5 * self.dim * math.log(2 * math.pi))
    score = -(proj / var) @ u.T
    x0 = mu + (alpha[:, None] * lam[None] * proj / var) @ u.T                # mu + a Sigma C^-1 (x - a mu)
    return logp, score, x0

  @_highest_precision
  def logp(self, x: Array, t: Optional[Array] = None, process: Optional[Process] = None) -> Array:
    """Exact ``log p_t(x)``: ``x`` ``(batch, d)``, ``t`` ``(batch,)`` -> ``(batch,)`` nats.

    With ``process=None`` this is the data density ``p_0``.
    """
    if len(self.weights) == 1:
      return self._gaussian_terms(x, t, process)[0]
    m, c = self._components(process, t)
    m = jnp.broadcast_to(m, (x.shape[0],) + m.shape[1:])
    c = jnp.broadcast_to(c, (x.shape[0],) + c.shape[1:])
    chol = jnp.linalg.cholesky(c)                                   # (B, K, d, d)
    diff = x[:, None, :] - m                                        # (B, K, d)
    sol = jax.scipy.linalg.solve_triangular(chol, diff[..., None], lower=True)[..., 0]
    logdet = 2.0 * jnp.sum(jnp.log(jnp.diagonal(chol, axis1=-2, axis2=-1)), axis=-1)
    comp = -0.5 * jnp.sum(sol**2, -1) - 0.5 * logdet - 0.5 * self.dim * math.log(2 * math.pi)
    return jax.nn.logsumexp(comp + jnp.log(jnp.asarray(self.weights, jnp.float32)), axis=-1)

  def _component_terms(self, x, t, process):
    """Per-component log-densities ``(B, K)`` and scores ``(B, K, d)`` of ``p_t``."""
    m, c = self._components(process, t)
    m = jnp.broadcast_to(m, (x.shape[0],) + m.shape[1:])
    c = jnp.broadcast_to(c, (x.shape[0],) + c.shape[1:])
    chol = jnp.linalg.cholesky(c)
    diff = x[:, None, :] - m
    sol = jax.scipy.linalg.solve_triangular(chol, diff[..., None], lower=True)[..., 0]
    logdet = 2.0 * jnp.sum(jnp.log(jnp.diagonal(chol, axis1=-2, axis2=-1)), axis=-1)
    comp = -0.5 * jnp.sum(sol**2, -1) - 0.5 * logdet - 0.5 * self.dim * math.log(2 * math.pi)
    comp = comp + jnp.log(jnp.asarray(self.weights, jnp.float32))
    scores = -jax.scipy.linalg.cho_solve((chol, True), diff[..., None])[..., 0]
    return comp, scores

  @_highest_precision
  def posterior_mean(self, x: Array, t: Array, process: Process):
    """Exact ``(E[x_0 | x_t], E[eps | x_t])``, each ``(batch, d)``.

    Written without dividing by ``alpha`` or ``sigma`` (``E[x_0 | x_t, k] = mu_k - alpha Sigma_k
    score_k``, ``E[eps | x_t] = -sigma score``), so it stays accurate at both ends of a path.
    """
    x0, score = self._posterior(x, t, process)
    return x0, -process.sigma(t)[:, None] * score

  def _posterior(self, x, t, process):
    """``(E[x_0 | x_t], score)``, each ``(batch, d)``."""
    if len(self.weights) == 1:
      _, score, x0 = self._gaussian_terms(x, t, process)
      return x0, score
    comp, scores = self._component_terms(x, t, process)
    resp = jax.nn.softmax(comp, axis=-1)[..., None]                    # (B, K, 1)
    alpha = process.alpha(t)[:, None, None]
    x0_k = (jnp.asarray(self.means, jnp.float32)[None]
            - alpha * jnp.einsum("kij,bkj->bki", jnp.asarray(self.covs, jnp.float32), scores))
    return jnp.sum(resp * x0_k, axis=1), jnp.sum(resp * scores, axis=1)

  @_highest_precision
  def score(self, x: Array, t: Array, process: Process) -> Array:
    """Exact score ``grad_x log p_t(x)``: ``(batch, d)``, ``(batch,)`` -> ``(batch, d)``."""
    if len(self.weights) == 1:
      return self._gaussian_terms(x, t, process)[1]
    return jax.grad(lambda y: jnp.sum(self.logp(y, t, process)))(x)

  def score_fn(self, process: Process):
    """``score_fn(x, t)`` for this data under ``process``."""
    return lambda x, t: self.score(x, t, process)

  def velocity_fn(self, process: Process):
    """Exact probability-flow drift (= the flow-matching marginal velocity) ``drift_fn(x, t)``.

    Computed as ``alpha' E[x_0 | x_t] + sigma' E[eps | x_t]``, which avoids the cancellation of
    ``f x - g^2 score / 2`` where ``f`` and ``g^2`` blow up (the linear path near ``t = 1``).
    Where ``sigma'`` is infinite (VP at ``t = 0``, where ``sigma = 0``) ``sigma' E[eps | x_t] =
    -sigma sigma' score`` takes its finite limit ``-(g^2 / 2 + f sigma^2) score``.
    """
    return functools.partial(self._velocity, process)

  @_highest_precision
  def _velocity(self, process, x, t):
    x0, score = self._posterior(x, t, process)
    sigma_dot = process.sigma_dot(t)
    finite = jnp.isfinite(sigma_dot)
    # sigma' E[eps | x_t] = -sigma sigma' score, and sigma sigma' = (d sigma^2 / dt) / 2 =
    # g^2 / 2 + f sigma^2, finite where sigma' is not. Each branch is made finite where the other
    # is selected, so that no inf * 0 reaches a derivative.
    half_d_var = jnp.where(finite, process.sigma(t) * jnp.where(finite, sigma_dot, 0.0),
                           0.5 * process.diffusion_squared(t)
                           + jnp.where(finite, 0.0, process.drift_coefficient(t))
                           * process.sigma(t) ** 2)
    return process.alpha_dot(t)[:, None] * x0 - half_d_var[:, None] * score

  @_highest_precision
  def sample(self, key: Array, n: int) -> Array:
    """``n`` samples of the data, ``(n, d)``."""
    n = check_int(n, "`n`")
    k1, k2 = jax.random.split(key)
    idx = jax.random.choice(k1, len(self.weights), (n,), p=jnp.asarray(self.weights, jnp.float32))
    chol = jnp.linalg.cholesky(jnp.asarray(self.covs, jnp.float32))
    z = jax.random.normal(k2, (n, self.dim))
    return jnp.asarray(self.means, jnp.float32)[idx] + jnp.einsum("nij,nj->ni", chol[idx], z)

  def mean(self) -> np.ndarray:
    """Mean of the data ``(d,)``."""
    return np.einsum("k,kd->d", self.weights, self.means)

  def covariance(self) -> np.ndarray:
    """Covariance of the data ``(d, d)``."""
    mu = self.mean()
    second = np.einsum("k,kij->ij", self.weights, self.covs + np.einsum("ki,kj->kij", self.means,
                                                                         self.means))
    return second - np.outer(mu, mu)


def random_gaussian(dim: int, seed: int = 0, scale: float = 1.0) -> GaussianMixture:
  """A Gaussian with a random mean and a random full (non-diagonal) covariance."""
  rng = np.random.default_rng(seed)
  a = rng.normal(size=(dim, dim)) / math.sqrt(dim)
  cov = scale**2 * (a @ a.T + 0.1 * np.eye(dim))
  mean = rng.normal(size=(dim,)) * 0.5
  return GaussianMixture.gaussian(mean, cov)


def three_gaussians_2d() -> GaussianMixture:
  """The 2-D mixture of three Gaussians used by the core tests."""
  means = np.array([[-1.5, 0.0], [1.5, 0.5], [0.0, -1.5]])
  covs = np.array([[[0.30, 0.10], [0.10, 0.20]],
                   [[0.20, -0.05], [-0.05, 0.25]],
                   [[0.15, 0.0], [0.0, 0.40]]])
  return GaussianMixture(np.array([0.3, 0.5, 0.2]), means, covs)
