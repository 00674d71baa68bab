"""Command-buffer update mode and allocator: forward and train-step timing in one process (run 16).

XLA records the kernels between cuDNN convolutions as CUDA graphs ("command buffers"). When a
buffer address that a graph uses changes between executions, XLA updates the graph's nodes on the
host before replaying it; on this VM that host work is part of what sets the bf16 forward and step
times (NOTES.md runs 6-8, 16). ``--xla_gpu_command_buffer_update_mode`` with the VMM allocator
(``XLA_PYTHON_CLIENT_ALLOCATOR=vmm``) gives temporaries stable virtual addresses instead.

Run one process per setting (the update mode and the allocator are fixed when JAX starts):

    XLA_FLAGS=... XLA_PYTHON_CLIENT_ALLOCATOR=vmm python experiments/bench/cmdbuf.py \
        --out r.json [--train]

Correctness: the forward is evaluated on three different inputs one by one (each waited for),
then 12 times back to back, cycling through the inputs; every pipelined output must equal the
waited-for output of its own input bit for bit (a graph replayed with a stale input or output
address would repeat another input's result). The train step records its first and last loss.
"""
import argparse
import json
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import probe  # pylint: disable=wrong-import-position

SPEC = "bf16_tb_ts"


def forward(runner, name, batch, res):
  setup = probe.make_setup(name, batch)
  params = runner.params_for(name, runner.state0.params)
  params = jax.tree_util.tree_map(lambda p: p.astype(jnp.bfloat16), params)
  xs = [jax.random.normal(jax.random.PRNGKey(10 + i), (batch, 32, 32, 3)) for i in range(3)]
  ts = [jax.random.uniform(jax.random.PRNGKey(20 + i), (batch,), minval=0.01, maxval=1.0)
        for i in range(3)]
  fwd = jax.jit(lambda p, x, t: setup.model_fn(p, x, t))
  t0 = time.perf_counter()
  jax.block_until_ready(fwd(params, xs[0], ts[0]))
  res["forward_compile_s"] = time.perf_counter() - t0
  ref = [np.asarray(jax.block_until_ready(fwd(params, xs[i], ts[i]))) for i in range(3)]
  outs = [fwd(params, xs[i % 3], ts[i % 3]) for i in range(12)]
  diffs = [float(np.max(np.abs(np.asarray(o, np.float32) - ref[i % 3].astype(np.float32))))
           for i, o in enumerate(outs)]
  res["pipelined_max_abs_diff"] = max(diffs)
  res["inputs_differ"] = float(np.max(np.abs(ref[0].astype(np.float32)
                                             - ref[1].astype(np.float32))))
  sync = []
  for _ in range(30):
    t0 = time.perf_counter()
    jax.block_until_ready(fwd(params, xs[0], ts[0]))
    sync.append(time.perf_counter() - t0)
  windows, windows_cycle = [], []
  for _ in range(3):
    t0 = time.perf_counter()
    for _ in range(30):
      out = fwd(params, xs[0], ts[0])
    jax.block_until_ready(out)
    windows.append((time.perf_counter() - t0) / 30)
    t0 = time.perf_counter()
    for i in range(30):
      out = fwd(params, xs[i % 3], ts[i % 3])
    jax.block_until_ready(out)
    windows_cycle.append((time.perf_counter() - t0) / 30)
  res.update(forward_ms=min(windows) * 1e3, forward_ms_windows=[w * 1e3 for w in windows],
             forward_ms_cycling_inputs=min(windows_cycle) * 1e3,
             forward_ms_sync=statistics.median(sync) * 1e3,
             out_norm=float(np.linalg.norm(ref[0].astype(np.float32))))
  probe.log(f"forward {name}: {res['forward_ms']:.2f} ms pipelined ({res['forward_ms_cycling_inputs']:.2f} "
            f"cycling inputs), {res['forward_ms_sync']:.2f} waited for; pipelined vs waited-for max "
            f"|diff| {res['pipelined_max_abs_diff']:.3g} (inputs differ by {res['inputs_differ']:.3g})")


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--out", required=True)
  p.add_argument("--label", default="")
  p.add_argument("--batch", type=int, default=128)
  p.add_argument("--steps", type=int, default=20)
  p.add_argument("--train", action="store_true")
  p.add_argument("--spec", default=SPEC)
  args = p.parse_args()
  args.tree_carry = False
  res = {"label": args.label, "xla_flags": os.environ.get("XLA_FLAGS", ""),
         "allocator": os.environ.get("XLA_PYTHON_CLIENT_ALLOCATOR", ""),
         "device": jax.devices()[0].device_kind, "jax": jax.__version__}
  probe.log(f"{res['device']} jax {res['jax']} XLA_FLAGS={res['xla_flags']!r} "
            f"allocator={res['allocator']!r}")

  def dump():
    with open(args.out, "w") as f:
      json.dump(res, f, indent=1)

  runner = probe.Runner(args)
  probe.log("initial state ready")
  forward(runner, args.spec, args.batch, res)
  dump()
  if args.train:
    runner.compile(args.spec)
    runner.time_one(args.spec, args.steps)
    r = runner.results[args.spec]
    res["train"] = {k: r[k] for k in ("compile_s", "lower_s", "step_ms", "step_ms_windows", "img_s",
                                      "mfu", "first_loss", "first_grad_norm", "last_loss",
                                      "temp_gib") if k in r}
  try:
    stats = jax.devices()[0].memory_stats() or {}
    res["peak_gib"] = stats.get("peak_bytes_in_use", 0) / 2**30
  except Exception as e:  # pylint: disable=broad-except
    res["memory_stats_error"] = repr(e)[:200]
  dump()
  probe.log("done")


if __name__ == "__main__":
  main()
