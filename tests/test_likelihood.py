"""ode_log_likelihood and bits/dim against closed forms."""
import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgen import closed_form, likelihood, processes
from conftest import enable_x64, perturbed_params  # pylint: disable=wrong-import-order

# (process, t0, t1)
PROCESSES = {
    "vp": (processes.VPSDE(), 1e-5, 1.0),
    "subvp": (processes.SubVPSDE(), 1e-5, 1.0),
    "ve": (processes.VESDE(), 1e-5, 1.0),
    "linear": (processes.LinearPath(), 1e-5, 1.0),
}
DATA = {
    "gauss2": lambda: closed_form.random_gaussian(2, seed=0),
    "gauss64": lambda: closed_form.random_gaussian(64, seed=1),
    "mixture2": closed_form.three_gaussians_2d,
}


def _exact_prior(data, process, t1):
  return lambda z: data.logp(z, jnp.full((z.shape[0],), t1), process)


@pytest.mark.parametrize("data_name", sorted(DATA))
@pytest.mark.parametrize("process_name", sorted(PROCESSES))
def test_exact_divergence_matches_closed_form(data_name, process_name):
  data = DATA[data_name]()
  process, t0, t1 = PROCESSES[process_name]
  x = data.sample(jax.random.PRNGKey(3), 16)
  logp, z, nfe = likelihood.ode_log_likelihood(
      data.velocity_fn(process), x, prior_logp=_exact_prior(data, process, t1), t0=t0, t1=t1,
      divergence="exact", rtol=1e-5, atol=1e-5)
  reference = data.logp(x, jnp.full((x.shape[0],), t0), process)
  err_per_dim = np.max(np.abs(np.asarray(logp - reference))) / data.dim
  assert z.shape == x.shape and logp.shape == (16,)
  assert 0 < int(nfe) < 2000
  assert err_per_dim < 1e-4, f"{data_name}/{process_name}: {err_per_dim:.2e} nats/dim"


@pytest.mark.parametrize("weights,means,covs,match", [
    ([0.5, 0.2], np.zeros((2, 2)), np.stack([np.eye(2)] * 2), "sum to 1"),  # unnormalised logp
    ([1.5, -0.5], np.zeros((2, 2)), np.stack([np.eye(2)] * 2), "positive"),
    ([1.0], np.zeros((1, 2)), np.eye(2), "shapes"),
    ([0.5, 0.5], np.zeros((2, 3)), np.stack([np.eye(2)] * 2), "shapes"),
])
def test_gaussian_mixture_refuses_bad_weights_and_shapes(weights, means, covs, match):
  with pytest.raises(ValueError, match=match):
    closed_form.GaussianMixture(np.asarray(weights), means, covs)


def _dot_precisions(jaxpr_text):
  """The ``precision=`` parameter of every ``dot_general`` in a printed jaxpr."""
  out = []
  for piece in jaxpr_text.split("dot_general[")[1:]:
    params = piece[:piece.index("preferred_element_type")]
    out.append(params[params.index("precision="):].split("\n")[0])
  return out


@pytest.mark.default_precision  # it sets the default itself
@pytest.mark.parametrize("data_name", sorted(DATA))
def test_closed_form_references_use_the_highest_precision(data_name):
  """The references keep float32's full precision under any default: TF32 (a GPU's float32
  default) moved the closed-form likelihood tests by up to 9e-4 nats/dim on an H200 (run 35)."""
  data, vp = DATA[data_name](), processes.VPSDE()
  x = data.sample(jax.random.PRNGKey(0), 4)
  t = jnp.full((4,), 0.3)
  fns = {"logp": lambda x: data.logp(x, t, vp), "velocity": lambda x: data.velocity_fn(vp)(x, t),
         "score": lambda x: data.score(x, t, vp), "data_logp": data.logp,
         "sample": lambda x: data.sample(jax.random.PRNGKey(1), 4)}
  found = 0
  for name, fn in fns.items():  # (a mixture's log-density has triangular solves, no products)
    with jax.default_matmul_precision("bfloat16"):
      precisions = _dot_precisions(str(jax.make_jaxpr(fn)(x)))
    found += len(precisions)
    assert all("HIGHEST" in p for p in precisions), (name, precisions)
  assert found >= 2
  # The same rule written by a caller who did not wrap it gives the default's precision.
  with jax.default_matmul_precision("bfloat16"):
    plain = _dot_precisions(str(jax.make_jaxpr(lambda x: x @ x.T)(x)))
  assert plain and not any("HIGHEST" in p for p in plain)


