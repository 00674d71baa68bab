"""Rectified flow on scikit-learn's 8x8 digits: 1-RF vs 2-RF vs distilled; bits/dim, grids.

Trains, in process, with the train step of ``jaxgen.train.Setup`` built from
``configs/rectified_flow/digits_{1rf,2rf,distill}.py`` (batch 128, small U-Net):

1. the 1-rectified flow on the 1,500 training digits (uniformly dequantized, [-1, 1]);
2. its reflow pairs (Dopri5, rtol = atol = 1e-5) with ``rectified_flow.generate_pairs``;
3. the 2-rectified flow on the pairs, warm-started from the 1-RF; then its own pairs;
4. a one-step generator distilled from the 2-RF, warm-started from it;

and reports test bits/dim over the 297 test digits (probability-flow ODE, Dopri5, Rademacher
probe: the eval mode of ``jaxgen.evaluate.make_nll_fn``), Dopri5 NFE, straightness, and the sliced
Wasserstein distance (64-D) of 1-step Euler / Dopri5 samples to the training digits; writes
one-step sample grids and the "digits" entry of ``<out>/results.json``. Digits come from ``$DIGITS_NPY`` (a ``(1797, 8, 8, 1)`` uint8 array) or
scikit-learn.

    python experiments/rectified_flow/digits.py --out experiments/rectified_flow \
        --steps_1rf 6000 --steps_2rf 3000 --steps_distill 2000
"""
import argparse
import json
import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp
import numpy as np

from configs.rectified_flow import common
from jaxgen import data as data_lib
from jaxgen import evaluate, parallel, rectified_flow, solvers, train
from jaxgen.data import pairs as pairs_lib


def load_levels():
  path = os.environ.get("DIGITS_NPY", "")
  if path and os.path.exists(path):
    return np.load(path).astype(np.uint8)
  from sklearn.datasets import load_digits  # pylint: disable=import-outside-toplevel
  return load_digits().images.astype(np.uint8)[..., None]


def fit(config, steps, batches, init_params=None):
  """``steps`` train steps; ``batches(step) -> dict``; returns (setup, EMA params, info)."""
  setup = train.Setup(config)
  state = jax.jit(setup.init_state)(jax.random.PRNGKey(config.seed))
  if init_params is not None:
    state = state.replace(params=init_params,
                          ema_params=jax.tree_util.tree_map(jnp.copy, init_params),
                          opt_state=jax.jit(setup.init_opt_state)(init_params))
  train_step = jax.jit(setup.make_train_step(), donate_argnums=(0,))
  start, losses = time.time(), []
  for step in range(steps):
    state, metrics = train_step(state, batches(step))
    if step % 500 == 0 or step == steps - 1:
      losses.append(float(metrics["loss"]))
  jax.block_until_ready(state)
  return setup, state.ema_params, {"steps": steps, "seconds": time.time() - start,
                                   "loss_every_500": losses}


def test_split_bits_per_dim(setup, params, test_levels, seed=0):
  nll = jax.jit(evaluate.make_nll_fn(setup, setup.config.eval))
  values, nfes = [], []
  for i in range(0, len(test_levels), 99):
    value, nfe = nll(params, jax.random.PRNGKey(seed + i), {"image": test_levels[i:i + 99]})
    values.append(np.asarray(value))
    nfes.append(int(nfe))
  values = np.concatenate(values)
  return {"bpd": float(values.mean()), "bpd_stderr": float(values.std() / np.sqrt(len(values))),
          "nfe": nfes}


