"""CIFAR-10, sub-VP SDE, DDPM, continuous time.

Mirrors score_sde's configs/subvp/cifar10_ddpm_continuous.py.
"""
from configs.cifar10 import common


def get_config():
  return common.cifar10_config("subvp", "ddpm", deep=False)
