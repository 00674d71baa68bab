"""GPU benchmark of the DDPM++ cont. (VP) network of configs/cifar10/vp_ddpmpp_continuous.py
(``--config cifar10.edm_ddpmpp``: any other image config of ``configs/``, e.g. EDM's DDPM++).

One call on a GPU host prints a table and writes JSON:
  * train images/s (batch 128, random CIFAR-10-shaped data, after warm-up) in float32 at XLA's
    default matmul precision and in bfloat16 compute (float32 master parameters), with the train
    step jitted exactly as ``jaxgen.train.train_and_evaluate`` jits it (replicated state, batch
    sharded on a one-device mesh, state donated, parameters and EMA carried as flat vectors;
    variant ``tree_carry``: the tree-in/tree-out step of runs 4-8),
  * compile time of the train step, peak GPU memory, XLA's temp-buffer size,
  * the first-step loss and gradient norm of each precision from the same state and batch
    (parameters with their zero-initialised kernels redrawn at unit scale, so the network's
    output is not ~0 and the comparison means something),
  * forward ms (batch 128), PF-ODE ms per NFE (drift + Rademacher divergence in one jvp), both
    pipelined (calls back to back) and waited for one by one; ``--sample_modes``: ms per network
    evaluation inside ``solvers.ddim_sample``,
    relative difference of the bf16 forward to the float32 one,
  * one whole likelihood call at rtol = atol = 1e-5 (time, NFE, bits/dim) per ``--lik_modes``;
    ``highest`` (float32 at the highest matmul precision, the reference) runs on the first
    ``--highest_batch`` images and is compared per image with the others,
  * model FLOPs utilization against 790 TFLOP/s, with the forward's FLOPs per image counted from
    its jaxpr (2 x multiply-adds of every convolution and matrix product: 21.7 GFLOP for the
    DDPM++ cont. network, the issue's count; 42.4 for EDM's) and 3x that per train step.

XLA flags: jaxgen's defaults (``jaxgen.parallel.DEFAULT_XLA_FLAGS``, as ``jaxgen.main`` sets them;
``--no_default_xla_flags`` leaves them out), then ``--xla_flags`` are appended to ``XLA_FLAGS``
before JAX starts. The network's forward pass, ms/NFE and the likelihood run on
``Setup.inference_params`` (kernels and conv/dense biases cast once), as the library's samplers
and likelihood do, and their jits load the shipped autotune results as the library's evaluation
programs do (``evaluate.xla_options``). Do not
turn command buffers off (``--xla_gpu_enable_command_buffer=``): on the H100 of this workplace
that made every number worse (NOTES.md, run 3). A full run (two cold train compiles of ~45-80 s,
forward/NFE/likelihood compiles, the highest-precision reference) takes longer than one 10-minute
call: split it with ``--train_modes/--fwd_modes/--lik_modes`` (runs 10 and 13 show how).

    python experiments/bench/bench.py --out experiments/bench/h100_runN.json
"""
import argparse
import json
import os
import sys
import time


def _early_flags():
  parser = argparse.ArgumentParser(add_help=False)
  parser.add_argument("--xla_flags", default="")
  parser.add_argument("--no_default_xla_flags", action="store_true")
  parser.add_argument("--dump_autotune_results", default="")
  known, _ = parser.parse_known_args()
  if not known.no_default_xla_flags:  # what jaxgen.main runs with
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    from jaxgen import parallel as _parallel  # pylint: disable=import-outside-toplevel
    _parallel.configure_xla_flags()
  if known.xla_flags:
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + known.xla_flags).strip()
  if known.dump_autotune_results:  # every autotuning result of this process, written by XLA
    os.makedirs(known.dump_autotune_results, exist_ok=True)
    os.environ["XLA_FLAGS"] += (" --xla_gpu_dump_autotune_results_to="
                                + os.path.join(known.dump_autotune_results, "dump.pbtxt"))


