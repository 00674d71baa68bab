"""Rectified flow, distilled generator: scikit-learn's 8x8 digits with a small U-Net (CPU-sized).

Stages and commands: configs/rectified_flow/common.py.
"""
from configs.rectified_flow import common


def get_config():
  return common.digits_config("distill")
