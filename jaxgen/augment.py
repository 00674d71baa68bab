"""EDM's non-leaky geometric augmentation (Karras et al. 2022, Appendix F.2; the pipeline of
StyleGAN2-ADA, Karras et al. 2020): each training image is flipped, scaled, rotated, stretched
and translated at random, and the network is told how through a vector of augmentation labels
(``model.augment_dim``), so that it learns the augmented distributions as separate conditions.
Sampling passes labels of zero: the distribution of images that no augmentation touched.

Pure functions of arrays and PRNG keys, jit-able, in NHWC:

* :func:`augment` ``(key, images, p, ...) -> (images, labels)``: EDM's CIFAR-10 setting by
  default (``--augment=0.12``: an x-flip always drawn, the five other transforms each applied with
  probability ``p``), ``labels`` ``(batch, AUGMENT_DIM)`` in :data:`LABELS` order;
* :func:`affine_resample` ``(images, g_inv) -> images``: the geometric part alone, the output at
  pixel ``q`` (centred coordinates, ``x`` right, ``y`` down) the input at ``g_inv @ q``, with the
  image extended by reflection and an alias-free resampling: upsample 2x with an orthogonal
  wavelet low-pass filter (Daubechies' least asymmetric wavelet, 6 vanishing moments), sample
  bilinearly, downsample 2x with the same filter. The filter is orthogonal to its even shifts, so
  ``g_inv = I`` returns the input exactly (up to float32 rounding): untouched images stay data.

Every draw is a row of the global batch's draw (:func:`jaxgen.parallel.global_batch_draw`), so a
per-device train step in ``shard_map`` augments exactly as a ``jit`` of the global batch does.
Not reproduced: EDM's integer rotation / translation and colour transforms, which its CIFAR-10
setting leaves off.
"""
from __future__ import annotations

import functools
import math
from typing import Tuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxgen import parallel

Array = jax.Array

# Orthonormal low-pass filter of Daubechies' least asymmetric wavelet with 6 vanishing moments
# ("symlet 6"): sum h = sqrt(2), sum_n h[n] h[n + 2k] = delta_k (tests/test_augment.py).
SYM6 = (0.015404109327027373, 0.0034907120842174702, -0.11799011114819057, -0.048311742585633,
        0.4910559419267466, 0.787641141030194, 0.3379294217276218, -0.07263752278646252,
        -0.021060292512300564, 0.04472490177066578, 0.0017677118642428036,
        -0.007800708325034148)

# The augmentation labels, in order: what the network sees of each image's transform (zero for a
# transform not applied).
LABELS = ("xflip", "yflip", "scale", "rotate_cos_minus_1", "rotate_sin", "aniso_cos", "aniso_sin",
          "translate_x", "translate_y")
AUGMENT_DIM = len(LABELS)


def _uniform(key, n):
  return parallel.global_batch_draw(jax.random.uniform, key, (n,))


def _normal(key, n):
  return parallel.global_batch_draw(jax.random.normal, key, (n,))


def _matrix(rows) -> Array:
  """``(batch, 3, 3)`` from nested rows of scalars or ``(batch,)`` arrays."""
  n = max(jnp.shape(v)[0] for row in rows for v in row if jnp.ndim(v))
  return jnp.stack([jnp.stack([jnp.broadcast_to(jnp.asarray(v, jnp.float32), (n,)) for v in row],
                              -1) for row in rows], -2)


def _scale(sx, sy):
  return _matrix([[sx, 0.0, 0.0], [0.0, sy, 0.0], [0.0, 0.0, 1.0]])


