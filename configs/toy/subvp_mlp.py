"""2-D toy data (checkerboard by default), the subvp process and an MLP (noise).

Pick the set with the config argument (--config=configs/toy/subvp_mlp.py:moons) or with
--config.data.dataset=toy_<name> (checkerboard, 8gaussians, moons, 2spirals, pinwheel, rings,
circles, swissroll).
"""
from configs.toy import common


def get_config(dataset: str = "checkerboard"):
  return common.toy_mlp_config("subvp", "eps", dataset=dataset)
