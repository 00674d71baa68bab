"""Profile and compare variants of the DDPM++ train step in one process (issue 7).

One call on a GPU host: compiles the real jitted train step of ``jaxgen.train.Setup`` for several
variants (model performance options, compute dtype, per-compile XLA options), times each on the
same device-resident batch from the same initial state, records the first-step loss (the variants
must agree on it), XLA's memory/cost analysis, and optionally a profiler trace (summarised here;
the raw trace and the optimised HLO go into ``probe_artifacts.tar`` for offline reading).

    python experiments/bench/probe.py --out DIR --seq bf16+trace,bf16@at0 \
        --par fp32,bf16_fused --profile bf16,fp32 --hlo bf16

A spec is ``VARIANT[@OPTIONS]``; ``+trace`` on a --seq entry traces its compilation.
--seq entries compile one after another (clean compile times); --par entries compile
concurrently in threads (their compile times overlap and are not comparable).
"""
import argparse
import collections
import concurrent.futures
import glob
import gzip
import io
import json
import os
import statistics
import sys
import tarfile
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from configs.cifar10 import vp_ddpmpp_continuous  # pylint: disable=wrong-import-position
from jaxgen import train  # pylint: disable=wrong-import-position
from jaxgen.models import layers  # pylint: disable=wrong-import-position

FWD_GFLOP_PER_IMAGE = 21.7
PEAK_TFLOPS = 790.0

VARIANTS = {
    "bf16": dict(dtype="bfloat16"),
    "fp32": dict(dtype="float32"),
    "bf16_fused": dict(dtype="bfloat16", fused_norm=True),
    "fp32_fused": dict(dtype="float32", fused_norm=True),
    "bf16_nodrop": dict(dtype="bfloat16", dropout=0.0),
    "bf16_fastdrop": dict(dtype="bfloat16", fast_dropout=True),
    "bf16_fused_fastdrop": dict(dtype="bfloat16", fused_norm=True, fast_dropout=True),
    "fp32_fused_fastdrop": dict(dtype="float32", fused_norm=True, fast_dropout=True),
    "bf16_remat": dict(dtype="bfloat16", remat=True),
    "bf16_ohwi": dict(dtype="bfloat16", kernel_layout="OHWI"),
    "bf16_ohwi_fastdrop": dict(dtype="bfloat16", kernel_layout="OHWI", fast_dropout=True),
    "fp32_ohwi": dict(dtype="float32", kernel_layout="OHWI"),
    "fp32_ohwi_fastdrop": dict(dtype="float32", kernel_layout="OHWI", fast_dropout=True),
    # run 14: the raveled gradient written once before the norm and Adam read it
    "bf16_mat": dict(dtype="bfloat16", kernel_layout="OHWI", fast_dropout=True,
                     materialize_grads=True),
    "fp32_mat": dict(dtype="float32", kernel_layout="OHWI", fast_dropout=True,
                     materialize_grads=True),
    # run 15: the time embedding added behind a barrier (no conv side input); fused GroupNorm
    "bf16_tb": dict(dtype="bfloat16", kernel_layout="OHWI", fast_dropout=True, temb_barrier=True),
    "fp32_tb": dict(dtype="float32", kernel_layout="OHWI", fast_dropout=True, temb_barrier=True),
    "bf16_fn": dict(dtype="bfloat16", kernel_layout="OHWI", fast_dropout=True, fused_norm=True),
    "bf16_tb_fn": dict(dtype="bfloat16", kernel_layout="OHWI", fast_dropout=True,
                       temb_barrier=True, fused_norm=True),
    "bf16_tb_ts": dict(dtype="bfloat16", kernel_layout="OHWI", fast_dropout=True,
                       temb_barrier=True, two_stage_grads=True),
    "fp32_tb_ts": dict(dtype="float32", kernel_layout="OHWI", fast_dropout=True,
                       temb_barrier=True, two_stage_grads=True),
    # run 17: GroupNorm+swish forward as one Pallas kernel; the forward without the barrier
    "bf16_tb_ts_pn": dict(dtype="bfloat16", kernel_layout="OHWI", fast_dropout=True,
                          temb_barrier=True, two_stage_grads=True, pallas_norm=True),
    "bf16_ts": dict(dtype="bfloat16", kernel_layout="OHWI", fast_dropout=True,
                    temb_barrier=False, two_stage_grads=True),
    # run 25: the defaults with the hand-written GroupNorm+swish backward (model.fused_norm)
    "bf16_tb_ts_fn": dict(dtype="bfloat16", kernel_layout="OHWI", fast_dropout=True,
                          temb_barrier=True, two_stage_grads=True, fused_norm=True),
    "fp32_tb_ts_fn": dict(dtype="float32", kernel_layout="OHWI", fast_dropout=True,
                          temb_barrier=True, two_stage_grads=True, fused_norm=True),
}
OPTIONS = {
    "": None,
    "at0": {"xla_gpu_autotune_level": 0},  # run 2: compiles in 85 s, but steps take seconds
    "at1": {"xla_gpu_autotune_level": 1},
    "notriton": {"xla_gpu_enable_triton_gemm": False},
    "notriton_at1": {"xla_gpu_enable_triton_gemm": False, "xla_gpu_autotune_level": 1},
    "nocmdbuf": {"xla_gpu_enable_command_buffer": ""},  # run 3 (via XLA_FLAGS): much slower
    "convfusion": {"xla_gpu_experimental_enable_conv_fusion": True},
    "graph2": {"xla_gpu_graph_min_graph_size": 2},
    # run 14: deterministic convolution algorithms (and no atomics) only: fewer candidates to tune
    "det": {"xla_gpu_exclude_nondeterministic_ops": True},
    "convfusion_graph2": {"xla_gpu_experimental_enable_conv_fusion": True,
                          "xla_gpu_graph_min_graph_size": 2},
}

