"""Rectified flow: reflow straightens a 2-D flow, distillation, resumable pairs, likelihoods."""
import glob
import os
import shutil
import types

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from configs.rectified_flow import common
from jaxgen import closed_form
from jaxgen import data as data_lib
from jaxgen import evaluate, parallel, rectified_flow, train
from jaxgen.data import pairs as pairs_lib
from jaxgen.processes import EDMPath, LinearPath

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def toy_config(stage, pairs_dir="", batch_size=256, hidden=(64, 64, 64)):
  config = common.toy_config("checkerboard", "", stage)
  config.model.hidden = hidden
  config.model.ema_rate = 0.99
  config.training.batch_size = batch_size
  config.optim.lr = 1e-3
  config.data.pairs_dir = pairs_dir
  return config


def fit(config, steps, init_params=None):
  """``steps`` jitted train steps of the library's loop body on one device; EMA parameters."""
  setup = train.Setup(config)
  state = jax.jit(setup.init_state)(jax.random.PRNGKey(config.seed))
  if init_params is not None:   # warm start from the previous flow, as Liu et al.
    state = state.replace(params=init_params, ema_params=init_params,
                          opt_state=setup.init_opt_state(init_params))
  train_step = jax.jit(setup.make_train_step())
  ds = data_lib.get_dataset(config.data, config.data.train_split, seed=config.seed,
                            process_index=0, process_count=1)
  for step in range(steps):
    state, _ = train_step(state, ds.get_batch(step, config.training.batch_size))
  return setup, state.ema_params


def drift(setup, params):
  velocity_fn = rectified_flow.velocity_fn_from_setup(setup)
  return lambda x, t: velocity_fn(params, x, t)


def test_reflow_straightens_one_step_samples_and_distillation_keeps_them(tmp_path):
  """N(0, I) -> checkerboard: 1-RF, its Dopri5 pairs, 2-RF on them, its pairs, a distilled 1-step
  generator. The pairs' x are each flow's multi-step (Dopri5) samples from the pairs' z."""
  mesh = parallel.make_mesh(jax.devices()[:1])
  n = 3000
  reference = np.asarray(data_lib.sample_toy("checkerboard", jax.random.PRNGKey(7), n))
  swd = lambda x: float(rectified_flow.sliced_wasserstein_distance(jax.random.PRNGKey(3), x,
                                                                   reference, 512))

  def reflow(setup, params, name, seed):
    """Pairs of the flow; returns (pairs dir, straightness, one-step SWD, Dopri5 SWD)."""
    directory = str(tmp_path / name)
    summary = rectified_flow.generate_pairs(
        rectified_flow.velocity_fn_from_setup(setup), params, setup.process, (2,), directory,
        num_pairs=n, chunk_size=1000, seed=seed, rtol=1e-4, atol=1e-4, mesh=mesh,
        progress=False)
    assert summary["complete"] and summary["generated"] == 3
    z, x = pairs_lib.load_pairs(directory)
    fn = drift(setup, params)
    stats = rectified_flow.trajectory_statistics(fn, z[:1000], setup.process, num_points=32)
    one_step, nfe = rectified_flow.euler_generate(fn, z, setup.process, 1)
    assert int(nfe) == 1
    return directory, float(jnp.mean(stats["straightness"])), swd(one_step), swd(x)

  setup1, params1 = fit(toy_config("1rf"), 1200)
  pairs1, straight1, one1, multi1 = reflow(setup1, params1, "pairs1", 0)
  setup2, params2 = fit(toy_config("2rf", pairs1), 500, params1)
  pairs2, straight2, one2, multi2 = reflow(setup2, params2, "pairs2", 1)
  distill_config = toy_config("distill", pairs2)
  setup_d, params_d = fit(distill_config, 300, params2)
  sample_fn = rectified_flow.make_distilled_sample_fn(setup_d, distill_config.sampling)
  distilled, nfe = jax.jit(sample_fn, static_argnums=2)(params_d, jax.random.PRNGKey(11), n)
  one_d = swd(distilled)
  print(f"straightness 1-RF {straight1:.4f} 2-RF {straight2:.5f}; one-step SWD 1-RF {one1:.3f} "
        f"2-RF {one2:.3f} distilled {one_d:.3f}; dopri5 SWD 1-RF {multi1:.3f} 2-RF {multi2:.3f}")
  assert int(nfe) == 1
  assert straight2 * 5 <= straight1, (straight1, straight2)
  assert one2 < one1, (one1, one2)
  assert one_d <= 1.2 * multi2, (one_d, multi2)
  assert multi1 < 0.3 and multi2 < 0.3   # both flows do transport to the checkerboard


