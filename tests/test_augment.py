"""EDM's non-leaky augmentation (`jaxgen.augment`): the resampling filter's closed-form properties,
exact identities (no transform, integer shifts with reflection, flips), accuracy on a smooth image
against the transformed function itself, the labels against the transforms they name, the draw
frequencies, sharded draws, the network's label input and the EDM loss and config."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from jaxgen import augment, losses, models, parallel, processes, train
from conftest import FAST_COMPILE  # pylint: disable=wrong-import-order


def _rotate(theta):
  c, s = math.cos(theta), math.sin(theta)
  return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _smooth(height, width):
  """A smooth function of centred pixel coordinates (periods 9 to 16 pixels) and its samples."""
  def f(x, y):
    return (np.sin(2 * np.pi * x / 16 + 0.3) * np.cos(2 * np.pi * y / 11)
            + 0.5 * np.cos(2 * np.pi * (x + y) / 9))
  yy, xx = np.meshgrid(np.arange(height) - (height - 1) / 2, np.arange(width) - (width - 1) / 2,
                       indexing="ij")
  return f, xx, yy, jnp.asarray(f(xx, yy)[None, :, :, None], jnp.float32)


def test_filter_is_an_orthonormal_wavelet_low_pass():
  """sum h = sqrt 2, orthonormal to its even shifts (what makes g_inv = I exact), and a high-pass
  with 6 vanishing moments."""
  h = np.asarray(augment.SYM6)
  assert len(h) == 12
  np.testing.assert_allclose(h.sum(), math.sqrt(2), rtol=1e-12)
  for k in range(6):
    np.testing.assert_allclose(np.dot(h[2 * k:], h[:len(h) - 2 * k]), float(k == 0), atol=1e-11)
  n = np.arange(12)
  g = (-1.0) ** n * h[::-1]
  for m in range(6):
    assert abs(np.sum(n ** m * g)) < 1e-7 * 11 ** m, m
  assert abs(np.sum(n ** 6 * g)) > 1.0  # exactly 6


@pytest.mark.parametrize("shape", [(3, 8, 8, 3), (2, 12, 7, 1), (1, 32, 32, 3)])
def test_identity_returns_the_images(shape):
  x = jax.random.normal(jax.random.PRNGKey(0), shape)
  y = augment.affine_resample(x, jnp.eye(3))
  np.testing.assert_allclose(np.asarray(y), np.asarray(x), atol=2e-6)


def test_integer_shifts_read_the_reflected_image():
  """A shift by whole pixels is exact everywhere, the border filled by reflection (edge pixel not
  repeated), also for random (not smooth) images."""
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 10, 9, 2))
  g = np.eye(3)
  g[0, 2], g[1, 2] = -3.0, 2.0   # output (x, y) reads input (x - 3, y + 2)
  y = np.asarray(augment.affine_resample(x, jnp.asarray(g)))
  padded = np.pad(np.asarray(x), ((0, 0), (9, 9), (8, 8), (0, 0)), mode="reflect")
  expected = padded[:, 9 + 2:9 + 2 + 10, 8 - 3:8 - 3 + 9]
  np.testing.assert_allclose(y, expected, atol=2e-6)


@pytest.mark.parametrize("name, g_inv, bound", [
    ("rotation 0.1", _rotate(0.1), 0.03), ("rotation 0.5", _rotate(0.5), 0.03),
    ("rotation pi/2", _rotate(math.pi / 2), 0.03), ("rotation 2.0", _rotate(2.0), 0.05),
    ("zoom in 1.25", np.diag([0.8, 0.8, 1.0]), 0.03),
    ("zoom out 0.8", np.diag([1.25, 1.25, 1.0]), 0.03),
    ("anisotropic", np.diag([1.15, 1 / 1.15, 1.0]), 0.03),
    ("fractional shift", np.array([[1, 0, 0.37], [0, 1, -1.6], [0, 0, 1.0]]), 0.03)])
def test_transforms_of_a_smooth_image(name, g_inv, bound):
  """Against the smooth function at the transformed coordinates, in the image's interior: rms
  error under ``bound`` times the signal's rms (measured 1.2-2.6 %; a filter centre off by 0.4
  of a 2x sample gave 23 % at pi / 2)."""
  f, xx, yy, image = _smooth(32, 32)
  out = np.asarray(augment.affine_resample(image, jnp.asarray(g_inv)))[0, :, :, 0]
  sx = g_inv[0, 0] * xx + g_inv[0, 1] * yy + g_inv[0, 2]
  sy = g_inv[1, 0] * xx + g_inv[1, 1] * yy + g_inv[1, 2]
  ref = f(sx, sy)
  inner = (np.abs(xx) < 10) & (np.abs(yy) < 10)
  err = np.sqrt(np.mean((out - ref)[inner] ** 2)) / np.sqrt(np.mean(ref[inner] ** 2))
  print(f"{name}: relative rms error {err:.4f}")
  assert err < bound, (name, err)


def test_flips_are_exact_and_labelled():
  """x-flips only (p = 1, others off): a fair coin per image, the flipped images exactly
  mirrored, every other label zero."""
  x = jax.random.normal(jax.random.PRNGKey(2), (256, 6, 5, 2))
  y, labels = augment.augment(jax.random.PRNGKey(3), x, 1.0, xflip=1.0, yflip=0.0, scale=0.0,
                              rotate_frac=0.0, aniso=0.0, translate_frac=0.0)
  y, labels, x = np.asarray(y), np.asarray(labels), np.asarray(x)
  flipped = labels[:, 0] == 1
  assert 0.4 < flipped.mean() < 0.6
  np.testing.assert_array_equal(y[flipped], x[flipped][:, :, ::-1])
  np.testing.assert_array_equal(y[~flipped], x[~flipped])
  assert np.all(labels[:, 1:] == 0)
  # y-flips likewise, along the other axis.
  y, labels = augment.augment(jax.random.PRNGKey(4), jnp.asarray(x), 1.0, xflip=0.0, yflip=1.0,
                              scale=0.0, rotate_frac=0.0, aniso=0.0, translate_frac=0.0)
  flipped = np.asarray(labels)[:, 1] == 1
  np.testing.assert_array_equal(np.asarray(y)[flipped], x[flipped][:, ::-1])


def test_edm_cifar10_frequencies():
  """EDM's --augment=0.12: an x-flip on half the images, a y-flip on 6 %, each geometric transform
  on 12 % (its labels nonzero; the stretch's axis rotated on half of those), the label values as drawn: scale ~ N(0, 1), rotation angle
  uniform on the circle, translation ~ N(0, 1) per axis."""
  n = 8192
  x = jnp.zeros((n, 4, 4, 1))
  _, labels = jax.jit(lambda k: augment.augment(k, x, 0.12))(jax.random.PRNGKey(5))
  labels = np.asarray(labels)
  on = labels != 0
  freq = on.mean(axis=0)
  # The anisotropic stretch runs along a rotated axis half the time (aniso_rotate_prob).
  expected = [0.5, 0.06, 0.12, 0.12, 0.12, 0.12, 0.06, 0.12, 0.12]
  for name, f, e in zip(augment.LABELS, freq, expected):
    assert abs(f - e) < 4 * math.sqrt(e * (1 - e) / n) + 1e-3, (name, f, e)
  scale = labels[on[:, 2], 2]
  assert abs(scale.mean()) < 0.1 and abs(scale.std() - 1) < 0.1
  theta = np.arctan2(labels[:, 4], labels[:, 3] + 1)[on[:, 4]]
  assert abs(np.mean(np.cos(theta))) < 0.1 and abs(np.mean(np.abs(theta)) - math.pi / 2) < 0.15
  shift = labels[on[:, 7]][:, 7:9]
  assert np.all(shift != 0) and abs(shift.std() - 1) < 0.1
  # Translation moves both axes together: either both labels are zero or neither.
  np.testing.assert_array_equal(on[:, 7], on[:, 8])


def test_labels_name_the_applied_transform():
  """Each label set rebuilt as a matrix and applied with `affine_resample` gives the image that
  `augment` returned: what the network is told is what was done (rotations, scales and shifts
  together, p = 1)."""
  x = jax.random.normal(jax.random.PRNGKey(6), (16, 8, 8, 1))
  y, labels = augment.augment(jax.random.PRNGKey(7), x, 1.0, xflip=0.0, yflip=0.0,
                              aniso=0.0)
  labels = np.asarray(labels, np.float64)
  g = []
  for lab in labels:
    s = 2.0 ** (lab[2] * 0.2)
    theta = math.atan2(lab[4], lab[3] + 1)
    shift = np.array([[1, 0, -lab[7] * 8 * 0.125], [0, 1, -lab[8] * 8 * 0.125], [0, 0, 1.0]])
    g.append(np.diag([1 / s, 1 / s, 1.0]) @ _rotate(theta) @ shift)
  expected = augment.affine_resample(x, jnp.asarray(np.stack(g), jnp.float32))
  np.testing.assert_allclose(np.asarray(y), np.asarray(expected), atol=1e-4)
  assert np.all(labels[:, 2] != 0) and np.all(labels[:, 7] != 0)


def test_sharded_augmentation_equals_the_global_batch():
  """Inside a shard_map over 8 devices each device augments its rows exactly as a jit of the
  global batch does (the draws are the global batch's rows)."""
  assert jax.device_count() >= 8, "needs XLA_FLAGS=--xla_force_host_platform_device_count=8"
  mesh8 = parallel.make_mesh(jax.devices()[:8])
  x = jax.random.normal(jax.random.PRNGKey(8), (16, 8, 8, 3))
  key = jax.random.PRNGKey(9)
  ref_y, ref_labels = augment.augment(key, x, 0.5)
  per_device = parallel.shard_map(lambda xs: augment.augment(key, xs, 0.5), mesh8,
                                  in_specs=P(parallel.DATA_AXIS),
                                  out_specs=(P(parallel.DATA_AXIS), P(parallel.DATA_AXIS)))
  y, labels = jax.jit(per_device)(x)
  np.testing.assert_array_equal(np.asarray(labels), np.asarray(ref_labels))
  np.testing.assert_allclose(np.asarray(y), np.asarray(ref_y), atol=1e-5)


@pytest.mark.parametrize("kwargs, match", [
    (dict(p=1.5), "p must be in"), (dict(p=float("nan")), "p must be in"),
    (dict(p=0.1, scale=-1.0), "scale"), (dict(p=0.1, aniso_std=float("inf")), "aniso_std"),
    (dict(p=0.1, rotate_frac=True), "rotate_frac")])
def test_bad_arguments_are_named(kwargs, match):
  with pytest.raises(ValueError, match=match):
    augment.augment(jax.random.PRNGKey(0), jnp.zeros((2, 4, 4, 1)), **kwargs)


def test_bad_image_shapes_are_refused():
  with pytest.raises(ValueError, match="H, W >= 2"):
    augment.augment(jax.random.PRNGKey(0), jnp.zeros((2, 16)), 0.1)
  with pytest.raises(ValueError, match="H, W >= 2"):
    augment.augment(jax.random.PRNGKey(0), jnp.zeros((2, 1, 4, 1)), 0.1)


@pytest.mark.parametrize("name", ["ddpmpp", "ddpm", "unet"])
def test_networks_read_the_labels(name):
  """``augment_dim = 9`` adds ``9 x`` the noise features' width of parameters (EDM's bias-free
  ``map_augment``); labels of zero give the output of no labels; other labels another output;
  labels for a network without them, or of the wrong width, are refused."""
  from configs import base  # pylint: disable=import-outside-toplevel
  config = base.get_base_config()
  config.model.name = name
  config.model.nf, config.model.ch_mult, config.model.num_res_blocks = 16, (1, 2), 1
  config.model.attn_resolutions = ()
  config.data.image_size = 8
  plain = models.get_model(config.model, config.data)
  config.model.augment_dim = augment.AUGMENT_DIM
  models.validate_model_config(config.model, config.data)
  net = models.get_model(config.model, config.data)
  x = jax.random.normal(jax.random.PRNGKey(0), (4, 8, 8, 3))
  cond = jnp.linspace(1.0, 500.0, 4)
  params = models.init_params(net, jax.random.PRNGKey(1), x.shape, (4,))
  width = 16 // 2 if name == "unet" else 16     # the noise features' width
  assert (models.count_params(params)
          - models.count_params(models.abstract_params(plain, x.shape, (4,)))) == 9 * width
  # Random parameters: the zero-initialized output layers would hide what the embedding reads.
  leaves, treedef = jax.tree_util.tree_flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(3), len(leaves))
  params = jax.tree_util.tree_unflatten(
      treedef, [0.3 * jax.random.normal(k, p.shape) for k, p in zip(keys, leaves)])
  apply = lambda **kw: net.apply({"params": params}, x, cond, **kw)
  base_out = apply()
  np.testing.assert_array_equal(apply(augment_labels=jnp.zeros((4, 9))), base_out)
  labels = jax.random.normal(jax.random.PRNGKey(2), (4, 9))
  change = jnp.max(jnp.abs(apply(augment_labels=labels) - base_out)) / jnp.max(jnp.abs(base_out))
  assert float(change) > 1e-2, float(change)
  with pytest.raises(ValueError, match="augment_labels must have shape"):
    apply(augment_labels=jnp.zeros((4, 5)))
  plain_params = models.init_params(plain, jax.random.PRNGKey(1), x.shape, (4,))
  with pytest.raises(ValueError, match="augment_dim=0"):
    plain.apply({"params": plain_params}, x, cond, augment_labels=labels)


def _edm_digits_config():
  from configs.digits import vp_unet  # pylint: disable=import-outside-toplevel
  config = vp_unet.get_config()
  config.method = "edm"
  config.process.name = "edm"
  config.process.sigma_min, config.process.sigma_max = 0.002, 80.0
  config.model.prediction = "x0"
  config.training.batch_size = 16
  config.training.augment_p = 0.12
  config.model.augment_dim = augment.AUGMENT_DIM
  return config


def test_edm_loss_augments_training_batches_only():
  """With ``training.augment_p`` the EDM loss of a training batch sees augmented images and their
  labels (another loss than without), an evaluation loss (``train=False``) the data itself."""
  config = _edm_digits_config()
  train.validate_config(config, num_devices=8)
  setup = train.Setup(config)
  state = setup.init_state(jax.random.PRNGKey(0))
  x = jax.random.uniform(jax.random.PRNGKey(1), (16, 8, 8, 1)) * 2 - 1
  batch = {"image": x}
  no_aug = losses.edm_loss(setup.model_fn, setup.process, reduce_mean=False)
  key = jax.random.PRNGKey(2)
  with_aug = jax.jit(lambda p: setup.loss_fn(p, key, batch, train=True)[0],
                     compiler_options=FAST_COMPILE)(state.params)
  without = jax.jit(lambda p: no_aug(p, key, batch, train=True)[0],
                    compiler_options=FAST_COMPILE)(state.params)
  assert abs(float(with_aug) - float(without)) > 1e-4 * abs(float(without))
  np.testing.assert_allclose(float(setup.loss_fn(state.params, key, batch, train=False)[0]),
                             float(no_aug(state.params, key, batch, train=False)[0]), rtol=1e-6)


def test_edm_training_with_augmentation_steps():
  """A few jitted train steps of the digits U-Net with EDM's loss and augmentation: finite losses,
  the label embedding's weights learn."""
  config = _edm_digits_config()
  setup = train.Setup(config)
  state = setup.init_state(jax.random.PRNGKey(0))
  step = jax.jit(setup.make_train_step(), compiler_options=FAST_COMPILE)
  from sklearn.datasets import load_digits  # pylint: disable=import-outside-toplevel
  digits = load_digits().images[:64].astype(np.float32) / 16.0 * 2 - 1
  before = jax.tree_util.tree_leaves(
      {k: v for k, v in state.params.items() if "Embedding" in k})
  for i in range(4):
    batch = {"image": jnp.asarray(digits[16 * i:16 * (i + 1), :, :, None])}
    state, metrics = step(state, batch)
    assert np.isfinite(float(metrics["loss"]))
  after = jax.tree_util.tree_leaves({k: v for k, v in state.params.items() if "Embedding" in k})
  assert any(not np.array_equal(a, b) for a, b in zip(before, after))
  kernel = state.params["ConditioningEmbedding_0"]["augment_embedding"]["kernel"]
  assert kernel.shape[0] == augment.AUGMENT_DIM


def _augmented_config(method):
  """The digits U-Net config with augmentation under another denoising loss."""
  from configs.digits import vp_unet  # pylint: disable=import-outside-toplevel
  config = vp_unet.get_config()
  config.training.batch_size = 16
  config.training.augment_p = 0.5
  config.model.augment_dim = augment.AUGMENT_DIM
  if method == "discrete":
    config.training.continuous = False
  elif method == "flow":
    config.method = "flow"
    config.process.name = "linear"
    config.model.prediction = "velocity"
  return config


@pytest.mark.parametrize("method", ["score", "discrete", "flow"])
def test_score_and_flow_losses_augment_training_batches_only(method):
  """``training.augment_p`` with the continuous and discrete score losses and flow matching (it
  was EDM's loss only): a training batch's loss is the unaugmented loss of the augmented images
  with their labels given to the network (same key), an evaluation loss that of the data itself;
  the labels reach the network (its label embedding gets a gradient) and a jitted train step
  stays finite."""
  config = _augmented_config(method)
  train.validate_config(config, num_devices=8)
  setup = train.Setup(config)
  plain_config = _augmented_config(method)
  plain_config.training.augment_p = 0.0
  state = setup.init_state(jax.random.PRNGKey(0))
  x = jax.random.uniform(jax.random.PRNGKey(1), (16, 8, 8, 1)) * 2 - 1
  key = jax.random.PRNGKey(2)
  x_aug, labels = augment.augment(jax.random.fold_in(key, 3), x, p=0.5)
  assert float(jnp.max(jnp.abs(x_aug - x))) > 0.1 and float(jnp.max(jnp.abs(labels))) > 0
  labelled = lambda params, y, t, **kwargs: setup.model_fn(params, y, t, augment_labels=labels,
                                                           **kwargs)
  by_hand = losses.get_loss_fn(plain_config, labelled, setup.process)
  plain = losses.get_loss_fn(plain_config, setup.model_fn, setup.process)
  run = lambda fn, images, train_: float(jax.jit(
      lambda p: fn(p, key, {"image": images}, train=train_)[0],
      compiler_options=FAST_COMPILE)(state.params))
  np.testing.assert_allclose(run(setup.loss_fn, x, True), run(by_hand, x_aug, True), rtol=1e-5)
  np.testing.assert_allclose(run(setup.loss_fn, x, False), run(plain, x, False), rtol=1e-6)
  batch = {"image": x}
  grads = jax.jit(jax.grad(lambda p: setup.loss_fn(p, key, batch, train=True)[0]),
                  compiler_options=FAST_COMPILE)(state.params)
  kernel_grad = grads["ConditioningEmbedding_0"]["augment_embedding"]["kernel"]
  assert float(jnp.max(jnp.abs(kernel_grad))) > 0
  step = jax.jit(setup.make_train_step(), compiler_options=FAST_COMPILE)
  state, metrics = step(state, batch)
  assert np.isfinite(float(metrics["loss"]))


def test_flow_matching_refuses_to_augment_pairs():
  """Coupled pairs (batch['noise']) cannot be augmented: the noise belongs to the original."""
  process = processes.LinearPath()
  model_fn = lambda params, x, t, **kwargs: x
  loss_fn = losses.flow_matching_loss(model_fn, process, augment=augment.augment)
  x = jnp.zeros((4, 8, 8, 1))
  with pytest.raises(ValueError, match="coupled pairs"):
    loss_fn(None, jax.random.PRNGKey(0), {"image": x, "noise": x})


@pytest.mark.parametrize("change, match", [
    (lambda c: setattr(c, "method", "cnf"), "needs config.method in"),
    (lambda c: setattr(c.training, "coupling", "minibatch_ot"), "cannot augment coupled pairs"),
    (lambda c: setattr(c.data, "pairs_dir", "/nonexistent/pairs"), "cannot augment coupled"),
    (lambda c: setattr(c.model, "augment_dim", 4), "augment_dim=9"),
    (lambda c: setattr(c.training, "augment_p", 1.5), "config.training.augment_p"),
    (lambda c: setattr(c.model, "augment_dim", -1), "model.augment_dim")])
def test_config_refusals_name_the_field(change, match):
  config = _edm_digits_config()
  change(config)
  if config.method != "edm":
    config.process.name = "linear" if config.method == "cnf" else "vp"
    config.model.prediction = "velocity" if config.method == "cnf" else "eps"
  with pytest.raises(ValueError, match=match):
    train.validate_config(config, num_devices=8)


def test_edm_cifar10_config_augments_as_edm():
  """configs/cifar10/edm_ddpmpp.py: --augment=0.12 and 9 labels; 1,152 parameters (9 x 128)
  more than EDM's Table 7 network."""
  import importlib  # pylint: disable=import-outside-toplevel
  config = importlib.import_module("configs.cifar10.edm_ddpmpp").get_config()
  assert config.training.augment_p == 0.12 and config.model.augment_dim == 9
  setup = train.Setup(config)
  abstract = jax.eval_shape(setup.init_state, jax.random.PRNGKey(0))
  assert models.count_params(abstract.params) == 55_732_739 + 9 * 128
  assert isinstance(setup.process, processes.EDMPath)
