"""Evaluation: bits/dim with the probability-flow ODE, sampling, image grids and plots.

Everything heavy is one jitted function sharded over the ``data`` axis of the mesh; the host only
feeds batches and writes files.
"""
from __future__ import annotations

import json
import math
import os
import time
import warnings
from typing import Any, Callable, Dict, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxgen._checks import check_int
from jaxgen import data as data_lib
from jaxgen import likelihood, parallel, predictions, solvers
from jaxgen.processes import EDMPath, VESDE, alpha_at_end

Array = jax.Array


# --------------------------------------------------------------------------------------------------
# samplers from the config
# --------------------------------------------------------------------------------------------------
SAMPLING_METHODS = ("pc", "em", "ancestral", "ode", "euler", "heun", "ddim", "edm_heun")


def _check_sampling_method(method: str, process) -> None:
  if method not in SAMPLING_METHODS:
    raise ValueError(f"unknown config.sampling.method {method!r}; expected one of "
                     f"{SAMPLING_METHODS}")
  if method == "edm_heun" and not isinstance(process, EDMPath):
    raise ValueError(f"config.sampling.method 'edm_heun' runs on the EDM path (sigma = t); the "
                     f"config's process is {type(process).__name__}: use 'heun' (Heun with EDM's "
                     "time schedule for any process)")


# Below this many uniform steps, predictor-corrector / Euler-Maruyama sampling on EDM's path warns.
_EDM_UNIFORM_GRID_STEPS = 1000


def validate_sampling_config(config, process) -> None:
  """Rejects a bad ``config.sampling`` before training starts (ValueError naming the field):
  the method, ``num_steps``, ``eps``, the tolerances of ``'ode'``, the predictor-corrector
  options of ``'pc'`` / ``'em'`` / ``'ancestral'`` for ``process``, and the model's use of the
  noise level (``model.embedding_type``, ``model.scale_by_sigma``, ``model.num_classes``), the
  ``class_label`` to sample (-1 or a class of the model); and ``eval.num_repeats``. Warns
  (UserWarning) for ``'pc'`` / ``'em'`` on EDM's path with fewer than 1000 steps, whose uniform
  grid in ``t = sigma`` resolves small noise levels poorly."""
  _validate_conditioning(config, process)
  eval_num_repeats(config.eval)
  num_classes = int(config.model.get("num_classes", 0) or 0)
  label = config.sampling.get("class_label", -1)  # an int >= -1: train._NUMBER_FIELDS
  if label >= 0 and not label < num_classes:
    raise ValueError(f"config.sampling.class_label={label} needs a class-conditional model with "
                     f"more classes: config.model.num_classes is {num_classes}")
  if config.method in ("cnf", "distill"):  # they sample their own way (adaptive ODE, one step)
    return
  sampling = config.sampling
  _check_sampling_method(sampling.method, process)
  num_steps = check_int(sampling.get("num_steps", 0), "config.sampling.num_steps", minimum=0,
                      note=" (0: the process's N)")
  eps = sampling.get("eps", 1e-3)
  if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 <= eps < process.T:
    raise ValueError(f"config.sampling.eps must lie in [0, T) = [0, {process.T}), got {eps!r}")
  if sampling.method == "ode":
    for name in ("rtol", "atol"):
      value = sampling.get(name, 1e-5)
      if (isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0
          or not math.isfinite(value)):
        raise ValueError(f"config.sampling.{name} must be a number > 0 and finite, got {value!r}")
  options = {}
  if sampling.method == "pc":
    options = dict(predictor=sampling.predictor, corrector=sampling.corrector, snr=sampling.snr,
                   n_steps_each=sampling.n_steps_each)
  elif sampling.method == "ancestral":
    options = dict(predictor="ancestral", corrector="none")
  elif sampling.method == "em":
    options = dict(predictor="euler_maruyama", corrector="none")
  if options:
    try:
      solvers.check_pc_options(process, num_steps=int(num_steps) or None,
                               eps=max(float(eps), process.t_min), **options)
    except ValueError as e:
      field = "config.sampling.eps" if str(e).startswith("`eps`") else "config.sampling"
      raise ValueError(f"{field} (method {sampling.method!r}): {e}") from None
    if isinstance(process, EDMPath) and sampling.method in ("pc", "em") and \
        0 < int(num_steps) < _EDM_UNIFORM_GRID_STEPS:
      warnings.warn(
          f"config.sampling.method={sampling.method!r} steps uniformly in t = sigma over "
          f"[{process.sigma_min}, {process.sigma_max}] (score_sde's grid); with num_steps="
          f"{num_steps} on EDM's path it barely resolves small sigma (2-D Gaussian data with the "
          f"exact score: covariance 9x off at 100 steps, 1.2% at 1000). Use method 'heun' or "
          f"'ddim' (EDM's rho schedule), or {_EDM_UNIFORM_GRID_STEPS}+ steps", UserWarning,
          stacklevel=2)


