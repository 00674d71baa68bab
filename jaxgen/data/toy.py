"""Two-dimensional toy distributions (the FFJORD set), sampled with `jax.random`.

The shapes and scalings follow FFJORD's `lib/toy_data.py` (Grathwohl et al., 2019), so densities
and plots are comparable with that paper and the CNF / flow-matching work that reuses it. Where
FFJORD fills classes or rings with fixed counts (or fixed angles), we draw the class, ring and
angle i.i.d., which gives the same distribution and makes every sample independent.

Every sampler is a pure function of `(key, n)`; `sample_toy` jits it with `name` and `n` static.
"""
import functools
import math
import re

import jax
import jax.numpy as jnp
import numpy as np

from jaxgen._checks import check_int

TOY_DATASETS = (
    "checkerboard",
    "8gaussians",
    "moons",
    "2spirals",
    "pinwheel",
    "rings",
    "circles",
    "swissroll",
)


def _unit_circle(theta):
  return jnp.stack([jnp.cos(theta), jnp.sin(theta)], axis=-1)


def checkerboard(key, n):
  """Uniform on the dark squares of a 4x4 checkerboard over [-4, 4]^2; (n, 2)."""
  key_x, key_y, key_row = jax.random.split(key, 3)
  x1 = jax.random.uniform(key_x, (n,)) * 4.0 - 2.0
  row = jax.random.bernoulli(key_row, 0.5, (n,)).astype(jnp.float32)
  x2 = jax.random.uniform(key_y, (n,)) - 2.0 * row + jnp.mod(jnp.floor(x1), 2.0)
  return 2.0 * jnp.stack([x1, x2], axis=-1)


def eight_gaussians(key, n):
  """Eight Gaussians (std 0.5) on a circle of radius 4, all divided by 1.414; (n, 2)."""
  key_center, key_noise = jax.random.split(key)
  theta = jax.random.randint(key_center, (n,), 0, 8) * (math.pi / 4.0)
  points = 4.0 * _unit_circle(theta) + 0.5 * jax.random.normal(key_noise, (n, 2))
  return points / 1.414


def moons(key, n):
  """Two interleaved half circles (scikit-learn's make_moons, noise 0.1), * 2 - (1, 0.2); (n, 2)."""
  key_t, key_moon, key_noise = jax.random.split(key, 3)
  t = jax.random.uniform(key_t, (n,), maxval=math.pi)
  lower = jax.random.bernoulli(key_moon, 0.5, (n,))[:, None]
  upper_moon = jnp.stack([jnp.cos(t), jnp.sin(t)], axis=-1)
  lower_moon = jnp.stack([1.0 - jnp.cos(t), 0.5 - jnp.sin(t)], axis=-1)
  points = jnp.where(lower, lower_moon, upper_moon)
  points = points + 0.1 * jax.random.normal(key_noise, (n, 2))
  return 2.0 * points + jnp.array([-1.0, -0.2])


def two_spirals(key, n):
  """Two opposite spiral arms of 1.5 turns, / 3, plus Gaussian noise 0.1; (n, 2)."""
  key_r, key_jitter, key_arm, key_noise = jax.random.split(key, 4)
  r = jnp.sqrt(jax.random.uniform(key_r, (n,))) * (540.0 * 2.0 * math.pi / 360.0)
  jitter = 0.5 * jax.random.uniform(key_jitter, (n, 2))
  arm = jnp.stack([-jnp.cos(r) * r, jnp.sin(r) * r], axis=-1) + jitter
  sign = jnp.where(jax.random.bernoulli(key_arm, 0.5, (n, 1)), 1.0, -1.0)
  return sign * arm / 3.0 + 0.1 * jax.random.normal(key_noise, (n, 2))


def pinwheel(key, n):
  """Five curved blades (radial std 0.3, tangential std 0.1, rate 0.25), * 2; (n, 2)."""
  key_class, key_noise = jax.random.split(key)
  blade = jax.random.randint(key_class, (n,), 0, 5)
  features = jax.random.normal(key_noise, (n, 2)) * jnp.array([0.3, 0.1])
  features = features.at[:, 0].add(1.0)
  angles = blade * (2.0 * math.pi / 5.0) + 0.25 * jnp.exp(features[:, 0])
  cos, sin = jnp.cos(angles), jnp.sin(angles)
  # Row vector times the rotation [[cos, -sin], [sin, cos]].
  x = features[:, 0] * cos + features[:, 1] * sin
  y = -features[:, 0] * sin + features[:, 1] * cos
  return 2.0 * jnp.stack([x, y], axis=-1)


def rings(key, n):
  """Four concentric rings of radii 3, 2.25, 1.5, 0.75, plus Gaussian noise 0.08; (n, 2)."""
  key_ring, key_theta, key_noise = jax.random.split(key, 3)
  radius = 3.0 * (1.0 - 0.25 * jax.random.randint(key_ring, (n,), 0, 4))
  theta = jax.random.uniform(key_theta, (n,), maxval=2.0 * math.pi)
  points = radius[:, None] * _unit_circle(theta)
  return points + 0.08 * jax.random.normal(key_noise, (n, 2))