def closed_form_velocity(params, x, t):
  """``velocity_fn(params, x, t)`` of a three-Gaussian 2-D mixture (``params`` unused)."""
  del params
  return closed_form.three_gaussians_2d().velocity_fn(LinearPath())(x, t)


def _all_pairs(directory):
  meta = pairs_lib.read_meta(directory)
  return [pairs_lib.read_chunk(directory, i) for i in range(meta["num_chunks"])]


def test_interrupted_pair_generation_resumes_to_the_same_pairs(tmp_path):
  mesh = parallel.make_mesh()   # all (fake) devices: the solves are sharded
  kwargs = dict(num_pairs=1000, chunk_size=256, batch_size=128, seed=5, rtol=1e-4, atol=1e-4,
                mesh=mesh, progress=False, metadata={"model_step": 7})
  args = (closed_form_velocity, None, LinearPath(), (2,))
  full = rectified_flow.generate_pairs(*args, str(tmp_path / "full"), **kwargs)
  assert full["complete"] and full["generated"] == 4 and full["mean_nfe"] > 10

  part = str(tmp_path / "part")
  first = rectified_flow.generate_pairs(*args, part, max_chunks=2, **kwargs)
  assert not first["complete"] and first["generated"] == 2
  assert pairs_lib.missing_chunks(part, 4) == [2, 3]
  with pytest.raises(ValueError, match="incomplete"):
    pairs_lib.PairsDataset(part)
  # A writer killed mid-chunk leaves only a temporary file; a lost chunk leaves a hole.
  with open(pairs_lib.chunk_path(part, 2) + ".tmp-12345", "wb") as f:
    f.write(b"half a chunk")
  os.remove(pairs_lib.chunk_path(part, 0))
  resumed = rectified_flow.generate_pairs(*args, part, **kwargs)
  assert resumed["complete"] and resumed["generated"] == 3 and resumed["skipped"] == 1
  assert not glob.glob(os.path.join(part, "*.tmp-*"))
  for a, b in zip(_all_pairs(str(tmp_path / "full")), _all_pairs(part)):
    for key in ("z", "x", "nfe"):
      np.testing.assert_array_equal(a[key], b[key])
  z, x = pairs_lib.load_pairs(part)
  assert z.shape == x.shape == (1000, 2)
  # The pairs are the flow's: x solves the ODE from z (exactly the mixture's samples in law).
  assert abs(float(np.mean(x[:, 0])) - float(closed_form.three_gaussians_2d().mean()[0])) < 0.15

  with pytest.raises(ValueError, match="seed"):
    rectified_flow.generate_pairs(*args, part, **{**kwargs, "seed": 6})
  # A generation begun before run_reflow recorded the data scaling still resumes with it added;
  # another model step is another generation.
  scaled = {"model_step": 7, "data_centered": True, "data_num_levels": 17}
  again = rectified_flow.generate_pairs(*args, part, **{**kwargs, "metadata": scaled})
  assert again["complete"] and again["generated"] == 0
  with pytest.raises(ValueError, match="metadata"):
    rectified_flow.generate_pairs(*args, part, **{**kwargs, "metadata": {**scaled,
                                                                         "model_step": 8}})
  with pytest.raises(ValueError, match="chunk_size"):
    rectified_flow.generate_pairs(*args, str(tmp_path / "bad"), **{**kwargs, "batch_size": 96})


