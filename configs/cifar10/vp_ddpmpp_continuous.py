"""CIFAR-10, VP SDE, DDPM++ (4 res blocks), continuous time.

Mirrors score_sde's configs/vp/cifar10_ddpmpp_continuous.py.
"""
from configs.cifar10 import common


def get_config():
  return common.cifar10_config("vp", "ddpmpp", deep=False)
