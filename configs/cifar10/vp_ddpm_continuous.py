"""CIFAR-10, VP SDE, DDPM, continuous time.

Mirrors score_sde's configs/vp/ddpm/cifar10_continuous.py.
"""
from configs.cifar10 import common


def get_config():
  return common.cifar10_config("vp", "ddpm", deep=False)
