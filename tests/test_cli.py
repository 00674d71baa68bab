"""The command line's eval and sample modes, and every sampler the config can choose."""
import json
import os
import re
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

from configs.toy import vp_mlp
from jaxgen import evaluate, parallel, train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_DIGITS = ["--config=configs/digits/vp_unet.py", "--config.training.n_iters=6",
               "--config.training.batch_size=16", "--config.training.log_every=3",
               "--config.training.eval_every=0", "--config.training.preemption_every=6",
               "--config.model.nf=8"]


def _main(args, timeout=1800):
  env = dict(os.environ, PYTHONUNBUFFERED="1",
             XLA_FLAGS="--xla_force_host_platform_device_count=2")
  proc = subprocess.run([sys.executable, "-m", "jaxgen.main"] + args, cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=timeout)
  out = proc.stdout + proc.stderr
  assert proc.returncode == 0, out[-4000:]
  return out


def test_train_then_eval_whole_test_split_then_sample(tmp_path):
  workdir = str(tmp_path / "run")
  _main(TINY_DIGITS + [f"--workdir={workdir}", "--mode=train"])

  out = _main(TINY_DIGITS + [f"--workdir={workdir}", "--mode=eval",
                             "--config.eval.rtol=1e-3", "--config.eval.atol=1e-3"])
  path = re.search(r"summary: (\S+)", out).group(1)
  assert path == os.path.join(workdir, "eval", "eval_step_6.json")
  summary = json.load(open(path))
  assert summary["num_examples"] == 297 and summary["num_failed"] == 0  # the whole test split
  assert summary["step"] == 6 and summary["mean_nfe"] > 0
  assert 0.5 < summary["bpd"] < 20 and summary["bpd_stderr"] > 0

  out = _main(TINY_DIGITS + [f"--workdir={workdir}", "--mode=sample",
                             "--config.sampling.num_samples=20", "--config.sampling.method=ddim",
                             "--config.sampling.num_steps=10"])
  assert "20 samples (ddim, NFE 10)" in out
  npz = re.search(r"NFE 10\): (\S+\.npz)", out).group(1)
  assert npz == os.path.join(workdir, "samples", "sample_step_6.npz")
  samples = np.load(npz)["samples"]
  assert samples.shape == (20, 8, 8, 1) and np.all(np.isfinite(samples))
  grid = np.asarray(Image.open(re.search(r"sample grid: (\S+)", out).group(1)))
  assert grid.std() > 0  # not blank


def test_eval_without_checkpoint_is_a_clear_error(tmp_path):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
  proc = subprocess.run([sys.executable, "-m", "jaxgen.main"] + TINY_DIGITS +
                        [f"--workdir={tmp_path}", "--mode=eval"], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=900)
  assert proc.returncode == 2 and "Traceback" not in proc.stderr  # one line, not a traceback
  assert f"jaxgen: error: no checkpoints in {tmp_path}" in proc.stderr
  assert "train first" in proc.stderr


@pytest.mark.parametrize("method", [m for m in evaluate.SAMPLING_METHODS if m != "edm_heun"])
def test_every_sampler_of_the_config_runs_sharded(method):
  """Each `config.sampling.method` on a VP toy model, sharded over the test's 8 devices."""
  config = vp_mlp.get_config()
  config.model.hidden = (16, 16)
  config.sampling.method = method
  config.sampling.num_steps = 40  # the DDPM discretization needs beta_max / N < 1
  config.sampling.rtol = config.sampling.atol = 1e-3
  config.sampling.batch_size = 16
  setup = train.Setup(config)
  params = setup.init_state(jax.random.PRNGKey(0)).params
  mesh = parallel.make_mesh()
  samples, nfe = evaluate.generate_samples(setup, params, mesh, 24, seed=0)
  assert samples.shape == (24, 2) and np.all(np.isfinite(samples))
  assert nfe > 0
  again, _ = evaluate.generate_samples(setup, params, mesh, 24, seed=0)
  np.testing.assert_array_equal(samples, again)


def test_edm_heun_needs_the_edm_path():
  config = vp_mlp.get_config()
  config.sampling.method = "edm_heun"
  setup = train.Setup(config)
  with pytest.raises(ValueError, match="edm_heun.*EDM path.*'heun'"):
    evaluate.make_sample_fn(setup, config.sampling)


