"""bf16 forward with and without XLA command buffers, as per-executable options, in one process
(run 21). The two executables run the same kernels; windows of 30 pipelined calls alternate
between them (A B A B ...), so that clocks and lease drift hit both alike. The same comparison for
the library's DDIM sampler (one jitted loop): ms per network evaluation from 20 vs 1 steps.

    python experiments/bench/fwd_cb.py --out r.json
"""
import argparse
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import probe  # pylint: disable=wrong-import-position
from jaxgen import solvers  # pylint: disable=wrong-import-position

OPTIONS = {"default": None, "nocmdbuf": {"xla_gpu_enable_command_buffer": ""}}


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--out", required=True)
  p.add_argument("--batch", type=int, default=128)
  p.add_argument("--spec", default="bf16_tb_ts")
  p.add_argument("--rounds", type=int, default=4)
  p.add_argument("--ddim_steps", type=int, default=20)
  args = p.parse_args()
  args.tree_carry = False
  res = {"xla_flags": os.environ.get("XLA_FLAGS", ""), "device": jax.devices()[0].device_kind,
         "jax": jax.__version__, "spec": args.spec}
  runner = probe.Runner(args)
  setup = probe.make_setup(args.spec, args.batch)
  params = setup.inference_params(runner.params_for(args.spec, runner.state0.params))
  x = jax.random.normal(jax.random.PRNGKey(1), (args.batch, 32, 32, 3))
  t = jax.random.uniform(jax.random.PRNGKey(5), (args.batch,), minval=0.05, maxval=1.0)
  fns, outs = {}, {}
  for name, opts in OPTIONS.items():
    kw = {"compiler_options": opts} if opts else {}
    fns[name] = jax.jit(lambda p, x, t: setup.model_fn(p, x, t), **kw)
    t0 = time.perf_counter()
    outs[name] = np.asarray(jax.block_until_ready(fns[name](params, x, t))).astype(np.float32)
    res[f"compile_s_{name}"] = time.perf_counter() - t0
  res["max_abs_diff_between"] = float(np.max(np.abs(outs["default"] - outs["nocmdbuf"])))
  windows = {name: [] for name in fns}
  for _ in range(args.rounds):
    for name, fn in fns.items():
      for _ in range(3):
        fn(params, x, t)
      jax.block_until_ready(fn(params, x, t))
      t0 = time.perf_counter()
      for _ in range(30):
        out = fn(params, x, t)
      jax.block_until_ready(out)
      windows[name].append((time.perf_counter() - t0) / 30 * 1e3)
  for name, w in windows.items():
    res[f"forward_ms_{name}"] = min(w)
    res[f"forward_ms_windows_{name}"] = w
    probe.log(f"forward {name}: min {min(w):.3f} ms, median {sorted(w)[len(w) // 2]:.3f}, "
              f"windows {[round(v, 3) for v in w]}")
  probe.log(f"outputs differ by {res['max_abs_diff_between']:.3g} (max abs)")

  shape = (args.batch, 32, 32, 3)
  ddim = {}
  for name, opts in OPTIONS.items():
    kw = {"compiler_options": opts} if opts else {}
    for n in (1, args.ddim_steps):
      ddim[name, n] = jax.jit(lambda p, key, n=n: solvers.ddim_sample(
          key, setup.process, lambda x, t: setup.model_fn(p, x, t), shape, num_steps=n)[0], **kw)
      jax.block_until_ready(ddim[name, n](params, jax.random.PRNGKey(0)))
  times = {k: [] for k in ddim}
  for i in range(3):
    for k, fn in ddim.items():
      t0 = time.perf_counter()
      jax.block_until_ready(fn(params, jax.random.PRNGKey(i)))
      times[k].append(time.perf_counter() - t0)
  for name in OPTIONS:
    per = (min(times[name, args.ddim_steps]) - min(times[name, 1])) / (args.ddim_steps - 1) * 1e3
    res[f"ddim_ms_per_eval_{name}"] = per
    probe.log(f"DDIM {name}: {per:.3f} ms per evaluation ({args.ddim_steps} steps "
              f"{min(times[name, args.ddim_steps]):.3f} s)")
  with open(args.out, "w") as f:
    json.dump(res, f, indent=1)


if __name__ == "__main__":
  main()
