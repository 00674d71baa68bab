"""The train loop: bit-identical resume, preemption, non-finite losses, bad configs, checkpoints."""
import functools
import json
import os
import re
import signal
import subprocess
import sys
import time
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import base
from configs.toy import vp_mlp
from jaxgen import train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(n_iters=6):
  config = vp_mlp.get_config()
  config.training.batch_size = 16
  config.training.n_iters = n_iters
  config.training.log_every = 2
  config.training.preemption_every = 3
  config.training.eval_every = 0
  config.eval.batch_size = 16
  config.model.hidden = (32, 32)
  config.model.ema_rate = 0.9
  return config


def _params(state):
  return jax.tree_util.tree_leaves(jax.device_get((state.params, state.ema_params,
                                                   state.opt_state)))


def test_resume_is_bit_identical(tmp_path, capsys):
  full_run = train.train_and_evaluate(tiny_config(8), str(tmp_path / "full"))
  full = full_run["state"]
  # The first call's compile is announced and timed before the first loss line.
  out = capsys.readouterr().out
  assert out.index("compiling the train step") < out.index("first train step (compile and run)")
  assert out.index("first train step") < out.index("step       2/8")
  assert 0 < full_run["first_step_seconds"] < full_run["wall_seconds"]
  config = tiny_config(8)
  config.training.n_iters = 4
  first = train.train_and_evaluate(config, str(tmp_path / "split"))
  assert first["final_step"] == 4
  second = train.train_and_evaluate(tiny_config(8), str(tmp_path / "split"))
  assert second["start_step"] == 4 and second["final_step"] == 8
  for a, b in zip(_params(full), _params(second["state"])):
    np.testing.assert_array_equal(a, b)
  lines = open(tmp_path / "split" / "metrics.jsonl").read().splitlines()
  assert json.loads(lines[-1])["step"] == 8
  assert os.path.isdir(tmp_path / "split" / "tensorboard")


def test_nonfinite_loss_stops_with_step_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
  config = tiny_config(6)
  train.train_and_evaluate(config, str(tmp_path))        # good checkpoint at step 6
  config = tiny_config(12)
  # every update from step 6 on is non-finite (a NaN learning rate, which validate_config
  # refuses, let through here to make the updates non-finite)
  monkeypatch.setattr(train, "_validate_numbers", lambda config: None)
  config.optim.lr = float("nan")
  config.optim.warmup = 0
  closed = []
  make = train.make_checkpoint_manager

  def spy(workdir, cfg):  # records whether the run closes its checkpoint manager
    manager = make(workdir, cfg)
    close = manager.close
    manager.close = lambda: (closed.append(True), close())[1]
    return manager

  monkeypatch.setattr(train, "make_checkpoint_manager", spy)
  # lr does not enter the fingerprint, so the run resumes and then fails on its first step.
  with pytest.raises(train.NonFiniteLossError, match="step 6"):
    train.train_and_evaluate(config, str(tmp_path))
  steps = sorted(int(s) for s in os.listdir(tmp_path / "checkpoints") if s.isdigit())
  assert steps[-1] == 6
  assert closed == [True]   # the manager's async threads do not outlive the failed run


def test_stop_after_a_nonfinite_step_saves_nothing(tmp_path, monkeypatch):
  """A stop (time limit, SIGTERM) after a non-finite step that no log or save step has checked
  yet raises NonFiniteLossError and saves nothing: it used to save a checkpoint recording the bad
  step and exit cleanly, and every later resume then failed naming that checkpoint as good."""
  train.train_and_evaluate(tiny_config(2), str(tmp_path))   # good checkpoint at step 2
  config = tiny_config(50)
  config.training.log_every = config.training.preemption_every = 100
  config.optim.warmup = 0
  original = train.Setup._loss_and_grads

  def nan_at_step_2(self, state, batch, params):
    loss, grads, aux = original(self, state, batch, params)
    return jnp.where(state.step == 2, jnp.nan, loss), grads, aux

  monkeypatch.setattr(train.Setup, "_loss_and_grads", nan_at_step_2)
  config.training.max_wall_seconds = 1e-9     # a stop after the first step (step 3)
  with pytest.raises(train.NonFiniteLossError, match="step 2"):
    train.train_and_evaluate(config, str(tmp_path))
  assert sorted(int(s) for s in os.listdir(tmp_path / "checkpoints") if s.isdigit()) == [2]
  monkeypatch.setattr(train.Setup, "_loss_and_grads", original)
  summary = train.train_and_evaluate(tiny_config(4), str(tmp_path))   # resumes from the good one
  assert summary["start_step"] == 2 and summary["final_step"] == 4


def test_rate_counts_training_time_only(tmp_path, monkeypatch):
  """The img/s and ETA of a log line leave out the first step's compile and the periodic
  evaluation since the last line (on a clock that only the evaluation moves by 1,000 s, the rate
  after an evaluation was under 0.1 img/s)."""
  clock = [0.0]

  def now():
    clock[0] += 1e-3
    return clock[0]

  monkeypatch.setattr(train, "time", types.SimpleNamespace(time=now))

  def evaluate_fn(setup, state, step, workdir, mesh):
    clock[0] += 1000.0
    return {}

  config = tiny_config(8)
  config.training.eval_every = 2
  train.train_and_evaluate(config, str(tmp_path), evaluate_fn=evaluate_fn)
  rates = [json.loads(line)["train/images_per_second"]
           for line in open(tmp_path / "metrics.jsonl")
           if "train/images_per_second" in json.loads(line)]
  assert len(rates) == 4 and min(rates) > 100.0, rates


@pytest.mark.parametrize("preemption_every,snapshot_every,keep,expected", [
    (1, 4, 2, [4, 8, 11, 12]), (2, 5, 1, [5, 10, 12])])
def test_snapshot_steps_are_saved_and_kept(tmp_path, preemption_every, snapshot_every, keep,
                                           expected):
  """Every ``snapshot_every``-th step is saved and kept for good, next to the newest
  ``keep_checkpoints``: with ``preemption_every`` 2 and ``snapshot_every`` 5, step 5 was never
  saved (only steps that the loop saves can be kept)."""
  config = tiny_config(12)
  config.training.preemption_every = preemption_every
  config.training.snapshot_every = snapshot_every
  config.training.keep_checkpoints = keep
  train.train_and_evaluate(config, str(tmp_path))
  assert sorted(int(s) for s in os.listdir(tmp_path / "checkpoints") if s.isdigit()) == expected


@pytest.mark.parametrize("section,field", [
    ("optim", "lr"), ("optim", "eps"), ("optim", "weight_decay"),
    ("model", "ema_rampup_ratio"), ("eval", "rtol"), ("sampling", "rtol")])
def test_infinite_numbers_are_refused_before_the_workdir_is_written(tmp_path, section, field):
  """An infinite learning rate, Adam eps, weight decay, EMA warm-up ratio or solver tolerance is
  refused naming the field before anything is written (it passed the checks and failed after the
  workdir was written, or ran as a 'non-finite loss'); infinite grad_clip (no clipping) and
  max_wall_seconds (no limit) stay allowed."""
  config = tiny_config(2)
  config.sampling.method = "ode"
  config[section][field] = float("inf")
  with pytest.raises(ValueError, match=f"config.{section}.{field}"):
    train.train_and_evaluate(config, str(tmp_path / "run"))
  assert not os.path.exists(tmp_path / "run")
  config = tiny_config(2)
  config.optim.grad_clip = config.training.max_wall_seconds = float("inf")
  train.validate_config(config, num_devices=8)


@pytest.mark.parametrize("section,value", [
    ("", 2**32), ("", -1), ("", 2**63), ("eval", 2**32)])
def test_seeds_outside_32_bits_are_refused(section, value):
  """jax.random.PRNGKey keeps 32 bits of a seed (2**32 gave the run of seed 0; 2**63 raised
  OverflowError with a traceback after the checks): config.seed and eval.seed are refused."""
  config = tiny_config(2)
  (config[section] if section else config).seed = value
  name = f"config.{section}.seed" if section else "config.seed"
  with pytest.raises(ValueError, match=re.escape(name)):
    train.validate_config(config, num_devices=8)
  config = tiny_config(2)
  config.seed = 2**32 - 1
  train.validate_config(config, num_devices=8)