def _validate_conditioning(config, process) -> None:
  """The network's noise conditioning (``losses.noise_conditioning``) must suit its options:
  ``embedding_type='fourier'`` takes its log (positive only where it is ``sigma``, ``999 t``),
  ``scale_by_sigma`` divides by it (score_sde's VE models, where it is ``sigma``), and a class-
  conditional network needs the data set's labels."""
  model = config.model
  if config.method in ("cnf",):
    return
  edm = isinstance(process, EDMPath) or config.method == "edm"
  if str(model.get("embedding_type", "positional")).lower() == "fourier" and edm:
    raise ValueError("config.model.embedding_type='fourier' takes the log of the noise "
                     "conditioning, which on the EDM path is log(sigma) / 4 (<= 0 for sigma <= 1, "
                     "NaN there): use 'positional'")
  if bool(model.get("scale_by_sigma", False)) and not isinstance(process, VESDE):
    raise ValueError(f"config.model.scale_by_sigma divides the output by the noise conditioning, "
                     f"which is sigma only for the VE SDE; the config's process is "
                     f"{type(process).__name__}: set it False")
  num_classes = int(model.get("num_classes", 0) or 0)
  if num_classes > 0 and int(config.data.get("num_classes", 0) or 0) != num_classes:
    raise ValueError(f"config.model.num_classes={num_classes} needs a labelled data set with as "
                     f"many classes: config.data.num_classes is "
                     f"{config.data.get('num_classes', 0)!r}")


def make_sample_fn(setup, sampling_config) -> Callable[[Any, Array, int], Tuple[Array, Array]]:
  """``sample_fn(params, key, n) -> (samples (n, *shape), nfe)`` for ``config.sampling.method``."""
  if setup.config.method == "cnf":
    from jaxgen import cnf  # pylint: disable=import-outside-toplevel
    return cnf.make_sample_fn(setup, sampling_config)
  if setup.config.method == "distill":
    from jaxgen import rectified_flow  # pylint: disable=import-outside-toplevel
    return rectified_flow.make_distilled_sample_fn(setup, sampling_config)
  method = sampling_config.method
  process, prediction, model_fn = setup.process, setup.prediction, setup.model_fn
  _check_sampling_method(method, process)
  eps = float(sampling_config.eps)
  if isinstance(process, EDMPath):
    eps = max(eps, process.sigma_min)
  num_steps = int(sampling_config.num_steps) or int(getattr(process, "N", 1000))

  num_classes = int(setup.config.model.get("num_classes", 0) or 0)
  class_label = int(sampling_config.get("class_label", -1))
  heun_schedule = "edm" if alpha_at_end(process) > 0 else "uniform"  # EDM's needs sigma/alpha at T

  def fn(params, key, n):
    shape = (n,) + tuple(setup.shape)
    params = setup.inference_params(params)  # kernels cast once, not on every network call
    key, labels = draw_class_labels(key, n, num_classes, class_label)
    model = lambda x, t: model_fn(params, x, t, labels=labels)
    score_fn = predictions.as_score_fn(process, model, prediction)
    drift_fn = predictions.as_drift_fn(process, model, prediction)
    if method == "pc":
      return solvers.pc_sample(key, process, score_fn, shape, predictor=sampling_config.predictor,
                               corrector=sampling_config.corrector, snr=sampling_config.snr,
                               n_steps_each=sampling_config.n_steps_each, num_steps=num_steps,
                               eps=eps, denoise=sampling_config.noise_removal)
    if method == "em":
      return solvers.euler_maruyama_sample(key, process, score_fn, shape, num_steps=num_steps,
                                           eps=eps, denoise=sampling_config.noise_removal)
    if method == "ancestral":
      return solvers.pc_sample(key, process, score_fn, shape, predictor="ancestral",
                               corrector="none", num_steps=num_steps, eps=eps,
                               denoise=sampling_config.noise_removal)
    if method == "ode":
      return solvers.ode_sample(key, process, drift_fn, shape, solver="dopri5",
                                rtol=sampling_config.rtol, atol=sampling_config.atol, eps=eps,
                                denoise=sampling_config.noise_removal)
    if method == "euler":
      return solvers.ode_sample(key, process, drift_fn, shape, solver="euler",
                                num_steps=num_steps, eps=eps)
    if method == "heun":
      return solvers.heun_sample(key, process, drift_fn, shape, num_steps=num_steps, eps=eps,
                                 schedule=heun_schedule)
    if method == "edm_heun":
      denoiser = lambda x, sigma: predictions.convert(process, x, sigma, model(x, sigma),
                                                      prediction, "x0")
      return solvers.edm_heun_sample(key, denoiser, shape, num_steps=num_steps,
                                     sigma_min=process.t_min, sigma_max=process.T)
    # the model's own prediction type: an eps cannot give x0 where alpha(T) = 0 (linear path)
    return solvers.ddim_sample(key, process, model, shape, num_steps=num_steps, eps=eps,
                               prediction_type=prediction)

  return fn


# --------------------------------------------------------------------------------------------------
# likelihood
# --------------------------------------------------------------------------------------------------
def is_toy(config) -> bool:
  """True for the toy data sets (``toy_<name>``): NLL in nats instead of bits/dim."""
  return config.data.dataset.startswith("toy_")


LIKELIHOOD_PRECISIONS = ("model", "float32", "highest")


def eval_num_repeats(eval_config) -> int:
  """``eval_config.num_repeats`` (default 1): passes over the bits/dim batches, each with fresh
  dequantization noise and divergence probes (score_sde's ``bpd_num_repeats``)."""
  return check_int(eval_config.get("num_repeats", 1), "config.eval.num_repeats")


