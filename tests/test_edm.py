"""EDM end to end (configs/toy/edm_mlp.py) against the closed form of its data.

FFJORD's 8 Gaussians are an equal mixture of N(mu_k, s^2 I), mu_k on a circle of radius
4 / 1.414, s = 0.5 / 1.414. Under EDM's path x = x_0 + sigma n every quantity is exact: the
denoiser ``D*(x; sigma) = sum_k w_k(x) (mu_k + s^2 / (s^2 + sigma^2) (x - mu_k))`` with
``w_k`` the posterior of component k under N(mu_k, (s^2 + sigma^2) I), and the data's density.
A small MLP trained for 2,000 steps with the config's loss and preconditioning must come close
to the exact denoiser, its 18-step Heun samples (NFE 35) must cover the eight modes as the data
do, and its probability-flow likelihood must come close to the exact one.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.toy import common, edm_mlp
from jaxgen import evaluate, predictions, train
from jaxgen import data as data_lib

RADIUS, S = 4.0 / 1.414, 0.5 / 1.414
MU = RADIUS * np.stack([np.cos(np.arange(8) * np.pi / 4), np.sin(np.arange(8) * np.pi / 4)], 1)


def exact_log_density(x):
  var = S ** 2
  d2 = ((x[:, None, :] - MU[None]) ** 2).sum(-1)
  lp = -d2 / (2 * var) - np.log(2 * np.pi * var) - np.log(8)
  top = lp.max(1)
  return top + np.log(np.exp(lp - top[:, None]).sum(1))


def exact_denoiser(x, sigma):
  var = S ** 2 + sigma ** 2
  lw = -((x[:, None, :] - MU[None]) ** 2).sum(-1) / (2 * var)
  w = np.exp(lw - lw.max(1, keepdims=True))
  w /= w.sum(1, keepdims=True)
  return (w[..., None] * (MU[None] + (S ** 2 / var) * (x[:, None, :] - MU[None]))).sum(1)


def test_exact_denoiser_is_the_posterior_mean():
  """The closed form itself: ``E[x_0 | x]`` by self-normalized importance sampling of data draws
  (weights N(x; x_0, sigma^2 I)) agrees with ``D*`` at points between and on the modes."""
  rng = np.random.default_rng(0)
  comp = rng.integers(0, 8, 400_000)
  x0 = MU[comp] + S * rng.normal(size=(400_000, 2))
  for sigma, point in ((1.0, (1.5, 1.0)), (0.3, (2.0, 2.0)), (3.0, (-1.0, 0.5))):
    point = np.asarray(point)
    logw = -((x0 - point) ** 2).sum(1) / (2 * sigma ** 2)
    w = np.exp(logw - logw.max())
    mc = (w[:, None] * x0).sum(0) / w.sum()
    np.testing.assert_allclose(mc, exact_denoiser(point[None], sigma)[0], atol=0.02)


@pytest.fixture(scope="module")
def trained():
  config = edm_mlp.get_config("8gaussians")
  config.model.hidden = (128, 128, 128)
  config.model.ema_rate = 0.99
  setup = train.Setup(config)
  state = jax.jit(setup.init_state)(jax.random.PRNGKey(0))
  step = jax.jit(setup.make_train_step())
  ds = data_lib.get_dataset(config.data, config.data.train_split, seed=0, process_index=0,
                            process_count=1)
  for i in range(2000):
    state, _ = step(state, ds.get_batch(i, 512))
  return config, setup, state.ema_params


def test_config_uses_the_data_std_as_sigma_data():
  config = edm_mlp.get_config("8gaussians")
  exact = math.sqrt(RADIUS ** 2 / 2 + S ** 2)  # per-coordinate std of the mixture: 2.031
  assert abs(config.process.sigma_data - exact) < 0.02
  assert edm_mlp.get_config().process.sigma_data == common.toy_data_std("checkerboard")
  with pytest.raises(ValueError, match="'moon'"):
    common.toy_data_std("moon")


def test_trained_denoiser_is_close_to_the_exact_one(trained):
  config, setup, params = trained
  rng = np.random.default_rng(1)
  data = np.asarray(data_lib.sample_toy("8gaussians", 123, 2000), np.float64)
  for sigma, bound in ((0.5, 0.3), (1.0, 0.25), (2.0, 0.15), (5.0, 0.1), (20.0, 0.05)):
    x = data + sigma * rng.normal(size=data.shape)
    xj = jnp.asarray(x, jnp.float32)
    sig = jnp.full((len(x),), sigma, jnp.float32)
    d = np.asarray(predictions.convert(setup.process, xj, sig, setup.model_fn(params, xj, sig),
                                       setup.prediction, "x0"))
    exact = exact_denoiser(x, sigma)
    err = np.sqrt(((d - exact) ** 2).sum(1).mean())
    scale = np.sqrt(((exact - x) ** 2).sum(1).mean())  # what the denoiser has to remove
    print(f"sigma {sigma}: rms |D - D*| {err:.4f}, relative to |D* - x| {err / scale:.3f}")
    assert err / scale < bound, (sigma, err, scale)  # measured 0.149, 0.104, 0.057, 0.018, 0.007


def test_heun_samples_cover_the_modes_as_the_data(trained):
  config, setup, params = trained
  sample = jax.jit(evaluate.make_sample_fn(setup, config.sampling), static_argnums=2)
  x, nfe = sample(params, jax.random.PRNGKey(1), 4000)
  x = np.asarray(x)
  assert int(nfe) == 35
  d2 = ((x[:, None] - MU[None]) ** 2).sum(-1)
  fractions = np.bincount(d2.argmin(1), minlength=8) / len(x)
  spread = d2.min(1).mean()  # exact: E|x - mu|^2 = 2 s^2 = 0.25
  print(f"mode fractions {np.round(fractions, 3)}, mean squared distance to the nearest mode "
        f"{spread:.3f} (exact {2 * S ** 2:.3f})")
  assert np.all(np.abs(fractions - 0.125) < 0.04), fractions  # measured 0.105-0.140
  assert 0.18 < spread < 0.4, spread                              # measured 0.294


def test_likelihood_is_close_to_the_exact_one(trained):
  config, setup, params = trained
  data = np.asarray(data_lib.sample_toy("8gaussians", 123, 2000))
  eval_config = config.eval.copy_and_resolve_references()
  eval_config.divergence = "exact"
  nll, _ = jax.jit(evaluate.make_nll_fn(setup, eval_config))(params, jax.random.PRNGKey(0),
                                                             {"image": data})
  nll = np.asarray(nll)
  exact = -exact_log_density(np.asarray(data, np.float64))
  gap = nll.mean() - exact.mean()
  print(f"NLL {nll.mean():.4f} nats, exact {exact.mean():.4f}, gap {gap:.4f}")
  assert np.isfinite(nll).all()
  # a model's NLL exceeds the entropy up to the Monte Carlo error of 2,000 points (measured +0.086)
  assert -0.05 < gap < 0.25, gap
