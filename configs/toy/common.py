"""Shared settings of the 2-D toy configs: one process, an MLP, 20,000 steps at batch 512.

Each file in this folder picks the process and what the MLP predicts; the data set is the
config argument (``--config=configs/toy/vp_mlp.py:moons``) or a field override
(``--config.data.dataset=toy_moons``), one of FFJORD's sets in `jaxgen.data.TOY_DATASETS`.
"""
import functools

import numpy as np

from configs import base
from jaxgen.data import TOY_DATASETS, sample_toy


def toy_mlp_config(process: str, prediction: str, dataset: str = "checkerboard",
                   method: str = "score", scale_by_sigma: bool = False):
  """``method`` on toy set ``dataset``: ``process``, an MLP predicting ``prediction``."""
  dataset = dataset or "checkerboard"
  if dataset not in TOY_DATASETS:
    raise ValueError(f"unknown toy set {dataset!r}; expected one of {TOY_DATASETS}")
  config = base.get_base_config()
  config.method = method
  training = config.training
  training.batch_size = 512
  training.n_iters = 20000
  training.log_every = 500
  training.eval_every = 5000
  training.snapshot_every = 0
  training.preemption_every = 2000
  training.reduce_mean = True

  data = config.data
  data.dataset = "toy_" + dataset
  data.dim = 2
  data.image_size = 0
  data.num_channels = 0
  data.centered = False
  data.random_flip = False

  config.process.name = process
  config.process.sigma_min = 0.01
  config.process.sigma_max = 10.0

  model = config.model
  model.name = "mlp"
  model.prediction = prediction
  model.hidden = (256, 256, 256)
  model.embedding_type = "positional"
  model.dropout = 0.0
  model.ema_rate = 0.999
  model.scale_by_sigma = scale_by_sigma

  config.optim.lr = 1e-3
  config.optim.warmup = 100

  sampling = config.sampling
  sampling.method = "ode"
  sampling.num_samples = 2000
  sampling.batch_size = 2000

  evaluate = config.eval
  evaluate.batch_size = 1000
  evaluate.num_bpd_batches = 2
  evaluate.divergence = "exact"
  return config


@functools.lru_cache(maxsize=None)
def toy_data_std(dataset: str) -> float:
  """Standard deviation of toy set ``dataset`` over both coordinates (20,000 draws of seed 0,
  rounded to 0.01): EDM's ``sigma_data``. Checkerboard 2.32, 8 Gaussians 2.03, moons 1.42."""
  if dataset not in TOY_DATASETS:
    raise ValueError(f"unknown toy set {dataset!r}; expected one of {TOY_DATASETS}")
  x = np.asarray(sample_toy(dataset, 0, 20_000), np.float64)
  return round(float(np.sqrt(np.mean((x - x.mean(0)) ** 2))), 2)
