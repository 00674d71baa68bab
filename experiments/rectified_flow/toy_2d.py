"""Rectified flow on 2-D toys: 1-RF, reflow -> 2-RF, distilled one-step generator, and OT-CFM.

For each problem (N(0, I) -> checkerboard; 8 Gaussians -> moons) this trains, in process, with the
train step of ``jaxgen.train.Setup`` built from ``configs/rectified_flow/*`` (one CPU device, a
smaller MLP and fewer steps than the configs, see ``SETTINGS``):

1. the 1-rectified flow (and, for comparison, a 1-RF with minibatch-OT coupling),
2. its reflow pairs (adaptive Dopri5, ``rectified_flow.generate_pairs``),
3. the 2-rectified flow on them, warm-started from the 1-RF, and its own pairs,
4. the one-step generator distilled from the 2-RF, warm-started from it,

and measures straightness, transport cost, NFE of Dopri5, the sliced Wasserstein distance (SWD)
to fresh data of Euler samplers with 1, 2, 4 steps and of Dopri5, and the test NLL (nats).

    python experiments/rectified_flow/toy_2d.py            # writes results.json, toy_2d.png
"""
import json
import os
import sys
import tempfile
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp
import numpy as np

from configs.rectified_flow import common
from jaxgen import data as data_lib
from jaxgen import parallel, rectified_flow, solvers, train

SETTINGS = dict(hidden=(128, 128, 128), batch_size=256, lr=1e-3, ema_rate=0.99,
                steps_1rf=5000, steps_2rf=2000, steps_distill=1000, num_pairs=20_000,
                num_eval=10_000, straightness_points=64, rtol=1e-5)
PROBLEMS = {"checkerboard": ("checkerboard", ""),
            "8gaussians_to_moons": ("moons", "toy_8gaussians")}


def make_config(dataset, source, stage, pairs_dir="", coupling="independent"):
  config = common.toy_config(dataset, source, stage)
  config.model.hidden = SETTINGS["hidden"]
  config.model.ema_rate = SETTINGS["ema_rate"]
  config.training.batch_size = SETTINGS["batch_size"]
  config.training.coupling = coupling
  config.optim.lr = SETTINGS["lr"]
  config.data.pairs_dir = pairs_dir
  return config


def fit(config, steps, init_params=None):
  setup = train.Setup(config)
  state = jax.jit(setup.init_state)(jax.random.PRNGKey(config.seed))
  if init_params is not None:
    state = state.replace(params=init_params, ema_params=init_params,
                          opt_state=setup.init_opt_state(init_params))
  train_step = jax.jit(setup.make_train_step())
  ds = data_lib.get_dataset(config.data, "train", seed=config.seed, process_index=0,
                            process_count=1)
  start = time.time()
  for step in range(steps):
    state, metrics = train_step(state, ds.get_batch(step, config.training.batch_size))
  return setup, state.ema_params, {"steps": steps, "seconds": time.time() - start,
                                   "final_loss": float(metrics["loss"])}


def evaluate(setup, params, dataset, distilled_steps=None):
  n = SETTINGS["num_eval"]
  reference = np.asarray(data_lib.sample_toy(dataset, jax.random.PRNGKey(7), n))
  swd = lambda x: float(rectified_flow.sliced_wasserstein_distance(jax.random.PRNGKey(3), x,
                                                                   reference, 1024))
  velocity_fn = rectified_flow.velocity_fn_from_setup(setup)
  fn = lambda x, t: velocity_fn(params, x, t)
  z = setup.process.prior_sample(jax.random.PRNGKey(11), (n, 2))
  out = {"samples": {}}
  if distilled_steps is not None:
    x, nfe = rectified_flow.euler_generate(fn, z, setup.process, distilled_steps)
    out["swd_distilled"], out["nfe"] = swd(x), int(nfe)
    out["samples"]["distilled"] = np.asarray(x[:2000])
    return out
  stats = rectified_flow.trajectory_statistics(fn, z[:2000], setup.process,
                                               num_points=SETTINGS["straightness_points"])
  out["straightness"] = float(jnp.mean(stats["straightness"]))
  out["transport_cost"] = float(jnp.mean(stats["transport_cost"]))
  for steps in (1, 2, 4):
    x, _ = rectified_flow.euler_generate(fn, z, setup.process, steps)
    out[f"swd_euler_{steps}"] = swd(x)
    out["samples"][f"euler_{steps}"] = np.asarray(x[:2000])
  x, nfe = jax.jit(lambda z: solvers.solve_ode(fn, z, 1.0, 0.0, rtol=SETTINGS["rtol"],
                                               atol=SETTINGS["rtol"]))(z)
  out["swd_dopri5"], out["nfe_dopri5"] = swd(x), int(nfe)
  out["samples"]["dopri5"] = np.asarray(x[:2000])
  test = jnp.asarray(reference[:1000])
  logp, _, nfe = rectified_flow.log_likelihood(fn, test, setup.process, rtol=1e-5, atol=1e-5)
  out["test_nll_nats"], out["nfe_likelihood"] = float(-jnp.mean(logp)), int(nfe)
  return out