def test_nonfinite_loss_skip_mode_keeps_params_finite(tmp_path, monkeypatch):
  config = tiny_config(4)
  monkeypatch.setattr(train, "_validate_numbers", lambda config: None)  # let a NaN lr through
  config.optim.lr = float("nan")
  config.optim.warmup = 0
  config.training.nonfinite = "skip"
  state = train.train_and_evaluate(config, str(tmp_path))["state"]
  assert int(state.step) == 4 and int(state.bad_step) == 0
  assert all(np.all(np.isfinite(p)) for p in _params(state))


def test_deterministic_option_reaches_the_train_step(tmp_path):
  """``training.deterministic`` compiles the step with XLA's deterministic-kernels option (on the
  CPU every kernel already is, so the run equals the default one bit for bit)."""
  config = tiny_config(4)
  config.training.deterministic = True
  assert train.train_compiler_options(config) == {"xla_gpu_exclude_nondeterministic_ops": True}
  assert train.train_compiler_options(tiny_config(4)) is None
  det = train.train_and_evaluate(config, str(tmp_path / "det"))["state"]
  default = train.train_and_evaluate(tiny_config(4), str(tmp_path / "default"))["state"]
  for a, b in zip(_params(det), _params(default)):
    np.testing.assert_array_equal(a, b)


def test_autotune_results_reach_the_train_step_and_evaluation(monkeypatch):
  """``training.autotune_results`` ('shipped' in the base config) becomes the XLA load option of the
  train step and of the evaluation programs on a GPU (faked here: the CPU ignores the option)."""
  from jaxgen import evaluate, parallel  # pylint: disable=import-outside-toplevel
  config = base.get_base_config()
  assert config.training.autotune_results == "shipped"
  assert train.train_compiler_options(config) is None            # CPU: nothing to load
  h200 = parallel.autotune_results_path("NVIDIA H200", "0.11.2")
  monkeypatch.setattr(parallel, "shipped_autotune_results", lambda *a, **k: h200)
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  monkeypatch.setenv("XLA_FLAGS", "")
  load = {"xla_gpu_load_autotune_results_from": h200}
  assert train.train_compiler_options(config) == load
  assert evaluate.xla_options(config) == load
  config.training.deterministic = True
  assert train.train_compiler_options(config) == parallel.DETERMINISTIC_COMPILER_OPTIONS
  config.training.deterministic, config.training.autotune_results = False, ""
  assert train.train_compiler_options(config) is None and evaluate.xla_options(config) is None


@pytest.mark.parametrize("field,value,match", [
    ("data.dataset", "cifar11_not_a_set", "cifar11_not_a_set"),
    ("model.name", "transformer9000", "transformer9000"),
    ("process.name", "vpp", "vpp"),
    ("training.batch_size", 12, "12"),
    ("method", "gan", "gan"),
    ("training.autotune_results", "/no/such/autotune.pbtxt", "autotune.pbtxt"),
    ("training.autotune_results", "shiped", "shiped"),
])
def test_bad_config_rejected_before_anything_is_written(tmp_path, field, value, match):
  config = tiny_config(2)
  section, _, key = field.rpartition(".")
  (config[section] if section else config)[key] = value
  with pytest.raises(ValueError, match=match):
    train.train_and_evaluate(config, str(tmp_path / "run"))
  assert not (tmp_path / "run" / "checkpoints").exists() or not os.listdir(
      tmp_path / "run" / "checkpoints")


def test_image_size_the_network_cannot_take(tmp_path):
  from configs.digits import vp_unet
  config = vp_unet.get_config()
  config.data.image_size = 7
  with pytest.raises(ValueError, match="7"):
    train.train_and_evaluate(config, str(tmp_path / "run"))
  assert not (tmp_path / "run" / "checkpoints").exists()


def test_incompatible_and_corrupt_checkpoints_are_refused_and_kept(tmp_path):
  train.train_and_evaluate(tiny_config(3), str(tmp_path))
  other = tiny_config(6)
  other.model.hidden = (64, 64)
  with pytest.raises(train.CheckpointError, match="model"):
    train.train_and_evaluate(other, str(tmp_path))
  other_layout = tiny_config(6)  # optimizer state written flat, read per leaf: named
  other_layout.optim.flat_update = not tiny_config().optim.flat_update
  with pytest.raises(train.CheckpointError, match="config.optim.flat_update"):
    train.train_and_evaluate(other_layout, str(tmp_path))
  # corrupt the checkpoint's array data
  ckpt = tmp_path / "checkpoints" / "3"
  before = sorted(os.listdir(tmp_path / "checkpoints"))
  for root, _, files in os.walk(ckpt / "state"):
    for name in files:
      if "manifest" in name or name.endswith(".ocdbt") or "d" == os.path.basename(root):
        with open(os.path.join(root, name), "wb") as f:
          f.write(b"garbage")
  with pytest.raises(train.CheckpointError, match="corrupt or incompatible") as info:
    train.train_and_evaluate(tiny_config(6), str(tmp_path))
  assert sorted(os.listdir(tmp_path / "checkpoints")) == before
  older = sorted(int(s) for s in before if s.isdigit() and int(s) < 3)
  message = str(info.value)
  assert "\n" not in message and len(message) < 900  # one readable line, not orbax's dump
  if older:  # the message points at the newest older checkpoint
    assert f"resumes from step {older[-1]}" in message


def test_corrupt_newest_checkpoint_names_the_older_one_to_resume_from(tmp_path):
  """A corrupt newest checkpoint is refused in one line that names the older checkpoints; moving
  it away (as the message says) resumes from the next one."""
  import shutil  # pylint: disable=import-outside-toplevel
  train.train_and_evaluate(tiny_config(6), str(tmp_path))      # checkpoints 3 and 6
  for root, _, files in os.walk(tmp_path / "checkpoints" / "6" / "state"):
    for name in files:
      if "manifest" in name or name.endswith(".ocdbt") or "d" == os.path.basename(root):
        with open(os.path.join(root, name), "wb") as f:
          f.write(b"garbage")
  with pytest.raises(train.CheckpointError, match=r"steps \[3\]; moving step 6 away resumes "
                                                  r"from step 3"):
    train.train_and_evaluate(tiny_config(9), str(tmp_path))
  shutil.move(str(tmp_path / "checkpoints" / "6"), str(tmp_path / "step6_corrupt"))
  assert train.train_and_evaluate(tiny_config(9), str(tmp_path))["start_step"] == 3


def _cli(args, **kwargs):
  env = dict(os.environ, PYTHONUNBUFFERED="1", XLA_FLAGS="--xla_force_host_platform_device_count=1")
  return subprocess.Popen([sys.executable, "-m", "jaxgen.main"] + args, cwd=REPO, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)


def test_unknown_override_key_is_rejected(tmp_path):
  proc = _cli(["--config=configs/toy/vp_mlp.py", f"--workdir={tmp_path}",
               "--config.training.batch_sise=8"])
  out, _ = proc.communicate(timeout=900)
  assert proc.returncode != 0
  assert "batch_sise" in out
  assert not (tmp_path / "checkpoints").exists()


def test_sigterm_saves_a_checkpoint_and_restart_resumes(tmp_path):
  args = ["--config=configs/toy/vp_mlp.py", f"--workdir={tmp_path}",
          "--config.training.n_iters=100000", "--config.training.batch_size=16",
          "--config.training.log_every=10", "--config.training.preemption_every=100000",
          "--config.training.eval_every=0", "--config.model.hidden=(16,16)"]
  proc = _cli(args)
  lines = []
  deadline = time.time() + 900
  while time.time() < deadline:
    line = proc.stdout.readline()
    lines.append(line)
    if line.startswith("step") and int(line.split()[1].split("/")[0]) >= 20:
      break
  proc.send_signal(signal.SIGTERM)
  out, _ = proc.communicate(timeout=600)
  log = "".join(lines) + out
  assert proc.returncode == 0, log
  assert "preemption" in log
  steps = [int(s) for s in os.listdir(tmp_path / "checkpoints") if s.isdigit()]
  assert steps and max(steps) >= 20, log
  proc = _cli(args[:2] + [f"--config.training.n_iters={max(steps) + 5}"] + args[3:])
  out, _ = proc.communicate(timeout=900)
  assert proc.returncode == 0, out
  assert "resumed from" in out and f"at step {max(steps)}" in out