@pytest.mark.parametrize("method", ["ode", "euler", "heun", "ddim"])
def test_deterministic_samplers_run_on_the_linear_path(method):
  """Flow matching's linear path has alpha(T) = 0: `heun` takes a uniform grid there (EDM's
  schedule needs sigma/alpha at T) and `ddim` reads the model's own prediction (an eps cannot
  give x0 at T); both used to fail at the first sample."""
  from configs.toy import linear_mlp  # pylint: disable=import-outside-toplevel
  config = linear_mlp.get_config()
  config.model.hidden = (16, 16)
  config.sampling.method = method
  config.sampling.num_steps = 8
  config.sampling.rtol = config.sampling.atol = 1e-3
  train.validate_config(config, num_devices=8)
  setup = train.Setup(config)
  params = setup.init_state(jax.random.PRNGKey(0)).params
  samples, nfe = jax.jit(lambda p, k: evaluate.make_sample_fn(setup, config.sampling)(p, k, 16))(
      params, jax.random.PRNGKey(1))
  assert samples.shape == (16, 2) and bool(np.all(np.isfinite(np.asarray(samples))))
  assert int(nfe) > 0


@pytest.mark.parametrize("field,value,match", [
    ("sampling.method", "em", "alpha\\(T\\) = 0"),          # linear path: reverse SDE singular
    ("sampling.eps", 2.0, "config.sampling.eps"),
    ("sampling.eps", -0.1, "config.sampling.eps"),
    ("sampling.num_steps", -3, "config.sampling.num_steps"),
])
def test_bad_sampling_options_of_a_flow_are_refused_by_name(field, value, match):
  from configs.toy import linear_mlp  # pylint: disable=import-outside-toplevel
  config = linear_mlp.get_config()
  section, key = field.split(".")
  config[section][key] = value
  with pytest.raises(ValueError, match=match):
    train.validate_config(config, num_devices=8)


def test_sampler_and_conditioning_options_are_refused_by_name():
  """ode tolerances, em with eps = 0 (sigma = 0: infinite score), Fourier embedding on the EDM
  path (log of log(sigma)/4), scale_by_sigma off the VE SDE, and class labels without a
  labelled data set: each names its field before anything runs."""
  from configs.toy import common  # pylint: disable=import-outside-toplevel
  cases = []
  c = vp_mlp.get_config()
  c.sampling.method, c.sampling.rtol = "ode", 0.0
  cases.append((c, "config.sampling.rtol"))
  c = vp_mlp.get_config()
  c.sampling.method, c.sampling.eps = "em", 0.0
  cases.append((c, "config.sampling.eps"))
  c = common.toy_mlp_config("edm", "x0", method="edm", dataset="moons")
  c.model.embedding_type = "fourier"
  cases.append((c, "config.model.embedding_type"))
  c = vp_mlp.get_config()
  c.model.scale_by_sigma = True
  cases.append((c, "config.model.scale_by_sigma"))
  c = vp_mlp.get_config()
  c.model.num_classes = 3
  cases.append((c, "config.model.num_classes"))
  for label, match in ((0, r"class_label=0 needs a class-conditional model.*num_classes is 0"),
                       (-2, r"config.sampling.class_label must be >= -1, got -2")):
    c = vp_mlp.get_config()
    c.sampling.class_label = label
    cases.append((c, match))
  from configs.digits import vp_unet  # pylint: disable=import-outside-toplevel
  c = vp_unet.get_config()
  c.model.num_classes = c.data.num_classes = 10
  c.sampling.class_label = 10
  cases.append((c, r"class_label=10 needs a class-conditional model with more classes"))
  for config, match in cases:
    with pytest.raises(ValueError, match=match):
      train.validate_config(config, num_devices=8)


