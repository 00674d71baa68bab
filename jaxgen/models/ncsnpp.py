"""NCSN++ and DDPM++ (Song et al. 2021, score_sde's ``models/ncsnpp.py``), one class.

DDPM++ is ``NCSNpp`` with ``fir=False``, ``progressive_input='none'`` and positional embedding;
NCSN++ adds FIR resampling, the input-pyramid ``residual`` skip and Fourier features of
``log sigma``. The layer layout matches score_sde parameter for parameter.
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
PROGRESSIVE = ("none", "output_skip", "residual")
PROGRESSIVE_INPUT = ("none", "input_skip", "residual")
PROGRESSIVE_COMBINE = ("sum", "cat")
RESBLOCK_TYPES = ("biggan", "ddpm")


class NCSNpp(nn.Module):
  """NCSN++ / DDPM++ U-Net.

  ``__call__(x, cond, y=None, train=False, augment_labels=None)``: ``x`` ``(batch, H, W, C)`` float,
  ``cond`` ``(batch,)`` float (``999 t`` for VP, ``sigma(t)`` for VE), ``y`` ``(batch,)`` int
  labels when ``num_classes > 0``. ``augment_labels`` ``(batch, augment_dim)`` when ``augment_dim
  > 0`` (None: zeros). Returns float32 ``(batch, H, W, C)``; divided by ``cond`` when
  ``scale_by_sigma``.
  """
  nf: int = 128
  ch_mult: Sequence[int] = (1, 2, 2, 2)
  num_res_blocks: int = 4
  attn_resolutions: Sequence[int] = (16,)
  dropout: float = 0.1
  resamp_with_conv: bool = True
  conditional: bool = True
  fir: bool = False
  fir_kernel: Sequence[float] = (1, 3, 3, 1)
  skip_rescale: bool = True
  resblock_type: str = "biggan"
  progressive: str = "none"
  progressive_input: str = "none"
  progressive_combine: str = "sum"
  attention_type: str = "ddpm"
  init_scale: float = 0.0
  embedding_type: str = "positional"
  fourier_scale: float = 16.0
  conv_size: int = 3
  scale_by_sigma: bool = False
  nonlinearity: str = "swish"
  num_classes: int = 0
  augment_dim: int = 0      # > 0: EDM's augmentation labels condition the embedding
  centered: bool = True     # data in [-1, 1]; else [0, 1] and mapped with 2x - 1 (score_sde)
  dtype: Any = "float32"    # compute dtype; parameters are float32
  remat: bool = False
  remat_policy: str = "full"   # with remat: what a block keeps (layers.REMAT_POLICIES)
  # Performance-only options (the same function; kernel_layout stores the same kernels transposed,
  # models.layers.convert_kernel_layout converts checkpoints):
  fused_norm: bool = False    # GroupNorm+swish as one op with a hand-written backward pass
  pallas_norm: bool = False   # GroupNorm+swish forward as one Pallas kernel (models.pallas_norm)
  fast_dropout: bool = False  # dropout masks from 16-bit fields of threefry words
  kernel_layout: str = "HWIO"  # convolution kernels stored HWIO (flax) or OHWI (cuDNN's NHWC)
  temb_barrier: bool = False  # time embedding added behind a barrier, not as a conv side input
  two_stage_grads: bool = False  # GroupNorm, block conv-bias gradients: positions, then batch

  @nn.compact
  def __call__(self, x: Array, cond: Array, y: Optional[Array] = None,
               train: bool = False, augment_labels: Optional[Array] = None) -> Array:
    dtype = jnp.dtype(self.dtype)
    progressive = self.progressive.lower()
    progressive_input = self.progressive_input.lower()
    combine_method = self.progressive_combine.lower()
    resblock_type = self.resblock_type.lower()
    if progressive not in PROGRESSIVE:
      raise ValueError(f"unknown progressive {self.progressive!r}; expected one of {PROGRESSIVE}")
    if progressive_input not in PROGRESSIVE_INPUT:
      raise ValueError(f"unknown progressive_input {self.progressive_input!r}; "
                       f"expected one of {PROGRESSIVE_INPUT}")
    if resblock_type not in RESBLOCK_TYPES:
      raise ValueError(f"unknown resblock_type {self.resblock_type!r}; "
                       f"expected one of {RESBLOCK_TYPES}")
    if self.attention_type != "ddpm":
      raise ValueError(f"unknown attention_type {self.attention_type!r}; expected 'ddpm'")
    layers.check_image_input(x, cond)

    nf, num_resolutions = self.nf, len(self.ch_mult)
    cs, fir_kernel = self.conv_size, tuple(self.fir_kernel)
    norm_kind = "pallas" if self.pallas_norm else self.fused_norm
    conv = functools.partial(layers.conv2d, kernel_size=cs, dtype=dtype,
                             kernel_layout=self.kernel_layout)
    attn = functools.partial(layers.AttnBlock, init_scale=self.init_scale,
                             skip_rescale=self.skip_rescale, dtype=dtype,
                             fused_norm=norm_kind,
                             two_stage_grads=self.two_stage_grads)
    perf = dict(fused_norm=norm_kind, fast_dropout=self.fast_dropout,
                kernel_layout=self.kernel_layout, temb_barrier=self.temb_barrier,
                two_stage_grads=self.two_stage_grads)
    if resblock_type == "ddpm":
      block_cls = functools.partial(
          layers.maybe_remat(layers.ResnetBlockDDPM, self.remat, self.remat_policy),
          act=self.nonlinearity,
          dropout=self.dropout, init_scale=self.init_scale, skip_rescale=self.skip_rescale,
          conv_size=cs, dtype=dtype, **perf)
    else:
      block_cls = functools.partial(
          layers.maybe_remat(layers.ResnetBlockBigGAN, self.remat, self.remat_policy),
          act=self.nonlinearity,
          dropout=self.dropout, fir=self.fir, fir_kernel=fir_kernel,
          init_scale=self.init_scale, skip_rescale=self.skip_rescale, conv_size=cs, dtype=dtype,
          **perf)
    resample = dict(fir=self.fir, fir_kernel=fir_kernel, conv_size=cs, dtype=dtype,
                    kernel_layout=self.kernel_layout)
    norm_act = lambda h: layers.norm_act(h, dtype, self.nonlinearity, norm_kind,
                                         self.two_stage_grads)

    def block(h, out_ch=None, **kwargs):
      return block_cls(out_ch=out_ch, **kwargs)(h, temb, train)

    def skip_sum(a, b):
      return (a + b) / layers.SQRT2 if self.skip_rescale else a + b

    temb = None
    if self.conditional:
      temb = ConditioningEmbedding(nf, self.embedding_type, self.fourier_scale,
                                   self.nonlinearity, self.num_classes, dtype,
                                   self.augment_dim)(cond, y, augment_labels)

    x = x.astype(jnp.float32)
    if not self.centered:
      x = 2.0 * x - 1.0
    x = x.astype(dtype)
    out_channels = x.shape[-1]

    # Downsampling path.
    input_pyramid = x if progressive_input != "none" else None
    hs = [conv(nf)(x)]
    for level in range(num_resolutions):
      for _ in range(self.num_res_blocks):
        h = block(hs[-1], nf * self.ch_mult[level])
        if h.shape[1] in self.attn_resolutions:
          h = attn()(h)
        hs.append(h)
      if level != num_resolutions - 1:
        if resblock_type == "ddpm":
          h = layers.Downsample(with_conv=self.resamp_with_conv, **resample)(hs[-1])
        else:
          h = block(hs[-1], down=True)
        if progressive_input == "input_skip":
          input_pyramid = layers.Downsample(with_conv=False, **resample)(input_pyramid)
          h = layers.Combine(combine_method, dtype=dtype,
                             kernel_layout=self.kernel_layout)(input_pyramid, h)
        elif progressive_input == "residual":
          input_pyramid = layers.Downsample(out_ch=h.shape[-1], with_conv=True,
                                            **resample)(input_pyramid)
          input_pyramid = skip_sum(input_pyramid, h)
          h = input_pyramid
        hs.append(h)

    h = hs[-1]
    h = block(h)
    h = attn()(h)
    h = block(h)

    # Upsampling path.
    pyramid = None
    for level in reversed(range(num_resolutions)):
      for _ in range(self.num_res_blocks + 1):
        h = block(jnp.concatenate([h, hs.pop()], axis=-1), nf * self.ch_mult[level])
      if h.shape[1] in self.attn_resolutions:
        h = attn()(h)

      if progressive == "output_skip":
        to_image = conv(out_channels, init_scale=self.init_scale)(norm_act(h))
        if level == num_resolutions - 1:
          pyramid = to_image
        else:
          pyramid = layers.Upsample(with_conv=False, **resample)(pyramid) + to_image
      elif progressive == "residual":
        if level == num_resolutions - 1:
          pyramid = conv(h.shape[-1])(norm_act(h))
        else:
          pyramid = layers.Upsample(out_ch=h.shape[-1], with_conv=True, **resample)(pyramid)
          pyramid = skip_sum(pyramid, h)
          h = pyramid

      if level != 0:
        if resblock_type == "ddpm":
          h = layers.Upsample(with_conv=self.resamp_with_conv, **resample)(h)
        else:
          h = block(h, up=True)

    assert not hs, "every skip connection must be consumed"
    if progressive == "output_skip":
      h = pyramid
    else:
      h = norm_act(h)
      h = conv(out_channels, init_scale=self.init_scale)(h)

    h = h.astype(jnp.float32)
    if self.scale_by_sigma:
      h = h / cond.astype(jnp.float32).reshape((-1,) + (1,) * (h.ndim - 1))
    return h
