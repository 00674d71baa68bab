"""GPU benchmark of the DDPM++ cont. (VP) network of configs/cifar10/vp_ddpmpp_continuous.py.

One call on a GPU host prints a table and writes JSON:
  * train images/s (batch 128, random CIFAR-10-shaped data, after warm-up) in float32 at XLA's
    default matmul precision and in bfloat16 compute (float32 master parameters),
  * compile time of the train step, peak GPU memory,
  * forward ms (batch 128), PF-ODE ms per NFE (drift + Rademacher divergence in one jvp),
  * one whole likelihood call at rtol = atol = 1e-5 (time, NFE, bits/dim) in each precision and
    in float32 at the highest matmul precision (the reference),
  * model FLOPs utilization against 790 TFLOP/s, with 21.7 GFLOP per image forward and 3x that
    per train step.

    python experiments/bench/bench.py --out experiments/bench/h100_run1.json
"""
import argparse
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from configs.cifar10 import vp_ddpmpp_continuous  # pylint: disable=wrong-import-position
from jaxgen import likelihood, models, predictions, train  # pylint: disable=wrong-import-position

FWD_GFLOP_PER_IMAGE = 21.7
PEAK_TFLOPS = 790.0


def peak_gib():
  stats = jax.devices()[0].memory_stats() or {}
  return stats.get("peak_bytes_in_use", 0) / 2**30


def timeit(fn, *args, n=20, warmup=2):
  for _ in range(warmup):
    out = fn(*args)
  jax.block_until_ready(out)
  t = time.perf_counter()
  for _ in range(n):
    out = fn(*args)
  jax.block_until_ready(out)
  return (time.perf_counter() - t) / n, out


def bench_precision(dtype, batch, steps, matmul_precision, do_train=True, do_lik=True):
  config = vp_ddpmpp_continuous.get_config()
  config.model.dtype = dtype
  config.training.batch_size = batch
  res = {"dtype": dtype, "matmul_precision": matmul_precision}
  with jax.default_matmul_precision(matmul_precision):
    setup = train.Setup(config)
    state = jax.jit(setup.init_state)(jax.random.PRNGKey(0))
    res["params"] = models.count_params(state.params)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(batch, 32, 32, 3), dtype=np.uint8)
    batch_dev = {"image": jax.device_put(images)}
    if do_train:
      step = jax.jit(setup.make_train_step(), donate_argnums=(0,))
      t = time.perf_counter()
      compiled = step.lower(state, batch_dev).compile()
      res["compile_s"] = time.perf_counter() - t
      state, m = compiled(state, batch_dev)
      state, m = compiled(state, batch_dev)
      jax.block_until_ready(m)
      t = time.perf_counter()
      for _ in range(steps):
        state, m = compiled(state, batch_dev)
      jax.block_until_ready(m)
      dt = (time.perf_counter() - t) / steps
      res["train_img_s"] = batch / dt
      res["train_step_ms"] = dt * 1e3
      res["loss"] = float(m["loss"])
      res["mfu_train"] = batch / dt * 3 * FWD_GFLOP_PER_IMAGE * 1e9 / (PEAK_TFLOPS * 1e12)
      try:
        res["xla_flops_per_step"] = float(compiled.cost_analysis().get("flops", 0.0)) if isinstance(
            compiled.cost_analysis(), dict) else float(compiled.cost_analysis()[0].get("flops", 0.0))
      except Exception:  # pylint: disable=broad-except
        pass
    params = state.params
    x = jax.random.normal(jax.random.PRNGKey(1), (batch, 32, 32, 3))
    t_vec = jnp.full((batch,), 0.5)
    fwd = jax.jit(lambda p, x, t: setup.model_fn(p, x, t))
    res["forward_ms"] = timeit(fwd, params, x, t_vec)[0] * 1e3
    model = lambda p: (lambda y, s: setup.model_fn(p, y, s))
    probes = likelihood.sample_probes(jax.random.PRNGKey(2), x.shape, "rademacher")

    def one_nfe(p, x, t):
      drift = predictions.as_drift_fn(setup.process, model(p), "eps")
      return likelihood.hutchinson_divergence(drift, x, t, probes)

    res["ms_per_nfe"] = timeit(jax.jit(one_nfe), params, x, t_vec)[0] * 1e3
    if do_lik:
      x_data = (jnp.asarray(images, jnp.float32) + jax.random.uniform(
          jax.random.PRNGKey(3), images.shape)) / 256.0 * 2 - 1

      def lik(p, x, key):
        drift = predictions.as_drift_fn(setup.process, model(p), "eps")
        logp, _, nfe = likelihood.ode_log_likelihood(
            drift, x, key=key, prior_logp=setup.process.prior_logp, t0=1e-5, t1=1.0,
            divergence="rademacher", rtol=1e-5, atol=1e-5)
        return likelihood.bits_per_dim(logp, x.shape[1:]), nfe

      lik = jax.jit(lik)
      t = time.perf_counter()
      jax.block_until_ready(lik(params, x_data, jax.random.PRNGKey(4)))
      res["likelihood_compile_s"] = time.perf_counter() - t
      t = time.perf_counter()
      bpd, nfe = jax.block_until_ready(lik(params, x_data, jax.random.PRNGKey(4)))
      res["likelihood_call_s"] = time.perf_counter() - t
      res["likelihood_nfe"] = int(nfe)
      res["likelihood_bpd"] = float(jnp.mean(bpd))
      res["likelihood_overhead"] = res["likelihood_call_s"] / (int(nfe) * res["ms_per_nfe"] / 1e3) - 1
      res["_params_for_ref"] = None
  res["peak_gib"] = peak_gib()
  return res


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--steps", type=int, default=20)
  parser.add_argument("--modes", default="float32,bfloat16,highest")
  parser.add_argument("--out", default="")
  args = parser.parse_args()
  rows = []
  for mode in args.modes.split(","):
    dtype, precision = {"float32": ("float32", "default"), "bfloat16": ("bfloat16", "default"),
                        "highest": ("float32", "highest")}[mode]
    r = bench_precision(dtype, args.batch, args.steps, precision, do_train=mode != "highest")
    r.pop("_params_for_ref", None)
    r["mode"] = mode
    rows.append(r)
    print(json.dumps(r), flush=True)
  print()
  print(f"{'mode':>9} {'img/s':>8} {'MFU':>6} {'compile s':>9} {'fwd ms':>7} {'ms/NFE':>7} "
        f"{'lik s':>7} {'NFE':>5} {'overhead':>8} {'bpd':>8} {'peak GiB':>8}")
  for r in rows:
    print(f"{r['mode']:>9} {r.get('train_img_s', float('nan')):>8.0f} "
          f"{r.get('mfu_train', float('nan')):>6.1%} {r.get('compile_s', float('nan')):>9.1f} "
          f"{r['forward_ms']:>7.2f} {r['ms_per_nfe']:>7.2f} {r.get('likelihood_call_s', 0):>7.2f} "
          f"{r.get('likelihood_nfe', 0):>5d} {r.get('likelihood_overhead', 0):>8.1%} "
          f"{r.get('likelihood_bpd', float('nan')):>8.4f} {r['peak_gib']:>8.2f}")
  if args.out:
    with open(args.out, "w") as f:
      json.dump({"device": str(jax.devices()[0].device_kind), "jax": jax.__version__,
                 "batch": args.batch, "rows": rows}, f, indent=1)


if __name__ == "__main__":
  main()