def likelihood_precision(eval_config) -> str:
  """``eval_config.precision`` (default ``'model'``), checked against
  :data:`LIKELIHOOD_PRECISIONS`."""
  value = eval_config.get("precision", "model")
  if not isinstance(value, str) or value.lower() not in LIKELIHOOD_PRECISIONS:
    raise ValueError(f"unknown config.eval.precision {value!r}; expected one of "
                     f"{LIKELIHOOD_PRECISIONS}")
  return value.lower()


def xla_options(config) -> Optional[dict]:
  """XLA options of the evaluation and generation programs (bits/dim, samples, held-out loss,
  reflow pairs): the autotune results of ``training.autotune_results``
  (:func:`jaxgen.parallel.autotune_options`), so that ``--mode=eval``, ``sample`` or ``reflow`` on
  a machine that never compiled them skip the autotuning the results cover."""
  return parallel.autotune_options(config.training.get("autotune_results", ""))


def make_nll_fn(setup, eval_config) -> Callable:
  """``nll_fn(params, key, batch) -> (bits/dim or nats (batch,), nfe)``.

  Images are uniformly dequantized (whatever the training used) and reported in bits/dim with
  the convention of :func:`jaxgen.likelihood.bits_per_dim`; toy data in nats.

  ``eval_config.precision`` sets the network's arithmetic:
  * ``'model'`` (default): the model's compute dtype (``model.dtype``) at XLA's default matmul
    precision, as training runs it;
  * ``'float32'``: a float32 network (the same parameters) at XLA's default precision, which is
    TF32 for convolutions and matrix products on NVIDIA GPUs since Ampere;
  * ``'highest'``: a float32 network with every convolution and matrix product at the highest
    precision.
  On CIFAR-10's DDPM++ (NOTES.md run 19) the solver matters more than the arithmetic: at
  ``rtol = atol = 1e-5`` one image's bits/dim moves by up to ~1e-2 with the step sequence (the
  other images of its batch pick it), at any precision. Against a converged highest-precision
  evaluation, bfloat16 at ``1e-5`` is within 6.3e-3 per image and highest precision at ``1e-5``
  within 1.1e-2. Averages over many images move far less (~1e-3).
  """
  precision = likelihood_precision(eval_config)
  if precision != "model" and jnp.dtype(setup.config.model.get("dtype", "float32")) != jnp.float32:
    config = setup.config.copy_and_resolve_references()
    config.model.dtype = "float32"
    setup = type(setup)(config)
  nll_fn = _make_nll_fn(setup, eval_config)
  if precision != "highest":
    return nll_fn

  def highest_nll_fn(params, key, batch):
    with jax.default_matmul_precision("highest"):
      return nll_fn(params, key, batch)

  return highest_nll_fn


def _make_nll_fn(setup, eval_config) -> Callable:
  """:func:`make_nll_fn` at the setup's own precision."""
  if setup.config.method == "cnf":  # before `process`: cnf.StandaloneSetup has none
    from jaxgen import cnf  # pylint: disable=import-outside-toplevel
    return cnf.make_nll_fn(setup, eval_config)
  config, process = setup.config, setup.process
  data_config = config.data.copy_and_resolve_references()
  data_config.uniform_dequantization = True
  data_range = 2.0 if data_config.centered else 1.0
  t0 = max(float(eval_config.t0), process.t_min)
  num_classes = int(config.model.get("num_classes", 0) or 0)

  def nll_fn(params, key, batch):
    k_deq, k_probe = jax.random.split(key)
    if is_toy(config):
      x = batch["image"].astype(jnp.float32)
    else:
      x = data_lib.preprocess(k_deq, batch["image"], data_config, train=False)
    p = setup.inference_params(params)  # kernels cast once, not on every network call
    labels = batch.get("label") if num_classes else None  # a class-conditional network's labels
    model = lambda y, t: setup.eval_model_fn(p, y, t, labels=labels)  # jvp-able (fused_norm)
    drift_fn = predictions.as_drift_fn(process, model, setup.prediction)
    logp, _, nfe = likelihood.ode_log_likelihood(
        drift_fn, x, key=k_probe, prior_logp=process.prior_logp, t0=t0, t1=process.T,
        divergence=eval_config.divergence, num_probes=int(eval_config.num_probes),
        solver=eval_config.solver, rtol=float(eval_config.rtol), atol=float(eval_config.atol),
        throw=False)  # a failed solve gives NaN for its batch; counted and reported below
    if is_toy(config):
      return -logp, nfe
    return likelihood.bits_per_dim(logp, x.shape[1:], num_levels=int(data_config.num_levels),
                                   data_range=data_range), nfe

  return nll_fn


def _cached(cache: Optional[dict], key: str, build: Callable[[], Any]) -> Any:
  """``build()``, kept in ``cache[key]`` when a cache is given (a periodic evaluation reuses its
  jitted programs instead of tracing and compiling them again at every evaluation)."""
  if cache is None:
    return build()
  if key not in cache:
    cache[key] = build()
  return cache[key]


