"""FFJORD's toy benchmark on jaxgen's CNF: time per iteration against NFE, and test NLL.

Reproduces `python train_toy.py --data checkerboard` of FFJORD (ODEnet 64-64-64, concatsquash,
tanh, learnable end time from T = 0.5, dopri5 rtol = atol = 1e-5, batch 100, Adam lr 1e-3 with
L2 weight decay 1e-5, brute-force (exact) divergence, 10,000 iterations) with
`configs/cnf/toy.py` and `jaxgen.cnf`, and prints

* time per iteration (wall clock of one jitted train step: fresh batch, loss, gradient, Adam) next
  to the forward NFE of that iteration, binned by NFE, with FFJORD's reference figures measured on
  this machine (0.07 s at NFE 28, 0.45 s at NFE 148 forward / 150 backward);
* the backward NFE (counted every `--count-every` iterations on the same parameters and batch
  with a counting field: for `--adjoint backsolve` the evaluations of the adjoint solve; for
  `backprop` the forward re-evaluations the VJP of the solver needs);
* a timing sweep at matched NFE (`--match-nfe`): the train step on the final parameters with
  tightened tolerances, so its NFE spans FFJORD's 28 ... 148 (time per NFE is what is compared);
* test NLL (nats) on a fresh held-out set of `--test-size` points (exact divergence, dopri5
  1e-5), every `--eval-every` iterations and at the end.

Usage (the command of results.json):
  python experiments/cnf_toy/bench.py --iters 10000 --out experiments/cnf_toy/results.json
RNODE instead of plain FFJORD: add e.g. `--kinetic 0.05 --jacobian 0.05`.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
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

FFJORD_REFERENCE = {
    "command": "python train_toy.py --data checkerboard  (defaults: --dims 64-64-64 "
               "--layer_type concatsquash --nonlinearity tanh --solver dopri5 --atol 1e-5 "
               "--rtol 1e-5 --batch_size 100 --lr 1e-3 --divergence_fn brute_force "
               "--niters 10000 --adjoint (odeint_adjoint))",
    "seconds_per_iter_start": 0.07, "nfe_forward_start": 28,
    "seconds_per_iter_end": 0.45, "nfe_forward_end": 148, "nfe_backward_end": 150,
    "total_minutes": 50, "test_nll_final": 3.620, "test_nll_5000": 3.69,
    "data_entropy": math.log(32.0),
}


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--data", default="checkerboard")
  p.add_argument("--iters", type=int, default=10_000)
  p.add_argument("--batch", type=int, default=100)
  p.add_argument("--lr", type=float, default=1e-3)
  p.add_argument("--weight-decay", type=float, default=1e-5)
  p.add_argument("--rtol", type=float, default=1e-5)
  p.add_argument("--atol", type=float, default=1e-5)
  p.add_argument("--error-norm", default="mixed_rms")
  p.add_argument("--adjoint", default="backprop", choices=cnf.ADJOINTS)
  p.add_argument("--backsolve-norm", default="rms", choices=cnf.BACKSOLVE_NORMS)
  p.add_argument("--kinetic", type=float, default=0.0, help="RNODE lambda_K")
  p.add_argument("--jacobian", type=float, default=0.0, help="RNODE lambda_J")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--eval-every", type=int, default=1000)
  p.add_argument("--count-every", type=int, default=500)
  p.add_argument("--log-every", type=int, default=100)
  p.add_argument("--test-size", type=int, default=10_000)
  p.add_argument("--match-nfe", action="store_true", help="timing sweep at matched NFE")
  p.add_argument("--max-minutes", type=float, default=0.0, help="stop training after this long")
  p.add_argument("--out", default="")
  p.add_argument("--plots", default="", help="directory for density / sample PNGs at the end")
  return p.parse_args(argv)


class Bench:
  """Model, jitted train step, counting step and test NLL for one configuration."""

  def __init__(self, args):
    self.args = args
    config = toy_config.get_config(args.data)
    config.cnf.rtol, config.cnf.atol = args.rtol, args.atol
    config.cnf.error_norm = args.error_norm
    config.cnf.adjoint = args.adjoint
    config.cnf.backsolve_norm = args.backsolve_norm
    config.cnf.kinetic_energy, config.cnf.jacobian_norm2 = args.kinetic, args.jacobian
    self.config = config
    self.setup = cnf.StandaloneSetup(config)
    # FFJORD: torch.optim.Adam(lr, weight_decay) = L2 term added to the gradient, then Adam.
    self.optimizer = optax.chain(optax.add_decayed_weights(args.weight_decay),
                                 optax.adam(args.lr))
    self.loss_fn = cnf.make_loss_fn(config, self.setup)
    self.step = jax.jit(self._step)
    self.nll = jax.jit(cnf.make_nll_fn(self.setup, config.eval))

  def _step(self, params, opt_state, key, x):
    (loss, aux), grads = jax.value_and_grad(self.loss_fn, has_aux=True)(params, key,
                                                                         {"image": x})
    updates, opt_state = self.optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss, aux

  def batch(self, i, n=None):
    key = jax.random.fold_in(jax.random.PRNGKey(self.args.seed), i)
    return sample_toy(self.args.data, key, n or self.args.batch)

  def test_nll(self, params, points):
    values, nfes = [], []
    for i in range(0, len(points), 1000):
      v, nfe = self.nll(params, jax.random.PRNGKey(i), {"image": points[i:i + 1000]})
      values.append(np.asarray(v))
      nfes.append(int(nfe))
    values = np.concatenate(values)
    return float(values.mean()), float(values.std() / math.sqrt(len(values))), float(
        np.mean(nfes))


def counting_nfe(bench, params, x, key):
  """(forward, backward) NFE of one gradient evaluation, counted by a host callback in the field."""
  count = [0]

  def tick():
    count[0] += 1

  base = cnf.flow_from_setup(bench.setup)

  def velocity(p, y, t, index):
    jax.debug.callback(tick)
    return base.velocity(p, y, t, index)

  flow = cnf.Flow(base.steps, velocity, base.block_params, base.end_time)
  options = cnf.SolveOptions.from_config(bench.config.cnf)
  lam = (bench.args.kinetic, bench.args.jacobian)

  def loss(p):
    out = cnf.flow_log_likelihood(flow, p, x, key=key, options=options,
                                  regularize=lam[0] > 0 or lam[1] > 0)
    return -jnp.mean(out["logp"]) + lam[0] * jnp.mean(out["kinetic"]) + lam[1] * jnp.mean(
        out["jacobian"])

  count[0] = 0
  jax.block_until_ready(jax.jit(loss)(params))
  jax.effects_barrier()
  forward = count[0]
  count[0] = 0
  jax.block_until_ready(jax.jit(jax.grad(loss))(params))
  jax.effects_barrier()
  return forward, count[0] - forward


def nfe_bins(records, width=20):
  """Median seconds per iteration per forward-NFE bin."""
  bins = {}
  for r in records:
    bins.setdefault(int(r["nfe"]) // width * width, []).append(r["seconds"])
  return {f"{k}-{k + width - 1}": {"median_seconds": float(np.median(v)), "iters": len(v)}
          for k, v in sorted(bins.items())}


def match_nfe_sweep(bench, params, opt_state, tolerances=(1e-3, 1e-4, 1e-5, 1e-6), repeats=20):
  """Time the train step on fixed parameters with tighter tolerances: (NFE, seconds) pairs."""
  out = []
  for tol in tolerances:
    args = argparse.Namespace(**{**vars(bench.args), "rtol": tol, "atol": tol})
    b = Bench(args)
    x = bench.batch(10**9)
    b.step(params, opt_state, jax.random.PRNGKey(0), x)  # compile
    times, nfes = [], []
    for r in range(repeats):
      x = bench.batch(10**9 + r)
      t0 = time.perf_counter()
      _, _, loss, aux = b.step(params, opt_state, jax.random.PRNGKey(r), x)
      jax.block_until_ready(loss)
      times.append(time.perf_counter() - t0)
      nfes.append(int(aux["nfe"]))
    out.append({"tol": tol, "nfe_forward": float(np.mean(nfes)),
                "median_seconds": float(np.median(times)), "min_seconds": float(np.min(times))})
    print(f"  match-nfe tol {tol:.0e}: NFE fwd {np.mean(nfes):.0f}  "
          f"{np.median(times) * 1000:.1f} ms/iter (min {np.min(times) * 1000:.1f})", flush=True)
  return out


def interpolate_seconds(sweep, nfe):
  pts = sorted((s["nfe_forward"], s["median_seconds"]) for s in sweep)
  xs, ys = [p[0] for p in pts], [p[1] for p in pts]
  if nfe < xs[0] or nfe > xs[-1]:
    return None
  return float(np.interp(nfe, xs, ys))


def main(argv=None):
  args = parse_args(argv)
  bench = Bench(args)
  params = bench.setup.init_params(jax.random.PRNGKey(args.seed))
  opt_state = bench.optimizer.init(params)
  test_points = np.asarray(sample_toy(args.data, jax.random.PRNGKey(10_000 + args.seed),
                                      args.test_size))
  load = os.getloadavg()
  print(f"jax {jax.__version__} on {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cpus, load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}",
        flush=True)
  t_compile = time.perf_counter()
  jax.block_until_ready(bench.step(params, opt_state, jax.random.PRNGKey(0), bench.batch(0)))
  t_compile = time.perf_counter() - t_compile
  print(f"compiled the train step in {t_compile:.1f} s", flush=True)

  records, evals, counts = [], [], []
  t_start = time.perf_counter()
  meter_t = meter_nfe = None
  for it in range(1, args.iters + 1):
    t0 = time.perf_counter()
    x = bench.batch(it)
    params, opt_state, loss, aux = bench.step(params, opt_state,
                                              jax.random.fold_in(jax.random.PRNGKey(1), it), x)
    loss = float(loss)
    dt = time.perf_counter() - t0
    nfe = int(aux["nfe"])
    records.append({"iter": it, "seconds": dt, "nfe": nfe, "loss": loss,
                    "nll": float(aux["nll"]), "end_time": float(aux["end_time"])})
    meter_t = dt if meter_t is None else 0.93 * meter_t + 0.07 * dt
    meter_nfe = nfe if meter_nfe is None else 0.93 * meter_nfe + 0.07 * nfe
    if it % args.count_every == 0 or it == args.iters:
      f, b = counting_nfe(bench, params, x, jax.random.PRNGKey(it))
      counts.append({"iter": it, "nfe_forward": f, "nfe_backward_counted": b})
    if it % args.log_every == 0 or it == 1:
      print(f"iter {it:5d} | {dt * 1000:6.1f} ms ({meter_t * 1000:6.1f}) | NFE fwd {nfe:4d} "
            f"({meter_nfe:5.1f}) | loss {loss:.4f} | T {float(aux['end_time']):.3f} | "
            f"{time.perf_counter() - t_start:7.1f} s", flush=True)
    stop = args.max_minutes and time.perf_counter() - t_start > 60 * args.max_minutes
    if it % args.eval_every == 0 or it == args.iters or stop:
      nll, se, test_nfe = bench.test_nll(params, test_points)
      evals.append({"iter": it, "test_nll": nll, "stderr": se, "nfe": test_nfe})
      print(f"[TEST] iter {it:5d} | test NLL {nll:.4f} +- {se:.4f} nats | NFE {test_nfe:.0f}",
            flush=True)
    if stop:
      print(f"stopping after {args.max_minutes} minutes", flush=True)
      break
  train_seconds = time.perf_counter() - t_start

  if args.plots:
    from jaxgen import evaluate  # pylint: disable=import-outside-toplevel
    tag = f"{args.data}_{'rnode' if args.kinetic or args.jacobian else 'ffjord'}"
    cnf.write_density(bench.setup, params, os.path.join(args.plots, f"density_{tag}.png"))
    samples, _ = jax.jit(cnf.make_sample_fn(bench.setup, bench.config.sampling),
                         static_argnums=2)(params, jax.random.PRNGKey(0), 2000)
    evaluate.save_scatter(np.asarray(samples), os.path.join(args.plots, f"samples_{tag}.png"),
                          reference=test_points[:2000], title=tag)
  sweep = match_nfe_sweep(bench, params, opt_state) if args.match_nfe else []
  first = records[: min(100, len(records))]
  last = records[-min(100, len(records)):]
  summary = {
      "command": "python experiments/cnf_toy/bench.py " + " ".join(sys.argv[1:] if argv is None
                                                                    else argv),
      "args": vars(args),
      "jax": jax.__version__, "cpus": os.cpu_count(), "load_average_at_start": load,
      "load_average_at_end": os.getloadavg(),
      "compile_seconds": t_compile, "iterations_run": len(records),
      "train_seconds": train_seconds,
      "start": {"median_seconds": float(np.median([r["seconds"] for r in first[1:]])),
                "mean_nfe_forward": float(np.mean([r["nfe"] for r in first]))},
      "end": {"median_seconds": float(np.median([r["seconds"] for r in last])),
              "mean_nfe_forward": float(np.mean([r["nfe"] for r in last]))},
      "seconds_per_nfe_bin": nfe_bins(records),
      "nfe_counts": counts,
      "test": evals,
      "final_test_nll": evals[-1]["test_nll"] if evals else None,
      "match_nfe_sweep": sweep,
      "ffjord_reference": FFJORD_REFERENCE,
  }
  if sweep:
    summary["matched"] = {
        "seconds_at_nfe_28": interpolate_seconds(sweep, 28),
        "seconds_at_nfe_148": interpolate_seconds(sweep, 148)}
  print("\n=== summary ===")
  print(f"iterations {len(records)} in {train_seconds / 60:.1f} min (FFJORD: 10,000 in ~50 min)")
  print(f"start: {summary['start']['median_seconds']:.4f} s/iter at NFE fwd "
        f"{summary['start']['mean_nfe_forward']:.0f}   (FFJORD 0.07 s at NFE 28)")
  print(f"end:   {summary['end']['median_seconds']:.4f} s/iter at NFE fwd "
        f"{summary['end']['mean_nfe_forward']:.0f}   (FFJORD 0.45 s at NFE 148 fwd / 150 bwd)")
  if counts:
    print(f"backward NFE (counted) at the end: {counts[-1]['nfe_backward_counted']}")
  for k, v in summary["seconds_per_nfe_bin"].items():
    print(f"  NFE {k:>9s}: {v['median_seconds'] * 1000:7.1f} ms/iter  ({v['iters']} iters)")
  if sweep:
    m = summary["matched"]
    for nfe, ref in ((28, 0.07), (148, 0.45)):
      s = m[f"seconds_at_nfe_{nfe}"]
      if s is not None:
        print(f"matched NFE {nfe}: {s:.4f} s/iter vs FFJORD {ref} s -> {ref / s:.1f}x faster")
  if evals:
    print(f"test NLL {evals[-1]['test_nll']:.4f} +- {evals[-1]['stderr']:.4f} nats after "
          f"{evals[-1]['iter']} iterations (FFJORD 3.620 after 10,000; 3.69 after 5,000)")
  if args.out:
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    summary["records_every_10th"] = [  # iteration, seconds, forward NFE, loss, end time
        [r["iter"], round(r["seconds"], 5), r["nfe"], round(r["loss"], 4), round(r["end_time"], 4)]
        for r in records[9::10]]
    with open(args.out, "w") as f:
      json.dump(summary, f, indent=1)
    print(f"wrote {args.out}")
  return summary


if __name__ == "__main__":
  main()
