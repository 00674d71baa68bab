"""Two model variants of ``probe.py`` compared in one process (run 22), so that clocks and lease
drift hit both alike. A spec is ``VARIANT[:PARAMS][@OPTIONS]``; PARAMS says which parameters the
forward and DDIM get: ``lib`` (default, ``Setup.inference_params``, as the library's samplers) or
``kernels`` (only the rank >= 2 leaves cast: ``inference_params`` before run 22); OPTIONS names
extra XLA options of the forward and DDIM jits (``XLA_OPTIONS``).

* the bf16 forward at batch 128: windows of 30 pipelined calls alternating A B A B ..., the
  outputs' difference, and a profile of 5 pipelined calls per spec (GPU busy, kernels by class);
* the library's DDIM sampler (one jitted loop): ms per network evaluation, from N vs 1 steps;
* the flat train step as ``train_and_evaluate`` runs it: loss and gradient norm at step 0, then
  alternating windows of steps.

Every jit loads the autotune results jaxgen ships (as the library's programs do).

    python experiments/bench/ab.py --specs bf16_tb_ts:kernels,bf16_tb_ts:lib --out r.json

Run 22 call 1 compared ``bf16_tb_ts`` with ``bf16_tb_ts_ss`` (``model.split_skips``, since
removed: NOTES.md run 22).
"""
import argparse
import glob
import gzip
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import probe  # pylint: disable=wrong-import-position
from jaxgen import parallel, solvers  # pylint: disable=wrong-import-position


def windows(fns, args_of, n, rounds):
  """ms per call of each function: ``rounds`` windows of ``n`` pipelined calls, alternating."""
  out = {k: [] for k in fns}
  for _ in range(rounds):
    for k, fn in fns.items():
      a = args_of(k)
      for _ in range(3):
        r = fn(*a)
      jax.block_until_ready(r)
      t0 = time.perf_counter()
      for _ in range(n):
        r = fn(*a)
      jax.block_until_ready(r)
      out[k].append((time.perf_counter() - t0) / n * 1e3)
  return out


# Per-executable XLA options to try on the forward (run 22, call 3).
XLA_OPTIONS = {
    "": {},
    # independent kernels of a command buffer (a block's shortcut and main branch) may overlap
    "concurrent": {"xla_gpu_graph_enable_concurrent_region": True},
    "same_shape_mof": {"xla_gpu_experimental_enable_same_shape_multi_output_fusion": True},
    "heroless": {"xla_gpu_experimental_enable_triton_heroless_priority_fusion": True},
    "nocmdbuf": {"xla_gpu_enable_command_buffer": ""},  # run 21 (fwd_cb.py)
}


def parse_spec(spec):
  """``VARIANT[:PARAMS][@OPTIONS]`` -> (variant, params kind, extra XLA options)."""
  base, _, opt = spec.partition("@")
  name, _, kind = base.partition(":")
  if opt not in XLA_OPTIONS:
    raise ValueError(f"unknown options {opt!r} in spec {spec!r}; expected one of "
                     f"{sorted(XLA_OPTIONS)}")
  return name, kind or "lib", XLA_OPTIONS[opt]


