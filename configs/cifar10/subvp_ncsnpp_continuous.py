"""CIFAR-10, sub-VP SDE, NCSN++ (4 res blocks), continuous time.

Mirrors score_sde's configs/subvp/cifar10_ncsnpp_continuous.py.
"""
from configs.cifar10 import common


def get_config():
  return common.cifar10_config("subvp", "ncsnpp", deep=False)