def test_flat_update_matches_per_leaf_update():
  """`optim.flat_update` (Adam, clipping, EMA and the non-finite guard on one flat vector) gives
  the per-leaf step's parameters, EMA and metrics to float32 rounding, and drops a non-finite step
  just the same."""
  config = tiny_config()
  config.optim.flat_update = False
  config.optim.grad_clip = 0.05  # make the clipping bite
  flat_config = tiny_config()
  flat_config.optim.grad_clip = 0.05
  flat_config.optim.flat_update = True
  ref, flat = train.Setup(config), train.Setup(flat_config)
  key = jax.random.PRNGKey(0)
  s_ref, s_flat = ref.init_state(key), flat.init_state(key)
  assert jax.tree_util.tree_leaves(s_flat.opt_state)[1].ndim == 1  # flat Adam moments
  step_flat = jax.jit(flat.make_train_step())
  s_ref, s_flat = _lockstep(jax.jit(ref.make_train_step()), s_ref, step_flat, s_flat, steps=4,
                            seed=0, grad_norm_rtol=1e-5)
  for a, b in zip(jax.tree_util.tree_leaves((s_ref.params, s_ref.ema_params)),
                  jax.tree_util.tree_leaves((s_flat.params, s_flat.ema_params))):
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-7)
  bad = {"image": np.full((16, 2), np.nan, np.float32)}
  s_bad, m_bad = step_flat(s_flat, bad)
  assert not bool(m_bad["finite"]) and int(s_bad.bad_step) == 4
  for a, b in zip(jax.tree_util.tree_leaves(s_flat.params), jax.tree_util.tree_leaves(s_bad.params)):
    np.testing.assert_array_equal(a, b)


def test_materialized_gradient_is_the_same_update():
  """``optim.materialize_grads`` (the raveled gradient written once before the norm and Adam read
  it; a speed option) makes the same steps as without it."""
  setups = []
  for materialize in (False, True):
    config = tiny_config()
    config.optim.grad_clip = 0.05
    config.optim.materialize_grads = materialize
    setups.append(train.Setup(config))
  state = setups[0].to_flat_state(setups[0].init_state(jax.random.PRNGKey(2)))
  plain, mat = (jax.jit(s.make_flat_train_step()) for s in setups)
  a, b = _lockstep(plain, state, mat, state, steps=3, seed=2, grad_norm_rtol=1e-6)
  np.testing.assert_allclose(b.params, a.params, rtol=1e-6, atol=1e-8)
  np.testing.assert_allclose(b.ema_params, a.ema_params, rtol=1e-6, atol=1e-8)
  assert int(a.step) == int(b.step) == 3


def _lockstep(step_a, state_a, step_b, state_b, steps, seed, grad_norm_rtol):
  """Runs two train steps on the same random batches; their losses and gradient norms agree."""
  rng = np.random.default_rng(seed)
  for _ in range(steps):
    batch = {"image": rng.normal(size=(16, 2)).astype(np.float32)}
    state_a, m_a = step_a(state_a, batch)
    state_b, m_b = step_b(state_b, batch)
    np.testing.assert_allclose(m_b["loss"], m_a["loss"], rtol=1e-6)
    np.testing.assert_allclose(m_b["grad_norm"], m_a["grad_norm"], rtol=grad_norm_rtol)
  return state_a, state_b


def test_flat_carry_step_equals_tree_step():
  """The training loop's step (parameters and EMA carried as flat vectors between steps) equals
  `make_train_step` with `flat_update`, and the flat <-> tree conversion round-trips exactly."""
  config = tiny_config()
  config.optim.flat_update = True
  config.optim.grad_clip = 0.05
  setup = train.Setup(config)
  state = setup.init_state(jax.random.PRNGKey(1))
  flat = setup.to_flat_state(state)
  n = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(state.params))
  assert flat.params.shape == (n,) and flat.ema_params.shape == (n,)
  back = setup.from_flat_state(flat)
  for a, b in zip(jax.tree_util.tree_leaves(state), jax.tree_util.tree_leaves(back)):
    np.testing.assert_array_equal(a, b)
  flat_step = jax.jit(setup.make_flat_train_step())
  state, flat = _lockstep(jax.jit(setup.make_train_step()), state, flat_step, flat, steps=3,
                          seed=1, grad_norm_rtol=1e-6)
  back = setup.from_flat_state(flat)
  for a, b in zip(jax.tree_util.tree_leaves(state), jax.tree_util.tree_leaves(back)):
    np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-8)
  bad = {"image": np.full((16, 2), np.nan, np.float32)}
  flat_bad, m_bad = flat_step(flat, bad)
  assert not bool(m_bad["finite"]) and int(flat_bad.bad_step) == 3
  np.testing.assert_array_equal(flat_bad.params, flat.params)
  np.testing.assert_array_equal(flat_bad.ema_params, flat.ema_params)
  config.optim.flat_update = False
  with pytest.raises(ValueError, match="flat_update"):
    train.Setup(config).make_flat_train_step()


def test_sharded_train_step_on_eight_devices_equals_one_device_tree_step():
  """`make_sharded_train_step` (the step the training loop, bench.py and scaling.py run): the flat
  carry on an 8-device mesh gives the update of the tree step on one device, donates its carry,
  and `as_tree(to_carry(state))` round-trips exactly."""
  from jaxgen import parallel  # pylint: disable=import-outside-toplevel
  config = tiny_config()
  config.optim.flat_update = True
  setup = train.Setup(config)
  state = setup.init_state(jax.random.PRNGKey(2))
  mesh8, mesh1 = parallel.make_mesh(), parallel.make_mesh(jax.devices()[:1])
  assert mesh8.devices.size == 8
  step8, to_carry, as_tree = train.make_sharded_train_step(setup, mesh8)
  step1, to_tree, same = train.make_sharded_train_step(setup, mesh1, flat_carry=False)
  assert to_tree(state) is state and same(state) is state
  carry = to_carry(state)
  assert carry.params.ndim == 1
  for a, b in zip(jax.tree_util.tree_leaves(state), jax.tree_util.tree_leaves(as_tree(carry))):
    np.testing.assert_array_equal(a, b)
  tree = jax.device_put(state, parallel.replicated(mesh1))
  rng = np.random.default_rng(0)
  for _ in range(3):
    batch = {"image": rng.normal(size=(16, 2)).astype(np.float32)}
    old = carry
    carry, m8 = step8(carry, parallel.host_local_to_global(batch, mesh8))
    tree, m1 = step1(tree, parallel.host_local_to_global(batch, mesh1))
    assert old.params.is_deleted()  # donated
    np.testing.assert_allclose(m8["loss"], m1["loss"], rtol=1e-5)
  for a, b in zip(jax.tree_util.tree_leaves(tree), jax.tree_util.tree_leaves(as_tree(carry))):
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-7)


def test_scaling_benchmark_runs_the_training_step(tmp_path, monkeypatch):
  """experiments/bench/scaling.py on the CPU's 8 fake devices: one row per device count, finite
  losses, the flat carry of the training loop, and a JSON report."""
  monkeypatch.setenv("XLA_FLAGS", os.environ.get("XLA_FLAGS", ""))  # restored after the test
  monkeypatch.syspath_prepend(os.path.join(REPO, "experiments", "bench"))
  import scaling  # pylint: disable=import-outside-toplevel
  out = tmp_path / "scaling.json"
  report = scaling.main(["--config", "configs/toy/vp_mlp.py", "--devices", "1,all",
                         "--per_device_batch", "4", "--steps", "2", "--warmup", "0",
                         "--repeats", "1", "--set", "model.hidden=(16, 16)", "--out", str(out)])
  assert [r["devices"] for r in report["results"]] == [1, 8]
  assert [r["global_batch"] for r in report["results"]] == [4, 32]
  assert all(r["loss_finite"] and r["flat_carry"] and r["images_per_s"] > 0
             for r in report["results"])
  assert json.loads(out.read_text())["results"][1]["scaling_efficiency"] > 0
  assert report["data_parallel"] == "auto" and report["allreduce_buckets"] == 8
  # 'auto' on CPUs: XLA partitions the global-batch step
  assert [r["data_parallel_mode"] for r in report["results"]] == ["gspmd", "gspmd"]
  with pytest.raises(ValueError, match="--devices entry '9'"):
    scaling.main(["--config", "configs/toy/vp_mlp.py", "--devices", "9", "--out", str(out)])


