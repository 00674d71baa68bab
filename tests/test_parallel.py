"""Data parallelism on 8 fake CPU devices (conftest): mesh, shardings, sharded train step and
likelihood against their unsharded versions, host shards of the input, batch-size errors, and
the SLURM / explicit-coordinator start-up logic.

Sharded and unsharded runs see the same global batch and the same keys, so they differ only in
the order of floating-point reductions: results agree to float32 tolerance.
"""
import collections

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jaxgen import data as data_lib
from jaxgen import likelihood, parallel, processes
from conftest import FAST_COMPILE  # pylint: disable=wrong-import-order

NUM_DEVICES = 8


def _require_devices(n=NUM_DEVICES):
  if jax.device_count() < n:
    pytest.fail(f"needs {n} devices: run with XLA_FLAGS=--xla_force_host_platform_device_count={n} "
                "(tests/conftest.py sets it unless XLA_FLAGS is already set)")


@pytest.fixture(scope="module")
def mesh8():
  _require_devices()
  return parallel.make_mesh(jax.devices()[:NUM_DEVICES])


@pytest.fixture(scope="module")
def mesh1():
  return parallel.make_mesh(jax.devices()[:1])


def _max_abs_diff(a, b):
  leaves = jax.tree_util.tree_leaves(jax.tree_util.tree_map(
      lambda x, y: np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64)))
      if np.size(x) else 0.0, a, b))
  return float(max(leaves)) if leaves else 0.0


