"""GroupNorm statistics written so that XLA emits fewer small kernels (run 18).

Before run 18, in the default path (flax's formula, two means) XLA emitted five kernels per
GroupNorm of the bf16 forward (NOTES.md run 16): the per-channel column sums of ``x`` and ``x**2`` (one multi-output
reduction), **two** row reductions of 4-16 channels to the group sums (one per statistic), a
small loop fusion for the scale, and the normalize+swish fusion. 359 of the forward's 701 kernels
run under 5 us. The variants here compute the same function (same parameters) with the group
statistics formed differently:

* ``flax``: flax's formula (two means), the library's until run 18 (reference);
* ``grouped``: explicit ``(B, C)`` column sums, then **one** group reduction of the two
  statistics stacked, ``(B, G, C/G, 2) -> (B, G, 2)``; rsqrt at ``(B, G)``;
* ``matmul``: the ``(B, 2, C)`` column sums times a 0/1 group-membership matrix ``(C, C)`` at
  the highest precision: group means already broadcast per channel, no reduce kernel at all;
* ``stacked``: flax's reshaped mean, of ``x`` and ``x**2`` stacked on a new minor axis, so XLA's
  reduction splitter sees one reduction, not two. The library's ``layers._xla_gn`` since run 18
  (``library`` runs the library's own function);
* ``variadic``: both sums as one variadic reduction (a custom JVP gives its derivatives), so
  that the variance and ``rsqrt`` are elementwise in its outputs.

Each variant is patched into ``layers._xla_gn`` before its function is traced. One process:
the bf16 forward (pipelined ms, optional profile: kernels and GPU busy per call), then train
steps (bf16, fp32) from the same state, loss at step 0, gradient norm.

    python experiments/bench/gn_stats.py --out DIR [--fwd flax,grouped] [--train bf16:flax,...]
    python experiments/bench/gn_stats.py --check   # CPU: values and gradients vs the reference
"""
import argparse
import functools
import json
import os
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from jaxgen.models import layers  # pylint: disable=wrong-import-position

ORIGINAL = layers._xla_gn  # pylint: disable=protected-access
f32 = jnp.float32


