"""Embeddings of the noise conditioning value (and of class labels).

The caller computes the conditioning value ``cond`` of shape ``(batch,)``: e.g. ``999 * t`` for
VP/sub-VP (sinusoidal ``positional`` embedding) or ``sigma(t)`` for VE (Gaussian ``fourier``
features of ``log sigma``, as in score_sde). ``fourier_linear`` takes Fourier features of
``cond`` itself: for ``cond = t`` in ``[0, 1]``, where a log would diverge at 0, and for EDM's
``c_noise = log(sigma) / 4`` (negative below ``sigma = 1``), which EDM's NCSN++ embeds this way
(``FourierEmbedding``, scale 16; sin/cos in the other order, the same features).
"""
from __future__ import annotations

import math
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxgen.models import layers

Array = jax.Array
EMBEDDING_TYPES = ("positional", "fourier", "fourier_linear")


def sinusoidal_embedding(timesteps: Array, dim: int, max_positions: int = 10_000) -> Array:
  """Transformer/DDPM sinusoidal embedding: ``(batch,) -> (batch, dim)`` float32."""
  if timesteps.ndim != 1:
    raise ValueError(f"timesteps must have shape (batch,), got {timesteps.shape}")
  half = dim // 2
  freqs = jnp.exp(-math.log(max_positions) / (half - 1) * jnp.arange(half, dtype=jnp.float32))
  args = timesteps.astype(jnp.float32)[:, None] * freqs[None, :]
  emb = jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)
  if dim % 2 == 1:
    emb = jnp.pad(emb, [(0, 0), (0, 1)])
  return emb


class GaussianFourierProjection(nn.Module):
  """Random Fourier features ``(batch,) -> (batch, 2 * embedding_size)``.

  The frequencies ``W ~ N(0, scale^2)`` are a (frozen: gradient stopped) float32 parameter.
  """
  embedding_size: int = 256
  scale: float = 1.0

  @nn.compact
  def __call__(self, x: Array) -> Array:
    w = self.param("W", nn.initializers.normal(stddev=self.scale), (self.embedding_size,),
                   jnp.float32)
    w = jax.lax.stop_gradient(w)
    proj = x.astype(jnp.float32)[:, None] * w[None, :] * (2 * jnp.pi)
    return jnp.concatenate([jnp.sin(proj), jnp.cos(proj)], axis=-1)


def noise_features(cond: Array, embedding_type: str, size: int, fourier_scale: float) -> Array:
  """Parameter-free or Fourier features of ``cond`` ``(batch,)``; call inside a compact module.

  Returns ``(batch, size)`` for ``positional`` and ``(batch, 2 * size)`` for the Fourier types.
  """
  if embedding_type == "positional":
    return sinusoidal_embedding(cond, size)
  if embedding_type == "fourier":
    return GaussianFourierProjection(size, fourier_scale)(jnp.log(cond))
  if embedding_type == "fourier_linear":
    return GaussianFourierProjection(size, fourier_scale)(cond)
  raise ValueError(f"unknown embedding_type {embedding_type!r}; expected one of {EMBEDDING_TYPES}")


class ConditioningEmbedding(nn.Module):
  """Noise (and optional class) embedding of score_sde: features -> Dense -> act -> Dense.

  ``cond``: ``(batch,)`` float; ``y``: ``(batch,)`` int or None -> ``(batch, 4 * nf)``.
  With ``num_classes > 0`` a learned ``nn.Embed`` of ``y`` is added to the output. With
  ``augment_dim > 0`` (EDM's augmentation conditioning, :mod:`jaxgen.augment`) a bias-free linear
  map of ``augment_labels`` ``(batch, augment_dim)`` is added to the noise features, as EDM's
  ``map_augment``; None (sampling) means labels of zero: the unaugmented data.
  """
  nf: int = 128
  embedding_type: str = "positional"
  fourier_scale: float = 16.0
  act: str = "swish"
  num_classes: int = 0
  dtype: Any = jnp.float32
  augment_dim: int = 0

  @nn.compact
  def __call__(self, cond: Array, y: Optional[Array] = None,
               augment_labels: Optional[Array] = None) -> Array:
    dtype = jnp.dtype(self.dtype)
    if cond.ndim != 1:
      raise ValueError(f"cond must have shape (batch,), got {cond.shape}")
    temb = noise_features(cond, self.embedding_type, self.nf, self.fourier_scale)
    if self.augment_dim > 0:
      if augment_labels is None:
        augment_labels = jnp.zeros((cond.shape[0], self.augment_dim), jnp.float32)
      if augment_labels.shape != (cond.shape[0], self.augment_dim):
        raise ValueError(f"augment_labels must have shape (batch, augment_dim) = "
                         f"{(cond.shape[0], self.augment_dim)}, got {augment_labels.shape}")
      temb = temb + nn.Dense(temb.shape[-1], use_bias=False, kernel_init=layers.default_init(),
                             dtype=dtype, param_dtype=jnp.float32,
                             name="augment_embedding")(augment_labels.astype(dtype))
    elif augment_labels is not None:
      raise ValueError("augment_labels given to a network built with augment_dim=0")
    temb = layers.dense(self.nf * 4, dtype=dtype)(temb.astype(dtype))
    temb = layers.dense(self.nf * 4, dtype=dtype)(layers.get_activation(self.act)(temb))
    if self.num_classes > 0:
      if y is None:
        raise ValueError(f"y (class labels) is required when num_classes={self.num_classes}")
      label = nn.Embed(self.num_classes, self.nf * 4, dtype=dtype, param_dtype=jnp.float32,
                       name="label_embedding")(y)
      temb = temb + label
    return temb