def test_workdir_of_an_older_layout_is_named_and_loads_with_hwio(tmp_path):
  """A workdir written before `kernel_layout` existed holds HWIO kernels: with the OHWI default
  it is refused naming `model.kernel_layout`; with `kernel_layout=HWIO` it is compatible.
  Speed-only fields (fast_dropout, fused_norm, temb_barrier, two_stage_grads, remat_policy; the
  last three absent from older workdirs) never make a workdir incompatible, nor does remat (its
  renamed blocks are converted on restore: test_resume_turns_remat_on_and_off)."""
  config = base.get_base_config()
  config.model.name = "ncsnpp"
  old = train._jsonable(train._config_fingerprint(config))  # pylint: disable=protected-access
  del old["model"]["kernel_layout"]
  del old["model"]["temb_barrier"], old["model"]["two_stage_grads"]
  old["model"]["fast_dropout"] = not config.model.fast_dropout
  (tmp_path / "config.json").write_text(json.dumps({"fingerprint": old}))
  config.model.kernel_layout = "OHWI"
  with pytest.raises(train.CheckpointError, match="model.kernel_layout"):
    train.check_workdir_compatible(str(tmp_path), config)
  config.model.kernel_layout = "HWIO"
  train.check_workdir_compatible(str(tmp_path), config)
  config.model.fused_norm = not config.model.fused_norm
  train.check_workdir_compatible(str(tmp_path), config)
  config.model.temb_barrier = not config.model.temb_barrier
  config.model.two_stage_grads = not config.model.two_stage_grads
  config.model.remat_policy = "save_convs"
  train.check_workdir_compatible(str(tmp_path), config)
  config.model.remat = not config.model.remat  # renamed blocks, converted on restore
  train.check_workdir_compatible(str(tmp_path), config)
  config.model.nf = 64
  with pytest.raises(train.CheckpointError, match="model.nf"):
    train.check_workdir_compatible(str(tmp_path), config)


def test_scaling_communication_profile_counts_overlap(tmp_path, monkeypatch):
  """scaling.py's trace summary: per GPU, NCCL time overlapping compute kernels (on any stream)
  and the exposed rest, per step; host events are ignored."""
  import gzip  # pylint: disable=import-outside-toplevel
  monkeypatch.syspath_prepend(os.path.join(REPO, "experiments", "bench"))
  import scaling  # pylint: disable=import-outside-toplevel
  meta = [{"ph": "M", "name": "process_name", "pid": 1, "args": {"name": "/device:GPU:0"}},
          {"ph": "M", "name": "process_name", "pid": 2, "args": {"name": "/host:CPU"}}]
  x = lambda pid, ts, dur, name: {"ph": "X", "pid": pid, "tid": 1, "ts": ts, "dur": dur,
                                  "name": name}
  events = meta + [x(1, 0, 10_000, "conv"), x(1, 12_000, 8_000, "fusion"),
                   x(1, 8_000, 7_000, "ncclDevKernel_AllReduce_Sum_f32"),
                   x(1, 30_000, 2_000, "ncclDevKernel_AllReduce_Sum_f32"),
                   x(2, 0, 50_000, "host work")]
  path = tmp_path / "t.trace.json.gz"
  with gzip.open(path, "wt") as f:
    json.dump({"traceEvents": events}, f)
  gpu = scaling.communication_profile(str(path), steps=2)["/device:GPU:0"]
  # compute: [0,10] + [12,20] ms; NCCL: [8,15] + [30,32]: 9 ms, of which [8,10] + [12,15] overlap.
  assert gpu["compute_busy_ms"] == 9.0 and gpu["nccl_ms"] == 4.5
  assert gpu["nccl_overlapped_ms"] == 2.5 and gpu["nccl_exposed_ms"] == 2.0
  assert gpu["kernel_span_ms"] == 16.0
  assert gpu["nccl_kernels"] == {"ncclDevKernel_AllReduce_Sum_f32": [4.5, 1]}
  assert gpu["categories"] == {"loop_fusion": [4.0, 0], "other": [5.0, 0]}


def _compare_modes(config, steps, rows, rtol):
  """Runs `steps` steps of the 'gspmd' and the 'shard_map' train step (8 devices) from one state
  on the same batches (`rows()` draws one) and checks that loss, gradient norm and the state
  agree to `rtol`."""
  from jaxgen import parallel  # pylint: disable=import-outside-toplevel
  mesh = parallel.make_mesh()
  results = {}
  for mode in ("gspmd", "shard_map"):
    c = config.copy_and_resolve_references()
    c.training.data_parallel = mode
    setup = train.Setup(c)
    step, to_carry, as_tree = train.make_sharded_train_step(setup, mesh)
    carry = to_carry(setup.init_state(jax.random.PRNGKey(3)))
    rng = np.random.default_rng(4)
    metrics = []
    for _ in range(steps):
      carry, m = step(carry, parallel.host_local_to_global(rows(rng), mesh))
      metrics.append((float(m["loss"]), float(m["grad_norm"])))
    results[mode] = metrics, jax.device_get(as_tree(carry))
  (m_auto, s_auto), (m_shard, s_shard) = results["gspmd"], results["shard_map"]
  np.testing.assert_allclose(m_shard, m_auto, rtol=rtol)
  for a, b in zip(jax.tree_util.tree_leaves(s_auto), jax.tree_util.tree_leaves(s_shard)):
    np.testing.assert_allclose(b, a, rtol=rtol, atol=rtol * 1e-2)
  return m_auto


@pytest.mark.parametrize("flat_update,flat_carry,buckets",
                         [(True, True, 1), (True, False, 1), (False, False, 1), (True, True, 3)])
def test_shard_map_step_equals_the_gspmd_step(flat_update, flat_carry, buckets):
  """`training.data_parallel='shard_map'` on 8 devices (2 rows each) takes the same steps as
  the 'gspmd' step of the global batch: each device draws its rows of the global batch's time
  and noise, and the update is that of the mean of the devices' gradients (also with the
  gradient all-reduced in 3 buckets, and for each kind of carry)."""
  from jaxgen import parallel  # pylint: disable=import-outside-toplevel
  config = tiny_config()
  config.optim.flat_update = flat_update
  config.training.allreduce_buckets = buckets
  mesh = parallel.make_mesh()
  shard = config.copy_and_resolve_references()
  shard.training.data_parallel = "shard_map"
  setup = train.Setup(shard)
  step, to_carry, as_tree = train.make_sharded_train_step(setup, mesh, flat_carry=flat_carry)
  gspmd = config.copy_and_resolve_references()
  gspmd.training.data_parallel = "gspmd"
  ref_step, ref_carry, ref_tree = train.make_sharded_train_step(train.Setup(gspmd), mesh,
                                                                flat_carry=flat_carry)
  state = setup.init_state(jax.random.PRNGKey(3))
  carry = to_carry(jax.tree_util.tree_map(jnp.copy, state))  # the step donates its carry
  ref = ref_carry(jax.tree_util.tree_map(jnp.copy, state))
  assert isinstance(carry.params, jax.Array) == flat_carry
  rng = np.random.default_rng(4)
  for _ in range(3):
    batch = parallel.host_local_to_global(
        {"image": rng.normal(size=(16, 2)).astype(np.float32)}, mesh)
    carry, m = step(carry, batch)
    ref, m_ref = ref_step(ref, batch)
    np.testing.assert_allclose(m["loss"], m_ref["loss"], rtol=1e-5)
    np.testing.assert_allclose(m["grad_norm"], m_ref["grad_norm"], rtol=1e-5)
  for a, b in zip(jax.tree_util.tree_leaves(ref_tree(ref)),
                  jax.tree_util.tree_leaves(as_tree(carry))):
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-7)


def test_shard_map_draws_the_global_batch_noise_for_images():
  """A digits NCSN++ with dropout, random flips, dequantization and importance-sampled
  likelihood weighting: the 'shard_map' step equals the 'gspmd' step, so every draw (flips,
  dequantization noise, time, noise, dropout masks) is the global batch's; a per-device draw
  would give each device's two rows other noise and another loss. (`nn.Dropout`'s mask:
  tests/test_parallel.py.)"""
  fast_dropout = weighting = True
  from configs.digits import vp_unet  # pylint: disable=import-outside-toplevel
  config = vp_unet.get_config()
  config.model.name = "ncsnpp"
  m = config.model
  m.nf, m.ch_mult, m.num_res_blocks, m.attn_resolutions = 8, (1, 2), 1, (4,)
  m.dropout, m.fast_dropout = 0.3, fast_dropout
  config.data.random_flip = True
  config.training.batch_size = 16
  config.training.likelihood_weighting = config.training.importance_sampling = weighting
  config.optim.flat_update = True
  images = lambda rng: {"image": rng.integers(0, 256, (16, 8, 8, 1)).astype(np.uint8)}
  losses = _compare_modes(config, 2, images, rtol=2e-5)
  assert losses[0][0] != losses[1][0]


