"""``process.marginal`` against Monte Carlo simulation of each forward SDE, and ``discretize``
against score_sde's DDPM / SMLD definitions.

Monte Carlo: ``N_PATHS`` Euler-Maruyama paths of ``dx = f(t) x dt + g(t) dw`` from a fixed ``x0``.
Tolerance: ``Z`` standard errors of the sample mean (``std / sqrt(n)``) and of the sample std
(``std / sqrt(2 n)``), plus the exact bias of the Euler-Maruyama scheme itself, computed by its
moment recursion in float64 (``m <- (1 + f h) m``, ``v <- (1 + f h)^2 v + g^2 h``), which is
asserted to stay below 2% of the scale.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgen import processes

N_PATHS = 20000
Z = 5.0
X0 = np.array([0.8, -1.3])

# process, start time, end time, number of EM steps, checkpoints (step indices)
CASES = {
    "vp": (processes.VPSDE(), 0.0, 1.0, 1000, (100, 500, 1000)),
    "subvp": (processes.SubVPSDE(), 0.0, 1.0, 1000, (100, 500, 1000)),
    "ve": (processes.VESDE(), 0.0, 1.0, 1000, (100, 500, 1000)),
    # t = 4, 20, 80 (EM's variance sum_k 2 t_k h lags t^2 by t h: 2% at t = 4)
    "edm": (processes.EDMPath(), 0.0, 80.0, 1000, (50, 250, 1000)),
    # The linear path's SDE is singular at t = 1 (alpha = 0): stop at 0.9.
    "linear": (processes.LinearPath(), 0.0, 0.9, 1000, (100, 500, 1000)),
}


def _coefficients(process, times):
  t = jnp.asarray(times, jnp.float32)
  return (np.asarray(process.drift_coefficient(t), np.float64),
          np.asarray(process.diffusion_squared(t), np.float64))


def _simulate(key, process, t0, t1, num_steps, checkpoints):
  """Euler-Maruyama from ``X0`` (plus ``sigma(t0)`` noise, e.g. VE's sigma_min) -> samples at the
  checkpoints, ``(len(checkpoints), N_PATHS, 2)``, and the times."""
  times = np.linspace(t0, t1, num_steps + 1)
  h = (t1 - t0) / num_steps
  k0, k_loop = jax.random.split(key)
  sigma0 = float(process.sigma(jnp.asarray([t0], jnp.float32))[0])
  x = jnp.asarray(X0, jnp.float32) + sigma0 * jax.random.normal(k0, (N_PATHS, 2))
  f, g2 = _coefficients(process, times[:-1])

  @jax.jit
  def run(x, key):
    def step(x, inputs):
      key, f_k, g2_k = inputs
      x = x + f_k * x * h + jnp.sqrt(g2_k * h) * jax.random.normal(key, x.shape)
      return x, x

    keys = jax.random.split(key, num_steps)
    _, path = jax.lax.scan(step, x, (keys, jnp.asarray(f, jnp.float32),
                                     jnp.asarray(g2, jnp.float32)))
    return path[jnp.asarray(checkpoints) - 1]

  return np.asarray(run(x, k_loop), np.float64), times


def _euler_maruyama_moments(process, times, t0, checkpoints):
  """Exact mean factor and variance of the Euler-Maruyama scheme at the checkpoints (float64)."""
  f, g2 = _coefficients(process, times[:-1])
  h = times[1] - times[0]
  m, v = 1.0, float(process.sigma(jnp.asarray([t0], jnp.float32))[0]) ** 2
  out = {}
  for k in range(len(f)):
    m, v = (1.0 + f[k] * h) * m, (1.0 + f[k] * h) ** 2 * v + g2[k] * h
    if k + 1 in checkpoints:
      out[k + 1] = (m, v)
  return out


@pytest.mark.parametrize("name", sorted(CASES))
def test_marginal_matches_monte_carlo_of_the_sde(name):
  process, t0, t1, num_steps, checkpoints = CASES[name]
  samples, times = _simulate(jax.random.PRNGKey(7), process, t0, t1, num_steps, checkpoints)
  scheme = _euler_maruyama_moments(process, times, t0, checkpoints)
  for x, k in zip(samples, checkpoints):
    t = np.full((N_PATHS,), times[k])
    mean, std = process.marginal(jnp.tile(jnp.asarray(X0, jnp.float32), (N_PATHS, 1)),
                                 jnp.asarray(t, jnp.float32))
    assert mean.shape == (N_PATHS, 2) and std.shape == (N_PATHS,)
    np.testing.assert_allclose(mean, jnp.broadcast_to(mean[:1], mean.shape), rtol=1e-6)
    mean, std = np.asarray(mean[0], np.float64), float(std[0])
    m_scheme, v_scheme = scheme[k]
    bias_mean = np.abs(m_scheme * X0 - mean)
    bias_std = abs(math.sqrt(v_scheme) - std)
    scale = np.abs(mean) + std
    assert np.all(bias_mean <= 0.02 * scale) and bias_std <= 0.02 * std, (name, k)
    tol_mean = Z * std / math.sqrt(N_PATHS) + bias_mean + 1e-6
    tol_std = Z * std / math.sqrt(2 * N_PATHS) + bias_std + 1e-6
    err_mean = np.abs(x.mean(0) - mean)
    err_std = np.abs(x.std(0, ddof=1) - std)
    assert np.all(err_mean <= tol_mean), (name, times[k], x.mean(0), mean, tol_mean)
    assert np.all(err_std <= tol_std), (name, times[k], x.std(0, ddof=1), std, tol_std)


def test_marginal_per_example_times():
  """Each row of ``t`` gives its own marginal."""
  for name, (process, t0, t1, _, _) in CASES.items():
    t = jnp.linspace(max(t0, 1e-3), t1, 5)
    x0 = jnp.tile(jnp.asarray(X0, jnp.float32), (5, 1))
    mean, std = process.marginal(x0, t)
    for i in range(5):
      m_i, s_i = process.marginal(x0[i:i + 1], t[i:i + 1])
      np.testing.assert_allclose(mean[i], m_i[0], rtol=1e-6, err_msg=name)
      np.testing.assert_allclose(std[i], s_i[0], rtol=1e-6, err_msg=name)


# --- discretize: score_sde's DDPM (VP) and SMLD (VE) ----------------------------------------------
@pytest.mark.parametrize("N", [1000, 50])
def test_vp_discretize_is_ddpm(N):
  vp = processes.VPSDE(beta_min=0.1, beta_max=20.0, N=N)
  betas = np.linspace(0.1 / N, 20.0 / N, N)  # score_sde's discrete_betas
  t = np.array([0.0, 0.3, 0.5, 0.999, 1.0, 1e-3])
  x = np.array([[1.0, -2.0], [0.5, 0.1], [3.0, 1.0], [-1.0, 0.0], [2.0, 2.0], [0.3, -0.7]])
  f, g = vp.discretize(jnp.asarray(x, jnp.float32), jnp.asarray(t, jnp.float32))
  index = (t * (N - 1)).astype(np.int64)
  beta = betas[index]
  np.testing.assert_allclose(f, np.sqrt(1.0 - beta)[:, None] * x - x, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(g, np.sqrt(beta), rtol=1e-5)
  np.testing.assert_allclose(vp.discrete_betas, betas, rtol=1e-5)
  # The DDPM chain x_{i+1} = sqrt(1 - beta_i) x_i + sqrt(beta_i) z approximates the VP marginal
  # at t = 1: mean factor prod sqrt(1 - beta_i) vs alpha(1) (second-order difference
  # sum beta_i^2 / 4, relative).
  chain_alpha = np.prod(np.sqrt(1.0 - betas))
  alpha1 = float(vp.alpha(jnp.ones((1,)))[0])
  assert abs(math.log(chain_alpha / alpha1)) <= 1.5 * np.sum(betas**2) / 4 + 1e-4


@pytest.mark.parametrize("N", [1000, 50])
def test_ve_discretize_is_smld(N):
  ve = processes.VESDE(sigma_min=0.01, sigma_max=50.0, N=N)
  sigmas = np.exp(np.linspace(np.log(0.01), np.log(50.0), N))  # score_sde's discrete_sigmas
  t = np.linspace(0.0, 1.0, N)
  x = np.ones((N, 3))
  f, g = ve.discretize(jnp.asarray(x, jnp.float32), jnp.asarray(t, jnp.float32))
  index = np.arange(N)  # exact grid times map to their own step (plain float32 truncation can give i - 1)
  adjacent = np.where(index == 0, 0.0, sigmas[np.maximum(index - 1, 0)])
  np.testing.assert_array_equal(f, 0.0)
  np.testing.assert_allclose(g, np.sqrt(sigmas[index] ** 2 - adjacent**2), rtol=1e-4)
  np.testing.assert_allclose(ve.discrete_sigmas, sigmas, rtol=1e-5)
  # One time inside each cell [i, i + 1) / (N - 1) visits every SMLD level once (exactly on
  # i / (N - 1), float32 rounding can truncate to i - 1), and the variances G_i^2 telescope to
  # sigma_max^2, the prior's.
  cells = (np.arange(N) + 0.5) / (N - 1)
  _, g_cells = ve.discretize(jnp.ones((N, 1)), jnp.asarray(cells, jnp.float32))
  np.testing.assert_allclose(np.sum(np.asarray(g_cells, np.float64) ** 2), 50.0**2, rtol=1e-4)


def test_subvp_has_no_discretization():
  with pytest.raises(NotImplementedError):
    processes.SubVPSDE().discretize(jnp.ones((1, 2)), jnp.ones((1,)))
