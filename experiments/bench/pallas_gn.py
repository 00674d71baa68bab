"""GroupNorm+swish as one Pallas kernel (``model.pallas_norm``) against XLA's fusions (run 17).

1. Micro-benchmark on the DDPM++ activation shapes (batch 128, bfloat16 in and out): XLA's
   flax GroupNorm + swish, as the network computes it, against ``pallas_norm.gn_act`` for a few
   (channel block, row block, warps) settings; relative error against the float32 formula.
2. The whole bf16 forward with ``pallas_norm`` off and on (and without the time-embedding
   barrier), same parameters and inputs: ms per call (pipelined, 3 windows of 30) and the
   relative difference of the outputs.

    python experiments/bench/pallas_gn.py --out r.json [--micro_only]
"""
import argparse
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
import probe  # pylint: disable=wrong-import-position
from jaxgen.models import layers, pallas_norm  # pylint: disable=wrong-import-position

SHAPES = [(128, 32, 32, 128), (128, 32, 32, 256), (128, 16, 16, 256), (128, 8, 8, 256),
          (128, 4, 4, 256)]
SETTINGS = [(32, 64, 4), (32, 128, 4), (32, 32, 2), (64, 64, 4), (16, 64, 2), (32, 256, 8)]


def pipelined_ms(f, *args, n=30, windows=3):
  jax.block_until_ready(f(*args))
  best = float("inf")
  for _ in range(windows):
    t0 = time.perf_counter()
    for _ in range(n):
      out = f(*args)
    jax.block_until_ready(out)
    best = min(best, (time.perf_counter() - t0) / n)
  return best * 1e3


def rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.linalg.norm(a - b) / np.linalg.norm(a))


def micro(res):
  rows = []
  for shape in SHAPES:
    c = shape[-1]
    groups = layers.num_groups(c)
    k = jax.random.split(jax.random.PRNGKey(c + shape[1]), 3)
    x = (jax.random.normal(k[0], shape) * 1.5 + 0.3).astype(jnp.bfloat16)
    scale = 1 + 0.2 * jax.random.normal(k[1], (c,))
    bias = 0.2 * jax.random.normal(k[2], (c,))
    ref32 = pallas_norm.reference_gn_act(x, scale, bias, groups, True, jnp.float32)

    def xla(x, s, b):
      y = nn.GroupNorm(num_groups=groups, epsilon=1e-6, dtype=jnp.bfloat16).apply(
          {"params": {"scale": s, "bias": b}}, x)
      return nn.swish(y)

    row = {"shape": list(shape), "xla_ms": pipelined_ms(jax.jit(xla), x, scale, bias),
           "xla_rel": rel(ref32, jax.jit(xla)(x, scale, bias).astype(jnp.float32))}
    for cb, rb, warps in SETTINGS:
      key = f"pallas_{cb}_{rb}_{warps}"
      if not pallas_norm.pallas_supported(shape, groups, cb, rb):
        continue
      f = jax.jit(lambda x, s, b, cb=cb, rb=rb, w=warps: pallas_norm.gn_act(
          x, s, b, groups, True, jnp.bfloat16, channel_block=cb, row_block=rb, num_warps=w))
      try:
        y = f(x, scale, bias)
        row[key + "_rel"] = rel(ref32, y.astype(jnp.float32))
        row[key + "_ms"] = pipelined_ms(f, x, scale, bias)
      except Exception as e:  # pylint: disable=broad-except
        row[key + "_error"] = repr(e)[:300]
    best = min((v, k) for k, v in row.items() if k.startswith("pallas") and k.endswith("_ms")) \
        if any(k.startswith("pallas") and k.endswith("_ms") for k in row) else (None, None)
    probe.log(f"{shape}: xla {row['xla_ms']:.3f} ms, best pallas {best[1]} {best[0]}; "
              + ", ".join(f"{k}={v:.3g}" for k, v in row.items() if k.endswith("_ms")
                          and k.startswith("pallas")))
    rows.append(row)
    res["micro"] = rows


def forward(res, specs, batch, ref_spec=""):
  args = argparse.Namespace(batch=batch, tree_carry=False, steps=1)
  runner = probe.Runner(args)
  xs = jax.random.normal(jax.random.PRNGKey(10), (batch, 32, 32, 3))
  ts = jax.random.uniform(jax.random.PRNGKey(20), (batch,), minval=0.01, maxval=1.0)
  outs, times = {}, {}
  fns = {}
  for name in specs:
    setup = probe.make_setup(name, batch)
    params = runner.params_for(name, runner.state0.params)
    params = jax.tree_util.tree_map(lambda p: p.astype(jnp.bfloat16), params)
    fwd = jax.jit(lambda p, x, t, setup=setup: setup.model_fn(p, x, t))
    t0 = time.perf_counter()
    outs[name] = np.asarray(jax.block_until_ready(fwd(params, xs, ts)), np.float32)
    probe.log(f"{name}: compiled {time.perf_counter() - t0:.1f} s")
    fns[name] = (fwd, params)
  if ref_spec:  # outputs only: every timed variant against a float32 evaluation
    setup = probe.make_setup(ref_spec, batch)
    params = jax.tree_util.tree_map(lambda p: p.astype(jnp.bfloat16),
                                    runner.params_for(ref_spec, runner.state0.params))
    outs[ref_spec] = np.asarray(jax.jit(setup.model_fn)(params, xs, ts), np.float32)
    res["rel_vs_" + ref_spec] = {name: rel(outs[ref_spec], outs[name]) for name in specs}
    probe.log(f"rel vs {ref_spec}: {res['rel_vs_' + ref_spec]}")
  for rep in range(2):  # alternate, twice
    for name in specs:
      fwd, params = fns[name]
      ms = pipelined_ms(fwd, params, xs, ts)
      times.setdefault(name, []).append(ms)
  base = specs[0]
  res["forward"] = {name: {"ms": times[name], "rel_vs_" + base: rel(outs[base], outs[name])}
                    for name in specs}
  for name in specs:
    probe.log(f"forward {name}: {min(times[name]):.2f} ms ({times[name]}), rel vs {base} "
              f"{res['forward'][name]['rel_vs_' + base]:.3g}")


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--out", required=True)
  p.add_argument("--batch", type=int, default=128)
  p.add_argument("--micro_only", action="store_true")
  p.add_argument("--specs", default="bf16_tb_ts,bf16_tb_ts_pn,bf16_ts")
  p.add_argument("--ref", default="fp32_tb_ts", help="spec whose output the others are compared "
                 "with (not timed); '' for none")
  args = p.parse_args()
  res = {"device": jax.devices()[0].device_kind, "jax": jax.__version__,
         "xla_flags": os.environ.get("XLA_FLAGS", "")}
  probe.log(f"{res['device']} jax {res['jax']}")

  def dump():
    with open(args.out, "w") as f:
      json.dump(res, f, indent=1)
  try:
    micro(res)
  except Exception as e:  # pylint: disable=broad-except
    res["micro_error"] = repr(e)[:1000]
    probe.log(f"micro failed: {e!r}"[:1000])
  dump()
  if not args.micro_only:
    forward(res, args.specs.split(","), args.batch, args.ref)
  dump()
  probe.log("done")


if __name__ == "__main__":
  main()
