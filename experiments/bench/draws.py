"""Per-device cost of the global batch's randomness in a ``shard_map`` train step (issue 7).

A per-device train step (``training.data_parallel='shard_map'``) must draw exactly the rows of
the noise that a ``jit`` of the whole batch draws. Two ways, for one device's 128 CIFAR-10-shaped
rows out of a global batch of ``128 G`` (``G`` simulated devices, the offset traced as in the
step):
- ``whole``: draw for the global batch and slice the rows (jaxgen before run 26);
- ``rows``: ``parallel.rows_of_draw``: only the rows' threefry counters.
Each call draws what a DDPM++ step draws per example: the Gaussian noise and the dequantization
noise (uniform), both of the image's shape. Printed and written as JSON: ms per call (pipelined),
XLA's temporary memory, and whether the two ways agree bit for bit.

    python experiments/bench/draws.py --devices 1,2,8,64,256 --out draws.json
"""
import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxgen import parallel


def make(kind, rows, image, devices):
  shape = (rows,) + image
  total = rows * devices

  def whole(key, offset):
    k_z, k_u = jax.random.split(key)
    z = jax.random.normal(k_z, (total,) + image, jnp.float32)
    u = jax.random.uniform(k_u, (total,) + image, jnp.float32)
    return (jax.lax.dynamic_slice_in_dim(z, offset, rows, 0),
            jax.lax.dynamic_slice_in_dim(u, offset, rows, 0))

  def rows_only(key, offset):
    k_z, k_u = jax.random.split(key)
    z = parallel.rows_of_draw(lambda k, s: jax.random.normal(k, s, jnp.float32), k_z, shape,
                              offset, total)
    u = parallel.rows_of_draw(lambda k, s: jax.random.uniform(k, s, jnp.float32), k_u, shape,
                              offset, total)
    return z, u

  return jax.jit(whole if kind == "whole" else rows_only)


def time_calls(fn, key, offset, calls):
  out = fn(key, offset)
  jax.block_until_ready(out)
  start = time.perf_counter()
  for i in range(calls):
    out = fn(jax.random.fold_in(key, i), offset)
  jax.block_until_ready(out)
  return (time.perf_counter() - start) / calls * 1e3


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--devices", default="1,2,8,64,256")
  p.add_argument("--rows", type=int, default=128)
  p.add_argument("--calls", type=int, default=50)
  p.add_argument("--out", default="")
  args = p.parse_args()
  image = (32, 32, 3)
  key = jax.random.PRNGKey(0)
  results = []
  print(f"{'devices':>8} {'whole ms':>9} {'rows ms':>8} {'whole temp MiB':>15} "
        f"{'rows temp MiB':>14} equal")
  for g in (int(d) for d in args.devices.split(",")):
    offset = jnp.int32((g - 1) * args.rows)  # the last device's rows
    row = {"devices": g, "global_batch": g * args.rows}
    outs = {}
    for kind in ("whole", "rows"):
      fn = make(kind, args.rows, image, g)
      mem = fn.lower(key, offset).compile().memory_analysis()
      row[f"{kind}_temp_mib"] = (getattr(mem, "temp_size_in_bytes", 0) / 2**20
                                 if mem is not None else None)
      row[f"{kind}_ms"] = time_calls(fn, key, offset, args.calls)
      outs[kind] = [np.asarray(a) for a in fn(key, offset)]
    row["bit_identical"] = all(np.array_equal(a, b) for a, b in zip(outs["whole"], outs["rows"]))
    results.append(row)
    print(f"{g:>8} {row['whole_ms']:>9.3f} {row['rows_ms']:>8.3f} "
          f"{row['whole_temp_mib'] or 0:>15.1f} {row['rows_temp_mib'] or 0:>14.1f} "
          f"{row['bit_identical']}", flush=True)
  report = {"benchmark": "per-device draws of the global batch's noise (parallel.rows_of_draw)",
            "rows_per_device": args.rows, "image": image, "calls": args.calls,
            "device_kind": jax.devices()[0].device_kind, "jax_version": jax.__version__,
            "results": results}
  if args.out:
    with open(args.out, "w") as f:
      json.dump(report, f, indent=1)
    print("wrote", args.out)


if __name__ == "__main__":
  main()