def evaluate_likelihood(setup, params, mesh, split: Optional[str] = None,
                        max_batches: Optional[int] = None, seed: Optional[int] = None,
                        progress: bool = True, cache: Optional[dict] = None) -> Dict[str, float]:
  """Mean bits/dim (nats for toy data) over ``split`` (default ``config.data.eval_split``).

  ``seed`` (default ``config.eval.seed``, 0 where absent) draws the dequantization noise and the
  divergence probes: the periodic, final and ``--mode=eval`` evaluations of one checkpoint agree.

  Batched over ``config.eval.batch_size`` (global), sharded over devices, with a progress bar.
  The pass over the batches runs ``config.eval.num_repeats`` times, each with fresh
  dequantization noise and divergence probes; the mean is over all the values, ``num_examples``
  and ``num_failed`` count values (examples times repeats) and the standard error is over the
  examples' means (sample standard deviation, ``ddof=1``; NaN for fewer than two examples).
  ``cache``: a dict kept between calls with the same setup and mesh (the jitted program).
  """
  config = setup.config
  split = split or config.data.eval_split
  if seed is None:
    seed = int(config.eval.get("seed", 0))
  num_repeats = eval_num_repeats(config.eval)
  ds = data_lib.get_dataset(config.data, split, seed=config.seed)
  local_batch = parallel.check_global_batch(config.eval.batch_size, mesh, "config.eval.batch_size")
  repl, sharded = parallel.replicated(mesh), parallel.batch_sharded(mesh)
  nll = _cached(cache, "nll", lambda: parallel.jit(
      make_nll_fn(setup, config.eval), xla_options(config), in_shardings=(repl, repl, sharded),
      out_shardings=(sharded, repl)))
  total_batches = ds.num_eval_batches(local_batch)
  if max_batches is not None:
    total_batches = min(total_batches, max_batches)
  passes, nfes = [], []
  bar = _progress(total_batches * num_repeats, "bits/dim" if not is_toy(config) else "nll",
                  progress)
  t_start = time.time()
  for repeat in range(num_repeats):
    values = []
    for i, batch in enumerate(ds.iterate(local_batch)):
      if i >= total_batches:
        break
      mask = batch.pop("mask")
      batch = {"image": batch["image"], "label": batch["label"]}
      global_batch = parallel.host_local_to_global(batch, mesh)
      global_mask = parallel.to_host(parallel.host_local_to_global({"m": mask}, mesh))["m"]
      key = jax.random.fold_in(jax.random.PRNGKey(seed), i)
      if repeat:  # fresh dequantization noise and probes; the first pass keeps these keys
        key = jax.random.fold_in(key, repeat)
      value, nfe = nll(params, key, global_batch)
      value = parallel.to_host(value)
      values.append(value[global_mask])
      nfes.append(int(nfe))
      if bar is not None:
        bar.update(1)
        bar.set_postfix(value=f"{np.nanmean(np.concatenate(passes + values)):.4f}",
                        nfe=nfes[-1])
    passes.append(np.concatenate(values) if values else np.zeros((0,)))
  if bar is not None:
    bar.close()
  values = np.stack(passes)  # (num_repeats, examples): every pass reads the same examples
  name = "nll_nats" if is_toy(config) else "bpd"
  failed = ~np.isfinite(values)
  if failed.any() and jax.process_index() == 0:
    what = "examples" if num_repeats == 1 else f"values ({num_repeats} repeats of each example)"
    print(f"warning: the likelihood ODE failed (step budget or non-finite drift) for "
          f"{int(failed.sum())} of {values.size} {what}; {name} is over the other "
          f"{int((~failed).sum())}", flush=True)
  good = values[~failed]
  mean = float(np.mean(good)) if len(good) else float("nan")
  counts = np.sum(~failed, axis=0)  # the standard error is over examples, not correlated repeats
  per_example = np.sum(np.where(failed, 0.0, values), axis=0)[counts > 0] / counts[counts > 0]
  # the sample standard deviation (ddof=1): the population one understates the error by
  # sqrt(n / (n - 1)); one example gives no estimate (NaN, null in JSON)
  stderr = (float(np.std(per_example, ddof=1) / math.sqrt(len(per_example)))
            if len(per_example) > 1 else float("nan"))
  out = {name: mean, f"{name}_stderr": stderr,
         "num_examples": int(len(good)), "num_failed": int(failed.sum()),
         "mean_nfe": float(np.mean(nfes)) if nfes else 0.0, "seconds": time.time() - t_start}
  if num_repeats > 1:
    out["num_repeats"] = num_repeats
  if config.method == "distill":
    out["density_of"] = ("the probability-flow ODE of the distilled network's velocity field, not "
                         "its one-step generator (which has no tractable density)")
  return out


def _progress(total, desc, enabled):
  if not enabled or jax.process_index() != 0:
    return None
  try:
    from tqdm import tqdm  # pylint: disable=import-outside-toplevel
    return tqdm(total=total, desc=desc, leave=True, mininterval=2.0)
  except ImportError:  # pragma: no cover
    return None