@pytest.mark.parametrize("kind", ["rademacher", "gaussian"])
def test_hutchinson_divergence_unbiased_at_a_point(kind):
  data = closed_form.three_gaussians_2d()
  vp = processes.VPSDE()
  drift = data.velocity_fn(vp)
  n = 2000
  x = jnp.tile(data.sample(jax.random.PRNGKey(1), 1), (n, 1))
  t = jnp.full((n,), 0.3)
  _, exact = likelihood.exact_divergence(drift, x, t)
  probes = likelihood.sample_probes(jax.random.PRNGKey(2), x.shape, kind)
  _, est = likelihood.hutchinson_divergence(drift, x, t, probes)
  est = np.asarray(est)
  stderr = est.std(ddof=1) / math.sqrt(n)
  assert stderr > 0
  assert abs(est.mean() - float(exact[0])) < 3 * stderr


@pytest.mark.parametrize("kind", ["rademacher", "gaussian"])
def test_hutchinson_log_likelihood_unbiased(kind):
  """2,000 copies of one point, each with its own probe: the mean log p is the exact one."""
  data = closed_form.random_gaussian(2, seed=4)
  vp = processes.VPSDE()
  n = 2000
  x = jnp.tile(data.sample(jax.random.PRNGKey(5), 1), (n, 1))
  common = dict(prior_logp=vp.prior_logp, t0=1e-5, t1=1.0, rtol=1e-5, atol=1e-5)
  exact, _, _ = likelihood.ode_log_likelihood(data.velocity_fn(vp), x[:1], **common)
  est, _, _ = likelihood.ode_log_likelihood(data.velocity_fn(vp), x, key=jax.random.PRNGKey(6),
                                            divergence=kind, **common)
  est = np.asarray(est)
  stderr = est.std(ddof=1) / math.sqrt(n)
  assert abs(est.mean() - float(exact[0])) < 3 * stderr, (est.mean(), float(exact[0]), stderr)


def test_adaptive_nfe_is_exact_when_the_first_step_is_rejected():
  """A stiff drift whose first attempted step is rejected: the reported NFE is the drift's calls
  (diffrax alone re-evaluated the first stage after the rejection: 4,467 calls, 4,465 reported)."""
  times = []
  def drift(x, t):
    jax.debug.callback(lambda s: times.append(float(s)), t[0])
    return -50.0 * (x - jnp.sin(20 * t)[:, None]) * (1 + 10 * jnp.abs(jnp.sin(30 * t))[:, None])
  logp, z, nfe = likelihood.ode_log_likelihood(
      drift, jnp.ones((3, 2)), prior_logp=lambda z: -0.5 * jnp.sum(z**2, -1), t0=0.0, t1=1.0,
      divergence="exact", rtol=1e-7, atol=1e-7)
  jax.block_until_ready(logp)
  jax.effects_barrier()
  assert int(nfe) == len(times) > 1000
  assert times.count(0.0) == 1
  # f(t0), the first attempt's 6 stages, then a second attempt from t0 with a smaller step
  assert times[0] == 0.0 and 0.0 < times[7] < times[1]
  # the divergence of this drift is -2 * 50 (1 + 10 |sin 30 t|) per example, in closed form
  s = np.linspace(0.0, 1.0, 200_001)
  trapezoid = getattr(np, "trapezoid", None) or np.trapz  # numpy < 2
  integral = trapezoid(-100.0 * (1 + 10 * np.abs(np.sin(30 * s))), s)
  np.testing.assert_allclose(logp, -0.5 * np.sum(np.asarray(z)**2, -1) + integral, rtol=1e-5)


