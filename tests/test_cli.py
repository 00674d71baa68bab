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


def _main(args, timeout=600):
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
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode != 0
  assert "no checkpoints in" in proc.stderr and "train first" in proc.stderr


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