# --------------------------------------------------------------------------------------------------
# mesh, shardings, host <-> global
# --------------------------------------------------------------------------------------------------
def test_mesh_covers_devices_host_major(mesh8):
  assert dict(mesh8.shape) == {parallel.DATA_AXIS: NUM_DEVICES, parallel.MODEL_AXIS: 1}
  keys = [(d.process_index, d.id) for d in mesh8.devices.flat]
  assert keys == sorted(keys)
  assert parallel.data_parallel_size(parallel.make_mesh(jax.devices()[:NUM_DEVICES],
                                                        model_parallel=2)) == NUM_DEVICES // 2
  with pytest.raises(ValueError, match="model_parallel=3"):
    parallel.make_mesh(jax.devices()[:NUM_DEVICES], model_parallel=3)
  # two hosts of two devices: a model group of 4 would span both hosts, each of which would
  # feed its own rows as the group's "replicated" batch (refused before a mesh is built)
  fake = [type("D", (), {"process_index": i // 2, "id": i})() for i in range(4)]
  with pytest.raises(ValueError, match="cannot span hosts"):
    parallel.make_mesh(fake, model_parallel=4)
  with pytest.raises(ValueError, match="at least one device"):
    parallel.make_mesh([])


def test_global_batch_draw_gives_each_device_its_rows(mesh8):
  """Inside a shard_map over the data axis, `global_batch_draw` is the device's rows of the global
  batch's draw (also a dropout keep mask through `batch_rows`); outside, the plain draw."""
  from jax.sharding import PartitionSpec as P  # pylint: disable=import-outside-toplevel
  from jaxgen.models import layers  # pylint: disable=import-outside-toplevel
  key = jax.random.PRNGKey(7)
  normal = lambda k, s: jax.random.normal(k, s)
  shape = (16, 3, 5)
  ref = normal(key, shape)
  np.testing.assert_array_equal(parallel.global_batch_draw(normal, key, shape), ref)
  assert parallel.batch_rows(16) == (0, 16)
  assert parallel.global_batch_draw(normal, key, ()).shape == ()
  ref_mask = layers.dropout_keep_mask(key, shape, 0.3)[0]

  def per_device(x):
    offset, total = parallel.batch_rows(x.shape[0])
    draw = parallel.global_batch_draw(normal, key, x.shape)
    mask = layers.dropout_keep_mask(key, x.shape, 0.3)[0]
    return draw, mask, jnp.broadcast_to(offset, (x.shape[0],)), jnp.full((x.shape[0],), total)

  out = jax.jit(parallel.shard_map(per_device, mesh8, in_specs=P(parallel.DATA_AXIS),
                                   out_specs=P(parallel.DATA_AXIS)))(jnp.zeros(shape))
  draw, mask, offsets, totals = (np.asarray(o) for o in out)
  np.testing.assert_array_equal(draw, ref)
  np.testing.assert_array_equal(mask, ref_mask)
  np.testing.assert_array_equal(offsets, np.repeat(np.arange(8) * 2, 2))
  assert set(totals.tolist()) == {16}
  assert 0.2 < 1 - mask.mean() < 0.4

  # layers.Dropout: nn.Dropout's mask outside shard_map, its rows of that mask inside
  import flax.linen as nn  # pylint: disable=import-outside-toplevel
  x = jnp.arange(np.prod(shape), dtype=jnp.float32).reshape(shape) + 1.0
  apply = lambda cls, y: cls(0.3).apply({}, y, deterministic=False, rngs={"dropout": key})
  plain = apply(nn.Dropout, x)
  np.testing.assert_array_equal(apply(layers.Dropout, x), plain)
  rows = jax.jit(parallel.shard_map(lambda y: apply(layers.Dropout, y), mesh8,
                                    in_specs=P(parallel.DATA_AXIS),
                                    out_specs=P(parallel.DATA_AXIS)))(x)
  np.testing.assert_array_equal(rows, plain)


def test_host_local_to_global_round_trip(mesh8):
  batch = {"image": np.arange(16 * 3, dtype=np.float32).reshape(16, 3),
           "label": np.arange(16, dtype=np.int32)}
  global_batch = parallel.host_local_to_global(batch, mesh8)
  image = global_batch["image"]
  assert image.shape == (16, 3) and image.sharding == parallel.batch_sharded(mesh8)
  assert len(image.addressable_shards) == NUM_DEVICES
  assert all(s.data.shape == (2, 3) for s in image.addressable_shards)
  back = parallel.to_host(global_batch)
  np.testing.assert_array_equal(back["image"], batch["image"])
  np.testing.assert_array_equal(back["label"], batch["label"])
  assert parallel.host_batch_rows(16, mesh8) == slice(0, 16)
  state = parallel.replicate({"w": np.ones((3,), np.float32)}, mesh8)
  assert state["w"].sharding.is_fully_replicated
  assert parallel.global_mean(image) == pytest.approx(float(np.mean(batch["image"])))


def test_batch_not_divisible_by_devices_is_a_clear_error(mesh8):
  with pytest.raises(ValueError, match=r"batch_size=12 is not divisible by the number of "
                                       r"devices \(8\)"):
    parallel.check_global_batch(12, mesh8, "config.training.batch_size")
  with pytest.raises(ValueError, match="must be a positive int"):
    parallel.check_global_batch(0, mesh8)
  assert parallel.check_global_batch(16, mesh8) == 16
  with pytest.raises(ValueError, match=r"\['image'\] has 12 rows on this host, not divisible by "
                                       r"its 8 devices"):
    parallel.host_local_to_global({"image": np.zeros((12, 2), np.float32)}, mesh8)
  with pytest.raises(ValueError, match="scalar"):
    parallel.host_local_to_global({"n": np.float32(1.0)}, mesh8)
  with pytest.raises(ValueError, match="not divisible by the number of devices 8"):
    data_lib.check_batch_size(12, 8, 1)
  # ... and a run with such a config stops before compiling or writing anything
  from jaxgen import train
  config = _mlp_config()
  config.training.batch_size = 12
  with pytest.raises(ValueError, match="12 is not divisible by the number of devices 8"):
    train.validate_config(config, num_devices=8)


# --------------------------------------------------------------------------------------------------
# likelihood of a sharded batch
# --------------------------------------------------------------------------------------------------
def _small_drift(dim, seed=0):
  """A fixed nonlinear drift on ``(batch, 4, 4, 1)`` data (no batch interaction)."""
  k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
  w1 = jax.random.normal(k1, (dim, 16)) / np.sqrt(dim)
  w2 = jax.random.normal(k2, (16, dim)) / 4.0

  def drift(x, t):
    flat = x.reshape(x.shape[0], -1)
    h = jnp.tanh(flat @ w1 + t[:, None])
    return (h @ w2 - 0.5 * flat).reshape(x.shape)

  return drift


@pytest.mark.parametrize("divergence", ["exact", "rademacher"])
def test_ode_log_likelihood_sharded_equals_unsharded(mesh8, divergence):
  shape = (16, 4, 4, 1)
  x = np.asarray(jax.random.normal(jax.random.PRNGKey(1), shape))
  drift = _small_drift(16)
  prior = processes.VPSDE().prior_logp
  kwargs = dict(key=jax.random.PRNGKey(2), prior_logp=prior, t0=1e-3, t1=1.0,
                divergence=divergence, rtol=1e-5, atol=1e-5)
  logp_ref, z_ref, nfe_ref = likelihood.ode_log_likelihood(drift, jnp.asarray(x), **kwargs)

  x_sharded = parallel.host_local_to_global(x, mesh8)
  # 1) the sharded array given straight to the (jitted) solver
  logp, z, nfe = likelihood.ode_log_likelihood(drift, x_sharded, **kwargs)
  # 2) inside an outer jit with explicit shardings, as evaluate.py runs it
  run = jax.jit(lambda xs: likelihood.ode_log_likelihood(drift, xs, **kwargs),
                in_shardings=parallel.batch_sharded(mesh8),
                out_shardings=(parallel.batch_sharded(mesh8), parallel.batch_sharded(mesh8),
                               parallel.replicated(mesh8)))
  logp_jit, z_jit, nfe_jit = run(x_sharded)
  assert logp_jit.sharding == parallel.batch_sharded(mesh8)
  for lp, zz, n in ((logp, z, nfe), (logp_jit, z_jit, nfe_jit)):
    np.testing.assert_allclose(parallel.to_host(lp), np.asarray(logp_ref), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(parallel.to_host(zz), np.asarray(z_ref), rtol=1e-5, atol=1e-5)
    assert int(n) == int(nfe_ref)


# --------------------------------------------------------------------------------------------------
# host shards of the input, end to end through get_dataset
# --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def digits_config(tmp_path_factory):
  from jaxgen.data.builders import prepare_local_dataset
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  prepare_local_dataset("digits", data_dir)
  return ml_collections.ConfigDict(dict(
      dataset="digits", data_dir=data_dir, source_dir="", image_size=8, num_channels=1,
      num_levels=17, centered=True, random_flip=False, uniform_dequantization=False,
      num_classes=0))


@pytest.mark.parametrize("process_count", [2, 4, 7])
def test_global_batches_of_hosts_cover_one_epoch_once(digits_config, process_count):
  """Hosts read disjoint shards: over one epoch the rows they feed into the global batches are
  the train split, each example exactly once (7 hosts: shards of unequal size)."""
  import sklearn.datasets
  digits = sklearn.datasets.load_digits()
  expected = collections.Counter(
      (im.astype(np.uint8).tobytes(), int(lb))
      for im, lb in zip(digits.images[:1500, :, :, None], digits.target[:1500]))
  local_batch = 32
  hosts = [data_lib.get_dataset(digits_config, "train", seed=3, process_index=i,
                                process_count=process_count) for i in range(process_count)]
  assert sum(h.num_examples for h in hosts) == 1500
  steps = max(-(-h.num_examples // local_batch) for h in hosts)
  seen = collections.Counter()
  for step in range(steps):
    # the global batch of this step, as host_local_to_global lays it out (host i: block i)
    parts = [h.get_batch(step, local_batch) for h in hosts]
    for i, (host, part) in enumerate(zip(hosts, parts)):
      first = step * local_batch
      keep = max(0, min(local_batch, host.num_examples - first))  # this host's first epoch
      for im, lb in zip(part["image"][:keep], part["label"][:keep]):
        seen[(im.tobytes(), int(lb))] += 1
  assert seen == expected


# --------------------------------------------------------------------------------------------------
# start-up logic
# --------------------------------------------------------------------------------------------------
def test_slurm_local_device_ids():
  one_per_node = {"SLURM_STEP_TASKS_PER_NODE": "1(x2)", "CUDA_VISIBLE_DEVICES": "0,1,2,3",
                  "SLURM_LOCALID": "0"}
  assert parallel.slurm_local_device_ids(one_per_node) == [0, 1, 2, 3]
  one_per_gpu = {"SLURM_STEP_TASKS_PER_NODE": "4(x2)", "CUDA_VISIBLE_DEVICES": "0,1,2,3",
                 "SLURM_LOCALID": "2"}
  assert parallel.slurm_local_device_ids(one_per_gpu) is None  # JAX's own [SLURM_LOCALID]
  bound = {"SLURM_STEP_TASKS_PER_NODE": "4", "CUDA_VISIBLE_DEVICES": "2", "SLURM_LOCALID": "2"}
  assert parallel.slurm_local_device_ids(bound) == [0]
  two_per_task = {"SLURM_NTASKS": "4", "SLURM_STEP_NUM_NODES": "2", "SLURM_GPUS_ON_NODE": "8",
                  "SLURM_LOCALID": "1"}
  assert parallel.slurm_local_device_ids(two_per_task) == [4, 5, 6, 7]
  assert parallel.slurm_local_device_ids({"JAXGEN_LOCAL_DEVICE_IDS": "1,3"}) == [1, 3]
  assert parallel.slurm_local_device_ids({}) is None
  # --ntasks-per-node=t --gpus-per-task=k with k >= t: each task sees its own k GPUs as 0..k-1
  # and uses all of them (was: k == t -> JAX's single [SLURM_LOCALID]; k a multiple of t -> a
  # block of k / t of its own GPUs)
  for tasks, per_task, local_id in ((2, 2, 0), (2, 4, 1), (4, 4, 3), (4, 2, 1)):
    env = {"SLURM_STEP_TASKS_PER_NODE": f"{tasks}(x2)", "SLURM_GPUS_PER_TASK": str(per_task),
           "CUDA_VISIBLE_DEVICES": ",".join(str(local_id * per_task + i) for i in range(per_task)),
           "SLURM_LOCALID": str(local_id)}
    assert parallel.slurm_local_device_ids(env) == list(range(per_task)), env
  typed = {"SLURM_STEP_TASKS_PER_NODE": "2", "SLURM_TRES_PER_TASK": "cpu=8,gres/gpu:h100=2",
           "CUDA_VISIBLE_DEVICES": "2,3", "SLURM_LOCALID": "1"}
  assert parallel.slurm_local_device_ids(typed) == [0, 1]
  typed = {"SLURM_STEP_TASKS_PER_NODE": "2", "SLURM_GPUS_PER_TASK": "h100:2",
           "CUDA_VISIBLE_DEVICES": "0,1", "SLURM_LOCALID": "0"}
  assert parallel.slurm_local_device_ids(typed) == [0, 1]
  # one GPU per task but every GPU visible (--gpu-bind=none): JAX's [SLURM_LOCALID], as before
  unbound = {"SLURM_STEP_TASKS_PER_NODE": "4", "SLURM_GPUS_PER_TASK": "1",
             "CUDA_VISIBLE_DEVICES": "0,1,2,3", "SLURM_LOCALID": "2"}
  assert parallel.slurm_local_device_ids(unbound) is None


def test_initialize_distributed_single_host_and_bad_flags(monkeypatch):
  for name in ("JAXGEN_COORDINATOR", "JAXGEN_NUM_PROCESSES", "JAXGEN_PROCESS_ID", "SLURM_JOB_ID",
               "JAXGEN_DISTRIBUTED", "TPU_WORKER_HOSTNAMES", "MEGASCALE_COORDINATOR_ADDRESS"):
    monkeypatch.delenv(name, raising=False)
  assert parallel.initialize_distributed() is False
  with pytest.raises(ValueError, match="num_processes"):
    parallel.initialize_distributed("localhost:1234")
  with pytest.raises(ValueError, match="process_id=2"):
    parallel.initialize_distributed("localhost:1234", num_processes=2, process_id=2)
  # a process count without a coordinator (e.g. a misspelt JAXGEN_COORDINATOR) would make each
  # process train alone into one workdir
  with pytest.raises(ValueError, match="no coordinator"):
    parallel.initialize_distributed(num_processes=2, process_id=1)
  monkeypatch.setenv("JAXGEN_NUM_PROCESSES", "4")
  monkeypatch.setenv("JAXGEN_PROCESS_ID", "0")
  with pytest.raises(ValueError, match="JAXGEN_COORDINATOR"):
    parallel.initialize_distributed()
  monkeypatch.delenv("JAXGEN_NUM_PROCESSES")
  monkeypatch.delenv("JAXGEN_PROCESS_ID")
  monkeypatch.setenv("JAXGEN_DISTRIBUTED", "0")
  assert parallel.initialize_distributed("localhost:1234", 2, 0) is False


# --------------------------------------------------------------------------------------------------
# the sharded train step
# --------------------------------------------------------------------------------------------------
def _mlp_config():
  from configs.toy import vp_mlp
  config = vp_mlp.get_config()
  config.model.hidden = (32, 32)
  config.model.embedding_dim = 16
  config.training.batch_size = 16
  config.optim.warmup = 0
  config.optim.lr = 1e-3
  return config


def _ddpmpp_config():
  from configs.digits import vp_unet
  config = vp_unet.get_config()
  config.training.batch_size = 16
  config.data.random_flip = True  # random flips and dropout must not depend on the sharding
  model = config.model
  model.name = "ddpmpp"
  model.nf = 16
  model.ch_mult = (1, 2)
  model.num_res_blocks = 1
  model.attn_resolutions = ()
  model.dropout = 0.1
  model.embedding_type = "positional"
  model.ema_rate = 0.9
  config.optim.warmup = 0
  config.optim.lr = 1e-3
  return config


def _batch_for(config, seed=0):
  """A host batch of ``config.training.batch_size`` rows, as the pipeline yields it."""
  rng = np.random.default_rng(seed)
  b = config.training.batch_size
  if config.data.dataset.startswith("toy_"):
    return {"image": rng.normal(size=(b, 2)).astype(np.float32),
            "label": np.full((b,), -1, np.int32)}
  size, channels = config.data.image_size, config.data.num_channels
  return {"image": rng.integers(0, config.data.num_levels, (b, size, size, channels)).astype(
      np.uint8), "label": rng.integers(0, 10, (b,)).astype(np.int32)}




def _run_steps(setup, mesh, batches, init_state):
  repl = parallel.replicated(mesh)
  step = jax.jit(setup.make_train_step(), in_shardings=(repl, parallel.batch_sharded(mesh)),
                 out_shardings=(repl, repl), compiler_options=FAST_COMPILE)
  state = parallel.replicate(init_state, mesh)
  metrics = []
  for batch in batches:
    state, m = step(state, parallel.host_local_to_global(batch, mesh))
    metrics.append(parallel.to_host(m))
  return parallel.to_host(state), metrics


@pytest.mark.parametrize("make_config", [_mlp_config, _ddpmpp_config], ids=["mlp", "ddpmpp"])
def test_sharded_train_step_equals_single_device(mesh1, mesh8, make_config):
  from jaxgen import train
  config = make_config()
  setup = train.Setup(config)
  batches = [_batch_for(config, seed) for seed in range(2)]
  init = parallel.to_host(jax.jit(setup.init_state, compiler_options=FAST_COMPILE)(
      jax.random.PRNGKey(0)))
  state1, metrics1 = _run_steps(setup, mesh1, batches, init)
  state8, metrics8 = _run_steps(setup, mesh8, batches, init)
  assert int(state1.step) == int(state8.step) == 2
  for m1, m8 in zip(metrics1, metrics8):
    np.testing.assert_allclose(m8["loss"], m1["loss"], rtol=1e-5)
    np.testing.assert_allclose(m8["grad_norm"], m1["grad_norm"], rtol=1e-5)
  # the parameters moved (two Adam steps of ~lr each), and the same way on 1 and 8 devices
  moved = _max_abs_diff(state1.params, init.params)
  assert moved > 1e-4
  for name in ("params", "ema_params", "opt_state"):
    diff = _max_abs_diff(getattr(state1, name), getattr(state8, name))
    assert diff < 1e-5, f"{name}: max |1 device - 8 devices| = {diff:.3g}"


@pytest.mark.parametrize("dataset", ["toy", "digits"])
def test_model_likelihood_sharded_equals_unsharded(mesh1, mesh8, dataset):
  """The PF-ODE likelihood of a model on a batch sharded over 8 devices vs on one device.

  * Fixed-step solve (Heun, 32 steps) of the model's probability-flow drift through
    ``likelihood.ode_log_likelihood``: the same arithmetic up to reduction order, so the results
    agree to float32 tolerance.
  * ``evaluate.make_nll_fn`` (dequantization, adaptive Dopri5, bits/dim or nats): the adaptive
    controller's accept/reject decisions hinge on the per-step error estimate, and 1-ulp
    differences between the per-device and the whole-batch matmuls can flip one of several
    hundred decisions (seen: NFE 1093 vs 1075). Both are then valid solves of the same ODE, and
    they agree to the solver's tolerance, which is what is checked there.
  """
  from jaxgen import evaluate, predictions, train
  config = _mlp_config()
  if dataset == "digits":
    from configs.digits import vp_unet
    config = vp_unet.get_config()
    config.model.name = "mlp"
    config.model.hidden = (32, 32)
    config.model.embedding_dim = 16
    config.eval.divergence = "rademacher"
  config.eval.rtol = config.eval.atol = 1e-4
  config.training.batch_size = 16
  setup = train.Setup(config)
  params = jax.jit(setup.init_state)(jax.random.PRNGKey(0)).params
  batch = {"image": _batch_for(config, seed=1)["image"]}
  if dataset == "toy":
    x = batch["image"]
  else:
    x = np.asarray(data_lib.preprocess(jax.random.PRNGKey(3), jnp.asarray(batch["image"]),
                                       config.data, train=False))
  key = jax.random.PRNGKey(5)

  def fixed_step_logp(params, x):
    drift = predictions.as_drift_fn(setup.process, lambda y, t: setup.model_fn(params, y, t),
                                    setup.prediction)
    return likelihood.ode_log_likelihood(
        drift, x, key=key, prior_logp=setup.process.prior_logp, t0=1e-3, t1=setup.process.T,
        divergence=config.eval.divergence, solver="heun", num_steps=32)[0]

  fixed, adaptive = {}, {}
  for name, mesh in (("1", mesh1), ("8", mesh8)):
    repl, sharded = parallel.replicated(mesh), parallel.batch_sharded(mesh)
    mesh_params = parallel.replicate(params, mesh)
    run_fixed = jax.jit(fixed_step_logp, in_shardings=(repl, sharded), out_shardings=sharded)
    fixed[name] = parallel.to_host(run_fixed(mesh_params, parallel.host_local_to_global(x, mesh)))
    nll = jax.jit(evaluate.make_nll_fn(setup, config.eval), in_shardings=(repl, repl, sharded),
                  out_shardings=(sharded, repl))
    value, nfe = nll(mesh_params, key, parallel.host_local_to_global(batch, mesh))
    adaptive[name] = (parallel.to_host(value), int(nfe))

  assert fixed["1"].shape == (16,) and np.all(np.isfinite(fixed["1"]))
  np.testing.assert_allclose(fixed["8"], fixed["1"], rtol=1e-5, atol=1e-4)
  values1, nfe1 = adaptive["1"]
  values8, nfe8 = adaptive["8"]
  assert values1.shape == (16,) and np.all(np.isfinite(values1))
  np.testing.assert_allclose(values8, values1, rtol=10 * config.eval.rtol)
  assert abs(nfe8 - nfe1) <= 0.05 * nfe1


def test_default_xla_flags_added_once_and_never_over_the_users():
  flag = parallel.DEFAULT_XLA_FLAGS[0]
  name = flag.split("=")[0]
  assert parallel.default_xla_flags({}) == flag
  kept = "--xla_force_host_platform_device_count=8"
  assert parallel.default_xla_flags({"XLA_FLAGS": kept}) == f"{kept} {flag}"
  # Applying it twice changes nothing, and a value the user chose stays.
  once = parallel.default_xla_flags({"XLA_FLAGS": kept})
  assert parallel.default_xla_flags({"XLA_FLAGS": once}) == once
  mine = f"{name}=true"
  assert parallel.default_xla_flags({"XLA_FLAGS": mine}) == mine


def test_compiler_options_and_jit():
  assert parallel.compiler_options(False) is None
  options = parallel.compiler_options(True)
  assert options == {"xla_gpu_exclude_nondeterministic_ops": True}
  options["other"] = 1                          # a copy: the module's constant is untouched
  assert parallel.compiler_options(True) == parallel.DETERMINISTIC_COMPILER_OPTIONS
  options = parallel.compiler_options(True)
  with pytest.raises(ValueError, match="'yes'"):
    parallel.compiler_options("yes")
  assert parallel.compiler_options(True, backend="tpu") is None   # deterministic already
  assert parallel.compiler_options(True, backend="gpu") == options
  x = jnp.arange(6.0)
  f = lambda v: jnp.cumsum(v) * 2
  np.testing.assert_array_equal(parallel.jit(f, parallel.compiler_options(True))(x), f(x))
  np.testing.assert_array_equal(parallel.jit(f, None)(x), f(x))
  with pytest.raises(Exception, match="xla_not_an_option"):   # options do reach XLA
    parallel.jit(f, {"xla_not_an_option": True})(x)


# --- shipped XLA autotune results ------------------------------------------------------------------
def _entries(text):
  """The top-level ``entries { ... }`` blocks of an autotune results text proto (brace-matched)."""
  blocks, depth, start = [], 0, None
  for i, ch in enumerate(text):
    if ch == "{":
      if depth == 0:
        start = text.rfind("\n", 0, i) + 1
      depth += 1
    elif ch == "}":
      depth -= 1
      assert depth >= 0, f"unbalanced '}}' at {i}"
      if depth == 0:
        blocks.append(text[start:i + 1])
  assert depth == 0, "unbalanced '{'"
  return blocks


def test_shipped_autotune_results_are_named_and_formed_as_xla_writes_them():
  import os, re  # pylint: disable=import-outside-toplevel,multiple-imports
  files = sorted(os.listdir(parallel.AUTOTUNE_RESULTS_DIR))
  pbtxt = [f for f in files if f.endswith(".pbtxt")]
  assert "nvidia_h200__jaxlib-0.11.2.pbtxt" in pbtxt
  for name in pbtxt:
    assert re.fullmatch(r"[a-z0-9._]+__jaxlib-[0-9.]+\.pbtxt", name), name
    kind, version = name[:-len(".pbtxt")].split("__jaxlib-")
    assert parallel.autotune_results_path(kind.replace("_", " "), version).endswith(name)
    text = open(os.path.join(parallel.AUTOTUNE_RESULTS_DIR, name)).read()
    blocks = _entries(text)
    assert len(blocks) > 100 and all(b.startswith("entries {") for b in blocks)
    devices, fingerprints = set(), set()
    for b in blocks:
      devices.add(re.search(r'device: "([0-9a-f]+)"', b).group(1))
      fingerprints.add(re.search(r'hlo_fingerprint: "([0-9a-f]+)"', b).group(1))
      assert re.search(r"codegen_version: \"\w+\"", b) and re.search(r"backend: [A-Z_]+", b)
      assert re.search(r'optimal_backend_version: "[\w.]+"', b), b[:300]
    assert len(devices) == 1, devices             # one GPU kind per file
    assert len(fingerprints) == len(blocks)       # one entry per instruction
  # the README's table lists every file
  readme = open(os.path.join(parallel.AUTOTUNE_RESULTS_DIR, "README.md")).read()
  assert all(f"`{name}`" in readme for name in pbtxt)


def test_autotune_options_pick_the_file_of_this_gpu_and_jaxlib(tmp_path):
  h200 = dict(device_kind="NVIDIA H200", jaxlib_version="0.11.2")
  path = parallel.autotune_results_path(**h200)
  assert parallel.shipped_autotune_results(**h200) == path
  assert parallel.shipped_autotune_results("NVIDIA H100 80GB HBM3", "0.11.2") is None
  assert parallel.shipped_autotune_results("NVIDIA H200", "0.11.3") is None
  assert parallel.autotune_options("shipped", backend="gpu", env={}, **h200) == {
      "xla_gpu_load_autotune_results_from": path}
  # nothing to load: another GPU, the CPU, TPU, turned off, or the user's own XLA_FLAGS load
  assert parallel.autotune_options("shipped", backend="gpu", env={},
                                   device_kind="NVIDIA H100 80GB HBM3",
                                   jaxlib_version="0.11.2") is None
  for backend in ("cpu", "tpu"):
    assert parallel.autotune_options("shipped", backend=backend, env={}, **h200) is None
  assert parallel.autotune_options("", backend="gpu", **h200) is None
  assert parallel.autotune_options(None, backend="gpu", **h200) is None
  mine = {"XLA_FLAGS": "--xla_gpu_load_autotune_results_from=/tmp/mine.pbtxt"}
  assert parallel.autotune_options("shipped", backend="gpu", env=mine, **h200) is None
  # a file of one's own; a missing one is named on every backend
  own = tmp_path / "own.pbtxt"
  own.write_text("")
  assert parallel.autotune_options(str(own), backend="gpu") == {
      "xla_gpu_load_autotune_results_from": str(own)}
  for backend in ("gpu", "cpu"):
    with pytest.raises(ValueError, match="missing.pbtxt"):
      parallel.autotune_options(str(tmp_path / "missing.pbtxt"), backend=backend)
  with pytest.raises(ValueError, match="1.5"):
    parallel.autotune_options(1.5, backend="gpu")
  # with deterministic kernels: the shipped results (picked among all kernels) are not loaded
  assert parallel.compiler_options(False, backend="gpu", autotune_results=str(own)) == {
      "xla_gpu_load_autotune_results_from": str(own)}
  both = parallel.compiler_options(True, backend="gpu", autotune_results=str(own))
  assert both == {"xla_gpu_exclude_nondeterministic_ops": True,
                  "xla_gpu_load_autotune_results_from": str(own)}


def test_deterministic_step_ignores_the_shipped_results(monkeypatch):
  h200 = parallel.autotune_results_path("NVIDIA H200", "0.11.2")
  monkeypatch.setattr(parallel, "shipped_autotune_results", lambda *a, **k: h200)
  monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
  assert parallel.compiler_options(False, backend="gpu", autotune_results="shipped") == {
      "xla_gpu_load_autotune_results_from": h200}
  assert parallel.compiler_options(True, backend="gpu", autotune_results="shipped") == (
      parallel.DETERMINISTIC_COMPILER_OPTIONS)


def test_autotune_option_is_known_to_this_jaxlib():
  """The option name reaches XLA's option parser (an unknown name fails the compile); the CPU
  compiler ignores it, so the result is unchanged."""
  path = parallel.autotune_results_path("NVIDIA H200", "0.11.2")
  f = lambda v: jnp.sin(v) * 3
  x = jnp.linspace(0.0, 1.0, 8)
  out = jax.jit(f, compiler_options={"xla_gpu_load_autotune_results_from": path})(x)
  np.testing.assert_array_equal(out, jax.jit(f)(x))
  with pytest.raises(Exception):
    jax.jit(f, compiler_options={"xla_gpu_load_autotune_results_from_typo": path})(x)
