"""The README's first Python example runs as printed, and its numbers are right (closed forms)."""
import os
import re

import jax.numpy as jnp
import numpy as np

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


def _python_blocks():
  return re.findall(r"^```python\n(.*?)^```", open(README).read(), flags=re.S | re.M)


def test_readme_pure_function_example_runs_and_matches_the_closed_form():
  blocks = _python_blocks()
  assert blocks and "ode_log_likelihood" in blocks[0], "the README's first example moved"
  ns = {}
  exec(compile(blocks[0], README, "exec"), ns)  # pylint: disable=exec-used
  data, vp, x = ns["data"], ns["vp"], ns["x"]
  logp, z, nfe, samples = ns["logp"], ns["z"], ns["nfe"], ns["samples"]
  assert logp.shape == (128,) and z.shape == (128, 2) and samples.shape == (128, 2)
  assert int(nfe) > 0
  # The PF-ODE log-likelihood (Hutchinson, one Rademacher probe) against the exact density: the
  # probe noise averages out over 128 points.
  exact = np.asarray(data.logp(x))
  gap = np.asarray(logp) - exact
  assert abs(gap.mean()) < 4 * gap.std(ddof=1) / np.sqrt(128) + 0.02, (gap.mean(), gap.std())
  # Samples: the data's mean within 5 standard errors.
  se = np.sqrt(np.diag(data.covariance())) / np.sqrt(128)
  assert np.all(np.abs(np.asarray(samples).mean(0) - data.mean()) < 5 * se)
  # eps from the score: eps = -sigma(t) * score.
  t = jnp.full((128,), 0.5)
  _, std = vp.marginal(x, t)
  np.testing.assert_allclose(ns["eps_hat"], -np.asarray(std).reshape(-1, 1) * data.score(x, t, vp),
                             rtol=1e-5, atol=1e-5)