def _rotate(theta):
  c, s = jnp.cos(theta), jnp.sin(theta)
  return _matrix([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _translate(tx, ty):
  return _matrix([[1.0, 0.0, tx], [0.0, 1.0, ty], [0.0, 0.0, 1.0]])


def _check_probability_args(p, options):
  """``p`` in [0, 1]; every entry of ``options`` (multipliers, spreads) a finite number >= 0."""
  p = float(p)
  if not (math.isfinite(p) and 0.0 <= p <= 1.0):
    raise ValueError(f"augmentation probability p must be in [0, 1], got {p!r}")
  for name, value in options.items():
    if not (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value) and value >= 0):
      raise ValueError(f"augmentation option {name} must be a finite number >= 0, got "
                       f"{value!r}")
  return p


def augment(key: Array, images: Array, p: float, *, xflip: float = 1e8, yflip: float = 1.0,
            scale: float = 1.0, rotate_frac: float = 1.0, aniso: float = 1.0,
            translate_frac: float = 1.0, scale_std: float = 0.2, rotate_frac_max: float = 1.0,
            aniso_std: float = 0.2, aniso_rotate_prob: float = 0.5,
            translate_frac_std: float = 0.125) -> Tuple[Array, Array]:
  """EDM's augmentation of a batch: ``(images, labels)``.

  Args:
    key: PRNG key.
    images: ``(batch, H, W, C)``, ``H, W >= 2``.
    p: overall probability in [0, 1] (EDM's ``--augment``; 0.12 for CIFAR-10).
    xflip ... translate_frac: probability multipliers of each transform (applied with probability
      ``min(multiplier * p, 1)``); EDM's defaults: the x-flip always drawn (a fair coin), the
      others at ``p``. 0 turns one off (its labels stay 0).
    scale_std: log2 standard deviation of isotropic scaling.
    rotate_frac_max: range of rotation, 1 = the full circle.
    aniso_std: log2 standard deviation of anisotropic scaling, along an axis rotated by a uniform
      angle with probability ``aniso_rotate_prob``.
    translate_frac_std: standard deviation of translation, relative to the image size.
  Returns:
    images ``(batch, H, W, C)`` float32 and labels ``(batch, AUGMENT_DIM)`` float32, in
    :data:`LABELS` order.
  """
  p = _check_probability_args(
      p, dict(xflip=xflip, yflip=yflip, scale=scale, rotate_frac=rotate_frac, aniso=aniso,
              translate_frac=translate_frac, aniso_rotate_prob=aniso_rotate_prob,
              scale_std=scale_std, rotate_frac_max=rotate_frac_max, aniso_std=aniso_std,
              translate_frac_std=translate_frac_std))
  if images.ndim != 4 or images.shape[1] < 2 or images.shape[2] < 2:
    raise ValueError(f"augment needs images of shape (batch, H, W, C) with H, W >= 2, got "
                     f"{images.shape}")
  n, height, width, _ = images.shape
  images = images.astype(jnp.float32)
  keys = iter(jax.random.split(key, 16))
  zeros = jnp.zeros((n,), jnp.float32)

  def applied(multiplier):
    return _uniform(next(keys), n) < multiplier * p

  def coin():
    return _uniform(next(keys), n) < 0.5

  labels = {}
  # Pixel blitting: exact flips.
  flip_x = coin() & applied(xflip) if xflip > 0 else jnp.zeros((n,), bool)
  images = jnp.where(flip_x[:, None, None, None], images[:, :, ::-1], images)
  flip_y = coin() & applied(yflip) if yflip > 0 else jnp.zeros((n,), bool)
  images = jnp.where(flip_y[:, None, None, None], images[:, ::-1], images)
  labels["xflip"], labels["yflip"] = flip_x.astype(jnp.float32), flip_y.astype(jnp.float32)

  # Geometric transforms: g_inv maps an output pixel to where it is read in the input.
  g_inv = jnp.broadcast_to(jnp.eye(3, dtype=jnp.float32), (n, 3, 3))
  geometric = scale > 0 or rotate_frac > 0 or aniso > 0 or translate_frac > 0
  w = jnp.where(applied(scale), _normal(next(keys), n), 0.0) if scale > 0 else zeros
  s = jnp.exp2(w * scale_std)
  g_inv = g_inv @ _scale(1.0 / s, 1.0 / s)
  labels["scale"] = w
  if rotate_frac > 0:
    theta = (_uniform(next(keys), n) * 2 - 1) * (math.pi * rotate_frac_max)
    theta = jnp.where(applied(rotate_frac), theta, 0.0)
  else:
    theta = zeros
  g_inv = g_inv @ _rotate(theta)
  labels["rotate_cos_minus_1"], labels["rotate_sin"] = jnp.cos(theta) - 1.0, jnp.sin(theta)
  if aniso > 0:
    w = jnp.where(applied(aniso), _normal(next(keys), n), 0.0)
    r = (_uniform(next(keys), n) * 2 - 1) * math.pi
    r = jnp.where(_uniform(next(keys), n) < aniso_rotate_prob, r, 0.0)
  else:
    w, r = zeros, zeros
  s = jnp.exp2(w * aniso_std)
  g_inv = g_inv @ _rotate(-r) @ _scale(1.0 / s, s) @ _rotate(r)
  labels["aniso_cos"], labels["aniso_sin"] = w * jnp.cos(r), w * jnp.sin(r)
  if translate_frac > 0:
    on = applied(translate_frac)
    tx = jnp.where(on, _normal(next(keys), n), 0.0)
    ty = jnp.where(on, _normal(next(keys), n), 0.0)
  else:
    tx, ty = zeros, zeros
  g_inv = g_inv @ _translate(-tx * width * translate_frac_std, -ty * height * translate_frac_std)
  labels["translate_x"], labels["translate_y"] = tx, ty
  if geometric:
    images = affine_resample(images, g_inv)
  return images, jnp.stack([labels[name] for name in LABELS], axis=-1)


@functools.lru_cache(maxsize=None)
def _resampling_matrices(size: int):
  """For one image axis of ``size`` pixels: ``up`` ``(K, size)``, the reflect-padded (by
  ``size - 1``) image upsampled 2x by the filter, and ``down`` ``(size, 2 size + 10)``, the
  filter's 2x downsampling of the resampled grid; ``pad`` and the filter's centre ``c``."""
  h = np.asarray(SYM6, np.float64)
  taps = len(h)
  pad = size - 1
  padded = size + 2 * pad
  # Reflection without repeating the edge: padded index j reads pixel reflect(j - pad).
  period = 2 * (size - 1)
  reflect = np.zeros((padded, size))
  for j in range(padded):
    m = (j - pad) % period
    reflect[j, (size - 1) - abs((size - 1) - m)] = 1.0
  k_up = 2 * padded + taps - 2
  up = np.zeros((k_up, padded))
  for i in range(padded):
    up[2 * i:2 * i + taps, i] = h
  k_down = 2 * size + taps - 2
  down = np.zeros((size, k_down))
  for i in range(size):
    down[i, 2 * i:2 * i + taps] = h
  centre = float(np.sum(np.arange(taps) * h) / np.sum(h))
  return (np.asarray(up @ reflect, np.float32), np.asarray(down, np.float32), pad, centre)


def affine_resample(images: Array, g_inv: Array) -> Array:
  """``images`` ``(batch, H, W, C)`` resampled: output pixel ``q`` reads input point ``g_inv @ q``.

  ``g_inv``: ``(batch, 3, 3)`` (or ``(3, 3)``), homogeneous, in pixel units about the image
  centre (``x`` along W, ``y`` along H). The image is extended by reflection (once; beyond, zero)
  and resampled without aliasing through a 2x upsampling with an orthogonal wavelet filter
  (:data:`SYM6`), so ``g_inv = I`` returns the images exactly. Returns float32.
  """
  images = images.astype(jnp.float32)
  n, height, width, _ = images.shape
  g_inv = jnp.broadcast_to(jnp.asarray(g_inv, jnp.float32), (n, 3, 3))
  up_h, down_h, pad_h, centre = _resampling_matrices(height)
  up_w, down_w, pad_w, _ = _resampling_matrices(width)
  hi = jax.lax.Precision.HIGHEST
  upsampled = jnp.einsum("kh,nhwc,lw->nklc", up_h, images, up_w, precision=hi)
  # The resampled 2x grid: index k is the input coordinate u = (k - centre) / 2 (pixel centres
  # at integers), read in the upsampled padded image at k' = 2 (u + pad) + centre.
  ky = (jnp.arange(down_h.shape[1], dtype=jnp.float32) - centre) / 2 - (height - 1) / 2
  kx = (jnp.arange(down_w.shape[1], dtype=jnp.float32) - centre) / 2 - (width - 1) / 2
  qy, qx = jnp.meshgrid(ky, kx, indexing="ij")
  q = jnp.stack([qx, qy, jnp.ones_like(qx)], axis=-1)                    # (Ky, Kx, 3)
  src = jnp.einsum("nij,yxj->nyxi", g_inv, q, precision=hi)               # (n, Ky, Kx, 3)
  sx = 2 * (src[..., 0] + (width - 1) / 2 + pad_w) + centre
  sy = 2 * (src[..., 1] + (height - 1) / 2 + pad_h) + centre
  resampled = jax.vmap(_bilinear)(upsampled, sy, sx)
  return jnp.einsum("ik,nklc,jl->nijc", down_h, resampled, down_w, precision=hi)


def _bilinear(image: Array, y: Array, x: Array) -> Array:
  """``image`` ``(K, L, C)`` at fractional indices ``y``, ``x`` (any shape); zero outside."""
  k, l = image.shape[0], image.shape[1]
  y0, x0 = jnp.floor(y), jnp.floor(x)
  fy, fx = y - y0, x - x0
  y0, x0 = y0.astype(jnp.int32), x0.astype(jnp.int32)
  out = 0.0
  for dy, wy in ((0, 1.0 - fy), (1, fy)):
    for dx, wx in ((0, 1.0 - fx), (1, fx)):
      yy, xx = y0 + dy, x0 + dx
      inside = (yy >= 0) & (yy < k) & (xx >= 0) & (xx < l)
      value = image[jnp.clip(yy, 0, k - 1), jnp.clip(xx, 0, l - 1)]
      out = out + jnp.where(inside, wy * wx, 0.0)[..., None] * value
  return out
