"""FFJORD's multiscale CNF on CIFAR-10 (4 scales, 14 CNF blocks), bits/dim through `--mode=eval`.

TFDS `cifar10` prepared in array_record format in `data.data_dir`; horizontal flips in training.

  --config=configs/cnf/cifar10_multiscale.py          (FFJORD)
  --config=configs/cnf/cifar10_multiscale.py:rnode    (RNODE, ffjord-rnode's cifar10.sh)

RNODE on CIFAR-10 (configs/cnf/common.py lists what matches ffjord-rnode): penalties 0.01 / 0.01,
alpha = 0.05, fixed T = 1, zero-initialised last layers, Gaussian probes, training and evaluation
with dopri5 at rtol = atol = 1e-5 (cifar10.sh names no solver; train.py's default is dopri5),
25,000 iterations.
"""
from configs.cnf import common as images


def get_config(variant: str = "ffjord"):
  config = images.image_cnf_config("cifar10", variant)
  data = config.data
  data.dataset = "cifar10"
  data.image_size = 32
  data.num_channels = 3
  data.random_flip = True
  config.model.image_size = 32
  return config