@pytest.mark.parametrize("dtype", ["bfloat16", "int32", "float32 under x64"])
def test_adaptive_likelihood_of_other_data_dtypes(dtype):
  """The first stage handed to diffrax is computed on the state as diffrax promotes it: float32
  data under x64 (a float64 state) and integer data failed with it computed on the raw data."""
  x = jnp.round(3.0 * jax.random.normal(jax.random.PRNGKey(0), (4, 3)))
  prior = lambda z: -0.5 * jnp.sum(z**2, -1) - 1.5 * math.log(2 * math.pi)
  with enable_x64(dtype.endswith("x64")):
    data = x.astype(dtype.split()[0])
    logp, _, nfe = likelihood.ode_log_likelihood(
        lambda y, t: -0.5 * y, data, prior_logp=prior, t0=1e-3, t1=1.0, divergence="exact")
    # dx/dt = -x/2: z = x e^{-T/2} (T = 1 - 1e-3), log p = prior(z) - 3 T / 2
    span = 1.0 - 1e-3
    z = np.asarray(x, np.float64) * math.exp(-span / 2)
    reference = -0.5 * np.sum(z**2, -1) - 1.5 * math.log(2 * math.pi) - 1.5 * span
    assert logp.dtype == (jnp.float64 if dtype.endswith("x64") else jnp.float32)
    np.testing.assert_allclose(np.asarray(logp), reference, rtol=1e-5)
    assert int(nfe) > 0


def test_several_probes_reduce_variance():
  data = closed_form.random_gaussian(4, seed=2)
  vp = processes.VPSDE()
  x = jnp.tile(data.sample(jax.random.PRNGKey(0), 1), (500, 1))
  t = jnp.full((500,), 0.5)
  drift = data.velocity_fn(vp)
  one = likelihood.hutchinson_divergence(
      drift, x, t, likelihood.sample_probes(jax.random.PRNGKey(1), x.shape, "gaussian", 1))[1]
  eight = likelihood.hutchinson_divergence(
      drift, x, t, likelihood.sample_probes(jax.random.PRNGKey(1), x.shape, "gaussian", 8))[1]
  assert np.var(np.asarray(eight)) < 0.3 * np.var(np.asarray(one))


def test_fixed_step_solver_and_jit_and_nfe():
  data = closed_form.random_gaussian(2, seed=0)
  vp = processes.VPSDE()
  x = data.sample(jax.random.PRNGKey(0), 4)

  @jax.jit
  def run(x):
    return likelihood.ode_log_likelihood(data.velocity_fn(vp), x, prior_logp=vp.prior_logp,
                                         t0=1e-5, t1=1.0, solver="heun", num_steps=200)

  logp, _, nfe = run(x)
  assert int(nfe) == 400
  reference = data.logp(x, jnp.full((4,), 1e-5), vp)
  assert np.max(np.abs(np.asarray(logp - reference))) < 1e-2


@pytest.mark.parametrize("solver,num_steps", [("dopri5", None), ("tsit5", None), ("heun", 20),
                                              ("euler", 30), ("midpoint", 10), ("rk4", 5)])
def test_nfe_counts_drift_calls(solver, num_steps):
  """The reported NFE equals the number of times the solver actually called the drift."""
  data = closed_form.random_gaussian(2, seed=0)
  vp = processes.VPSDE()
  x = data.sample(jax.random.PRNGKey(0), 4)
  calls = []

  def counting_drift(y, t):
    jax.debug.callback(lambda: calls.append(1))
    return data.velocity_fn(vp)(y, t)

  _, _, nfe = likelihood.ode_log_likelihood(counting_drift, x, prior_logp=vp.prior_logp,
                                            t0=1e-5, t1=1.0, divergence="rademacher",
                                            key=jax.random.PRNGKey(1), solver=solver,
                                            num_steps=num_steps)
  jax.effects_barrier()
  assert len(calls) == int(nfe)


def test_gradients_flow_through_the_solver():
  data = closed_form.random_gaussian(2, seed=0)
  x = data.sample(jax.random.PRNGKey(0), 4)
  prior = processes.LinearPath().prior_logp

  def loss(a):
    drift = lambda y, t: -a * y
    return -jnp.mean(likelihood.ode_log_likelihood(drift, x, prior_logp=prior, t0=0.0, t1=1.0)[0])

  # dx/dt = -a x: z = x e^{-a}, log p(x) = log N(x e^{-a}) - 2a, analytic derivative.
  def analytic(a):
    z = x * jnp.exp(-a)
    return -jnp.mean(prior(z) - 2 * a)

  g, g_ref = jax.grad(loss)(0.7), jax.grad(analytic)(0.7)
  assert abs(float(g) - float(g_ref)) < 1e-3 * abs(float(g_ref))