def test_class_conditional_model_samples_and_evaluates_with_labels(tmp_path):
  """A class-conditional U-Net (model.num_classes = data.num_classes = 10) used to fail in the
  sampler and the likelihood (no labels passed); samples now draw a class each, and the
  likelihood reads the batch's labels (another label, another bits/dim).

  ``generate_samples(..., return_labels=True)`` gives the classes the jitted sampler drew: the
  sampler run again by hand with those labels and the rest of the key gives the same samples,
  and other labels give other samples; ``config.sampling.class_label`` fixes the class of every
  sample. ``write_samples`` saves them in the ``.npz``."""
  from configs.digits import vp_unet  # pylint: disable=import-outside-toplevel
  from jaxgen import predictions, solvers  # pylint: disable=import-outside-toplevel
  config = vp_unet.get_config()
  config.model.nf, config.model.ch_mult, config.model.num_res_blocks = 8, (1, 2), 1
  config.model.attn_resolutions = ()
  config.model.num_classes = config.data.num_classes = 10
  config.sampling.method, config.sampling.num_steps = "euler", 4
  config.sampling.batch_size = config.sampling.num_samples = 8
  config.eval.rtol = config.eval.atol = 1e-2
  train.validate_config(config, num_devices=8)
  setup = train.Setup(config)
  params = setup.init_state(jax.random.PRNGKey(0)).params
  params = jax.tree_util.tree_map(
      lambda p: p + 0.05 * jax.random.normal(jax.random.PRNGKey(1), p.shape, p.dtype), params)
  nll = jax.jit(evaluate.make_nll_fn(setup, config.eval))
  images = np.random.default_rng(0).integers(0, 17, (2, 8, 8, 1)).astype(np.uint8)
  key = jax.random.PRNGKey(3)
  a = nll(params, key, {"image": images, "label": np.array([1, 2], np.int32)})[0]
  b = nll(params, key, {"image": images, "label": np.array([7, 5], np.int32)})[0]
  assert bool(np.all(np.isfinite(np.asarray(a))))
  assert not np.allclose(np.asarray(a), np.asarray(b))
  samples, _, labels = evaluate.generate_samples(setup, params, parallel.make_mesh(), 8, seed=4,
                                                 return_labels=True)
  assert samples.shape == (8, 8, 8, 1) and bool(np.all(np.isfinite(samples)))
  assert labels.shape == (8,) and labels.dtype == np.int32
  assert labels.min() >= 0 and labels.max() < 10 and len(set(labels.tolist())) > 1

  def by_hand(classes):
    key, _ = evaluate.draw_class_labels(jax.random.fold_in(jax.random.PRNGKey(4), 0), 8, 10)
    model = lambda x, t: setup.model_fn(setup.inference_params(params), x, t,
                                        labels=jax.numpy.asarray(classes))
    drift = predictions.as_drift_fn(setup.process, model, setup.prediction)
    return np.asarray(solvers.ode_sample(key, setup.process, drift, (8, 8, 8, 1), solver="euler",
                                         num_steps=4, eps=float(config.sampling.eps))[0])

  np.testing.assert_allclose(by_hand(labels), samples, rtol=1e-5, atol=1e-4)
  # config.sampling.class_label: every sample of one class, from the same noise
  config.sampling.class_label = 3
  train.validate_config(config, num_devices=8)
  threes, _, three_labels = evaluate.generate_samples(train.Setup(config), params,
                                                      parallel.make_mesh(), 8, seed=4,
                                                      return_labels=True)
  np.testing.assert_array_equal(three_labels, np.full(8, 3))
  np.testing.assert_allclose(by_hand(np.full(8, 3)), threes, rtol=1e-5, atol=1e-4)
  assert not np.all(labels == 3)
  assert not np.allclose(threes, samples, rtol=1e-3, atol=1e-2)  # the labels change the samples
  paths = evaluate.write_samples(setup, samples, str(tmp_path), "s", labels=labels)
  saved = np.load(paths["npz"])
  np.testing.assert_array_equal(saved["labels"], labels)
  np.testing.assert_array_equal(saved["samples"], samples)
  with pytest.raises(ValueError, match="one class per sample"):
    evaluate.write_samples(setup, samples, str(tmp_path), "t", labels=labels[:3])
  toy = vp_mlp.get_config()
  toy.model.hidden = (8, 8)
  toy.sampling.method, toy.sampling.num_steps = "euler", 2
  toy_setup = train.Setup(toy)
  out = evaluate.generate_samples(toy_setup, toy_setup.init_state(jax.random.PRNGKey(0)).params,
                                  parallel.make_mesh(), 8, seed=0, return_labels=True)
  assert out[0].shape == (8, 2) and out[2] is None


def test_periodic_evaluation_builds_its_programs_once(tmp_path, monkeypatch):
  """The held-out loss, bits/dim, density-plot and sampling programs are built (traced,
  compiled) at the first periodic evaluation and reused by the later ones, which give the same
  numbers for the same parameters."""
  config = vp_mlp.get_config()
  config.model.hidden = (16, 16)
  config.eval.batch_size, config.eval.num_bpd_batches = 16, 1
  config.eval.rtol = config.eval.atol = 1e-3
  config.sampling.method, config.sampling.num_steps = "euler", 4
  config.sampling.num_samples = config.sampling.batch_size = 16
  builds = {"nll": 0, "sample": 0}
  real_nll, real_sample = evaluate.make_nll_fn, evaluate.make_sample_fn

  def count(name, real):
    def wrapped(*args, **kwargs):
      builds[name] += 1
      return real(*args, **kwargs)
    return wrapped

  monkeypatch.setattr(evaluate, "make_nll_fn", count("nll", real_nll))
  monkeypatch.setattr(evaluate, "make_sample_fn", count("sample", real_sample))
  setup = train.Setup(config)
  state = setup.init_state(jax.random.PRNGKey(0))
  mesh = parallel.make_mesh()
  evaluate_fn = evaluate.make_periodic_evaluation(config)
  first = evaluate_fn(setup, state, 1, str(tmp_path), mesh)
  second = evaluate_fn(setup, state, 1, str(tmp_path), mesh)
  assert builds == {"nll": 2, "sample": 1}  # bits/dim's and the density grid's (exact) programs
  assert first["density_plot"] == second["density_plot"]
  for key in ("held_out_loss", "nll_nats", "mean_nfe"):
    assert first[key] == second[key], key
