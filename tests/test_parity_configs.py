"""Configs against the reference implementations they reproduce (score_sde, score_flow, FFJORD,
ffjord-rnode, RectifiedFlow): the settings an audit found to differ, each checked where it acts."""
import glob
import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.cnf import cifar10_multiscale, mnist_multiscale, tabular, toy, toy_rnode
from jaxgen import cnf, train
from jaxgen.data import sample_toy
from conftest import FAST_COMPILE  # pylint: disable=wrong-import-order

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The splits TFDS defines for the data sets the configs name (`tfds.builder(name).info.splits`
# once prepared); downsampled_imagenet has no 'test' split.
TFDS_SPLITS = {"downsampled_imagenet/32x32": ("train", "validation"),
               "cifar10": ("train", "test")}


def _load(path, *args):
  spec = importlib.util.spec_from_file_location("parity_" + path.replace("/", "_")[:-3],
                                                os.path.join(REPO, path))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(*args)


def _configs(folder):
  return sorted(os.path.relpath(p, REPO)
                for p in glob.glob(os.path.join(REPO, "configs", folder, "*.py"))
                if os.path.basename(p) not in ("__init__.py", "common.py"))


@pytest.mark.parametrize("path", _configs("imagenet32") + _configs("cifar10"))
def test_tfds_splits_exist(path):
  config = _load(path)
  splits = TFDS_SPLITS[config.data.dataset]
  assert config.data.train_split in splits and config.data.eval_split in splits, path


def _score_sde_configs(folder):
  """The configs of ``folder`` that reproduce score_sde (``method = 'score'``; not EDM's)."""
  return [p for p in _configs(folder) if _load(p).method == "score"]


@pytest.mark.parametrize("path", _score_sde_configs("cifar10"))
def test_cifar10_sampling_eps_follows_score_sde(path):
  """score_sde's run_lib.py: sampling_eps 1e-5 for the VE SDE, 1e-3 for VP and sub-VP; both are
  accepted by the sampler checks of the config's process."""
  config = _load(path)
  expected = 1e-5 if config.process.name == "ve" else 1e-3
  assert config.sampling.eps == expected, path
  from jaxgen import evaluate  # pylint: disable=import-outside-toplevel
  evaluate.validate_sampling_config(config, train.get_process(config))


@pytest.mark.parametrize("stage, dropout", [("1rf", 0.15), ("2rf", 0.1), ("distill", 0.1)])
def test_rectified_flow_cifar10_dropout(stage, dropout):
  """RectifiedFlow: 0.15 in cifar10_rf_gaussian_ddpmpp.py; its reflow_train / reflow_distill
  configs keep score_sde's default 0.1."""
  config = _load(f"configs/rectified_flow/cifar10_ddpmpp_{stage}.py")
  assert config.model.dropout == dropout


# ffjord-rnode: example-scripts/mnist.sh and cifar10.sh on top of train.py's defaults.
RNODE_REFERENCE = {
    "mnist": {"alpha": 1e-5, "solver": "rk4", "step_size": 0.25, "epochs": 100, "train": 60_000},
    "cifar10": {"alpha": 0.05, "solver": "dopri5", "step_size": None, "epochs": 100,
                "train": 50_000},
}


@pytest.mark.parametrize("dataset, module", [("mnist", mnist_multiscale),
                                             ("cifar10", cifar10_multiscale)])
def test_rnode_image_configs_follow_ffjord_rnode(dataset, module):
  ref = RNODE_REFERENCE[dataset]
  config = module.get_config("rnode")
  model, opts = config.model, config.cnf
  assert model.alpha == ref["alpha"]
  assert model.train_T is False and model.time_length == 1.0 and model.zero_last is True
  assert opts.kinetic_energy == opts.jacobian_norm2 == 0.01
  assert opts.divergence == config.eval.divergence == "gaussian"
  assert opts.solver == ref["solver"]
  if ref["step_size"] is not None:  # a fixed grid of step 0.25 on [0, T = 1]
    assert opts.num_steps * ref["step_size"] == model.time_length
  else:
    assert opts.rtol == opts.atol == 1e-5
  evaluate = cnf.eval_solve_options(config, config.eval)
  assert (evaluate.solver, evaluate.rtol, evaluate.atol, evaluate.num_steps) == (
      "dopri5", 1e-5, 1e-5, None)
  assert config.training.n_iters * config.training.batch_size == ref["epochs"] * ref["train"]
  cnf.validate_config(config)
  # The FFJORD variant keeps FFJORD's settings.
  plain = module.get_config()
  assert plain.model.train_T and not plain.model.zero_last and plain.model.alpha == 1e-6
  assert plain.cnf.kinetic_energy == plain.cnf.jacobian_norm2 == 0.0


def test_rnode_mnist_trains_with_four_rk4_steps_per_block():
  """One training loss of the (reduced) RNODE MNIST config: 4 RK4 steps (16 evaluations) per CNF
  block, fixed T = 1 (no end-time parameters), and zero-weight last layers, so that at
  initialisation the blocks are constant fields whose log-determinant is zero."""
  config = mnist_multiscale.get_config("rnode")
  config.model.hidden_dims = (4,)
  config.model.num_blocks = 1
  setup = cnf.StandaloneSetup(config)
  params = setup.init_params(jax.random.PRNGKey(0))
  assert not any(k.startswith("sqrt_end_time") for k in params)
  images = np.random.default_rng(0).integers(0, 256, (2, 28, 28, 1)).astype(np.float32)
  batch = {"image": jnp.asarray((images + 0.5) / 256.0)}
  loss, aux = jax.jit(cnf.make_loss_fn(config, setup))(params, jax.random.PRNGKey(1), batch)
  assert int(aux["nfe"]) == 4 * 4 * setup.model.num_nets()
  assert float(aux["end_time"]) == 1.0
  assert np.isfinite(float(loss)) and float(aux["jacobian"]) == 0.0
  assert float(aux["kinetic"]) > 0


CNF_CONFIGS = [(mnist_multiscale, ("ffjord",)), (mnist_multiscale, ("rnode",)),
               (cifar10_multiscale, ("ffjord",)), (cifar10_multiscale, ("rnode",)),
               (toy, ()), (toy_rnode, ()), (tabular, ("6",)), (tabular, ("63",))]


@pytest.mark.parametrize("module, args", CNF_CONFIGS)
def test_cnf_configs_keep_no_ema(module, args):
  """FFJORD and RNODE keep no parameter average."""
  assert module.get_config(*args).model.ema_rate == 0.0


def test_zero_ema_rate_evaluates_the_trained_parameters():
  """With ``model.ema_rate = 0`` the train step's EMA copy is the parameters after every step,
  bit for bit, so evaluation (which reads the EMA) sees the trained parameters."""
  config = toy.get_config("8gaussians")
  config.model.hidden_dims = (8,)
  config.training.batch_size = 16
  setup = train.Setup(config)
  state = setup.init_state(jax.random.PRNGKey(0))
  initial = state.params
  step = jax.jit(setup.make_train_step(), compiler_options=FAST_COMPILE)
  for i in range(2):
    state, metrics = step(state, {"image": sample_toy("8gaussians", i, 16)})
    assert np.isfinite(float(metrics["loss"]))
    for p, e in zip(jax.tree_util.tree_leaves(state.params),
                    jax.tree_util.tree_leaves(state.ema_params)):
      np.testing.assert_array_equal(p, e)
  moved = [not np.array_equal(a, b) for a, b in zip(jax.tree_util.tree_leaves(initial),
                                                     jax.tree_util.tree_leaves(state.params))]
  assert any(moved)


def test_mnist_likelihood_config_clips_as_score_flow():
  """score_flow clips its importance-sampled loss (without the normalizer Z) at 1.0; ours is Z
  times that loss, so the MNIST likelihood config clips at Z (23.86 on its VP SDE, eps 1e-5)."""
  from configs.mnist import vp_ddpmpp_likelihood  # pylint: disable=import-outside-toplevel
  from jaxgen import losses, processes  # pylint: disable=import-outside-toplevel
  config = vp_ddpmpp_likelihood.get_config()
  assert config.training.likelihood_weighting and config.training.importance_sampling
  z = losses.importance_sampling_normalizer(processes.VPSDE(), config.training.eps)
  assert abs(config.optim.grad_clip - z) < 1e-9 and 23 < z < 25


def test_edm_cifar10_config_follows_edm():
  """configs/cifar10/edm_ddpmpp.py against NVlabs/edm's ``train.py --cond=0 --arch=ddpmpp``
  defaults and the paper's Table 7 (config F): the network has EDM's 55.73 M parameters
  (DDPM++ at channel_mult 2, 2, 2 of 128), 200 Mimg at batch 512, lr 1e-3 ramped over 10 Mimg,
  an EMA half-life of 0.5 Mimg with EDM's warm-up, dropout 0.13, no clipping, the loss summed over pixels, and 18
  Heun steps (35 network evaluations) on sigma in [0.002, 80]."""
  from jaxgen import evaluate, models, solvers  # pylint: disable=import-outside-toplevel
  config = _load("configs/cifar10/edm_ddpmpp.py")
  train.validate_config(config, num_devices=8)
  setup = train.Setup(config)
  abstract = jax.eval_shape(setup.init_state, jax.random.PRNGKey(0))
  # EDM's Table 7: 55.73 M, and its map_augment (9 augmentation labels -> 128 features, no bias)
  assert models.count_params(abstract.params) == 55_732_739 + 9 * 128
  assert config.training.augment_p == 0.12 and config.model.augment_dim == 9
  assert config.method == "edm" and config.process.name == "edm"
  assert (config.process.sigma_min, config.process.sigma_max) == (0.002, 80.0)
  assert config.process.sigma_data == 0.5
  batch = config.training.batch_size
  assert batch == 512 and config.training.n_iters * batch == 200_000_000
  assert abs(config.optim.warmup * batch - 10_000_000) < batch       # lr ramp-up: 10 Mimg
  np.testing.assert_allclose(config.model.ema_rate ** (500_000 / batch), 0.5, rtol=1e-12)
  # EDM's EMA warm-up (ema_rampup_ratio 0.05): the EMA is the parameters after the first step,
  # its half-life 5 % of the images seen until that reaches 0.5 Mimg (10 Mimg, step 19,532).
  assert config.model.ema_rampup_ratio == 0.05
  assert float(train.ema_decay(0, config.model.ema_rate, 0.05)) == 0.0
  np.testing.assert_allclose(float(train.ema_decay(1000, config.model.ema_rate, 0.05)),
                             0.5 ** (batch / (0.05 * 1000 * batch)), rtol=1e-5)
  np.testing.assert_allclose(float(train.ema_decay(19_532, config.model.ema_rate, 0.05)),
                             config.model.ema_rate, rtol=1e-6)
  assert config.optim.lr == 1e-3 and config.optim.grad_clip <= 0
  assert config.model.dropout == 0.13 and not config.data.random_flip
  assert not config.training.reduce_mean
  assert config.sampling.method == "edm_heun" and config.sampling.num_steps == 18
  evaluate.validate_sampling_config(config, setup.process)
  # 18 Heun steps of EDM's schedule: 35 denoiser evaluations (no correction on the last step).
  _, nfe = solvers.edm_heun_sample(jax.random.PRNGKey(0), lambda x, sigma: 0.0 * x, (2, 4),
                                   num_steps=18,
                                   sigma_min=0.002, sigma_max=80.0)
  assert int(nfe) == 35
