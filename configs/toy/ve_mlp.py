"""Toy 2-D data (FFJORD's sets; checkerboard by default) with the ve process and an MLP.

Pick the set with --config.data.dataset=toy_<name> (checkerboard, 8gaussians, moons, 2spirals,
pinwheel, rings, circles, swissroll).
"""
from configs import base


def get_config():
  config = base.get_base_config()
  config.method = "score"
  training = config.training
  training.batch_size = 512
  training.n_iters = 20000
  training.log_every = 500
  training.eval_every = 5000
  training.snapshot_every = 0
  training.preemption_every = 2000
  training.reduce_mean = True

  data = config.data
  data.dataset = "toy_checkerboard"
  data.dim = 2
  data.image_size = 0
  data.num_channels = 0
  data.centered = False
  data.random_flip = False

  process = config.process
  process.name = "ve"
  process.sigma_min = 0.01
  process.sigma_max = 10.0

  model = config.model
  model.name = "mlp"
  model.prediction = "score"
  model.hidden = (256, 256, 256)
  model.embedding_type = "positional"
  model.dropout = 0.0
  model.ema_rate = 0.999
  model.scale_by_sigma = True

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