def run_problem(name, dataset, source, workdir):
  mesh = parallel.make_mesh(jax.devices()[:1])
  result, samples = {}, {}
  floor = float(rectified_flow.sliced_wasserstein_distance(
      jax.random.PRNGKey(3), np.asarray(data_lib.sample_toy(dataset, jax.random.PRNGKey(8),
                                                            SETTINGS["num_eval"])),
      np.asarray(data_lib.sample_toy(dataset, jax.random.PRNGKey(7), SETTINGS["num_eval"])),
      1024))
  result["swd_between_two_data_samples"] = floor

  def reflow(setup, params, tag, seed):
    directory = os.path.join(workdir, f"{name}_{tag}_pairs")
    summary = rectified_flow.generate_pairs(
        rectified_flow.velocity_fn_from_setup(setup), params, setup.process, (2,), directory,
        num_pairs=SETTINGS["num_pairs"], chunk_size=5000, seed=seed, rtol=SETTINGS["rtol"],
        atol=SETTINGS["rtol"], mesh=mesh, progress=False)
    return directory, {k: summary[k] for k in ("mean_nfe", "seconds")}

  for tag, coupling in (("1rf", "independent"), ("1rf_minibatch_ot", "minibatch_ot")):
    setup1, params1, fit1 = fit(make_config(dataset, source, "1rf", coupling=coupling),
                                SETTINGS["steps_1rf"])
    ev = evaluate(setup1, params1, dataset)
    samples[tag] = ev.pop("samples")
    result[tag] = {"training": fit1, **ev}
    print(name, tag, json.dumps(result[tag]), flush=True)
    if coupling == "independent":
      kept = (setup1, params1)
  setup1, params1 = kept
  pairs1, gen1 = reflow(setup1, params1, "1rf", 0)
  result["1rf"]["reflow_pairs"] = gen1
  setup2, params2, fit2 = fit(make_config(dataset, source, "2rf", pairs1), SETTINGS["steps_2rf"],
                              params1)
  ev = evaluate(setup2, params2, dataset)
  samples["2rf"] = ev.pop("samples")
  result["2rf"] = {"training": fit2, **ev}
  print(name, "2rf", json.dumps(result["2rf"]), flush=True)
  pairs2, gen2 = reflow(setup2, params2, "2rf", 1)
  result["2rf"]["reflow_pairs"] = gen2
  config = make_config(dataset, source, "distill", pairs2)
  setup_d, params_d, fit_d = fit(config, SETTINGS["steps_distill"], params2)
  ev = evaluate(setup_d, params_d, dataset, distilled_steps=1)
  samples["distilled"] = ev.pop("samples")
  result["distilled_1_step"] = {"training": fit_d, **ev}
  print(name, "distilled", json.dumps(result["distilled_1_step"]), flush=True)
  result["straightness_ratio_1rf_over_2rf"] = (result["1rf"]["straightness"]
                                               / result["2rf"]["straightness"])
  return result, samples


def plot(all_samples, path):
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  panels = [("1rf", "euler_1", "1-RF, 1 Euler step"), ("1rf", "dopri5", "1-RF, Dopri5"),
            ("2rf", "euler_1", "2-RF, 1 Euler step"), ("2rf", "dopri5", "2-RF, Dopri5"),
            ("distilled", "distilled", "distilled 2-RF, 1 step"),
            ("1rf_minibatch_ot", "euler_1", "OT-CFM 1-RF, 1 step")]
  fig, axes = plt.subplots(len(all_samples), len(panels), figsize=(2.6 * len(panels),
                                                                   2.6 * len(all_samples)))
  for row, (name, samples) in enumerate(all_samples.items()):
    for col, (stage, key, title) in enumerate(panels):
      ax = axes[row, col]
      pts = samples[stage][key]
      ax.scatter(pts[:, 0], pts[:, 1], s=0.5, alpha=0.4)
      ax.set_xlim(-4.5, 4.5)
      ax.set_ylim(-4.5, 4.5)
      ax.set_xticks([])
      ax.set_yticks([])
      ax.set_title(title if row == 0 else "", fontsize=8)
      if col == 0:
        ax.set_ylabel(name, fontsize=8)
  fig.savefig(path, dpi=90, bbox_inches="tight")
  plt.close(fig)


def main():
  results_path = os.path.join(HERE, "results.json")
  results = json.load(open(results_path)) if os.path.exists(results_path) else {}
  toy, all_samples = {}, {}
  start = time.time()
  with tempfile.TemporaryDirectory() as workdir:
    for name, (dataset, source) in PROBLEMS.items():
      toy[name], all_samples[name] = run_problem(name, dataset, source, workdir)
  results["toy_2d"] = {"settings": {k: list(v) if isinstance(v, tuple) else v
                                    for k, v in SETTINGS.items()},
                       "device": str(jax.devices()[0]), "jax": jax.__version__,
                       "wall_seconds": time.time() - start, **toy}
  with open(results_path, "w") as f:
    json.dump(results, f, indent=1)
  plot(all_samples, os.path.join(HERE, "toy_2d.png"))
  print(f"wrote {results_path}")


if __name__ == "__main__":
  main()
