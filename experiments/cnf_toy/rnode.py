"""RNODE against plain FFJORD on a toy set: NFE at the end of training and test NLL.

Trains the same CNF (configs/cnf/toy.py: 64-64-64 concatsquash tanh, learnable T, dopri5
rtol = atol = 1e-5, exact divergence) twice from the same initialisation and data stream, once
without and once with RNODE's kinetic-energy and Jacobian-norm penalties, with ONE compiled train
step (the weights are arguments; the regularizer integrals are always carried, and they do not
steer the step size, so the unregularized run is plain FFJORD). Prints the forward NFE over the
last `--nfe-window` iterations and the test NLL (exact divergence, dopri5 1e-5) on `--test-size`
fresh points.

  python experiments/cnf_toy/rnode.py --data 8gaussians --iters 2000 --kinetic 0.05 \
      --jacobian 0.05 --out experiments/cnf_toy/rnode_8gaussians.json

tests/test_cnf.py::test_rnode_cuts_nfe_at_same_nll runs a reduced version of `train_pair`.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))

from configs.cnf import toy as toy_config  # pylint: disable=wrong-import-position
from jaxgen import cnf  # pylint: disable=wrong-import-position
from jaxgen.data import sample_toy  # pylint: disable=wrong-import-position


def train_pair(data="8gaussians", iters=1000, batch=100, lr=1e-3, kinetic=0.05, jacobian=0.05,
               hidden_dims=(64, 64, 64), seed=0, nfe_window=50, test_size=2000, log_every=0,
               rtol=1e-5, atol=1e-5, extra_lambdas=()):
  """Train without and with RNODE; returns a dict of both runs' final NFE and test NLL
  (``extra_lambdas``: more ``(kinetic, jacobian)`` pairs, results under ``rnode_<k>_<j>``)."""
  config = toy_config.get_config(data)
  config.model.hidden_dims = tuple(hidden_dims)
  config.cnf.rtol, config.cnf.atol = rtol, atol
  setup = cnf.StandaloneSetup(config)
  flow = cnf.flow_from_setup(setup)
  options = cnf.SolveOptions.from_config(config.cnf)
  optimizer = optax.adam(lr)

  def loss_fn(params, x, lam):
    out = cnf.flow_log_likelihood(flow, params, x, options=options, regularize=True)
    nll = -jnp.mean(out["logp"])
    loss = nll + lam[0] * jnp.mean(out["kinetic"]) + lam[1] * jnp.mean(out["jacobian"])
    return loss, (nll, out["nfe"])

  @jax.jit
  def step(params, opt_state, x, lam):
    (_, (nll, nfe)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, x, lam)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, nll, nfe

  nll_fn = jax.jit(cnf.make_nll_fn(setup, config.eval))
  test = sample_toy(data, jax.random.PRNGKey(10_000 + seed), test_size)
  init = setup.init_params(jax.random.PRNGKey(seed))
  results = {}
  runs = [("ffjord", (0.0, 0.0)), ("rnode", (kinetic, jacobian))]
  runs += [(f"rnode_{k:g}_{j:g}", (k, j)) for k, j in extra_lambdas]
  for name, lam in runs:
    params, opt_state = init, optimizer.init(init)
    lam_arr = jnp.asarray(lam, jnp.float32)
    nfes, t0 = [], time.perf_counter()
    for it in range(iters):
      x = sample_toy(data, jax.random.fold_in(jax.random.PRNGKey(seed), it), batch)
      params, opt_state, nll, nfe = step(params, opt_state, x, lam_arr)
      nfes.append(int(nfe))
      if log_every and (it + 1) % log_every == 0:
        print(f"{name} iter {it + 1}: nll {float(nll):.4f} NFE {nfes[-1]} "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)
    values = np.concatenate([np.asarray(nll_fn(params, jax.random.PRNGKey(0),
                                               {"image": test[i:i + 1000]})[0])
                             for i in range(0, test_size, 1000)])
    results[name] = {"lambda": list(lam), "nfe_end": float(np.mean(nfes[-nfe_window:])),
                     "nfe_history": nfes, "test_nll": float(values.mean()),
                     "test_nll_stderr": float(values.std() / math.sqrt(len(values))),
                     "seconds": time.perf_counter() - t0, "params": params}
    if log_every:
      r = results[name]
      print(f"{name:6s} lambda {lam}: NFE at end {r['nfe_end']:.1f}, test NLL "
            f"{r['test_nll']:.4f} +- {r['test_nll_stderr']:.4f}", flush=True)
  results["nfe_ratio"] = results["ffjord"]["nfe_end"] / results["rnode"]["nfe_end"]
  results["nll_difference"] = results["rnode"]["test_nll"] - results["ffjord"]["test_nll"]
  return results


def _pair(text):
  """'0.5' -> (0.5, 0.5); '1:0.1' -> (1.0, 0.1) (kinetic, jacobian)."""
  parts = [float(v) for v in text.split(":")]
  return (parts[0], parts[-1])


def main(argv=None):
  p = argparse.ArgumentParser()
  p.add_argument("--data", default="8gaussians")
  p.add_argument("--iters", type=int, default=2000)
  p.add_argument("--batch", type=int, default=100)
  p.add_argument("--kinetic", type=float, default=0.05)
  p.add_argument("--jacobian", type=float, default=0.05)
  p.add_argument("--hidden", default="64-64-64")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--test-size", type=int, default=10_000)
  p.add_argument("--more", default="", help="extra weights: 0.5,2 (both) or 1:0.1 (kinetic:jacobian)")
  p.add_argument("--out", default="")
  args = p.parse_args(argv)
  res = train_pair(args.data, args.iters, args.batch, kinetic=args.kinetic,
                   jacobian=args.jacobian, hidden_dims=tuple(int(h) for h in args.hidden.split("-")),
                   seed=args.seed, test_size=args.test_size, log_every=100,
                   extra_lambdas=[_pair(v) for v in args.more.split(",") if v])
  for name in ("ffjord", "rnode"):
    r = res[name]
    print(f"{name:6s} lambda {r['lambda']}: NFE at end {r['nfe_end']:.1f}, test NLL "
          f"{r['test_nll']:.4f} +- {r['test_nll_stderr']:.4f}, {r['seconds']:.0f} s")
  print(f"NFE ratio {res['nfe_ratio']:.2f}x, NLL difference {res['nll_difference']:+.4f} nats")
  if args.out:
    for value in res.values():
      if isinstance(value, dict):
        value.pop("params", None)
    res["command"] = "python experiments/cnf_toy/rnode.py " + " ".join(
        sys.argv[1:] if argv is None else argv)
    with open(args.out, "w") as f:
      json.dump(res, f, indent=1)


if __name__ == "__main__":
  main()