def test_pairs_dataset_serves_every_pair_with_the_pipeline_interface(tmp_path):
  directory = str(tmp_path / "pairs")
  rectified_flow.generate_pairs(closed_form_velocity, None, LinearPath(), (2,), directory,
                                num_pairs=300, chunk_size=64, solver="euler", num_steps=4,
                                mesh=parallel.make_mesh(jax.devices()[:1]), progress=False)
  config = toy_config("2rf", directory)
  ds = data_lib.get_dataset(config.data, "train", seed=3, process_index=0, process_count=1)
  assert isinstance(ds, pairs_lib.PairsDataset)
  assert ds.num_examples == 300 and ds.image_shape == (2,)
  batch = ds.get_batch(5, 32)
  assert set(batch) == {"image", "noise", "label"} and batch["image"].shape == (32, 2)
  np.testing.assert_array_equal(batch["image"], ds.get_batch(5, 32)["image"])   # pure in step
  z, x = pairs_lib.load_pairs(directory)
  rows = [np.flatnonzero((x == row).all(1))[0] for row in batch["image"]]
  np.testing.assert_array_equal(batch["noise"], z[rows])                        # still coupled
  seen = np.concatenate([b["image"][b["mask"]] for b in ds.iterate(128)])
  np.testing.assert_array_equal(seen, x)
  halves = [pairs_lib.PairsDataset(directory, process_index=i, process_count=2) for i in (0, 1)]
  assert [h.num_examples for h in halves] == [150, 150]
  # The evaluation split stays the real data.
  assert not isinstance(data_lib.get_dataset(config.data, "test", seed=3), pairs_lib.PairsDataset)


def test_linear_flow_likelihood_of_exact_gaussian_velocity_matches_closed_form():
  dim = 6
  gaussian = closed_form.random_gaussian(dim, seed=1)
  process = LinearPath()
  x = gaussian.sample(jax.random.PRNGKey(0), 32)
  logp, z, nfe = rectified_flow.log_likelihood(gaussian.velocity_fn(process), x, process,
                                               rtol=1e-6, atol=1e-6)
  error_per_dim = np.abs(np.asarray(logp) - np.asarray(gaussian.logp(x))) / dim
  assert error_per_dim.max() < 1e-4, error_per_dim.max()
  assert z.shape == x.shape and int(nfe) > 0


def test_eight_gaussians_source_is_the_toy_set_with_its_exact_density():
  config = toy_config("1rf")
  config.data.source = "toy_8gaussians"
  process = train.get_process(config)
  assert isinstance(process, rectified_flow.SourceLinearPath)
  samples = np.asarray(process.prior_sample(jax.random.PRNGKey(0), (20000, 2)))
  mixture = rectified_flow.eight_gaussians_mixture()
  np.testing.assert_allclose(samples.mean(0), mixture.mean(), atol=0.05)
  np.testing.assert_allclose(np.cov(samples.T), mixture.covariance(), atol=0.1)
  np.testing.assert_allclose(process.prior_logp(jnp.asarray(samples[:100])),
                             mixture.logp(jnp.asarray(samples[:100])), rtol=1e-6)
  with pytest.raises(ValueError, match="toy_moonz"):
    config.data.source = "toy_moonz"
    train.get_process(config)
  with pytest.raises(ValueError, match="'vp'"):
    config.data.source = "toy_8gaussians"
    config.process.name = "vp"
    train.get_process(config)


def test_minibatch_ot_coupling_approaches_the_exact_assignment():
  kx, kz, kc = jax.random.split(jax.random.PRNGKey(0), 3)
  x = data_lib.sample_toy("8gaussians", kx, 256)
  z = jax.random.normal(kz, (256, 2))
  coupled = jax.jit(rectified_flow.minibatch_ot_coupling)(kc, x, z)
  cost = lambda a, b: float(jnp.mean(jnp.sum((a - b) ** 2, -1)))
  sq = np.sum((np.asarray(x)[:, None] - np.asarray(z)[None]) ** 2, -1)
  rows, cols = linear_sum_assignment(sq)
  exact = float(sq[rows, cols].mean())
  print(f"transport cost: independent {cost(x, z):.3f}, sinkhorn {cost(x, coupled):.3f}, "
        f"exact {exact:.3f}")
  assert cost(x, coupled) < 1.15 * exact < 0.5 * cost(x, z)
  z_rows = {tuple(r) for r in np.asarray(z)}
  assert all(tuple(r) in z_rows for r in np.asarray(coupled))   # noise re-paired, not changed
  assert len({tuple(r) for r in np.asarray(coupled)}) > 0.5 * 256   # drawn from the plan

  config = toy_config("1rf")
  config.training.coupling = "minibatch_ot"
  setup = train.Setup(config)
  params = jax.jit(setup.init_state)(jax.random.PRNGKey(0)).params
  loss, _ = jax.jit(setup.loss_fn)(params, jax.random.PRNGKey(1), {"image": x})
  assert np.isfinite(float(loss))
  config.training.coupling = "sinkhorn_typo"
  with pytest.raises(ValueError, match="sinkhorn_typo"):
    train.Setup(config)


