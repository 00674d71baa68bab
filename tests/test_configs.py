"""Every config in configs/ loads, builds its model (full size, shapes only) and traces its train
step; every small config, and one config of each large architecture family, runs a real train step
at a tiny batch on the CPU, at reduced width, with one residual block per level (one CNF block per
scale) and the CNFs' adaptive solver at rtol = atol = 1e-3.

Compiling all thirteen score_sde CIFAR-10 networks on a 2-core CPU would take most of CI's time;
their differences (process, depth, model options) are all exercised by the trace, and each
architecture family (DDPM++, NCSN++ with FIR/progressive/Fourier, DDPM) by a real step."""
import glob
import importlib.util
import os

import jax
import numpy as np
import pytest

from jaxgen import models, train
from conftest import FAST_COMPILE  # pylint: disable=wrong-import-order

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_FILES = sorted(
    os.path.relpath(p, REPO) for p in glob.glob(os.path.join(REPO, "configs", "**", "*.py"),
                                                 recursive=True)
    if os.path.basename(p) not in ("__init__.py", "base.py", "common.py"))


def load(path):
  spec = importlib.util.spec_from_file_location("cfg_" + path.replace("/", "_")[:-3],
                                                os.path.join(REPO, path))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def fake_batch(config, batch):
  shape = train.data_shape(config)
  rng = np.random.default_rng(0)
  if config.data.dataset.startswith("toy_"):
    out = {"image": rng.normal(size=(batch,) + shape).astype(np.float32)}
  else:
    out = {"image": rng.integers(0, config.data.num_levels, size=(batch,) + shape, dtype=np.uint8)}
  if config.model.get("num_classes", 0):
    out["label"] = rng.integers(0, config.model.num_classes, size=(batch,), dtype=np.int32)
  if config.data.get("source", "") or config.data.dataset.startswith("pairs:"):
    out["noise"] = rng.normal(size=(batch,) + shape).astype(np.float32)
  return out




def test_there_are_configs():
  assert len(CONFIG_FILES) >= 10
  assert "configs/digits/vp_unet.py" in CONFIG_FILES


LARGE_FAMILY_REPRESENTATIVES = ("configs/cifar10/vp_ddpmpp_continuous.py",
                                "configs/cifar10/ve_ncsnpp_continuous.py",
                                "configs/cifar10/vp_ddpm_continuous.py")


def _is_large(path):
  return path.startswith(("configs/cifar10/", "configs/imagenet32/")) or "cifar" in path


@pytest.mark.parametrize("path", CONFIG_FILES)
def test_config_builds_and_trains_one_step(path):
  config = load(path)
  run_for_real = not _is_large(path) or path in LARGE_FAMILY_REPRESENTATIVES
  models.validate_model_config(config.model, config.data)
  setup = train.Setup(config)
  # full-size model: shapes only (no compilation)
  abstract = jax.eval_shape(setup.init_state, jax.random.PRNGKey(0))
  assert models.count_params(abstract.params) > 0
  # one real step at tiny batch and reduced width
  if "nf" in config.model and config.model.name not in ("mlp",):
    config.model.nf = min(int(config.model.nf), 16)
  if "hidden" in config.model:
    config.model.hidden = tuple(min(int(h), 32) for h in config.model.hidden)
  if "hidden_dims" in config.model:
    config.model.hidden_dims = tuple(min(int(h), 16) for h in config.model.hidden_dims)
  if "num_res_blocks" in config.model:
    config.model.num_res_blocks = 1
  if "num_blocks" in config.model:  # CNF blocks (per scale)
    config.model.num_blocks = 1
  if "cnf" in config:  # the adaptive solver's path, with fewer steps than at 1e-5 or tighter
    config.cnf.rtol, config.cnf.atol = max(config.cnf.rtol, 1e-3), max(config.cnf.atol, 1e-3)
  setup = train.Setup(config)
  batch = fake_batch(config, 2)
  if not run_for_real:
    state = jax.eval_shape(setup.init_state, jax.random.PRNGKey(0))
    new_state, metrics = jax.eval_shape(setup.make_train_step(), state, batch)
    assert metrics["loss"].shape == () and new_state.params is not None
    return
  state = jax.jit(setup.init_state, compiler_options=FAST_COMPILE)(jax.random.PRNGKey(0))
  step = jax.jit(setup.make_train_step(), compiler_options=FAST_COMPILE)
  state, metrics = step(state, batch)
  assert int(state.step) == 1
  assert np.isfinite(float(metrics["loss"])), path


@pytest.mark.parametrize("name", ["vp", "subvp", "ve", "linear", "edm"])
def test_toy_config_argument_picks_the_data_set(name):
  """``--config=configs/toy/<name>_mlp.py:moons`` trains on moons; an unknown set is named."""
  spec = importlib.util.spec_from_file_location(f"toy_{name}",
                                                os.path.join(REPO, f"configs/toy/{name}_mlp.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  assert module.get_config().data.dataset == "toy_checkerboard"
  config = module.get_config("moons")
  assert config.data.dataset == "toy_moons" and config.process.name == name
  with pytest.raises(ValueError, match="'moon'"):
    module.get_config("moon")