_early_flags()

import jax  # pylint: disable=wrong-import-position
import jax.numpy as jnp  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
import importlib  # pylint: disable=wrong-import-position
from jaxgen import evaluate, likelihood, models, parallel, predictions, solvers, train  # pylint: disable=wrong-import-position
from jaxgen.models import layers  # pylint: disable=wrong-import-position

CONFIG = {"module": "configs.cifar10.vp_ddpmpp_continuous", "fwd_gflop": 21.7}
PEAK_TFLOPS = 790.0
T0 = time.perf_counter()
MODES = {"float32": ("float32", "default"), "bfloat16": ("bfloat16", "default"),
         "highest": ("float32", "highest")}


def log(msg):
  print(f"[{time.perf_counter() - T0:7.1f}s] {msg}", flush=True)


def warmup_libraries():
  """Seconds of the process's first GPU work, before any benchmark compile: the device context,
  then a small bf16 and float32 convolution (forward and gradient) and matrix product, compiled
  and run. On a freshly started machine this is where cuDNN and cuBLAS are first read from disk;
  without it, that reading lands inside the first train-step compile (NOTES.md run 23)."""
  out = {}
  t = time.perf_counter()
  jax.block_until_ready(jnp.zeros(8) + 1)
  out["context_s"] = time.perf_counter() - t
  for dtype in ("bfloat16", "float32"):
    x = jnp.ones((8, 16, 16, 32), dtype)
    w = jnp.ones((3, 3, 32, 32), dtype) * 0.01
    a = jnp.ones((256, 256), dtype)

    def f(x, w, a):
      y = jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                       dimension_numbers=("NHWC", "HWIO", "NHWC"))
      return jnp.sum(y.astype(jnp.float32) ** 2) + jnp.sum((a @ a).astype(jnp.float32))

    t = time.perf_counter()
    jax.block_until_ready(jax.jit(jax.grad(f, argnums=(0, 1, 2)))(x, w, a))
    out[f"conv_matmul_{dtype}_s"] = time.perf_counter() - t
  log("warm-up (first GPU work, compiled and run): "
      + ", ".join(f"{k} {v:.1f}" for k, v in out.items()))
  return out


def peak_gib():
  stats = jax.devices()[0].memory_stats() or {}
  return stats.get("peak_bytes_in_use", 0) / 2**30


def timeit(fn, *args, n=20, warmup=2):
  """(pipelined s per call, synchronous median s per call, last output).

  Pipelined: ``n`` calls dispatched back to back and one wait (best of 3 windows), as a sampler
  or solver loop runs them; synchronous: the median of ``n`` calls each waited for, which adds
  the host's launch latency to the GPU time.
  """
  for _ in range(warmup):
    out = fn(*args)
  jax.block_until_ready(out)
  sync = []
  for _ in range(n):
    t = time.perf_counter()
    out = fn(*args)
    jax.block_until_ready(out)
    sync.append(time.perf_counter() - t)
  windows = []
  for _ in range(3):
    t = time.perf_counter()
    for _ in range(n):
      out = fn(*args)
    jax.block_until_ready(out)
    windows.append((time.perf_counter() - t) / n)
  return min(windows), float(np.median(sync)), out


def activate(params, seed=0, scale=1.0):
  """Zero-initialised kernels (``init_scale=0``: ~1e-10) redrawn at ``scale`` x unit scale.

  Convolution kernels stored OHWI are drawn in HWIO and transposed, so that both layouts get the
  same network (and runs before and after the layout change the same parameters)."""
  rng = np.random.default_rng(seed)
  ohwi_layout = is_ohwi()

  def fix(path, p):
    p = np.asarray(p)
    if p.ndim >= 2 and np.max(np.abs(p)) < 1e-6:
      ohwi = p.ndim == 4 and ohwi_layout and getattr(path[-1], "key", None) == "kernel"
      shape = p.shape[1:] + p.shape[:1] if ohwi else p.shape
      std = scale * 0.5 / np.sqrt(np.prod(shape[:-1]))
      q = (rng.normal(size=shape) * std).astype(np.float32)
      return np.transpose(q, (3, 0, 1, 2)) if ohwi else q
    return p

  return jax.tree_util.tree_map_with_path(fix, params)