@pytest.mark.parametrize("kwargs,match", [
    (dict(divergence="hutch"), "divergence"),
    (dict(solver="rk45"), "solver"),
    (dict(rtol=0.0), "rtol"),
    (dict(atol=-1e-5), "atol"),
    (dict(t0=0.5, t1=0.1), "t0"),
    (dict(t0=-1.0), "t0"),
    (dict(solver="euler"), "num_steps"),
    (dict(divergence="rademacher"), "key"),
    (dict(num_probes=0, divergence="gaussian", key=jax.random.PRNGKey(0)), "num_probes"),
    (dict(max_steps=0), "max_steps"),
    (dict(probes=jnp.ones((4, 2))), "probes.*exact"),
    (dict(divergence="rademacher", probes=jnp.ones((1, 1, 4, 2))), "probes"),
    (dict(t0=jnp.ones((2,)) * 1e-5), "t0"),
    (dict(num_steps=50), "num_steps"),  # an adaptive solver picks its own steps
    (dict(prior_logp=lambda z: jnp.sum(processes.VPSDE().prior_logp(z))), "prior_logp"),
    (dict(divergence="rademacher", probes=jnp.ones((2, 4, 2)), num_probes=3), "num_probes"),
])
def test_bad_arguments_raise_named_errors(kwargs, match):
  x = jnp.ones((4, 2))
  args = dict(prior_logp=processes.VPSDE().prior_logp, t0=1e-5, t1=1.0)
  args.update(kwargs)
  with pytest.raises(ValueError, match=match):
    likelihood.ode_log_likelihood(lambda y, t: y, x, **args)
  with pytest.raises(ValueError, match="x"):
    likelihood.ode_log_likelihood(lambda y, t: y, jnp.ones((4,)), prior_logp=lambda z: z)


def test_numpy_and_0d_times_are_accepted():
  """t0 / t1 given as NumPy or 0-d JAX scalars give the same answer as Python floats."""
  x = jnp.ones((4, 2))
  args = dict(prior_logp=processes.VPSDE().prior_logp, divergence="exact")
  ref = likelihood.ode_log_likelihood(lambda y, t: -y, x, t0=1e-3, t1=1.0, **args)[0]
  for t0, t1 in ((np.float32(1e-3), np.float64(1.0)), (jnp.float32(1e-3), jnp.asarray(1.0))):
    out = likelihood.ode_log_likelihood(lambda y, t: -y, x, t0=t0, t1=t1, **args)[0]
    np.testing.assert_allclose(out, ref, rtol=1e-6)


def test_bits_per_dim_convention_on_uniform_discrete_data():
  """Uniform 8-bit data has entropy 8 bits/dim: its dequantized density is uniform on the cube."""
  shape = (4, 4, 3)
  d = math.prod(shape)
  # Data in [-1, 1]: continuous density 2^-d, so logp = -d ln 2.
  logp = jnp.full((5,), -d * math.log(2.0))
  np.testing.assert_allclose(likelihood.bits_per_dim(logp, shape), 8.0, rtol=1e-6)
  # Same data in [0, 1]: density 1, logp = 0.
  np.testing.assert_allclose(
      likelihood.bits_per_dim(jnp.zeros((5,)), shape, data_range=1.0), 8.0, rtol=1e-6)
  # score_sde's offsets: +7 for [-1, 1], +8 for [0, 1].
  np.testing.assert_allclose(likelihood.bits_per_dim(jnp.zeros((1,)), shape), 7.0)


@pytest.mark.parametrize("shape", [(-1, -3), (), (8, 0), (2.5, 2), (True, 3)])
def test_bits_per_dim_refuses_a_bad_data_shape(shape):
  """(-1, -3) has a positive product and was taken as 3 dimensions."""
  with pytest.raises(ValueError, match="data_shape"):
    likelihood.bits_per_dim(jnp.zeros((2,)), shape)
  with pytest.raises(ValueError, match="data_shape"):
    likelihood.discrete_log_likelihood_bound(jnp.zeros((2,)), shape)


