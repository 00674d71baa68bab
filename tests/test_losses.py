"""The training losses against closed forms.

Data: a 3-D Gaussian ``N(mu, Sigma)`` (``closed_form.random_gaussian``), whose posterior
``p(x_0, z | x_t)`` is Gaussian: at the exact score / velocity / denoiser a loss's Monte Carlo mean
must equal its irreducible part, computed here by quadrature over ``t`` of the conditional
variances in the eigenbasis of ``Sigma`` (``Var(z_i | x_t) = a^2 l_i / (a^2 l_i + s^2)``), or over
EDM's log-normal ``sigma`` by Gauss-Hermite. Tolerance: ``Z`` standard errors of the mean of the
per-example losses (independent draws). The reductions and the discrete-time losses are checked
exactly, with networks that know the noise.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgen import closed_form, losses, processes
from conftest import FAST_COMPILE  # pylint: disable=wrong-import-order

GM = closed_form.random_gaussian(3, seed=1)
DIM = GM.dim
EIG = np.linalg.eigvalsh(np.asarray(GM.covs[0], np.float64))          # l_i, (d,)
SECOND_MOMENT = float(np.sum(EIG) + np.sum(np.asarray(GM.means[0]) ** 2))  # E|x0|^2
N_MC = 2**17
Z = 5.0

PROCESSES = {
    "vp": processes.VPSDE(),
    "subvp": processes.SubVPSDE(),
    "ve": processes.VESDE(),
    "linear": processes.LinearPath(),
    "edm": processes.EDMPath(),
    # T = 5 != 1, and a small enough range that uniform likelihood-weighted t has modest variance
    "edm5": processes.EDMPath(sigma_min=0.02, sigma_max=5.0),
}


def _eps(process):
  return max(1e-3, process.t_min)


# --------------------------------------------------------------------------------------------------
# references
# --------------------------------------------------------------------------------------------------
def _coefficients(process, t):
  """``(alpha, sigma, alpha', sigma', g^2)`` at ``t`` as float64 columns ``(len(t), 1)``."""
  t = jnp.asarray(t, jnp.float32)
  return tuple(np.asarray(v, np.float64)[:, None] for v in (
      process.alpha(t), process.sigma(t), process.alpha_dot(t), process.sigma_dot(t),
      process.diffusion_squared(t)))


def _integral(fn, lo, hi, n=20001):
  """``int_lo^hi fn(t) dt`` by the trapezoid rule in ``log t`` (integrands ~ 1/t near 0)."""
  u = np.linspace(math.log(lo), math.log(hi), n)
  t = np.exp(u)
  return float(np.trapezoid(fn(t) * t, u))


def _dsm_minimum(process, t):
  """``sum_i Var(z_i | x_t)``: the minimum of ``E|sigma score + z|^2`` at ``t``."""
  a, s = _coefficients(process, t)[:2]
  snr = a**2 * EIG
  return np.sum(snr / (snr + s**2), -1)


def _likelihood_integrand(process, t):
  """``g^2 / sigma^2 sum_i Var(z_i | x_t)``, the minimum of ``g^2 E|score + z / sigma|^2``."""
  _, s, _, _, g2 = _coefficients(process, t)
  return g2[:, 0] / s[:, 0] ** 2 * _dsm_minimum(process, t)


def _flow_minimum(process, t):
  """``sum_i Var(alpha' x0_i + sigma' z_i | x_t) = l (alpha' s - alpha s')^2 / (a^2 l + s^2)``."""
  a, s, ad, sd, _ = _coefficients(process, t)
  return np.sum(EIG * (ad * s - a * sd) ** 2 / (a**2 * EIG + s**2), -1)


# --------------------------------------------------------------------------------------------------
# oracles and Monte Carlo
# --------------------------------------------------------------------------------------------------
def _oracle(process, prediction):
  """``model_fn`` returning the exact ``prediction`` of the Gaussian data under ``process``."""

  def model_fn(params, x, t, *, train=False, key=None, labels=None):
    del params, train, key, labels
    if prediction == "score":
      return GM.score(x, t, process)
    if prediction == "velocity":
      return GM.velocity_fn(process)(x, t)
    x0, eps = GM.posterior_mean(x, t, process)
    return {"x0": x0, "eps": eps}[prediction]

  return model_fn


def _run(loss_fn, key, batch):
  """``loss_fn(None, key, batch)``, compiled cheaply (``FAST_COMPILE``)."""
  return jax.jit(loss_fn).lower(None, key, batch).compile(FAST_COMPILE)(None, key, batch)


def _monte_carlo(loss_fn, seed, n=N_MC):
  """``(mean, standard error)`` of the per-example losses on ``n`` data samples."""
  x0 = GM.sample(jax.random.PRNGKey(seed), n)
  loss, aux = _run(loss_fn, jax.random.PRNGKey(seed + 1000), {"image": x0})
  per_example = np.asarray(aux["loss_per_example"], np.float64)
  assert per_example.shape == (n,)
  assert np.all(np.isfinite(per_example))
  np.testing.assert_allclose(float(loss), per_example.mean(), rtol=1e-4)
  return per_example.mean(), per_example.std() / math.sqrt(n)


def _assert_close(mc, reference, what):
  mean, se = mc
  assert abs(mean - reference) < Z * se + 1e-4 * abs(reference), (
      f"{what}: Monte Carlo {mean:.5f} +- {se:.5f}, closed form {reference:.5f}")


# --------------------------------------------------------------------------------------------------
# 1. at the exact prediction each loss equals its irreducible part
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,prediction", [
    ("vp", "score"), ("vp", "eps"), ("vp", "x0"), ("subvp", "eps"), ("ve", "score"),
    ("ve", "x0"), ("edm", "eps")])
def test_dsm_sigma2_weighting_oracle_attains_minimum(name, prediction):
  """sigma^2 weighting, half sum: E = 1/2 avg_t sum_i Var(z_i | x_t)."""
  process = PROCESSES[name]
  eps = _eps(process)
  loss_fn = losses.dsm_loss(_oracle(process, prediction), process, prediction, eps=eps)
  average = _integral(lambda t: _dsm_minimum(process, t), eps, process.T) / (process.T - eps)
  reference = 0.5 * average
  _assert_close(_monte_carlo(loss_fn, seed=1), reference, f"{name} {prediction}")


@pytest.mark.parametrize("importance_sampling", [False, True])
@pytest.mark.parametrize("name", ["vp", "subvp", "ve", "edm5"])
def test_dsm_likelihood_weighting_oracle_attains_minimum(name, importance_sampling):
  """Likelihood weighting (uniform or importance-sampled t), half sum:
  E = 1/2 int_eps^T g^2 / sigma^2 sum_i Var(z_i | x_t) dt, for T = 1 and T = 5."""
  process = PROCESSES[name]
  eps = _eps(process)
  loss_fn = losses.dsm_loss(_oracle(process, "score"), process, "score", eps=eps,
                            likelihood_weighting=True, importance_sampling=importance_sampling)
  reference = 0.5 * _integral(lambda t: _likelihood_integrand(process, t), eps, process.T)
  _assert_close(_monte_carlo(loss_fn, seed=2), reference, f"{name} IS={importance_sampling}")


@pytest.mark.parametrize("name,prediction", [
    ("linear", "velocity"), ("linear", "x0"), ("vp", "velocity"), ("vp", "eps"),
    ("edm", "velocity")])
def test_flow_matching_oracle_attains_minimum(name, prediction):
  """Mean over dims: E = 1/d avg_t sum_i Var(alpha' x0_i + sigma' z_i | x_t) on [eps, t_max]."""
  process = PROCESSES[name]
  eps = _eps(process)
  t_max = process.T - (eps if name == "linear" else 0.0)
  loss_fn = losses.flow_matching_loss(_oracle(process, prediction), process, prediction, eps=eps)
  reference = _integral(lambda t: _flow_minimum(process, t), eps, t_max) / (t_max - eps) / DIM
  _assert_close(_monte_carlo(loss_fn, seed=3), reference, f"{name} {prediction}")


def test_flow_matching_refuses_coupled_noise_that_only_broadcasts():
  """Reflow pairs carry ``batch["noise"]``; noise of shape (1, d) or (b, 1) against (b, d) images
  broadcast silently (a loss of another coupling); it is refused naming both shapes."""
  loss_fn = losses.flow_matching_loss(lambda params, x, t, **kw: x, processes.LinearPath())
  image = jnp.ones((8, 2))
  loss, _ = loss_fn(None, jax.random.PRNGKey(0), {"image": image, "noise": jnp.zeros((8, 2))})
  assert np.isfinite(float(loss))
  for shape in ((1, 2), (8, 1)):
    with pytest.raises(ValueError, match=rf"noise \({shape[0]}, {shape[1]}\) and image \(8, 2\)"):
      loss_fn(None, jax.random.PRNGKey(0), {"image": image, "noise": jnp.zeros(shape)})


@pytest.mark.parametrize("reduce_mean", [True, False])
def test_edm_loss_oracle_attains_minimum(reduce_mean):
  """At D = E[x0 | x_t]: E = E_sigma[lambda(sigma) sum_i l_i sigma^2 / (l_i + sigma^2)] (/ d),
  ln sigma ~ N(-1.2, 1.2^2), by Gauss-Hermite quadrature."""
  process = PROCESSES["edm"]
  model_fn = lambda params, x, t, **kwargs: GM.posterior_mean(x, t, process)[0]
  loss_fn = losses.edm_loss(model_fn, process, reduce_mean=reduce_mean)
  nodes, weights = np.polynomial.hermite_e.hermegauss(100)
  sigma = np.exp(-1.2 + 1.2 * nodes)[:, None]
  sd2 = process.sigma_data**2
  lam = (sigma**2 + sd2) / (sigma**2 * sd2)
  conditional = np.sum(EIG * sigma**2 / (EIG + sigma**2), -1, keepdims=True)
  reference = float(np.sum(weights * (lam * conditional)[:, 0]) / math.sqrt(2 * math.pi))
  reference /= DIM if reduce_mean else 1.0
  _assert_close(_monte_carlo(loss_fn, seed=4), reference, f"edm reduce_mean={reduce_mean}")


# --------------------------------------------------------------------------------------------------
# 2. uniform and importance-sampled likelihood weighting estimate the same integral
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["vp", "ve", "edm5"])
def test_likelihood_weighting_estimators_agree(name):
  """For a wrong model score = -x / (v alpha^2 + sigma^2), both estimators have the expectation
  1/2 int g^2/sigma^2 [(sigma alpha)^2 E|x0|^2 + v^2 alpha^4 d] / (v alpha^2 + sigma^2)^2 dt."""
  process = PROCESSES[name]
  eps = _eps(process)
  v = 0.5

  def model_fn(params, x, t, **kwargs):
    denominator = v * process.alpha(t) ** 2 + process.sigma(t) ** 2
    return -x / denominator[:, None]

  def integrand(t):
    a, s, _, _, g2 = (c[:, 0] for c in _coefficients(process, t))
    denominator = v * a**2 + s**2
    return g2 / s**2 * ((s * a) ** 2 * SECOND_MOMENT + v**2 * a**4 * DIM) / denominator**2

  reference = 0.5 * _integral(integrand, eps, process.T)
  estimates = []
  for seed, importance_sampling in ((5, False), (6, True)):
    loss_fn = losses.dsm_loss(model_fn, process, "score", eps=eps, likelihood_weighting=True,
                              importance_sampling=importance_sampling)
    estimates.append(_monte_carlo(loss_fn, seed=seed))
    _assert_close(estimates[-1], reference, f"{name} IS={importance_sampling}")
  (u, u_se), (s, s_se) = estimates
  assert abs(u - s) < Z * math.hypot(u_se, s_se), (name, estimates)


# --------------------------------------------------------------------------------------------------
# 3. reductions over data dimensions, exactly: networks whose residual is a known array R
# --------------------------------------------------------------------------------------------------
SHAPE = (4, 3)
R = jnp.linspace(-1.0, 2.0, 12).reshape(SHAPE)
HALF_SUM, MEAN, SUM = 0.5 * float(jnp.sum(R**2)), float(jnp.mean(R**2)), float(jnp.sum(R**2))
BATCH = 64


def _bc(c):
  return c[:, None, None]


def _ddpm_tables(process):
  """DDPM's ``sqrt(alpha_bar_i), sqrt(1 - alpha_bar_i)`` from score_sde's definition, float64."""
  betas = np.linspace(process.beta_min / process.N, process.beta_max / process.N, process.N)
  alphas_cumprod = np.cumprod(1.0 - betas)
  return np.sqrt(alphas_cumprod), np.sqrt(1.0 - alphas_cumprod)


def _step(process, t):
  return jnp.round(t * (process.N - 1) / process.T).astype(jnp.int32)


def _per_example(loss_fn, seed=0):
  """Per-example losses at x0 = 0 (so that x_t = sigma z reveals the noise to the network)."""
  x0 = jnp.zeros((BATCH,) + SHAPE)
  loss, aux = _run(loss_fn, jax.random.PRNGKey(seed), {"image": x0})
  np.testing.assert_allclose(float(loss), float(jnp.mean(aux["loss_per_example"])), rtol=1e-5)
  return np.asarray(aux["loss_per_example"])


@pytest.mark.parametrize("weighting", ["sigma2", "likelihood", "importance"])
@pytest.mark.parametrize("name", ["vp", "ve"])
@pytest.mark.parametrize("reduce_mean", [False, True])
def test_dsm_reduction(name, weighting, reduce_mean):
  """dsm_loss per example: 0.5 sum(R^2) (score_sde) or mean(R^2); the network makes the weighted
  residual R (the likelihood-weighted uniform one includes the factor T - eps)."""
  process = PROCESSES[name]
  eps = 1e-3

  def log_snr(t):  # lambda = log(sigma^2 / alpha^2), closed forms of score_sde's schedules
    if name == "ve":
      return 2.0 * math.log(process.sigma_min * (process.sigma_max / process.sigma_min) ** t)
    log_mean = -0.25 * t**2 * (process.beta_max - process.beta_min) - 0.5 * t * process.beta_min
    return math.log(-math.expm1(2.0 * log_mean)) - 2.0 * log_mean

  z_norm = log_snr(process.T) - log_snr(eps)

  def model_fn(params, x, t, **kwargs):
    s = _bc(process.sigma(t))
    if weighting == "sigma2":       # |s score + z|^2 = R^2
      return (R - x / s) / s
    if weighting == "importance":   # Z |s score + z|^2 = R^2
      return (R / math.sqrt(z_norm) - x / s) / s
    g2 = _bc(process.diffusion_squared(t)) * (process.T - eps)   # g^2 (T - eps) |score + z/s|^2
    return R / jnp.sqrt(g2) - x / s**2

  loss_fn = losses.dsm_loss(model_fn, process, "score", reduce_mean=reduce_mean, eps=eps,
                            likelihood_weighting=weighting != "sigma2",
                            importance_sampling=weighting == "importance")
  np.testing.assert_allclose(_per_example(loss_fn), MEAN if reduce_mean else HALF_SUM, rtol=2e-4)


def _discrete_residual_model(process, scale=jnp.ones_like):
  """``(model_fn, prediction)`` making DDPM's ``eps_hat - z`` / SMLD's ``sigma_i (score + z /
  sigma_i)`` equal to ``scale(i) R`` at x0 = 0, the step ``i`` read from ``t = i T / (N - 1)``."""
  if isinstance(process, processes.VESDE):
    s_table = np.exp(np.linspace(math.log(process.sigma_min), math.log(process.sigma_max),
                                 process.N))
  else:
    s_table = _ddpm_tables(process)[1]
  s_table = jnp.asarray(s_table, jnp.float32)

  def model_fn(params, x, t, **kwargs):
    step = _step(process, t)
    s, residual = _bc(s_table[step]), _bc(scale(step.astype(jnp.float32))) * R
    if isinstance(process, processes.VESDE):
      return residual / s - x / s**2   # score
    return x / s + residual            # eps

  return model_fn, "score" if isinstance(process, processes.VESDE) else "eps"


@pytest.mark.parametrize("name", ["vp", "ve"])
@pytest.mark.parametrize("reduce_mean", [False, True])
def test_discrete_dsm_reduction(name, reduce_mean):
  """discrete_dsm_loss per example: 0.5 sum(R^2) or mean(R^2) (DDPM: |eps_hat - z|^2;
  SMLD: sigma_i^2 |score - (-z / sigma_i)|^2)."""
  model_fn, prediction = _discrete_residual_model(PROCESSES[name])
  loss_fn = losses.discrete_dsm_loss(model_fn, PROCESSES[name], prediction,
                                     reduce_mean=reduce_mean)
  np.testing.assert_allclose(_per_example(loss_fn), MEAN if reduce_mean else HALF_SUM, rtol=2e-4)


@pytest.mark.parametrize("name", ["vp", "ve"])
def test_discrete_dsm_samples_every_step(name):
  """The step i is uniform on {0, ..., N - 1} and the network gets t = i T / (N - 1) of the x_t it
  sees: with the residual (1 + i) R the per-example loss is (1 + i)^2 sum(R^2) / 2."""
  n_steps, n = 25, 4000   # DDPM needs beta_max / N < 1
  process = processes.VPSDE(N=n_steps) if name == "vp" else processes.VESDE(N=n_steps)
  model_fn, prediction = _discrete_residual_model(process, lambda step: 1.0 + step)
  loss_fn = losses.discrete_dsm_loss(model_fn, process, prediction)
  _, aux = _run(loss_fn, jax.random.PRNGKey(14), {"image": jnp.zeros((n,) + SHAPE)})
  root = np.sqrt(np.asarray(aux["loss_per_example"], np.float64) / HALF_SUM)
  assert np.all(np.isfinite(root))
  np.testing.assert_allclose(root, np.round(root), atol=1e-3)
  counts = np.bincount(np.round(root).astype(int) - 1, minlength=n_steps)
  assert len(counts) == n_steps, counts
  p = 1.0 / n_steps
  np.testing.assert_allclose(counts, n * p, atol=Z * math.sqrt(n * p * (1 - p)))


@pytest.mark.parametrize("reduce_mean", [False, True])
def test_edm_reduction(reduce_mean):
  """edm_loss per example: plain sum(R^2) (EDM's convention) or mean(R^2)."""
  process = PROCESSES["edm"]
  sd2 = process.sigma_data**2

  def model_fn(params, x, sigma, **kwargs):  # lambda(sigma) |D - 0|^2 = R^2
    lam = (sigma**2 + sd2) / (sigma**2 * sd2)
    return R / _bc(jnp.sqrt(lam))

  loss_fn = losses.edm_loss(model_fn, process, reduce_mean=reduce_mean)
  np.testing.assert_allclose(_per_example(loss_fn), MEAN if reduce_mean else SUM, rtol=2e-4)


# --------------------------------------------------------------------------------------------------
# 4. discrete-time losses with a network that knows x0 and the noise
# --------------------------------------------------------------------------------------------------
X0 = jax.random.normal(jax.random.PRNGKey(11), (4096, 3))


def _discrete_oracle_output(process, x, step, prediction):
  """What a perfect network predicts at ``x = a_i X0 + s_i z`` (DDPM / SMLD coefficients)."""
  if isinstance(process, processes.VESDE):
    sigmas = np.exp(np.linspace(math.log(process.sigma_min), math.log(process.sigma_max),
                                process.N))
    a, s = jnp.ones(step.shape), jnp.asarray(sigmas, jnp.float32)[step]
  else:
    a_table, s_table = _ddpm_tables(process)
    a, s = jnp.asarray(a_table, jnp.float32)[step], jnp.asarray(s_table, jnp.float32)[step]
  z = (x - a[:, None] * X0) / s[:, None]
  return {"eps": z, "x0": X0, "score": -z / s[:, None]}[prediction]


def _discrete_loss(loss_fn):
  loss, aux = _run(loss_fn, jax.random.PRNGKey(12), {"image": X0})
  assert np.all(np.isfinite(np.asarray(aux["loss_per_example"])))
  return float(loss)


@pytest.mark.parametrize("N", [1000, 50])
@pytest.mark.parametrize("prediction", ["eps", "x0", "score"])
def test_discrete_vp_oracle_has_zero_loss(prediction, N):
  """DDPM loss ~ 0 (vs 1.5 for a zero network) for an exact eps / x0 / score read with DDPM's
  coefficients, directly and through make_model_fn(discrete=True) (whose output is a score)."""
  process = processes.VPSDE(N=N)
  direct = lambda params, x, t, **kwargs: _discrete_oracle_output(process, x, _step(process, t),
                                                                  prediction)
  assert _discrete_loss(losses.discrete_dsm_loss(direct, process, prediction)) < 1e-6

  def apply_fn(variables, x, cond, train=False, rngs=None):  # cond: the integer step
    return _discrete_oracle_output(process, x, jnp.round(cond).astype(jnp.int32), prediction)

  model_fn = losses.make_model_fn(apply_fn, process, prediction, discrete=True)
  output_type = losses.model_output_type(process, prediction, discrete=True)
  assert output_type == "score"
  assert _discrete_loss(losses.discrete_dsm_loss(model_fn, process, output_type)) < 1e-6


@pytest.mark.parametrize("prediction", ["eps", "score"])
def test_discrete_ve_oracle_has_zero_loss(prediction):
  """SMLD loss ~ 0 for an exact eps / score (sigma(i / (N - 1)) is SMLD's sigma_i), directly and
  through make_model_fn(discrete=True), which tells the network sigma and returns its output."""
  process = processes.VESDE()
  direct = lambda params, x, t, **kwargs: _discrete_oracle_output(process, x, _step(process, t),
                                                                  prediction)
  assert _discrete_loss(losses.discrete_dsm_loss(direct, process, prediction)) < 1e-6

  def apply_fn(variables, x, cond, train=False, rngs=None):  # cond: sigma
    ratio = jnp.log(cond / process.sigma_min) / math.log(process.sigma_max / process.sigma_min)
    step = jnp.round(ratio * (process.N - 1)).astype(jnp.int32)
    return _discrete_oracle_output(process, x, step, prediction)

  model_fn = losses.make_model_fn(apply_fn, process, prediction, discrete=True)
  assert losses.model_output_type(process, prediction, discrete=True) == prediction
  assert _discrete_loss(losses.discrete_dsm_loss(model_fn, process, prediction)) < 1e-6


@pytest.mark.parametrize("name", ["vp", "ve"])
def test_discrete_dsm_zero_network(name):
  """A network predicting 0 (eps for DDPM, score for SMLD) has the loss 1/2 E|z|^2 = d / 2."""
  prediction = "eps" if name == "vp" else "score"
  zero = lambda params, x, t, **kwargs: jnp.zeros_like(x)
  loss_fn = losses.discrete_dsm_loss(zero, PROCESSES[name], prediction)
  _, aux = _run(loss_fn, jax.random.PRNGKey(12), {"image": X0})
  per_example = np.asarray(aux["loss_per_example"], np.float64)
  _assert_close((per_example.mean(), per_example.std() / math.sqrt(len(per_example))),
                0.5 * X0.shape[1], name)


def test_discrete_vp_rejects_velocity():
  """A velocity cannot be read in discrete time: ValueError naming the prediction."""
  process = processes.VPSDE()
  zero = lambda params, x, t, **kwargs: jnp.zeros_like(x)
  with pytest.raises(ValueError, match="velocity"):
    losses.discrete_dsm_loss(zero, process, "velocity")
  with pytest.raises(ValueError, match="velocity"):
    losses.make_model_fn(lambda *args, **kwargs: None, process, "velocity", discrete=True)
  with pytest.raises(ValueError, match="SubVPSDE"):
    losses.discrete_dsm_loss(zero, processes.SubVPSDE(), "eps")


def test_discrete_vp_refuses_betas_of_one_or_more():
  """N <= beta_max makes DDPM's betas beta_max / N >= 1 (alpha_bar < 0, NaN coefficients): the
  discrete loss and the discrete model refuse it, naming N."""
  process = processes.VPSDE(N=20)
  zero = lambda params, x, t, **kwargs: jnp.zeros_like(x)
  with pytest.raises(ValueError, match="N = 20"):
    losses.discrete_dsm_loss(zero, process, "eps")
  with pytest.raises(ValueError, match="N = 20"):
    losses.make_model_fn(lambda *args, **kwargs: None, process, "eps", discrete=True)


# --------------------------------------------------------------------------------------------------
# 5. errors
# --------------------------------------------------------------------------------------------------
def _zero_model(params, x, t, **kwargs):
  return jnp.zeros_like(x)


def test_importance_sampling_needs_finite_log_snr():
  """Linear path (alpha(1) = 0) or eps = 0 (sigma = 0): ValueError mentioning importance."""
  with pytest.raises(ValueError, match="importance"):
    losses.dsm_loss(_zero_model, processes.LinearPath(), "eps", likelihood_weighting=True,
                    importance_sampling=True)
  with pytest.raises(ValueError, match="importance"):
    losses.dsm_loss(_zero_model, processes.VPSDE(), "eps", likelihood_weighting=True,
                    importance_sampling=True, eps=0.0)
  # the same options without importance sampling, or on VP with eps > 0, build
  losses.dsm_loss(_zero_model, processes.LinearPath(), "eps", likelihood_weighting=True)
  losses.dsm_loss(_zero_model, processes.VPSDE(), "eps", likelihood_weighting=True,
                  importance_sampling=True)


@pytest.mark.parametrize("name,eps", [("vp", -0.1), ("vp", 2.0), ("vp", 1.0), ("ve", -1e-3),
                                      ("linear", 0.5), ("edm", 1e-5), ("edm", 80.0)])
def test_eps_outside_time_range_raises(name, eps):
  """eps must lie in [t_min, T) (for flow matching on the linear path, below T - eps)."""
  process = PROCESSES[name]
  if name != "linear":
    with pytest.raises(ValueError, match="eps"):
      losses.dsm_loss(_zero_model, process, "eps", eps=eps)
  with pytest.raises(ValueError, match="eps"):
    losses.flow_matching_loss(_zero_model, process, "velocity", eps=eps)


def test_eps_in_range_builds():
  """eps = t_min is accepted (EDM: sigma_min), and the linear path's flow matching up to T / 2."""
  for name in ("vp", "ve", "edm"):
    process = PROCESSES[name]
    losses.dsm_loss(_zero_model, process, "eps", eps=process.t_min)
    losses.flow_matching_loss(_zero_model, process, "velocity", eps=process.t_min)
  losses.flow_matching_loss(_zero_model, processes.LinearPath(), "velocity", eps=0.4)


def _toy_config():
  from configs.toy import vp_mlp  # pylint: disable=import-outside-toplevel
  return vp_mlp.get_config("moons")


def _bad_linear_importance(config):
  config.process.name = "linear"
  config.training.likelihood_weighting = True
  config.training.importance_sampling = True
  return processes.LinearPath(), "importance"


def _bad_eps(config):
  config.training.eps = -0.1
  return processes.VPSDE(), "eps"


def _bad_discrete_velocity(config):
  config.training.continuous = False
  config.model.prediction = "velocity"
  return processes.VPSDE(), "velocity"


def _bad_flow_eps(config):
  config.method = "flow"
  config.model.prediction = "velocity"
  config.training.eps = 1.5
  return processes.VPSDE(), "eps"


@pytest.mark.parametrize("make_bad", [_bad_linear_importance, _bad_eps, _bad_discrete_velocity,
                                      _bad_flow_eps])
def test_validate_loss_config(make_bad):
  """The toy VP config passes; each bad option raises a ValueError naming config."""
  config = _toy_config()
  assert losses.validate_loss_config(config, processes.VPSDE()) is None
  process, word = make_bad(config)
  with pytest.raises(ValueError, match=r"config\.") as info:
    losses.validate_loss_config(config, process)
  assert word in str(info.value)


# --------------------------------------------------------------------------------------------------
# 6. what the network is told about the noise
# --------------------------------------------------------------------------------------------------
def test_noise_conditioning():
  """Discrete VP: the step t (N - 1) / T; continuous VP / sub-VP / linear: 999 t; VE: sigma(t);
  EDM: log(t) / 4."""
  vp50 = processes.VPSDE(N=50)
  t = jnp.arange(50, dtype=jnp.float32) / 49.0
  steps = np.asarray(losses.noise_conditioning(vp50, t, discrete=True))
  np.testing.assert_allclose(steps, np.arange(50), atol=1e-4)
  np.testing.assert_array_equal(np.round(steps), np.arange(50))
  for process in (vp50, processes.VPSDE(), processes.SubVPSDE(), processes.LinearPath()):
    np.testing.assert_allclose(losses.noise_conditioning(process, t), 999.0 * np.asarray(t),
                               rtol=1e-6)
  np.testing.assert_allclose(losses.noise_conditioning(processes.SubVPSDE(N=50), t, discrete=True),
                             999.0 * np.asarray(t), rtol=1e-6)
  ve = processes.VESDE()
  np.testing.assert_allclose(losses.noise_conditioning(ve, t), 0.01 * 5000.0 ** np.asarray(t),
                             rtol=1e-5)
  np.testing.assert_allclose(losses.noise_conditioning(ve, t, discrete=True),
                             0.01 * 5000.0 ** np.asarray(t), rtol=1e-5)
  sigma = jnp.asarray([0.002, 0.1, 1.0, 80.0])
  np.testing.assert_allclose(losses.noise_conditioning(processes.EDMPath(), sigma),
                             np.log(np.asarray(sigma)) / 4.0, rtol=1e-6)


# --------------------------------------------------------------------------------------------------
# 7. make_model_fn(discrete=True) reads the network with DDPM's coefficients
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("N", [1000, 50])
@pytest.mark.parametrize("prediction", ["eps", "x0", "score"])
def test_make_model_fn_discrete_vp_returns_score(prediction, N):
  """At grid times t = i / (N - 1) the network gets cond = i, and its output o is returned as the
  score -o / s_i (eps), -(x - a_i o) / s_i^2 (x0) or o (score), s_i = sqrt(1 - alpha_bar_i)."""
  process = processes.VPSDE(N=N)
  steps = np.array([0, 1, 2, 17, N // 2, N - 2, N - 1])
  t = jnp.asarray(steps / (N - 1), jnp.float32)
  x = jax.random.normal(jax.random.PRNGKey(13), (len(steps), 5))

  def apply_fn(variables, x, cond, train=False, rngs=None):
    return jnp.sin(x) + 0.01 * cond[:, None]

  score = np.asarray(jax.jit(losses.make_model_fn(apply_fn, process, prediction,
                                                  discrete=True))(None, x, t))
  a_table, s_table = _ddpm_tables(process)
  a, s = a_table[steps][:, None], s_table[steps][:, None]
  x64 = np.asarray(x, np.float64)
  out = np.sin(x64) + 0.01 * steps[:, None]
  expected = {"eps": -out / s, "x0": -(x64 - a * out) / s**2, "score": out}[prediction]
  np.testing.assert_allclose(score, expected, rtol=2e-4, atol=1e-5)
  assert losses.model_output_type(process, prediction) == prediction
  assert losses.model_output_type(process, prediction, edm_preconditioning=True) == "x0"


@pytest.mark.parametrize("name", ["vp", "subvp", "ve"])
def test_importance_sampling_normalizer_is_the_weight_integral(name):
  """Z = int_eps^T g^2 / sigma^2 dt, by trapezoidal quadrature on a log-spaced grid."""
  process = {"vp": processes.VPSDE(), "subvp": processes.SubVPSDE(),
             "ve": processes.VESDE()}[name]
  eps = 1e-5
  t = np.geomspace(eps, process.T, 200_001)
  tt = jnp.asarray(t, jnp.float32)
  w = np.asarray(process.diffusion_squared(tt) / process.sigma(tt) ** 2, np.float64)
  quad = float(np.sum((w[1:] + w[:-1]) / 2 * np.diff(t)))
  assert abs(losses.importance_sampling_normalizer(process, eps) - quad) < 2e-3 * quad


def test_validate_loss_config_refuses_eps_or_score_on_the_linear_path():
  """Their probability-flow drift is infinite at T = 1 (alpha(T) = 0): the samplers and the
  likelihood would give NaN; the loss validation names the prediction."""
  config = _toy_config()
  config.method, config.training.likelihood_weighting = "flow", False
  for prediction in ("eps", "score"):
    config.model.prediction = prediction
    with pytest.raises(ValueError, match=rf"config\..*'{prediction}' prediction on LinearPath"):
      losses.validate_loss_config(config, processes.LinearPath())
  config.model.prediction = "x0"
  losses.validate_loss_config(config, processes.LinearPath())


@pytest.mark.parametrize("kwargs,name", [(dict(p_std=float("nan")), "p_std"),
                                         (dict(p_std=-1.0), "p_std"),
                                         (dict(p_mean=float("inf")), "p_mean")])
def test_edm_loss_refuses_a_bad_noise_distribution(kwargs, name):
  """``p_std = nan`` gave a NaN loss at the first step."""
  with pytest.raises(ValueError, match=name):
    losses.edm_loss(lambda params, x, t, **kw: x, processes.EDMPath(), **kwargs)