def pf_drift(setup, p):
  """The probability-flow drift ``drift(x, t)`` of the network with parameters ``p`` (eps for
  score_sde's VP; EDM's denoiser for ``cifar10.edm_ddpmpp``): what one NFE evaluates; the ms/NFE
  timing and :func:`pf_log_likelihood` share it."""
  return predictions.as_drift_fn(setup.process, lambda y, t: setup.model_fn(p, y, t),
                                 setup.prediction)


def pf_log_likelihood(setup, params, x, *, key=None, probes=None, tol=1e-5, baseline=False):
  """``(logp (batch,), z, nfe)`` of the benchmark's PF-ODE likelihood: the eps network on
  ``Setup.inference_params`` (as ``jaxgen.evaluate.make_nll_fn``), Rademacher probes (from
  ``key`` or explicit ``probes``), Dopri5 from t = 1e-5 to 1 at rtol = atol = ``tol``;
  ``baseline``: the VP drift's linear divergence outside the step-size control (run 19)."""
  return likelihood.ode_log_likelihood(
      pf_drift(setup, setup.inference_params(params)), x, key=key, probes=probes,
      prior_logp=setup.process.prior_logp, t0=max(1e-5, float(setup.process.t_min)),
      t1=float(setup.process.T), divergence="rademacher",
      rtol=tol, atol=tol,
      divergence_baseline=(likelihood.linear_divergence_baseline(setup.process, x.shape[1:])
                           if baseline else None))


def make_setup(dtype, batch, **model):
  config = importlib.import_module(CONFIG["module"]).get_config()
  config.model.dtype = dtype
  config.training.batch_size = batch
  for key, value in model.items():
    if key in config.optim:            # e.g. flat_update, materialize_grads
      config.optim[key] = value
    elif key in config.training:       # e.g. deterministic
      config.training[key] = value
    else:
      config.model[key] = value
  return train.Setup(config)


def is_ohwi():
  return importlib.import_module(CONFIG["module"]).get_config().model.get(
      "kernel_layout", "HWIO").upper() == "OHWI"


def forward_gflop_per_image(setup) -> float:
  """The network's forward FLOPs for one 32x32x3 image (``jaxgen.models.count_flops``)."""
  params = jax.eval_shape(setup.init_state, jax.random.PRNGKey(0)).params
  x = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
  t = jax.ShapeDtypeStruct((1,), jnp.float32)
  return models.count_flops(lambda p, x, t: setup.model_fn(p, x, t), params, x, t) / 1e9


