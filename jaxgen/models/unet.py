"""A small, fast U-Net for tiny images (8x8 digits, 28x28 MNIST, 32x32).

Per resolution level: ``num_res_blocks`` GroupNorm + swish residual blocks (with the noise
embedding added after the first convolution), optional attention at ``attn_resolutions``,
one skip connection per level, average-pool down / nearest-neighbour up (concatenated with the
skip, whose residual block then mixes them). The middle has one
residual block (plus attention when the lowest resolution is in ``attn_resolutions``).
With ``nf=32, ch_mult=(1, 2), num_res_blocks=1`` it has 251,521 parameters on one-channel images
(252,675 on three channels).
"""
from __future__ import annotations

import functools
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxgen.models import layers
from jaxgen.models.embeddings import ConditioningEmbedding

Array = jax.Array


class UNet(nn.Module):
  """Small U-Net.

  ``__call__(x, cond, y=None, train=False, augment_labels=None)``: ``x`` ``(batch, H, W, C)``,
  ``cond`` ``(batch,)``, ``y`` ``(batch,)`` int labels when ``num_classes > 0``.
  ``augment_labels`` ``(batch, augment_dim)`` when ``augment_dim > 0`` (None: zeros). Returns
  float32 ``(batch, H, W, C)``. ``H`` must be divisible by ``2 ** (len(ch_mult) - 1)``.
  """
  nf: int = 32
  ch_mult: Sequence[int] = (1, 2)
  num_res_blocks: int = 1
  attn_resolutions: Sequence[int] = ()
  dropout: float = 0.0
  embedding_type: str = "positional"
  fourier_scale: float = 16.0
  nonlinearity: str = "swish"
  num_classes: int = 0
  augment_dim: int = 0      # > 0: EDM's augmentation labels condition the embedding
  scale_by_sigma: bool = False
  dtype: Any = "float32"
  remat: bool = False
  remat_policy: str = "full"   # with remat: what a block keeps (layers.REMAT_POLICIES)

  @nn.compact
  def __call__(self, x: Array, cond: Array, y: Optional[Array] = None,
               train: bool = False, augment_labels: Optional[Array] = None) -> Array:
    dtype = jnp.dtype(self.dtype)
    layers.check_image_input(x, cond)
    act = layers.get_activation(self.nonlinearity)
    # Embedding width 2 nf (ConditioningEmbedding outputs 4 * its nf).
    temb = ConditioningEmbedding(max(self.nf // 2, 1), self.embedding_type, self.fourier_scale,
                                 self.nonlinearity, self.num_classes, dtype,
                                 self.augment_dim)(cond, y, augment_labels)
    block_cls = functools.partial(
        layers.maybe_remat(layers.ResnetBlockDDPM, self.remat, self.remat_policy),
        act=self.nonlinearity,
        dropout=self.dropout, skip_rescale=True, init_scale=0.0, dtype=dtype)
    attn = functools.partial(layers.AttnBlock, skip_rescale=True, init_scale=0.0, dtype=dtype)
    num_levels = len(self.ch_mult)

    h = layers.conv2d(self.nf, dtype=dtype)(x.astype(dtype))
    skips = []
    for level, mult in enumerate(self.ch_mult):
      for _ in range(self.num_res_blocks):
        h = block_cls(out_ch=self.nf * mult)(h, temb, train)
        if h.shape[1] in self.attn_resolutions:
          h = attn()(h)
      skips.append(h)
      if level != num_levels - 1:
        h = layers.naive_downsample_2d(h)

    h = block_cls()(h, temb, train)
    if h.shape[1] in self.attn_resolutions:
      h = attn()(h)

    for level in reversed(range(num_levels)):
      if level != num_levels - 1:
        h = layers.naive_upsample_2d(h)
      h = jnp.concatenate([h, skips.pop()], axis=-1)
      for i in range(self.num_res_blocks):
        # The last block of a level already outputs the next (finer) level's width, so the
        # expensive full-resolution convolutions see fewer channels.
        out_level = level - 1 if (i == self.num_res_blocks - 1 and level > 0) else level
        h = block_cls(out_ch=self.nf * self.ch_mult[out_level])(h, temb, train)
        if h.shape[1] in self.attn_resolutions:
          h = attn()(h)

    h = act(layers.group_norm(h, dtype))
    h = layers.conv2d(x.shape[-1], init_scale=0.0, dtype=dtype)(h).astype(jnp.float32)
    if self.scale_by_sigma:
      h = h / cond.astype(jnp.float32).reshape((-1,) + (1,) * (h.ndim - 1))
    return h
