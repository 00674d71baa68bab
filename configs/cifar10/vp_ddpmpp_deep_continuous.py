"""CIFAR-10, VP SDE, deep DDPM++ (8 res blocks), continuous time.

Mirrors score_sde's configs/vp/cifar10_ddpmpp_deep_continuous.py.
"""
from configs.cifar10 import common


def get_config():
  return common.cifar10_config("vp", "ddpmpp", deep=True)