def _variant(stats):
  """A ``layers._xla_gn`` replacement whose statistics come from ``stats(xf, groups)``:
  ``(mean, rstd)``, per group ``(B, G)`` or already per channel ``(B, C)``. The rest (parameters,
  per-sample copies with ``two_stage``, normalization) is the library's."""

  def gn(module, x, dtype, two_stage):
    c = x.shape[-1]
    groups = layers.num_groups(c)
    scale = module.param("scale", nn.initializers.ones, (c,), layers.PARAM_DTYPE)
    bias = module.param("bias", nn.initializers.zeros, (c,), layers.PARAM_DTYPE)
    xf = x.astype(f32)
    shape = (x.shape[0],) + (1,) * (x.ndim - 2) + (c,)
    mean, rstd = (jnp.repeat(s, c // s.shape[-1], axis=-1).reshape(shape)
                  for s in stats(xf, groups))
    if two_stage:
      scale, bias = layers.per_sample(scale, x), layers.per_sample(bias, x)
    return ((xf - mean) * (rstd * scale) + bias).astype(jnp.dtype(dtype))

  return gn


def _grouped(xf, groups):
  """``xf`` ``(B, ..., C)`` as ``(B, ..., G, C/G)`` and the axes of one group's elements."""
  xg = xf.reshape(xf.shape[:-1] + (groups, xf.shape[-1] // groups))
  return xg, tuple(range(1, xg.ndim - 2)) + (xg.ndim - 1,)


def _mean_rstd(mean, mean_sq):
  return mean, jax.lax.rsqrt(jnp.maximum(0.0, mean_sq - jnp.square(mean)) + layers.GN_EPS)


def _column_sums(xf):
  """``(B, C)`` sums of ``x`` and ``x**2`` over positions, and the positions per sample."""
  x3 = xf.reshape(xf.shape[0], -1, xf.shape[-1])
  return jnp.sum(x3, axis=1), jnp.sum(jnp.square(x3), axis=1), x3.shape[1]


def stats_flax(xf, groups):
  xg, axes = _grouped(xf, groups)
  return _mean_rstd(jnp.mean(xg, axes), jnp.mean(jnp.square(xg), axes))


def stats_grouped(xf, groups):
  s1, s2, n = _column_sums(xf)
  b, c = s1.shape
  st = jnp.stack([s1, s2], axis=-1).reshape(b, groups, c // groups, 2).sum(axis=2)
  st = st / (n * (c // groups))
  return _mean_rstd(st[..., 0], st[..., 1])


def stats_matmul(xf, groups):
  s1, s2, n = _column_sums(xf)
  c = s1.shape[-1]
  gid = np.arange(c) // (c // groups)
  member = jnp.asarray((gid[:, None] == gid[None, :]).astype(np.float32) / (n * (c // groups)))
  st = jnp.einsum("bkc,cd->bkd", jnp.stack([s1, s2], axis=1), member,
                  precision=jax.lax.Precision.HIGHEST)  # (B, 2, C): group means per channel
  return _mean_rstd(st[:, 0], st[:, 1])


def stats_stacked(xf, groups):
  xg, axes = _grouped(xf, groups)
  st = jnp.mean(jnp.stack([xg, jnp.square(xg)], axis=-1), axes)  # (B, G, 2)
  return _mean_rstd(st[..., 0], st[..., 1])


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def _sum_moments(x, axes):
  """``(sum x, sum x**2)`` over ``axes`` as one variadic reduction."""
  return jax.lax.reduce((x, jnp.square(x)), (np.float32(0), np.float32(0)),
                        lambda a, b: (a[0] + b[0], a[1] + b[1]), axes)


@_sum_moments.defjvp
def _sum_moments_jvp(axes, primals, tangents):
  (x,), (t,) = primals, tangents
  return _sum_moments(x, axes), (jnp.sum(t, axes), jnp.sum(2.0 * x * t, axes))


def stats_variadic(xf, groups):
  """Both sums in one variadic reduction, so that ``var`` and ``rsqrt`` are elementwise in its
  two outputs and XLA could fuse them into the reduction's epilogue (no separate scale kernel)."""
  xg, axes = _grouped(xf, groups)
  count = float(np.prod([xg.shape[a] for a in axes]))
  s1, s2 = _sum_moments(xg, axes)
  return _mean_rstd(s1 / count, s2 / count)


GN = {"library": ORIGINAL, **{name: _variant(fn) for name, fn in [
    ("flax", stats_flax), ("grouped", stats_grouped), ("matmul", stats_matmul),
    ("stacked", stats_stacked), ("variadic", stats_variadic)]}}


def use(name):
  layers._xla_gn = GN[name]  # pylint: disable=protected-access


def check():
  """CPU: each variant's GroupNorm+swish (values, gradients, jvp) against ``flax``."""

  class M(nn.Module):
    @nn.compact
    def __call__(self, x):
      return nn.swish(layers.GroupNorm(dtype="float32", xla=True, two_stage=True)(x))

  out = {}
  for shape in [(4, 8, 8, 64), (3, 4, 4, 256), (2, 16, 16, 12)]:
    x = jax.random.normal(jax.random.PRNGKey(0), shape) * 1.7 + 0.4
    w = jax.random.normal(jax.random.PRNGKey(1), shape)
    use("flax")
    p = M().init(jax.random.PRNGKey(2), x)
    ref = nn.swish(nn.GroupNorm(num_groups=layers.num_groups(shape[-1]), epsilon=layers.GN_EPS)
                   .apply({"params": p["params"]["GroupNorm_0"]}, x))
    np.testing.assert_array_equal(ref, M().apply(p, x))  # "flax" is flax's formula
    p = jax.tree_util.tree_map(lambda a: a + 0.1 * jax.random.normal(jax.random.PRNGKey(3),
                                                                     a.shape), p)
    loss = lambda p, x: jnp.sum(M().apply(p, x) * w)
    tan = lambda p, x: jax.jvp(lambda y: M().apply(p, y), (x,), (w,))[1]
    y0 = M().apply(p, x)
    g0 = (jax.grad(loss, (0, 1))(p, x), tan(p, x))
    for name in GN:
      use(name)
      y = M().apply(p, x)
      g = (jax.grad(loss, (0, 1))(p, x), tan(p, x))
      err = max(float(jnp.max(jnp.abs(a - b)) / (jnp.max(jnp.abs(b)) + 1e-30))
                for a, b in zip(jax.tree_util.tree_leaves((y, g)),
                                jax.tree_util.tree_leaves((y0, g0))))
      out[f"{name} {shape}"] = err
      print(f"{name:8s} {str(shape):18s} max rel err vs flax (value, grads, jvp): {err:.2e}")
  use("flax")
  assert all(v < 1e-5 for v in out.values()), out
  return out


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--out", default="")
  p.add_argument("--fwd", default="flax,library,flax,library")
  p.add_argument("--profile", default="flax,library")
  p.add_argument("--train", default="bf16:flax,bf16:library,fp32:flax,fp32:library")
  p.add_argument("--budget", type=float, default=520.0)
  p.add_argument("--batch", type=int, default=128)
  p.add_argument("--check", action="store_true")
  args = p.parse_args()
  if args.check:
    check()
    return
  import probe  # pylint: disable=import-outside-toplevel
  os.makedirs(args.out, exist_ok=True)
  split = lambda s: [v for v in s.split(",") if v]
  t0 = time.perf_counter()
  log = lambda m: print(f"[{time.perf_counter() - t0:7.1f}s] {m}", flush=True)
  log(f"{jax.devices()[0].device_kind}, jax {jax.__version__}")
  runner = probe.Runner(argparse.Namespace(batch=args.batch, steps=15, tree_carry=False))
  base = "bf16_tb_ts"
  results = {}

  def dump():
    with open(os.path.join(args.out, "gn_stats.json"), "w") as f:
      json.dump({"device": jax.devices()[0].device_kind, "jax": jax.__version__,
                 "results": results}, f, indent=1)

  outs = {}
  for i, name in enumerate(split(args.fwd)):
    if time.perf_counter() - t0 > args.budget * 0.45:
      log(f"skipping forward {name}: over budget")
      continue
    use(name)
    key = f"fwd_{name}_{i}"
    os.system("rm -rf /tmp/probe_traces/fwd_*")  # one trace per directory: probe reads files[0]
    runner.results.pop("fwd_" + base + "@cast", None)
    outs[key] = runner.forward(base + "@cast", profile=name in split(args.profile) and
                               not any(k.startswith(f"fwd_{name}_") for k in outs))
    r = runner.results.pop("fwd_" + base + "@cast")
    results[key] = {k: v for k, v in r.items() if k != "profile"}
    if "profile" in r:
      gpu = [v for k, v in r["profile"]["threads"].items() if "GPU" in k and "busy_ms" in v]
      results[key]["gpu_busy_ms"] = gpu[0]["busy_ms"] / 5 if gpu else None
      results[key]["gpu_categories"] = r["profile"]["gpu_categories"]
    log(f"forward {name}: {results[key]['forward_ms']:.3f} ms pipelined "
        f"(busy {results[key].get('gpu_busy_ms')})")
    dump()
  if outs:
    ref = outs[next(iter(outs))]
    for key, o in outs.items():
      results[key]["rel_vs_first"] = float(jnp.linalg.norm((o - ref).astype(f32)) /
                                            jnp.linalg.norm(ref.astype(f32)))
  dump()
  for item in split(args.train):
    if time.perf_counter() - t0 > args.budget * 0.8:
      log(f"skipping train {item}: over budget")
      continue
    prec, name = item.split(":")
    use(name)
    spec = ("bf16_tb_ts" if prec == "bf16" else "fp32_tb_ts")
    runner.results.pop(spec, None)
    runner.compiled.pop(spec, None)
    runner.compile(spec)
    runner.time_one(spec, 20)
    r = runner.results.pop(spec)
    results[f"train_{prec}_{name}"] = {k: v for k, v in r.items() if k != "profile"}
    dump()
  print()
  for key, r in results.items():
    if "forward_ms" in r:
      cats = r.get("gpu_categories", {})
      kern = sum(v["kernels"] for v in cats.values()) if cats else "-"
      print(f"{key:>20} fwd {r['forward_ms']:.3f} ms  busy {r.get('gpu_busy_ms')}  kernels {kern}"
            f"  rel {r.get('rel_vs_first', 0):.2e}")
    elif "step_ms" in r:
      print(f"{key:>20} step {r['step_ms']:.2f} ms {r['img_s']:.0f} img/s compile "
            f"{r['compile_s']:.1f} s loss0 {r['first_loss']:.6f} gnorm0 "
            f"{r['first_grad_norm']:.4f}")
  log("done")


if __name__ == "__main__":
  main()
