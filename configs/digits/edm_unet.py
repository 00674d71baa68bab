"""EDM (Karras et al. 2022) on scikit-learn's 8x8 digits (built in, no download): the main job's
small U-Net as EDM's ``F`` (preconditioned; the model is the denoiser ``D``), EDM's loss
(``ln sigma ~ N(-1.2, 1.2^2)``, summed over pixels) on ``sigma in [0.002, 80]``, ``sigma_data =
0.5`` (EDM's value for data in [-1, 1]), EDM's EMA warm-up, EDM's non-leaky augmentation at its
CIFAR-10 probability 0.12 (``jaxgen.augment``; 9 labels into the U-Net's embedding), and 18 Heun
steps (NFE 35) to sample. The data are the main job's: 17 levels scaled to [-1, 1], uniformly
dequantized; the test bits/dim comes from the probability-flow ODE over the whole test split.

Measured (2 CPU cores, 4,000 steps, ~5.5 min; experiments/digits_edm/): 1.927 test bits/dim with
the augmentation, 1.972 without (``--config.training.augment_p=0``), 1.997 for the main job.
"""
from configs.digits import vp_unet

from jaxgen import augment


def get_config():
  config = vp_unet.get_config()
  config.method = "edm"

  training = config.training
  training.reduce_mean = False          # EDM sums the loss over pixels
  training.likelihood_weighting = False
  training.importance_sampling = False
  training.augment_p = 0.12             # EDM's --augment (its CIFAR-10 value)

  process = config.process
  process.name = "edm"
  process.sigma_min = 0.002
  process.sigma_max = 80.0
  process.sigma_data = 0.5

  model = config.model
  model.prediction = "x0"               # the preconditioned network is the denoiser D
  model.augment_dim = augment.AUGMENT_DIM   # the augmentation labels, read by the embedding
  model.ema_rate = 0.999
  model.ema_rampup_ratio = 0.05         # EDM's EMA warm-up

  optim = config.optim
  optim.grad_clip = 0.0                 # EDM clips nothing

  sampling = config.sampling
  sampling.method = "edm_heun"
  sampling.num_steps = 18
  return config