# --------------------------------------------------------------------------------------------------
# pictures
# --------------------------------------------------------------------------------------------------
def save_image_grid(images: np.ndarray, path: str, data_config, ncols: Optional[int] = None) -> str:
  """Write a PNG grid of images given in the model's data range ``(n, H, W, C)``."""
  from PIL import Image  # pylint: disable=import-outside-toplevel
  images = np.asarray(data_lib.postprocess(jnp.asarray(images), data_config))
  n, h, w, c = images.shape
  ncols = ncols or int(math.ceil(math.sqrt(n)))
  nrows = int(math.ceil(n / ncols))
  pad = 1
  grid = np.full((nrows * (h + pad) + pad, ncols * (w + pad) + pad, c), 255, np.uint8)
  for i in range(n):
    r, col = divmod(i, ncols)
    grid[pad + r * (h + pad): pad + r * (h + pad) + h,
         pad + col * (w + pad): pad + col * (w + pad) + w] = images[i]
  scale = max(1, 256 // max(grid.shape[:2]))
  img = Image.fromarray(grid[..., 0] if c == 1 else grid)
  if scale > 1:
    img = img.resize((grid.shape[1] * scale, grid.shape[0] * scale), Image.NEAREST)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  img.save(path)
  return path


def save_scatter(points: np.ndarray, path: str, reference: Optional[np.ndarray] = None,
                 title: str = "") -> str:
  """Write a PNG scatter plot of 2-D samples (next to reference data if given); points of more
  dimensions are shown by their first two coordinates."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  ncols = 2 if reference is not None else 1
  fig, axes = plt.subplots(1, ncols, figsize=(4 * ncols, 4), squeeze=False)
  panels = [(points, "samples")] + ([(reference, "data")] if reference is not None else [])
  for ax, (pts, name) in zip(axes[0], panels):
    pts = np.asarray(pts)
    ax.scatter(pts[:, 0], pts[:, 1], s=1, alpha=0.5)
    ax.set_title(f"{title} {name}".strip())
    ax.set_aspect("equal")
    ax.set_xlim(-4.5, 4.5)
    ax.set_ylim(-4.5, 4.5)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=100, bbox_inches="tight")
  plt.close(fig)
  return path


def save_density(log_density_fn: Callable[[Array], Array], path: str, lim: float = 4.0,
                 n: int = 200, title: str = "") -> str:
  """Write a PNG of ``exp(log_density_fn(points (m, 2)) -> (m,))`` on a grid over ``[-lim, lim]^2``."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  xs = np.linspace(-lim, lim, n)
  grid = np.stack(np.meshgrid(xs, xs), -1).reshape(-1, 2).astype(np.float32)
  dens = np.exp(np.asarray(log_density_fn(jnp.asarray(grid)))).reshape(n, n)
  fig, ax = plt.subplots(figsize=(4, 4))
  ax.imshow(dens, origin="lower", extent=(-lim, lim, -lim, lim), cmap="viridis")
  ax.set_title(title)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=100, bbox_inches="tight")
  plt.close(fig)
  return path


def density_grid(config) -> int:
  """Side of the density plot's grid for ``config``: ``config.eval.density_grid`` (default 100)
  for 2-D toy data; 0 (no plot) when it is 0, for other data, for a distilled generator (its
  density is not tractable: its velocity field's ODE was trained only at the Euler step times)
  and for a source with no closed-form density (``data.source``: the ODE likelihood needs the
  prior's)."""
  if not is_toy(config) or data_lib.toy.toy_dim(config.data.dataset[len("toy_"):]) != 2:
    return 0
  n = check_int(config.eval.get("density_grid", 100), "config.eval.density_grid", minimum=0,
                note=" (0: no density plot)")
  if config.method == "distill":
    return 0
  if str(config.data.get("source", "") or "") not in ("", "toy_8gaussians"):
    return 0
  return n


def density_extent(config, n: int = 20000) -> float:
  """Half-width ``lim`` of the density plot's square ``[-lim, lim]^2`` for toy data: 4 (the 2-D
  sets of FFJORD), or more where 0.1 % of ``n`` points of the data set lie beyond
  (``toy_gmm2``), rounded up to a half."""
  name = config.data.dataset[len("toy_"):]
  reach = float(np.quantile(np.abs(np.asarray(data_lib.sample_toy(name, 0, n))), 0.999))
  return max(4.0, math.ceil(2.2 * reach) / 2.0)


