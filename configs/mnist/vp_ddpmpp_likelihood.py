"""MNIST, VP SDE, DDPM++ (small), likelihood weighting with importance-sampled time.

Reads the four original idx files from ``--config.data.source_dir`` through our ``mnist_local``
TFDS builder. With only the test files present (as on our machines), it trains on test[:9000] and
evaluates on test[9000:]: NOT the standard MNIST protocol, so its bits/dim are not comparable with
published MNIST tables. With the training images present, set data.train_split='train' and
data.eval_split='test'.
"""
from configs import base
from jaxgen import losses, processes


def get_config():
  config = base.get_base_config()
  training = config.training
  training.batch_size = 128
  training.n_iters = 200_000
  training.likelihood_weighting = True
  training.importance_sampling = True
  training.reduce_mean = False

  data = config.data
  data.dataset = "mnist_local"
  data.source_dir = "../shared/data/mnist"
  data.train_split = "test[:9000]"
  data.eval_split = "test[9000:]"
  data.image_size = 28
  data.num_channels = 1
  data.random_flip = False
  data.uniform_dequantization = True
  data.centered = True

  config.process.name = "vp"

  model = config.model
  model.name = "ddpmpp"
  model.prediction = "eps"
  model.nf = 64
  model.ch_mult = (1, 2, 2)
  model.num_res_blocks = 2
  model.attn_resolutions = (7,)
  model.dropout = 0.1
  model.resblock_type = "biggan"
  model.embedding_type = "positional"
  model.ema_rate = 0.9999

  # score_flow clips at 1.0 a loss without the importance-sampling normalizer Z; jaxgen's loss is
  # Z times that (it estimates the bound; jaxgen.losses.dsm_loss), so the same clipping is Z.
  config.optim.grad_clip = losses.importance_sampling_normalizer(
      processes.VPSDE(config.process.beta_min, config.process.beta_max), training.eps)

  config.optim.lr = 2e-4
  config.sampling.method = "ode"
  config.eval.batch_size = 128
  return config
