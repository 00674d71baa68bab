"""GroupNorm (+ swish) forward as one Pallas kernel (``model.pallas_norm``; NOTES.md run 17).

XLA computes a GroupNorm in about five kernels: a column reduction for the per-channel sums,
two small row reductions to the group statistics, a small fusion for the scale, and the
normalize(+swish) fusion, which reads the input a second time from memory. Here one program
per (sample, block of channels) walks over the positions twice: it sums, reduces the sums to
group statistics, then normalizes and writes. The second pass reads what the first one just
read, mostly from the L2 cache.

Only the forward values come from the kernel. Derivatives (``jax.jvp`` for the likelihood's
divergence, ``jax.grad`` for training) come from the plain XLA formula through a custom JVP
rule, so the op can be used anywhere; it is meant for inference (sampling, likelihood).

Measured (NOTES.md run 17, H200, DDPM++ bf16 forward at batch 128): **slower** than XLA, 9.14
against 8.30 ms per forward. In the network XLA's GroupNorm fusions also absorb the residual and
time-embedding additions and run near the memory bound; this kernel cannot absorb its producers.
It rounds once instead of twice in bfloat16 (output 1.28e-2 from float32 against 1.69e-2), which
is why the option is kept, off by default.

``gn_act`` needs a channel block that is a power of two and a multiple of the channels per
group, and a position count divisible by the row block; otherwise :func:`pallas_supported`
is False and callers use the XLA path. On the CPU the kernel runs in Pallas's interpreter
(``interpret=True``), which is what the tests check.

Sharding (not tested here): XLA's partitioner has no rule for a Pallas kernel, so under ``jit``
with batch-sharded inputs expect its operand to be gathered onto every device. On several
devices call the network inside ``shard_map`` (one shard per device), or leave the option off
(the default).
"""
import functools
from typing import Any, Tuple

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from jaxgen.models.layers import GN_EPS, _gn_forward


def _pow2(n: int) -> bool:
  return n > 0 and (n & (n - 1)) == 0


def _blocks(n: int, c: int, channel_block: int, row_block: int) -> Tuple[int, int]:
  """(channel block, row block) for ``n`` positions and ``c`` channels."""
  return min(channel_block, c), min(row_block, n)


def pallas_supported(shape: Tuple[int, ...], groups: int, channel_block: int = 32,
                     row_block: int = 64) -> bool:
  """Whether :func:`gn_act` runs its kernel for ``x`` of ``shape`` ``(B, ..., C)``."""
  if len(shape) < 3:
    return False
  c = shape[-1]
  n = 1
  for d in shape[1:-1]:
    n *= int(d)
  if groups <= 0 or c % groups:
    return False
  per = c // groups
  cb, rows = _blocks(n, c, channel_block, row_block)
  return (_pow2(cb) and c % cb == 0 and cb % per == 0 and _pow2(rows) and n % rows == 0)


def reference_gn_act(x, scale, bias, groups: int, swish: bool, out_dtype: Any):
  """The XLA formula: ``act(GroupNorm(x))`` in float32 (fast variance, eps 1e-6), cast.

  The same function as ``model.fused_norm``'s forward (``layers._gn_forward``).
  """
  return _gn_forward(x, scale.astype(jnp.float32), bias.astype(jnp.float32), groups,
                     swish)[0].astype(out_dtype)


def _kernel(x_ref, s_ref, b_ref, o_ref, *, n, rows, per, swish):
  cb = x_ref.shape[-1]
  steps = n // rows

  def stats(i, carry):
    s1, s2 = carry
    xt = x_ref[pl.ds(i * rows, rows), :].astype(jnp.float32)
    return s1 + jnp.sum(xt, axis=0), s2 + jnp.sum(xt * xt, axis=0)

  zero = jnp.zeros((cb,), jnp.float32)
  s1, s2 = jax.lax.fori_loop(0, steps, stats, (zero, zero))
  # Group sums without a reshape: channel j gets the sum over the channels i of its group.
  gi = jax.lax.broadcasted_iota(jnp.int32, (cb, cb), 0) // per
  gj = jax.lax.broadcasted_iota(jnp.int32, (cb, cb), 1) // per
  same = gi == gj
  g1 = jnp.sum(jnp.where(same, s1[:, None], 0.0), axis=0)
  g2 = jnp.sum(jnp.where(same, s2[:, None], 0.0), axis=0)
  count = float(n * per)
  mean = g1 / count
  var = jnp.maximum(g2 / count - mean * mean, 0.0)
  a = jax.lax.rsqrt(var + GN_EPS) * s_ref[...].astype(jnp.float32)
  c = b_ref[...].astype(jnp.float32) - mean * a

  def norm(i, carry):
    xt = x_ref[pl.ds(i * rows, rows), :].astype(jnp.float32)
    z = xt * a[None, :] + c[None, :]
    if swish:
      z = z * jax.nn.sigmoid(z)
    o_ref[pl.ds(i * rows, rows), :] = z.astype(o_ref.dtype)
    return carry

  jax.lax.fori_loop(0, steps, norm, 0)