def test_distill_loss_is_the_n_step_euler_error():
  num_steps = 3   # (one step is checked by the tests above)
  config = toy_config("distill", hidden=(16,))
  config.distill.num_steps = num_steps
  setup = train.Setup(config)
  params = jax.jit(setup.init_state)(jax.random.PRNGKey(0)).params
  key = jax.random.PRNGKey(1)
  x = jax.random.normal(key, (8, 2))
  z = jax.random.normal(jax.random.PRNGKey(2), (8, 2))
  batch = {"image": x, "noise": z}
  (_, aux), grads = jax.jit(jax.value_and_grad(setup.loss_fn, has_aux=True))(params, key, batch)
  y, h = z, 1.0 / num_steps
  for i in range(num_steps):
    t = jnp.full((8,), 1.0 - i * h)
    y = y - h * setup.model_fn(params, y, t)
  np.testing.assert_allclose(aux["loss_per_example"], jnp.mean((y - x) ** 2, -1), rtol=1e-5)
  assert all(np.all(np.isfinite(g)) for g in jax.tree_util.tree_leaves(grads))
  sample_fn = evaluate.make_sample_fn(setup, config.sampling)
  samples, nfe = jax.jit(sample_fn, static_argnums=2)(params, key, 5)
  assert samples.shape == (5, 2) and int(nfe) == num_steps
  config.distill.num_steps = 0
  with pytest.raises(ValueError, match="num_steps"):
    train.Setup(config)


def test_trajectory_statistics_of_a_constant_field_are_straight():
  shift = jnp.asarray([1.0, -2.0])
  z = jax.random.normal(jax.random.PRNGKey(0), (16, 2))
  stats = rectified_flow.trajectory_statistics(lambda x, t: jnp.broadcast_to(shift, x.shape), z)
  np.testing.assert_allclose(stats["x"], z - shift, atol=1e-5)
  np.testing.assert_allclose(stats["straightness"], 0.0, atol=1e-8)
  np.testing.assert_allclose(stats["transport_cost"], 5.0, rtol=1e-5)
  # A rotation field is not straight: its trajectories are circular arcs.
  rotate = lambda x, t: jnp.stack([-x[:, 1], x[:, 0]], -1)
  assert float(jnp.min(rectified_flow.trajectory_statistics(rotate, z)["straightness"])) > 1e-3


def test_straightness_is_liu_s_on_the_rescaled_time_whatever_the_span():
  """Liu et al.'s S = int_0^1 |(z - x) - dx/ds|^2 ds on s in [0, 1]. A rotation by the total angle
  theta at constant speed has S = |z|^2 (theta^2 - 4 sin^2(theta / 2)) however the same path is
  timed: t in [0.5, 1] at rate 1, t in [0, 1] at rate 0.5, or EDM's [0.002, 80]. (Before, the
  deviation was taken per unit t: 4x the value on [0.5, 1] and 1/6400 of it on EDM's path.)"""
  z = jnp.asarray([[1.0, 0.0], [0.0, 2.0]])
  rotation = lambda rate: (lambda x, t: rate * jnp.stack([-x[:, 1], x[:, 0]], -1))
  theta = 0.5
  expected = np.sum(np.asarray(z) ** 2, -1) * (theta**2 - 4 * np.sin(theta / 2) ** 2)
  edm = EDMPath()
  for fn, process, t_end in ((rotation(1.0), LinearPath(), 0.5), (rotation(0.5), LinearPath(), None),
                             (rotation(theta / (edm.T - edm.t_min)), edm, None)):
    stats = rectified_flow.trajectory_statistics(fn, z, process, t_end=t_end, num_points=32)
    np.testing.assert_allclose(stats["straightness"], expected, rtol=2e-3)
    np.testing.assert_allclose(stats["transport_cost"], 4 * np.sin(theta / 2) ** 2
                               * np.sum(np.asarray(z) ** 2, -1), rtol=1e-4)