def log_density_on_grid(setup, params, lim: float = 4.0, n: int = 200, batch_size: int = 4000,
                        eval_config=None, cache: Optional[dict] = None, mesh=None) -> np.ndarray:
  """``log p`` of a model of 2-D data on the ``n x n`` grid ``linspace(-lim, lim, n)^2`` (row
  ``i`` is ``y = ys[i]``): a CNF's own density, and for every other method the density of its
  probability-flow ODE (a distilled generator: of its velocity field's ODE), with the exact
  divergence and ``eval_config``'s solver and tolerances (default ``setup.config.eval``).
  ``cache``: a dict kept between calls with the same setup, eval config and mesh (the program).
  ``mesh``: split each chunk of ``batch_size`` points (rounded up to a multiple of the devices)
  over the mesh's devices, and over its hosts, each host solving its rows only (every host must
  call this together); ``None``: one device. Either way the solve is that of the whole chunk
  (the adaptive solver's error norm is over it), so the values agree up to the solver's
  tolerance (sums in another order can move a step choice: within 5e-3 on the tests' grid).
  Returns ``(n, n)``, the same on every host; NaN where the solve failed (step budget)."""
  import ml_collections  # pylint: disable=import-outside-toplevel
  if tuple(setup.shape) != (2,):
    raise ValueError(f"log_density_on_grid needs 2-D data, got shape {tuple(setup.shape)}")
  n = check_int(n, "`n`")
  batch_size = check_int(batch_size, "`batch_size`")
  if mesh is not None:
    devices = parallel.data_parallel_size(mesh)
    batch_size = int(math.ceil(batch_size / devices) * devices)
    parallel.check_global_batch(batch_size, mesh, "`batch_size`")

  def build():
    cfg = ml_collections.ConfigDict(dict(eval_config or setup.config.eval))
    cfg.divergence = "exact"
    fn = make_nll_fn(setup, cfg)
    if mesh is None:
      return jax.jit(fn)
    repl, sharded = parallel.replicated(mesh), parallel.batch_sharded(mesh)
    return parallel.jit(fn, xla_options(setup.config), in_shardings=(repl, repl, sharded),
                        out_shardings=(sharded, repl))

  nll = _cached(cache, "density_nll" if mesh is None else f"density_nll_{batch_size}", build)
  xs = np.linspace(-lim, lim, n)
  grid = np.stack(np.meshgrid(xs, xs), -1).reshape(-1, 2).astype(np.float32)
  out = []
  for i in range(0, len(grid), batch_size):
    chunk = grid[i:i + batch_size]
    pad = batch_size - len(chunk)
    chunk = np.concatenate([chunk, np.zeros((pad, 2), np.float32)]) if pad else chunk
    if mesh is None:
      batch = {"image": jnp.asarray(chunk)}
    else:  # this host's rows of the chunk, assembled into one array over every host's devices
      rows = parallel.host_batch_rows(batch_size, mesh)
      batch = parallel.host_local_to_global({"image": chunk[rows]}, mesh)
    values, _ = nll(params, jax.random.PRNGKey(0), batch)
    out.append(-parallel.to_host(values)[:batch_size - pad])
  return np.concatenate(out).reshape(n, n)


def write_density(setup, params, path: str, lim: float = 4.0, n: int = 200,
                  title: Optional[str] = None, cache: Optional[dict] = None, mesh=None) -> str:
  """PNG of the density ``exp(log p)`` of a model of 2-D data on ``[-lim, lim]^2``
  (:func:`log_density_on_grid`, split over ``mesh``'s devices and hosts when given;
  :func:`save_density`); host 0 writes it and warns if some of the grid's solves failed (they
  show as blank). Returns ``path``."""
  flat = log_density_on_grid(setup, params, lim=lim, n=n, cache=cache, mesh=mesh).reshape(-1)
  if title is None:
    title = setup.config.data.dataset + (
        "" if setup.config.method == "cnf" else " (probability-flow ODE)")
  if jax.process_index() != 0:
    return path
  bad = int(np.sum(~np.isfinite(flat)))
  if bad:
    print(f"warning: the density ODE failed (step budget or non-finite drift) at {bad} of "
          f"{flat.size} grid points of {path}; they show as blank", flush=True)
  # save_density evaluates the same row-major grid; hand it the values computed above.
  return save_density(lambda pts: jnp.asarray(flat), path, lim=lim, n=n, title=title)


def unused_name(directory: str, name: str, suffixes: Tuple[str, ...]) -> str:
  """``name``, or ``name_2``, ``name_3``, ... : the first for which no ``directory/<name><suffix>``
  exists (earlier results are kept, not overwritten)."""
  candidate, n = name, 1
  while any(os.path.exists(os.path.join(directory, candidate + s)) for s in suffixes):
    n += 1
    candidate = f"{name}_{n}"
  return candidate


def write_samples(setup, samples: np.ndarray, workdir: str, name: str,
                  keep_existing: bool = False,
                  metadata: Optional[Dict[str, Any]] = None,
                  labels: Optional[np.ndarray] = None) -> Dict[str, str]:
  """Save samples as ``.npz`` and a PNG (grid for images, scatter for 2-D) under
  ``workdir/samples`` (process 0 only); returns their absolute paths.

  ``labels``: a class-conditional model's sampled classes ``(num,)``, saved in the ``.npz`` as
  ``labels`` beside ``samples``.

  ``keep_existing``: where ``name`` was written before, write ``name_2`` (``name_3``, ...)
  instead. ``metadata``: also written next to them as ``<name>.json`` (key ``json``).
  """
  config = setup.config
  out_dir = os.path.abspath(os.path.join(workdir, "samples"))
  if keep_existing:
    name = unused_name(out_dir, name, (".npz", ".png", ".json"))
  npz = os.path.join(out_dir, f"{name}.npz")
  png = os.path.join(out_dir, f"{name}.png")
  paths = {"npz": npz, "png": png}
  if metadata is not None:
    paths["json"] = os.path.join(out_dir, f"{name}.json")
  if jax.process_index() != 0:  # every host holds all samples; one writes them
    return paths
  os.makedirs(out_dir, exist_ok=True)
  arrays = {"samples": np.asarray(samples)}
  if labels is not None:
    if len(labels) != len(samples):
      raise ValueError(f"`labels` must have one class per sample: {len(labels)} labels for "
                       f"{len(samples)} samples")
    arrays["labels"] = np.asarray(labels)
  np.savez_compressed(npz, **arrays)
  if is_toy(config):
    reference = np.asarray(data_lib.sample_toy(config.data.dataset[len("toy_"):], 0,
                                               len(samples)))
    save_scatter(samples, png, reference=reference, title=config.data.dataset)
  else:
    save_image_grid(np.clip(np.asarray(samples)[:64], -10, 10), png, config.data)
  if metadata is not None:
    write_json(paths["json"], dict(metadata, npz=npz, png=png))
  bad = int(np.sum(~np.all(np.isfinite(np.reshape(samples, (len(samples), -1))), axis=-1)))
  if bad:
    print(f"warning: {bad} of {len(samples)} samples are not finite (NaN/inf); they show as black "
          f"in {png}", flush=True)
  return paths


