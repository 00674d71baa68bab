"""Data-parallel scaling benchmark: training images/s on 1 device and on all visible devices.

    python experiments/bench/scaling.py --out experiments/bench/results/scaling_h200x2.json

Defaults: the DDPM++ CIFAR-10 config (``configs/cifar10/vp_ddpmpp_continuous.py``), 128 images per
device, the training loop's own jitted step (``jaxgen.train.make_sharded_train_step``: preprocessing,
loss, gradients, Adam, EMA; parameters and EMA carried flat with ``optim.flat_update``) with a
replicated carry and a batch sharded over a ``parallel.make_mesh`` of the first ``n`` devices, and
jaxgen's default XLA flags (``--no_default_xla_flags`` leaves them out), as ``jaxgen.main`` runs
it. Each step's batch comes from host memory through ``parallel.host_local_to_global`` as in the
training loop (synthetic uint8 images, so no data set is needed; ``--device_resident``
keeps one batch on the devices instead). Scaling efficiency = img/s on all devices / (number of
devices x img/s on one). Prints a table and writes a JSON file.

Override config fields with ``--set model.dtype=bfloat16`` (repeatable; values parsed as Python
literals when possible).
"""
from __future__ import annotations

import argparse
import ast
import datetime
import importlib.util
import json
import os
import platform
import statistics
import sys
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_CONFIG = os.path.join("configs", "cifar10", "vp_ddpmpp_continuous.py")


def load_config(path: str, overrides):
  """``get_config()`` of a config file, with ``key.sub=value`` overrides applied."""
  if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)
  full = path if os.path.isabs(path) else os.path.join(REPO_ROOT, path)
  if not os.path.exists(full):
    raise ValueError(f"config file {path!r} does not exist (looked at {full})")
  spec = importlib.util.spec_from_file_location("bench_config", full)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  for item in overrides:
    if "=" not in item:
      raise ValueError(f"--set {item!r} must look like key.sub=value")
    key, raw = item.split("=", 1)
    try:
      value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
      value = raw
    node = config
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    if leaf not in node:
      raise ValueError(f"--set {item!r}: config has no field {key!r}")
    node[leaf] = value
  return config


def parse_device_counts(text: str, available: int):
  counts = []
  for part in text.split(","):
    part = part.strip()
    n = available if part == "all" else int(part)
    if not 1 <= n <= available:
      raise ValueError(f"--devices entry {part!r} is not in [1, {available}] (visible devices)")
    if n not in counts:
      counts.append(n)
  return counts


def _union(intervals):
  """Merged, sorted ``[(start, end)]`` of possibly overlapping intervals."""
  out = []
  for a, b in sorted(intervals):
    if out and a <= out[-1][1]:
      out[-1][1] = max(out[-1][1], b)
    else:
      out.append([a, b])
  return out


def _intersection_length(xs, ys):
  """Total length of the intersection of two merged interval lists."""
  i = j = 0
  total = 0.0
  while i < len(xs) and j < len(ys):
    lo, hi = max(xs[i][0], ys[j][0]), min(xs[i][1], ys[j][1])
    total += max(0.0, hi - lo)
    if xs[i][1] < ys[j][1]:
      i += 1
    else:
      j += 1
  return total