def test_bad_pairs_and_time_ranges_are_refused_naming_the_value(tmp_path):
  config = ml_collections.ConfigDict({"distill": {"num_steps": 1}, "training": {
      "reduce_mean": True, "time_sampling": "uniform", "eps": 1e-3}})
  setup = types.SimpleNamespace(process=LinearPath(), prediction="velocity",
                                model_fn=lambda params, x, t, **kwargs: x * params)
  loss_fn = rectified_flow.make_distill_loss_fn(config, setup)
  x = jnp.ones((8, 2))
  loss, _ = loss_fn(0.5, jax.random.PRNGKey(0), {"image": x, "noise": x})
  assert float(loss) == pytest.approx(0.25)          # x_hat = z - 0.5 z
  for noise in (jnp.ones((1, 2)), jnp.ones((8, 1))):  # both broadcast against (8, 2) silently
    with pytest.raises(ValueError, match=rf"noise \({noise.shape[0]}, {noise.shape[1]}\) and "
                                         r"image \(8, 2\)"):
      loss_fn(0.5, jax.random.PRNGKey(0), {"image": x, "noise": noise})
  drift = lambda y, t: -y
  with pytest.raises(ValueError, match=r"t_end.*\[0.0, 1.0\).*got -0.5"):
    rectified_flow.trajectory_statistics(drift, x, t_end=-0.5)
  with pytest.raises(ValueError, match=r"got shape \(2,\)"):
    rectified_flow.trajectory_statistics(drift, jnp.ones((2,)))
  with pytest.raises(ValueError, match=r"eps.*\[0.002, 80.0\).*got 0.0"):
    rectified_flow.generate_pairs(lambda p, y, t: -y, {}, EDMPath(), (2,), str(tmp_path),
                                  num_pairs=8, chunk_size=8, eps=0.0, progress=False)
  assert not os.listdir(tmp_path)


def test_every_rectified_flow_config_builds():
  names = sorted(os.path.basename(p)[:-3] for p in glob.glob(
      os.path.join(REPO, "configs", "rectified_flow", "*_*.py"))
                 if not p.endswith(("common.py", "__init__.py")))
  assert len(names) == 12
  for name in names:
    module = __import__(f"configs.rectified_flow.{name}", fromlist=["get_config"])
    config = module.get_config()
    train.validate_config(config, num_devices=1)
    setup = train.Setup(config)
    assert setup.prediction == "velocity" and config.process.name == "linear"
    assert config.method == ("distill" if name.endswith("distill") else "flow")


def test_reflow_and_distill_modes_chain_through_workdirs(tmp_path):
  """--mode=train -> --mode=reflow -> --mode=distill (2-RF, warm start) -> --mode=reflow ->
  --mode=distill (one-step generator), in process, tiny."""
  def tiny(stage, n_iters):
    config = toy_config(stage, batch_size=64, hidden=(16,))
    config.training.n_iters = n_iters
    config.training.eval_every = n_iters if stage == "distill" else 0
    config.eval.density_grid = 0  # (tests/test_density_plots.py and test_cli_ux draw them)
    config.training.log_every = n_iters
    config.eval.batch_size = 64
    config.sampling.num_samples = 16
    config.sampling.batch_size = 16
    reflow = config.reflow
    reflow.num_pairs, reflow.chunk_size, reflow.solver, reflow.num_steps = 200, 128, "euler", 4
    return config

  first, second, student = (str(tmp_path / name) for name in ("1rf", "2rf", "distilled"))
  train.train_and_evaluate(tiny("1rf", 6), first)
  summary = rectified_flow.run_reflow(tiny("1rf", 6), first)
  assert summary["complete"] and summary["num_chunks"] == 2
  assert pairs_lib.read_meta(os.path.join(first, "reflow_pairs"))["metadata"]["model_step"] == 6

  config = tiny("2rf", 4)
  config.reflow.init_workdir = first
  assert rectified_flow.warm_start(config, second, first)
  _, teacher = train.load_state(tiny("1rf", 6), first)
  _, start = train.load_state(config, second)
  assert int(start.step) == 0
  for a, b in zip(jax.tree_util.tree_leaves(teacher.ema_params),
                  jax.tree_util.tree_leaves(start.params)):
    np.testing.assert_array_equal(a, b)
  summary = rectified_flow.run_distill(config, second)   # resumes from the warm start
  assert summary["start_step"] == 0 and summary["final_step"] == 4
  rectified_flow.run_reflow(config, second)

  config = tiny("distill", 4)
  config.reflow.init_workdir = second
  summary = rectified_flow.run_distill(config, student)
  assert summary["final_step"] == 4 and summary["sample_nfe"] == 1
  assert os.path.exists(summary["sample_grid"])
  with pytest.raises(ValueError, match="init_workdir"):
    rectified_flow.run_distill(tiny("distill", 4), str(tmp_path / "nowhere"))


