"""2-D toy data (checkerboard by default), the vp process and an MLP (noise).

Pick the set with the config argument (--config=configs/toy/vp_mlp.py:moons) or with
--config.data.dataset=toy_<name> (checkerboard, 8gaussians, moons, 2spirals, pinwheel, rings,
circles, swissroll).
"""
from configs.toy import common


def get_config(dataset: str = "checkerboard"):
  return common.toy_mlp_config("vp", "eps", dataset=dataset)
