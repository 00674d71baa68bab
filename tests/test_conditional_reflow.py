"""Class-conditional reflow: pairs of a class-conditional teacher carry their classes.

The teacher is exact: class ``k`` of two is the Gaussian ``N(mu_k, 0.25 I)`` in 2-D with the
closed-form velocity of the linear path, so the pairs' ``x`` of each class must follow that class's
law, and their ``z`` must be those of an unconditional generation with the same seed.
"""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgen import closed_form, parallel, rectified_flow, train
from jaxgen import data as data_lib
from jaxgen.data import pairs as pairs_lib
from jaxgen.processes import LinearPath

MEANS = np.array([[3.0, 0.0], [-3.0, 1.0]], np.float32)
CLASSES = [closed_form.GaussianMixture.gaussian(m, 0.25 * np.eye(2)) for m in MEANS]


def conditional_velocity(params, x, t, labels):
  """``velocity_fn(params, x, t, labels)`` of the two-class teacher (``params`` unused)."""
  del params
  v = [g.velocity_fn(LinearPath())(x, t) for g in CLASSES]
  return jnp.where((labels == 0)[:, None], v[0], v[1])


def unconditional_velocity(params, x, t):
  del params
  return CLASSES[0].velocity_fn(LinearPath())(x, t)


KWARGS = dict(num_pairs=600, chunk_size=256, batch_size=128, seed=3, rtol=1e-5, atol=1e-5,
              progress=False)


def test_class_conditional_pairs_follow_each_class_and_keep_the_unconditional_noise(tmp_path):
  mesh = parallel.make_mesh()  # sharded over the 8 fake devices
  labelled, plain = str(tmp_path / "labelled"), str(tmp_path / "plain")
  summary = rectified_flow.generate_pairs(conditional_velocity, None, LinearPath(), (2,),
                                          labelled, mesh=mesh, num_classes=2, **KWARGS)
  assert summary["complete"] and summary["generated"] == 3
  rectified_flow.generate_pairs(unconditional_velocity, None, LinearPath(), (2,), plain,
                                mesh=mesh, **KWARGS)
  assert pairs_lib.read_meta(labelled)["num_classes"] == 2
  assert "num_classes" not in pairs_lib.read_meta(plain)  # an unconditional meta.json as before
  assert "y" in pairs_lib.read_chunk(labelled, 0) and "y" not in pairs_lib.read_chunk(plain, 0)

  z, x, y = pairs_lib.load_pairs(labelled, with_labels=True)
  z_plain, _, y_plain = pairs_lib.load_pairs(plain, with_labels=True)
  np.testing.assert_array_equal(z, z_plain)
  assert (y_plain == -1).all()
  assert y.shape == (600,) and y.dtype == np.int32 and set(np.unique(y)) == {0, 1}
  counts = np.bincount(y)
  assert counts.min() > 240, counts  # uniform classes: 300 +- 12 each
  for k in (0, 1):
    mean, std = x[y == k].mean(0), x[y == k].std(0)
    print(f"class {k}: {counts[k]} pairs, mean {mean}, std {std} (exact {MEANS[k]}, 0.5)")
    np.testing.assert_allclose(mean, MEANS[k], atol=0.1)
    np.testing.assert_allclose(std, [0.5, 0.5], atol=0.06)
  # (z, x) is the ODE's coupling: label by label, x is the class's affine image of z, the map
  # from N(0, I) at t = 1 to the marginal N((1 - e) mu, ((1 - e)^2 0.25 + e^2) I) at t = e.
  e = 1e-3
  for k in (0, 1):
    exact = (1 - e) * MEANS[k] + np.sqrt((1 - e)**2 * 0.25 + e**2) * z[y == k]
    np.testing.assert_allclose(x[y == k], exact, atol=1e-3)

  # Resuming under another number of classes is another generation.
  with pytest.raises(ValueError, match=r"num_classes: 2 there, 3 now"):
    rectified_flow.generate_pairs(conditional_velocity, None, LinearPath(), (2,), labelled,
                                  mesh=mesh, num_classes=3, **KWARGS)
  with pytest.raises(ValueError, match=r"num_classes: 2 there, 0 now"):
    rectified_flow.generate_pairs(unconditional_velocity, None, LinearPath(), (2,), labelled,
                                  mesh=mesh, **KWARGS)
  with pytest.raises(ValueError, match=r"`num_classes` must be an int >= 0.*got -1"):
    rectified_flow.generate_pairs(conditional_velocity, None, LinearPath(), (2,),
                                  str(tmp_path / "bad"), mesh=mesh, num_classes=-1, **KWARGS)
  assert not os.path.exists(tmp_path / "bad")

  # The dataset serves the labels with their pairs, in training batches and in a pass.
  ds = pairs_lib.PairsDataset(labelled)
  assert ds.num_classes == 2
  batch = ds.get_batch(4, 64)
  rows = [np.flatnonzero((x == row).all(1))[0] for row in batch["image"]]
  np.testing.assert_array_equal(batch["label"], y[rows])
  np.testing.assert_array_equal(batch["noise"], z[rows])
  seen = [(b["label"][b["mask"]], b["label"][~b["mask"]]) for b in ds.iterate(256)]
  np.testing.assert_array_equal(np.concatenate([s for s, _ in seen]), y)
  assert all((pad == -1).all() for _, pad in seen)
  assert pairs_lib.PairsDataset(plain).num_classes == 0

  # Labels beyond the recorded classes (a hand-made or damaged directory) are refused on loading.
  chunk = pairs_lib.read_chunk(labelled, 1)
  pairs_lib.write_chunk(labelled, 1, chunk["z"], chunk["x"], chunk["nfe"], labels=chunk["y"] + 5)
  with pytest.raises(ValueError, match=r"must lie in \[0, 2\).*found 0 \.\. 6"):
    pairs_lib.PairsDataset(labelled)


