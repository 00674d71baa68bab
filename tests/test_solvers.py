"""Samplers of jaxgen.solvers against the exact score of Gaussian data.

Data ``N(mu, Sigma)`` (``closed_form.random_gaussian``, full covariance) stays Gaussian along every
path, ``x_t ~ N(alpha mu, C_t)`` with ``C_t = alpha^2 Sigma + sigma^2 I``, and with the exact score
every sampler here is linear in each eigendirection of ``Sigma``. So

* the truth is the data (the marginal at ``t = 0``: ``N(mu, Sigma)``, plus ``sigma_min^2 I`` on VE);
* the *tolerance* of a sample mean / covariance entry is ``Z`` standard errors computed from the
  true covariance (``sqrt(Sigma_ii / n)`` and ``sqrt((Sigma_ii Sigma_jj + Sigma_ij^2) / n)``) plus
  an *allowance* for what the scheme itself gets wrong in expectation:
  - deterministic samplers (Heun, DDIM, ODE): the exact expected output of the scheme, computed by
    running its scalar recursion per eigendirection in float64 (which also accounts for the prior
    ``N(0, prior_std^2 I)`` differing from ``p_T``), minus the truth, plus ``1e-3`` of the scale;
  - stochastic samplers: the exact output of the *continuous* reverse SDE started from the prior,
    minus the truth (mean contraction ``(C_0 / C_T)(alpha_T / alpha_0)``), plus 1% of the scale for
    the O(1/N) bias of a first-order scheme with N = 1000 steps (the fastest rates of the
    processes are beta_max / 2 = 10 and log(sigma_max / sigma_min) = 8.5 per unit time, so
    rate / N <= 1%), plus, for the Langevin corrector, the stationary bias of unadjusted Langevin
    (``epsilon / 2`` of variance per eigendirection at step ``epsilon``; allowed: ``epsilon``).
  An allowance is capped (asserted) at 8% of the scale so that it cannot hide a broken sampler.
"""
import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np

import pytest

from jaxgen import closed_form, predictions, processes, solvers

N_SAMPLES = 16384
Z = 5.0
PROCESSES = {
    "vp": processes.VPSDE(),
    "subvp": processes.SubVPSDE(),
    "ve": processes.VESDE(),
    "edm": processes.EDMPath(),
    "linear": processes.LinearPath(),
}


# --- exact Gaussian oracle ------------------------------------------------------------------------
class Oracle:
  """Exact score / eps / velocity / EDM denoiser of ``random_gaussian(dim, seed)`` under a process.

  Computed in the eigenbasis of ``Sigma`` (fast for 16k samples) and without dividing by ``alpha``
  (exact at ``alpha = 0`` on the linear path). Checked against ``closed_form`` below.
  """

  def __init__(self, process_name: str, dim: int):
    self.process_name, self.dim = process_name, dim
    self.process = p = PROCESSES[process_name]
    self.data = closed_form.random_gaussian(dim, seed=dim)
    self.mu = np.asarray(self.data.mean(), np.float64)
    self.cov = np.asarray(self.data.covariance(), np.float64)
    self.lam, self.U = np.linalg.eigh(self.cov)
    u, lam, mu = (jnp.asarray(a, jnp.float32) for a in (self.U, self.lam, self.mu))

    def posterior(x, t):  # (E[x0 | x_t], E[eps | x_t])
      a, s = p.alpha(t)[:, None], p.sigma(t)[:, None]
      y = (x - a * mu) @ u
      c = a**2 * lam + s**2
      return mu + (a * lam * y / c) @ u.T, (s * y / c) @ u.T

    def velocity(x, t):
      x0, eps = posterior(x, t)
      return p.alpha_dot(t)[:, None] * x0 + p.sigma_dot(t)[:, None] * eps

    self.score_fn = lambda x, t: -posterior(x, t)[1] / p.sigma(t)[:, None]
    self.eps_fn = lambda x, t: posterior(x, t)[1]
    self.drift_fn = velocity
    self.denoiser_fn = lambda x, sigma: posterior(x, sigma)[0]  # EDM path: t = sigma

  # float64 coefficients at numpy times
  def coefficients(self, t):
    t = jnp.asarray(np.atleast_1d(t), jnp.float32)
    p = self.process
    return tuple(np.asarray(f(t), np.float64) for f in (p.alpha, p.sigma, p.alpha_dot, p.sigma_dot))

  def variances(self, t):
    """``C_t`` per eigendirection ``(len(t), dim)``."""
    a, s, _, _ = self.coefficients(t)
    return a[:, None] ** 2 * self.lam + s[:, None] ** 2

  def truth(self):
    a, s, _, _ = self.coefficients(0.0)
    return a[0] * self.mu, a[0] ** 2 * self.cov + s[0] ** 2 * np.eye(self.dim)

  def deterministic_moments(self, gain, center):
    """Moments of ``center + U diag(gain) U^T (x_T - alpha_T mu)``, ``x_T ~ N(0, s^2 I)``,
    ``s = prior_std``."""
    a_T = self.coefficients(self.process.T)[0][0]
    mean = center - self.U @ (gain * (self.U.T @ (a_T * self.mu)))
    cov = self.process.prior_std**2 * (self.U * gain**2) @ self.U.T
    return mean, cov

  def reverse_sde_moments(self):
    """Output at ``t = 0`` of the continuous reverse SDE started from the prior."""
    a0, aT = self.coefficients(0.0)[0][0], self.coefficients(self.process.T)[0][0]
    c0, cT = self.variances(0.0)[0], self.variances(self.process.T)[0]
    rho = (c0 / cT) * (aT / a0)
    mean = a0 * self.mu - self.U @ (rho * (self.U.T @ (aT * self.mu)))
    var = c0 + (self.process.prior_std**2 - cT) * rho**2
    return mean, (self.U * var) @ self.U.T


@functools.lru_cache(maxsize=None)
def oracle(process_name: str, dim: int) -> Oracle:
  return Oracle(process_name, dim)