def draw_class_labels(key: Array, n: int, num_classes: int,
                      class_label: int = -1) -> Tuple[Array, Optional[Array]]:
  """The classes a class-conditional sampler draws: ``(key, labels)``, ``labels`` of shape
  ``(n,)`` uniform in ``0 .. num_classes - 1`` from a split of ``key`` (all ``class_label`` when it
  is ``>= 0``: ``config.sampling.class_label``) and ``key`` replaced by the other half, so that the
  sampling noise does not depend on how the classes were chosen; ``(key, None)`` unchanged for
  ``num_classes = 0`` (an unconditional model)."""
  if not num_classes:
    return key, None
  key, k_labels = jax.random.split(key)
  if class_label >= 0:
    return key, jnp.full((n,), class_label, jnp.int32)
  return key, jax.random.randint(k_labels, (n,), 0, num_classes)


def _conditional_classes(setup) -> int:
  """Classes of a class-conditional score / flow network or distilled generator whose sampler
  draws labels (0: none)."""
  if setup.config.method == "cnf":
    return 0
  return int(setup.config.model.get("num_classes", 0) or 0)


def generate_samples(setup, params, mesh, num: int, seed: int, cache: Optional[dict] = None,
                     progress: bool = True, return_labels: bool = False):
  """``num`` samples with the config's sampler, in sharded batches of ``sampling.batch_size``,
  with a progress bar (``progress``) when there is more than one batch; ``num >= 1``
  (ValueError naming ``config.sampling.num_samples`` otherwise).
  ``cache``: a dict kept between calls with the same setup and mesh (the jitted program).

  Returns ``(samples, nfe)``, with ``return_labels`` ``(samples, nfe, labels)``: ``labels``
  ``(num,)`` int32 are the classes a class-conditional network sampled (drawn from the same keys
  by :func:`draw_class_labels`), None for an unconditional one."""
  config = setup.config
  num = check_int(num, "config.sampling.num_samples", note=" to generate samples")
  batch = min(int(config.sampling.batch_size), int(num))
  devices = parallel.data_parallel_size(mesh)
  batch = int(math.ceil(batch / devices) * devices)
  repl, sharded = parallel.replicated(mesh), parallel.batch_sharded(mesh)

  def build():
    sample_fn = make_sample_fn(setup, config.sampling)
    return parallel.jit(lambda p, k: sample_fn(p, k, batch), xla_options(config),
                        in_shardings=(repl, repl), out_shardings=(sharded, repl))

  run = _cached(cache, f"samples_{batch}", build)
  num_batches = int(math.ceil(num / batch))
  bar = _progress(num_batches, f"samples ({config.sampling.method})",
                  progress and num_batches > 1)
  num_classes = _conditional_classes(setup)
  out, labels, nfe = [], [], 0
  for i in range(num_batches):
    key = jax.random.fold_in(jax.random.PRNGKey(seed), i)
    x, nfe = run(params, key)
    out.append(parallel.to_host(x))
    if return_labels and num_classes:  # the draw of the jitted sampler, repeated on the host
      labels.append(np.asarray(draw_class_labels(
          key, batch, num_classes, int(config.sampling.get("class_label", -1)))[1], np.int32))
    if bar is not None:
      bar.update(1)
      bar.set_postfix(nfe=int(nfe))
  if bar is not None:
    bar.close()
  samples = np.concatenate(out)[:num]
  if not return_labels:
    return samples, int(nfe)
  return samples, int(nfe), (np.concatenate(labels)[:num] if labels else None)


