"""Rectified flow, 1-rectified flow: CIFAR-10 with DDPM++, Liu et al.'s settings.

Stages and commands: configs/rectified_flow/common.py.
"""
from configs.rectified_flow import common


def get_config():
  return common.cifar10_config("1rf")
