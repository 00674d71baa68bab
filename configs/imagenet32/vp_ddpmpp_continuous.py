"""Downsampled ImageNet 32x32, VP SDE, DDPM++ (4 res blocks), continuous time.

score_sde has no ImageNet-32 config; the values follow score_flow (Song et al. 2021, "Maximum
likelihood training of score-based diffusion models"), configs/vp/imagenet32_ddpmpp_continuous.py:
the CIFAR-10 DDPM++ network, no dropout, no random flips, probability-flow ODE sampling.
TFDS `downsampled_imagenet` has only 'train' and 'validation' splits: evaluation uses
'validation', as score_flow does.
"""
from configs.cifar10 import common


def get_config():
  config = common.cifar10_config("vp", "ddpmpp", deep=False)
  config.training.log_every = 100
  config.sampling.method = "ode"
  config.data.dataset = "downsampled_imagenet/32x32"
  config.data.image_size = 32
  config.data.random_flip = False
  config.data.eval_split = "validation"   # no 'test' split in TFDS downsampled_imagenet
  config.model.dropout = 0.0
  return config
