"""Density plots of 2-D models for every method: the probability-flow ODE's density on a grid.

The grid's density must be a proper density (it integrates to one over a box holding the mass),
must agree point by point with the likelihood that ``--mode=eval`` reports, and must be oriented
as the plot says (row ``i`` is ``y = ys[i]``).
"""
import importlib

import jax
import numpy as np
import pytest

from jaxgen import cnf, evaluate, parallel, train
from jaxgen import data as data_lib


def _trained(module, dataset, steps=100):
  """A small MLP of ``configs/toy/<module>.py`` after ``steps`` jitted train steps (EMA off)."""
  config = importlib.import_module(f"configs.toy.{module}").get_config(dataset)
  config.model.hidden = (32, 32)
  config.model.ema_rate = 0.0
  config.training.batch_size = 256
  config.optim.lr = 3e-3
  config.eval.rtol = config.eval.atol = 1e-5
  setup = train.Setup(config)
  state = jax.jit(setup.init_state)(jax.random.PRNGKey(0))
  step = jax.jit(setup.make_train_step())
  ds = data_lib.get_dataset(config.data, config.data.train_split, seed=0, process_index=0,
                            process_count=1)
  for i in range(steps):
    state, _ = step(state, ds.get_batch(i, 256))
  return config, setup, state.params


@pytest.mark.parametrize("module,dataset", [("vp_mlp", "moons"), ("linear_mlp", "8gaussians"),
                                            ("ve_mlp", "checkerboard"), ("edm_mlp", "moons")])
def test_density_on_the_grid_is_a_proper_density_and_the_models_likelihood(module, dataset,
                                                                           tmp_path):
  config, setup, params = _trained(module, dataset)
  lim, n = 6.0, 81
  logp = evaluate.log_density_on_grid(setup, params, lim=lim, n=n, batch_size=5000)
  assert logp.shape == (n, n) and np.isfinite(logp).all()
  cell = (2 * lim / (n - 1)) ** 2
  mass = float(np.sum(np.exp(logp)) * cell)
  print(f"{module} on {dataset}: mass on [-{lim}, {lim}]^2 = {mass:.4f}, "
        f"max density {np.exp(logp).max():.3f}")
  assert abs(mass - 1.0) < 0.05, mass  # measured 0.977-0.994 (a coarse grid, 0.15 apart)
  # Row i is y = ys[i], column j is x = xs[j]: the eval likelihood at those points agrees.
  xs = np.linspace(-lim, lim, n)
  picks = [(7, 66), (40, 20), (63, 40)]
  points = np.array([[xs[j], xs[i]] for i, j in picks], np.float32)
  eval_config = config.eval.copy_and_resolve_references()
  eval_config.divergence = "exact"
  nll, _ = jax.jit(evaluate.make_nll_fn(setup, eval_config))(
      params, jax.random.PRNGKey(0), {"image": points})
  # (an adaptive solve's steps depend on its batch: 3 points here, 5,000 there)
  np.testing.assert_allclose(-np.asarray(nll), [logp[i, j] for i, j in picks], atol=1e-2)
  assert not np.allclose([logp[j, i] for i, j in picks], [logp[i, j] for i, j in picks],
                         atol=1e-2)  # a transposed grid would not match
  if module == "vp_mlp":  # split over the 8 devices (4,999 rounds up to 5,000): the same solve,
    # up to the solver's tolerance (a sum in another order can move an adaptive step choice;
    # measured: at most 4.8e-3, typically 7e-4)
    sharded = evaluate.log_density_on_grid(setup, params, lim=lim, n=n, batch_size=4999,
                                           mesh=parallel.make_mesh(jax.devices()[:8]))
    diff = np.abs(sharded - logp)
    assert np.isfinite(sharded).all() and diff.max() < 1e-2 and np.median(diff) < 2e-3, diff.max()

  path = evaluate.write_density(setup, params, str(tmp_path / "density.png"), n=30)
  with open(path, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_density_grid_follows_the_config():
  """``config.eval.density_grid``: 100 by default for 2-D toy data, 0 turns the plot off, none for
  other data, a distilled generator or a source without a density; validated with the other
  counts. The plot's extent covers the data (``toy_gmm2`` reaches past 4)."""
  from configs.toy import vp_mlp  # pylint: disable=import-outside-toplevel
  from configs.digits import vp_unet  # pylint: disable=import-outside-toplevel
  config = vp_mlp.get_config("moons")
  assert evaluate.density_grid(config) == 100
  assert evaluate.density_extent(config) == 4.0
  from configs.rectified_flow import toy_8gaussians_to_moons_1rf, toy_checkerboard_distill  # pylint: disable=import-outside-toplevel
  assert evaluate.density_grid(toy_8gaussians_to_moons_1rf.get_config()) == 100
  assert evaluate.density_grid(toy_checkerboard_distill.get_config()) == 0
  source = toy_8gaussians_to_moons_1rf.get_config()
  source.data.source = "toy_moons"  # no closed-form prior density: no likelihood, no plot
  assert evaluate.density_grid(source) == 0
  gmm = vp_mlp.get_config("moons")
  gmm.data.dataset = "toy_gmm2"
  x = np.asarray(data_lib.sample_toy("gmm2", 0, 20000))
  lim = evaluate.density_extent(gmm)
  assert lim > 4.0 and np.mean(np.abs(x).max(1) > lim) < 1e-3, lim
  config.eval.density_grid = 0
  assert evaluate.density_grid(config) == 0
  assert evaluate.density_grid(vp_unet.get_config()) == 0
  config.data.dataset = "toy_gmm3"  # 3-D: no plot
  config.eval.density_grid = 50
  assert evaluate.density_grid(config) == 0
  for bad in (-1, True):
    config = vp_mlp.get_config("moons")
    config.eval.density_grid = bad
    with pytest.raises(ValueError, match=r"config.eval.density_grid must be"):
      train.validate_config(config, num_devices=1)


def test_the_cnf_density_is_the_shared_one():
  """``cnf.log_density_on_grid`` is ``evaluate.log_density_on_grid`` (one code path)."""
  from configs.cnf import toy  # pylint: disable=import-outside-toplevel
  config = toy.get_config()
  config.eval.rtol = config.eval.atol = 1e-3
  setup = train.Setup(config)
  params = setup.init_state(jax.random.PRNGKey(1)).params
  a = cnf.log_density_on_grid(setup, params, lim=3.0, n=12)
  b = evaluate.log_density_on_grid(setup, params, lim=3.0, n=12)
  np.testing.assert_array_equal(a, b)
  with pytest.raises(ValueError, match=r"`n` must be a positive int, got 0"):
    evaluate.log_density_on_grid(setup, params, n=0)
