"""A conditional MLP for 2-D toy data or flattened inputs."""
from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxgen.models import layers
from jaxgen.models.embeddings import noise_features

Array = jax.Array


class MLP(nn.Module):
  """MLP whose hidden layers each receive a projection of the noise embedding.

  ``__call__(x, cond, y=None, train=False)``: ``x`` ``(batch, ...)`` (flattened internally),
  ``cond`` ``(batch,)``, ``y`` ``(batch,)`` int labels when ``num_classes > 0``. Returns float32
  of ``x.shape``. Each hidden layer computes ``act(Dense(h) + Dense(temb))``.
  """
  hidden: Sequence[int] = (256, 256, 256)
  embedding_dim: int = 128
  embedding_type: str = "positional"
  fourier_scale: float = 16.0
  activation: str = "swish"
  num_classes: int = 0
  scale_by_sigma: bool = False
  dtype: Any = "float32"

  @nn.compact
  def __call__(self, x: Array, cond: Array, y: Optional[Array] = None,
               train: bool = False) -> Array:
    del train  # no dropout
    dtype = jnp.dtype(self.dtype)
    if cond.shape != x.shape[:1]:
      raise ValueError(f"cond must have shape (batch,) = {x.shape[:1]}, got {cond.shape}")
    act = layers.get_activation(self.activation)
    size = self.embedding_dim if self.embedding_type == "positional" else self.embedding_dim // 2
    temb = noise_features(cond, self.embedding_type, size, self.fourier_scale).astype(dtype)
    temb = layers.dense(self.embedding_dim, dtype=dtype)(temb)
    if self.num_classes > 0:
      if y is None:
        raise ValueError(f"y (class labels) is required when num_classes={self.num_classes}")
      temb = temb + nn.Embed(self.num_classes, self.embedding_dim, dtype=dtype,
                             param_dtype=jnp.float32, name="label_embedding")(y)
    temb = act(temb)

    h = x.reshape(x.shape[0], -1).astype(dtype)
    for width in self.hidden:
      h = act(layers.dense(width, dtype=dtype)(h) + layers.dense(width, dtype=dtype)(temb))
    h = layers.dense(math.prod(x.shape[1:]), dtype=dtype)(h)
    h = h.astype(jnp.float32).reshape(x.shape)
    if self.scale_by_sigma:
      h = h / cond.astype(jnp.float32).reshape((-1,) + (1,) * (h.ndim - 1))
    return h
