"""CIFAR-10, sub-VP SDE, deep DDPM++ (8 res blocks), continuous time.

Mirrors score_sde's configs/subvp/cifar10_ddpmpp_deep_continuous.py.
"""
from configs.cifar10 import common


def get_config():
  return common.cifar10_config("subvp", "ddpmpp", deep=True)
