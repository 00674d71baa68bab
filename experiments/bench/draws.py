"""Per-device cost of the global batch's randomness in a ``shard_map`` train step (issue 7).

A per-device train step (``training.data_parallel='shard_map'``) draws exactly the rows of the
noise that a ``jit`` of the whole batch draws: ``parallel.global_batch_draw`` draws for the global
batch of ``128 G`` rows (``G`` devices) and slices the device's 128 (the offset traced, as in the
step). This times that (``whole``) against a plain draw of 128 rows (``local``: other numbers,
the cost floor) for simulated ``G``, on one device. Each draw is what a DDPM++ step draws per
example: Gaussian noise and dequantization noise (uniform), of CIFAR-10's image shape.
Printed and written as JSON: ms per jitted call (pipelined; includes dispatch), ms per draw
inside one jitted loop of ``--calls`` draws (device time) and XLA's temporary memory.

    python experiments/bench/draws.py --devices 1,2,8,64,256 --calls 200 --out draws.json
"""
import argparse
import json
import time

import jax
import jax.numpy as jnp


def make(kind, rows, image, devices):
  shape = (rows,) + image
  total = rows * devices

  def whole(key, offset):
    k_z, k_u = jax.random.split(key)
    z = jax.random.normal(k_z, (total,) + image, jnp.float32)
    u = jax.random.uniform(k_u, (total,) + image, jnp.float32)
    return (jax.lax.dynamic_slice_in_dim(z, offset, rows, 0),
            jax.lax.dynamic_slice_in_dim(u, offset, rows, 0))

  def local(key, offset):
    del offset
    k_z, k_u = jax.random.split(key)
    return (jax.random.normal(k_z, shape, jnp.float32),
            jax.random.uniform(k_u, shape, jnp.float32))

  return jax.jit(whole if kind == "whole" else local)


def make_loop(kind, rows, image, devices, iterations):
  """``iterations`` draws in one jitted loop (no dispatch per draw), each reduced to a sum."""
  fn = make(kind, rows, image, devices)

  def loop(key, offset):
    def body(i, acc):
      z, u = fn(jax.random.fold_in(key, i), offset)
      return acc + jnp.sum(z) + jnp.sum(u)
    return jax.lax.fori_loop(0, iterations, body, jnp.float32(0))

  return jax.jit(loop)


def time_loop(fn, key, offset, iterations):
  jax.block_until_ready(fn(key, offset))
  start = time.perf_counter()
  jax.block_until_ready(fn(jax.random.fold_in(key, 1), offset))
  return (time.perf_counter() - start) / iterations * 1e3


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
  print(f"{'devices':>8} {'whole ms':>9} {'local ms':>9} {'in loop: whole':>15} {'local':>6} "
        f"{'whole temp MiB':>15} {'local temp MiB':>15}")
  for g in (int(d) for d in args.devices.split(",")):
    offset = jnp.int32((g - 1) * args.rows)  # the last device's rows
    row = {"devices": g, "global_batch": g * args.rows}
    for kind in ("whole", "local"):
      fn = make(kind, args.rows, image, g)
      mem = fn.lower(key, offset).compile().memory_analysis()
      row[f"{kind}_temp_mib"] = (getattr(mem, "temp_size_in_bytes", 0) / 2**20
                                 if mem is not None else None)
      row[f"{kind}_ms"] = time_calls(fn, key, offset, args.calls)
      row[f"{kind}_ms_in_loop"] = time_loop(make_loop(kind, args.rows, image, g, args.calls),
                                            key, offset, args.calls)
    results.append(row)
    print(f"{g:>8} {row['whole_ms']:>9.3f} {row['local_ms']:>9.3f} "
          f"{row['whole_ms_in_loop']:>15.4f} {row['local_ms_in_loop']:>6.4f} "
          f"{row['whole_temp_mib'] or 0:>15.1f} {row['local_temp_mib'] or 0:>15.1f}", flush=True)
  report = {"benchmark": "per-device draws of the global batch's noise (parallel.global_batch_draw)",
            "rows_per_device": args.rows, "image": image, "calls": args.calls,
            "device_kind": jax.devices()[0].device_kind, "jax_version": jax.__version__,
            "results": results}
  if args.out:
    with open(args.out, "w") as f:
      json.dump(report, f, indent=1)
    print("wrote", args.out)


if __name__ == "__main__":
  main()