def test_bits_per_dim_on_a_known_discrete_distribution():
  """A discrete distribution on 4 levels; a piecewise-constant density on the dequantization
  cells gives exactly its entropy in bits/dim, computed through uniform_dequantize."""
  probs = np.array([0.1, 0.2, 0.3, 0.4])
  k = 4
  levels = jax.random.choice(jax.random.PRNGKey(0), k, (20000, 3), p=jnp.asarray(probs))
  x = likelihood.uniform_dequantize(jax.random.PRNGKey(1), levels, num_levels=k)  # in [-1, 1]
  assert float(x.min()) >= -1.0 and float(x.max()) <= 1.0
  cell = jnp.clip(jnp.floor((x + 1.0) / 2.0 * k).astype(jnp.int32), 0, k - 1)
  np.testing.assert_array_equal(np.asarray(cell), np.asarray(levels))
  # density of the cell: P(k) / cell width (2 / K)
  logp = jnp.sum(jnp.log(jnp.asarray(probs)[cell] / (2.0 / k)), axis=1)
  bpd = float(jnp.mean(likelihood.bits_per_dim(logp, (3,), num_levels=k)))
  entropy_bits = float(-(probs * np.log2(probs)).sum())
  assert abs(bpd - entropy_bits) < 0.02


def test_failed_adaptive_solve_raises_or_gives_nan():
  """A solve that runs out of steps raises by default; with ``throw=False`` it returns NaN
  log-likelihoods (what the evaluation loop counts and reports) and a normal solve is unchanged."""
  vp = processes.VPSDE()
  drift = processes.probability_flow_drift(vp, lambda x, t: -x)
  x = jax.random.normal(jax.random.PRNGKey(0), (4, 2))
  kwargs = dict(prior_logp=vp.prior_logp, t0=1e-5, t1=1.0, divergence="exact", rtol=1e-5,
                atol=1e-5)
  with pytest.raises(Exception, match="(?i)max_steps|maximum number of solver steps"):
    jax.block_until_ready(likelihood.ode_log_likelihood(drift, x, max_steps=2, **kwargs))
  logp, _, _ = likelihood.ode_log_likelihood(drift, x, max_steps=2, throw=False, **kwargs)
  assert np.all(np.isnan(np.asarray(logp)))
  good, _, _ = likelihood.ode_log_likelihood(drift, x, throw=False, **kwargs)
  ref, _, _ = likelihood.ode_log_likelihood(drift, x, **kwargs)
  np.testing.assert_array_equal(good, ref)
  assert np.all(np.isfinite(np.asarray(good)))


@pytest.mark.default_precision  # it checks the default arithmetic (tests/conftest.py)
def test_eval_precision_sets_the_likelihood_arithmetic():
  """``config.eval.precision``: ``'model'`` evaluates a bfloat16 network in bfloat16;
  ``'float32'`` the same parameters in a float32 network (the float32 config's result exactly);
  ``'highest'`` also puts every matrix product at the highest precision. A bad value is named."""
  from configs.digits import vp_unet  # pylint: disable=import-outside-toplevel
  from jaxgen import evaluate, train  # pylint: disable=import-outside-toplevel
  config = vp_unet.get_config()
  config.model.name, config.model.hidden, config.model.embedding_dim = "mlp", (32, 32), 16
  config.model.dtype = "bfloat16"
  config.eval.rtol = config.eval.atol = 1e-3
  # Zero-initialised output layers redrawn, so that the network's arithmetic shows.
  params = perturbed_params(train.Setup(config), 0.3)
  rng = np.random.default_rng(2)
  batch = {"image": rng.integers(0, 256, (4, 8, 8, 1)).astype(np.uint8)}
  key = jax.random.PRNGKey(3)

  def nll(precision, dtype="bfloat16"):
    cfg = config.copy_and_resolve_references()
    cfg.eval.precision, cfg.model.dtype = precision, dtype
    fn = evaluate.make_nll_fn(train.Setup(cfg), cfg.eval)
    return np.asarray(jax.jit(fn)(params, key, batch)[0]), str(jax.make_jaxpr(fn)(params, key,
                                                                                  batch))

  (bf16, bf16_jaxpr), (f32, f32_jaxpr) = nll("model"), nll("float32")
  (hi, hi_jaxpr), (ref, _) = nll("highest"), nll("model", "float32")
  assert np.all(np.isfinite(bf16)) and np.all(np.isfinite(ref))
  np.testing.assert_allclose(f32, ref, rtol=1e-6)
  if jax.default_backend() == "cpu":  # the CPU's float32 products are exact already
    np.testing.assert_allclose(hi, ref, rtol=1e-4)
  else:  # TF32 products by default on NVIDIA GPUs: 'highest' differs (by up to 1.2 % on an H200)
    assert 1e-5 < np.max(np.abs(hi - ref) / np.abs(ref)) < 5e-2
  assert 1e-4 < np.max(np.abs(bf16 - ref)) < 0.5
  assert "bf16" in bf16_jaxpr and "bf16" not in f32_jaxpr
  # (the likelihood's own contractions ask for HIGHEST in every mode; the network's do here)
  assert hi_jaxpr.count("HIGHEST") > f32_jaxpr.count("HIGHEST")
  bad = config.copy_and_resolve_references()
  bad.eval.precision = "fp64"
  with pytest.raises(ValueError, match="config.eval.precision"):
    evaluate.make_nll_fn(train.Setup(bad), bad.eval)
  with pytest.raises(ValueError, match="config.eval.precision"):
    train.validate_config(bad)