# --- per-eigendirection recursions of the deterministic schemes (float64) -------------------------
def flow_gain(o: Oracle, t_end: float):
  """Exact probability-flow map ``T -> t_end``: gain ``sqrt(C_end / C_T)``, centre
  ``alpha_end mu``."""
  a_end = o.coefficients(t_end)[0][0]
  return np.sqrt(o.variances(t_end)[0] / o.variances(o.process.T)[0]), a_end * o.mu


def heun_edm_gain(o: Oracle, times):
  """Heun in EDM's variables (``u = x / alpha - mu`` per direction, ``du/ds = s u / (lam + s^2)``,
  ``s = sigma / alpha``) on ``times`` (ending with 0), last step Euler."""
  a, s, _, _ = o.coefficients(times)
  level = s / a
  slope = lambda u, sg: sg * u / (o.lam + sg**2)
  u = np.ones_like(o.lam)
  for i in range(len(times) - 1):
    h = level[i + 1] - level[i]
    d = slope(u, level[i])
    u_next = u + h * d
    if i < len(times) - 2:
      u_next = u + 0.5 * h * (d + slope(u_next, level[i + 1]))
    u = u_next
  return u * a[-1] / a[0], a[-1] * o.mu


def heun_time_gain(o: Oracle, times, final_euler=True):
  """Heun in ``t`` on ``v = x - alpha mu``: ``dv/dt = (alpha alpha' lam + sigma sigma') / C v``
  (the last step an Euler step when ``final_euler``)."""
  a, s, da, ds = o.coefficients(times)
  rate = lambda i: (a[i] * da[i] * o.lam + s[i] * ds[i]) / (a[i] ** 2 * o.lam + s[i] ** 2)
  v = np.ones_like(o.lam)
  for i in range(len(times) - 1):
    h = times[i + 1] - times[i]
    d = rate(i) * v
    v_next = v + h * d
    if i < len(times) - 2 or not final_euler:
      v_next = v + 0.5 * h * (d + rate(i + 1) * v_next)
    v = v_next
  return v, a[-1] * o.mu


def ddim_gain(o: Oracle, times):
  """DDIM (eta = 0) on ``times``: ``v_s = (alpha_s alpha_t lam + sigma_s sigma_t) / C_t v_t``, then
  ``x0_hat - mu = alpha_t lam / C_t v_t``."""
  a, s, _, _ = o.coefficients(times)
  c = o.variances(times)
  v = np.ones_like(o.lam)
  for i in range(len(times) - 1):
    v = v * (a[i + 1] * a[i] * o.lam + s[i + 1] * s[i]) / c[i]
  return v * a[-1] * o.lam / c[-1], o.mu


# --- the moment check -----------------------------------------------------------------------------
def check_moments(samples, o: Oracle, expected, rel_allowance=0.0, cov_allowance=0.0,
                  label=""):
  """Assert sample mean / covariance within ``Z`` standard errors + allowance of the truth.

  ``expected``: the scheme's exact expected ``(mean, cov)`` (what it gets wrong in expectation is
  allowed); ``rel_allowance``: extra allowance relative to the scale; ``cov_allowance``: extra
  absolute allowance on covariance entries. Returns the worst ``|error| / tolerance``.
  """
  x = np.asarray(samples, np.float64)
  assert x.shape == (N_SAMPLES, o.dim) and np.all(np.isfinite(x)), label
  n = x.shape[0]
  true_mean, true_cov = o.truth()
  diag = np.diag(true_cov)
  se_mean = np.sqrt(diag / n)
  se_cov = np.sqrt((np.outer(diag, diag) + true_cov**2) / n)
  scale_mean, scale_cov = np.sqrt(diag), np.sqrt(np.outer(diag, diag))
  allow_mean = np.abs(expected[0] - true_mean) + (1e-3 + rel_allowance) * scale_mean
  allow_cov = (np.abs(expected[1] - true_cov) + (1e-3 + rel_allowance) * scale_cov
               + cov_allowance)
  assert np.all(allow_mean <= 0.08 * scale_mean), (label, allow_mean / scale_mean)
  assert np.all(allow_cov <= 0.08 * scale_cov), (label, allow_cov / scale_cov)
  ratio_mean = np.abs(x.mean(0) - true_mean) / (Z * se_mean + allow_mean)
  ratio_cov = np.abs(np.cov(x.T) - true_cov) / (Z * se_cov + allow_cov)
  assert ratio_mean.max() <= 1.0, (label, "mean", x.mean(0), true_mean, ratio_mean)
  assert ratio_cov.max() <= 1.0, (label, "cov", np.cov(x.T), true_cov, ratio_cov)
  return max(ratio_mean.max(), ratio_cov.max())


KEY = jax.random.PRNGKey(20240607)
SHAPE = lambda d: (N_SAMPLES, d)


def test_oracle_matches_closed_form():
  for name in ("vp", "ve", "linear"):
    o = oracle(name, 4)
    x = o.data.sample(jax.random.PRNGKey(0), 8)
    t = jnp.linspace(0.05, 0.95, 8)
    np.testing.assert_allclose(o.score_fn(x, t), o.data.score_fn(o.process)(x, t),
                               rtol=2e-4, atol=2e-4)
    np.testing.assert_allclose(o.drift_fn(x, t), o.data.velocity_fn(o.process)(x, t),
                               rtol=2e-4, atol=2e-4)
    if name != "linear":
      np.testing.assert_allclose(
          o.drift_fn(x, t), processes.probability_flow_drift(o.process, o.score_fn)(x, t),
          rtol=2e-4, atol=2e-4)


# --- reverse-SDE samplers -------------------------------------------------------------------------
@pytest.mark.parametrize("process_name,dim", [("vp", 4), ("subvp", 2), ("ve", 2)])
def test_euler_maruyama_1000_steps(process_name, dim):
  o = oracle(process_name, dim)
  x, nfe = solvers.euler_maruyama_sample(KEY, o.process, o.score_fn, SHAPE(dim))
  assert nfe == 1000
  check_moments(x, o, o.reverse_sde_moments(), rel_allowance=0.01, label="euler_maruyama")