def _pallas_gn_act(x, scale, bias, groups, swish, out_dtype, channel_block, row_block, interpret,
                   num_warps):
  b, c = x.shape[0], x.shape[-1]
  x3 = x.reshape(b, -1, c)
  n = x3.shape[1]
  cb, rows = _blocks(n, c, channel_block, row_block)
  sq = getattr(pl, "squeezed", None)
  kernel = functools.partial(_kernel, n=n, rows=rows, per=c // groups, swish=swish)
  kwargs = {}
  if not interpret and num_warps:
    try:
      from jax.experimental.pallas import triton as pltriton  # pylint: disable=import-outside-toplevel
      params_cls = getattr(pltriton, "CompilerParams", None) or getattr(
          pltriton, "TritonCompilerParams")
      kwargs["compiler_params"] = params_cls(num_warps=num_warps, num_stages=1)
    except (ImportError, AttributeError):  # pragma: no cover - depends on the jax version
      pass
  out = pl.pallas_call(
      kernel,
      out_shape=jax.ShapeDtypeStruct((b, n, c), jnp.dtype(out_dtype)),
      grid=(b, c // cb),
      in_specs=[pl.BlockSpec((sq, n, cb), lambda i, j: (i, 0, j)),
                pl.BlockSpec((cb,), lambda i, j: (j,)),
                pl.BlockSpec((cb,), lambda i, j: (j,))],
      out_specs=pl.BlockSpec((sq, n, cb), lambda i, j: (i, 0, j)),
      interpret=interpret,
      **kwargs,
  )(x3, scale.astype(jnp.float32), bias.astype(jnp.float32))
  return out.reshape(x.shape)


@functools.partial(jax.custom_jvp, nondiff_argnums=(3, 4, 5, 6, 7, 8, 9))
def _gn_act(x, scale, bias, groups, swish, out_dtype, channel_block, row_block, interpret,
            num_warps):
  return _pallas_gn_act(x, scale, bias, groups, swish, out_dtype, channel_block, row_block,
                        interpret, num_warps)


@_gn_act.defjvp
def _gn_act_jvp(groups, swish, out_dtype, channel_block, row_block, interpret, num_warps,
                primals, tangents):
  y = _gn_act(*primals, groups, swish, out_dtype, channel_block, row_block, interpret, num_warps)
  ref = functools.partial(reference_gn_act, groups=groups, swish=swish, out_dtype=out_dtype)
  _, dy = jax.jvp(ref, primals, tangents)
  return y, dy


def gn_act(x, scale, bias, groups: int, swish: bool = True, out_dtype: Any = None, *,
           channel_block: int = 32, row_block: int = 64, interpret: bool = None,
           num_warps: int = 4):
  """``act(GroupNorm(x))`` with the forward values from one Pallas kernel.

  Args: ``x`` ``(B, ..., C)``; ``scale``, ``bias`` ``(C,)``; ``groups`` dividing ``C``;
  ``swish``: apply ``z * sigmoid(z)``; ``out_dtype`` (default ``x.dtype``). ``interpret``
  (default: on when JAX's backend is the CPU) runs Pallas's interpreter. Falls back to
  :func:`reference_gn_act` when :func:`pallas_supported` is False. Returns ``x.shape``.
  """
  out_dtype = jnp.dtype(out_dtype or x.dtype).name
  if not pallas_supported(x.shape, groups, channel_block, row_block):
    return reference_gn_act(x, scale, bias, groups, swish, out_dtype)
  if interpret is None:
    interpret = jax.default_backend() == "cpu"
  return _gn_act(x, scale, bias, groups, swish, out_dtype, channel_block, row_block,
                 bool(interpret), num_warps)
