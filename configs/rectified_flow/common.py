"""Shared settings of the rectified-flow experiments (Liu, Gong & Liu 2022).

Each experiment has three stages, one config file each:

* ``*_1rf.py``: the 1-rectified flow, ``method='flow'`` on the linear path with a velocity network
  (``--mode=train``), then its reflow pairs (``--mode=reflow`` on the same workdir);
* ``*_2rf.py``: the 2-rectified flow trained on those pairs, warm-started from the 1-rectified
  flow (``--mode=distill`` with ``--config.reflow.init_workdir=<1-RF workdir>``; ``--mode=train``
  with ``--config.data.pairs_dir=<dir>`` trains it from scratch instead), then its own pairs;
* ``*_distill.py``: the ``distill.num_steps``-step generator distilled from the 2-rectified flow
  on its pairs (``--mode=distill --config.reflow.init_workdir=<2-RF workdir>``).

Fields added here (on top of ``configs/base.py``): ``data.pairs_dir`` (reflow pairs replacing the
training split), ``data.source`` (the ``t = 1`` end: '' for N(0, I) or ``toy_<name>``),
``training.coupling`` (``independent`` | ``minibatch_ot``) with ``ot_reg`` / ``ot_iters``,
``config.reflow`` (pair generation and warm start) and ``config.distill.num_steps``.
"""
import ml_collections

from configs import base

STAGES = ("1rf", "2rf", "distill")


def add_rectified_flow_fields(config, stage):
  """Adds the rectified-flow fields and sets what depends on the stage; returns ``config``."""
  if stage not in STAGES:
    raise ValueError(f"unknown stage {stage!r}; expected one of {STAGES}")
  config.method = "distill" if stage == "distill" else "flow"
  config.process.name = "linear"
  config.model.prediction = "velocity"
  config.data.pairs_dir = ""
  config.data.source = ""
  training = config.training
  training.coupling = "independent"
  training.ot_reg = 0.05
  training.ot_iters = 200
  training.time_sampling = "uniform"
  training.reduce_mean = True

  config.reflow = reflow = ml_collections.ConfigDict()
  reflow.num_pairs = 100_000
  reflow.chunk_size = 10_000
  reflow.batch_size = 0             # one solve per chunk (0) or chunk_size / batch_size solves
  reflow.seed = 0
  reflow.solver = "dopri5"          # dopri5 | tsit5 | euler | heun | rk4
  reflow.rtol = 1e-5
  reflow.atol = 1e-5
  reflow.num_steps = 100            # fixed-step solvers only
  reflow.eps = 1e-3                 # the solve ends at t = eps
  reflow.pairs_dir = ""             # '' -> <workdir>/reflow_pairs
  reflow.max_chunks = 0             # stop after this many new chunks (0: all)
  reflow.init_workdir = ""          # warm start (--mode=distill) from this workdir

  config.distill = distill = ml_collections.ConfigDict()
  distill.num_steps = 1

  sampling = config.sampling
  if stage == "distill":
    config.eval.num_bpd_batches = 0   # a one-step generator has no ODE likelihood
    sampling.method = "euler"         # unused: distilled samples take distill.num_steps
  return config


def toy_config(dataset, source, stage):
  """2-D toy: a small MLP velocity field moving ``source`` ('' = N(0, I)) to ``toy_<dataset>``."""
  config = base.get_base_config()
  add_rectified_flow_fields(config, stage)
  training = config.training
  training.batch_size = 512
  training.n_iters = 20_000 if stage == "1rf" else 10_000
  training.log_every = 500
  training.eval_every = 5_000
  training.snapshot_every = 0
  training.preemption_every = 2_000

  data = config.data
  data.dataset = f"toy_{dataset}"
  data.source = source
  data.dim = 2
  data.image_size = 0
  data.num_channels = 0
  data.centered = False
  data.random_flip = False

  model = config.model
  model.name = "mlp"
  model.hidden = (256, 256, 256)
  model.embedding_type = "positional"
  model.dropout = 0.0
  model.ema_rate = 0.999
  model.scale_by_sigma = False

  config.optim.lr = 1e-3 if stage == "1rf" else 3e-4
  config.optim.warmup = 100

  config.reflow.num_pairs = 100_000
  config.reflow.chunk_size = 10_000

  sampling = config.sampling
  if stage != "distill":
    sampling.method = "ode"
  sampling.num_samples = 2000
  sampling.batch_size = 2000

  evaluate = config.eval
  evaluate.batch_size = 1000
  if stage != "distill":
    evaluate.num_bpd_batches = 2
  evaluate.divergence = "exact"
  return config