def _langevin_allowance(o: Oracle, snr: float) -> float:
  """Step of score_sde's Langevin corrector near t = 0, ``2 snr^2 |z|^2 / |score|^2`` with
  ``E|z|^2 = d`` and ``E|score|^2 = tr(Sigma^-1)``; unadjusted Langevin's stationary variance is
  then off by ``epsilon / 2`` per eigendirection: allow ``epsilon``."""
  return 2.0 * snr**2 * o.dim / np.sum(1.0 / o.lam)


@pytest.mark.parametrize("process_name,dim", [("vp", 2), ("subvp", 2), ("ve", 4)])
def test_predictor_corrector_reverse_diffusion_langevin(process_name, dim):
  o = oracle(process_name, dim)
  x, nfe = solvers.pc_sample(KEY, o.process, o.score_fn, SHAPE(dim), predictor="reverse_diffusion",
                             corrector="langevin", snr=0.16)
  assert nfe == 2000
  check_moments(x, o, o.reverse_sde_moments(), rel_allowance=0.01,
                cov_allowance=_langevin_allowance(o, 0.16), label="pc")


def _corrector_only_variances(o: Oracle, snr: float, num_steps: int, eps: float, n_mc: int = 20_000):
  """Per-eigendirection variance of the corrector-only chain's output (``x_mean`` of the last
  Langevin step), run as its mean-field recursion in float64: ``y <- (1 - e / v) y + sqrt(2 e) z``
  at each grid time, ``v = lam + sigma(t)^2``, with score_sde's batch-averaged step
  ``e = 2 (snr E|z| / E|score|)^2`` (the expected norms by Monte Carlo over the chain's current
  Gaussian law)."""
  times = np.linspace(o.process.T, eps, num_steps).astype(np.float32).astype(np.float64)
  sigmas = o.coefficients(times)[1]
  rng = np.random.default_rng(0)
  mean, var, out = -(o.U.T @ o.mu), np.full(o.dim, o.process.prior_std**2), None
  for sigma in sigmas:
    v = o.lam + sigma**2
    norm_z = np.linalg.norm(rng.standard_normal((n_mc, o.dim)), axis=1).mean()
    y = mean + np.sqrt(var) * rng.standard_normal((n_mc, o.dim))
    e = 2.0 * (snr * norm_z / np.linalg.norm(y / v, axis=1).mean()) ** 2
    mean, out = mean * (1 - e / v), (1 - e / v) ** 2 * var
    var = out + 2.0 * e
  return out


def test_corrector_only_langevin_on_ve_is_its_recursion():
  """Annealed Langevin alone (score_sde's SMLD sampler: predictor 'none') on VE is not exact: its
  step is set by the batch's average score norm (a harmonic mean of the variances), so a
  direction of small variance takes a large step relative to it and the final denoised step
  shrinks it (here the smallest of 2 directions comes out ~16 % under the truth). The samples
  match the chain's own per-direction recursion instead, within sampling error: the bias is the
  algorithm's, not the code's."""
  o = oracle("ve", 2)
  x, nfe = solvers.pc_sample(KEY, o.process, o.score_fn, SHAPE(2), predictor="none",
                             corrector="langevin", snr=0.16)
  assert nfe == 1000
  y = (np.asarray(x, np.float64) - o.mu) @ o.U
  expected = _corrector_only_variances(o, 0.16, 1000, 1e-3)
  truth = o.variances(1e-3)[0]
  print(f"corrector-only VE variances {y.var(0)}, recursion {expected}, truth {truth}")
  se = np.sqrt(2.0 / N_SAMPLES) * expected
  assert np.all(np.abs(y.var(0) - expected) <= Z * se + 1e-3 * truth), (y.var(0), expected)
  assert np.all(np.abs(y.mean(0)) <= Z * np.sqrt(expected / N_SAMPLES))
  assert abs(expected[0] / truth[0] - 1) > 0.1  # the recursion does see the bias


@pytest.mark.parametrize("process_name,dim", [("vp", 4), ("ve", 2)])
def test_ancestral_sampling(process_name, dim):
  o = oracle(process_name, dim)
  x, nfe = solvers.pc_sample(KEY, o.process, o.score_fn, SHAPE(dim), predictor="ancestral",
                             corrector="none")
  assert nfe == 1000
  check_moments(x, o, o.reverse_sde_moments(), rel_allowance=0.01, label="ancestral")


def test_ddim_eta_one_is_ancestral_sampling():
  """eta = 1 samples q(x_s | x_t, x0_hat): DDPM with the small posterior variance, whose bias
  (Analytic-DPM) is first order in the step; 1000 steps."""
  o = oracle("vp", 2)
  x, nfe = solvers.ddim_sample(KEY, o.process, o.eps_fn, SHAPE(2), num_steps=1000, eta=1.0)
  assert int(nfe) == 1000
  check_moments(x, o, o.reverse_sde_moments(), rel_allowance=0.015, label="ddim eta=1")


# --- deterministic samplers -----------------------------------------------------------------------
@pytest.mark.parametrize("process_name,dim,kwargs", [
    ("vp", 4, {}),
    ("subvp", 2, {}),
    ("ve", 2, {}),
    ("linear", 2, {"prediction_type": "velocity"}),
    ("edm", 2, {"schedule": "edm"}),
])
def test_ddim_100_steps(process_name, dim, kwargs):
  o = oracle(process_name, dim)
  fn = o.drift_fn if kwargs.get("prediction_type") == "velocity" else o.eps_fn
  x, nfe = solvers.ddim_sample(KEY, o.process, fn, SHAPE(dim), num_steps=100, **kwargs)
  assert int(nfe) == 100
  times = np.asarray(solvers.time_grid(o.process, 100, kwargs.get("schedule", "uniform")))
  check_moments(x, o, o.deterministic_moments(*ddim_gain(o, times)), label="ddim")


