"""FFJORD on tabular-sized vectors (synthetic): D = 6 (POWER-sized) or D = 63 (BSDS300-sized).

FFJORD's `train_tabular.py` defaults: concatsquash, softplus, learnable end time from T = 1,
Hutchinson's estimator with Gaussian probes, dopri5 with rtol = 1e-6, atol = 1e-8, batch 1000,
Adam lr 1e-3 with weight decay 1e-6; per size the stack of the FFJORD paper's tables
(D = 6: 5 blocks of 3 x 10D units; D = 63: 2 blocks of 2 x 20D units). Differences: the weight
decay here is decoupled (AdamW), FFJORD's is Adam's L2 term added to the gradient; no EMA
(``model.ema_rate = 0``: evaluation sees the trained parameters, as FFJORD's does).

  --config=configs/cnf/tabular.py:6     or     --config=configs/cnf/tabular.py:63

Data: `toy_gmm<D>`, a fixed synthetic 8-component Gaussian mixture with full covariances in D
dimensions (`jaxgen.data.toy.gmm`, exact log-density in `gmm_log_prob` for comparison).
"""
from configs import base
from jaxgen import cnf

SIZES = {6: {"num_blocks": 5, "hidden_factor": 10, "num_hidden": 3},
         63: {"num_blocks": 2, "hidden_factor": 20, "num_hidden": 2}}


def get_config(dim: str = "6"):
  dim = int(dim or 6)
  if dim <= 0:
    raise ValueError(f"tabular dimension must be positive, got {dim}")
  size = SIZES.get(dim, {"num_blocks": 2, "hidden_factor": 10, "num_hidden": 2})
  config = base.get_base_config()
  config.method = "cnf"

  training = config.training
  training.batch_size = 1000
  training.n_iters = 100_000
  training.log_every = 100
  training.eval_every = 5_000
  training.snapshot_every = 0
  training.preemption_every = 2_000

  data = config.data
  data.dataset = f"toy_gmm{dim}"
  data.dim = dim
  data.image_size = 0
  data.num_channels = 0
  data.centered = False
  data.random_flip = False

  model = config.model
  model.name = "ffjord_mlp"
  model.prediction = "velocity"
  model.hidden_dims = (size["hidden_factor"] * dim,) * size["num_hidden"]
  model.layer_type = "concatsquash"
  model.nonlinearity = "softplus"
  model.num_blocks = size["num_blocks"]
  model.time_length = 1.0
  model.train_T = True
  model.zero_last = False              # PyTorch's initialisation of the last layer too (FFJORD)
  model.dropout = 0.0
  model.ema_rate = 0.0                 # FFJORD keeps no EMA: the EMA copy is the parameters

  optim = config.optim
  optim.lr = 1e-3
  optim.warmup = 0
  optim.grad_clip = 0.0
  optim.weight_decay = 1e-6            # FFJORD: Adam's L2 term; here decoupled (AdamW)

  config.cnf = cnf.default_cnf_config()
  config.cnf.divergence = "gaussian"
  config.cnf.rtol = 1e-6
  config.cnf.atol = 1e-8

  config.sampling.method = "ode"
  config.sampling.num_samples = 1000
  config.sampling.batch_size = 1000

  evaluate = config.eval
  evaluate.batch_size = 1000
  evaluate.num_bpd_batches = 10
  evaluate.divergence = "exact" if dim <= 16 else "gaussian"
  evaluate.rtol = 1e-6
  evaluate.atol = 1e-8
  evaluate.t0 = 0.0
  return config
