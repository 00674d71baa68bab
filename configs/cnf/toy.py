"""FFJORD on a 2-D toy set (checkerboard by default): FFJORD's `train_toy.py` settings.

ODEnet 64-64-64, concatsquash time conditioning, tanh, one CNF block with learnable end time
(T = 0.5 at start), dopri5 with rtol = atol = 1e-5, exact (brute-force) divergence, batch 100,
Adam lr 1e-3 with weight decay 1e-5 (decoupled here, Adam's L2 term in FFJORD), 10,000
iterations, no EMA (``model.ema_rate = 0``); density and sample PNGs at evaluation.

Pick the set with the config argument or a field override:
  --config=configs/cnf/toy.py:8gaussians   or   --config.data.dataset=toy_8gaussians
(checkerboard, 8gaussians, moons, 2spirals, pinwheel, rings, circles, swissroll). RNODE: set
--config.cnf.kinetic_energy / --config.cnf.jacobian_norm2 (see configs/cnf/toy_rnode.py).
"""
from configs import base
from jaxgen import cnf

TOY_SETS = ("checkerboard", "8gaussians", "moons", "2spirals", "pinwheel", "rings", "circles",
            "swissroll")


def get_config(dataset: str = "checkerboard"):
  dataset = dataset or "checkerboard"
  if dataset not in TOY_SETS:
    raise ValueError(f"unknown toy set {dataset!r}; expected one of {TOY_SETS}")
  config = base.get_base_config()
  config.method = "cnf"

  training = config.training
  training.batch_size = 100
  training.n_iters = 10_000
  training.log_every = 100
  training.eval_every = 2_000
  training.snapshot_every = 0
  training.preemption_every = 1_000

  data = config.data
  data.dataset = f"toy_{dataset}"
  data.dim = 2
  data.image_size = 0
  data.num_channels = 0
  data.centered = False
  data.random_flip = False

  model = config.model
  model.name = "ffjord_mlp"
  model.prediction = "velocity"        # unused by the CNF; keeps Setup's model_fn well-defined
  model.hidden_dims = (64, 64, 64)
  model.layer_type = "concatsquash"
  model.nonlinearity = "tanh"
  model.num_blocks = 1
  model.time_length = 0.5
  model.train_T = True
  model.zero_last = False              # PyTorch's initialisation of the last layer too (FFJORD)
  model.dropout = 0.0
  model.ema_rate = 0.0                 # FFJORD keeps no EMA: the EMA copy is the parameters

  optim = config.optim
  optim.lr = 1e-3
  optim.warmup = 0
  optim.grad_clip = 0.0
  optim.weight_decay = 1e-5            # FFJORD: Adam's L2 term; here decoupled (AdamW)

  config.cnf = cnf.default_cnf_config()  # dopri5, rtol = atol = 1e-5, exact divergence

  sampling = config.sampling
  sampling.method = "ode"
  sampling.num_samples = 2000
  sampling.batch_size = 2000
  sampling.rtol = 1e-5
  sampling.atol = 1e-5

  evaluate = config.eval
  evaluate.batch_size = 1000
  evaluate.num_bpd_batches = 10        # the whole 10,000-point toy test set
  evaluate.divergence = "exact"
  evaluate.solver = "dopri5"
  evaluate.rtol = 1e-5
  evaluate.atol = 1e-5
  evaluate.t0 = 0.0
  return config
