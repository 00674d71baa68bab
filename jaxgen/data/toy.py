"""Two-dimensional toy distributions (the FFJORD set), sampled with `jax.random`.

The shapes and scalings follow FFJORD's `lib/toy_data.py` (Grathwohl et al., 2019), so densities
and plots are comparable with that paper and the CNF / flow-matching work that reuses it. Where
FFJORD fills classes or rings with fixed counts (or fixed angles), we draw the class, ring and
angle i.i.d., which gives the same distribution and makes every sample independent.

Every sampler is a pure function of `(key, n)`; `sample_toy` jits it with `name` and `n` static.
"""
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

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


@functools.partial(jax.jit, static_argnums=(0, 2))
def _sample(name, key, n):
  return _SAMPLERS[name](key, n).astype(jnp.float32)


def sample_toy(name, key_or_seed, n):
  """Draws `n` i.i.d. points of the toy distribution `name`.

  Args:
    name: one of `TOY_DATASETS`.
    key_or_seed: a `jax.random` key, or an int seed.
    n: number of samples (a Python int).

  Returns:
    float32 array of shape (n, 2).
  """
  if name not in _SAMPLERS:
    raise ValueError(f"unknown toy data set {name!r}; choose one of {', '.join(TOY_DATASETS)}")
  if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n <= 0:
    raise ValueError(f"number of toy samples must be a positive int, got {n!r}")
  if isinstance(key_or_seed, (int, np.integer)):
    key = jax.random.PRNGKey(int(key_or_seed))
  else:
    key = key_or_seed
  return _sample(name, key, int(n))