def test_edm_heun_35_steps_on_edm_path():
  o = oracle("edm", 4)
  x, nfe = solvers.edm_heun_sample(KEY, o.denoiser_fn, SHAPE(4), num_steps=35)
  assert int(nfe) == 69
  times = np.asarray(solvers.edm_time_schedule(35), np.float64)
  check_moments(x, o, o.deterministic_moments(*heun_edm_gain(o, times)), label="edm heun")


@pytest.mark.parametrize("process_name,dim,schedule", [
    ("vp", 2, "edm"), ("ve", 4, "edm"), ("linear", 2, "uniform")])
def test_heun_35_steps(process_name, dim, schedule):
  o = oracle(process_name, dim)
  x, nfe = solvers.heun_sample(KEY, o.process, o.drift_fn, SHAPE(dim), 35, schedule=schedule)
  assert int(nfe) == 69
  times = np.append(np.asarray(solvers.time_grid(o.process, 35, schedule), np.float64), 0.0)
  gain = heun_edm_gain(o, times) if schedule == "edm" else heun_time_gain(o, times)
  check_moments(x, o, o.deterministic_moments(*gain), label=f"heun {schedule}")


def test_heun_uniform_grid_ending_at_zero_spends_no_evaluation_on_a_zero_step():
  """`heun_sample(schedule='uniform', eps=0)` on the linear path: the grid already ends at 0, so
  every step is a Heun step, 2 * 35 - 2 evaluations (was 2 * 35 - 1, one on a zero-length Euler
  step from 0 to 0), with the closed-form moments of that scheme."""
  o = oracle("linear", 2)
  x, nfe = solvers.heun_sample(KEY, o.process, o.drift_fn, SHAPE(2), 35, schedule="uniform",
                               eps=0.0)
  assert int(nfe) == 68
  times = np.asarray(solvers.time_grid(o.process, 35, "uniform", 0.0), np.float64)
  assert times[-1] == 0.0
  gain = heun_time_gain(o, times, final_euler=False)
  check_moments(x, o, o.deterministic_moments(*gain), label="heun uniform to 0")
  jitted = jax.jit(lambda k: solvers.heun_sample(k, o.process, o.drift_fn, SHAPE(2), 35,
                                                 schedule="uniform", eps=0.0))(KEY)
  np.testing.assert_allclose(jitted[0], x, rtol=1e-5, atol=1e-5)
  assert int(jitted[1]) == 68
  jitted = jax.jit(lambda k: solvers.heun_sample(k, o.process, o.drift_fn, SHAPE(2), 35,
                                                 schedule="uniform"))(KEY)   # eps = 1e-3
  assert int(jitted[1]) == 69


def test_heun_sample_and_time_grid_work_inside_jit():
  """The EDM time grid is host-side arithmetic: building it inside `jax.jit` (as the evaluation
  code does around every sampler) gives the eager grid and the eager samples."""
  o = oracle("vp", 2)
  eager = solvers.heun_sample(KEY, o.process, o.drift_fn, (16, 2), 10)
  jitted = jax.jit(lambda k: solvers.heun_sample(k, o.process, o.drift_fn, (16, 2), 10))(KEY)
  np.testing.assert_allclose(jitted[0], eager[0], rtol=1e-5, atol=1e-5)
  grid = jax.jit(lambda: solvers.time_grid(o.process, 10, "edm"))()
  np.testing.assert_array_equal(grid, solvers.time_grid(o.process, 10, "edm"))


def test_heun_sample_on_edm_path_is_edm_heun_sample():
  o = oracle("edm", 2)
  a, nfe_a = solvers.edm_heun_sample(KEY, o.denoiser_fn, (64, 2), num_steps=18)
  b, nfe_b = solvers.heun_sample(KEY, o.process, o.drift_fn, (64, 2), 18, eps=0.002)
  np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
  assert int(nfe_a) == int(nfe_b) == 35


@pytest.mark.parametrize("process_name,dim,solver", [
    ("vp", 2, "dopri5"), ("subvp", 4, "tsit5"), ("ve", 2, "tsit5"), ("ve", 4, "dopri5")])
def test_adaptive_probability_flow_ode(process_name, dim, solver):
  o = oracle(process_name, dim)
  drift = processes.probability_flow_drift(o.process, o.score_fn)
  x, nfe = solvers.ode_sample(KEY, o.process, drift, SHAPE(dim), solver=solver, rtol=1e-5,
                              atol=1e-5, eps=1e-3)
  assert 20 < int(nfe) < 1000
  check_moments(x, o, o.deterministic_moments(*flow_gain(o, 1e-3)), label=solver)


def test_ode_sample_denoise_adds_one_evaluation():
  o = oracle("vp", 2)
  x, nfe = solvers.ode_sample(KEY, o.process, o.drift_fn, (256, 2), solver="rk4", num_steps=50)
  x_d, nfe_d = solvers.ode_sample(KEY, o.process, o.drift_fn, (256, 2), solver="rk4",
                                  num_steps=50, denoise=True)
  assert int(nfe) == 200 and int(nfe_d) == 201
  t = jnp.full((256,), 1e-3)
  x0_hat = predictions.to_x0_eps(o.process, x, t, o.drift_fn(x, t), "velocity")[0]
  np.testing.assert_allclose(x_d, x0_hat, rtol=1e-4, atol=1e-4)


# --- solve_ode: convergence order, direction, grids -----------------------------------------------
_A = np.array([[-0.5, 2.0], [-2.0, -0.5]])


def _linear_drift(x, t):
  return (1.0 + t)[:, None] * (x @ jnp.asarray(_A.T, jnp.float32))