BASELINE_PROCESSES = {"vp": processes.VPSDE(), "subvp": processes.SubVPSDE(),
                      "ve": processes.VESDE(), "edm": processes.EDMPath()}


@pytest.mark.parametrize("name", sorted(BASELINE_PROCESSES))
def test_linear_divergence_baseline_is_the_drift_divergence_with_its_integral(name):
  process = BASELINE_PROCESSES[name]
  t0, t1 = (process.t_min, process.T) if name == "edm" else (1e-5, 1.0)
  base = likelihood.linear_divergence_baseline(process, (4, 4, 3))
  # b(t) is the divergence of the linear drift part f(t) x (exact for the linear part alone).
  t = jnp.array([t0, 0.5 * (t0 + t1), t1])
  x = jax.random.normal(jax.random.PRNGKey(0), (3, 4, 4, 3))
  _, div = likelihood.exact_divergence(
      lambda y, s: process.drift_coefficient(s)[:, None, None, None] * y, x, t)
  np.testing.assert_allclose(np.asarray(base(t)), np.asarray(div), rtol=1e-5, atol=1e-5)
  # Its closed-form integral equals a fine quadrature of b.
  grid = np.linspace(t0, t1, 200_001)
  rate = np.asarray(base(jnp.asarray(grid, jnp.float32)), np.float64)
  quad = np.sum(0.5 * (rate[1:] + rate[:-1]) * np.diff(grid))  # trapezoid rule
  np.testing.assert_allclose(float(base.integral(t0, t1)), quad, rtol=1e-5, atol=1e-4)
  assert base == likelihood.linear_divergence_baseline(process, (48,))
  assert hash(base) == hash(likelihood.linear_divergence_baseline(process, (48,)))


@pytest.mark.parametrize("process_name", ["vp", "subvp"])
def test_divergence_baseline_gives_the_same_log_likelihood(process_name):
  data = closed_form.random_gaussian(64, seed=1)
  process, t0, t1 = PROCESSES[process_name]
  x = data.sample(jax.random.PRNGKey(3), 8)
  kwargs = dict(prior_logp=_exact_prior(data, process, t1), t0=t0, t1=t1, divergence="exact",
                rtol=1e-5, atol=1e-5)
  base = likelihood.linear_divergence_baseline(process, (64,))
  plain, _, nfe_plain = likelihood.ode_log_likelihood(data.velocity_fn(process), x, **kwargs)
  with_base, _, nfe_base = likelihood.ode_log_likelihood(data.velocity_fn(process), x,
                                                         divergence_baseline=base, **kwargs)
  reference = data.logp(x, jnp.full((x.shape[0],), t0), process)
  for logp in (plain, with_base):
    assert np.max(np.abs(np.asarray(logp - reference))) / data.dim < 1e-4
  # The baseline's integral, -D/2 int beta ~ -322 nats, is added back in closed form: dropping
  # it would be caught above. The step sequence is the solver's own business.
  assert abs(float(base.integral(t0, t1))) > 300
  assert int(nfe_plain) > 0 and int(nfe_base) > 0