def test_pairs_of_another_shape_or_noise_source_are_refused(tmp_path):
  """check_pairs_fit compares the pairs' meta.json with the config: the example shape, and the
  prior that drew z (another process with the same N(0, I) prior, e.g. a VP teacher's ODE pairs
  for a linear flow, fits; the 8-Gaussian source does not fit N(0, I), nor N(0, 50^2 I))."""
  from jaxgen import processes  # pylint: disable=import-outside-toplevel
  directory = str(tmp_path / "pairs")
  os.makedirs(directory)
  pairs_lib.write_meta(directory, {"shape": [2], "process": "LinearPath()"})
  linear, eight = LinearPath(), rectified_flow.SourceLinearPath("toy_8gaussians")
  pairs_lib.check_pairs_fit(directory, shape=(2,), process=linear)
  with pytest.raises(ValueError, match=r"shape \(2,\).*config's data.*shape \(3,\)"):
    pairs_lib.check_pairs_fit(directory, shape=(3,), process=linear)
  with pytest.raises(ValueError, match=r"generated by LinearPath\(\) \(noise z from N\(0, 1\^2 "
                                       r"I\)\).*the toy_8gaussians source.*config.data.source"):
    pairs_lib.check_pairs_fit(directory, shape=(2,), process=eight)
  pairs_lib.write_meta(directory, {"shape": [2], "process": repr(eight)})
  pairs_lib.check_pairs_fit(directory, shape=(2,), process=eight)
  with pytest.raises(ValueError, match="toy_8gaussians source"):
    pairs_lib.check_pairs_fit(directory, shape=(2,), process=linear)
  pairs_lib.write_meta(directory, {"shape": [2], "process": repr(processes.get_process("vp"))})
  pairs_lib.check_pairs_fit(directory, shape=(2,), process=linear)   # both N(0, I)
  with pytest.raises(ValueError, match=r"N\(0, 50\^2 I\)"):
    pairs_lib.check_pairs_fit(directory, shape=(2,), process=processes.get_process("ve"))
  pairs_lib.write_meta(directory, {"shape": [2], "process": "__import__('os').getcwd()"})
  with pytest.raises(ValueError, match="generated by __import__"):   # not parsed: differs
    pairs_lib.check_pairs_fit(directory, shape=(2,), process=linear)


