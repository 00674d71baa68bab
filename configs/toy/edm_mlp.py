"""2-D toy data (checkerboard by default), EDM (Karras et al. 2022) and an MLP: the EDM path
``x_t = x_0 + t eps`` on [0.002, 80], EDM's loss and preconditioning (the MLP is ``F``, the model
the denoiser ``D``), ``sigma_data`` set to the data set's standard deviation (EDM's prescription;
0.5 is its value for images in [-1, 1]), sampled with EDM's Heun sampler (18 steps, NFE 35).

Pick the set with the config argument (--config=configs/toy/edm_mlp.py:moons) or with
--config.data.dataset=toy_<name> (then set --config.process.sigma_data to match).
"""
from configs.toy import common


def get_config(dataset: str = "checkerboard"):
  config = common.toy_mlp_config("edm", "x0", method="edm", dataset=dataset)
  config.process.sigma_min = 0.002
  config.process.sigma_max = 80.0
  config.process.sigma_data = common.toy_data_std(config.data.dataset[len("toy_"):])
  config.sampling.method = "edm_heun"
  config.sampling.num_steps = 18
  return config
