"""Likelihood benchmark on the CPU: Gaussian data of dimension 2 ... 3072 under the VP SDE with the
exact score, probability-flow ODE (Dopri5, rtol = atol = 1e-5), exact vs Hutchinson divergence.

Prints NFE, wall time (after compilation) and the error against the closed-form log-density
(nats/dim; for Hutchinson the error of the batch mean and its standard error).

    python experiments/likelihood_cpu/bench.py --out experiments/likelihood_cpu/results.json
"""
import argparse
import json
import math
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxgen import closed_form, likelihood, processes


def run(dim, divergence, batch, seed=0):
  data = closed_form.random_gaussian(dim, seed=seed)
  vp = processes.VPSDE()
  x = data.sample(jax.random.PRNGKey(seed + 1), batch)
  t1 = vp.T
  prior = lambda z: data.logp(z, jnp.full((z.shape[0],), t1), vp)
  fn = jax.jit(lambda x, key: likelihood.ode_log_likelihood(
      data.velocity_fn(vp), x, key=key, prior_logp=prior, t0=1e-5, t1=t1,
      divergence=divergence, rtol=1e-5, atol=1e-5))
  key = jax.random.PRNGKey(seed + 2)
  t0 = time.time()
  jax.block_until_ready(fn(x, key))
  compile_s = time.time() - t0
  t0 = time.time()
  logp, _, nfe = jax.block_until_ready(fn(x, key))
  wall = time.time() - t0
  ref = data.logp(x, jnp.full((batch,), 1e-5), vp)
  err = np.asarray(logp - ref)
  return {"dim": dim, "divergence": divergence, "batch": batch, "nfe": int(nfe),
          "seconds": wall, "compile_seconds": compile_s,
          "max_abs_err_per_dim": float(np.max(np.abs(err)) / dim),
          "mean_err_per_dim": float(np.mean(err) / dim),
          "stderr_per_dim": float(np.std(err) / math.sqrt(batch) / dim)}


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--dims", default="2,16,64,256,1024,3072")
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--exact_max_dim", type=int, default=1024)
  parser.add_argument("--out", default="")
  args = parser.parse_args()
  rows = []
  print(f"{'dim':>6} {'divergence':>11} {'NFE':>5} {'seconds':>8} {'max|err|/dim':>13} "
        f"{'mean err/dim':>13} {'stderr/dim':>11}")
  for dim in [int(d) for d in args.dims.split(",")]:
    for divergence in ("exact", "rademacher", "gaussian"):
      if divergence == "exact" and dim > args.exact_max_dim:
        continue
      r = run(dim, divergence, args.batch)
      rows.append(r)
      print(f"{r['dim']:>6} {r['divergence']:>11} {r['nfe']:>5} {r['seconds']:>8.2f} "
            f"{r['max_abs_err_per_dim']:>13.2e} {r['mean_err_per_dim']:>13.2e} "
            f"{r['stderr_per_dim']:>11.2e}", flush=True)
  if args.out:
    with open(args.out, "w") as f:
      json.dump({"device": str(jax.devices()[0]), "jax": jax.__version__, "rows": rows}, f,
                indent=1)


if __name__ == "__main__":
  main()
