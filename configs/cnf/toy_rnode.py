"""RNODE on a 2-D toy set: configs/cnf/toy.py plus the kinetic-energy and Jacobian-norm penalties.

Same network, solver and optimizer as FFJORD's toy run; the penalties (RNODE's per-dimension
normalisation, integrated along the trajectory, see jaxgen/cnf.py) keep the dynamics straight, so
the adaptive solver needs far fewer steps. experiments/cnf_toy/rnode.py compares the two.
ffjord-rnode has no toy script: the penalty weights (0.1) are jaxgen's choice, and the rest is
FFJORD's toy setting (learnable T, PyTorch initialisation, dopri5 at 1e-5, exact divergence, no
EMA), not the image RNODE's (fixed T, zero last layer, RK4; see configs/cnf/common.py).

  --config=configs/cnf/toy_rnode.py:8gaussians
"""
from configs.cnf import toy

KINETIC_ENERGY = 0.1
JACOBIAN_NORM2 = 0.1


def get_config(dataset: str = "8gaussians"):
  config = toy.get_config(dataset or "8gaussians")
  config.cnf.kinetic_energy = KINETIC_ENERGY
  config.cnf.jacobian_norm2 = JACOBIAN_NORM2
  return config
