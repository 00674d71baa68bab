"""bfloat16 vs float32 loss curves on the digits main job (issue: GPU performance, correctness).

Trains `configs/digits/vp_unet.py` twice from the same initial parameters, on the same batches and
the same per-step keys, once with `model.dtype = float32` (default matmul precision) and once with
`bfloat16` compute (float32 master parameters), and records the loss of every step. "Agree within
noise" is judged per window of 100 steps: the difference of the window means against the standard
error of that difference from the steps' own spread (the loss of one step is noisy: random time,
noise and batch).

  python experiments/bench/loss_curves.py --steps 2000 --out experiments/bench/loss_curves.json

Prints a table of window means and writes the per-step losses, window statistics and a PNG of
both curves (`--png`).
"""
import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import jax  # pylint: disable=g-import-not-at-top
import numpy as np

from configs.digits import vp_unet  # pylint: disable=g-import-not-at-top
from jaxgen import train


def load_digits_levels():
  """(1797, 8, 8, 1) uint8 levels 0..16: ``$DIGITS_NPY`` if set (GPU hosts without
  scikit-learn), else scikit-learn's digits."""
  path = os.environ.get("DIGITS_NPY", "")
  if path and os.path.exists(path):
    return np.load(path)
  from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
  return load_digits().images.astype(np.uint8)[..., None]


def run(dtype, steps, window):
  config = vp_unet.get_config()
  config.model.dtype = dtype
  setup = train.Setup(config)
  state = jax.jit(setup.init_state)(jax.random.PRNGKey(config.seed))
  step_fn = jax.jit(setup.make_train_step(), donate_argnums=(0,))
  train_levels = load_digits_levels()[:1500]  # the main job's training split
  rng = np.random.default_rng(0)              # same batches for both precisions
  losses = []
  t0 = time.perf_counter()
  for step in range(steps):
    idx = rng.integers(0, len(train_levels), config.training.batch_size)
    state, metrics = step_fn(state, {"image": train_levels[idx]})
    losses.append(metrics["loss"])
    if (step + 1) % window == 0:
      print(f"  {dtype}: step {step + 1}/{steps}, window loss "
            f"{float(np.mean(np.asarray(jax.device_get(losses[-window:])))):.3f}", flush=True)
  losses = np.asarray(jax.device_get(losses), np.float64)
  return losses, time.perf_counter() - t0


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=2000)
  parser.add_argument("--window", type=int, default=100)
  parser.add_argument("--out", default="")
  parser.add_argument("--png", default="")
  args = parser.parse_args()
  print(f"{jax.devices()[0].device_kind}, jax {jax.__version__}", flush=True)
  curves, seconds = {}, {}
  for dtype in ("float32", "bfloat16"):
    curves[dtype], seconds[dtype] = run(dtype, args.steps, args.window)
  a, b = curves["float32"], curves["bfloat16"]
  w = args.window
  rows = []
  print(f"{'steps':>11} {'fp32':>9} {'bf16':>9} {'diff':>8} {'se(diff)':>8} {'z':>6}")
  for lo in range(0, args.steps - w + 1, w):
    xa, xb = a[lo:lo + w], b[lo:lo + w]
    diff = xb.mean() - xa.mean()
    se = np.sqrt(xa.var(ddof=1) / w + xb.var(ddof=1) / w)
    rows.append({"steps": [lo + 1, lo + w], "float32": xa.mean(), "bfloat16": xb.mean(),
                 "diff": diff, "se": se, "z": diff / se})
    print(f"{lo + 1:>5}-{lo + w:<5} {xa.mean():>9.3f} {xb.mean():>9.3f} {diff:>8.3f} {se:>8.3f} "
          f"{diff / se:>6.2f}")
  z = np.array([r["z"] for r in rows])
  summary = {"device": jax.devices()[0].device_kind, "jax": jax.__version__, "steps": args.steps,
             "window": w, "max_abs_z": float(np.abs(z).max()), "mean_z": float(z.mean()),
             "windows_beyond_3se": int(np.sum(np.abs(z) > 3)),
             "final_window": rows[-1], "seconds": seconds,
             "rel_diff_final_window": float(rows[-1]["diff"] / rows[-1]["float32"])}
  print(json.dumps(summary, indent=1), flush=True)
  if args.out:
    with open(args.out, "w") as f:
      json.dump({**summary, "windows": rows, "losses": {k: v.tolist() for k, v in curves.items()}},
                f, indent=1)
  if args.png:
    import matplotlib  # pylint: disable=g-import-not-at-top
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, curve in curves.items():
      smooth = np.convolve(curve, np.ones(w) / w, mode="valid")
      ax.plot(np.arange(w, len(curve) + 1), smooth, label=name)
    ax.set_xlabel("step")
    ax.set_ylabel(f"training loss ({w}-step mean)")
    ax.set_title("digits 8x8, VP + U-Net: bfloat16 vs float32")
    ax.legend()
    fig.savefig(args.png, dpi=100, bbox_inches="tight")


if __name__ == "__main__":
  main()