class Bench:
  """Holds the initial parameters on the host, so that the device's peak memory counts only
  what a training (or evaluation) process itself keeps there."""

  def __init__(self, batch, lik_param_scale=0.05):
    self.batch = batch
    self.mesh = parallel.make_mesh(jax.devices()[:1])
    self.repl = parallel.replicated(self.mesh)
    base = make_setup("float32", batch)
    with jax.default_device(jax.devices("cpu")[0]):
      state = jax.jit(base.init_state)(jax.random.PRNGKey(0))
    self.init_params = jax.device_get(state.params)
    self.active_params = activate(self.init_params)
    # The PF-ODE runs on parameters whose zero-initialised output layers are redrawn small: the
    # network then contributes to the drift (so precision matters), as after a little training,
    # without the stiffness of a unit-scale random output.
    self.lik_params = activate(self.init_params, seed=1, scale=lik_param_scale)
    self.host_state = state.replace(params=None, ema_params=None, opt_state=None)
    rng = np.random.default_rng(0)
    self.images = rng.integers(0, 256, size=(batch, 32, 32, 3), dtype=np.uint8)
    self.batch_dev = parallel.host_local_to_global({"image": self.images}, self.mesh)
    self.forward_out = {}

  def fresh_state(self, setup):
    """The train state a run starts from: active parameters, EMA = parameters, fresh Adam.
    With ``model.remat`` the blocks' parameters carry flax's ``Checkpoint`` prefix."""
    params = layers.remat_param_names(self.active_params, setup.config.model.get("remat", False))
    ema = jax.tree_util.tree_map(np.copy, params)
    state = jax.device_put(self.host_state.replace(params=params, ema_params=ema), self.repl)
    opt_state = jax.jit(setup.init_opt_state, out_shardings=self.repl)(state.params)
    return state.replace(opt_state=opt_state)

  def train(self, name, dtype, steps, no_flat_carry=False, repeat_check=False, **model):
    setup = make_setup(dtype, self.batch, **model)
    res = {"mode": name, "dtype": dtype, "matmul_precision": "default", **model}
    # As jaxgen.train.train_and_evaluate runs it: with optim.flat_update (the default) the
    # parameters and EMA are carried as flat vectors between steps, and training.deterministic
    # becomes the step's XLA options.
    flat = setup.flat_update and not no_flat_carry
    res["compiler_options"] = train.train_compiler_options(setup.config)
    step, to_carry, _ = train.make_sharded_train_step(setup, self.mesh, flat_carry=flat)

    def start():
      return to_carry(self.fresh_state(setup))

    state = start()
    res["flat_carry"] = bool(flat)
    t = time.perf_counter()
    compiled = step.lower(state, self.batch_dev).compile()
    res["compile_s"] = time.perf_counter() - t
    try:
      mem = compiled.memory_analysis()
      res["temp_gib"] = mem.temp_size_in_bytes / 2**30
      res["arg_gib"] = mem.argument_size_in_bytes / 2**30
      # What the step needs on the device: arguments + temporaries + outputs not aliased.
      res["xla_footprint_gib"] = (mem.argument_size_in_bytes + mem.temp_size_in_bytes
                                  + mem.output_size_in_bytes - mem.alias_size_in_bytes) / 2**30
    except Exception:  # pylint: disable=broad-except
      pass
    state, m = compiled(state, self.batch_dev)
    res["loss_step0"], res["grad_norm_step0"] = float(m["loss"]), float(m["grad_norm"])
    if repeat_check:
      # The first step again, from the same state and batch: bitwise the same result? (Holds one
      # more state on the device for a moment, so the peak memory of such a run reads higher.)
      again, m2 = compiled(start(), self.batch_dev)
      same = [bool(jnp.array_equal(a, b)) for a, b in zip(
          jax.tree_util.tree_leaves((state.params, state.ema_params, m)),
          jax.tree_util.tree_leaves((again.params, again.ema_params, m2)))]
      res["repeat_bitwise_equal"] = all(same)
      res["repeat_max_abs_diff_params"] = float(jnp.max(jnp.abs(
          jnp.concatenate([jnp.ravel(x) for x in jax.tree_util.tree_leaves(state.params)])
          - jnp.concatenate([jnp.ravel(x) for x in jax.tree_util.tree_leaves(again.params)]))))
      log(f"train {name}: step 0 repeated bitwise equal: {res['repeat_bitwise_equal']} "
          f"(max |diff| of parameters {res['repeat_max_abs_diff_params']:.3g})")
      del again, m2
    for _ in range(3):
      state, m = compiled(state, self.batch_dev)
    jax.block_until_ready(m)
    windows = []
    for _ in range(3):
      t = time.perf_counter()
      for _ in range(steps):
        state, m = compiled(state, self.batch_dev)
      jax.block_until_ready(m)
      windows.append((time.perf_counter() - t) / steps)
    dt = min(windows)
    res.update(train_img_s=self.batch / dt, train_step_ms=dt * 1e3,
               train_step_ms_windows=[w * 1e3 for w in windows], loss=float(m["loss"]),
               train_step_ms_median=float(np.median(windows)) * 1e3,
               mfu_train=self.batch / dt * 3 * CONFIG["fwd_gflop"] * 1e9 / (PEAK_TFLOPS * 1e12),
               peak_gib_so_far=peak_gib())
    log(f"train {name}: compile {res['compile_s']:.1f} s, {dt * 1e3:.2f} ms/step, "
        f"{res['train_img_s']:.0f} img/s, loss0 {res['loss_step0']:.6f}, peak {peak_gib():.2f} GiB")
    del state, compiled
    return res

  def sample(self, name, res, steps=51):
    """ms per network evaluation inside ``solvers.ddim_sample`` (one jitted loop): the time of a
    ``steps``-evaluation run minus a 1-evaluation run, over ``steps - 1``; with the float32
    parameters, with every parameter cast to the compute dtype once before sampling, and with
    ``Setup.inference_params`` (kernels and conv/dense biases cast, as the library's samplers
    do)."""
    dtype, precision = MODES[name]
    with jax.default_matmul_precision(precision):
      setup = make_setup(dtype, self.batch)
      params = jax.device_put(self.active_params)
      variants = {"": params}
      if dtype != "float32":
        variants["_params_cast"] = jax.tree_util.tree_map(lambda p: p.astype(dtype), params)
        # as jaxgen's samplers run it (evaluate.make_sample_fn): kernels and conv/dense biases
        # cast, normalization vectors float32
        variants["_inference_params"] = setup.inference_params(params)
      opts = evaluate.xla_options(setup.config)  # as the library's samplers compile
      for suffix, p in variants.items():
        times = {}
        for n in (1, steps):
          fn = jax.jit(lambda p, key, n=n: solvers.ddim_sample(
              key, setup.process, lambda x, t: setup.model_fn(p, x, t), (self.batch, 32, 32, 3),
              num_steps=n)[0], compiler_options=opts)
          jax.block_until_ready(fn(p, jax.random.PRNGKey(0)))
          ts = []
          for i in range(3):
            t = time.perf_counter()
            jax.block_until_ready(fn(p, jax.random.PRNGKey(i)))
            ts.append(time.perf_counter() - t)
          times[n] = min(ts)
        res[f"ddim_ms_per_eval{suffix}"] = (times[steps] - times[1]) / (steps - 1) * 1e3
        res[f"ddim_{steps}_s{suffix}"] = times[steps]
        log(f"{name}: DDIM {steps} evaluations {times[steps]:.3f} s, "
            f"{res[f'ddim_ms_per_eval{suffix}']:.2f} ms per evaluation{suffix}")
    return res

  def evaluate(self, name, res, do_fwd=True, do_lik=True, lik_batch=None, lik_tol=1e-5,
               lik_baseline=False):
    dtype, precision = MODES[name]
    lik_params = jax.device_put(self.lik_params)
    with jax.default_matmul_precision(precision):
      setup = make_setup(dtype, self.batch)
      opts = evaluate.xla_options(setup.config)  # as the library's evaluation programs compile
      if do_fwd:
        x = jax.random.normal(jax.random.PRNGKey(1), (self.batch, 32, 32, 3))
        t_vec = jax.random.uniform(jax.random.PRNGKey(5), (self.batch,), minval=0.05, maxval=1.0)
        fwd = jax.jit(lambda p, x, t: setup.model_fn(p, x, t), compiler_options=opts)
        params = jax.device_put(self.active_params)
        # As a sampler calls it: kernels and biases cast to the compute dtype once, before the loop.
        fwd_s, fwd_sync_s, out = timeit(fwd, setup.inference_params(params), x, t_vec)
        res["forward_ms"], res["forward_ms_sync"] = fwd_s * 1e3, fwd_sync_s * 1e3
        if dtype != "float32":  # and from the float32 parameters (a cast on every call)
          res["forward_ms_f32_params"] = timeit(fwd, params, x, t_vec)[0] * 1e3
        self.forward_out[name] = out
        probes = likelihood.sample_probes(jax.random.PRNGKey(2), x.shape, "rademacher")

        def one_nfe(p, x, t):
          return likelihood.hutchinson_divergence(pf_drift(setup, p), x, t, probes)

        nfe_s, nfe_sync_s, _ = timeit(jax.jit(one_nfe, compiler_options=opts),
                                      setup.inference_params(lik_params), x, t_vec)
        res["ms_per_nfe"], res["ms_per_nfe_sync"] = nfe_s * 1e3, nfe_sync_s * 1e3
        log(f"{name}: forward {res['forward_ms']:.2f} ms ({res['forward_ms_sync']:.2f} waited for "
            f"each), {res['ms_per_nfe']:.2f} ms/NFE ({res['ms_per_nfe_sync']:.2f})")
      if do_lik:
        n = lik_batch or self.batch
        images = self.images[:n]
        x_data = (jnp.asarray(images, jnp.float32) + jax.random.uniform(
            jax.random.PRNGKey(3), (self.batch,) + images.shape[1:])[:n]) / 256.0 * 2 - 1

        def lik(p, x, key):
          logp, _, nfe = pf_log_likelihood(setup, p, x, key=key, tol=lik_tol,
                                           baseline=lik_baseline)
          return likelihood.bits_per_dim(logp, x.shape[1:]), nfe

        lik = jax.jit(lik, compiler_options=opts)
        t = time.perf_counter()
        jax.block_until_ready(lik(lik_params, x_data, jax.random.PRNGKey(4)))
        res["likelihood_compile_s"] = time.perf_counter() - t
        t = time.perf_counter()
        bpd, nfe = jax.block_until_ready(lik(lik_params, x_data, jax.random.PRNGKey(4)))
        res["likelihood_call_s"] = time.perf_counter() - t
        res["likelihood_batch"] = n
        res["likelihood_nfe"] = int(nfe)
        res["likelihood_bpd"] = float(jnp.mean(bpd))
        res["likelihood_bpd_per_image"] = [float(b) for b in np.asarray(bpd)]
        if "ms_per_nfe" in res and n == self.batch:
          res["likelihood_overhead"] = res["likelihood_call_s"] / (
              int(nfe) * res["ms_per_nfe"] / 1e3) - 1
        log(f"{name}: likelihood {res['likelihood_call_s']:.2f} s, NFE {int(nfe)}, "
            f"bpd {res['likelihood_bpd']:.5f} (batch {n})")
    return res


