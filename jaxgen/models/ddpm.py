"""The DDPM U-Net (Ho et al. 2020), laid out as score_sde's ``models/ddpm.py``."""
from __future__ import annotations

import functools
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxgen.models import layers
from jaxgen.models.embeddings import ConditioningEmbedding

Array = jax.Array


class DDPM(nn.Module):
  """DDPM U-Net: DDPM residual blocks, attention at ``attn_resolutions``, no skip rescaling.

  ``__call__(x, cond, y=None, train=False, augment_labels=None)``: ``x`` ``(batch, H, W, C)``,
  ``cond`` ``(batch,)`` (``999 t`` for VP), ``y`` ``(batch,)`` int labels when ``num_classes >
  0``. ``augment_labels`` ``(batch, augment_dim)`` when ``augment_dim > 0`` (None: zeros). Returns
  float32 ``(batch, H, W, C)``, divided by ``cond`` when ``scale_by_sigma``. GroupNorm uses
  ``min(C // 4, 32)`` groups (:func:`layers.num_groups`, NCSN++'s rule) where score_sde's DDPM
  uses 32 at every width: identical when every width is at least 128 (``nf = 128``, the CIFAR-10
  model), fewer groups for a smaller ``nf``.
  """
  nf: int = 128
  ch_mult: Sequence[int] = (1, 2, 2, 2)
  num_res_blocks: int = 2
  attn_resolutions: Sequence[int] = (16,)
  dropout: float = 0.1
  resamp_with_conv: bool = True
  conditional: bool = True
  embedding_type: str = "positional"
  fourier_scale: float = 16.0
  conv_size: int = 3
  scale_by_sigma: bool = False
  nonlinearity: str = "swish"
  num_classes: int = 0
  augment_dim: int = 0      # > 0: EDM's augmentation labels condition the embedding
  centered: bool = True     # data in [-1, 1]; else [0, 1] and mapped with 2x - 1
  dtype: Any = "float32"
  remat: bool = False
  remat_policy: str = "full"   # with remat: what a block keeps (layers.REMAT_POLICIES)

  @nn.compact
  def __call__(self, x: Array, cond: Array, y: Optional[Array] = None,
               train: bool = False, augment_labels: Optional[Array] = None) -> Array:
    dtype = jnp.dtype(self.dtype)
    layers.check_image_input(x, cond)
    nf, num_resolutions, cs = self.nf, len(self.ch_mult), self.conv_size
    block_cls = functools.partial(
        layers.maybe_remat(layers.ResnetBlockDDPM, self.remat, self.remat_policy),
        act=self.nonlinearity,
        dropout=self.dropout, init_scale=0.0, skip_rescale=False, conv_size=cs, dtype=dtype)
    attn = functools.partial(layers.AttnBlock, init_scale=0.0, skip_rescale=False, dtype=dtype)

    temb = None
    if self.conditional:
      temb = ConditioningEmbedding(nf, self.embedding_type, self.fourier_scale,
                                   self.nonlinearity, self.num_classes, dtype,
                                   self.augment_dim)(cond, y, augment_labels)

    def block(h, out_ch=None):
      return block_cls(out_ch=out_ch)(h, temb, train)

    h = x.astype(jnp.float32)
    if not self.centered:
      h = 2.0 * h - 1.0
    h = h.astype(dtype)

    hs = [layers.conv2d(nf, cs, dtype=dtype)(h)]
    for level in range(num_resolutions):
      for _ in range(self.num_res_blocks):
        h = block(hs[-1], nf * self.ch_mult[level])
        if h.shape[1] in self.attn_resolutions:
          h = attn()(h)
        hs.append(h)
      if level != num_resolutions - 1:
        hs.append(layers.Downsample(with_conv=self.resamp_with_conv, conv_size=cs,
                                    dtype=dtype)(hs[-1]))

    h = hs[-1]
    h = block(h)
    h = attn()(h)
    h = block(h)

    for level in reversed(range(num_resolutions)):
      for _ in range(self.num_res_blocks + 1):
        h = block(jnp.concatenate([h, hs.pop()], axis=-1), nf * self.ch_mult[level])
      if h.shape[1] in self.attn_resolutions:
        h = attn()(h)
      if level != 0:
        h = layers.Upsample(with_conv=self.resamp_with_conv, conv_size=cs, dtype=dtype)(h)

    assert not hs, "every skip connection must be consumed"
    h = layers.get_activation(self.nonlinearity)(layers.group_norm(h, dtype))
    h = layers.conv2d(x.shape[-1], cs, init_scale=0.0, dtype=dtype)(h)
    h = h.astype(jnp.float32)
    if self.scale_by_sigma:
      h = h / cond.astype(jnp.float32).reshape((-1,) + (1,) * (h.ndim - 1))
    return h

