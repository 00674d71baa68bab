"""Rectified flow, distilled generator: N(0, I) -> checkerboard with a small MLP.

Stages and commands: configs/rectified_flow/common.py.
"""
from configs.rectified_flow import common


def get_config():
  return common.toy_config("checkerboard", "", "distill")