T0 = time.perf_counter()


def log(msg):
  print(f"[{time.perf_counter() - T0:7.1f}s] {msg}", flush=True)


def make_setup(name, batch):
  config = vp_ddpmpp_continuous.get_config()
  config.training.batch_size = batch
  # The variants keep the meaning they had in runs 2-9 (before these became config defaults).
  config.model.kernel_layout, config.model.fast_dropout = "HWIO", False
  config.optim.materialize_grads = False
  config.model.temb_barrier = config.model.two_stage_grads = False
  for key, value in VARIANTS[name].items():
    if key in config.optim:
      config.optim[key] = value
    else:
      config.model[key] = value
  return train.Setup(config)


def categorize(label):
  """Kernel class from 'kernel name || HLO op' (convolution passes, GEMMs, fusion kinds)."""
  low = label.lower()
  if "fprop" in low or "cudnn-conv-bias-activation" in low or "cudnn-conv." in low:
    return "conv_fwd"
  if "dgrad" in low or "cudnn-conv-bw-input" in low:
    return "conv_dgrad"
  if "wgrad" in low or "cudnn-conv-bw-filter" in low:
    return "conv_wgrad"
  if "conv" in low and "cudnn" in low:
    return "conv_other"
  if "gemm" in low or "cublas" in low or "triton" in low or "dot" in low:
    return "gemm"
  if "transpose" in low:
    return "transpose_fusion"
  if "reduce" in low or "reduction" in low:
    return "reduce_fusion"
  if "memcpy" in low or "memset" in low or "copy" in low:
    return "copy"
  if "loop_" in low or "fusion" in low:
    return "loop_fusion"
  return "other"


