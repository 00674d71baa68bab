"""Shared defaults of every jaxgen experiment config (ml_collections).

An experiment file defines ``get_config()`` that starts from :func:`get_base_config` and changes
what differs. Field names follow score_sde where it has them.
"""
import ml_collections
from ml_collections import config_dict


def get_base_config():
  config = ml_collections.ConfigDict()
  config.seed = 42
  # One of: score (DSM training of a score model), flow (flow matching / rectified flow),
  # edm (EDM loss and preconditioning), cnf (maximum likelihood of a CNF).
  config.method = "score"

  # --- training -------------------------------------------------------------------------------
  config.training = training = ml_collections.ConfigDict()
  training.batch_size = 128            # global batch, split over all devices of all hosts
  training.n_iters = 1_300_001
  training.log_every = 50              # console + JSON lines + TensorBoard
  training.eval_every = 5_000          # held-out loss, bits/dim on a few batches, sample grid
  training.snapshot_every = 10_000     # checkpoints saved and kept for good (0: none)
  training.preemption_every = 1_000    # preemption checkpoints (the newest `keep_checkpoints` kept)
  training.keep_checkpoints = 3
  training.continuous = True           # continuous-time DSM (else discrete DDPM/SMLD steps)
  training.reduce_mean = False         # mean (True) or sum (False) over data dimensions
  training.likelihood_weighting = False
  training.importance_sampling = False  # importance-sampled t for likelihood weighting
  training.time_sampling = "uniform"   # uniform | logit_normal (flow)
  training.eps = 1e-5                  # smallest training time
  training.augment_p = 0.0             # EDM's augmentation probability (score/edm/flow; jaxgen.augment)
  training.nonfinite = "error"         # error | skip: what a non-finite loss does
  training.max_wall_seconds = 0.0      # stop cleanly after this long (0 = no limit)
  # GPU: deterministic kernels only, so a step is bitwise repeatable. Compiles faster (fewer
  # convolution algorithms to autotune), runs a few % slower (experiments/bench/NOTES.md, run 14).
  training.deterministic = False
  # GPU: XLA autotune results loaded into the first compile ('shipped': those jaxgen ships for this
  # GPU kind and jaxlib, if any; '': none; or a file of one's own), so that a machine compiling
  # for the first time skips most convolution autotuning (jaxgen.parallel.autotune_options).
  training.autotune_results = "shipped"
  # How the batch is split over devices: 'gspmd' (XLA partitions the global-batch step and
  # all-reduces each gradient where it is computed), 'shard_map' (each device computes its rows'
  # loss, then one float32 all-reduce of the flat gradient; 1.7-2.4 % faster on two H200s,
  # experiments/bench/NOTES.md runs 24-25), or 'auto': shard_map on two or more GPUs when the
  # loss is per example, gspmd elsewhere (train.data_parallel_mode). All draw the global batch's
  # randomness: a run does not depend on the mode or the device count (up to float32 sums).
  training.data_parallel = "auto"
  # 'shard_map' only: the flat gradient is all-reduced in this many pieces, each as soon as the
  # backward pass has computed its parameters' gradients (1: one all-reduce after the backward;
  # 8 pieces ran 0.3-0.8 % faster than 1 on two H200s, runs 24-25).
  training.allreduce_buckets = 8

  # --- sampling ---------------------------------------------------------------------------------
  config.sampling = sampling = ml_collections.ConfigDict()
  sampling.method = "pc"               # pc | em | ancestral | ddim | heun | ode | euler
  sampling.predictor = "reverse_diffusion"  # euler_maruyama | reverse_diffusion | ancestral | none
  sampling.corrector = "langevin"      # langevin | none
  sampling.n_steps_each = 1
  sampling.snr = 0.16
  sampling.noise_removal = True
  sampling.num_steps = 1000            # steps of fixed-step samplers (N of the process if 0)
  sampling.rtol = 1e-5                 # adaptive ODE sampler
  sampling.atol = 1e-5
  sampling.eps = 1e-3                  # smallest sampling time
  sampling.num_samples = 64
  sampling.batch_size = 64
  sampling.class_label = -1            # class-conditional models: -1 draws a class per sample

  # --- evaluation -------------------------------------------------------------------------------
  config.eval = evaluate = ml_collections.ConfigDict()
  evaluate.batch_size = 128
  evaluate.num_bpd_batches = 4         # batches of bits/dim during periodic evaluation
  evaluate.divergence = "rademacher"   # exact | rademacher | gaussian
  evaluate.num_probes = 1
  evaluate.rtol = 1e-5
  evaluate.atol = 1e-5
  evaluate.t0 = 1e-5
  evaluate.solver = "dopri5"
  evaluate.num_repeats = 1             # dequantization repeats over the test split
  evaluate.precision = "model"         # model | float32 | highest: the likelihood's arithmetic
  evaluate.seed = 0                    # dequantization noise and probes of every bits/dim pass
  evaluate.density_grid = 100          # 2-D toy data: density PNG on a grid of this side (0: none)

  # --- data -------------------------------------------------------------------------------------
  config.data = data = ml_collections.ConfigDict()
  data.dataset = "cifar10"             # tfds name, digits, mnist_local, or toy_<name>
  data.data_dir = ""                   # TFDS data_dir ('' = TFDS default)
  data.source_dir = ""                 # local raw files for builders of our own (MNIST idx)
  data.image_size = 32
  data.num_channels = 3
  data.num_levels = 256                # discrete levels per pixel (bits/dim convention)
  data.centered = True                 # scale to [-1, 1] (else [0, 1])
  data.random_flip = True
  data.uniform_dequantization = False
  data.num_classes = 0
  data.train_split = "train"
  data.eval_split = "test"

  # --- noise process ----------------------------------------------------------------------------
  config.process = process = ml_collections.ConfigDict()
  process.name = "vp"                  # vp | subvp | ve | linear | edm
  process.beta_min = 0.1
  process.beta_max = 20.0
  # None: the process's own defaults, VE's 0.01 / 50 (score_sde's CIFAR-10) or EDM's 0.002 / 80
  process.sigma_min = config_dict.placeholder(float)
  process.sigma_max = config_dict.placeholder(float)
  process.num_scales = 1000
  process.sigma_data = 0.5

  # --- model ------------------------------------------------------------------------------------
  config.model = model = ml_collections.ConfigDict()
  model.name = "ddpmpp"
  model.prediction = "eps"             # score | eps | x0 | velocity: what the network outputs
  model.ema_rate = 0.9999
  model.ema_rampup_ratio = 0.0         # > 0: EDM's EMA warm-up (half-life <= ratio x steps done)
  model.augment_dim = 0                # EDM's augmentation labels read by the network (9 with them)
  model.dtype = "float32"              # compute dtype; parameters always float32
  model.nf = 128
  model.ch_mult = (1, 2, 2, 2)
  model.num_res_blocks = 2
  model.attn_resolutions = (16,)
  model.dropout = 0.1
  model.resamp_with_conv = True
  model.conditional = True
  model.fir = False
  model.fir_kernel = (1, 3, 3, 1)
  model.skip_rescale = True
  model.resblock_type = "biggan"
  model.progressive = "none"
  model.progressive_input = "none"
  model.progressive_combine = "sum"
  model.attention_type = "ddpm"
  model.init_scale = 0.0
  model.embedding_type = "positional"
  model.fourier_scale = 16.0
  model.conv_size = 3
  model.scale_by_sigma = False
  model.nonlinearity = "swish"
  model.num_classes = 0
  model.remat = False                  # recompute residual blocks in the backward pass (memory)
  model.remat_policy = "full"          # with remat: "full", or "save_convs" (keeps conv outputs)
  # Performance options (same parameters and function; see experiments/bench/NOTES.md):
  model.fused_norm = False             # GroupNorm+swish with a hand-written backward pass
  model.pallas_norm = False            # GroupNorm+swish forward as one Pallas kernel (run 17)
  # 4x fewer threefry evaluations for dropout masks, and conv kernels stored the way cuDNN's NHWC
  # kernels read them (no transpose per call): faster on GPUs, the same network function
  # (NOTES.md run 10). kernel_layout="HWIO" gives flax's / score_sde's kernel layout.
  model.fast_dropout = True            # dropout masks from 16-bit fields of threefry words
  model.kernel_layout = "OHWI"         # conv kernels OHWI (cuDNN NHWC) or HWIO (flax)
  # Faster on GPUs, the same function and parameters (NOTES.md run 15):
  model.temb_barrier = True            # time embedding not folded into a conv as a side input
  model.two_stage_grads = True         # GroupNorm/conv-bias grads: positions, then batch

  # --- optimizer --------------------------------------------------------------------------------
  config.optim = optim = ml_collections.ConfigDict()
  optim.optimizer = "adam"
  optim.lr = 2e-4
  optim.beta1 = 0.9
  optim.beta2 = 0.999
  optim.eps = 1e-8
  optim.weight_decay = 0.0
  optim.warmup = 5000
  optim.grad_clip = 1.0                # global-norm clipping; <= 0: none (score_sde's -1)
  optim.flat_update = True             # optimizer/EMA on one flat vector: 1.9x bf16 on an H100
  optim.materialize_grads = False      # flat update: write the raveled gradient once (run 14: no gain)

  return config
