"""Shared CIFAR-10 settings of score_sde (``configs/default_cifar10_configs.py``) and its models.

Each experiment file calls :func:`cifar10_config` with the process and the network; the values
mirror score_sde's ``configs/{vp,subvp,ve}/cifar10_*_continuous.py``.
"""
from configs import base

PROCESSES = ("vp", "subvp", "ve")
NETWORKS = ("ddpmpp", "ncsnpp", "ddpm")


def cifar10_config(process: str, network: str, deep: bool = False):
  """score_sde's continuous-time CIFAR-10 config for ``process`` x ``network``.

  Args:
    process: vp | subvp | ve.
    network: ddpmpp (DDPM++), ncsnpp (NCSN++), ddpm.
    deep: 8 residual blocks per resolution (and 950k iterations) instead of 4.
  """
  if process not in PROCESSES:
    raise ValueError(f"unknown process {process!r}; expected one of {PROCESSES}")
  if network not in NETWORKS:
    raise ValueError(f"unknown network {network!r}; expected one of {NETWORKS}")
  config = base.get_base_config()
  config.seed = 42
  config.method = "score"

  training = config.training
  training.batch_size = 128
  training.n_iters = 950_001 if deep else 1_300_001
  training.log_every = 50
  training.snapshot_every = 50_000
  training.preemption_every = 10_000
  training.continuous = True
  training.likelihood_weighting = False
  training.reduce_mean = process != "ve"  # score_sde: True for VP/sub-VP, False for VE

  sampling = config.sampling
  sampling.method = "pc"
  sampling.n_steps_each = 1
  sampling.noise_removal = True
  sampling.snr = 0.16
  # score_sde's run_lib.py: sampling_eps = 1e-5 for the VE SDE, 1e-3 for VP / sub-VP.
  sampling.eps = 1e-5 if process == "ve" else 1e-3
  if process == "ve":
    sampling.predictor, sampling.corrector = "reverse_diffusion", "langevin"
  else:
    sampling.predictor, sampling.corrector = "euler_maruyama", "none"

  data = config.data
  data.dataset = "cifar10"
  data.image_size = 32
  data.num_channels = 3
  data.random_flip = True
  data.uniform_dequantization = False
  # score_sde trains VE on [0, 1] data (the network maps it to [-1, 1]); VP/sub-VP on [-1, 1].
  data.centered = process != "ve"

  config.process.name = process
  config.process.beta_min = 0.1
  config.process.beta_max = 20.0
  config.process.sigma_min = 0.01
  config.process.sigma_max = 50.0
  config.process.num_scales = 1000

  model = config.model
  # VP/sub-VP networks predict eps (score_sde divides by -std); VE ones the score (output / sigma).
  model.prediction = "score" if process == "ve" else "eps"
  model.scale_by_sigma = process == "ve"
  model.ema_rate = 0.999 if process == "ve" else 0.9999
  model.nonlinearity = "swish"
  model.nf = 128
  model.ch_mult = (1, 2, 2, 2)
  model.attn_resolutions = (16,)
  model.dropout = 0.1
  model.resamp_with_conv = True
  model.conditional = True
  model.num_classes = 0
  if network == "ddpm":
    model.name = "ddpm"
    model.num_res_blocks = 2
    model.embedding_type = "positional"
    return config

  model.name = network
  model.num_res_blocks = 8 if deep else 4
  model.fir = network == "ncsnpp"
  model.fir_kernel = (1, 3, 3, 1)
  model.skip_rescale = True
  model.resblock_type = "biggan"
  model.progressive = "none"
  model.progressive_input = "residual" if network == "ncsnpp" else "none"
  model.progressive_combine = "sum"
  model.attention_type = "ddpm"
  model.init_scale = 0.0
  # Fourier features of log sigma for VE; sinusoidal embedding of 999 t for VP/sub-VP.
  model.embedding_type = "fourier" if process == "ve" else "positional"
  model.fourier_scale = 16.0
  model.conv_size = 3
  return config