# --------------------------------------------------------------------------------------------------
# during training
# --------------------------------------------------------------------------------------------------
def make_periodic_evaluation(config) -> Callable:
  """The ``evaluate_fn`` given to :func:`jaxgen.train.train_and_evaluate`: held-out loss, bits/dim
  on ``eval.num_bpd_batches`` batches (EMA parameters), a sample grid and, on 2-D toy data, a
  density plot (:func:`density_grid`)."""
  cache = {}

  def evaluate_fn(setup, state, step, workdir, mesh):
    results = {}
    if jax.process_index() == 0:
      print(f"evaluating @ step {step}: {_periodic_plan(config)} ...", flush=True)
    ds = data_lib.get_dataset(config.data, config.data.eval_split, seed=config.seed)
    local_batch = parallel.check_global_batch(config.eval.batch_size, mesh,
                                              "config.eval.batch_size")
    if "loss" not in cache:
      repl, sharded = parallel.replicated(mesh), parallel.batch_sharded(mesh)
      cache["loss"] = parallel.jit(setup.make_eval_loss(per_example=True), xla_options(config),
                                   in_shardings=(repl, repl, sharded), out_shardings=sharded)
    # The mean of the per-example losses over the real rows of the first two batches (the last
    # batch of a split is padded; ``mask`` marks its real rows, on every host).
    total, count = 0.0, 0
    for i, batch in enumerate(ds.iterate(local_batch)):
      if i >= 2:
        break
      mask = batch["mask"]
      batch = {"image": batch["image"], "label": batch["label"]}
      rows = cache["loss"](state.ema_params, jax.random.PRNGKey(i),
                           parallel.host_local_to_global(batch, mesh))
      real = parallel.to_host(rows)[
          parallel.to_host(parallel.host_local_to_global({"m": mask}, mesh))["m"]]
      total += float(np.sum(real, dtype=np.float64))
      count += int(real.size)
    results["held_out_loss"] = total / count if count else float("nan")
    if config.eval.num_bpd_batches:
      lik = evaluate_likelihood(setup, state.ema_params, mesh,
                                max_batches=int(config.eval.num_bpd_batches), progress=False,
                                cache=cache)
      results.update({k: v for k, v in lik.items() if k in ("bpd", "nll_nats", "mean_nfe")})
      results["nll_examples"] = int(lik["num_examples"])   # (times eval.num_repeats)
    if config.sampling.num_samples:
      samples, nfe, labels = generate_samples(setup, state.ema_params, mesh,
                                              int(config.sampling.num_samples), seed=step,
                                              cache=cache, progress=False, return_labels=True)
      paths = write_samples(setup, samples, workdir, f"step_{step:07d}", labels=labels)
      results["sample_nfe"] = nfe
      results["sample_grid"] = paths["png"]
    grid = density_grid(config)
    if grid and workdir is not None:  # (no workdir: no files, as for the sample grid)
      lim = _cached(cache, "density_extent", lambda: density_extent(config))
      results["density_plot"] = write_density(setup, state.ema_params, os.path.abspath(
          os.path.join(workdir, "samples", f"density_{step:07d}.png")), lim=lim, n=grid,
                                              cache=cache, mesh=mesh)
    msg = "  ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                    for k, v in results.items())
    if jax.process_index() == 0:
      print(f"eval @ step {step}: {msg}", flush=True)
    return results

  return evaluate_fn


def run_options(config, kind: str) -> Dict[str, Any]:
  """The config sections that decide a ``kind`` (``'eval'`` or ``'sampling'``) result, as plain
  values, written next to it so that results of one step made with other options can be told
  apart: ``config.eval`` (solver, tolerances, divergence, probes, precision, ...) or
  ``config.sampling`` (method, num_steps, ...), with ``config.cnf`` / ``config.distill`` where
  the method reads them; and ``model_dtype`` (the network's arithmetic), plus for ``'eval'`` the
  ``seed`` (a toy data set's evaluation set depends on it) and ``data`` (data set, and the
  ``num_levels`` / ``centered`` of the bits/dim convention)."""
  out = {"method": config.method, kind: config[kind].to_dict(),
         # the network's arithmetic (eval.precision 'model' and sampling run at this dtype)
         "model_dtype": str(config.model.get("dtype", "float32"))}
  if kind == "eval":
    out["split"] = config.data.eval_split
    out["seed"] = config.seed  # the data set's seed: it draws a toy data set's evaluation set
    data = config.data
    out["data"] = {"dataset": data.dataset}
    if not is_toy(config):  # the bits/dim convention: log2(num_levels / data range) is added
      out["data"].update(num_levels=int(data.num_levels), centered=bool(data.centered))
  for section in ("cnf", "distill"):
    if config.method == section and section in config:
      out[section] = config[section].to_dict()
  return json_safe(out)


def _periodic_plan(config) -> str:
  """What a periodic evaluation computes, for the line printed before it starts."""
  parts = [f"held-out loss (2 batches of {config.eval.batch_size})"]
  if config.eval.num_bpd_batches:
    what = "nll" if is_toy(config) else "bits/dim"
    repeats = eval_num_repeats(config.eval)
    parts.append(f"{config.eval.num_bpd_batches} {what} batches of {config.eval.batch_size}"
                 + (f" x {repeats} repeats" if repeats > 1 else "")
                 + (f" ({config.eval.solver})" if config.eval.get("solver") else ""))
  if config.sampling.num_samples:
    parts.append(f"{config.sampling.num_samples} samples ({config.sampling.method})")
  if density_grid(config):
    parts.append(f"a density plot ({density_grid(config)}^2 points)")
  return ", ".join(parts)


def json_safe(obj: Any) -> Any:
  """``obj`` with NaN and +-inf floats (numpy's too) replaced by None, in nested dicts, lists and
  tuples: standard JSON has no NaN (``json.dump`` would write a bare ``NaN``)."""
  if isinstance(obj, dict):
    return {k: json_safe(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [json_safe(v) for v in obj]
  if isinstance(obj, (float, np.floating)):
    return float(obj) if math.isfinite(obj) else None
  if isinstance(obj, (np.integer, np.bool_)):
    return obj.item()
  return obj


def write_json(path: str, obj: Dict[str, Any]) -> None:
  """Writes ``obj`` as indented standard JSON to ``path`` (process 0 only; creates the folder);
  NaN and infinities are written as ``null``."""
  if jax.process_index() != 0:
    return
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  text = json.dumps(json_safe(obj), indent=1, default=str, allow_nan=False)
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "w") as f:   # written whole, then renamed: a crash never leaves half a file
    f.write(text)
  os.replace(tmp, path)