def communication_profile(trace_path, steps):
  """Per GPU of a ``jax.profiler`` trace (perfetto JSON, gzipped): ms per step of compute kernels
  (union over streams), of NCCL kernels, of NCCL time that overlaps compute and that does not
  (exposed), the wall span of the kernels, and the NCCL kernels by name."""
  import gzip  # pylint: disable=import-outside-toplevel
  from probe import categorize  # pylint: disable=import-outside-toplevel
  with gzip.open(trace_path, "rt") as f:
    data = json.load(f)
  events = data["traceEvents"] if isinstance(data, dict) else data
  pnames = {e["pid"]: e.get("args", {}).get("name", "") for e in events
            if e.get("ph") == "M" and e.get("name") == "process_name"}
  kernels = {}
  for e in events:
    if e.get("ph") == "X" and "GPU" in pnames.get(e.get("pid"), ""):
      hlo_op = (e.get("args") or {}).get("hlo_op", "")
      kernels.setdefault(pnames[e["pid"]], []).append(
          (float(e["ts"]), float(e["ts"]) + float(e.get("dur", 0.0)),
           e.get("name", "?") + (f" || {hlo_op}" if hlo_op else "")))
  out = {}
  for gpu, ks in sorted(kernels.items()):
    nccl_spans, compute_spans = [], []
    names, categories = {}, {}   # NCCL kernels by name, compute kernels by class
    for a, b, n in ks:
      is_nccl = "nccl" in n.lower()
      (nccl_spans if is_nccl else compute_spans).append((a, b))
      entry = (names if is_nccl else categories).setdefault(
          n[:80] if is_nccl else categorize(n), [0.0, 0])
      entry[0] += (b - a) / 1e3 / steps
      entry[1] += 1
    compute, nccl_u = _union(compute_spans), _union(nccl_spans)
    overlap = _intersection_length(compute, nccl_u)
    nccl_ms = sum(b - a for a, b in nccl_u) / 1e3
    out[gpu] = {
        "compute_busy_ms": round(sum(b - a for a, b in compute) / 1e3 / steps, 3),
        "nccl_ms": round(nccl_ms / steps, 3),
        "nccl_overlapped_ms": round(overlap / 1e3 / steps, 3),
        "nccl_exposed_ms": round((nccl_ms - overlap / 1e3) / steps, 3),
        "kernel_span_ms": round((max(b for _, b, _ in ks) - min(a for a, _, _ in ks)) / 1e3
                                / steps, 3),
        "nccl_kernels": {n: [round(t, 3), c // steps] for n, (t, c) in names.items()},
        # compute kernels by class (probe.categorize): ms per step (summed over streams), count
        "categories": {k: [round(t, 3), c // steps] for k, (t, c) in
                       sorted(categories.items(), key=lambda kv: -kv[1][0])},
    }
  return out


def bench_one(config, devices, per_device_batch, steps, warmup, repeats, device_resident, seed=0,
              profile_dir="", profile_steps=5):
  """img/s of the train step on ``devices``: median over ``repeats`` windows of ``steps`` steps."""
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from jaxgen import parallel, train  # pylint: disable=import-outside-toplevel

  n = len(devices)
  config = config.copy_and_resolve_references()
  config.training.batch_size = per_device_batch * n
  mesh = parallel.make_mesh(devices)
  local_batch = parallel.check_global_batch(config.training.batch_size, mesh)
  setup = train.Setup(config)
  repl = parallel.replicated(mesh)
  state = jax.jit(setup.init_state, out_shardings=repl)(jax.random.PRNGKey(seed))
  num_params = int(sum(x.size for x in jax.tree_util.tree_leaves(state.params)))
  step_fn, to_carry, _ = train.make_sharded_train_step(setup, mesh)
  state = to_carry(state)

  rng = np.random.default_rng(seed)
  shape = (local_batch,) + tuple(setup.shape)
  if config.data.dataset.startswith("toy_"):
    make = lambda: {"image": rng.normal(size=shape).astype(np.float32)}
  else:
    levels = int(config.data.get("num_levels", 256))
    make = lambda: {"image": rng.integers(0, levels, shape, dtype=np.int32).astype(np.uint8)}
  if config.model.get("num_classes", 0):
    base_make = make
    make = lambda: dict(base_make(), label=rng.integers(0, config.model.num_classes,
                                                         (local_batch,)).astype(np.int32))
  host_batches = [make() for _ in range(4)]
  resident = parallel.host_local_to_global(host_batches[0], mesh)

  def batch(i):
    return resident if device_resident else parallel.host_local_to_global(
        host_batches[i % len(host_batches)], mesh)

  t0 = time.perf_counter()
  state, metrics = step_fn(state, batch(0))
  jax.block_until_ready(metrics)
  compile_s = time.perf_counter() - t0
  for i in range(warmup):
    state, metrics = step_fn(state, batch(i))
  jax.block_until_ready(metrics)
  windows = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    for i in range(steps):
      state, metrics = step_fn(state, batch(i))
    jax.block_until_ready((state, metrics))
    windows.append((time.perf_counter() - t0) / steps)
  step_s = statistics.median(windows)
  loss = float(metrics["loss"])
  profile = None
  if profile_dir:
    import glob  # pylint: disable=import-outside-toplevel
    where = os.path.join(profile_dir, f"devices{n}")
    with jax.profiler.trace(where):
      for i in range(profile_steps):
        state, metrics = step_fn(state, batch(i))
      jax.block_until_ready((state, metrics))
    traces = sorted(glob.glob(os.path.join(where, "**", "*.trace.json.gz"), recursive=True))
    profile = communication_profile(traces[-1], profile_steps) if traces else None
    for gpu, p in (profile or {}).items():
      print(f"  {gpu}: compute {p['compute_busy_ms']:.2f} ms/step, NCCL {p['nccl_ms']:.2f} "
            f"(overlapped {p['nccl_overlapped_ms']:.2f}, exposed {p['nccl_exposed_ms']:.2f}), "
            f"kernel span {p['kernel_span_ms']:.2f}; "
            + ", ".join(f"{k} {t:.2f} ({c})" for k, (t, c) in p["categories"].items()),
            flush=True)
  return {
      "profile": profile,
      "devices": n, "global_batch": config.training.batch_size, "per_device_batch": per_device_batch,
      "compile_and_first_step_s": compile_s, "step_s_median": step_s,
      "step_s_windows": windows, "images_per_s": config.training.batch_size / step_s,
      "last_loss": loss, "loss_finite": bool(np.isfinite(loss)),
      "num_params": num_params, "flat_carry": bool(setup.flat_update),
      "data_parallel_mode": train.data_parallel_mode(config, mesh),  # 'auto' resolved
  }


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default=DEFAULT_CONFIG)
  parser.add_argument("--per_device_batch", type=int, default=128)
  parser.add_argument("--devices", default="1,all",
                      help="comma list of device counts to measure; 'all' = every visible device")
  parser.add_argument("--steps", type=int, default=30, help="timed steps per window")
  parser.add_argument("--warmup", type=int, default=5, help="untimed steps after compiling")
  parser.add_argument("--repeats", type=int, default=3, help="timed windows (median is reported)")
  parser.add_argument("--device_resident", action="store_true",
                      help="reuse one on-device batch (no host-to-device copy per step)")
  parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                      help="config override, e.g. --set model.dtype=bfloat16")
  parser.add_argument("--no_default_xla_flags", action="store_true",
                      help="leave out jaxgen.parallel.DEFAULT_XLA_FLAGS (jaxgen.main sets them)")
  parser.add_argument("--profile_dir", default="",
                      help="also trace 5 steps per device count there and report, per GPU, the "
                           "NCCL time that overlaps compute and the exposed rest")
  parser.add_argument("--out", required=True, help="path of the JSON results")
  args = parser.parse_args(argv)
  if args.per_device_batch <= 0 or args.steps <= 0 or args.repeats <= 0 or args.warmup < 0:
    raise ValueError(f"need positive --per_device_batch/--steps/--repeats and --warmup >= 0, got "
                     f"{args.per_device_batch}/{args.steps}/{args.repeats}/{args.warmup}")

  config = load_config(args.config, args.set)
  import jax  # pylint: disable=import-outside-toplevel
  if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)
  from jaxgen import parallel, train  # pylint: disable=import-outside-toplevel
  if not args.no_default_xla_flags:  # before the backend starts, as jaxgen.main does
    parallel.configure_xla_flags()
  parallel.initialize_distributed()
  if jax.process_count() > 1:
    raise ValueError(f"run the benchmark on one host (got {jax.process_count()} processes)")
  devices = jax.devices()
  counts = parse_device_counts(args.devices, len(devices))
  print(f"{len(devices)} x {devices[0].device_kind} ({devices[0].platform}), jax {jax.__version__}; "
        f"config {args.config} (model {config.model.name}, dtype {config.model.dtype}), "
        f"{args.per_device_batch} images per device, data_parallel "
        f"{config.training.get('data_parallel', 'auto')}", flush=True)

  results = []
  for n in counts:
    print(f"measuring {n} device(s) ...", flush=True)
    results.append(bench_one(config, devices[:n], args.per_device_batch, args.steps, args.warmup,
                             args.repeats, args.device_resident,
                             profile_dir=args.profile_dir))
  base = next((r for r in results if r["devices"] == 1), None)
  for r in results:
    r["speedup_vs_1"] = r["images_per_s"] / base["images_per_s"] if base else None
    r["scaling_efficiency"] = r["speedup_vs_1"] / r["devices"] if base else None

  print()
  print(f"{'devices':>7} {'global batch':>12} {'step (ms)':>10} {'img/s':>10} {'speedup':>8} "
        f"{'efficiency':>10} {'compile (s)':>11} {'mode':>9}")
  for r in results:
    eff = f"{100 * r['scaling_efficiency']:.1f} %" if base else "-"
    speed = f"{r['speedup_vs_1']:.2f}x" if base else "-"
    print(f"{r['devices']:>7} {r['global_batch']:>12} {1e3 * r['step_s_median']:>10.1f} "
          f"{r['images_per_s']:>10.1f} {speed:>8} {eff:>10} "
          f"{r['compile_and_first_step_s']:>11.1f} {r['data_parallel_mode']:>9}")

  report = {
      "benchmark": "data-parallel training throughput (jaxgen.train.make_sharded_train_step)",
      "config": args.config, "overrides": args.set, "model": config.model.name,
      "dtype": str(config.model.dtype),
      "data_parallel": config.training.get("data_parallel", "auto"),
      "allreduce_buckets": config.training.get("allreduce_buckets",
                                               train.DEFAULT_ALLREDUCE_BUCKETS),
      "per_device_batch": args.per_device_batch,
      "steps": args.steps, "warmup": args.warmup, "repeats": args.repeats,
      "xla_flags": os.environ.get("XLA_FLAGS", ""),
      "input": "device-resident batch" if args.device_resident else
               "host batch each step (host_local_to_global)",
      "device_kind": devices[0].device_kind, "platform": devices[0].platform,
      "visible_devices": len(devices), "jax_version": jax.__version__,
      "host": platform.node(), "date": datetime.datetime.now().isoformat(timespec="seconds"),
      "results": results,
      "scaling_efficiency_all": results[-1]["scaling_efficiency"] if base else None,
  }
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(report, f, indent=1)
  print(f"\nwrote {args.out}")
  return report


if __name__ == "__main__":
  main()