def test_chunk_labels_are_checked(tmp_path):
  z = np.zeros((4, 2), np.float32)
  for labels, match in ((np.array([0, 1, 2]), r"4 classes >= 0.*shape \(3,\)"),
                        (np.array([0, 1, -1, 0]), r"minimum -1"),
                        (np.array([0.0, 1.0, 0.0, 1.0]), r"dtype float64")):
    with pytest.raises(ValueError, match=match):
      pairs_lib.write_chunk(str(tmp_path), 0, z, z, 1, labels=labels)
  assert not os.listdir(tmp_path)
  pairs_lib.write_chunk(str(tmp_path), 0, z, z, 1, labels=np.array([0, 1, 2, 1], np.int64))
  chunk = pairs_lib.read_chunk(str(tmp_path), 0)
  assert chunk["y"].dtype == np.int32 and chunk["y"].tolist() == [0, 1, 2, 1]


def test_a_class_conditional_student_needs_a_teacher_of_its_classes(tmp_path):
  """check_pairs_fit / check_pairs_compatible: a network of ``num_classes`` classes trains on
  the pairs of a teacher of as many classes; unlabelled pairs or another count are refused by
  name; an unconditional student may use labelled pairs (it ignores the labels)."""
  from configs.rectified_flow import digits_2rf  # pylint: disable=import-outside-toplevel
  config = digits_2rf.get_config()
  shape = train.data_shape(config)
  directory = str(tmp_path / "pairs")
  os.makedirs(directory)
  meta = {"shape": list(shape), "process": repr(train.get_process(config)),
          "num_classes": 10}
  pairs_lib.write_meta(directory, meta)
  config.data.pairs_dir = directory
  train.check_pairs_compatible(config)  # unconditional student, labelled pairs
  config.model.num_classes = config.data.num_classes = 10
  train.check_pairs_compatible(config)
  config.model.num_classes = config.data.num_classes = 3
  with pytest.raises(ValueError, match=r"config.model.num_classes=3, but .* come from a teacher "
                                       r"of 10 classes"):
    train.check_pairs_compatible(config)
  pairs_lib.write_meta(directory, {k: v for k, v in meta.items() if k != "num_classes"})
  with pytest.raises(ValueError, match=r"config.model.num_classes=3, but .* unconditional "
                                       r"teacher: they carry no class labels"):
    train.check_pairs_compatible(config)


