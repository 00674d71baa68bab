"""Building blocks shared by the convolutional networks (NCSN++, DDPM++, DDPM, U-Net).

Layout and initialisation follow score_sde (``models/layers.py``, ``models/layerspp.py``,
``models/up_or_down_sampling.py``) so that parameter counts match parameter for parameter:

* kernels use DDPM's ``default_init`` (variance scaling, ``fan_avg``, uniform), biases zeros;
* GroupNorm uses ``min(C // 4, 32)`` groups, epsilon 1e-6;
* ``NIN`` is a 1x1 "network in network" projection with parameters ``W`` and ``b``;
* FIR up/down-sampling (StyleGAN2's ``upfirdn``) is written here as a depthwise convolution.

Images are NHWC. Parameters are always float32; every module takes a compute ``dtype``
(a name such as ``'bfloat16'`` or a dtype); GroupNorm and softmax statistics run in float32.
"""
from __future__ import annotations

import functools
import math
from typing import Any, Callable, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxgen import parallel

Array = jax.Array
PARAM_DTYPE = jnp.float32
SQRT2 = math.sqrt(2.0)  # a Python float keeps the compute dtype

ACTIVATIONS = {
    "swish": nn.swish,
    "silu": nn.swish,
    "relu": nn.relu,
    "elu": nn.elu,
    "lrelu": functools.partial(nn.leaky_relu, negative_slope=0.2),
    "gelu": nn.gelu,
    "tanh": jnp.tanh,
    "softplus": nn.softplus,
}


def check_image_input(x: Array, cond: Array) -> None:
  """Raises ValueError unless ``x`` is ``(batch, H, W, C)`` and ``cond`` is ``(batch,)``."""
  if x.ndim != 4 or cond.shape != x.shape[:1]:
    raise ValueError(f"expected x (batch, H, W, C) and cond (batch,), got {x.shape} and "
                     f"{cond.shape}")


def get_activation(name: str) -> Callable[[Array], Array]:
  """Activation function by name (swish/silu, relu, elu, lrelu, gelu, tanh, softplus)."""
  key = str(name).lower()
  if key not in ACTIVATIONS:
    raise ValueError(f"unknown nonlinearity {name!r}; expected one of {sorted(ACTIVATIONS)}")
  return ACTIVATIONS[key]


def default_init(scale: float = 1.0):
  """DDPM initializer: variance scaling (``fan_avg``, uniform); a zero scale becomes 1e-10."""
  scale = 1e-10 if scale == 0 else scale
  return nn.initializers.variance_scaling(scale, "fan_avg", "uniform")


KERNEL_LAYOUTS = ("HWIO", "OHWI")


class Conv(nn.Module):
  """2-D convolution, NHWC, with the kernel stored as ``HWIO`` (flax's) or ``OHWI``.

  With ``kernel_layout='HWIO'`` it is ``nn.Conv`` (same parameter names, shapes, initial values
  and function). ``'OHWI'`` stores the same kernel transposed to ``(features, kh, kw, in)``,
  the layout cuDNN's NHWC kernels read, so that XLA does not transpose every kernel on every
  call; the initial values are those of the HWIO kernel, transposed. Convert trees between the
  two with :func:`convert_kernel_layout`.
  """
  features: int
  kernel_size: Sequence[int] = (3, 3)
  strides: Sequence[int] = (1, 1)
  padding: Any = "SAME"
  use_bias: bool = True
  kernel_init: Callable = nn.initializers.lecun_normal()
  bias_init: Callable = nn.initializers.zeros
  dtype: Any = jnp.float32
  param_dtype: Any = PARAM_DTYPE
  kernel_layout: str = "HWIO"
  two_stage_bias: bool = False  # the bias gradient in two stages (:func:`add_bias_two_stage`)

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """``(B, H, W, C) -> (B, H', W', features)``."""
    layout = str(self.kernel_layout).upper()
    if layout not in KERNEL_LAYOUTS:
      raise ValueError(f"unknown kernel_layout {self.kernel_layout!r}; expected one of "
                       f"{KERNEL_LAYOUTS}")
    hwio = tuple(self.kernel_size) + (x.shape[-1], self.features)
    if layout == "HWIO":
      kernel = self.param("kernel", self.kernel_init, hwio, self.param_dtype)
    else:
      init = lambda key, shape, dtype: jnp.transpose(self.kernel_init(key, hwio, dtype),
                                                     (3, 0, 1, 2))
      kernel = self.param("kernel", init, (hwio[3],) + hwio[:3], self.param_dtype)
    dtype = jnp.dtype(self.dtype)
    y = jax.lax.conv_general_dilated(
        x.astype(dtype), kernel.astype(dtype), window_strides=tuple(self.strides),
        padding=self.padding, dimension_numbers=("NHWC", layout, "NHWC"))
    if self.use_bias:
      bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype)
      y = add_bias_two_stage(y, bias.astype(dtype)) if self.two_stage_bias else (
          y + bias.astype(dtype))
    return y


