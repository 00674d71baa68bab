"""FFJORD's multiscale CNF on MNIST (3 scales, 10 CNF blocks), bits/dim through `--mode=eval`.

Reads the idx files from `--config.data.source_dir` through the `mnist_local` builder. With only
the test files present (as on our machines) it trains on test[:9000] and evaluates on
test[9000:]: NOT the standard protocol, so its bits/dim are not comparable with FFJORD's 0.99.
With the training images present set data.train_split='train' and data.eval_split='test'.

  --config=configs/cnf/mnist_multiscale.py          (FFJORD)
  --config=configs/cnf/mnist_multiscale.py:rnode    (RNODE, ffjord-rnode's example-scripts/mnist.sh)

RNODE on MNIST (configs/cnf/common.py lists what matches ffjord-rnode): penalties 0.01 / 0.01,
alpha = 1e-5, fixed T = 1, zero-initialised last layers, Gaussian probes, training with RK4 at
step 0.25 (4 steps), evaluation with dopri5 at rtol = atol = 1e-5, 30,000 iterations.
"""
from configs.cnf import common as images


def get_config(variant: str = "ffjord"):
  config = images.image_cnf_config("mnist", variant)
  data = config.data
  data.dataset = "mnist_local"
  data.source_dir = "../shared/data/mnist"
  data.train_split = "test[:9000]"
  data.eval_split = "test[9000:]"
  data.image_size = 28
  data.num_channels = 1
  data.random_flip = False
  config.model.image_size = 28
  return config
