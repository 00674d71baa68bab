"""CIFAR-10, EDM (Karras et al. 2022, config F of its Table 2, unconditional): DDPM++ with three
resolutions of 256 channels, EDM's preconditioning, loss and Heun sampler.

Mirrors NVlabs/edm's ``train.py --cond=0 --arch=ddpmpp`` (``--precond=edm``) and its defaults:
``channel_mult = (2, 2, 2)`` of 128 (55.73 M parameters, as EDM's Table 7), batch 512, Adam at
lr 1e-3 (betas 0.9 / 0.999, eps 1e-8) ramped up linearly over 10 Mimg, no gradient clipping,
dropout 0.13, EMA half-life 0.5 Mimg, 200 Mimg of training, ``ln sigma ~ N(-1.2, 1.2^2)``,
``sigma_data = 0.5``, the loss summed over pixels; sampled with 18 Heun steps (NFE 35) on
``sigma in [0.002, 80]``, ``rho = 7``, no churn.

EMA as EDM's: half-life 0.5 Mimg (``model.ema_rate = 0.5 ** (512 / 500_000)`` per step) with its
warm-up (``model.ema_rampup_ratio = 0.05``: the half-life is at most 5 % of the images seen, so
the EMA starts as the parameters and reaches the full half-life after 10 Mimg).

Augmented as EDM's (``--augment=0.12``, ``jaxgen.augment``): an x-flip on half the images, and
with probability 0.12 each an isotropic scaling, a rotation, an anisotropic scaling and a
translation, told to the network through 9 labels (``model.augment_dim = 9``, EDM's
``map_augment``: 1,152 parameters more than EDM's Table 7 network, 55,733,891 in all); samples are
drawn with labels of zero. Not reproduced: the augmentation's exact resampling filter positions
(``jaxgen.augment`` resamples with its own alignment of the same wavelet filter).
"""
from configs.cifar10 import common

BATCH = 512
KIMG = 1000  # images per kimg


def get_config():
  config = common.cifar10_config("vp", "ddpmpp", deep=False)
  config.method = "edm"

  training = config.training
  training.batch_size = BATCH
  training.n_iters = 200_000 * KIMG // BATCH          # 200 Mimg: 390,625 steps
  training.reduce_mean = False                        # EDM sums the loss over pixels
  training.augment_p = 0.12                           # EDM's --augment
  training.snapshot_every = 25_000
  training.preemption_every = 5_000

  process = config.process
  process.name = "edm"
  process.sigma_min = 0.002
  process.sigma_max = 80.0
  process.sigma_data = 0.5

  data = config.data
  data.centered = True
  data.random_flip = False                            # EDM: --xflip=False (flips are augmentation)

  model = config.model
  model.prediction = "x0"                             # the preconditioned network is the denoiser D
  model.scale_by_sigma = False
  model.ch_mult = (2, 2, 2)
  model.num_res_blocks = 4
  model.attn_resolutions = (16,)
  model.dropout = 0.13
  model.embedding_type = "positional"                 # of c_noise = ln(sigma) / 4
  model.ema_rate = 0.5 ** (BATCH / (500 * KIMG))      # half-life 0.5 Mimg: 0.999290 per step
  model.ema_rampup_ratio = 0.05                       # EDM's EMA warm-up
  model.augment_dim = 9                               # the augmentation labels (jaxgen.augment)

  optim = config.optim
  optim.lr = 1e-3
  optim.beta1, optim.beta2, optim.eps = 0.9, 0.999, 1e-8
  optim.warmup = 10_000 * KIMG // BATCH               # lr ramp-up over 10 Mimg: 19,531 steps
  optim.grad_clip = 0.0                               # none

  sampling = config.sampling
  sampling.method = "edm_heun"
  sampling.num_steps = 18
  return config