def per_sample(p: Array, like: Array) -> Array:
  """A per-channel parameter ``p`` ``(C,)`` broadcast to ``(B, 1, ..., 1, C)`` for ``like``
  ``(B, ..., C)``, whose gradient is reduced over positions first and over the batch second.

  The value is ``p`` broadcast. Only the tangent rule differs: it sends ``p``'s tangent through a
  per-sample factor of ones behind an optimization barrier, so the reverse-mode rule sums a
  cotangent over positions per sample (``B * C`` outputs, well spread over the GPU) and only
  then over the batch. XLA cannot merge the two reductions into one column reduction, which on
  4x4 and 8x8 feature maps runs on a handful of thread blocks (NOTES.md run 15). Where ``p`` is
  not differentiated (sampling, the likelihood's ``jvp`` in ``x``) the rule is never traced, so
  inference carries no barrier and no extra term.
  """
  return _per_sample(p, like.shape[0], like.ndim)


@functools.partial(jax.custom_jvp, nondiff_argnums=(1, 2))
def _per_sample(p: Array, batch: int, ndim: int) -> Array:
  return jnp.broadcast_to(p, (batch,) + (1,) * (ndim - 2) + p.shape)


@_per_sample.defjvp
def _per_sample_jvp(batch, ndim, primals, tangents):
  (p,), (tp,) = primals, tangents
  ones = jax.lax.optimization_barrier(jnp.ones((batch,) + (1,) * (ndim - 1), tp.dtype))
  return _per_sample(p, batch, ndim), tp * ones


def add_bias_two_stage(y: Array, bias: Array) -> Array:
  """``y + bias`` (``y``: ``(B, ..., C)``, ``bias``: ``(C,)``) with the bias gradient reduced
  over positions first and over the batch second (:func:`per_sample`). The forward is the plain
  add, which XLA still folds into a preceding convolution as its bias."""
  return y + per_sample(bias, y)


def param_path_names(path) -> Tuple[str, ...]:
  """The names along a parameter tree path (``tree_map_with_path``'s keys): module names, then
  the parameter's, e.g. ``('ResnetBlockBigGAN_3', 'Conv_0', 'bias')``."""
  return tuple(str(getattr(k, "key", getattr(k, "name", k))) for k in path)


def convert_kernel_layout(params, to: str):
  """Transposes every convolution kernel of a parameter tree to ``to`` (``'HWIO'``/``'OHWI'``).

  Convolution kernels are the 4-D leaves named ``kernel`` (those of :class:`Conv`); the tree
  must currently hold the other layout. Everything else is returned unchanged.
  """
  to = str(to).upper()
  if to not in KERNEL_LAYOUTS:
    raise ValueError(f"unknown kernel_layout {to!r}; expected one of {KERNEL_LAYOUTS}")
  perm = (3, 0, 1, 2) if to == "OHWI" else (1, 2, 3, 0)

  def fix(path, leaf):
    names = param_path_names(path)
    if names[-1:] == ("kernel",) and getattr(leaf, "ndim", 0) == 4:
      return jnp.transpose(leaf, perm)
    return leaf

  return jax.tree_util.tree_map_with_path(fix, params)


def conv2d(features: int, kernel_size: int = 3, stride: int = 1, init_scale: float = 1.0,
           use_bias: bool = True, dtype: Any = jnp.float32,
           kernel_layout: str = "HWIO", two_stage_bias: bool = False) -> Conv:
  """A 'SAME' convolution with DDPM initialisation (score_sde's ``ddpm_conv3x3/1x1``)."""
  return Conv(features, kernel_size=(kernel_size, kernel_size), strides=(stride, stride),
              padding="SAME", use_bias=use_bias, kernel_init=default_init(init_scale),
              bias_init=nn.initializers.zeros, dtype=jnp.dtype(dtype),
              param_dtype=PARAM_DTYPE, kernel_layout=kernel_layout,
              two_stage_bias=two_stage_bias)


def dense(features: int, init_scale: float = 1.0, dtype: Any = jnp.float32) -> nn.Dense:
  """A dense layer with DDPM initialisation."""
  return nn.Dense(features, kernel_init=default_init(init_scale), bias_init=nn.initializers.zeros,
                  dtype=jnp.dtype(dtype), param_dtype=PARAM_DTYPE)


