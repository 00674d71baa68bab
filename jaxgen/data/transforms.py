"""Device-side transforms of a batch: random flips, dequantization, scaling. Pure and jit-able.

The input pipeline hands out integer levels (uint8 images with values in `0 .. num_levels - 1`);
these functions turn them into model inputs and back. `data_config` fields read here:
`dataset`, `num_levels`, `centered`, `random_flip`, `uniform_dequantization`. Close over the
config when jitting, e.g. `jax.jit(lambda k, x: preprocess(k, x, config.data, train=True))`.

Scaling convention (score_sde): with uniform dequantization `x = (k + u) / num_levels` with
`u ~ U[0, 1)`, so `x` lies in `[0, 1)` and the bin of `k` is `[k, k + 1) / num_levels` (the bits/dim
convention); without it `x = k / (num_levels - 1)` in `[0, 1]`. Centered data is `2 x - 1`.
"""
import jax
import jax.numpy as jnp

from jaxgen import parallel
from jaxgen.likelihood import check_num_levels, dequantized_in_bins


def _is_toy(data_config):
  return str(data_config.dataset).startswith("toy_")


def uniform_dequantize(key, levels, num_levels):
  """Uniform dequantization `(k + u) / num_levels`, `u ~ U[0, 1)`.

  Every value stays inside the bin of its level, `k / K <= x < (k + 1) / K`, so `x < 1`, also
  where float32 rounding of `k + u` or of the division would cross a bin edge
  (`likelihood.dequantized_in_bins`).

  Args:
    key: PRNG key.
    levels: integer levels `k` in `0 .. num_levels - 1`, any shape and (integer or float) dtype.
    num_levels: number of discrete levels per value (256 for 8-bit images).

  Returns:
    float32 array of the shape of `levels`, values in `[0, 1)`.
  """
  num_levels = check_num_levels(num_levels)
  levels = jnp.asarray(levels).astype(jnp.float32)
  # (inside a per-device train step: this device's rows of the global batch's draw)
  noise = parallel.global_batch_draw(
      lambda k, s: jax.random.uniform(k, s, dtype=jnp.float32), key, levels.shape)
  return dequantized_in_bins(levels, noise, num_levels)


def random_flip_left_right(key, images):
  """Flips each image of (b, H, W, C) `images` horizontally with probability 1/2."""
  if images.ndim != 4:
    raise ValueError(f"random flips need images of shape (b, H, W, C), got shape {images.shape}")
  flip = parallel.global_batch_draw(lambda k, s: jax.random.bernoulli(k, 0.5, s), key,
                                    (images.shape[0], 1, 1, 1))
  return jnp.where(flip, images[:, :, ::-1, :], images)


def preprocess(key, images, data_config, train):
  """Integer-level images to model inputs.

  Args:
    key: PRNG key; may be None when nothing random is done (no flip, no dequantization).
    images: (b, H, W, C) levels in `0 .. num_levels - 1` (uint8 or float), or (b, d) toy points.
    data_config: `config.data`.
    train: random flips only in training (when `data_config.random_flip`); dequantization
      whenever `data_config.uniform_dequantization` (training and bits/dim evaluation alike).

  Returns:
    float32 array of the shape of `images`: in [-1, 1] when `data_config.centered`, else [0, 1].
    Toy points are returned as float32, unchanged.
  """
  if _is_toy(data_config):
    return jnp.asarray(images, jnp.float32)
  num_levels = int(data_config.num_levels)
  if num_levels < 2:
    raise ValueError(f"data_config.num_levels must be at least 2, got {num_levels}")
  flip = bool(train and data_config.random_flip)
  dequantize = bool(data_config.uniform_dequantization)
  if key is None and (flip or dequantize):
    raise ValueError("preprocess needs a PRNG key for random flips or dequantization, got None")
  x = jnp.asarray(images)
  if flip or dequantize:
    flip_key, dequantize_key = jax.random.split(key)
  if flip:
    x = random_flip_left_right(flip_key, x)
  if dequantize:
    x = uniform_dequantize(dequantize_key, x, num_levels)
  else:
    x = x.astype(jnp.float32) / (num_levels - 1)
  if data_config.centered:
    x = 2.0 * x - 1.0
  return x


def postprocess(x, data_config):
  """Model-space images back to displayable uint8 images in 0..255 (for plots and grids).

  Inverts the scaling of `preprocess`: undoes centering, then maps [0, 1] to 0..255 with rounding
  and clipping (for 256 levels without dequantization this recovers the original uint8 exactly).

  Args:
    x: (b, H, W, C) float images in [-1, 1] (centered) or [0, 1]; or (b, d) toy points.
    data_config: `config.data`.

  Returns:
    uint8 array of the shape of `x`; toy points are returned as float32, unchanged.
  """
  if _is_toy(data_config):
    return jnp.asarray(x, jnp.float32)
  x = jnp.asarray(x, jnp.float32)
  if data_config.centered:
    x = (x + 1.0) / 2.0
  return jnp.clip(jnp.round(x * 255.0), 0.0, 255.0).astype(jnp.uint8)