def _linear_solution(x0, t0, t1):
  tau = (t1 + 0.5 * t1**2) - (t0 + 0.5 * t0**2)
  w, v = np.linalg.eig(_A * tau)
  flow = np.real(v @ np.diag(np.exp(w)) @ np.linalg.inv(v))
  return np.asarray(x0, np.float64) @ flow.T


@pytest.mark.parametrize("solver,order,steps", [
    ("euler", 1, (40, 80)), ("heun", 2, (20, 40)), ("rk4", 4, (6, 12))])
def test_fixed_step_convergence_order(solver, order, steps):
  x0 = jnp.asarray([[1.0, 0.5], [-0.3, 2.0]])
  exact = _linear_solution(x0, 0.0, 1.0)
  errors = []
  for n in steps:
    x1, nfe = solvers.solve_ode(_linear_drift, x0, 0.0, 1.0, solver=solver, num_steps=n)
    assert int(nfe) == solvers.ode.EVALS_PER_STEP[solver] * n
    errors.append(np.max(np.abs(np.asarray(x1, np.float64) - exact)))
  rates = np.log2(np.asarray(errors[:-1]) / np.asarray(errors[1:]))
  assert np.all(np.abs(rates - order) < 0.3), (solver, errors, rates)


@pytest.mark.parametrize("solver", ["dopri5", "tsit5", "rk4", "heun"])
def test_solve_ode_backward_and_forward(solver):
  x0 = jnp.asarray([[1.0, 0.5], [-0.3, 2.0]])
  x1, _ = solvers.solve_ode(_linear_drift, x0, 0.0, 0.8, solver=solver, num_steps=200)
  back, _ = solvers.solve_ode(_linear_drift, x1, 0.8, 0.0, solver=solver, num_steps=200)
  np.testing.assert_allclose(x1, _linear_solution(x0, 0.0, 0.8), rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(back, x0, rtol=2e-4, atol=2e-4)


def test_solve_ode_custom_grid():
  x0 = jnp.asarray([[1.0, 0.5]])
  ts = jnp.asarray(np.linspace(0.0, 1.0, 41) ** 1.5)
  x1, nfe = solvers.solve_ode(_linear_drift, x0, solver="heun", ts=ts)
  assert int(nfe) == 80
  np.testing.assert_allclose(x1, _linear_solution(x0, 0.0, 1.0), rtol=5e-3, atol=5e-3)


# --- NFE against an evaluation counter ------------------------------------------------------------
class Counter:
  """Wraps ``fn(x, t)`` so that every executed call (inside jit / loops) is counted."""

  def __init__(self, fn):
    self.count = 0
    self._fn = fn

    def wrapped(x, t):
      jax.debug.callback(self._increment)
      return fn(x, t)

    self.fn = wrapped

  def _increment(self):
    self.count += 1


def _counted(fn):
  c = Counter(fn)
  return c, c.fn


@pytest.mark.parametrize("solver", ["dopri5", "tsit5"])
@pytest.mark.parametrize("t0,t1", [(0.0, 1.0), (1.0, 1e-3)])
def test_adaptive_nfe_matches_counter(solver, t0, t1):
  counter, drift = _counted(_linear_drift)
  x, nfe = solvers.solve_ode(drift, jnp.ones((3, 2)), t0, t1, solver=solver, rtol=1e-6, atol=1e-6)
  jax.block_until_ready(x)
  jax.effects_barrier()
  assert int(nfe) == counter.count > 10


def _stiff_drift(x, t):
  """Stiff enough that the first attempted step of a 1e-7 solve is rejected."""
  return -50.0 * (x - jnp.sin(20 * t)[:, None]) * (1 + 10 * jnp.abs(jnp.sin(30 * t))[:, None])


@pytest.mark.parametrize("solver", ["dopri5", "tsit5"])
def test_adaptive_nfe_is_exact_when_the_first_step_is_rejected(solver):
  """The first stage comes from the initial-step choice; diffrax alone evaluated it again after
  each rejection of the first step, uncounted (4,426 calls against a reported 4,425)."""
  times = []
  def drift(x, t):
    jax.debug.callback(lambda s: times.append(float(s)), t[0])
    return _stiff_drift(x, t)
  x, nfe = solvers.solve_ode(drift, jnp.ones((3, 2)), 0.0, 1.0, solver=solver, rtol=1e-7,
                             atol=1e-7)
  jax.block_until_ready(x)
  jax.effects_barrier()
  # f(t0) and the initial-step probe, then the first attempt's 6 stages; the next attempt starts
  # again from t0 with a smaller step: the first step was rejected.
  assert times[0] == 0.0 and 0.0 < times[1] < times[2] and times[8] < times[2]
  assert int(nfe) == len(times) > 1000
  assert times.count(0.0) == 1  # f(t0, x0) once, although the first step was rejected
  reference, _ = solvers.solve_ode(_stiff_drift, jnp.ones((3, 2)), 0.0, 1.0, solver=solver,
                                   rtol=1e-9, atol=1e-9, max_steps=100_000)
  np.testing.assert_allclose(x, reference, atol=1e-5)


def test_fixed_step_and_sampler_nfe_match_counter():
  o = oracle("vp", 2)
  for solver, per_step in (("euler", 1), ("heun", 2), ("rk4", 4)):
    counter, drift = _counted(_linear_drift)
    x, nfe = solvers.solve_ode(drift, jnp.ones((3, 2)), 0.0, 1.0, solver=solver, num_steps=7)
    jax.block_until_ready(x)
    jax.effects_barrier()
    assert int(nfe) == counter.count == per_step * 7, solver

  edm = oracle("edm", 2)
  runs = [
      (lambda f: solvers.edm_heun_sample(KEY, f, (4, 2), num_steps=9), edm.denoiser_fn, 17),
      (lambda f: solvers.heun_sample(KEY, o.process, f, (4, 2), 9), o.drift_fn, 17),
      (lambda f: solvers.ddim_sample(KEY, o.process, f, (4, 2), num_steps=9), o.eps_fn, 9),
      (lambda f: solvers.pc_sample(KEY, o.process, f, (4, 2), num_steps=30, n_steps_each=2),
       o.score_fn, 90),
      (lambda f: solvers.pc_sample(KEY, PROCESSES["ve"], f, (4, 2), num_steps=9,
                                   predictor="none"), oracle("ve", 2).score_fn, 9),
      (lambda f: solvers.euler_maruyama_sample(KEY, o.process, f, (4, 2), num_steps=9),
       o.score_fn, 9),
      (lambda f: solvers.ode_sample(KEY, o.process, f, (4, 2)), o.drift_fn, None),
  ]
  for i, (run, fn, expected) in enumerate(runs):
    counter, counted_fn = _counted(fn)
    x, nfe = run(counted_fn)
    jax.block_until_ready(x)
    jax.effects_barrier()
    assert np.all(np.isfinite(np.asarray(x))), i
    assert int(nfe) == counter.count, (i, int(nfe), counter.count)
    if expected is not None:
      assert int(nfe) == expected, (i, int(nfe))


# --- discretization details and jit ---------------------------------------------------------------
@pytest.mark.parametrize("num_steps", [1000, 100])
def test_pc_grid_visits_every_discrete_step_once(num_steps):
  """With eps = 1e-3 the grid linspace(T, eps, N) maps to DDPM/SMLD indices N-1, ..., 0."""
  times = np.asarray(jnp.linspace(1.0, 1e-3, num_steps))
  vp = solvers.sde._with_num_steps(processes.VPSDE(), num_steps)
  index = np.asarray(solvers.sde._discrete_index(vp, jnp.asarray(times)))
  np.testing.assert_array_equal(index, np.arange(num_steps)[::-1])
  assert solvers.has_discretize(vp) and solvers.has_discretize(processes.VESDE())
  assert not solvers.has_discretize(processes.SubVPSDE())
  assert not solvers.has_discretize(processes.EDMPath())


def test_edm_time_schedule():
  t = np.asarray(solvers.edm_time_schedule(18, 0.002, 80.0, 7.0), np.float64)
  assert t.shape == (19,) and t[-1] == 0.0
  np.testing.assert_allclose(t[[0, 17]], [80.0, 0.002], rtol=1e-6)
  i = np.arange(18)
  ref = (80.0 ** (1 / 7) + i / 17 * (0.002 ** (1 / 7) - 80.0 ** (1 / 7))) ** 7
  np.testing.assert_allclose(t[:-1], ref, rtol=1e-5)
  grid = np.asarray(solvers.time_grid(processes.VPSDE(), 18, "edm"), np.float64)
  ratio = np.asarray(solvers.ode._noise_to_signal(processes.VPSDE(), jnp.asarray(grid)))
  expected = np.asarray(solvers.ode._rho_schedule(18, ratio[-1], ratio[0], 7.0, False))
  np.testing.assert_allclose(ratio, expected, rtol=1e-3)


def test_samplers_are_jittable_and_deterministic():
  o = oracle("vp", 2)
  pc = jax.jit(lambda k: solvers.pc_sample(k, o.process, o.score_fn, (8, 2), num_steps=30)[0])
  np.testing.assert_array_equal(pc(KEY), pc(KEY))
  np.testing.assert_allclose(
      pc(KEY), solvers.pc_sample(KEY, o.process, o.score_fn, (8, 2), num_steps=30)[0],
      rtol=1e-5, atol=1e-5)
  ode = jax.jit(lambda x: solvers.solve_ode(_linear_drift, x, 0.0, 1.0, solver="tsit5")[0])
  assert ode(jnp.ones((2, 2))).shape == (2, 2)
  a = solvers.edm_heun_sample(KEY, o.denoiser_fn, (8, 2), num_steps=5, S_churn=10.0)[0]
  b = solvers.edm_heun_sample(jax.random.PRNGKey(1), o.denoiser_fn, (8, 2), num_steps=5,
                              S_churn=10.0)[0]
  assert not np.allclose(a, b)


# --- argument validation --------------------------------------------------------------------------
def _bad_calls():
  o = oracle("vp", 2)
  vp, edm, lin = o.process, PROCESSES["edm"], PROCESSES["linear"]
  s, x = o.score_fn, jnp.ones((2, 2))
  return [
      ("predictor", lambda: solvers.pc_sample(KEY, vp, s, (2, 2), predictor="heun")),
      ("corrector", lambda: solvers.pc_sample(KEY, vp, s, (2, 2), corrector="ald")),
      ("predictor", lambda: solvers.pc_sample(KEY, vp, s, (2, 2), predictor="none",
                                              corrector="none")),
      ("predictor", lambda: solvers.pc_sample(KEY, PROCESSES["subvp"], s, (2, 2),
                                              predictor="ancestral")),
      ("snr", lambda: solvers.pc_sample(KEY, vp, s, (2, 2), snr=0.0)),
      ("n_steps_each", lambda: solvers.pc_sample(KEY, vp, s, (2, 2), n_steps_each=0)),
      ("num_steps", lambda: solvers.pc_sample(KEY, vp, s, (2, 2), num_steps=0)),
      ("num_steps", lambda: solvers.euler_maruyama_sample(KEY, vp, s, (2, 2), num_steps=2.5)),
      ("num_steps", lambda: solvers.pc_sample(KEY, vp, s, (2, 2), num_steps=20)),
      ("eps", lambda: solvers.pc_sample(KEY, vp, s, (2, 2), eps=1.5)),
      ("eps", lambda: solvers.pc_sample(KEY, vp, s, (2, 2), eps=-1e-3)),
      ("eps", lambda: solvers.ode_sample(KEY, edm, s, (2, 2), eps=1e-3)),
      ("shape", lambda: solvers.pc_sample(KEY, vp, s, ())),
      ("shape", lambda: solvers.ddim_sample(KEY, vp, s, (0, 2))),
      ("solver", lambda: solvers.solve_ode(_linear_drift, x, 0.0, 1.0, solver="rk45")),
      ("rtol", lambda: solvers.solve_ode(_linear_drift, x, 0.0, 1.0, rtol=0.0)),
      ("atol", lambda: solvers.solve_ode(_linear_drift, x, 0.0, 1.0, atol=-1.0)),
      ("num_steps", lambda: solvers.solve_ode(_linear_drift, x, 0.0, 1.0, solver="rk4",
                                              num_steps=-3)),
      ("t0", lambda: solvers.solve_ode(_linear_drift, x, 0.5, 0.5)),
      ("ts", lambda: solvers.solve_ode(_linear_drift, x, solver="heun", ts=[0.0, 0.5, 0.2])),
      ("ts", lambda: solvers.solve_ode(_linear_drift, x, solver="dopri5", ts=[0.0, 1.0])),
      ("x", lambda: solvers.solve_ode(_linear_drift, jnp.float32(1.0), 0.0, 1.0)),
      ("solver", lambda: solvers.ode_sample(KEY, vp, s, (2, 2), solver="rk45")),
      ("eps", lambda: solvers.pc_sample(KEY, vp, s, (2, 2), eps=0.0)),
      ("eps", lambda: solvers.euler_maruyama_sample(KEY, PROCESSES["subvp"], s, (2, 2),
                                                    eps=0.0)),
      ("eta", lambda: solvers.ddim_sample(KEY, vp, s, (2, 2), eta=1.5)),
      ("num_steps", lambda: solvers.edm_heun_sample(KEY, s, (2, 2), num_steps=0)),
      ("sigma_max", lambda: solvers.edm_heun_sample(KEY, s, (2, 2), sigma_max=0.001)),
      ("S_churn", lambda: solvers.edm_heun_sample(KEY, s, (2, 2), S_churn=-1.0)),
      ("schedule", lambda: solvers.heun_sample(KEY, vp, s, (2, 2), 10, schedule="karras")),
      ("schedule", lambda: solvers.heun_sample(KEY, lin, s, (2, 2), 10, schedule="edm")),
      ("eps", lambda: solvers.heun_sample(KEY, vp, s, (2, 2), 10, eps=1.0)),
      ("eta", lambda: solvers.ddim_sample(KEY, vp, s, (2, 2), eta=-0.1)),
      ("prediction_type", lambda: solvers.ddim_sample(KEY, vp, s, (2, 2), prediction_type="v")),
      ("prediction_type", lambda: solvers.ddim_sample(KEY, lin, s, (2, 2))),
      ("num_steps", lambda: solvers.ddim_sample(KEY, vp, s, (2, 2), num_steps=0)),
      ("t1", lambda: solvers.solve_ode(_linear_drift, x, 0.5, float("nan"))),
      ("t0", lambda: solvers.solve_ode(_linear_drift, x, float("nan"), 0.1, solver="rk4")),
      ("ts", lambda: solvers.solve_ode(_linear_drift, x, solver="heun",
                                       ts=[0.0, float("nan"), 1.0])),
      ("S_tmax", lambda: solvers.edm_heun_sample(KEY, s, (2, 2), S_churn=40.0,
                                                 S_tmax=float("nan"))),
      # num_steps = 1 on a process with a DDPM/SMLD discretization used to fail naming `N`
      ("num_steps", lambda: solvers.euler_maruyama_sample(KEY, vp, s, (2, 2), num_steps=1)),
      ("num_steps", lambda: solvers.check_pc_options(PROCESSES["ve"], num_steps=1)),
      # infinite schedule ends / noise used to give all-NaN samples
      ("sigma_max", lambda: solvers.edm_heun_sample(KEY, s, (2, 2), sigma_max=float("inf"))),
      ("S_noise", lambda: solvers.edm_heun_sample(KEY, s, (2, 2), S_churn=5.0,
                                                  S_noise=float("inf"))),
      ("rho", lambda: solvers.heun_sample(KEY, vp, s, (2, 2), 5, rho=float("inf"))),
      # arrays where a scalar belongs used to be taken as per-example times or fail obscurely
      ("t0", lambda: solvers.solve_ode(_linear_drift, x, jnp.asarray([0.0, 0.5]), 1.0,
                                       solver="rk4")),
      ("eps", lambda: solvers.pc_sample(KEY, vp, s, (2, 2), eps=jnp.asarray([1e-3, 1e-3]))),
      ("snr", lambda: solvers.pc_sample(KEY, vp, s, (64, 2), num_steps=50,
                                        snr=jnp.asarray([0.1, 0.1]))),
      ("sigma_max", lambda: solvers.edm_heun_sample(KEY, s, (2, 2),
                                                    sigma_max=jnp.asarray([80.0, 70.0]))),
      # infinite values that were accepted and gave non-finite or wrong samples
      ("snr", lambda: solvers.pc_sample(KEY, vp, s, (64, 2), num_steps=50, snr=float("inf"))),
      ("rtol", lambda: solvers.ode_sample(KEY, vp, s, (2, 2), rtol=float("inf"))),
      ("atol", lambda: solvers.solve_ode(_linear_drift, x, 0.0, 1.0, atol=float("inf"))),
      ("S_churn", lambda: solvers.edm_heun_sample(KEY, s, (2, 2), S_churn=float("inf"))),
  ]


@pytest.mark.parametrize("index", range(len(_bad_calls())))
def test_bad_arguments_raise_value_error(index):
  name, call = _bad_calls()[index]
  with pytest.raises(ValueError, match=f"`{name}`"):
    call()


@pytest.mark.parametrize("predictor", ["reverse_diffusion", "euler_maruyama"])
def test_reverse_sde_samplers_refuse_a_path_singular_at_T(predictor):
  """The linear path has alpha(T) = 0 (drift coefficient -inf, g^2 +inf at T): the reverse-SDE
  samplers used to return all-NaN samples with a normal NFE; they now refuse it by name."""
  lin = PROCESSES["linear"]
  with pytest.raises(ValueError, match="LinearPath has alpha\\(T\\) = 0"):
    solvers.pc_sample(KEY, lin, lambda x, t: -x, (4, 2), predictor=predictor, num_steps=10)


@pytest.mark.parametrize("solver", ["midpoint", "ralston"])
def test_second_order_fixed_step_solvers_converge_at_second_order(solver):
  """midpoint / ralston (shared with the likelihood's table) on dx/dt = -x: the error of
  x(1) = e^-1 x(0) falls ~4x when the steps double, and nfe = 2 per step."""
  x = jnp.ones((3, 2))
  errors = []
  for n in (8, 16):
    out, nfe = solvers.solve_ode(lambda y, t: -y, x, 0.0, 1.0, solver=solver, num_steps=n)
    assert int(nfe) == 2 * n
    errors.append(float(jnp.max(jnp.abs(out - jnp.exp(-1.0)))))
  assert 3.5 < errors[0] / errors[1] < 4.5, errors


def test_langevin_corrector_warns_on_small_low_dimensional_batches():
  """The Langevin step size averages norms over the batch (score_sde): a small batch of
  low-dimensional data gets a noisy step; pc_sample says so, and stays quiet where the norms
  concentrate (many dimensions) or where there is no corrector."""
  vp, s = PROCESSES["vp"], lambda x, t: -x
  with pytest.warns(UserWarning, match="batch"):
    solvers.pc_sample(KEY, vp, s, (4, 2), num_steps=50)
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    solvers.pc_sample(KEY, vp, s, (64, 2), num_steps=50)
    solvers.pc_sample(KEY, vp, s, (1, 16, 16, 3), num_steps=50)
    solvers.pc_sample(KEY, vp, s, (4, 2), num_steps=50, corrector="none")


def test_user_functions_returning_the_wrong_shape_are_refused_by_name():
  """A network returning ``(batch, 1)`` for ``(batch, 2)`` data used to broadcast silently: e.g.
  ``pc_sample`` gave samples of size 3e5 and ``solve_ode`` a wrong answer with a normal NFE. The
  check runs while tracing (no run-time cost) and names the function."""
  vp, bad = PROCESSES["vp"], lambda x, t: x[:, :1]
  calls = [
      ("drift_fn", lambda: solvers.solve_ode(bad, jnp.ones((3, 2)), 0.0, 1.0, solver="rk4")),
      ("drift_fn", lambda: solvers.solve_ode(bad, jnp.ones((3, 2)), 0.0, 1.0, solver="euler")),
      ("drift_fn", lambda: solvers.solve_ode(bad, jnp.ones((3, 2)), 0.0, 1.0)),
      ("score_fn", lambda: solvers.pc_sample(KEY, vp, bad, (3, 2), num_steps=30,
                                             corrector="none")),
      ("eps_fn", lambda: solvers.ddim_sample(KEY, vp, bad, (3, 2), num_steps=3)),
      ("drift_fn", lambda: solvers.heun_sample(KEY, vp, bad, (3, 2), 3)),
      ("denoiser_fn", lambda: solvers.edm_heun_sample(KEY, bad, (3, 2), num_steps=3)),
  ]
  for name, call in calls:
    with pytest.raises(ValueError, match=f"`{name}` must return an array of x's shape \\(3, 2\\), "
                                         f"got shape \\(3, 1\\)"):
      call()


@pytest.mark.parametrize("solver", ["rk4", "heun", "dopri5"])
def test_solve_ode_integrates_bfloat16_and_integer_states_in_float32(solver):
  """RK4 used to fail on a bfloat16 (or integer) ``x`` with a scan carry TypeError while the diffrax
  solvers returned float32, and Dopri5's first-step choice called the drift with bfloat16 ``x``
  and ``t``. Every solver now integrates (and calls the drift) in float32."""
  seen = set()

  def drift(x, t):
    seen.add((x.dtype, t.dtype))
    return _linear_drift(x, t)

  ref, _ = solvers.solve_ode(drift, jnp.ones((2, 2)), 0.0, 1.0, solver=solver, num_steps=10)
  for dtype in (jnp.bfloat16, jnp.int32):
    out, _ = solvers.solve_ode(drift, jnp.ones((2, 2), dtype), 0.0, 1.0, solver=solver,
                               num_steps=10)
    assert out.dtype == jnp.float32, (dtype, out.dtype)
    np.testing.assert_allclose(out, ref, rtol=1e-6, atol=1e-6)
  assert seen == {(jnp.dtype(jnp.float32), jnp.dtype(jnp.float32))}, seen


def test_ddim_default_grid_is_edm_on_the_edm_path():
  """ddim_sample's default grid was uniform in t on every process; on EDM's path (t = sigma in
  [0.002, 80]) that left the covariance of Gaussian data 57% off at 100 steps (5% with EDM's
  schedule). The default is now EDM's schedule there and DDIM's uniform grid elsewhere."""
  edm, vp = oracle("edm", 2), oracle("vp", 2)
  for o, schedule in ((edm, "edm"), (vp, "uniform")):
    default, _ = solvers.ddim_sample(KEY, o.process, o.eps_fn, (8, 2), num_steps=6)
    explicit, _ = solvers.ddim_sample(KEY, o.process, o.eps_fn, (8, 2), num_steps=6,
                                      schedule=schedule)
    np.testing.assert_array_equal(default, explicit)


@pytest.mark.parametrize("prediction_type", ["x0", "eps", "velocity"])
def test_ddim_returns_float32_samples_from_a_bfloat16_network(prediction_type):
  """Like every other sampler; an x0 prediction used to come back in the network's bfloat16."""
  vp = PROCESSES["vp"]
  net = lambda x, t: (0.5 * x).astype(jnp.bfloat16)
  x, _ = solvers.ddim_sample(KEY, vp, net, (4, 2), num_steps=5, prediction_type=prediction_type)
  assert x.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(x)))
