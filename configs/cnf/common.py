"""Shared settings of FFJORD's multiscale image CNF (`train_cnf.py --multiscale True`).

ODENet 64-64-64 per block (3x3 convolutions, concat time, softplus), 2 blocks per half-scale,
logit input with alpha = 1e-6 on [0, 1] data, learnable end time from T = 1, Hutchinson's
estimator with Rademacher probes, dopri5 rtol = atol = 1e-5, batch 200, Adam lr 1e-3 with 1,000
warm-up iterations, loss in bits/dim. RNODE variant: kinetic energy and Jacobian norm 0.01 each.
"""
from configs import base
from jaxgen import cnf

VARIANTS = ("ffjord", "rnode")


def image_cnf_config(variant: str = "ffjord"):
  variant = variant or "ffjord"
  if variant not in VARIANTS:
    raise ValueError(f"unknown variant {variant!r}; expected one of {VARIANTS}")
  config = base.get_base_config()
  config.method = "cnf"

  training = config.training
  training.batch_size = 200
  training.n_iters = 300_000
  training.log_every = 50
  training.eval_every = 5_000
  training.snapshot_every = 50_000
  training.preemption_every = 2_000

  data = config.data
  data.centered = False               # the logit transform expects [0, 1]
  data.uniform_dequantization = True  # FFJORD's add_noise: (x * 255 + u) / 256
  data.num_levels = 256

  model = config.model
  model.name = "ffjord_multiscale"
  model.prediction = "velocity"
  model.hidden_dims = (64, 64, 64)
  model.layer_type = "concat"
  model.nonlinearity = "softplus"
  model.num_blocks = 2
  model.num_scales = 0                # as many as FFJORD (halve while the side is >= 4)
  model.alpha = 1e-6
  model.time_length = 1.0
  model.train_T = True
  model.dropout = 0.0
  model.ema_rate = 0.999

  optim = config.optim
  optim.lr = 1e-3
  optim.warmup = 1000
  optim.grad_clip = 0.0
  optim.weight_decay = 0.0

  config.cnf = cnf.default_cnf_config()
  config.cnf.divergence = "rademacher"
  if variant == "rnode":
    config.cnf.kinetic_energy = 0.01
    config.cnf.jacobian_norm2 = 0.01

  config.sampling.method = "ode"
  config.sampling.num_samples = 64
  config.sampling.batch_size = 64

  evaluate = config.eval
  evaluate.batch_size = 200
  evaluate.num_bpd_batches = 5
  evaluate.divergence = "rademacher"
  evaluate.rtol = 1e-5
  evaluate.atol = 1e-5
  evaluate.t0 = 0.0
  return config
