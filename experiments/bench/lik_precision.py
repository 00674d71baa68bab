"""How far apart are two bits/dim evaluations of the same images, and why?

The likelihood criterion of issue 7 compares a fast evaluation with a float32 evaluation at the
highest matmul precision, image by image, to 0.01 bits/dim. Two things separate them: the
arithmetic of the network (bfloat16, TF32) and the adaptive solver, whose step sequence depends on
the arithmetic and on the other images of the batch (the per-example error norm takes the worst
example). This script runs the PF-ODE likelihood of ``bench.py`` (DDPM++ cont. VP, random 8-bit
images, output layers redrawn at ``--lik_param_scale``, Rademacher probes, Dopri5) for a list of
settings, each ``name=dtype:precision:batch:rtol``, and prints every pair's per-image difference on
the images they share, so that precision and solver noise can be told apart:

    python experiments/bench/lik_precision.py --nf 32 --images 8 \
        --settings "ref=float32:highest:8:1e-5,ref_b4=float32:highest:4:1e-5,..."

``dtype`` is ``float32`` or ``bfloat16`` (or a ``model.dtype`` plus options after ``+``, e.g.
``bfloat16+pallas_norm``); ``precision`` is XLA's ``default`` or ``highest``; a last field
``:base`` integrates the divergence of the VP drift's linear part outside the step-size control
(``likelihood.linear_divergence_baseline``). The first setting
is the reference of the summary table. Writes JSON with ``--out``.
"""
import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # pylint: disable=wrong-import-position  (sets jaxgen's XLA flags, like bench.py)

import jax  # pylint: disable=wrong-import-position
import jax.numpy as jnp  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position

from jaxgen import likelihood  # pylint: disable=wrong-import-position


def parse_setting(text):
  name, _, spec = text.partition("=")
  dtype, precision, batch, rtol, *flags = spec.split(":")
  dtype, *opts = dtype.split("+")
  model = {}
  for opt in opts:
    key, _, value = opt.partition("=")
    if not value or value.lower() in ("true", "1", "yes", "false", "0", "no"):
      model[key] = value.lower() not in ("false", "0", "no") if value else True
    else:
      model[key] = value  # e.g. residual_dtype=float32
  if precision not in ("default", "highest"):
    raise ValueError(f"setting {name!r}: precision must be 'default' or 'highest', got "
                     f"{precision!r}")
  if any(f != "base" for f in flags):
    raise ValueError(f"setting {name!r}: unknown flags {flags} (expected 'base')")
  return dict(name=name, dtype=dtype, precision=precision, batch=int(batch), rtol=float(rtol),
              model=model, baseline="base" in flags)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--settings", required=True)
  parser.add_argument("--images", type=int, default=32, help="images drawn (settings use a prefix)")
  parser.add_argument("--nf", type=int, default=128, help="DDPM++ base width (128: the real one)")
  parser.add_argument("--lik_param_scale", type=float, default=0.05)
  parser.add_argument("--xla_flags", default="")  # read by bench's early flag hook
  parser.add_argument("--merge", default="", help="JSON files (comma list) of earlier runs (same --images, "
                      "--nf, --lik_param_scale) whose settings join the comparison table")
  parser.add_argument("--out", default="")
  args = parser.parse_args()
  settings = [parse_setting(s) for s in args.settings.split(",") if s]
  bench.log(f"{jax.devices()[0].device_kind}, jax {jax.__version__}, nf {args.nf}")

  base = bench.make_setup("float32", args.images, nf=args.nf)
  with jax.default_device(jax.devices("cpu")[0]):
    params0 = jax.device_get(jax.jit(base._init_params)(jax.random.PRNGKey(0)))  # pylint: disable=protected-access
  params = bench.activate(params0, seed=1, scale=args.lik_param_scale)
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, size=(args.images, 32, 32, 3), dtype=np.uint8)
  x_all = (jnp.asarray(images, jnp.float32)
           + jax.random.uniform(jax.random.PRNGKey(3), images.shape)) / 256.0 * 2 - 1
  probes_all = likelihood.sample_probes(jax.random.PRNGKey(4), x_all.shape, "rademacher")

  results = {}
  for s in settings:
    setup = bench.make_setup(s["dtype"], s["batch"], nf=args.nf, **s["model"])
    n = s["batch"]

    def lik(p, x, probes, setup=setup, rtol=s["rtol"], baseline=s["baseline"]):
      logp, z, nfe = bench.pf_log_likelihood(setup, p, x, probes=probes, tol=rtol,
                                             baseline=baseline)
      prior = setup.process.prior_logp(z)
      return likelihood.bits_per_dim(logp, x.shape[1:]), prior, logp - prior, nfe

    bpd, prior, delta, nfes, t = [], [], [], [], time.perf_counter()
    with jax.default_matmul_precision(s["precision"]):
      fn = jax.jit(lik)
      for i in range(0, args.images - args.images % n, n):
        b, pr, de, nfe = fn(params, x_all[i:i + n], probes_all[:, i:i + n])
        bpd += [float(v) for v in np.asarray(b)]
        prior += [float(v) for v in np.asarray(pr)]
        delta += [float(v) for v in np.asarray(de)]
        nfes.append(int(nfe))
    res = dict(s, bpd=bpd, prior_logp_nats=prior, delta_nats=delta, nfe=nfes,
               seconds=time.perf_counter() - t)
    results[s["name"]] = res
    bench.log(f"{s['name']}: {len(bpd)} images, NFE {nfes}, mean bpd {np.mean(bpd):.5f}, "
              f"{res['seconds']:.1f} s")
    if args.out:
      with open(args.out, "w") as f:
        json.dump({"device": str(jax.devices()[0].device_kind), "jax": jax.__version__,
                   "nf": args.nf, "lik_param_scale": args.lik_param_scale,
                   "results": results}, f, indent=1)

  for path in [p for p in args.merge.split(",") if p]:
    with open(path) as f:
      earlier = json.load(f)
    for key in ("nf", "lik_param_scale"):
      if earlier[key] != getattr(args, key):
        raise ValueError(f"--merge {path}: its {key} is {earlier[key]}, not {getattr(args, key)}")
    results = {**earlier["results"], **results}
  names = list(results)
  print("\nper-image difference b - a on shared images: bits/dim (max |d|, rms, mean), and the rms "
        "of its two parts in nats (prior log-density at t1, the divergence integral)")
  print(f"{'a':>14} {'b':>14} {'n':>4} {'max':>9} {'rms':>9} {'mean':>10} {'prior':>9} {'delta':>9}")
  rms = lambda v: float(np.sqrt(np.mean(np.square(v))))
  for i, a in enumerate(names):
    for b in names[i + 1:]:
      m = min(len(results[a]["bpd"]), len(results[b]["bpd"]))
      diff = lambda k: np.asarray(results[b][k][:m]) - np.asarray(results[a][k][:m])
      d = diff("bpd")
      print(f"{a:>14} {b:>14} {m:>4} {np.max(np.abs(d)):>9.2e} {rms(d):>9.2e} {np.mean(d):>+10.2e} "
            f"{rms(diff('prior_logp_nats')):>9.2e} {rms(diff('delta_nats')):>9.2e}")


if __name__ == "__main__":
  main()