def test_divergence_baseline_integral_keeps_float64():
  """Under x64 the closed-form integral is float64 (it was float32: 1.4e-6 nats off at D = 12,
  growing with D)."""
  vp = processes.VPSDE()
  with enable_x64(True):
    value = likelihood.linear_divergence_baseline(vp, (32, 32, 3)).integral(1e-5, 1.0)
    assert value.dtype == jnp.float64
    log_alpha = lambda t: -0.25 * t**2 * (20.0 - 0.1) - 0.5 * t * 0.1
    np.testing.assert_allclose(float(value), 3072 * (log_alpha(1.0) - log_alpha(1e-5)), rtol=1e-12)


def test_divergence_baseline_needs_an_integral_and_compiles_once_per_process():
  data = closed_form.random_gaussian(2, seed=0)
  vp = processes.VPSDE()
  x = data.sample(jax.random.PRNGKey(0), 4)
  drift = data.velocity_fn(vp)
  with pytest.raises(ValueError, match="divergence_baseline.*integral"):
    likelihood.ode_log_likelihood(drift, x, prior_logp=vp.prior_logp, divergence="exact",
                                  divergence_baseline=lambda t: -t)
  before = likelihood._solve._cache_size()  # pylint: disable=protected-access
  outs = [likelihood.ode_log_likelihood(drift, x, prior_logp=vp.prior_logp, divergence="exact",
                                        divergence_baseline=likelihood.linear_divergence_baseline(
                                            vp, (2,)))[0] for _ in range(2)]
  assert likelihood._solve._cache_size() == before + 1  # pylint: disable=protected-access
  np.testing.assert_array_equal(np.asarray(outs[0]), np.asarray(outs[1]))


def test_rk4_is_fourth_order_and_matches_solve_ode():
  """The likelihood's classical RK4 (a diffrax tableau) converges at order 4 to the exact
  log-density of Gaussian data (float64, where float32 rounding would hide it), and its latent
  equals ``solvers.solve_ode``'s own RK4."""
  from jaxgen import solvers
  data = closed_form.random_gaussian(2, seed=3)
  vp = processes.VPSDE()
  drift = data.velocity_fn(vp)
  errors = []
  with enable_x64(True):
    x = data.sample(jax.random.PRNGKey(0), 8).astype(jnp.float64)
    reference = data.logp(x, jnp.full((8,), 1e-3), vp)
    exact_prior = lambda z: data.logp(z, jnp.full((8,), 1.0), vp)  # no prior mismatch at t1
    for n in (8, 16, 32):
      logp, z, nfe = likelihood.ode_log_likelihood(drift, x, prior_logp=exact_prior, t0=1e-3,
                                                   t1=1.0, solver="rk4", num_steps=n)
      assert int(nfe) == 4 * n and logp.dtype == jnp.float64
      z_ref, _ = solvers.solve_ode(drift, x, 1e-3, 1.0, solver="rk4", num_steps=n)
      np.testing.assert_allclose(np.asarray(z), np.asarray(z_ref), rtol=1e-6, atol=1e-6)
      errors.append(float(jnp.max(jnp.abs(logp - reference))))
  # halving the step divides a fourth-order method's error by ~16 (measured 13 and 19; Heun's
  # second order gives ~3-4 here)
  assert errors[0] / errors[1] > 9 and errors[1] / errors[2] > 9, errors


