"""User callables as pytrees: ``jax.tree_util.Partial(apply, params)`` passed as ``score_fn`` /
``drift_fn`` compiles once and runs with the parameters it carries (a plain closure is compiled
per function object, as ``jax.jit`` does with static functions)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.tree_util import Partial

from jaxgen import closed_form, likelihood, predictions, processes, solvers
from jaxgen._jit import merge_callable, split_callable

KEY = jax.random.PRNGKey(0)
VP = processes.VPSDE()


def _counting(counter):
  def apply(params, x, t):
    counter.append(1)  # runs once per trace
    return -x * params["scale"]
  return apply


def _likelihood(fn):
  return likelihood.ode_log_likelihood(fn, jnp.ones((4, 2)), prior_logp=VP.prior_logp)[0]


CALLS = {
    "pc_sample": lambda fn: solvers.pc_sample(KEY, VP, fn, (64, 2), num_steps=50)[0],
    "ode_sample": lambda fn: solvers.ode_sample(KEY, VP, fn, (4, 2))[0],
    "solve_ode": lambda fn: solvers.solve_ode(fn, jnp.ones((4, 2)), 0.0, 1.0)[0],
    "solve_ode_rk4": lambda fn: solvers.solve_ode(fn, jnp.ones((4, 2)), 0.0, 1.0, solver="rk4",
                                                  num_steps=5)[0],
    "ddim_sample": lambda fn: solvers.ddim_sample(KEY, VP, fn, (4, 2), num_steps=10)[0],
    "heun_sample": lambda fn: solvers.heun_sample(KEY, VP, fn, (4, 2), 10)[0],
    "edm_heun_sample": lambda fn: solvers.edm_heun_sample(KEY, fn, (4, 2), num_steps=10)[0],
    "ode_log_likelihood": _likelihood,
}


@pytest.mark.parametrize("name", sorted(CALLS))
def test_partial_callables_compile_once_and_use_their_parameters(name):
  traces = []
  apply = _counting(traces)
  outs = []
  for scale in (1.0, 2.0, 3.0):
    outs.append(np.asarray(CALLS[name](Partial(apply, {"scale": jnp.float32(scale)}))))
    if scale == 1.0:
      first = len(traces)
  assert first > 0 and len(traces) == first  # no retrace for new parameters
  assert not np.allclose(outs[0], outs[1]) and not np.allclose(outs[1], outs[2])
  # the same values as a fresh closure over each parameter set (compiled on its own)
  ref = np.asarray(CALLS[name](lambda x, t: -x * 3.0))
  np.testing.assert_allclose(outs[2], ref, rtol=1e-5, atol=1e-5)


def test_closed_form_scores_and_plain_closures_still_work():
  data = closed_form.random_gaussian(2, seed=0)
  samples, _ = solvers.ode_sample(KEY, VP, processes.probability_flow_drift(VP, data.score_fn(VP)),
                                  (512, 2))
  np.testing.assert_allclose(np.cov(np.asarray(samples).T), data.covs[0], atol=0.35)


def test_split_and_merge_round_trip():
  fn = Partial(lambda p, x: p["a"] * x + p["b"], {"a": jnp.ones(3), "b": 2.0})
  static, arrays = split_callable(fn)
  assert arrays[0] is not None and arrays[1] is None  # the array traced, the float static
  assert float(merge_callable(static, arrays)(jnp.float32(1.0))[0]) == 3.0
  static2, _ = split_callable(Partial(fn.func, {"a": jnp.zeros(3), "b": 2.0}))
  assert hash(static) == hash(static2) and static == static2  # same structure: one program
  static3, _ = split_callable(Partial(fn.func, {"a": jnp.zeros(3), "b": 5.0}))
  assert static != static3  # a different Python number: another program
  plain = lambda x, t: x
  s_plain, a_plain = split_callable(plain)
  assert a_plain == [None] and merge_callable(s_plain, a_plain) is plain


ADAPTERS = {
    "probability_flow_drift": (lambda fn: processes.probability_flow_drift(VP, fn),
                               CALLS["solve_ode"]),
    "as_drift_fn_eps": (lambda fn: predictions.as_drift_fn(VP, fn, "eps"),  # sigma(0) = 0: t > 0
                        lambda fn: solvers.solve_ode(fn, jnp.ones((4, 2)), 0.5, 1.0)[0]),
    "as_score_fn_eps": (lambda fn: predictions.as_score_fn(VP, fn, "eps"), CALLS["pc_sample"]),
    "edm_denoiser": (predictions.edm_denoiser, CALLS["edm_heun_sample"]),
}


@pytest.mark.parametrize("name", sorted(ADAPTERS))
def test_jaxgen_adapters_keep_partial_parameters_traced(name):
  """probability_flow_drift / as_score_fn / as_drift_fn / edm_denoiser return Partials, so a
  Partial network passed through them still compiles once for all its parameter sets."""
  wrap, call = ADAPTERS[name]
  traces = []
  apply = _counting(traces)
  outs = []
  for scale in (1.0, 2.0, 3.0):
    outs.append(np.asarray(call(wrap(Partial(apply, {"scale": jnp.float32(scale)})))))
    if scale == 1.0:
      first = len(traces)
  assert first > 0 and len(traces) == first
  assert not np.allclose(outs[0], outs[2])


def test_nan_static_leaf_does_not_retrace():
  """A Python NaN carried by a Partial (never equal to itself) still hits the cache."""
  traces = []

  def drift(c, x, t):
    traces.append(1)
    return -x if c != c else x  # a static Python branch on the NaN

  counts = []
  for _ in range(3):
    solvers.solve_ode(Partial(drift, float("nan")), jnp.ones((4, 2)), 0.0, 1.0, solver="euler",
                      num_steps=2)
    counts.append(len(traces))
  assert counts[0] > 0 and counts == [counts[0]] * 3
