"""Runs ``bench.py`` once per variant, each in a fresh process, and tabulates them (issue 7).

Cold compile times are only comparable between fresh processes: XLA keeps its autotuning results
in memory, so a second compile in one process reuses the first one's. Each variant here is
``NAME=MODE[+OPTION...][:XLA flags separated by spaces]`` (OPTIONs as ``bench.py --train_options``
takes them). A small convolution first warms the GPU and its libraries (the first process on a
fresh machine otherwise compiles slower), then the variants run in order, until ``--budget``
seconds would be exceeded (each variant's own time is estimated from the slowest one so far).

    python experiments/bench/fresh.py --out $OUT --budget 540 \
        "base=bfloat16" "det=bfloat16+deterministic" "flag=float32:--xla_gpu_autotune_level=1"
"""
import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
WARMUP = ("import jax, jax.numpy as jnp\n"
          "x = jnp.ones((8, 32, 32, 64), jnp.bfloat16); w = jnp.ones((3, 3, 64, 64), jnp.bfloat16)\n"
          "f = jax.jit(lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), 'SAME', "
          "dimension_numbers=('NHWC', 'HWIO', 'NHWC')).sum())\n"
          "print('warm-up', float(f(x, w)), jax.devices()[0].device_kind)\n")


def parse(spec):
  """'name=mode[+option...][:flags]' -> (name, mode, options, flags)."""
  name, _, rest = spec.partition("=")
  mode, _, flags = rest.partition(":")
  mode, _, options = mode.partition("+")
  if not name or mode not in ("bfloat16", "float32"):
    raise SystemExit(f"bad variant {spec!r}: expected NAME=bfloat16|float32[+OPTION...][:FLAGS]")
  return name, mode, options, flags.strip()


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--out", required=True)
  p.add_argument("--budget", type=float, default=540.0)
  p.add_argument("--steps", type=int, default=20)
  p.add_argument("--repeat_check", action="store_true", help="passed on to bench.py")
  p.add_argument("variants", nargs="+")
  args = p.parse_args()
  os.makedirs(args.out, exist_ok=True)
  t0 = time.perf_counter()
  subprocess.run([sys.executable, "-c", WARMUP], check=False)
  rows, slowest = [], 0.0
  for spec in args.variants:
    name, mode, options, flags = parse(spec)
    elapsed = time.perf_counter() - t0
    if elapsed + max(slowest, 60.0) > args.budget:
      print(f"[{elapsed:6.1f}s] skipping {name}: budget", flush=True)
      continue
    out = os.path.join(args.out, f"{name}.json")
    cmd = [sys.executable, os.path.join(HERE, "bench.py"), "--train_modes", mode, "--fwd_modes", "",
           "--lik_modes", "", "--steps", str(args.steps), "--out", out]
    if options:
      cmd.append("--train_options=" + options)
    if args.repeat_check:
      cmd.append("--repeat_check")
    if flags:
      cmd.append("--xla_flags=" + flags)  # "=": the value starts with "--"
    start = time.perf_counter()
    with open(os.path.join(args.out, f"{name}.log"), "w") as log:
      rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, check=False).returncode
    took = time.perf_counter() - start
    slowest = max(slowest, took)
    row = {"name": name, "mode": mode, "options": options, "flags": flags, "rc": rc,
           "process_s": took}
    if rc == 0 and os.path.exists(out):
      with open(out) as f:
        r = json.load(f)["rows"][0]
      row.update({k: r.get(k) for k in ("compile_s", "train_step_ms", "train_img_s", "mfu_train",
                                         "loss_step0", "peak_gib_so_far", "temp_gib",
                                         "repeat_bitwise_equal", "repeat_max_abs_diff_params")})
    else:
      with open(os.path.join(args.out, f"{name}.log")) as f:
        row["error_tail"] = f.read()[-800:]
    rows.append(row)
    print(f"[{time.perf_counter() - t0:6.1f}s] {json.dumps(row)}", flush=True)
    with open(os.path.join(args.out, "fresh.json"), "w") as f:
      json.dump(rows, f, indent=1)
  print(f"\n{'variant':>16} {'mode':>9} {'compile s':>9} {'step ms':>8} {'img/s':>6} {'loss0':>9}")
  for r in rows:
    print(f"{r['name']:>16} {r['mode']:>9} {r.get('compile_s') or float('nan'):>9.1f} "
          f"{r.get('train_step_ms') or float('nan'):>8.2f} {r.get('train_img_s') or float('nan'):>6.0f} "
          f"{r.get('loss_step0') or float('nan'):>9.6f}")


if __name__ == "__main__":
  main()
