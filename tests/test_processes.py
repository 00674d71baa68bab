"""Noise processes and prediction conversions: identities, round trips, errors."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgen import predictions, processes
from conftest import enable_x64  # pylint: disable=wrong-import-order

ALL = {
    "vp": processes.VPSDE(),
    "subvp": processes.SubVPSDE(),
    "ve": processes.VESDE(),
    "linear": processes.LinearPath(),
    "edm": processes.EDMPath(),
}


def _times(process, n=64):
  lo, hi = max(process.t_min, 1e-3), process.T * (0.98 if isinstance(process, processes.LinearPath) else 1.0)
  return jnp.linspace(lo, hi, n)


@pytest.mark.parametrize("name", sorted(ALL))
def test_sde_coefficients_generate_the_marginal(name):
  """f = d log alpha/dt and g^2 = d sigma^2/dt - 2 f sigma^2, checked by autodiff of alpha, sigma."""
  p = ALL[name]
  t = _times(p)
  ones = jnp.ones_like(t)
  alpha_dot = jax.jvp(p.alpha, (t,), (ones,))[1]
  sigma_dot = jax.jvp(p.sigma, (t,), (ones,))[1]
  np.testing.assert_allclose(p.alpha_dot(t), alpha_dot, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(p.sigma_dot(t), sigma_dot, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(p.drift_coefficient(t), alpha_dot / p.alpha(t), rtol=1e-4, atol=1e-6)
  g2 = 2 * p.sigma(t) * sigma_dot - 2 * alpha_dot / p.alpha(t) * p.sigma(t) ** 2
  np.testing.assert_allclose(p.diffusion_squared(t), g2, rtol=2e-3, atol=1e-5)


def test_score_sde_parametrisations():
  vp, subvp, ve = processes.VPSDE(), processes.SubVPSDE(), processes.VESDE()
  t = jnp.array([0.0, 0.25, 0.5, 1.0])
  lmc = -0.25 * t**2 * (20.0 - 0.1) - 0.5 * t * 0.1
  np.testing.assert_allclose(vp.alpha(t), np.exp(lmc), rtol=1e-6)
  np.testing.assert_allclose(vp.sigma(t), np.sqrt(1 - np.exp(2 * lmc)), rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(subvp.sigma(t), 1 - np.exp(2 * lmc), rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(ve.sigma(t), 0.01 * (50 / 0.01) ** t, rtol=1e-5)
  x = jnp.ones((4, 3))
  drift, diffusion = vp.sde(x, t)
  np.testing.assert_allclose(drift, -0.5 * (0.1 + t[:, None] * 19.9) * x, rtol=1e-6)
  np.testing.assert_allclose(diffusion, np.sqrt(0.1 + t * 19.9), rtol=1e-6)
  _, diffusion = ve.sde(x, t)
  np.testing.assert_allclose(diffusion, ve.sigma(t) * np.sqrt(2 * np.log(50 / 0.01)), rtol=1e-5)


@pytest.mark.parametrize("name", sorted(ALL))
def test_prior(name):
  p = ALL[name]
  z = p.prior_sample(jax.random.PRNGKey(0), (20000, 3))
  np.testing.assert_allclose(np.std(np.asarray(z)), p.prior_std, rtol=0.02)
  z = jnp.asarray(np.random.default_rng(0).normal(size=(5, 2, 3)), jnp.float32) * p.prior_std
  ref = jax.scipy.stats.norm.logpdf(z, scale=p.prior_std).reshape(5, -1).sum(-1)
  np.testing.assert_allclose(p.prior_logp(z), ref, rtol=1e-5)


PAIRS = [(a, b) for a in predictions.PREDICTION_TYPES for b in predictions.PREDICTION_TYPES]


@pytest.mark.parametrize("name", sorted(ALL))
def test_conversions_round_trip_and_agree(name):
  p = ALL[name]
  key = jax.random.PRNGKey(1)
  k1, k2 = jax.random.split(key)
  t = _times(p, 32)[2:-2]
  x0 = jax.random.normal(k1, (t.shape[0], 6))
  eps = jax.random.normal(k2, x0.shape)
  x = processes.broadcast_to(p.alpha(t), x0) * x0 + processes.broadcast_to(p.sigma(t), x0) * eps
  truth = {
      "x0": x0, "eps": eps, "score": -eps / p.sigma(t)[:, None],
      "velocity": p.alpha_dot(t)[:, None] * x0 + p.sigma_dot(t)[:, None] * eps,
  }
  for source, target in PAIRS:
    out = predictions.convert(p, x, t, truth[source], source, target)
    scale = float(jnp.max(jnp.abs(truth[target]))) + 1.0
    np.testing.assert_allclose(out, truth[target], atol=2e-4 * scale, rtol=0,
                               err_msg=f"{source}->{target}")
    back = predictions.convert(p, x, t, out, target, source)
    scale = float(jnp.max(jnp.abs(truth[source]))) + 1.0
    np.testing.assert_allclose(back, truth[source], atol=2e-4 * scale, rtol=0,
                               err_msg=f"{source}->{target}->{source}")


def test_velocity_is_probability_flow_drift():
  """The PF-ODE drift written with the score equals the velocity alpha' x0 + sigma' eps."""
  for name in ("vp", "subvp", "ve", "edm"):
    p = ALL[name]
    t = _times(p, 16)
    x = jax.random.normal(jax.random.PRNGKey(0), (16, 3))
    score = jax.random.normal(jax.random.PRNGKey(1), (16, 3))
    drift = processes.probability_flow_drift(p, lambda y, s: score)(x, t)
    velocity = predictions.score_to_velocity(p, x, t, score)
    np.testing.assert_allclose(drift, velocity, rtol=1e-3, atol=1e-3 * float(jnp.max(jnp.abs(drift))))


def test_edm_preconditioning():
  sigma = jnp.array([0.002, 0.5, 80.0])
  c_skip, c_out, c_in, c_noise = predictions.edm_preconditioning(sigma, 0.5)
  np.testing.assert_allclose(c_skip, 0.25 / (sigma**2 + 0.25), rtol=1e-6)
  np.testing.assert_allclose(c_out, sigma * 0.5 / np.sqrt(sigma**2 + 0.25), rtol=1e-6)
  np.testing.assert_allclose(c_in, 1 / np.sqrt(sigma**2 + 0.25), rtol=1e-6)
  np.testing.assert_allclose(c_noise, np.log(sigma) / 4, rtol=1e-6)
  # A network predicting zeros gives D = c_skip x; unit-variance target: c_skip^2 + c_out^2 scale.
  denoiser = predictions.edm_denoiser(lambda x, c: jnp.zeros_like(x))
  x = jnp.ones((3, 2))
  np.testing.assert_allclose(denoiser(x, sigma), c_skip[:, None] * x, rtol=1e-6)


def test_discretizations_match_ddpm_and_smld():
  vp, ve = processes.VPSDE(N=100), processes.VESDE(N=100)
  x = jnp.ones((2, 3))
  t = jnp.array([0.0, 1.0])
  f, g = vp.discretize(x, t)
  betas = np.linspace(0.1 / 100, 20 / 100, 100)
  np.testing.assert_allclose(g, np.sqrt(betas[[0, 99]]), rtol=1e-6)
  np.testing.assert_allclose(f[:, 0], np.sqrt(1 - betas[[0, 99]]) - 1, rtol=1e-4)
  f, g = ve.discretize(x, t)
  sig = np.exp(np.linspace(np.log(0.01), np.log(50), 100))
  np.testing.assert_allclose(g, [sig[0], np.sqrt(sig[99] ** 2 - sig[98] ** 2)], rtol=1e-5)
  np.testing.assert_allclose(f, 0)


def test_bad_inputs():
  vp = processes.VPSDE()
  with pytest.raises(ValueError, match="t"):
    vp.marginal(jnp.ones((4, 2)), jnp.ones((3,)))
  with pytest.raises(ValueError, match="t"):
    vp.sde(jnp.ones((4, 2)), jnp.ones((4, 1)))
  with pytest.raises(ValueError, match="nope"):
    processes.get_process("nope")
  with pytest.raises(ValueError, match="beta_mn"):
    processes.get_process("vp", beta_mn=0.1)
  with pytest.raises(ValueError, match="prediction_type"):
    predictions.convert(vp, jnp.ones((2, 2)), jnp.ones((2,)) * 0.5, jnp.ones((2, 2)), "noise", "x0")


@pytest.mark.parametrize("cls,kwargs,field", [
    (processes.VESDE, dict(sigma_min=0.0), "sigma_min"),
    (processes.VESDE, dict(sigma_min=50.0, sigma_max=0.01), "sigma_min"),
    (processes.VPSDE, dict(beta_min=-1.0), "beta_min"),
    (processes.SubVPSDE, dict(beta_min=5.0, beta_max=1.0), "beta_min"),
    (processes.VPSDE, dict(N=1), "N"),
    (processes.EDMPath, dict(sigma_min=0.0), "sigma_min"),
    (processes.EDMPath, dict(sigma_data=-0.5), "sigma_data"),
    (processes.VESDE, dict(sigma_max=float("inf")), "sigma_max"),
    (processes.EDMPath, dict(sigma_max=float("inf")), "sigma_max"),
    (processes.VPSDE, dict(beta_max=float("inf")), "beta_max"),
    (processes.VPSDE, dict(N=1000.5), "N"),
    # these raised Python's own errors, naming nothing
    (processes.VPSDE, dict(N=float("nan")), "N"),
    (processes.VESDE, dict(N=float("inf")), "N"),
    (processes.SubVPSDE, dict(N=None), "N"),
])
def test_processes_refuse_invalid_parameters(cls, kwargs, field):
  """A process with a parameter that makes sigma 0, g^2 negative or the data scale negative is
  refused when built (it used to fail on first use, or silently give NaN diffusions)."""
  with pytest.raises(ValueError, match=field):
    cls(**kwargs)


def test_prior_logp_keeps_float64():
  """A float64 latent gets a float64 prior density (the likelihood promises float64 for float64 x):
  3,072 dimensions lose ~4e-4 nats in float32."""
  with enable_x64(True):
    z = jax.random.normal(jax.random.PRNGKey(0), (2, 32, 32, 3), jnp.float64) * 1.3
    for p in (processes.VPSDE(), processes.VESDE()):
      logp = p.prior_logp(z)
      assert logp.dtype == jnp.float64
      s = p.prior_std
      ref = (-0.5 * np.sum(np.asarray(z, np.float64).reshape(2, -1) ** 2, -1) / s**2
             - 0.5 * 3072 * np.log(2 * np.pi * s**2))
      np.testing.assert_allclose(np.asarray(logp), ref, rtol=1e-12)


def test_discretize_clips_times_outside_the_grid():
  """A time just below 0 (or above T) uses the first (last) DDPM / SMLD step, not a wrapped index."""
  x = jnp.ones((2, 3))
  for p in (processes.VPSDE(), processes.VESDE()):
    f, g = p.discretize(x, jnp.asarray([-1e-3, 1.0 + 1e-3]))
    f0, g0 = p.discretize(x, jnp.asarray([0.0, 1.0]))
    np.testing.assert_allclose(g, g0)
    np.testing.assert_allclose(f, f0)


@pytest.mark.parametrize("name", ["vp", "subvp"])
def test_score_to_velocity_is_finite_at_t0(name):
  """At t = 0 VP's sigma' is infinite and sigma = 0; the velocity of a score is the finite
  probability-flow drift f x - g^2/2 score there (was NaN through (x0, eps))."""
  p = ALL[name]
  x, t = jnp.ones((2, 3)), jnp.zeros((2,))
  score = -x
  v = predictions.convert(p, x, t, score, "score", "velocity")
  ref = processes.probability_flow_drift(p, lambda y, s: score)(x, t)
  assert bool(jnp.all(jnp.isfinite(v)))
  np.testing.assert_allclose(v, ref, rtol=1e-6)


@pytest.mark.parametrize("name", ["vp", "subvp"])
def test_velocity_to_data_is_finite_at_t0(name):
  """The other way at t = 0: a velocity gives x0 = x / alpha = x and eps = 0 (was inf / inf =
  NaN, so `ode_sample(eps=0, denoise=True)` and DDIM with velocity models returned NaN); the
  gradient through the conversion stays finite too. Away from 0 the formula is unchanged."""
  p = ALL[name]
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 3))
  v = 0.3 * x + 1.0
  x0, eps = predictions.to_x0_eps(p, x, jnp.zeros((2,)), v, "velocity")
  np.testing.assert_allclose(x0, x, rtol=1e-6)
  assert bool(jnp.all(jnp.isfinite(eps)))
  if name == "vp":  # sigma' infinite: the limit (sub-VP's sigma' is finite, beta_min, at 0)
    np.testing.assert_array_equal(eps, 0.0)
  assert float(jnp.max(jnp.abs(predictions.convert(p, x, jnp.zeros((2,)), v, "velocity", "x0")
                               - x))) < 1e-6
  grad = jax.grad(lambda y: jnp.sum(predictions.to_x0_eps(p, y, jnp.zeros((2,)), v,
                                                          "velocity")[0]))(x)
  np.testing.assert_allclose(grad, 1.0, rtol=1e-6)
  t = jnp.full((2,), 0.3)  # at t > 0 it is the same as the score's route
  score = -x
  v_t = predictions.convert(p, x, t, score, "score", "velocity")
  np.testing.assert_allclose(predictions.convert(p, x, t, v_t, "velocity", "score"), score,
                             rtol=1e-5)


@pytest.mark.parametrize("name", ["linear", "edm"])
def test_x0_to_velocity_is_finite_where_sigma_is_zero(name):
  """At t = 0 on the linear and EDM paths sigma = 0 and an x0 prediction's eps is 0/0 (was NaN,
  so `as_drift_fn(..., 'x0')` returned NaN there); the limit of the exact field, eps = 0, is
  taken, with finite gradients, and the exact x0 gives the exact drift alpha'(0) x."""
  from jaxgen import closed_form  # pylint: disable=import-outside-toplevel
  p = ALL[name]
  data = closed_form.random_gaussian(3, seed=1)
  x = data.sample(jax.random.PRNGKey(0), 8)
  t0 = jnp.zeros((8,))
  x0_fn = lambda y, t: data.posterior_mean(y, t, p)[0]
  x0, eps = predictions.to_x0_eps(p, x, t0, x0_fn(x, t0), "x0")
  np.testing.assert_array_equal(eps, 0.0)
  drift = predictions.as_drift_fn(p, x0_fn, "x0")
  np.testing.assert_allclose(drift(x, t0), data.velocity_fn(p)(x, t0), atol=1e-6)
  np.testing.assert_allclose(drift(x, t0), p.alpha_dot(t0)[:, None] * x, atol=1e-6)
  grad = jax.grad(lambda y: jnp.sum(drift(y, t0) ** 2))(x)
  assert bool(jnp.all(jnp.isfinite(grad)))
  t = jnp.full((8,), 0.3)  # away from sigma = 0 nothing changed
  np.testing.assert_allclose(predictions.to_x0_eps(p, x, t, x0_fn(x, t), "x0")[1],
                             (x - p.alpha(t)[:, None] * x0_fn(x, t)) / p.sigma(t)[:, None],
                             rtol=1e-6)


