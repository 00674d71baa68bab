"""Shared settings of the multiscale image CNFs: FFJORD (`train_cnf.py --multiscale True`) and
RNODE (Finlay et al. 2020, cfinlay/ffjord-rnode `train.py` with `example-scripts/<data>.sh`).

Both: ODENet 64-64-64 per block (3x3 convolutions, concat time, softplus), 2 blocks per half-scale,
logit input on uniformly dequantized [0, 1] data, batch 200, Adam lr 1e-3 with 1,000 warm-up
iterations, no gradient clipping, no weight decay, no EMA (`model.ema_rate = 0`: the evaluated
parameters are the trained ones, as in both references), loss in bits/dim, evaluation with dopri5 at
rtol = atol = 1e-5.

FFJORD: alpha = 1e-6, learnable end time from T = 1, Hutchinson's estimator with Rademacher probes,
dopri5 at rtol = atol = 1e-5 in training, PyTorch's default initialisation.

RNODE, as ffjord-rnode's defaults and example scripts set it (:data:`RNODE_SETTINGS`):
* fixed T = 1 (`--train_T` defaults to False); last layer of every ODENet with zero weights and
  default-initialised biases (`--zero_last True` -> `ODEnet(zero_last_weight=True)`), so every
  block starts as a constant field;
* kinetic energy and Jacobian norm penalties 0.01 each; Hutchinson's estimator with Gaussian
  probes (ffjord-rnode's `ODEfunc` samples Gaussian probes; nothing turns Rademacher on), in
  training and evaluation;
* per data set: MNIST alpha = 1e-5 and the fixed-step RK4 solver with step 0.25 (4 steps on
  [0, 1]; `mnist.sh`); CIFAR-10 alpha = 0.05 and `train.py`'s default solver, dopri5 at
  rtol = atol = 1e-5 (`cifar10.sh` names no solver);
* 100 epochs of the standard training set (`--num_epochs 100`): 30,000 iterations on MNIST,
  25,000 on CIFAR-10.
Differences from ffjord-rnode: gradients by backpropagation through the solver (ffjord-rnode uses
torchdiffeq's continuous adjoint, `odeint_adjoint`); its test loop evaluates each image at the
centre of its dequantization bin (`shift`), jaxgen's bits/dim average over uniform dequantization
(the bound score_sde and FFJORD report).
"""
from configs import base
from jaxgen import cnf

VARIANTS = ("ffjord", "rnode")
DATASETS = ("mnist", "cifar10")
# ffjord-rnode per data set: logit alpha, training solver (and its steps on [0, 1]), iterations.
RNODE_SETTINGS = {
    "mnist": {"alpha": 1e-5, "solver": "rk4", "num_steps": 4, "n_iters": 30_000},
    "cifar10": {"alpha": 0.05, "solver": "dopri5", "num_steps": 0, "n_iters": 25_000},
}
RNODE_PENALTY = 0.01


def image_cnf_config(dataset: str, variant: str = "ffjord"):
  """The multiscale CNF config of ``variant`` (ffjord | rnode) for ``dataset`` (mnist | cifar10);
  the caller sets the data fields (image size, channels, splits, flips)."""
  variant = variant or "ffjord"
  if variant not in VARIANTS:
    raise ValueError(f"unknown variant {variant!r}; expected one of {VARIANTS}")
  if dataset not in DATASETS:
    raise ValueError(f"unknown data set {dataset!r}; expected one of {DATASETS}")
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
  model.zero_last = False
  model.dropout = 0.0
  model.ema_rate = 0.0                # no EMA in FFJORD / RNODE: the EMA copy is the parameters

  optim = config.optim
  optim.lr = 1e-3
  optim.warmup = 1000
  optim.grad_clip = 0.0
  optim.weight_decay = 0.0

  config.cnf = cnf.default_cnf_config()
  config.cnf.divergence = "rademacher"

  config.sampling.method = "ode"
  config.sampling.num_samples = 64
  config.sampling.batch_size = 64

  evaluate = config.eval
  evaluate.batch_size = 200
  evaluate.num_bpd_batches = 5
  evaluate.divergence = "rademacher"
  evaluate.solver = "dopri5"
  evaluate.rtol = 1e-5
  evaluate.atol = 1e-5
  evaluate.t0 = 0.0

  if variant == "rnode":
    settings = RNODE_SETTINGS[dataset]
    training.n_iters = settings["n_iters"]
    model.alpha = settings["alpha"]
    model.train_T = False
    model.zero_last = True
    config.cnf.kinetic_energy = RNODE_PENALTY
    config.cnf.jacobian_norm2 = RNODE_PENALTY
    config.cnf.divergence = "gaussian"
    config.cnf.solver = settings["solver"]
    config.cnf.num_steps = settings["num_steps"]
    evaluate.divergence = "gaussian"
  return config