def num_groups(channels: int) -> int:
  """GroupNorm groups: ``min(channels // 4, 32)`` (score_sde), lowered until it divides.

  Every width of the score_sde models is divisible, so only unusual widths (e.g. 144) differ.
  """
  groups = max(min(channels // 4, 32), 1)
  while channels % groups:
    groups -= 1
  return groups


GN_EPS = 1e-6


def group_norm(x: Array, dtype: Any = jnp.float32, two_stage_grads: bool = False) -> Array:
  """GroupNorm over the last axis with :func:`num_groups` groups, computed in float32.

  Must be called inside a compact module. ``x``: ``(B, ..., C)``; returns ``x.shape`` in
  ``dtype``. flax's ``nn.GroupNorm`` function and parameters (``GroupNorm_<i>``: ``scale``,
  ``bias``; epsilon :data:`GN_EPS`), written out by :func:`_xla_gn` so that XLA emits fewer
  kernels. ``two_stage_grads``: the same function, with the scale and bias gradients reduced
  over positions first and over the batch second.
  """
  return GroupNorm(dtype=dtype, xla=True, two_stage=two_stage_grads)(x)


def _xla_gn(module: nn.Module, x: Array, dtype: Any, two_stage: bool) -> Array:
  """flax's GroupNorm (fast variance: ``E[x^2] - E[x]^2``, clipped at 0) for XLA to
  differentiate, for :func:`group_norm`. ``x``: ``(B, ..., C)``; returns ``x.shape`` in ``dtype``.

  Both statistics come from **one** reduction, of ``x`` and ``x**2`` stacked on a new minor
  axis. Written as two means (flax's form), XLA's GPU compiler emits one column reduction for
  both and then a separate small row reduction per statistic; stacked, the group sums are one
  kernel: the bf16 DDPM++ forward runs 637 kernels instead of 701 and takes 8.05-8.10 ms
  instead of 8.27-8.34 ms per call on an H200 (NOTES.md run 18). The values equal flax's up to
  float32 summation order (``tests/test_perf_options.py``).

  ``two_stage``: the scale and bias act through per-sample copies (:func:`per_sample`), so their
  gradients are reduced over positions per sample first and over the batch second. XLA's GPU
  compiler otherwise emits one column reduction per parameter, often fused with the input
  gradient; where there are few rows per channel (4x4 and 8x8 feature maps: 2,048 to 8,192 rows
  for 256 channels) that kernel runs on a handful of thread blocks, at ~100 GB/s (NOTES.md
  run 15). The value is the same bit for bit.
  """
  c = x.shape[-1]
  groups = num_groups(c)
  per = c // groups
  scale = module.param("scale", nn.initializers.ones, (c,), PARAM_DTYPE)
  bias = module.param("bias", nn.initializers.zeros, (c,), PARAM_DTYPE)
  xf = x.astype(jnp.float32)
  xg = xf.reshape(x.shape[:-1] + (groups, per))
  axes = tuple(range(1, xg.ndim - 2)) + (xg.ndim - 1,)
  moments = jnp.mean(jnp.stack([xg, jnp.square(xg)], axis=-1), axes)  # (B, G, 2)
  mean = moments[..., 0]
  var = jnp.maximum(0.0, moments[..., 1] - jnp.square(mean))
  rstd = jax.lax.rsqrt(var + GN_EPS)
  stat_shape = (x.shape[0],) + (1,) * (x.ndim - 2) + (c,)
  mean = jnp.repeat(mean, per, axis=-1).reshape(stat_shape)
  rstd = jnp.repeat(rstd, per, axis=-1).reshape(stat_shape)
  if two_stage:
    scale, bias = per_sample(scale, x), per_sample(bias, x)
  y = (xf - mean) * (rstd * scale) + bias
  return y.astype(jnp.dtype(dtype))


def _gn_channel_stats(xf, groups):
  """Per-group ``(mean, rstd)`` of ``xf`` ``(B, N, C)`` float32, broadcast back to ``(B, C)``.

  The reductions run over the positions first (a column reduction that keeps channels minor,
  so no transpose), then over the channels of a group on the small ``(B, C)`` sums.
  """
  b, n, c = xf.shape
  per = c // groups
  # x and x**2 stacked on a minor axis: one reduction for both, as in :func:`_xla_gn`.
  sums = jnp.sum(jnp.stack([xf, jnp.square(xf)], axis=-1), axis=1)  # (B, C, 2)
  sums = sums.reshape(b, groups, per, 2).sum(2)
  mean = sums[..., 0] / (n * per)
  var = jnp.maximum(0.0, sums[..., 1] / (n * per) - jnp.square(mean))
  rstd = jax.lax.rsqrt(var + GN_EPS)
  return jnp.repeat(mean, per, axis=1), jnp.repeat(rstd, per, axis=1)


def _gn_forward(x, scale, bias, groups, swish):
  """float32 ``act(GroupNorm(x))`` as flax computes it; also returns per-channel (mean, rstd)."""
  b, c = x.shape[0], x.shape[-1]
  xf = x.astype(jnp.float32).reshape(b, -1, c)
  mean, rstd = _gn_channel_stats(xf, groups)
  z = (xf - mean[:, None, :]) * (rstd * scale)[:, None, :] + bias
  z = z * jax.nn.sigmoid(z) if swish else z
  return z.reshape(x.shape), mean, rstd


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def _fused_gn_act(x, scale, bias, groups, swish, out_dtype):
  return _gn_forward(x, scale, bias, groups, swish)[0].astype(out_dtype)


def _fused_gn_act_fwd(x, scale, bias, groups, swish, out_dtype):
  y, mean, rstd = _gn_forward(x, scale, bias, groups, swish)
  # Saved: the input (already live for the caller's backward) and (batch, channels) statistics;
  # the float32 normalized values are recomputed in the backward pass, never stored.
  return y.astype(out_dtype), (x, scale, bias, mean, rstd)


def _fused_gn_act_bwd(groups, swish, out_dtype, res, dy):
  del out_dtype
  x, scale, bias, mean, rstd = res
  b, c = x.shape[0], x.shape[-1]
  per = c // groups
  xf = x.astype(jnp.float32).reshape(b, -1, c)
  count = xf.shape[1] * per
  xhat = (xf - mean[:, None, :]) * rstd[:, None, :]
  dyf = dy.astype(jnp.float32).reshape(xf.shape)

  def dz_fn(sigmoid):
    if not swish:
      return dyf
    z = xhat * scale + bias
    s = sigmoid(z)
    return dyf * (s * (1.0 + z * (1.0 - s)))

  # Pass 1: both (B, C) column sums in one variadic reduction. Pass 2 recomputes the swish
  # derivative with a differently written sigmoid, so that XLA cannot merge the two into one
  # float32 (B, H*W, C) temporary that both passes read: recomputing is cheaper than the
  # round trip through memory.
  dz = dz_fn(jax.nn.sigmoid)
  s_dz, s_dzxhat = jax.lax.reduce((dz, dz * xhat), (np.float32(0), np.float32(0)),
                                  lambda a, b: (a[0] + b[0], a[1] + b[1]), (1,))
  dscale = jnp.sum(s_dzxhat, axis=0)
  dbias = jnp.sum(s_dz, axis=0)
  group_mean = lambda v: jnp.repeat(v.reshape(b, groups, per).sum(-1) / count, per, axis=1)
  m1 = group_mean(s_dz * scale)
  m2 = group_mean(s_dzxhat * scale)
  dz2 = dz_fn(lambda z: 0.5 * jnp.tanh(0.5 * z) + 0.5)
  dx = rstd[:, None, :] * (dz2 * scale - m1[:, None, :] - xhat * m2[:, None, :])
  return dx.reshape(x.shape).astype(x.dtype), dscale, dbias


_fused_gn_act.defvjp(_fused_gn_act_fwd, _fused_gn_act_bwd)


class GroupNorm(nn.Module):
  """GroupNorm (+ optional swish) over the last axis, statistics in float32.

  Same parameters as ``nn.GroupNorm`` (``scale``, ``bias``; the auto-name ``GroupNorm_<i>``) and
  the same function, in one of three forms:

  * default: one op with a hand-written backward pass (``model.fused_norm``): statistics, scale,
    shift and swish run in float32 inside one fusion, and only ``x`` and the per-group statistics
    are kept for the backward pass;
  * ``pallas``: the forward values from one Pallas kernel (:mod:`jaxgen.models.pallas_norm`);
  * ``xla``: the formula written out for XLA to differentiate (:func:`_xla_gn`; no activation),
    with ``two_stage`` parameter gradients optionally. This is :func:`group_norm`.

  Returns ``dtype``.
  """
  swish: bool = False
  dtype: Any = jnp.float32
  xla: bool = False
  two_stage: bool = False  # with xla: scale/bias gradients over positions, then batch
  pallas: bool = False  # forward values from one Pallas kernel (models.pallas_norm)

  @nn.compact
  def __call__(self, x: Array) -> Array:
    if self.xla:
      if self.swish:
        raise ValueError("GroupNorm(xla=True) applies no activation; got swish=True")
      return _xla_gn(self, x, self.dtype, self.two_stage)
    if self.two_stage:
      raise ValueError("GroupNorm(two_stage=True) needs xla=True")
    c = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (c,), PARAM_DTYPE)
    bias = self.param("bias", nn.initializers.zeros, (c,), PARAM_DTYPE)
    if self.pallas:
      from jaxgen.models import pallas_norm  # pylint: disable=import-outside-toplevel
      return pallas_norm.gn_act(x, scale, bias, num_groups(c), self.swish,
                                jnp.dtype(self.dtype).name)
    return _fused_gn_act(x, scale, bias, num_groups(c), self.swish, jnp.dtype(self.dtype).name)


def norm_act(x: Array, dtype: Any, act: Optional[str], fused: bool = False,
             two_stage_grads: bool = False) -> Array:
  """``act(group_norm(x))`` (``act`` a name or None); with ``fused`` one custom-gradient op.

  The fused form is used for swish (and no activation); other activations take the plain path,
  with ``two_stage_grads`` as in :func:`group_norm`. ``fused="pallas"``: the forward values
  from one Pallas kernel (:mod:`jaxgen.models.pallas_norm`), derivatives from XLA.
  """
  key = None if act is None else str(act).lower()
  if fused and key in (None, "swish", "silu"):
    return GroupNorm(swish=key is not None, dtype=dtype, pallas=fused == "pallas")(x)
  h = group_norm(x, dtype, two_stage_grads)
  return h if key is None else get_activation(key)(h)


def dropout_keep_mask(rng: Array, shape: Sequence[int], rate: float) -> Tuple[Array, float]:
  """Bernoulli keep mask from 16-bit fields of threefry words, and its exact keep scale.

  ``jax.random.bernoulli`` spends one threefry-2x32 evaluation (20 rounds) per element. Here
  one evaluation gives two 32-bit words, i.e. four 16-bit fields, so the integer work is 4x
  smaller; the words are materialized once (2 bytes per element) so that XLA cannot fuse the
  generator into every consumer element. An element is dropped when its field is below
  ``round(rate * 2**16)``, so the drop probability is that over ``2**16`` (within 8e-6 of
  ``rate``); the returned scale ``1 / P(keep)`` keeps the layer unbiased exactly.

  The mask is built row by row along the leading (batch) axis: the counters of row ``b`` are
  ``b W ... b W + W - 1`` and its fields are the four quarters of its own words. Every operation
  keeps the batch axis, so under a batch-sharded ``jit`` each device draws its own rows with no
  communication (a flat draw split into halves and reshaped needed all-gathers and
  collective-permutes on every dropout layer: NOTES.md, run 20). Inside a ``shard_map`` over
  ``parallel.DATA_AXIS`` (a per-device train step) ``b`` is the row's index in the global batch
  (``parallel.batch_rows``), so each device draws exactly its rows of the global batch's mask.

  Args: ``rng`` a threefry key (raw ``uint32[2]`` or typed), ``shape`` of the mask, ``rate`` in
  ``[0, 1)``. Returns ``(keep, scale)``: a boolean ``shape`` array and a Python float.
  """
  from jax.extend import random as jex_random  # pylint: disable=import-outside-toplevel
  threshold = int(round(rate * 65536))
  scale = 65536.0 / (65536 - threshold)
  shape = tuple(int(d) for d in shape)
  data = jax.random.key_data(rng).reshape(-1).astype(jnp.uint32)
  if data.shape != (2,):  # not a threefry key: fall back to 16-bit draws of its own impl
    bits = jax.random.bits(rng, shape, jnp.uint16)
    return bits >= jnp.uint16(threshold), scale
  rows = shape[0] if shape else 1
  per_row = int(np.prod(shape[1:])) if len(shape) > 1 else 1
  words = -(-per_row // 4)  # threefry evaluations per row; each gives four 16-bit fields
  offset, total = parallel.batch_rows(rows) if shape else (0, 1)
  if total * words >= 2**32:
    raise ValueError(f"dropout mask of shape {shape} needs more than 2**32 threefry counters")
  row = jax.lax.broadcasted_iota(jnp.uint32, (rows, words), 0)
  if total != rows:  # this device's rows of the global batch
    row = row + jnp.asarray(offset).astype(jnp.uint32)
  counter = row * jnp.uint32(words) + jax.lax.broadcasted_iota(jnp.uint32, (rows, words), 1)
  hi, lo = jex_random.threefry2x32_p.bind(data[0], data[1], jnp.zeros_like(counter), counter)
  hi, lo = jax.lax.optimization_barrier((hi, lo))
  fields = jnp.concatenate([hi & jnp.uint32(0xFFFF), hi >> 16, lo & jnp.uint32(0xFFFF), lo >> 16],
                           axis=1)[:, :per_row]
  return fields.reshape(shape) >= jnp.uint32(threshold), scale


class Dropout(nn.Dropout):
  """``nn.Dropout`` (same name, rng and mask), whose mask inside a ``shard_map`` over
  ``parallel.DATA_AXIS`` is this device's rows of the global batch's mask
  (``parallel.global_batch_draw``), so a per-device train step drops what a ``jit`` of the whole
  batch drops."""

  @nn.compact
  def __call__(self, inputs, deterministic: Optional[bool] = None, rng=None):
    deterministic = nn.merge_param("deterministic", self.deterministic, deterministic)
    if self.rate == 0.0 or deterministic:
      return inputs
    if self.rate == 1.0:
      return jnp.zeros_like(inputs)
    keep_prob = 1.0 - self.rate
    if rng is None:
      rng = self.make_rng(self.rng_collection)
    shape = list(inputs.shape)
    for dim in self.broadcast_dims:
      shape[dim] = 1
    draw = lambda k, s: jax.random.bernoulli(k, p=keep_prob, shape=s)
    per_row = bool(shape) and 0 not in [d % inputs.ndim for d in self.broadcast_dims]
    mask = parallel.global_batch_draw(draw, rng, shape) if per_row else draw(rng, shape)
    mask = jnp.broadcast_to(mask, inputs.shape)
    return jax.lax.select(mask, inputs / keep_prob, jnp.zeros_like(inputs))


def dropout(module: nn.Module, x: Array, rate: float, deterministic: bool,
            fast: bool = False) -> Array:
  """Inverted dropout as ``nn.Dropout`` (call inside a compact module).

  ``fast``: the keep mask comes from :func:`dropout_keep_mask` (4x fewer threefry evaluations)
  keyed by the module's ``dropout`` rng; the same distribution up to the 2**-16 rounding of
  the rate, another random stream.
  """
  if deterministic or rate == 0.0:
    return x
  if not fast:
    return Dropout(rate)(x, deterministic=False)
  keep, scale = dropout_keep_mask(module.make_rng("dropout"), x.shape, rate)
  return jax.lax.select(keep, x * jnp.asarray(scale, x.dtype), jnp.zeros_like(x))


def add_temb(h: Array, temb_proj: Array, barrier: bool = False) -> Array:
  """``h + temb_proj[:, None, None, :]``: a convolution's output plus the time-embedding projection.

  ``barrier``: the sum is taken behind an optimization barrier on ``h``. Without it XLA's GPU
  compiler folds the addition into the preceding cuDNN convolution as a *side input*, which needs
  the broadcast written out as a full ``(B, H, W, C)`` tensor and read back by the convolution
  (NOTES.md run 15); behind the barrier the broadcast stays inside the consumers' fusions. The
  same values either way (``h`` is materialized by the convolution anyway).
  """
  if barrier:
    h = jax.lax.optimization_barrier(h)
  return h + temb_proj[:, None, None, :]


class NIN(nn.Module):
  """Per-position linear map over channels: ``(..., C) -> (..., features)``."""
  features: int
  init_scale: float = 0.1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    dtype = jnp.dtype(self.dtype)
    kernel = self.param("W", default_init(self.init_scale), (x.shape[-1], self.features),
                        PARAM_DTYPE)
    bias = self.param("b", nn.initializers.zeros, (self.features,), PARAM_DTYPE)
    return jnp.dot(x.astype(dtype), kernel.astype(dtype)) + bias.astype(dtype)


# --- FIR resampling ------------------------------------------------------------------------------

def fir_kernel_2d(kernel: Sequence[float]) -> np.ndarray:
  """Normalised 2-D FIR kernel from a 1-D separable one (outer product), summing to 1."""
  k = np.asarray(kernel, dtype=np.float32)
  if k.ndim == 1:
    k = np.outer(k, k)
  if k.ndim != 2 or k.shape[0] != k.shape[1] or k.size == 0:
    raise ValueError(f"fir_kernel must be a non-empty 1-D or square 2-D array, got shape {k.shape}")
  return k / np.sum(k)


def upfirdn_2d(x: Array, kernel: np.ndarray, up: int = 1, down: int = 1, pad0: int = 0,
               pad1: int = 0) -> Array:
  """Upsample by zero insertion, pad, FIR-filter and downsample (StyleGAN2's ``upfirdn_2d``).

  Args:
    x: ``(batch, H, W, C)``.
    kernel: 2-D FIR kernel ``(k, k)`` (applied as a true convolution, i.e. flipped).
    up, down: integer factors; pad0, pad1: padding before/after on each spatial axis after
      zero insertion (negative values crop).
  Returns:
    ``(batch, H', W', C)`` with ``H' = (H * up + pad0 + pad1 - k) // down + 1``.
  """
  channels = x.shape[-1]
  spatial = (pad0, pad1 + up - 1, up - 1)  # zeros after every pixel, then edge padding
  x = jax.lax.pad(x, jnp.zeros((), x.dtype), [(0, 0, 0), spatial, spatial, (0, 0, 0)])
  w = jnp.asarray(kernel[::-1, ::-1], dtype=x.dtype)
  w = jnp.tile(w[:, :, None, None], (1, 1, 1, channels))
  return jax.lax.conv_general_dilated(
      x, w, window_strides=(down, down), padding="VALID",
      dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=channels)


def upsample_2d(x: Array, fir_kernel: Sequence[float] = (1, 3, 3, 1), factor: int = 2) -> Array:
  """FIR upsampling ``(B, H, W, C) -> (B, factor*H, factor*W, C)``; constants keep their value."""
  k = fir_kernel_2d(fir_kernel) * factor ** 2
  p = k.shape[0] - factor
  return upfirdn_2d(x, k, up=factor, pad0=(p + 1) // 2 + factor - 1, pad1=p // 2)


def downsample_2d(x: Array, fir_kernel: Sequence[float] = (1, 3, 3, 1), factor: int = 2) -> Array:
  """FIR downsampling ``(B, H, W, C) -> (B, H/factor, W/factor, C)``."""
  k = fir_kernel_2d(fir_kernel)
  p = k.shape[0] - factor
  return upfirdn_2d(x, k, down=factor, pad0=(p + 1) // 2, pad1=p // 2)


def naive_upsample_2d(x: Array, factor: int = 2) -> Array:
  """Nearest-neighbour upsampling ``(B, H, W, C) -> (B, factor*H, factor*W, C)``."""
  return jnp.repeat(jnp.repeat(x, factor, axis=1), factor, axis=2)


def naive_downsample_2d(x: Array, factor: int = 2) -> Array:
  """Average pooling ``(B, H, W, C) -> (B, H/factor, W/factor, C)``."""
  b, h, w, c = x.shape
  return x.reshape(b, h // factor, factor, w // factor, factor, c).mean(axis=(2, 4))


class FIRConv2d(nn.Module):
  """Convolution fused with FIR up- or downsampling by 2 (StyleGAN2's ``Conv2d``).

  ``x``: ``(B, H, W, C)`` -> ``(B, H', W', features)`` with ``H' = 2H`` (up), ``H/2`` (down) or
  ``H``. Parameters: ``weight`` ``(k, k, C, features)`` and ``bias``.
  """
  features: int
  kernel_size: int = 3
  up: bool = False
  down: bool = False
  fir_kernel: Sequence[float] = (1, 3, 3, 1)
  use_bias: bool = True
  init_scale: float = 1.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    if self.up and self.down:
      raise ValueError("FIRConv2d: up and down cannot both be True")
    dtype = jnp.dtype(self.dtype)
    ks = self.kernel_size
    w = self.param("weight", default_init(self.init_scale), (ks, ks, x.shape[-1], self.features),
                   PARAM_DTYPE).astype(dtype)
    x = x.astype(dtype)
    dims = ("NHWC", "HWIO", "NHWC")
    factor = 2
    if self.up:
      # Transposed strided convolution (zero insertion + full padding), then FIR smoothing.
      x = jax.lax.conv_general_dilated(x, w, window_strides=(1, 1),
                                       padding=[(ks - 1, ks - 1), (ks - 1, ks - 1)],
                                       lhs_dilation=(factor, factor), dimension_numbers=dims)
      k = fir_kernel_2d(self.fir_kernel) * factor ** 2
      p = (k.shape[0] - factor) - (ks - 1)
      x = upfirdn_2d(x, k, pad0=(p + 1) // 2 + factor - 1, pad1=p // 2 + 1)
    elif self.down:
      k = fir_kernel_2d(self.fir_kernel)
      p = (k.shape[0] - factor) + (ks - 1)
      x = upfirdn_2d(x, k, pad0=(p + 1) // 2, pad1=p // 2)
      x = jax.lax.conv_general_dilated(x, w, window_strides=(factor, factor), padding="VALID",
                                       dimension_numbers=dims)
    else:
      x = jax.lax.conv_general_dilated(x, w, window_strides=(1, 1), padding="SAME",
                                       dimension_numbers=dims)
    if self.use_bias:
      b = self.param("bias", nn.initializers.zeros, (self.features,), PARAM_DTYPE)
      x = x + b.astype(dtype)
    return x


class Upsample(nn.Module):
  """Upsampling by 2, nearest or FIR, optionally with a convolution to ``out_ch`` channels."""
  out_ch: Optional[int] = None
  with_conv: bool = False
  fir: bool = False
  fir_kernel: Sequence[float] = (1, 3, 3, 1)
  conv_size: int = 3
  dtype: Any = jnp.float32
  kernel_layout: str = "HWIO"

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """``(B, H, W, C) -> (B, 2H, 2W, out_ch or C)``."""
    out_ch = self.out_ch or x.shape[-1]
    if not self.fir:
      h = naive_upsample_2d(x)
      if self.with_conv:
        h = conv2d(out_ch, self.conv_size, dtype=self.dtype, kernel_layout=self.kernel_layout)(h)
    elif not self.with_conv:
      h = upsample_2d(x, self.fir_kernel)
    else:
      h = FIRConv2d(out_ch, self.conv_size, up=True, fir_kernel=self.fir_kernel,
                    dtype=self.dtype)(x)
    return h


class Downsample(nn.Module):
  """Downsampling by 2 (average pool, strided conv or FIR), optionally to ``out_ch`` channels."""
  out_ch: Optional[int] = None
  with_conv: bool = False
  fir: bool = False
  fir_kernel: Sequence[float] = (1, 3, 3, 1)
  conv_size: int = 3
  dtype: Any = jnp.float32
  kernel_layout: str = "HWIO"

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """``(B, H, W, C) -> (B, H/2, W/2, out_ch or C)``."""
    out_ch = self.out_ch or x.shape[-1]
    if not self.fir:
      if self.with_conv:
        return conv2d(out_ch, self.conv_size, stride=2, dtype=self.dtype,
                      kernel_layout=self.kernel_layout)(x)
      return naive_downsample_2d(x)
    if not self.with_conv:
      return downsample_2d(x, self.fir_kernel)
    return FIRConv2d(out_ch, self.conv_size, down=True, fir_kernel=self.fir_kernel,
                     dtype=self.dtype)(x)


class Combine(nn.Module):
  """Merges a skip input ``x`` into ``y`` after a 1x1 conv to ``y``'s channels (sum or cat)."""
  method: str = "cat"
  dtype: Any = jnp.float32
  kernel_layout: str = "HWIO"

  @nn.compact
  def __call__(self, x: Array, y: Array) -> Array:
    """``x``: ``(B, H, W, Cx)``, ``y``: ``(B, H, W, Cy)`` -> ``(B, H, W, Cy or 2 Cy)``."""
    h = conv2d(y.shape[-1], 1, dtype=self.dtype, kernel_layout=self.kernel_layout)(x)
    if self.method == "cat":
      return jnp.concatenate([h, y], axis=-1)
    if self.method == "sum":
      return h + y
    raise ValueError(f"unknown progressive_combine {self.method!r}; expected 'sum' or 'cat'")


class AttnBlock(nn.Module):
  """Single-head self-attention over all positions (DDPM), with a residual connection.

  ``x``: ``(B, H, W, C)`` -> same shape. Softmax in float32.
  """
  skip_rescale: bool = False
  init_scale: float = 0.0
  dtype: Any = jnp.float32
  fused_norm: bool = False
  two_stage_grads: bool = False

  @nn.compact
  def __call__(self, x: Array) -> Array:
    dtype = jnp.dtype(self.dtype)
    b, height, width, c = x.shape
    h = norm_act(x, dtype, None, self.fused_norm,
                 self.two_stage_grads).reshape(b, height * width, c)
    q = NIN(c, dtype=dtype)(h)
    k = NIN(c, dtype=dtype)(h)
    v = NIN(c, dtype=dtype)(h)
    logits = jnp.einsum("bnc,bmc->bnm", q, k) * (c ** -0.5)
    weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(dtype)
    h = jnp.einsum("bnm,bmc->bnc", weights, v)
    h = NIN(c, init_scale=self.init_scale, dtype=dtype)(h).reshape(b, height, width, c)
    out = x.astype(dtype) + h
    return out / SQRT2 if self.skip_rescale else out


class ResnetBlockDDPM(nn.Module):
  """DDPM residual block (score_sde's ``ResnetBlockDDPMpp``; DDPM's with ``init_scale=0``).

  ``x``: ``(B, H, W, C)``, ``temb``: ``(B, D)`` or None -> ``(B, H, W, out_ch or C)``.
  """
  act: str = "swish"
  out_ch: Optional[int] = None
  conv_shortcut: bool = False
  dropout: float = 0.1
  skip_rescale: bool = False
  init_scale: float = 0.0
  conv_size: int = 3
  dtype: Any = jnp.float32
  kernel_layout: str = "HWIO"
  fused_norm: bool = False
  fast_dropout: bool = False
  temb_barrier: bool = False
  two_stage_grads: bool = False

  @nn.compact
  def __call__(self, x: Array, temb: Optional[Array] = None, train: bool = False) -> Array:
    dtype = jnp.dtype(self.dtype)
    act = get_activation(self.act)
    x = x.astype(dtype)
    channels = x.shape[-1]
    out_ch = self.out_ch or channels
    h = norm_act(x, dtype, self.act, self.fused_norm, self.two_stage_grads)
    h = conv2d(out_ch, self.conv_size, dtype=dtype, kernel_layout=self.kernel_layout,
               two_stage_bias=self.two_stage_grads)(h)
    if temb is not None:
      h = add_temb(h, dense(out_ch, dtype=dtype)(act(temb)), self.temb_barrier)
    h = norm_act(h, dtype, self.act, self.fused_norm, self.two_stage_grads)
    h = dropout(self, h, self.dropout, not train, self.fast_dropout)
    h = conv2d(out_ch, self.conv_size, init_scale=self.init_scale, dtype=dtype,
               kernel_layout=self.kernel_layout,
               two_stage_bias=self.two_stage_grads)(h)
    if channels != out_ch:
      if self.conv_shortcut:
        x = conv2d(out_ch, self.conv_size, dtype=dtype, kernel_layout=self.kernel_layout,
                   two_stage_bias=self.two_stage_grads)(x)
      else:
        x = NIN(out_ch, dtype=dtype)(x)
    out = x + h
    return out / SQRT2 if self.skip_rescale else out


class ResnetBlockBigGAN(nn.Module):
  """BigGAN residual block, optionally resampling by 2 (score_sde's ``ResnetBlockBigGANpp``).

  ``x``: ``(B, H, W, C)``, ``temb``: ``(B, D)`` or None -> ``(B, H', W', out_ch or C)``.
  """
  act: str = "swish"
  up: bool = False
  down: bool = False
  out_ch: Optional[int] = None
  dropout: float = 0.1
  fir: bool = False
  fir_kernel: Sequence[float] = (1, 3, 3, 1)
  skip_rescale: bool = True
  init_scale: float = 0.0
  conv_size: int = 3
  dtype: Any = jnp.float32
  kernel_layout: str = "HWIO"
  fused_norm: bool = False
  fast_dropout: bool = False
  temb_barrier: bool = False
  two_stage_grads: bool = False

  @nn.compact
  def __call__(self, x: Array, temb: Optional[Array] = None, train: bool = False) -> Array:
    dtype = jnp.dtype(self.dtype)
    act = get_activation(self.act)
    x = x.astype(dtype)
    channels = x.shape[-1]
    out_ch = self.out_ch or channels
    h = norm_act(x, dtype, self.act, self.fused_norm, self.two_stage_grads)
    if self.up:
      resample = (functools.partial(upsample_2d, fir_kernel=self.fir_kernel) if self.fir
                  else naive_upsample_2d)
    elif self.down:
      resample = (functools.partial(downsample_2d, fir_kernel=self.fir_kernel) if self.fir
                  else naive_downsample_2d)
    else:
      resample = None
    if resample is not None:
      h, x = resample(h), resample(x)
    h = conv2d(out_ch, self.conv_size, dtype=dtype, kernel_layout=self.kernel_layout,
               two_stage_bias=self.two_stage_grads)(h)
    if temb is not None:
      h = add_temb(h, dense(out_ch, dtype=dtype)(act(temb)), self.temb_barrier)
    h = norm_act(h, dtype, self.act, self.fused_norm, self.two_stage_grads)
    h = dropout(self, h, self.dropout, not train, self.fast_dropout)
    h = conv2d(out_ch, self.conv_size, init_scale=self.init_scale, dtype=dtype,
               kernel_layout=self.kernel_layout,
               two_stage_bias=self.two_stage_grads)(h)
    if channels != out_ch or resample is not None:
      x = conv2d(out_ch, 1, dtype=dtype, kernel_layout=self.kernel_layout,
                 two_stage_bias=self.two_stage_grads)(x)
    out = x + h
    return out / SQRT2 if self.skip_rescale else out


def _save_conv_and_matmul_outputs(prim, *_, **__) -> bool:
  """``jax.checkpoint`` policy: keep what convolutions and matrix products computed; recompute
  the normalization, activation, dropout and additions between them."""
  return prim in (jax.lax.conv_general_dilated_p, jax.lax.dot_general_p)


# ``model.remat_policy``: what a rematerialized block keeps for its backward pass.
REMAT_POLICIES = {
    "full": None,                                   # nothing: the whole block runs again
    "save_convs": _save_conv_and_matmul_outputs,    # conv/matmul outputs; the rest runs again
}


def remat_param_names(params, remat: bool):
  """``params`` of a network with its residual blocks named as ``model.remat`` names them.

  flax names a rematerialized block class ``Checkpoint<Block>``, so the same network's
  parameters carry ``CheckpointResnetBlock..._i`` instead of ``ResnetBlock..._i`` at the top
  level. ``remat=True`` adds the prefix, ``False`` strips it; the values are untouched."""
  prefix = "Checkpoint"

  def name(key):
    plain = key[len(prefix):] if key.startswith(prefix + "ResnetBlock") else key
    return prefix + plain if remat and plain.startswith("ResnetBlock") else plain

  return {name(k): v for k, v in params.items()}


def maybe_remat(block_cls, remat: bool, policy: str = "full"):
  """``nn.remat`` of a residual block class (``train`` static) when ``remat`` is True.

  ``policy`` (a key of :data:`REMAT_POLICIES`) says what is kept for the backward pass. Either
  policy names the parameters alike (flax's ``Checkpoint...`` prefix) and computes the same
  function; they differ in memory and time only (NOTES.md run 23)."""
  if policy not in REMAT_POLICIES:
    raise ValueError(f"model.remat_policy={policy!r} is not one of {sorted(REMAT_POLICIES)}")
  if not remat:
    return block_cls
  return nn.remat(block_cls, static_argnums=(3,), policy=REMAT_POLICIES[policy])