def parse_options(spec):
  """'a+b=false+c=path+d=0.5' -> {'a': True, 'b': False, 'c': 'path', 'd': 0.5} (config fields of
  a train run); 'none' or 'off' is the empty string (e.g. autotune_results=none)."""
  opts = {}
  for item in filter(None, spec.split("+")):
    key, _, value = item.partition("=")
    low = value.lower()
    if low in ("", "true", "1", "yes", "false", "0", "no"):
      opts[key] = low in ("", "true", "1", "yes")
    elif low in ("none", "off"):
      opts[key] = ""
    else:
      try:     # numbers as numbers (augment_p=0.0 into a float field)
        opts[key] = int(value) if value.lstrip("-").isdigit() else float(value)
      except ValueError:
        opts[key] = value
  return opts


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--config", default="cifar10.vp_ddpmpp_continuous",
                      help="module under configs/ whose network and loss are timed")
  parser.add_argument("--steps", type=int, default=20)
  parser.add_argument("--train_modes", default="bfloat16,float32")
  parser.add_argument("--fwd_modes", default="float32,bfloat16")
  parser.add_argument("--lik_modes", default="bfloat16,highest")
  parser.add_argument("--sample_modes", default="",
                      help="modes whose ms per network evaluation inside ddim_sample is timed")
  parser.add_argument("--highest_batch", type=int, default=32)
  parser.add_argument("--lik_tol", type=float, default=1e-5, help="rtol = atol of the likelihood")
  parser.add_argument("--lik_baseline", action="store_true",
                      help="integrate the VP drift's linear divergence outside the step-size "
                           "control (likelihood.linear_divergence_baseline; run 19)")
  parser.add_argument("--lik_param_scale", type=float, default=0.05,
                      help="scale of the redrawn output layers for ms/NFE and the likelihood")
  parser.add_argument("--variants", default="",
                      help="extra train-only variants: comma list of [dtype:]options joined by "
                           "'+' (model or optim options, dtype default bfloat16), e.g. "
                           "fused_norm+fast_dropout,float32:flat_update")
  parser.add_argument("--train_options", default="",
                      help="options of the --train_modes runs, joined by '+', e.g. deterministic "
                           "or materialize_grads=false (config.training / optim / model fields)")
  parser.add_argument("--repeat_check", action="store_true",
                      help="repeat the first train step from the same state: bitwise equal?")
  parser.add_argument("--budget", type=float, default=1e9, help="seconds; optional parts skipped")
  parser.add_argument("--xla_flags", default="", help="appended to XLA_FLAGS before JAX starts")
  parser.add_argument("--cache_dir", default="",
                      help="persistent compilation cache (as jaxgen.main turns on by default); "
                           "a second run with the same directory measures a warm start")
  parser.add_argument("--dump_autotune_results", default="",
                      help="directory: XLA writes every autotuning result of this process there, "
                           "as <gpu kind>__jaxlib-<version>.pbtxt, the name jaxgen looks for in "
                           "jaxgen/autotune_results (the train runs then load none themselves)")
  parser.add_argument("--warmup", action="store_true",
                      help="time a small convolution and matrix product first (library loading "
                           "on a fresh machine), so that the train compile does not include it")
  parser.add_argument("--out", default="")
  args = parser.parse_args()
  if args.dump_autotune_results:
    args.train_options = "+".join(filter(None, [args.train_options, "autotune_results=none"]))
  if args.cache_dir:
    os.makedirs(args.cache_dir, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", args.cache_dir)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  split = lambda s: [x for x in s.split(",") if x]
  CONFIG["module"] = "configs." + args.config
  if args.config != "cifar10.vp_ddpmpp_continuous":  # the default keeps the 21.7
    CONFIG["fwd_gflop"] = forward_gflop_per_image(make_setup("float32", 1))
  log(f"config {args.config}: {CONFIG['fwd_gflop']:.2f} GFLOP per image forward")
  log(f"{jax.devices()[0].device_kind}, jax {jax.__version__}, XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
  warmup = warmup_libraries() if args.warmup else None
  bench = Bench(args.batch, args.lik_param_scale)
  rows = {}

  def dump():
    if args.out:
      with open(args.out, "w") as f:
        json.dump({"device": str(jax.devices()[0].device_kind), "jax": jax.__version__,
                   "xla_flags": os.environ.get("XLA_FLAGS", ""), "batch": args.batch,
                   "config": args.config, "fwd_gflop_per_image": CONFIG["fwd_gflop"],
                   "cache_dir": args.cache_dir, "lik_param_scale": args.lik_param_scale,
                   "lik_tol": args.lik_tol, "lik_baseline": args.lik_baseline,
                   "warmup_s": warmup,
                   "rows": list(rows.values())}, f, indent=1)

  order = []
  for name in split(args.train_modes) + [m for m in split(args.fwd_modes) + split(args.lik_modes)
                                         + split(args.sample_modes)
                                         if m not in split(args.train_modes)]:
    if name not in order:
      order.append(name)
  for name in order:
    dtype, precision = MODES[name]
    res = rows.setdefault(name, {"mode": name, "dtype": dtype, "matmul_precision": precision})
    if name in split(args.train_modes):
      res.update(bench.train(name, dtype, args.steps, repeat_check=args.repeat_check,
                             **parse_options(args.train_options)))
    bench.evaluate(name, res, do_fwd=name in split(args.fwd_modes),
                   do_lik=name in split(args.lik_modes),
                   lik_batch=args.highest_batch if name == "highest" else None,
                   lik_tol=args.lik_tol, lik_baseline=args.lik_baseline)
    if name in split(args.sample_modes):
      bench.sample(name, res)
    if name == "bfloat16":
      res["peak_gib"] = peak_gib()
    dump()
  if "float32" in bench.forward_out:
    ref32 = bench.forward_out["float32"]
    for name, out in bench.forward_out.items():
      if name != "float32":
        rows[name]["forward_rel_vs_float32"] = float(jnp.linalg.norm(out - ref32)
                                                     / jnp.linalg.norm(ref32))
  ref = rows.get("highest", {}).get("likelihood_bpd_per_image")
  for r in rows.values():
    if ref and "likelihood_bpd_per_image" in r and r["mode"] != "highest":
      mine = np.asarray(r["likelihood_bpd_per_image"][:len(ref)])
      r["bpd_vs_highest_max_abs"] = float(np.max(np.abs(mine - np.asarray(ref))))
      r["bpd_vs_highest_mean"] = float(np.mean(mine) - np.mean(ref))
  if args.dump_autotune_results:
    import jaxlib  # pylint: disable=import-outside-toplevel
    target = os.path.join(args.dump_autotune_results, os.path.basename(
        parallel.autotune_results_path(jax.devices()[0].device_kind, jaxlib.__version__)))
    written = os.path.join(args.dump_autotune_results, "dump.pbtxt")
    if os.path.isfile(written):   # only GPU compilers write one
      os.replace(written, target)
      log(f"autotune results: {target}")
    else:
      log("no autotune results were written (not a GPU?)")
  for spec in split(args.variants):
    if time.perf_counter() - T0 > args.budget:
      log(f"skipping variant {spec}: over budget")
      continue
    dtype, _, opts_spec = spec.rpartition(":")
    dtype = dtype or "bfloat16"
    opts = parse_options(opts_spec)
    if opts.pop("tree_carry", False):   # the per-step ravel/unravel of run 4 (make_train_step)
      opts["no_flat_carry"] = True
    rows[f"{dtype}+{opts_spec}"] = bench.train(f"{dtype}+{opts_spec}", dtype, args.steps, **opts)
    dump()
  dump()
  print()
  print(f"{'mode':>26} {'img/s':>7} {'MFU':>6} {'compile s':>9} {'fwd ms':>7} {'ms/NFE':>7} "
        f"{'lik s':>6} {'NFE':>4} {'overhead':>8} {'bpd':>8} {'d_bpd':>8} {'loss0':>9} {'peak':>5}")
  nan = float("nan")
  for r in rows.values():
    print(f"{r['mode']:>26} {r.get('train_img_s', nan):>7.0f} {r.get('mfu_train', nan):>6.1%} "
          f"{r.get('compile_s', nan):>9.1f} {r.get('forward_ms', nan):>7.2f} "
          f"{r.get('ms_per_nfe', nan):>7.2f} {r.get('likelihood_call_s', nan):>6.2f} "
          f"{r.get('likelihood_nfe', 0):>4d} {r.get('likelihood_overhead', nan):>8.1%} "
          f"{r.get('likelihood_bpd', nan):>8.4f} {r.get('bpd_vs_highest_max_abs', nan):>8.1e} "
          f"{r.get('loss_step0', nan):>9.6f} {r.get('peak_gib', r.get('peak_gib_so_far', nan)):>5.2f}")
  log("done")


if __name__ == "__main__":
  main()