def circles(key, n):
  """Two circles (scikit-learn's make_circles, factor 0.5, noise 0.08), * 3; (n, 2)."""
  key_circle, key_theta, key_noise = jax.random.split(key, 3)
  radius = jnp.where(jax.random.bernoulli(key_circle, 0.5, (n,)), 0.5, 1.0)
  theta = jax.random.uniform(key_theta, (n,), maxval=2.0 * math.pi)
  points = radius[:, None] * _unit_circle(theta)
  points = points + 0.08 * jax.random.normal(key_noise, (n, 2))
  return 3.0 * points


def swissroll(key, n):
  """Swiss roll (scikit-learn's make_swiss_roll, noise 1.0) seen from above, / 5; (n, 2)."""
  key_t, key_noise = jax.random.split(key)
  t = 1.5 * math.pi * (1.0 + 2.0 * jax.random.uniform(key_t, (n,)))
  points = jnp.stack([t * jnp.cos(t), t * jnp.sin(t)], axis=-1)
  points = points + jax.random.normal(key_noise, (n, 2))
  return points / 5.0


_SAMPLERS = {
    "checkerboard": checkerboard,
    "8gaussians": eight_gaussians,
    "moons": moons,
    "2spirals": two_spirals,
    "pinwheel": pinwheel,
    "rings": rings,
    "circles": circles,
    "swissroll": swissroll,
}


GMM_COMPONENTS = 8


def gmm_parameters(dim):
  """Fixed parameters of the ``gmm<dim>`` mixture (seeded by ``dim``): weights ``(K,)``, means
  ``(K, dim)`` and Cholesky factors ``(K, dim, dim)`` of full, non-diagonal covariances.

  Means ``~ N(0, 4 I)`` (standard deviation 2 in every dimension, whatever ``dim``); each
  covariance is a random rotation of diagonal scales in ``[0.05, 0.5]^2``.
  """
  check_int(dim, "gmm dimension")
  rng = np.random.RandomState(1000 + int(dim))
  weights = rng.dirichlet(np.full(GMM_COMPONENTS, 5.0))
  means = rng.normal(size=(GMM_COMPONENTS, dim)) * 2.0
  chols = []
  for _ in range(GMM_COMPONENTS):
    rotation, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
    scales = rng.uniform(0.05, 0.5, size=dim)
    cov = (rotation * scales ** 2) @ rotation.T
    chols.append(np.linalg.cholesky(cov + 1e-9 * np.eye(dim)))
  return weights, means, np.stack(chols)


def gmm(key, n, dim):
  """Synthetic tabular-sized data: the fixed 8-component Gaussian mixture of `gmm_parameters`;
  (n, dim)."""
  weights, means, chols = gmm_parameters(dim)
  key_c, key_e = jax.random.split(key)
  comp = jax.random.choice(key_c, GMM_COMPONENTS, (n,), p=jnp.asarray(weights))
  eps = jax.random.normal(key_e, (n, dim))
  return jnp.asarray(means)[comp] + jnp.einsum("nij,nj->ni", jnp.asarray(chols)[comp], eps)


def gmm_log_prob(x, dim):
  """Exact log-density of the ``gmm<dim>`` mixture at ``x`` (n, dim); (n,) in nats."""
  weights, means, chols = gmm_parameters(dim)
  x = np.asarray(x, np.float64)
  out = []
  for w, m, c in zip(weights, means, chols):
    z = np.linalg.solve(c, (x - m).T).T
    logdet = np.sum(np.log(np.diag(c)))
    out.append(np.log(w) - 0.5 * np.sum(z ** 2, 1) - logdet - 0.5 * dim * np.log(2 * np.pi))
  out = np.stack(out)
  top = out.max(0)
  return top + np.log(np.exp(out - top).sum(0))


def parse_gmm(name):
  """``'gmm<D>'`` -> D, else None."""
  match = re.fullmatch(r"gmm([1-9][0-9]*)", str(name))
  return int(match.group(1)) if match else None


def is_toy_name(name):
  """True for the 2-D sets of `TOY_DATASETS` and the synthetic ``gmm<D>`` vectors."""
  return name in _SAMPLERS or parse_gmm(name) is not None


def toy_dim(name):
  """Dimension of one example of toy set ``name`` (2, or D for ``gmm<D>``)."""
  dim = parse_gmm(name)
  return 2 if dim is None else dim


@functools.partial(jax.jit, static_argnums=(0, 2))
def _sample(name, key, n):
  dim = parse_gmm(name)
  if dim is not None:
    return gmm(key, n, dim).astype(jnp.float32)
  return _SAMPLERS[name](key, n).astype(jnp.float32)


def sample_toy(name, key_or_seed, n):
  """Draws `n` i.i.d. points of the toy distribution `name`.

  Args:
    name: one of `TOY_DATASETS`, or ``gmm<D>`` (synthetic D-dimensional Gaussian mixture).
    key_or_seed: a `jax.random` key, or an int seed.
    n: number of samples (a Python int).

  Returns:
    float32 array of shape (n, 2), or (n, D) for ``gmm<D>``.
  """
  if not is_toy_name(name):
    raise ValueError(f"unknown toy data set {name!r}; choose one of {', '.join(TOY_DATASETS)} "
                     "or gmm<D>")
  n = check_int(n, "number of toy samples")
  if isinstance(key_or_seed, (int, np.integer)):
    key = jax.random.PRNGKey(int(key_or_seed))
  else:
    key = key_or_seed
  return _sample(name, key, int(n))