def summarize_trace(path, steps, top=60):
  """Per-stream kernel time and the costliest kernels / HLO ops of a perfetto trace."""
  with gzip.open(path, "rt") as f:
    data = json.load(f)
  events = data["traceEvents"] if isinstance(data, dict) else data
  pnames, tnames = {}, {}
  for e in events:
    if e.get("ph") == "M" and e.get("name") == "process_name":
      pnames[e["pid"]] = e.get("args", {}).get("name", "")
    if e.get("ph") == "M" and e.get("name") == "thread_name":
      tnames[(e["pid"], e.get("tid"))] = e.get("args", {}).get("name", "")
  per_thread = collections.defaultdict(lambda: [0.0, 0])
  by_name = collections.defaultdict(lambda: collections.defaultdict(lambda: [0.0, 0]))
  spans = collections.defaultdict(list)
  for e in events:
    if e.get("ph") != "X":
      continue
    pname = pnames.get(e.get("pid"), "")
    tname = tnames.get((e.get("pid"), e.get("tid")), str(e.get("tid")))
    key = f"{pname} | {tname}"
    dur = float(e.get("dur", 0.0))
    per_thread[key][0] += dur
    per_thread[key][1] += 1
    args = e.get("args", {}) or {}
    label = args.get("hlo_op") or args.get("long_name") or e.get("name", "?")
    label = f"{e.get('name', '?')[:90]} || {str(label)[:120]}" if label != e.get("name") else label
    by_name[key][label][0] += dur
    by_name[key][label][1] += 1
    if "GPU" in pname or "device" in pname.lower():
      spans[key].append((float(e.get("ts", 0.0)), dur))
  out = {"threads": {}, "steps": steps}
  cats = collections.defaultdict(lambda: [0.0, 0])
  for key in by_name:
    if "GPU" not in key:
      continue
    for label, (t, n) in by_name[key].items():
      cats[categorize(label)][0] += t
      cats[categorize(label)][1] += n
  out["gpu_categories"] = {c: {"ms_per_step": round(t / 1e3 / steps, 3), "kernels": n // steps}
                           for c, (t, n) in sorted(cats.items(), key=lambda kv: -kv[1][0])}
  for key, (tot, n) in sorted(per_thread.items(), key=lambda kv: -kv[1][0]):
    entry = {"total_ms": tot / 1e3, "count": n, "per_step_ms": tot / 1e3 / steps}
    if key in spans and spans[key]:
      s = sorted(spans[key])
      busy, end = 0.0, -1e30
      for ts, d in s:
        if ts + d > end:
          busy += ts + d - max(ts, end)
          end = ts + d
      entry["busy_ms"] = busy / 1e3
      entry["wall_ms"] = (max(ts + d for ts, d in s) - s[0][0]) / 1e3
    items = sorted(by_name[key].items(), key=lambda kv: -kv[1][0])[:top]
    entry["top"] = [[name, round(t / 1e3 / steps, 4), n // max(steps, 1)] for name, (t, n) in items]
    out["threads"][key] = entry
  return out


def activate(params, seed=0):
  """Zero-initialised kernels (``init_scale=0``: ~1e-10) drawn at unit scale instead, so that
  the network's output is not ~0 and precision differences show in the loss and gradients."""
  rng = np.random.default_rng(seed)

  def fix(p):
    p = np.asarray(p)
    if p.ndim >= 2 and np.max(np.abs(p)) < 1e-6:
      fan_in = int(np.prod(p.shape[:-1]))
      return (rng.normal(size=p.shape) * 0.5 / np.sqrt(fan_in)).astype(np.float32)
    return p

  return jax.tree_util.tree_map(fix, params)


class Runner:
  def __init__(self, args):
    self.args = args
    self.batch = args.batch
    self.results = collections.OrderedDict()
    self.artifacts = {}
    base = make_setup("fp32", args.batch)
    cpu = jax.devices("cpu")[0]
    with jax.default_device(cpu):
      state = jax.jit(base.init_state)(jax.random.PRNGKey(0))
    state = state.replace(params=activate(state.params), ema_params=activate(state.ema_params))
    self.state0 = jax.device_put(state, jax.devices()[0])
    self.states = {}
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(args.batch, 32, 32, 3), dtype=np.uint8)
    self.batch_dev = {"image": jax.device_put(images)}
    self.compiled = {}

  def params_for(self, name, params):
    """The (HWIO) parameters in the variant's kernel layout."""
    layout = VARIANTS[name].get("kernel_layout", "HWIO")
    return params if layout == "HWIO" else layers.convert_kernel_layout(params, layout)

  def compile(self, spec, trace=False):
    name, _, opt = spec.partition("@")
    setup = make_setup(name, self.batch)
    state = self.state0.replace(params=self.params_for(name, self.state0.params),
                                ema_params=self.params_for(name, self.state0.ema_params))
    if self.args.tree_carry:  # runs 2-8: parameters and EMA as trees between steps
      step = jax.jit(setup.make_train_step(), donate_argnums=(0,))
    else:                     # as train_and_evaluate runs it since run 9
      step = jax.jit(setup.make_flat_train_step(), donate_argnums=(0,))
      state = jax.jit(setup.to_flat_state)(state)
    self.states[spec] = state
    t = time.perf_counter()
    lowered = step.lower(state, self.batch_dev)
    lower_s = time.perf_counter() - t
    tdir = os.path.join("/tmp/probe_traces", "compile_" + spec.replace("@", "_"))
    if trace:
      jax.profiler.start_trace(tdir, create_perfetto_trace=True)
    t = time.perf_counter()
    compiled = lowered.compile(compiler_options=OPTIONS[opt])
    compile_s = time.perf_counter() - t
    if trace:
      jax.profiler.stop_trace()
    res = self.results.setdefault(spec, {"spec": spec})
    res.update(lower_s=lower_s, compile_s=compile_s, options=OPTIONS[opt], **VARIANTS[name])
    try:
      mem = compiled.memory_analysis()
      res["temp_gib"] = mem.temp_size_in_bytes / 2**30
      res["arg_gib"] = mem.argument_size_in_bytes / 2**30
      res["out_gib"] = mem.output_size_in_bytes / 2**30
      res["alias_gib"] = mem.alias_size_in_bytes / 2**30
    except Exception as e:  # pylint: disable=broad-except
      res["memory_analysis_error"] = repr(e)[:200]
    try:
      ca = compiled.cost_analysis()
      ca = ca[0] if isinstance(ca, (list, tuple)) else ca
      res["xla_gflops"] = float(ca.get("flops", 0.0)) / 1e9
      res["xla_gbytes"] = float(ca.get("bytes accessed", 0.0)) / 1e9
    except Exception as e:  # pylint: disable=broad-except
      res["cost_analysis_error"] = repr(e)[:200]
    if trace:
      files = glob.glob(os.path.join(tdir, "**", "*.json.gz"), recursive=True)
      if files:
        summ = summarize_trace(files[0], 1, top=40)
        res["compile_trace"] = {k: {kk: v[kk] for kk in ("total_ms", "count", "top")}
                                for k, v in list(summ["threads"].items())[:12]}
    self.compiled[spec] = compiled
    log(f"compiled {spec}: {compile_s:.1f} s (lower {lower_s:.1f} s)")
    return compiled

  def time_one(self, spec, steps, profile=False, hlo=False):
    compiled = self.compiled[spec]
    res = self.results[spec]
    state = jax.tree_util.tree_map(jnp.copy, self.states[spec])
    state, m = compiled(state, self.batch_dev)
    res["first_loss"] = float(m["loss"])
    res["first_grad_norm"] = float(m["grad_norm"])
    for _ in range(3):
      state, m = compiled(state, self.batch_dev)
    jax.block_until_ready(m)
    windows = []
    for _ in range(2):
      t = time.perf_counter()
      for _ in range(steps):
        state, m = compiled(state, self.batch_dev)
      jax.block_until_ready(m)
      windows.append((time.perf_counter() - t) / steps)
    dt = min(windows)
    res.update(step_ms=dt * 1e3, step_ms_windows=[w * 1e3 for w in windows],
               img_s=self.batch / dt,
               mfu=self.batch / dt * 3 * FWD_GFLOP_PER_IMAGE * 1e9 / (PEAK_TFLOPS * 1e12),
               last_loss=float(m["loss"]))
    log(f"{spec}: {dt * 1e3:.2f} ms/step  {self.batch / dt:.0f} img/s  loss0 {res['first_loss']:.6f}")
    if profile:
      tdir = os.path.join("/tmp/probe_traces", "run_" + spec.replace("@", "_"))
      nprof = 3
      jax.profiler.start_trace(tdir, create_perfetto_trace=True)
      for _ in range(nprof):
        state, m = compiled(state, self.batch_dev)
      jax.block_until_ready(m)
      jax.profiler.stop_trace()
      files = glob.glob(os.path.join(tdir, "**", "*.json.gz"), recursive=True)
      if files:
        res["profile"] = summarize_trace(files[0], nprof)
        self.artifacts[f"trace_{spec}.json.gz"] = open(files[0], "rb").read()
        for key, v in res["profile"]["threads"].items():
          log(f"  {key}: {v['per_step_ms']:.2f} ms/step in {v['count'] // nprof} events"
              + (f", busy {v['busy_ms'] / nprof:.2f} ms/step" if "busy_ms" in v else ""))
        for cat, v in res["profile"]["gpu_categories"].items():
          log(f"  {cat:>16}: {v['ms_per_step']:.3f} ms/step in {v['kernels']} kernels")
    if hlo:
      self.artifacts[f"hlo_{spec}.txt.gz"] = gzip.compress(compiled.as_text().encode())
    del state

  def forward(self, spec, profile=False):
    """Forward ms of batch ``self.batch``: waited for per call, and pipelined (30 calls back to
    back, best of 3 windows); optionally a profile of 5 pipelined calls (GPU busy, host time).
    ``spec`` ``VARIANT[@cast]``: ``@cast`` casts the parameters to the compute dtype once,
    outside the timed function, as a sampler does before its loop."""
    name, _, opt = spec.partition("@")
    setup = make_setup(name, self.batch)
    params = self.params_for(name, self.state0.params)
    if opt == "cast":
      params = jax.tree_util.tree_map(lambda p: p.astype(VARIANTS[name]["dtype"]), params)
    x = jax.random.normal(jax.random.PRNGKey(1), (self.batch, 32, 32, 3))
    t_vec = jax.random.uniform(jax.random.PRNGKey(2), (self.batch,), minval=0.01, maxval=1.0)
    fwd = jax.jit(lambda p, x, t: setup.model_fn(p, x, t))
    t = time.perf_counter()
    out = jax.block_until_ready(fwd(params, x, t_vec))
    c = time.perf_counter() - t
    ts = []
    for _ in range(30):
      t = time.perf_counter()
      out = jax.block_until_ready(fwd(params, x, t_vec))
      ts.append(time.perf_counter() - t)
    windows = []
    for _ in range(3):
      t = time.perf_counter()
      for _ in range(30):
        out = fwd(params, x, t_vec)
      jax.block_until_ready(out)
      windows.append((time.perf_counter() - t) / 30)
    res = self.results.setdefault("fwd_" + spec, {"spec": "fwd_" + spec})
    res.update(forward_ms=min(windows) * 1e3, forward_ms_sync=statistics.median(ts) * 1e3,
               forward_compile_s=c, out_norm=float(jnp.linalg.norm(out)))
    log(f"forward {spec}: {res['forward_ms']:.2f} ms pipelined, {res['forward_ms_sync']:.2f} ms "
        f"waited for")
    if profile:
      self.artifacts[f"hlo_fwd_{spec}.txt.gz"] = gzip.compress(
          fwd.lower(params, x, t_vec).compile().as_text().encode())
      nprof = 5
      tdir = os.path.join("/tmp/probe_traces", "fwd_" + spec.replace("@", "_"))
      jax.profiler.start_trace(tdir, create_perfetto_trace=True)
      for _ in range(nprof):
        out = fwd(params, x, t_vec)
      jax.block_until_ready(out)
      jax.profiler.stop_trace()
      files = glob.glob(os.path.join(tdir, "**", "*.json.gz"), recursive=True)
      if files:
        res["profile"] = summarize_trace(files[0], nprof)
        self.artifacts[f"trace_fwd_{spec}.json.gz"] = open(files[0], "rb").read()
        for key, v in res["profile"]["threads"].items():
          if "GPU" in key or "python" in key:
            log(f"  {key}: {v['per_step_ms']:.2f} ms/call in {v['count'] // nprof} events"
                + (f", busy {v['busy_ms'] / nprof:.2f} ms/call" if "busy_ms" in v else ""))
        for cat, v in res["profile"]["gpu_categories"].items():
          log(f"  {cat:>16}: {v['ms_per_step']:.3f} ms/call in {v['kernels']} kernels")
    return out


def gn_micro():
  """Forward and forward+backward ms of ``norm_act(swish)`` per implementation and shape."""
  import flax.linen as nn  # pylint: disable=import-outside-toplevel
  from jaxgen.models import layers  # pylint: disable=import-outside-toplevel

  class NA(nn.Module):
    fused: bool
    dtype: str

    @nn.compact
    def __call__(self, x):
      return layers.norm_act(x, self.dtype, "swish", self.fused)

  out = {}
  for shape in [(128, 32, 32, 128), (128, 16, 16, 256), (128, 32, 32, 256)]:
    for dtype in ["bfloat16", "float32"]:
      x = jax.random.normal(jax.random.PRNGKey(0), shape, dtype) * 1.5 + 0.3
      w = jax.random.normal(jax.random.PRNGKey(1), shape, dtype)
      for fused in [False, True]:
        m = NA(fused, dtype)
        p = m.init(jax.random.PRNGKey(2), x)
        fwd = jax.jit(m.apply)
        bwd = jax.jit(jax.grad(lambda p, x: jnp.sum((m.apply(p, x) * w).astype(jnp.float32)),
                               argnums=(0, 1)))
        row = {}
        for name, fn in [("fwd", fwd), ("fwd_bwd", bwd)]:
          jax.block_until_ready(fn(p, x))
          ts = []
          for _ in range(20):
            t = time.perf_counter()
            jax.block_until_ready(fn(p, x))
            ts.append(time.perf_counter() - t)
          row[name + "_ms"] = statistics.median(ts) * 1e3
        key = f"{'x'.join(map(str, shape))}_{dtype}_{'fused' if fused else 'flax'}"
        out[key] = row
        log(f"gn {key}: fwd {row['fwd_ms']:.3f} ms, fwd+bwd {row['fwd_bwd_ms']:.3f} ms")
  return out


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--out", required=True)
  p.add_argument("--batch", type=int, default=128)
  p.add_argument("--steps", type=int, default=15)
  p.add_argument("--seq", default="")
  p.add_argument("--par", default="")
  p.add_argument("--profile", default="")
  p.add_argument("--hlo", default="")
  p.add_argument("--fwd", default="")
  p.add_argument("--budget", type=float, default=480.0)
  p.add_argument("--gn", action="store_true", help="GroupNorm+swish microbenchmark first")
  p.add_argument("--tree_carry", action="store_true",
                 help="jit make_train_step (runs 2-8) instead of the flat carry (run 9 on)")
  args = p.parse_args()
  os.makedirs(args.out, exist_ok=True)
  split = lambda s: [x for x in s.split(",") if x]
  log(f"{jax.devices()[0].device_kind}, jax {jax.__version__}")
  runner = Runner(args)
  log("initial state ready")
  profile, hlo = set(split(args.profile)), set(split(args.hlo))
  if args.gn:
    runner.results["gn_micro"] = gn_micro()
  order = []

  def dump():
    with open(os.path.join(args.out, "probe.json"), "w") as f:
      json.dump({"device": jax.devices()[0].device_kind, "jax": jax.__version__,
                 "batch": args.batch, "results": runner.results}, f, indent=1)

  for item in split(args.seq):
    spec, trace = item.split("+")[0], item.endswith("+trace")
    if time.perf_counter() - T0 > args.budget * 0.6:
      log(f"skipping {spec}: over budget")
      continue
    try:
      runner.compile(spec, trace=trace)
    except Exception as e:  # pylint: disable=broad-except
      log(f"compile {spec} failed: {e!r}"[:400])
      runner.results.setdefault(spec, {"spec": spec})["error"] = repr(e)[:400]
      continue
    runner.time_one(spec, args.steps, spec in profile, spec in hlo)
    order.append(spec)
    dump()
  par = split(args.par)
  if par and time.perf_counter() - T0 < args.budget * 0.6:
    with concurrent.futures.ThreadPoolExecutor(len(par)) as ex:
      futs = {ex.submit(runner.compile, spec): spec for spec in par}
      for fut in concurrent.futures.as_completed(futs):
        try:
          fut.result()
        except Exception as e:  # pylint: disable=broad-except
          log(f"compile {futs[fut]} failed: {e!r}"[:400])
    for spec in par:
      if spec in runner.compiled and time.perf_counter() - T0 < args.budget:
        runner.time_one(spec, args.steps, spec in profile, spec in hlo)
        order.append(spec)
        dump()
  outs = {}
  for name in split(args.fwd):
    if time.perf_counter() - T0 < args.budget:
      outs[name] = runner.forward(name, profile=name in profile)
  if len(outs) > 1:
    names = list(outs)
    ref = outs[names[0]]
    for n in names[1:]:
      runner.results["fwd_" + n]["rel_vs_" + names[0]] = float(
          jnp.linalg.norm(outs[n] - ref) / jnp.linalg.norm(ref))
  dump()
  buf = io.BytesIO()
  with tarfile.open(fileobj=buf, mode="w") as tar:
    total = 0
    for name, blob in sorted(runner.artifacts.items(), key=lambda kv: len(kv[1])):
      if total + len(blob) > 15 * 2**20:
        log(f"artifact {name} left out ({len(blob) / 2**20:.1f} MiB)")
        continue
      info = tarfile.TarInfo(name)
      info.size = len(blob)
      tar.addfile(info, io.BytesIO(blob))
      total += len(blob)
  with open(os.path.join(args.out, "probe_artifacts.tar"), "wb") as f:
    f.write(buf.getvalue())
  print()
  print(f"{'spec':>24} {'compile s':>9} {'ms/step':>8} {'img/s':>7} {'MFU':>6} {'temp GiB':>8} "
        f"{'loss0':>10} {'gnorm0':>9}")
  for spec, r in runner.results.items():
    if "step_ms" in r:
      print(f"{spec:>24} {r['compile_s']:>9.1f} {r['step_ms']:>8.2f} {r['img_s']:>7.0f} "
            f"{r['mfu']:>6.1%} {r.get('temp_gib', float('nan')):>8.2f} {r['first_loss']:>10.6f} "
            f"{r['first_grad_norm']:>9.4f}")
    elif "forward_ms" in r:
      print(f"{spec:>24} fwd {r['forward_ms']:.2f} ms  rel {r.get([k for k in r if k.startswith('rel_vs')][0]) if any(k.startswith('rel_vs') for k in r) else '-'}")
  log("done")


if __name__ == "__main__":
  main()