def test_class_conditional_reflow_and_distill_chain_through_workdirs(tmp_path):
  """--mode=train of a class-conditional digits U-Net -> --mode=reflow (labelled pairs) ->
  --mode=distill (a one-step class-conditional generator), tiny, in process. The student's
  loss reads the pairs' labels; its sampler draws classes; ``class_label`` fixes them."""
  from configs.rectified_flow import digits_1rf, digits_distill  # pylint: disable=import-outside-toplevel
  from jaxgen import evaluate  # pylint: disable=import-outside-toplevel

  def tiny(config, n_iters):
    config.model.nf, config.model.ch_mult, config.model.num_res_blocks = 8, (1, 2), 1
    config.model.attn_resolutions = ()
    config.model.num_classes = config.data.num_classes = 10
    config.training.batch_size = config.eval.batch_size = 16
    config.training.n_iters = config.training.log_every = n_iters
    config.training.eval_every = 0
    config.sampling.num_samples = config.sampling.batch_size = 8
    reflow = config.reflow
    reflow.num_pairs, reflow.chunk_size, reflow.batch_size = 48, 32, 16
    reflow.solver, reflow.num_steps = "euler", 3
    return config

  teacher, student = str(tmp_path / "teacher"), str(tmp_path / "student")
  train.train_and_evaluate(tiny(digits_1rf.get_config(), 2), teacher)
  summary = rectified_flow.run_reflow(tiny(digits_1rf.get_config(), 2), teacher)
  assert summary["complete"] and summary["num_chunks"] == 2
  pairs_dir = os.path.join(teacher, "reflow_pairs")
  _, x, y = pairs_lib.load_pairs(pairs_dir, with_labels=True)
  assert x.shape == (48, 8, 8, 1) and y.min() >= 0 and y.max() < 10 and len(set(y)) > 3

  # The labels reach the loss: other labels, another loss.
  config = tiny(digits_distill.get_config(), 2)
  config.reflow.init_workdir = teacher
  config.data.pairs_dir = pairs_dir
  setup = train.Setup(config)
  _, state = train.load_state(tiny(digits_1rf.get_config(), 2), teacher)
  ds = data_lib.get_dataset(config.data, config.data.train_split, seed=0)
  batch = setup.preprocess(jax.random.PRNGKey(0), ds.get_batch(0, 16), train=True)
  assert batch["label"].tolist() == ds.get_batch(0, 16)["label"].tolist()
  a = float(setup.loss_fn(state.ema_params, jax.random.PRNGKey(1), batch, train=False)[0])
  b = float(setup.loss_fn(state.ema_params, jax.random.PRNGKey(1),
                          {**batch, "label": (batch["label"] + 1) % 10}, train=False)[0])
  assert np.isfinite(a) and a != b

  config.training.eval_every = 2  # the periodic evaluation: held-out loss, bits/dim, grid
  config.eval.num_bpd_batches, config.eval.rtol, config.eval.atol = 1, 1e-2, 1e-2
  summary = rectified_flow.run_distill(config, student)
  # An unconditional student cannot be warm-started from the class-conditional teacher: the
  # refusal names the classes, and nothing is written.
  plain = tiny(digits_distill.get_config(), 2)
  plain.model.num_classes = plain.data.num_classes = 0
  plain.reflow.init_workdir, plain.data.pairs_dir = teacher, pairs_dir
  with pytest.raises(ValueError, match=r"teacher has num_classes=10, config.model.num_classes=0"):
    rectified_flow.run_distill(plain, str(tmp_path / "plain"))
  assert not os.path.exists(tmp_path / "plain" / "checkpoints")
  print({k: summary[k] for k in summary if "bpd" in k or "loss" in k})
  assert summary["final_step"] == 2 and summary["sample_nfe"] == 1
  setup, state = train.load_state(config, student)
  # Four steps from a zero-initialised output layer barely move the velocity (the labels change
  # samples by ~1e-9): perturbed parameters make the class visible in one step.
  params = jax.tree_util.tree_map(
      lambda p: p + 0.05 * jax.random.normal(jax.random.PRNGKey(5), p.shape, p.dtype),
      state.ema_params)
  samples, nfe, labels = evaluate.generate_samples(setup, params, parallel.make_mesh(), 8, seed=2,
                                                   return_labels=True)
  assert nfe == 1 and samples.shape == (8, 8, 8, 1) and np.isfinite(samples).all()
  assert labels.shape == (8,) and len(set(labels.tolist())) > 1
  # The sampler is one Euler step of the student's velocity at the classes it reports.
  key, _ = evaluate.draw_class_labels(jax.random.fold_in(jax.random.PRNGKey(2), 0), 8, 10)
  z = setup.process.prior_sample(key, (8, 8, 8, 1))
  velocity_fn = rectified_flow.velocity_fn_from_setup(setup)
  for classes, expected_samples in ((labels, samples), ((labels + 1) % 10, None)):
    x, _ = rectified_flow.euler_generate(
        lambda y, t, c=jnp.asarray(classes): velocity_fn(params, y, t, c), z, setup.process, 1)
    if expected_samples is not None:
      np.testing.assert_allclose(np.asarray(x), expected_samples, rtol=1e-5, atol=1e-5)
    else:
      assert np.abs(np.asarray(x) - samples).max() > 1e-3
  config.sampling.class_label = 4
  fixed, _, fixed_labels = evaluate.generate_samples(train.Setup(config), params,
                                                     parallel.make_mesh(), 8, seed=2,
                                                     return_labels=True)
  assert (fixed_labels == 4).all() and np.abs(fixed - samples).max() > 1e-3