def _all_reduce_sizes(hlo):
  """(dtype, number of elements) of every operand of every all-reduce in compiled HLO text."""
  sizes = []
  for line in hlo.splitlines():
    if re.search(r"= .*\ball-reduce(-start)?\(", line):
      result = line.split("=", 1)[1].split("all-reduce")[0]
      for dtype, dims in re.findall(r"(\w+)\[([0-9,]*)\]", result):
        sizes.append((dtype, int(np.prod([int(v) for v in dims.split(",") if v]))))
  return sizes


@pytest.mark.parametrize("buckets", [1, 3])
def test_shard_map_step_all_reduces_float32_gradient_vectors(buckets):
  """The per-device step's gradient collectives are (at most) `allreduce_buckets` all-reduces of
  float32 vectors that together hold every parameter once, also when the network computes in
  bfloat16; the only other one is the loss (a scalar). The buckets follow the backward pass:
  the output layer's gradients in the first, the input layer's in the last."""
  from jaxgen import parallel  # pylint: disable=import-outside-toplevel
  config = tiny_config()
  config.optim.flat_update = True
  config.model.dtype = "bfloat16"
  config.training.data_parallel = "shard_map"
  config.training.allreduce_buckets = buckets
  setup = train.Setup(config)
  mesh = parallel.make_mesh()
  step, to_carry, _ = train.make_sharded_train_step(setup, mesh)
  carry = to_carry(setup.init_state(jax.random.PRNGKey(0)))
  batch = parallel.host_local_to_global({"image": np.zeros((16, 2), np.float32)}, mesh)
  lowered = step.lower(carry, batch)
  # The program asks for one all-reduce per bucket and one for the loss (XLA may then combine
  # small ones, as the CPU does).
  groups = setup.allreduce_buckets()
  assert (len(groups) == 1) == (buckets == 1) and len(groups) <= buckets
  assert lowered.as_text().count("all_reduce") == len(groups) + 1
  sizes = _all_reduce_sizes(lowered.compile().as_text())
  n_params = int(carry.params.shape[0])
  assert all(dtype == "f32" for dtype, _ in sizes), sizes
  assert sum(n for _, n in sizes) == n_params + 1, sizes
  names = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(
      setup.from_flat_state(carry).params)]
  assert sorted(sum(groups, [])) == list(range(len(names)))
  order = [names[i] for i in setup.backward_order()]
  assert order[0].startswith("['Dense_5']") and order[-1].startswith("['Dense_0']"), order


@pytest.mark.parametrize("field,value,match", [
    ("method", "pcx", r"config.sampling.method 'pcx'"),
    ("predictor", "reverse_diffusin", r"config.sampling \(method 'pc'\): unknown `predictor`"),
    ("corrector", "ald", r"unknown `corrector` 'ald'"),
    ("snr", 0.0, r"`snr`"),
    ("num_steps", 10, r"`num_steps` = 10 too small"),
])
def test_bad_sampling_options_are_refused_before_training(tmp_path, field, value, match):
  """A typo in config.sampling stops the run before the first step (not at the first
  evaluation, thousands of steps later), naming the field; nothing is written."""
  config = tiny_config()
  config.sampling.method = "pc"
  setattr(config.sampling, field, value)
  with pytest.raises(ValueError, match=match):
    train.train_and_evaluate(config, str(tmp_path / "run"))
  assert not (tmp_path / "run").exists()
  config = tiny_config()
  config.eval.divergence = "hutchinson"
  with pytest.raises(ValueError, match=r"config.eval.divergence 'hutchinson'"):
    train.validate_config(config)
  config = tiny_config()
  config.process.name = "subvp"
  config.sampling.method = "ancestral"
  with pytest.raises(ValueError, match=r"'ancestral' supports VPSDE and VESDE only"):
    train.validate_config(config)


def test_data_parallel_option_is_checked():
  config = tiny_config()
  config.training.data_parallel = "pmap"
  with pytest.raises(ValueError, match=r"config.training.data_parallel must be one of"):
    train.validate_config(config)
  with pytest.raises(ValueError, match="'pmap'"):
    train.make_sharded_train_step(train.Setup(config), None)
  from configs.rectified_flow import toy_checkerboard_1rf  # pylint: disable=import-outside-toplevel
  config = toy_checkerboard_1rf.get_config()
  config.training.coupling = "minibatch_ot"
  config.training.data_parallel = "shard_map"
  with pytest.raises(ValueError, match="training.coupling"):
    train.validate_config(config)
  from configs.cnf import toy  # pylint: disable=import-outside-toplevel
  config = toy.get_config()
  config.training.data_parallel = "shard_map"
  with pytest.raises(ValueError, match="config.method='cnf'"):
    train.validate_config(config)


def test_auto_data_parallel_picks_shard_map_on_several_gpus():
  """'auto' is shard_map on 2+ GPUs for a per-example loss, gspmd on one device, on CPUs and TPUs,
  for minibatch coupling and for CNFs; explicit modes are kept."""
  from configs.cnf import toy  # pylint: disable=import-outside-toplevel
  from configs.rectified_flow import toy_checkerboard_1rf  # pylint: disable=import-outside-toplevel
  from jaxgen import parallel  # pylint: disable=import-outside-toplevel
  config = tiny_config()
  assert config.training.data_parallel == "auto"
  mesh8, mesh1 = parallel.make_mesh(), parallel.make_mesh(jax.devices()[:1])
  mode = train.data_parallel_mode
  assert mode(config, mesh8, backend="gpu") == "shard_map"
  assert mode(config, mesh1, backend="gpu") == "gspmd"
  assert mode(config, mesh8, backend="tpu") == "gspmd" and mode(config, mesh8) == "gspmd"
  ot = toy_checkerboard_1rf.get_config()
  ot.training.coupling = "minibatch_ot"
  assert mode(ot, mesh8, backend="gpu") == "gspmd"
  assert mode(toy.get_config(), mesh8, backend="gpu") == "gspmd"
  for explicit in ("gspmd", "shard_map"):
    config.training.data_parallel = explicit
    assert mode(config, mesh1, backend="cpu") == explicit


def test_shard_map_training_resumes_bit_identically(tmp_path):
  """The training loop with `data_parallel='shard_map'` (8 devices, 4 gradient buckets) resumes
  from its checkpoint to bitwise the same state as an uninterrupted run; 'gspmd' resumes it too."""
  def config(n_iters):
    c = tiny_config(n_iters)
    c.training.data_parallel = "shard_map"
    c.training.allreduce_buckets = 4
    return c
  full = train.train_and_evaluate(config(6), str(tmp_path / "full"))["state"]
  train.train_and_evaluate(config(3), str(tmp_path / "split"))
  second = train.train_and_evaluate(config(6), str(tmp_path / "split"))
  assert second["start_step"] == 3 and second["final_step"] == 6
  for a, b in zip(_params(full), _params(second["state"])):
    np.testing.assert_array_equal(a, b)
  auto = config(8)  # the other mode resumes the same checkpoint
  auto.training.data_parallel = "gspmd"
  third = train.train_and_evaluate(auto, str(tmp_path / "split"))
  assert third["start_step"] == 6 and third["final_step"] == 8


def _remat_digits_config(n_iters, remat, flat_update=True):
  from configs.digits import vp_unet  # pylint: disable=import-outside-toplevel
  c = vp_unet.get_config()
  c.model.nf = 8
  c.model.remat = remat
  c.optim.flat_update = flat_update
  c.training.batch_size = c.eval.batch_size = 16
  c.training.n_iters = n_iters
  # Checkpoints only where each run ends (the split runs' resume points).
  c.training.log_every, c.training.eval_every, c.training.preemption_every = 2, 0, 1000
  return c


