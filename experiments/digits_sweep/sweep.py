"""Pick the main job's recipe: train variants of the digits 8x8 config and report test bits/dim.

Self-contained data feeding (digits from a .npy or scikit-learn) so it runs where TFDS is absent.

    python experiments/digits_sweep/sweep.py --steps 4000 --out results.json
"""
import argparse
import json
import os
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from configs.digits import vp_unet  # pylint: disable=wrong-import-position
from jaxgen import evaluate, models, train  # pylint: disable=wrong-import-position

VARIANTS = {
    "unet32_lw_is": dict(),
    "unet32_simple": {"training.likelihood_weighting": False, "training.importance_sampling": False},
    "unet32_lw_is_lr1e-3": {"optim.lr": 1e-3},
    "unet64x2_lw_is": {"model.nf": 64, "model.num_res_blocks": 2},
    "mlp512_lw_is": {"model.name": "mlp", "model.hidden": (512, 512, 512)},
    "mlp512_simple": {"model.name": "mlp", "model.hidden": (512, 512, 512),
                      "training.likelihood_weighting": False,
                      "training.importance_sampling": False},
    "mlp1024_lw_is_lr1e-3": {"model.name": "mlp", "model.hidden": (1024, 1024, 1024),
                             "optim.lr": 1e-3},
}


def load_digits_levels():
  path = os.environ.get("DIGITS_NPY", "")
  if path and os.path.exists(path):
    return np.load(path)
  from sklearn.datasets import load_digits  # pylint: disable=import-outside-toplevel
  return load_digits().images.astype(np.uint8)[..., None]


def run(name, overrides, steps, levels):
  config = vp_unet.get_config()
  for k, v in overrides.items():
    section, key = k.split(".")
    config[section][key] = v
  setup = train.Setup(config)
  state = jax.jit(setup.init_state)(jax.random.PRNGKey(0))
  step_fn = jax.jit(setup.make_train_step(), donate_argnums=(0,))
  tr, te = levels[:1500], levels[1500:]
  rng = np.random.default_rng(0)
  t0 = time.time()
  losses = []
  for s in range(steps):
    idx = rng.integers(0, len(tr), 128)
    state, m = step_fn(state, {"image": tr[idx]})
    if s % 500 == 0:
      losses.append(float(m["loss"]))
  jax.block_until_ready(state)
  train_s = time.time() - t0
  nll = jax.jit(evaluate.make_nll_fn(setup, config.eval))
  out = {}
  for pname, params in (("ema", state.ema_params), ("raw", state.params)):
    vals, nfes = [], []
    for i in range(0, len(te), 99):
      v, nfe = nll(params, jax.random.PRNGKey(i), {"image": te[i:i + 99]})
      vals.append(np.asarray(v))
      nfes.append(int(nfe))
    vals = np.concatenate(vals)
    out[pname] = {"bpd_mean": float(vals.mean()), "bpd_median": float(np.median(vals)),
                  "bpd_max": float(vals.max()), "nfe": nfes}
  r = {"name": name, "params": models.count_params(state.params), "steps": steps,
       "train_seconds": train_s, "losses": losses, **out}
  print(json.dumps(r), flush=True)
  return r


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--steps", type=int, default=4000)
  parser.add_argument("--only", default="")
  parser.add_argument("--out", default="")
  args = parser.parse_args()
  levels = load_digits_levels()
  names = args.only.split(",") if args.only else list(VARIANTS)
  results = [run(n, VARIANTS[n], args.steps, levels) for n in names]
  if args.out:
    with open(args.out, "w") as f:
      json.dump({"device": str(jax.devices()[0]), "results": results}, f, indent=1)


if __name__ == "__main__":
  main()