def test_pairs_of_another_data_scaling_are_refused(tmp_path):
  """--mode=reflow records the teacher's data scaling (data.centered, data.num_levels) in the
  pairs' metadata; a student config that scales its data otherwise is refused by field name.
  Pairs without the record (toy data, older generations) pass."""
  from configs.rectified_flow import digits_2rf  # pylint: disable=import-outside-toplevel
  config = digits_2rf.get_config()
  directory = str(tmp_path / "pairs")
  os.makedirs(directory)
  shape = (8, 8, 1)
  pairs_lib.write_meta(directory, {"shape": list(shape), "process": "LinearPath()",
                                   "metadata": pairs_lib.data_scaling(config.data)})
  assert pairs_lib.data_scaling(config.data) == {
      "data_centered": bool(config.data.centered), "data_num_levels": config.data.num_levels}
  pairs_lib.check_pairs_fit(directory, shape=shape, process=LinearPath(), data_config=config.data)
  config.data.centered = not config.data.centered
  with pytest.raises(ValueError, match=r"config.data.centered = (True|False), but the config"):
    pairs_lib.check_pairs_fit(directory, shape=shape, process=LinearPath(),
                              data_config=config.data)
  pairs_lib.write_meta(directory, {"shape": list(shape), "process": "LinearPath()"})
  pairs_lib.check_pairs_fit(directory, shape=shape, process=LinearPath(), data_config=config.data)


def test_distill_checks_the_config_teacher_and_pairs_before_writing(tmp_path):
  """--mode=distill validates the config, the teacher's network and the pairs (shape, noise
  source) before the warm start writes a checkpoint or config.json: a refused run leaves the
  workdir untouched, and the fixed run then starts from the warm start (not from a leftover)."""
  def tiny(stage, n_iters=2, hidden=(16,)):
    config = toy_config(stage, batch_size=16, hidden=hidden)
    config.training.n_iters = config.training.log_every = n_iters
    config.training.eval_every = 0
    config.eval.batch_size = 16
    reflow = config.reflow
    reflow.num_pairs, reflow.chunk_size, reflow.solver, reflow.num_steps = 64, 64, "euler", 2
    return config

  teacher = str(tmp_path / "1rf")
  train.train_and_evaluate(tiny("1rf"), teacher)
  rectified_flow.run_reflow(tiny("1rf"), teacher)
  student = tmp_path / "2rf"
  cases = [("training.batch_size", -4, ValueError, "batch_size"),
           ("model.hidden", (8,), ValueError, "does not match config.model"),
           ("data.source", "toy_8gaussians", ValueError, "toy_8gaussians source")]
  for field, value, error, match in cases:
    config = tiny("2rf")
    config.reflow.init_workdir = teacher
    section, _, key = field.rpartition(".")
    config[section][key] = value
    with pytest.raises(error, match=match):
      rectified_flow.run_distill(config, str(student))
    assert not student.exists() or not os.listdir(student), (field, os.listdir(student))
  # unfinished pairs: refused before the warm start writes anything
  from jaxgen.data import pairs as pairs_lib  # pylint: disable=import-outside-toplevel
  chunk = pairs_lib.chunk_path(os.path.join(teacher, rectified_flow.PAIRS_SUBDIR), 0)
  os.rename(chunk, chunk + ".away")
  config = tiny("2rf")
  config.reflow.init_workdir = teacher
  with pytest.raises(ValueError, match=r"not finished: chunks \[0\]"):
    rectified_flow.run_distill(config, str(student))
  assert not student.exists() or not os.listdir(student)
  os.rename(chunk + ".away", chunk)
  summary = rectified_flow.run_distill(config, str(student))
  assert summary["start_step"] == 0 and summary["final_step"] == 2
  # the student records its teacher; resuming it under another teacher is refused
  other = str(tmp_path / "other_teacher")
  shutil.copytree(teacher, other)
  config = tiny("2rf", n_iters=4)
  config.reflow.init_workdir = other
  with pytest.raises(train.CheckpointError, match="warm-started from the teacher"):
    rectified_flow.run_distill(config, str(student))
  config.reflow.init_workdir = teacher
  assert rectified_flow.run_distill(config, str(student))["start_step"] == 2


def test_counts_of_the_coupling_and_the_distance_are_checked():
  """``num_iters=0`` gave an unnormalised plan and ``num_projections=0`` a NaN distance."""
  key, x = jax.random.PRNGKey(0), jnp.ones((4, 2))
  with pytest.raises(ValueError, match="num_iters"):
    rectified_flow.minibatch_ot_coupling(key, x, x, num_iters=0)
  with pytest.raises(ValueError, match="num_projections"):
    rectified_flow.sliced_wasserstein_distance(key, x, x, num_projections=0)
  assert float(rectified_flow.sliced_wasserstein_distance(key, x, x + 1.0)) > 0.5