def spec_params(setup, params, kind):
  """The parameters a forward of spec kind ``kind`` gets (see the module docstring)."""
  if kind == "lib":
    return setup.inference_params(params)
  if kind == "kernels":
    dtype = jnp.dtype(setup.config.model.dtype)
    return jax.tree_util.tree_map(
        lambda p: p.astype(dtype) if jnp.issubdtype(p.dtype, jnp.floating) and p.ndim >= 2
        else p, params)
  raise ValueError(f"unknown parameter kind {kind!r}; expected 'lib' or 'kernels'")


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--out", required=True)
  p.add_argument("--specs", default="bf16_tb_ts:kernels,bf16_tb_ts:lib")
  p.add_argument("--train_specs", default="", help="default: --specs")
  p.add_argument("--batch", type=int, default=128)
  p.add_argument("--rounds", type=int, default=4)
  p.add_argument("--ddim_steps", type=int, default=20)
  p.add_argument("--steps", type=int, default=20)
  p.add_argument("--parts", default="fwd,profile,ddim,train")
  p.add_argument("--hlo_dir", default="", help="write each forward's optimized HLO here (gzip)")
  args = p.parse_args()
  args.tree_carry = False
  parts = set(args.parts.split(","))
  specs = args.specs.split(",")
  opts = parallel.autotune_options("shipped")
  kws = {}
  for s in specs:
    merged = dict(opts or {}, **parse_spec(s)[2])
    kws[s] = {"compiler_options": merged} if merged else {}
  res = {"xla_flags": os.environ.get("XLA_FLAGS", ""), "device": jax.devices()[0].device_kind,
         "jax": jax.__version__, "specs": specs, "autotune_options": opts}

  def save():
    with open(args.out, "w") as f:
      json.dump(res, f, indent=1)

  runner = probe.Runner(args)
  x = jax.random.normal(jax.random.PRNGKey(1), (args.batch, 32, 32, 3))
  t = jax.random.uniform(jax.random.PRNGKey(5), (args.batch,), minval=0.05, maxval=1.0)
  setups, params, fwd, outs = {}, {}, {}, {}
  for s in list(specs):
    name, kind, _ = parse_spec(s)
    setups[s] = probe.make_setup(name, args.batch)
    params[s] = spec_params(setups[s], runner.params_for(name, runner.state0.params), kind)
    fwd[s] = jax.jit(setups[s].model_fn, **kws[s])
    t0 = time.perf_counter()
    try:
      outs[s] = np.asarray(jax.block_until_ready(fwd[s](params[s], x, t))).astype(np.float64)
    except Exception as e:  # pylint: disable=broad-except
      res[f"error_{s}"] = repr(e)[:300]  # e.g. an XLA option this jaxlib does not know
      probe.log(f"{s} dropped: {res[f'error_{s}']}")
      specs.remove(s)
      del fwd[s]
      continue
    res[f"fwd_compile_s_{s}"] = time.perf_counter() - t0
    if args.hlo_dir:
      os.makedirs(args.hlo_dir, exist_ok=True)
      text = fwd[s].lower(params[s], x, t).compile().as_text()
      fname = f"hlo_fwd_{s.replace(':', '_').replace('@', '_')}.txt.gz"
      with open(os.path.join(args.hlo_dir, fname), "wb") as f:
        f.write(gzip.compress(text.encode()))
    probe.log(f"forward {s} compiled in {res[f'fwd_compile_s_{s}']:.1f} s")
  a = outs[specs[0]]
  for s in specs[1:]:
    res[f"fwd_rel_diff_{s}"] = float(np.linalg.norm(outs[s] - a) / np.linalg.norm(a))
    probe.log(f"forward {s} vs {specs[0]}: relative L2 difference {res[f'fwd_rel_diff_{s}']:.3g}")
  if "fwd" in parts:
    w = windows(fwd, lambda s: (params[s], x, t), 30, args.rounds)
    for s, v in w.items():
      res[f"forward_ms_{s}"], res[f"forward_ms_windows_{s}"] = min(v), v
      probe.log(f"forward {s}: min {min(v):.3f} ms, windows {[round(u, 3) for u in v]}")
    save()
  if "profile" in parts:
    for s in specs:
      tdir = f"/tmp/ab_traces/fwd_{s.replace(':', '_').replace('@', '_')}"
      jax.profiler.start_trace(tdir)
      for _ in range(5):
        r = fwd[s](params[s], x, t)
      jax.block_until_ready(r)
      jax.profiler.stop_trace()
      files = glob.glob(os.path.join(tdir, "**", "*.json.gz"), recursive=True)
      if files:
        summ = probe.summarize_trace(files[0], 5, top=25)
        gpu = {k: v for k, v in summ["threads"].items() if "GPU" in k}
        res[f"profile_{s}"] = {"gpu_categories": summ["gpu_categories"],
                               "gpu": {k: {kk: v.get(kk) for kk in ("busy_ms", "count", "top")}
                                       for k, v in gpu.items()}}
        for k, v in gpu.items():
          probe.log(f"  {s} {k}: busy {v.get('busy_ms', 0) / 5:.3f} ms/call, "
                    f"{v['count'] // 5} events/call")
        for cat, v in summ["gpu_categories"].items():
          probe.log(f"  {s} {cat:>16}: {v['ms_per_step']:.3f} ms/call in {v['kernels']} kernels")
    save()
  if "ddim" in parts:
    shape = (args.batch, 32, 32, 3)
    ddim = {}
    for s in specs:
      for n in (1, args.ddim_steps):
        ddim[s, n] = jax.jit(lambda p, key, s=s, n=n: solvers.ddim_sample(
            key, setups[s].process, lambda y, u: setups[s].model_fn(p, y, u), shape,
            num_steps=n)[0], **kws[s])
        jax.block_until_ready(ddim[s, n](params[s], jax.random.PRNGKey(0)))
    times = {k: [] for k in ddim}
    for i in range(3):
      for k, fn in ddim.items():
        t0 = time.perf_counter()
        jax.block_until_ready(fn(params[k[0]], jax.random.PRNGKey(i)))
        times[k].append(time.perf_counter() - t0)
    for s in specs:
      per = (min(times[s, args.ddim_steps]) - min(times[s, 1])) / (args.ddim_steps - 1) * 1e3
      res[f"ddim_ms_per_eval_{s}"] = per
      probe.log(f"DDIM {s}: {per:.3f} ms per evaluation")
    save()
  if "train" in parts:
    tspecs = args.train_specs.split(",") if args.train_specs else list(dict.fromkeys(
        parse_spec(s)[0] for s in specs))
    probe.OPTIONS["shipped"] = opts
    steps, states = {}, {}
    for s in tspecs:
      compiled = runner.compile(s + "@shipped")
      state = jax.tree_util.tree_map(jnp.copy, runner.states[s + "@shipped"])
      state, m = compiled(state, runner.batch_dev)
      res[f"loss0_{s}"], res[f"grad_norm0_{s}"] = float(m["loss"]), float(m["grad_norm"])
      res[f"train_compile_s_{s}"] = runner.results[s + "@shipped"]["compile_s"]
      res[f"train_temp_gib_{s}"] = runner.results[s + "@shipped"].get("temp_gib")
      probe.log(f"train {s}: loss0 {res[f'loss0_{s}']:.6f}, grad norm {res[f'grad_norm0_{s}']:.6f}")
      steps[s], states[s] = compiled, [state]
      save()

    def run(s):
      def f():  # the state is donated: always step from the newest one
        states[s][0], m = steps[s](states[s][0], runner.batch_dev)
        return m
      return f

    w = windows({s: run(s) for s in tspecs}, lambda s: (), args.steps, args.rounds)
    for s, v in w.items():
      res[f"step_ms_{s}"], res[f"step_ms_windows_{s}"] = min(v), v
      res[f"img_s_{s}"] = args.batch / min(v) * 1e3
      probe.log(f"train {s}: min {min(v):.2f} ms ({args.batch / min(v) * 1e3:.0f} img/s), "
                f"windows {[round(u, 2) for u in v]}")
  save()


if __name__ == "__main__":
  main()