def test_resume_turns_remat_on_and_off(tmp_path, capsys):
  """`model.remat` renames the residual blocks (`CheckpointResnetBlock...`); a run resumes with
  it turned on, then off again, and continues the uninterrupted run's trajectory (parameters,
  EMA and the flat optimizer state, whose order the names decide)."""
  config = _remat_digits_config
  full = train.train_and_evaluate(config(6, False), str(tmp_path / "full"))["state"]
  train.train_and_evaluate(config(2, False), str(tmp_path / "split"))
  capsys.readouterr()
  on = train.train_and_evaluate(config(4, True), str(tmp_path / "split"))
  assert "checkpoint 2 was written with model.remat=False" in capsys.readouterr().out
  assert on["start_step"] == 2 and any(k.startswith("CheckpointResnetBlock")
                                       for k in on["state"].params)
  off = train.train_and_evaluate(config(6, False), str(tmp_path / "split"))
  assert "checkpoint 4 was written with model.remat=True" in capsys.readouterr().out
  assert off["start_step"] == 4 and not any(k.startswith("Checkpoint") for k in off["state"].params)
  for a, b in zip(_params(full), _params(off["state"])):
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("flat_update", [True, False])
def test_convert_remat_names_round_trips(flat_update):
  """`convert_remat_names` between the remat and plain networks gives the target's tree
  structure (per-leaf or flat optimizer state) and converts back to the same values."""
  plain = train.Setup(_remat_digits_config(2, False, flat_update))
  remat = train.Setup(_remat_digits_config(2, True, flat_update))
  state = jax.jit(plain.init_state)(jax.random.PRNGKey(0))
  rng = np.random.default_rng(0)
  state = jax.tree_util.tree_map(  # distinct values everywhere, the optimizer moments included
      lambda x: jnp.asarray(rng.normal(size=x.shape), x.dtype)
      if jnp.issubdtype(x.dtype, jnp.floating) else x, state)
  there = jax.jit(lambda s: train.convert_remat_names(plain, remat, s))(state)
  assert (jax.tree_util.tree_structure(there)
          == jax.tree_util.tree_structure(jax.eval_shape(remat.init_state, jax.random.PRNGKey(0))))
  back = jax.jit(lambda s: train.convert_remat_names(remat, plain, s))(there)
  for a, b in zip(jax.tree_util.tree_leaves(state), jax.tree_util.tree_leaves(back)):
    np.testing.assert_array_equal(a, b)
  # The remat network computes the plain one's function from the converted parameters.
  x = jnp.asarray(rng.normal(size=(2, 8, 8, 1)), jnp.float32)
  t = jnp.array([0.2, 0.7])
  apply = lambda setup, params: jax.jit(functools.partial(setup.model.apply, train=False))(
      {"params": params}, x, t)
  np.testing.assert_allclose(apply(remat, there.params), apply(plain, state.params),
                             rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("n_iters,preemption_every", [(1, 1000), (3, 1)])
def test_time_limit_at_a_saved_step_does_not_save_it_again(tmp_path, n_iters, preemption_every):
  """The time limit (or SIGTERM) handled at a step the loop has just checkpointed (``n_iters``,
  or a ``preemption_every`` multiple) stops cleanly with that checkpoint, instead of saving the
  step a second time (orbax's StepAlreadyExistsError). At ``n_iters`` the run has finished: it is
  not reported as stopped early (a requeued job would have evaluated it again)."""
  config = tiny_config(n_iters)
  config.training.preemption_every = preemption_every
  config.training.max_wall_seconds = 1e-9       # over at the first check, step 1
  summary = train.train_and_evaluate(config, str(tmp_path))
  assert summary["stopped_early"] == (n_iters > 1) and summary["final_step"] == 1
  assert sorted(int(s) for s in os.listdir(tmp_path / "checkpoints") if s.isdigit()) == [1]
  config.training.preemption_every = 1000      # a step that was not saved is saved on stopping
  config.training.n_iters = 5
  summary = train.train_and_evaluate(config, str(tmp_path))
  assert summary["start_step"] == 1 and summary["final_step"] == 2 and summary["stopped_early"]
  assert max(int(s) for s in os.listdir(tmp_path / "checkpoints") if s.isdigit()) == 2


def test_periodic_held_out_loss_averages_real_rows_only():
  """The held-out loss of the periodic evaluation is the mean per-example loss over the real
  rows of its two batches: the zero rows that pad the toy test split's second batch (10,000
  points in global batches of 8,000) do not count. On the 8-device mesh."""
  from jaxgen import data as data_lib  # pylint: disable=import-outside-toplevel
  from jaxgen import evaluate, parallel  # pylint: disable=import-outside-toplevel
  config = tiny_config()
  config.eval.batch_size = 8000
  config.eval.num_bpd_batches = 0
  config.sampling.num_samples = 0
  setup = train.Setup(config)
  state = setup.init_state(jax.random.PRNGKey(0))
  results = evaluate.make_periodic_evaluation(config)(setup, state, 1, None, parallel.make_mesh())
  ds = data_lib.get_dataset(config.data, config.data.eval_split, seed=config.seed)
  real, means = [], []
  for i, batch in enumerate(ds.iterate(8000)):  # the per-example losses, as the loss defines them
    k_data, k_loss = jax.random.split(jax.random.PRNGKey(i))
    rows = setup.preprocess(k_data, {"image": batch["image"], "label": batch["label"]}, False)
    per_example = np.asarray(setup.loss_fn(state.ema_params, k_loss, rows, train=False)[1][
        "loss_per_example"])
    real.append(per_example[batch["mask"]])
    means.append(per_example.mean())
  assert [len(r) for r in real] == [8000, 2000]
  expected = float(np.mean(np.concatenate(real)))
  np.testing.assert_allclose(results["held_out_loss"], expected, rtol=1e-4)
  assert abs(float(np.mean(means)) - expected) > 1e-2 * abs(expected)  # padding would show


def _tiny_cnf_config():
  from configs.cnf import toy  # pylint: disable=import-outside-toplevel
  config = toy.get_config("8gaussians")
  config.model.hidden_dims = (8,)
  config.training.batch_size = config.eval.batch_size = 16
  config.training.n_iters, config.training.log_every, config.training.eval_every = 2, 1, 0
  return config


def _tiny_flow_config():
  from configs.rectified_flow import toy_checkerboard_1rf  # pylint: disable=import-outside-toplevel
  config = toy_checkerboard_1rf.get_config()
  config.model.hidden = (16,)
  config.training.batch_size = config.eval.batch_size = 16
  config.training.n_iters, config.training.log_every, config.training.eval_every = 2, 1, 0
  config.training.preemption_every = 2
  return config


@pytest.mark.parametrize("kind,field,value,match", [
    ("cnf", "cnf.solver", "rk9", r"config.cnf: unknown cnf solver 'rk9'"),
    ("cnf", "cnf.solver", "euler", r"config.cnf: .*'euler' is fixed-step: it needs num_steps"),
    ("cnf", "cnf.rtol", 0.0, r"config.cnf: cnf rtol must be > 0"),
    ("cnf", "cnf.kinetic_energy", -1.0, r"config.cnf.kinetic_energy must be .* >= 0"),
    ("cnf", "cnf.jacobian_norm2", -0.5, r"config.cnf.jacobian_norm2 must be .* >= 0"),
    ("cnf", "eval.solver", "heun", r"config.eval .*'heun' is fixed-step"),
    ("flow", "training.time_sampling", "foo", r"config.training.time_sampling: .*'foo'"),
    ("flow", "eval.solver", "foo", r"unknown config.eval.solver 'foo'"),
    ("flow", "eval.solver", "euler", r"config.eval.solver 'euler' is a fixed-step"),
    ("flow", "eval.rtol", -1.0, r"config.eval.rtol must be a number > 0"),
    ("flow", "eval.atol", 0.0, r"config.eval.atol must be a number > 0"),
    ("flow", "training.log_every", 0, r"config.training.log_every must be >= 1, got 0"),
    ("flow", "training.preemption_every", 0, r"config.training.preemption_every must be >= 1"),
    ("flow", "training.n_iters", -1, r"config.training.n_iters must be >= 0"),
    ("flow", "training.eval_every", -1, r"config.training.eval_every must be >= 0"),
    ("flow", "training.keep_checkpoints", 0, r"config.training.keep_checkpoints must be >= 1"),
    ("flow", "training.max_wall_seconds", -1.0, r"config.training.max_wall_seconds must be >= 0"),
    ("flow", "optim.lr", -1.0, r"config.optim.lr must be > 0.0, got -1.0"),
    ("flow", "optim.beta1", 1.5, r"config.optim.beta1 must be >= 0.0 and < 1.0"),
    ("flow", "optim.warmup", -5, r"config.optim.warmup must be >= 0"),
    ("flow", "optim.grad_clip", float("nan"), r"config.optim.grad_clip must be a number"),
    ("flow", "model.ema_rate", 1.5, r"config.model.ema_rate must be >= 0.0 and < 1.0"),
    ("flow", "sampling.batch_size", 0, r"config.sampling.batch_size must be >= 1"),
    ("flow", "sampling.num_samples", -3, r"config.sampling.num_samples must be >= 0"),
    ("flow", "eval.num_probes", 0, r"config.eval.num_probes must be >= 1"),
    ("flow", "eval.num_bpd_batches", -1, r"config.eval.num_bpd_batches must be >= 0"),
    ("flow", "eval.t0", 2.0, r"config.eval.t0 must be in \[0, T = 1.0\)"),
])
def test_bad_solver_and_loss_options_are_rejected_before_anything_is_written(
    tmp_path, kind, field, value, match):
  """Solver, RNODE and time-sampling options that used to fail at the first step's trace, at
  the first evaluation, or never (a negative RNODE weight rewards kinetic energy) are refused
  by validate_config, naming the field; the workdir is not created."""
  config = _tiny_cnf_config() if kind == "cnf" else _tiny_flow_config()
  section, _, key = field.rpartition(".")
  config[section][key] = value
  with pytest.raises(ValueError, match=match):
    train.validate_config(config)
  with pytest.raises(ValueError, match=match):
    train.train_and_evaluate(config, str(tmp_path / "run"))
  assert not (tmp_path / "run").exists()


def test_resume_refuses_another_dataset_source_or_batch_size(tmp_path):
  """A workdir is resumed only with its data set, its data.source (the noise end of the path)
  and, for training, its batch size (the data order depends on it); each is named with both
  values. Evaluation may use another batch size. An older config.json without these fields is
  completed from its saved config."""
  workdir = str(tmp_path / "run")
  train.train_and_evaluate(_tiny_flow_config(), workdir)
  for field, value, match in [
      ("data.dataset", "toy_moons", r"data.dataset \('toy_checkerboard' there, 'toy_moons' now\)"),
      ("data.source", "toy_8gaussians", r"data.source \('' there, 'toy_8gaussians' now\)"),
      ("training.batch_size", 32, r"training.batch_size \(16 there, 32 now\).*batch size")]:
    config = _tiny_flow_config()
    config.training.n_iters = 4
    section, _, key = field.rpartition(".")
    config[section][key] = value
    with pytest.raises(train.CheckpointError, match=match):
      train.train_and_evaluate(config, workdir)
  config = _tiny_flow_config()
  config.training.batch_size = 32
  _, state = train.load_state(config, workdir)      # eval / sample: another batch size is fine
  assert int(state.step) == 2
  config.data.source = "normal"                      # '' and 'normal' are both N(0, I)
  config.training.batch_size, config.training.n_iters = 16, 4
  assert train.train_and_evaluate(config, workdir)["start_step"] == 2
  path = tmp_path / "run" / "config.json"
  saved = json.loads(path.read_text())
  for section in ("data", "training"):
    del saved["fingerprint"][section]
  path.write_text(json.dumps(saved))
  config = _tiny_flow_config()
  config.data.dataset = "toy_moons"
  with pytest.raises(train.CheckpointError, match=r"data.dataset \('toy_checkerboard' there"):
    train.check_workdir_compatible(workdir, config)
  del saved["config"]                                # nothing recorded: not compared
  path.write_text(json.dumps(saved))
  train.check_workdir_compatible(workdir, config, resume_training=True)


def test_workdir_refuses_another_data_scaling_discrete_reading_or_resume_seed(tmp_path):
  """What decides how a checkpoint is read (data.centered, data.num_levels, discrete-time
  training) is compared for evaluation too; the seed (the data order) only when training
  resumes. An older config.json without these fields is completed from its saved config."""
  workdir = str(tmp_path / "run")
  train.train_and_evaluate(_tiny_flow_config(), workdir)
  for field, value, match in [("centered", True, r"data.centered \(False there, True now\)"),
                              ("num_levels", 128, r"data.num_levels \(256 there, 128 now\)")]:
    config = _tiny_flow_config()
    config.data[field] = value
    with pytest.raises(train.CheckpointError, match=match):
      train.load_state(config, workdir)
  config = _tiny_flow_config()
  config.seed += 1
  train.load_state(config, workdir)  # sampling / evaluating with another seed is fine
  config.training.n_iters = 4
  with pytest.raises(train.CheckpointError, match=r"training.seed .*seed and batch size"):
    train.train_and_evaluate(config, workdir)
  path = tmp_path / "run" / "config.json"
  saved = json.loads(path.read_text())
  del saved["fingerprint"]["data"]["centered"], saved["fingerprint"]["training"]["seed"]
  path.write_text(json.dumps(saved))
  with pytest.raises(train.CheckpointError, match="training.seed"):
    train.train_and_evaluate(config, workdir)     # filled in from the saved config
  # discrete-time (DDPM) training reads the network with DDPM's coefficients
  score = base.get_base_config()
  score.data.dataset, score.model.name = "digits", "unet"
  score_dir = str(tmp_path / "score")
  train.write_config(score_dir, score)
  score.training.continuous = False
  with pytest.raises(train.CheckpointError, match=r"reading.discrete \(False there, True now\)"):
    train.check_workdir_compatible(score_dir, score)


def test_config_json_follows_the_run_that_made_the_checkpoints(tmp_path):
  """config.json is rewritten when a run starts, so a first attempt that failed before its first
  checkpoint (here: a config.json of batch size 16 and no checkpoint) does not pin the batch
  size of the run that then trains in the workdir."""
  workdir = tmp_path / "run"
  train.write_config(str(workdir), _tiny_flow_config())
  config = _tiny_flow_config()
  config.training.batch_size = 32
  train.train_and_evaluate(config, str(workdir))
  saved = json.loads((workdir / "config.json").read_text())
  assert saved["config"]["training"]["batch_size"] == 32
  config.training.n_iters = 4
  assert train.train_and_evaluate(config, str(workdir))["start_step"] == 2


def test_rerunning_a_finished_run_keeps_its_summary_and_a_resume_logs_each_step_once(tmp_path):
  """A requeued job of a finished run trains nothing and returns the summary that run wrote
  (its results are not replaced by an empty one); a finished run without a summary gets its
  final evaluation. A run resumed from an earlier checkpoint after a crash drops what the
  crashed attempt logged past that checkpoint, so metrics.jsonl holds each step once, and
  non-finite values are written as null."""
  import shutil  # pylint: disable=import-outside-toplevel
  workdir = tmp_path / "run"
  config = _tiny_flow_config()
  config.training.n_iters = 4
  first = train.train_and_evaluate(config, str(workdir))
  first.pop("state")
  (workdir / "train_summary.json").write_text(json.dumps({**first, "nll_nats": 1.25}))
  again = train.train_and_evaluate(config, str(workdir))
  assert again["already_complete"] and again["nll_nats"] == 1.25
  assert again["start_step"] == first["start_step"] == 0 and again["final_step"] == 4
  assert again["wall_seconds"] == first["wall_seconds"]
  # no summary: the final evaluation runs once more
  (workdir / "train_summary.json").unlink()
  calls = []
  evaluate_fn = lambda setup, state, step, wd, mesh: calls.append(step) or {"nll_nats": 2.5}
  config.training.eval_every = 100
  out = train.train_and_evaluate(config, str(workdir), evaluate_fn=evaluate_fn)
  assert calls == [4] and out["nll_nats"] == 2.5
  # a crash after step 4 whose last checkpoint is step 2: steps 3 and 4 are logged again
  config.training.eval_every = 0
  shutil.rmtree(workdir / "checkpoints" / "4")
  with open(workdir / "metrics.jsonl", "a") as f:
    f.write('{"step": 5, "train/loss": 1.0}\n{"step": 6, "trai')  # a line cut by the crash
  assert train.train_and_evaluate(config, str(workdir))["start_step"] == 2
  steps = [json.loads(line)["step"] for line in (workdir / "metrics.jsonl").read_text().splitlines()
           if "train/loss" in line]
  assert steps == [1, 2, 3, 4]
  writer = train.MetricWriter(str(tmp_path / "nan"))
  writer.write(1, {"eval/nll": float("nan"), "eval/x": 1.0})
  writer.close()
  assert json.loads((tmp_path / "nan" / "metrics.jsonl").read_text()) == {
      "step": 1, "eval/nll": None, "eval/x": 1.0}


def test_process_fingerprint_reads_the_process_fields_and_its_default_sigmas(tmp_path):
  """configs/base.py leaves sigma_min / sigma_max None (the process's defaults: VE's 0.01 / 50,
  EDM's 0.002 / 80). A VE workdir written when the base spelled out 0.01 / 50 stays compatible;
  an EDM one written with those (VE's) numbers is refused, since EDM now reads 0.002 / 80; fields
  a process does not read (beta_max on VE) never make a workdir incompatible."""
  for name, compatible in (("ve", True), ("edm", False)):
    config = base.get_base_config()
    config.process.name = name
    old = train._jsonable(train._config_fingerprint(config))  # pylint: disable=protected-access
    old["process"].update(sigma_min=0.01, sigma_max=50.0)
    workdir = tmp_path / name
    workdir.mkdir()
    (workdir / "config.json").write_text(json.dumps({"fingerprint": old}))
    if compatible:
      train.check_workdir_compatible(str(workdir), config)
      config.process.beta_max = 5.0
      train.check_workdir_compatible(str(workdir), config)
      config.process.sigma_max = 80.0
      with pytest.raises(train.CheckpointError, match=r"process.sigma_max \(50.0 there, 80.0"):
        train.check_workdir_compatible(str(workdir), config)
    else:
      with pytest.raises(train.CheckpointError, match=r"process.sigma_max \(50.0 there, 80.0"):
        train.check_workdir_compatible(str(workdir), config)


def test_an_evaluation_lost_to_a_kill_runs_when_the_run_resumes(tmp_path, capsys):
  """A checkpoint of an evaluation step is saved before its evaluation; a run killed during that
  evaluation resumed after it and never evaluated the step. It now runs it first (once: a step
  whose evaluation is in metrics.jsonl is not evaluated again)."""
  calls = []
  evaluate_fn = lambda setup, state, step, wd, mesh: calls.append(step) or {"nll_nats": 1.0}
  config = tiny_config(2)
  config.training.eval_every = config.training.preemption_every = 2
  train.train_and_evaluate(config, str(tmp_path), evaluate_fn=evaluate_fn)
  assert calls == [2]
  path = tmp_path / "metrics.jsonl"
  path.write_text("".join(line + "\n" for line in path.read_text().splitlines()
                          if "eval/" not in line))     # killed before the evaluation's line
  config.training.n_iters = 4
  summary = train.train_and_evaluate(config, str(tmp_path), evaluate_fn=evaluate_fn)
  assert calls == [2, 2, 4] and summary["eval_step"] == 4
  assert "the periodic evaluation of step 2 did not finish" in capsys.readouterr().out
  evaluated = [json.loads(line)["step"] for line in path.read_text().splitlines()
               if "eval/nll_nats" in line]
  assert evaluated == [2, 4]
  config.training.n_iters = 6                          # step 4's evaluation is logged: not rerun
  train.train_and_evaluate(config, str(tmp_path), evaluate_fn=evaluate_fn)
  assert calls == [2, 2, 4, 6]


def test_a_shorter_runs_summary_is_not_reported_for_a_longer_finished_run(tmp_path):
  """A train_summary.json of another final step (an earlier, shorter run) is not this run's: a
  re-run at the newest checkpoint runs the final evaluation instead of reporting it."""
  workdir = tmp_path / "run"
  config = _tiny_flow_config()
  config.training.n_iters = 4
  train.train_and_evaluate(config, str(workdir))
  (workdir / "train_summary.json").write_text(json.dumps({"final_step": 2, "nll_nats": 9.0}))
  calls = []
  config.training.eval_every = 100
  out = train.train_and_evaluate(
      config, str(workdir), evaluate_fn=lambda s, st, step, wd, m: calls.append(step) or
      {"nll_nats": 1.5})
  assert calls == [4] and out["nll_nats"] == 1.5 and "already_complete" not in out


def test_cnf_workdirs_before_zero_last_and_the_squeeze_order(tmp_path):
  """``model.zero_last`` (initialization only) absent from an older CNF fingerprint reads as
  False, so such a workdir stays compatible; an older ``ffjord_multiscale`` fingerprint (the
  squeeze order before FFJORD's) is refused by name, as its checkpoint would compute another
  function with the same parameters."""
  from configs.cnf import mnist_multiscale, toy  # pylint: disable=import-outside-toplevel
  for name, config, refused in (("toy", toy.get_config("moons"), None),
                                ("mnist", mnist_multiscale.get_config(), "model.squeeze_order")):
    old = train._jsonable(train._config_fingerprint(config))  # pylint: disable=protected-access
    old["model"].pop("zero_last", None)
    old["model"].pop("squeeze_order", None)
    workdir = tmp_path / name
    workdir.mkdir()
    (workdir / "config.json").write_text(json.dumps({"fingerprint": old}))
    if refused is None:
      train.check_workdir_compatible(str(workdir), config)
    else:
      with pytest.raises(train.CheckpointError, match=refused):
        train.check_workdir_compatible(str(workdir), config)
  assert train._config_fingerprint(mnist_multiscale.get_config())["model"]["squeeze_order"] == \
      "ffjord"  # pylint: disable=protected-access


def test_reflow_pairs_with_the_training_split_as_eval_split_are_refused():
  """With ``data.pairs_dir`` the training split is replaced by reflow pairs; an ``eval_split``
  equal to it would evaluate the pairs as if they were data (scaled a second time), so it is
  refused by name before anything reads the pairs."""
  from configs.rectified_flow import digits_2rf  # pylint: disable=import-outside-toplevel
  config = digits_2rf.get_config()
  config.data.pairs_dir = "/nonexistent/pairs"
  config.data.eval_split = config.data.train_split
  with pytest.raises(ValueError, match=r"config.data.eval_split is the same split"):
    train.check_pairs_compatible(config)


def test_uniform_grid_samplers_on_the_edm_path_warn_below_1000_steps():
  """Predictor-corrector / Euler-Maruyama step uniformly in t = sigma; on EDM's path (sigma up to
  80) a few hundred steps barely resolve small sigma, so config validation warns (by field and
  method) and points to 'heun' / 'ddim'; 1000 steps, or another process, do not warn."""
  import warnings  # pylint: disable=import-outside-toplevel
  from jaxgen import evaluate  # pylint: disable=import-outside-toplevel
  config = base.get_base_config()
  config.process.name = "edm"
  config.method = "edm"
  config.sampling.method = "em"
  config.sampling.num_steps = 100
  with pytest.warns(UserWarning, match=r"config.sampling.method='em' steps uniformly.*'heun'"):
    evaluate.validate_sampling_config(config, train.get_process(config))
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    config.sampling.num_steps = 1000
    evaluate.validate_sampling_config(config, train.get_process(config))
    config.sampling.num_steps, config.process.name, config.method = 100, "vp", "score"
    evaluate.validate_sampling_config(config, train.get_process(config))


def test_restore_silences_asyncio_reports_of_cancelled_reads_only(caplog):
  """orbax < 0.12.8 reads a checkpoint inside ``asyncio.run``: when one array of a damaged
  checkpoint fails, the cancelled reads are each logged by asyncio at shutdown (8,615 lines on
  the device image's orbax 0.12.4). ``restore_checkpoint`` drops those records, and only those."""
  import asyncio  # pylint: disable=import-outside-toplevel
  import logging  # pylint: disable=import-outside-toplevel

  async def read():
    try:
      await asyncio.sleep(60)
    except asyncio.CancelledError:
      raise RuntimeError("a cancelled read failed") from None

  async def restore():
    asyncio.ensure_future(read())
    await asyncio.sleep(0)
    raise ValueError("first array unreadable")

  def shutdown_reports():
    return [r for r in caplog.records if r.name == "asyncio"
            and "asyncio.run() shutdown" in r.getMessage()]

  with caplog.at_level(logging.ERROR, logger="asyncio"):
    with pytest.raises(ValueError, match="first array"):
      asyncio.run(restore())
    assert len(shutdown_reports()) == 1  # what asyncio prints without the filter
    caplog.clear()
    with train._quiet_cancelled_reads():  # pylint: disable=protected-access
      with pytest.raises(ValueError, match="first array"):
        asyncio.run(restore())
      logging.getLogger("asyncio").error("another asyncio error")
    assert not shutdown_reports()
    assert [r.getMessage() for r in caplog.records] == ["another asyncio error"]
  assert not logging.getLogger("asyncio").filters  # removed again