@pytest.mark.parametrize("divergence", ["rademacher", "gaussian"])
def test_hutchinson_divergence_on_bfloat16_data(divergence):
  """bfloat16 data with Hutchinson probes raised a dtype error inside jvp (the solver's state is
  float32); it now runs and agrees with the float32 data's log-likelihood."""
  vp = processes.VPSDE()
  drift = processes.probability_flow_drift(vp, lambda y, t: -y)  # N(0, I) data: exact score
  x = jax.random.normal(jax.random.PRNGKey(0), (4, 3))
  args = dict(key=jax.random.PRNGKey(1), prior_logp=vp.prior_logp, divergence=divergence)
  lp16 = likelihood.ode_log_likelihood(drift, x.astype(jnp.bfloat16), **args)[0]
  lp32 = likelihood.ode_log_likelihood(drift, x.astype(jnp.bfloat16).astype(jnp.float32),
                                       **args)[0]
  np.testing.assert_allclose(np.asarray(lp16), np.asarray(lp32), rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("levels,kwargs,match", [
    (jnp.array([0.0, 0.5, 1.0]), {}, "integer"),  # data already scaled to [0, 1]
    (jnp.array([300]), {}, "\\[0, 256\\)"),
    (jnp.array([-1]), {}, "\\[0, 256\\)"),
    (jnp.array([3]), dict(num_levels=0), "num_levels"),
    (jnp.array([3]), dict(low=1.0, high=-1.0), "low < high"),
])
def test_uniform_dequantize_refuses_bad_levels(levels, kwargs, match):
  with pytest.raises(ValueError, match=match):
    likelihood.uniform_dequantize(jax.random.PRNGKey(0), levels, **kwargs)


def test_uniform_dequantize_cells():
  """Level k lands in its own cell [low + W k / K, low + W (k + 1) / K), also under jit."""
  levels = jnp.arange(256, dtype=jnp.uint8)
  for fn in (likelihood.uniform_dequantize, jax.jit(likelihood.uniform_dequantize)):
    x = np.asarray(fn(jax.random.PRNGKey(0), levels))
    k = np.arange(256)
    assert np.all(x >= -1 + 2 * k / 256) and np.all(x < -1 + 2 * (k + 1) / 256)


def test_uniform_dequantize_stays_in_its_cell_at_float32_edges():
  """In float32, 255 + u rounds to 256 for u > 1 - 2**-17: of 2**20 draws of level 255 (key 0),
  some came out as exactly 1.0, the next cell's edge. Every value now lies inside its own cell,
  and ``dequantized_in_bins`` keeps the extreme draws in their bins for K not a power of two."""
  key = jax.random.PRNGKey(0)
  levels = jnp.full((2**20,), 255, jnp.uint8)
  naive = -1 + 2 * (255.0 + np.asarray(jax.random.uniform(key, levels.shape, jnp.float32))) / 256
  assert (naive >= 1.0).sum() > 0  # the draws that used to leave the cell
  x = np.asarray(jax.jit(likelihood.uniform_dequantize)(key, levels))
  assert x.max() < 1.0
  u = jnp.array([[0.0], [np.nextafter(np.float32(1), np.float32(0))]], jnp.float32)
  for num_levels in (17, 100, 255):
    k = np.arange(num_levels, dtype=np.float64)
    y = jax.jit(likelihood.dequantized_in_bins, static_argnums=2)(
        jnp.tile(jnp.asarray(k, jnp.float32), (2, 1)), jnp.broadcast_to(u, (2, num_levels)),
        num_levels)
    y = np.asarray(y, np.float64)
    assert np.all(k / num_levels <= y) and np.all(y < (k + 1) / num_levels), num_levels
  x = likelihood.dequantized_in_bins(jnp.arange(4.0), jnp.full((4,), 0.5), 256.0)  # a config's
  np.testing.assert_allclose(np.asarray(x), (np.arange(4) + 0.5) / 256)
  with pytest.raises(ValueError, match=r"`num_levels` must be an int >= 2, got 2.5"):
    likelihood.dequantized_in_bins(jnp.arange(2.0), jnp.zeros((2,)), 2.5)


def test_a_process_prior_with_another_end_time_warns():
  """``prior_logp=process.prior_logp`` is the density at ``process.T``; integrating to another
  ``t1`` (the default 1.0 on EDM's path, T = 80) warns, naming both."""
  edm = processes.EDMPath()
  x = jnp.ones((2, 2))
  with pytest.warns(UserWarning, match=r"EDMPath's prior, its density at T = 80.0, but t1 = 1.0"):
    likelihood.ode_log_likelihood(lambda y, t: y / t[:, None], x, prior_logp=edm.prior_logp,
                                  t0=0.5, t1=1.0)
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    likelihood.ode_log_likelihood(lambda y, t: -0.5 * y, x, prior_logp=processes.VPSDE().prior_logp,
                                  t0=1e-5, t1=1.0)