def describe_flow(setup, params, reference, out_dir, tag):
  velocity_fn = rectified_flow.velocity_fn_from_setup(setup)
  fn = lambda x, t: velocity_fn(params, x, t)
  shape = (len(reference),) + tuple(setup.shape)
  z = setup.process.prior_sample(jax.random.PRNGKey(11), shape)
  swd = lambda x: float(rectified_flow.sliced_wasserstein_distance(jax.random.PRNGKey(3), x,
                                                                   reference, 1024))
  out = {}
  stats = rectified_flow.trajectory_statistics(fn, z[:256], setup.process, num_points=32)
  out["straightness"] = float(jnp.mean(stats["straightness"]))
  out["transport_cost"] = float(jnp.mean(stats["transport_cost"]))
  for steps in (1, 2, 4):
    x, _ = jax.jit(lambda z: rectified_flow.euler_generate(fn, z, setup.process, steps))(z)
    out[f"swd_euler_{steps}"] = swd(x)
    if steps == 1:
      evaluate.save_image_grid(np.clip(np.asarray(x[:64]), -1, 1),
                               os.path.join(out_dir, f"digits_{tag}_1step.png"), setup.config.data)
  x, nfe = jax.jit(lambda z: solvers.solve_ode(fn, z, 1.0, 1e-3, rtol=1e-5, atol=1e-5))(z)
  out["swd_dopri5"], out["nfe_dopri5"] = swd(x), int(nfe)
  if tag == "1rf":
    evaluate.save_image_grid(np.clip(np.asarray(x[:64]), -1, 1),
                             os.path.join(out_dir, f"digits_{tag}_dopri5.png"), setup.config.data)
  return out


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--out", default=HERE)
  parser.add_argument("--steps_1rf", type=int, default=6000)
  parser.add_argument("--steps_2rf", type=int, default=3000)
  parser.add_argument("--steps_distill", type=int, default=2000)
  parser.add_argument("--num_pairs", type=int, default=20_000)
  args = parser.parse_args()
  os.makedirs(args.out, exist_ok=True)
  levels = load_levels()
  train_levels, test_levels = levels[:1500], levels[1500:]
  results = {"device": str(jax.devices()[0]), "jax": jax.__version__, "args": vars(args)}
  path = os.path.join(args.out, "results.json")

  def save():   # the "digits" entry of results.json (other entries are kept)
    everything = json.load(open(path)) if os.path.exists(path) else {}
    everything["digits"] = results
    with open(path, "w") as f:
      json.dump(everything, f, indent=1)

  config1 = common.digits_config("1rf")
  reference = np.asarray(data_lib.preprocess(jax.random.PRNGKey(5), train_levels, config1.data,
                                             train=False)).reshape(1500, -1)
  rng = np.random.default_rng(0)
  real_batches = lambda step: {"image": train_levels[rng.integers(0, 1500, 128)]}
  mesh = parallel.make_mesh(jax.devices()[:1])
  start = time.time()

  def reflow(setup, params, directory, seed):
    summary = rectified_flow.generate_pairs(
        rectified_flow.velocity_fn_from_setup(setup), params, setup.process, setup.shape,
        directory, num_pairs=args.num_pairs, chunk_size=2000, seed=seed, mesh=mesh,
        progress=False)
    return {k: summary[k] for k in ("mean_nfe", "seconds")}

  def pair_batches(directory):
    ds = pairs_lib.PairsDataset(directory, seed=0)
    return lambda step: ds.get_batch(step, 128)

  with tempfile.TemporaryDirectory() as tmp:
    setup1, params1, info = fit(config1, args.steps_1rf, real_batches)
    results["1rf"] = {"training": info, **test_split_bits_per_dim(setup1, params1, test_levels),
                      **describe_flow(setup1, params1, reference, args.out, "1rf")}
    save()
    print("1rf", json.dumps(results["1rf"]), flush=True)
    pairs1 = os.path.join(tmp, "pairs1")
    results["1rf"]["reflow_pairs"] = reflow(setup1, params1, pairs1, 0)

    config2 = common.digits_config("2rf")
    config2.data.pairs_dir = pairs1
    setup2, params2, info = fit(config2, args.steps_2rf, pair_batches(pairs1), params1)
    results["2rf"] = {"training": info, **test_split_bits_per_dim(setup2, params2, test_levels),
                      **describe_flow(setup2, params2, reference, args.out, "2rf")}
    save()
    print("2rf", json.dumps(results["2rf"]), flush=True)
    pairs2 = os.path.join(tmp, "pairs2")
    results["2rf"]["reflow_pairs"] = reflow(setup2, params2, pairs2, 1)

    config_d = common.digits_config("distill")
    config_d.data.pairs_dir = pairs2
    setup_d, params_d, info = fit(config_d, args.steps_distill, pair_batches(pairs2), params2)
    sample_fn = jax.jit(rectified_flow.make_distilled_sample_fn(setup_d, config_d.sampling),
                        static_argnums=2)
    x, nfe = sample_fn(params_d, jax.random.PRNGKey(11), 1500)
    evaluate.save_image_grid(np.clip(np.asarray(x[:64]), -1, 1),
                             os.path.join(args.out, "digits_distilled_1step.png"), config_d.data)
    results["distilled_1_step"] = {
        "training": info, "nfe": int(nfe),
        "swd": float(rectified_flow.sliced_wasserstein_distance(jax.random.PRNGKey(3), x,
                                                                reference, 1024))}
  results["wall_seconds"] = time.time() - start
  save()
  print("distilled", json.dumps(results["distilled_1_step"]), flush=True)
  print(f"wrote {path}")


if __name__ == "__main__":
  main()