def test_x0_flow_likelihood_from_t_min():
  """rectified_flow.log_likelihood starts at process.t_min (0 on the linear path) by default:
  with the exact x0 prediction's drift it now matches the exact log-density (was all NaN)."""
  from jaxgen import closed_form, rectified_flow  # pylint: disable=import-outside-toplevel
  p = processes.LinearPath()
  data = closed_form.random_gaussian(3, seed=1)
  x = data.sample(jax.random.PRNGKey(0), 16)
  drift = predictions.as_drift_fn(p, lambda y, t: data.posterior_mean(y, t, p)[0], "x0")
  logp, _, _ = rectified_flow.log_likelihood(drift, x, p, solver="tsit5", rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(logp, data.logp(x), atol=1e-4)


@pytest.mark.parametrize("name", sorted(ALL))
def test_closed_form_velocity_is_finite_at_t0(name):
  """closed_form.velocity_fn at t = 0: on VP sigma' is infinite and sigma' E[eps] was inf * 0 =
  NaN; it now takes the limit -(g^2/2 + f sigma^2) score. It equals the probability-flow drift
  f x - g^2/2 score of the exact score at t = 0 and nearby, with a finite gradient."""
  from jaxgen import closed_form  # pylint: disable=import-outside-toplevel
  p = ALL[name]
  data = closed_form.three_gaussians_2d()
  x = data.sample(jax.random.PRNGKey(3), 8)
  velocity = data.velocity_fn(p)
  for time in (0.0, 1e-6, 0.3):
    t = jnp.full((8,), time)
    v = velocity(x, t)
    ref = processes.probability_flow_drift(p, data.score_fn(p))(x, t)
    np.testing.assert_allclose(v, ref, rtol=1e-5, atol=1e-6)
    grad = jax.grad(lambda y: jnp.sum(velocity(y, t)))(x)
    assert bool(jnp.all(jnp.isfinite(grad)))


def test_convert_checks_shapes_and_computes_in_float32():
  """`convert` names a `t` of the wrong shape and a prediction shaped unlike `x`; bf16 times are
  read in float32 (a bf16 t moved VE's eps -> score by ~1 %)."""
  vp, ve = processes.VPSDE(), processes.VESDE()
  x = jnp.ones((4, 2))
  with pytest.raises(ValueError, match="`t`"):
    predictions.convert(vp, x, jnp.ones((4, 2)) * 0.5, x, "eps", "x0")
  with pytest.raises(ValueError, match="`t`"):
    predictions.convert(vp, x, jnp.ones((3,)) * 0.5, x, "eps", "score")
  with pytest.raises(ValueError, match="prediction"):
    predictions.convert(vp, x, jnp.ones((4,)) * 0.5, jnp.ones((4, 3)), "eps", "score")
  t = jnp.asarray([0.3, 0.5, 0.71, 0.9])
  t_bf16 = t.astype(jnp.bfloat16)
  ref = predictions.convert(ve, x, t_bf16.astype(jnp.float32), x, "eps", "score")
  out = predictions.convert(ve, x, t_bf16, x, "eps", "score")
  assert out.dtype == jnp.float32
  np.testing.assert_allclose(out, ref, rtol=1e-6)


def test_integer_valued_float_N_becomes_an_int():
  """``N = 1000.0`` (from a config) is accepted as 1000 and indexes the discretization."""
  vp = processes.VPSDE(N=1000.0)
  assert vp.N == 1000 and isinstance(vp.N, int) and vp.discrete_betas.shape == (1000,)
  assert isinstance(processes.VESDE(N=10.0).N, int)
  for n in (np.int64(500), jnp.int32(500), np.float32(500.0)):  # NumPy and 0-d JAX numbers too
    assert processes.SubVPSDE(N=n).N == 500 and isinstance(processes.SubVPSDE(N=n).N, int)


@pytest.mark.parametrize("name", ["vp", "subvp", "ve", "linear", "edm"])
def test_marginal_and_sde_read_bf16_times_in_float32(name):
  """A bfloat16 ``t`` rounded sigma by ~0.1 %; marginal/sde now read it in float32."""
  process = {"vp": processes.VPSDE(), "subvp": processes.SubVPSDE(), "ve": processes.VESDE(),
             "linear": processes.LinearPath(), "edm": processes.EDMPath()}[name]
  t32 = jnp.linspace(0.1, 0.9, 4) * process.T
  t16 = t32.astype(jnp.bfloat16)
  t_ref = t16.astype(jnp.float32)  # the same (rounded) times, computed in float32
  x = jnp.ones((4, 3))
  for got, ref in zip(process.marginal(x, t16), process.marginal(x, t_ref)):
    np.testing.assert_allclose(np.asarray(got), np.asarray(ref), rtol=1e-6)
    assert got.dtype == jnp.float32
  for got, ref in zip(process.sde(x, t16), process.sde(x, t_ref)):
    np.testing.assert_allclose(np.asarray(got), np.asarray(ref), rtol=1e-6)


@pytest.mark.parametrize("prediction", ["eps", "score"])
def test_as_drift_fn_refuses_eps_and_score_on_the_linear_path(prediction):
  """Their drift is infinite at T (alpha(T) = 0): the samplers returned all-NaN samples."""
  with pytest.raises(ValueError, match="alpha\\(T\\) = 0"):
    predictions.as_drift_fn(processes.LinearPath(), lambda x, t: x, prediction)
  for ok in ("velocity", "x0"):
    predictions.as_drift_fn(processes.LinearPath(), lambda x, t: x, ok)


def test_edm_preconditioning_refuses_a_zero_data_scale():
  """``sigma_data = 0`` made ``c_out = 0``: a denoiser that ignores its network."""
  for bad in (0.0, -0.5, float("nan")):
    with pytest.raises(ValueError, match="sigma_data"):
      predictions.edm_preconditioning(jnp.ones((2,)), bad)
  c_skip, c_out, c_in, _ = predictions.edm_preconditioning(jnp.ones((2,)), 0.5)
  np.testing.assert_allclose(c_skip * 1.25, 0.25, rtol=1e-6)  # sigma_data^2 / (sigma^2 + sd^2)
  np.testing.assert_allclose(c_out * np.sqrt(1.25), 0.5, rtol=1e-6)
  np.testing.assert_allclose(c_in * np.sqrt(1.25), 1.0, rtol=1e-6)