def digits_config(stage):
  """scikit-learn's 8x8 digits (17 levels, [-1, 1], dequantized) with the small U-Net of
  ``configs/digits/vp_unet.py`` as the velocity network. Short enough for CPUs."""
  config = base.get_base_config()
  add_rectified_flow_fields(config, stage)
  training = config.training
  training.batch_size = 128
  training.n_iters = 6000 if stage == "1rf" else 3000
  training.log_every = 250
  training.eval_every = training.n_iters
  training.snapshot_every = 0
  training.preemption_every = 1000
  training.keep_checkpoints = 2

  data = config.data
  data.dataset = "digits"
  data.image_size = 8
  data.num_channels = 1
  data.num_levels = 17
  data.centered = True
  data.random_flip = False
  data.uniform_dequantization = True

  model = config.model
  model.name = "unet"
  model.nf = 64
  model.ch_mult = (1, 2)
  model.num_res_blocks = 2
  model.attn_resolutions = ()
  model.dropout = 0.0
  model.embedding_type = "positional"
  model.ema_rate = 0.999

  optim = config.optim
  optim.lr = 2e-3 if stage == "1rf" else 5e-4
  optim.warmup = 200
  optim.grad_clip = 1.0

  config.reflow.num_pairs = 20_000
  config.reflow.chunk_size = 2_000

  sampling = config.sampling
  if stage != "distill":
    sampling.method = "ode"
  sampling.num_samples = 64
  sampling.batch_size = 64

  evaluate = config.eval
  evaluate.batch_size = 100
  if stage != "distill":
    evaluate.num_bpd_batches = 3        # the whole test split (297 images)
  evaluate.divergence = "rademacher"
  evaluate.num_probes = 1
  return config


def cifar10_config(stage):
  """CIFAR-10 with DDPM++ as in Liu et al.'s ``cifar10_rf_gaussian_ddpmpp.py`` (and the reflow /
  distillation configs next to it): 4 residual blocks per resolution, nf 128, dropout 0.15 (1-RF)
  / 0.1 (2-RF, distilled: their ``reflow_train`` / ``reflow_distill`` configs keep score_sde's
  default), EMA 0.999999 (1-RF) / 0.9999 (2-RF, distilled), Adam 2e-4 with 5k warmup, batch 128,
  reduce-mean L2 loss, RK45 (Dopri5) sampling at tolerance 1e-5, data in [-1, 1] with random flips.

  The paper fine-tunes 2-RF and the distilled model from the previous flow on generated pairs
  (at least 1M pairs advised); distillation there uses an LPIPS loss, here plain L2.

  Training times differ slightly: RectifiedFlow (t = 1 data, t = 0 noise) draws t uniformly on
  [1e-3, 1), cutting 1e-3 off the noise end only; jaxgen (t = 0 data, t = 1 noise) draws it on
  [training.eps, 1 - training.eps] of the linear path (``losses.flow_matching_loss``), here 1e-5 off
  each end. Left as is: both keep all but a 1e-3 sliver of the interval.
  """
  config = base.get_base_config()
  add_rectified_flow_fields(config, stage)
  config.seed = 42
  training = config.training
  training.batch_size = 128
  training.n_iters = 1_300_001 if stage == "1rf" else 300_001
  training.log_every = 50
  training.eval_every = 50_000
  training.snapshot_every = 50_000 if stage == "1rf" else 20_000
  training.preemption_every = 10_000

  data = config.data
  data.dataset = "cifar10"
  data.image_size = 32
  data.num_channels = 3
  data.centered = True
  data.random_flip = True
  data.uniform_dequantization = False

  model = config.model
  model.name = "ddpmpp"
  model.scale_by_sigma = False
  model.ema_rate = 0.999999 if stage == "1rf" else 0.9999
  model.dropout = 0.15 if stage == "1rf" else 0.1
  model.nonlinearity = "swish"
  model.nf = 128
  model.ch_mult = (1, 2, 2, 2)
  model.num_res_blocks = 4
  model.attn_resolutions = (16,)
  model.resamp_with_conv = True
  model.conditional = True
  model.fir = False
  model.fir_kernel = (1, 3, 3, 1)
  model.skip_rescale = True
  model.resblock_type = "biggan"
  model.progressive = "none"
  model.progressive_input = "none"
  model.progressive_combine = "sum"
  model.attention_type = "ddpm"
  model.init_scale = 0.0
  model.embedding_type = "positional"
  model.fourier_scale = 16.0
  model.conv_size = 3

  optim = config.optim
  optim.lr = 2e-4
  optim.warmup = 5000
  optim.grad_clip = 1.0

  config.reflow.num_pairs = 1_000_000
  config.reflow.chunk_size = 10_000
  config.reflow.batch_size = 1_000

  sampling = config.sampling
  if stage != "distill":
    sampling.method = "ode"
  sampling.rtol = 1e-5
  sampling.atol = 1e-5
  sampling.num_samples = 64
  sampling.batch_size = 64

  evaluate = config.eval
  evaluate.batch_size = 128
  if stage != "distill":
    evaluate.num_bpd_batches = 4
  evaluate.divergence = "rademacher"
  return config
