"""Rectified flow, 1-rectified flow: 8 Gaussians -> two moons, small MLP.

The t = 1 end is a toy source (config.data.source), not N(0, I).

Stages and commands: configs/rectified_flow/common.py.
"""
from configs.rectified_flow import common


def get_config():
  return common.toy_config("moons", "toy_8gaussians", "1rf")
