"""Tests of jaxgen.models: score_sde parameter parity, forward passes, mixed precision, configs."""
import importlib
import re

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import base
from jaxgen import losses, models, processes, train
from jaxgen.models import layers, unet

# Parameter counts of score_sde's CIFAR-10 models (32x32x3 input).
SCORE_SDE_COUNTS = {
    "configs.cifar10.vp_ddpmpp_continuous": 61_804_419,
    "configs.cifar10.vp_ddpmpp_deep_continuous": 106_632_579,
    "configs.cifar10.ve_ncsnpp_continuous": 62_758_915,
    "configs.cifar10.ve_ncsnpp_deep_continuous": 107_587_075,
    "configs.cifar10.vp_ddpm_continuous": 35_218_947,
}


@pytest.mark.parametrize("config_module, expected", sorted(SCORE_SDE_COUNTS.items()))
def test_score_sde_parameter_counts(config_module, expected):
  config = importlib.import_module(config_module).get_config()
  models.validate_model_config(config.model, config.data)
  model = models.get_model(config.model, config.data)
  shapes = models.abstract_params(model, (1, 32, 32, 3), (1,))
  assert models.count_params(shapes) == expected
  assert all(s.dtype == jnp.float32 for s in jax.tree_util.tree_leaves(shapes))


def _tiny(name="ddpmpp", **overrides):
  config = base.get_base_config()
  config.model.dropout = 0.0
  config.data.image_size, config.data.num_channels = 8, 3
  model = config.model
  model.name = name
  model.nf, model.ch_mult, model.num_res_blocks, model.attn_resolutions = 16, (1, 2), 1, (4,)
  for key, value in overrides.items():
    setattr(model, key, value)
  models.validate_model_config(config.model, config.data)
  return config, models.get_model(config.model, config.data)


def _params(model, x_shape, cond_shape, seed=0):
  """Random float32 parameters from numpy (no XLA init compile); zero-init layers made active."""
  rng = np.random.default_rng(seed)
  shapes = models.abstract_params(model, x_shape, cond_shape)
  return jax.tree_util.tree_map(
      lambda s: jnp.asarray(rng.normal(size=s.shape) * 0.1, jnp.float32), shapes)


def _run(model, x, cond, y=None, train=False, params=None):
  if params is None:
    params = _params(model, x.shape, cond.shape)
  out = model.apply({"params": params}, x, cond, y, train=train,
                    rngs={"dropout": jax.random.PRNGKey(1)})
  return params, out


VARIANTS = [
    dict(name="ddpmpp"),
    dict(name="ddpmpp", resblock_type="ddpm", progressive="output_skip",
         progressive_input="input_skip", progressive_combine="cat"),
    dict(name="ncsnpp", fir=True, progressive_input="residual", embedding_type="fourier",
         scale_by_sigma=True),
    dict(name="ncsnpp", fir=True, progressive="residual", progressive_input="residual",
         resblock_type="ddpm", remat=True),
    dict(name="ddpm"),
]


@pytest.mark.parametrize("overrides", VARIANTS, ids=lambda o: "-".join(map(str, o.values())))
def test_tiny_forward_shapes_and_finite(overrides):
  _, model = _tiny(**overrides)
  x = jax.random.normal(jax.random.PRNGKey(2), (2, 8, 8, 3))
  cond = jnp.array([0.5, 20.0])
  params, out = _run(model, x, cond, train=True)
  assert out.shape == x.shape and out.dtype == jnp.float32
  assert bool(jnp.all(jnp.isfinite(out)))
  assert all(p.dtype == jnp.float32 for p in jax.tree_util.tree_leaves(params))


@pytest.mark.parametrize("name", ["ddpmpp", "ncsnpp", "ddpm", "unet"])
def test_image_networks_name_bad_input_shapes(name):
  """A flat x, or a cond that is not one number per image, is refused with both shapes."""
  _, model = _tiny(name=name)
  with pytest.raises(ValueError, match=r"\(2, 192\) and \(2,\)"):
    jax.eval_shape(lambda x, c: model.init(jax.random.PRNGKey(0), x, c),
                   jnp.zeros((2, 192)), jnp.zeros((2,)))
  with pytest.raises(ValueError, match=r"\(2, 8, 8, 3\) and \(3,\)"):
    jax.eval_shape(lambda x, c: model.init(jax.random.PRNGKey(0), x, c),
                   jnp.zeros((2, 8, 8, 3)), jnp.zeros((3,)))


def test_scale_by_sigma_divides_by_cond():
  _, plain = _tiny(scale_by_sigma=False, embedding_type="fourier")
  _, scaled = _tiny(scale_by_sigma=True, embedding_type="fourier")
  x = jax.random.normal(jax.random.PRNGKey(3), (2, 8, 8, 3))
  cond = jnp.array([0.5, 4.0])
  params, a = _run(plain, x, cond)
  b = scaled.apply({"params": params}, x, cond)
  np.testing.assert_allclose(b, a / cond[:, None, None, None], rtol=1e-5, atol=1e-6)


def test_bfloat16_compute_matches_float32():
  _, model32 = _tiny(dropout=0.0)
  _, model16 = _tiny(dropout=0.0, dtype="bfloat16")
  x = jax.random.normal(jax.random.PRNGKey(4), (2, 8, 8, 3))
  cond = jnp.array([10.0, 500.0])
  params, out32 = _run(model32, x, cond)
  shapes16 = models.abstract_params(model16, x.shape, cond.shape)
  assert all(p.dtype == jnp.float32 for p in jax.tree_util.tree_leaves(shapes16))
  out16 = jax.jit(model16.apply)({"params": params}, x, cond)  # one compile, not op by op
  assert out16.dtype == jnp.float32
  rel = float(jnp.linalg.norm(out16 - out32) / jnp.linalg.norm(out32))
  assert rel < 0.05, rel


def test_class_labels():
  _, model = _tiny(num_classes=10)
  _, unlabelled = _tiny(num_classes=0)
  x = jnp.zeros((2, 8, 8, 3))
  cond = jnp.array([1.0, 2.0])
  shapes = models.abstract_params(model, x.shape, cond.shape)
  plain = models.abstract_params(unlabelled, x.shape, cond.shape)
  assert models.count_params(shapes) - models.count_params(plain) == 10 * 4 * 16
  params, _ = _run(model, x, cond, y=jnp.array([1, 2]))
  out_a = model.apply({"params": params}, x, cond, jnp.array([1, 2]))
  out_b = model.apply({"params": params}, x, cond, jnp.array([3, 2]))
  assert out_a.shape == x.shape
  assert not np.allclose(out_a[0], out_b[0]) and np.allclose(out_a[1], out_b[1])
  with pytest.raises(ValueError, match="num_classes"):
    model.apply({"params": params}, x, cond)


def test_unet_forward():
  config = base.get_base_config()
  config.data.image_size, config.data.num_channels = 8, 1
  config.model.name = "unet"
  config.model.nf, config.model.ch_mult, config.model.num_res_blocks = 16, (1, 2), 1
  config.model.attn_resolutions, config.model.dropout = (4,), 0.0
  models.validate_model_config(config.model, config.data)
  model = models.get_model(config.model, config.data)
  x = jax.random.normal(jax.random.PRNGKey(5), (3, 8, 8, 1))
  params, out = _run(model, x, jnp.array([1.0, 200.0, 999.0]), train=True)
  assert out.shape == x.shape and bool(jnp.all(jnp.isfinite(out)))
  assert 10_000 < models.count_params(params) < 300_000


@pytest.mark.parametrize("shape", [(4, 2), (4, 3, 5)])
def test_mlp_forward(shape):
  config = base.get_base_config()
  config.model.name = "mlp"
  config.model.hidden = (32, 32)
  config.model.embedding_dim = 16
  models.validate_model_config(config.model)
  model = models.get_model(config.model)
  x = jnp.ones(shape)
  cond = jnp.linspace(0.0, 999.0, shape[0])
  if len(shape) == 2:  # init_params (jitted RNG init) once; numpy parameters otherwise
    params = models.init_params(model, jax.random.PRNGKey(0), x.shape, cond.shape)
    assert all(p.dtype == jnp.float32 for p in jax.tree_util.tree_leaves(params))
  else:
    params = None
  _, out = _run(model, x, cond, params=params)
  assert out.shape == x.shape and out.dtype == jnp.float32


def test_get_model_unknown_name():
  config = ml_collections.ConfigDict({"name": "resnet9000"})
  with pytest.raises(ValueError, match="resnet9000"):
    models.get_model(config)
  with pytest.raises(ValueError, match="resnet9000"):
    models.validate_model_config(config)


def test_validate_rejects_bad_image_size_and_attention():
  config = base.get_base_config()  # ch_mult (1, 2, 2, 2): needs a multiple of 8
  config.data.image_size = 28
  with pytest.raises(ValueError, match="image_size=28"):
    models.validate_model_config(config.model, config.data)
  config.data.image_size = 32
  config.model.attn_resolutions = (12,)
  with pytest.raises(ValueError, match=r"attn_resolutions=\(12,\)"):
    models.validate_model_config(config.model, config.data)
  config.model.attn_resolutions = (16,)
  config.model.progressive = "sideways"
  with pytest.raises(ValueError, match="sideways"):
    models.validate_model_config(config.model, config.data)
  config.model.progressive = "none"
  config.model.name, config.model.ch_mult = "unet", (1, 2)
  config.data.image_size = 7
  with pytest.raises(ValueError, match="image_size=7"):
    models.validate_model_config(config.model, config.data)
  config.data.image_size, config.model.dtype = 8, "float8"
  with pytest.raises(ValueError, match="float8"):
    models.validate_model_config(config.model, config.data)


def test_fir_resampling_preserves_constants():
  x = jnp.full((1, 8, 8, 2), 3.0)
  up = layers.upsample_2d(x)
  down = layers.downsample_2d(x)
  assert up.shape == (1, 16, 16, 2) and down.shape == (1, 4, 4, 2)
  np.testing.assert_allclose(up[:, 2:-2, 2:-2], 3.0, rtol=1e-6)  # away from zero padding
  np.testing.assert_allclose(down[:, 1:-1, 1:-1], 3.0, rtol=1e-6)
  np.testing.assert_allclose(layers.upsample_2d(x, (1, 1)), layers.naive_upsample_2d(x))
  np.testing.assert_allclose(layers.downsample_2d(x, (1, 1)), layers.naive_downsample_2d(x))


@pytest.mark.parametrize("name", ["ddpmpp", "ncsnpp"])
def test_fourier_linear_embedding_runs_on_edm_conditioning(name):
  """EDM's NCSN++ embeds ``c_noise = log(sigma) / 4`` by Fourier features of the value itself
  (``fourier_linear``): accepted for NCSN++/DDPM++, finite over EDM's whole sigma range (where
  ``c_noise < 0``) and telling the noise levels apart; ``fourier`` (log of ``cond``) cannot."""
  extra = dict(fir=True, progressive_input="residual") if name == "ncsnpp" else {}
  _, model = _tiny(name=name, embedding_type="fourier_linear", **extra)
  process = processes.EDMPath()
  sigma = jnp.array([process.sigma_min, 0.5, 1.0, process.sigma_max])
  cond = losses.noise_conditioning(process, sigma)
  assert float(cond.min()) < 0
  x = jnp.broadcast_to(jax.random.normal(jax.random.PRNGKey(6), (1, 8, 8, 3)), (4, 8, 8, 3))
  params, out = _run(model, x, cond)
  assert out.shape == x.shape and bool(jnp.all(jnp.isfinite(out)))
  for i in range(1, 4):
    assert not np.allclose(out[0], out[i])
  _, log_model = _tiny(name=name, embedding_type="fourier", **extra)
  assert not bool(jnp.all(jnp.isfinite(log_model.apply({"params": params}, x, cond))))


def test_unet_docstring_states_its_parameter_count():
  match = re.search(r"it has ([\d,]+) parameters on one-channel images\s+\(([\d,]+) on three",
                    unet.__doc__)
  assert match, unet.__doc__
  for channels, stated in zip((1, 3), match.groups()):
    model = unet.UNet(nf=32, ch_mult=(1, 2), num_res_blocks=1)
    shapes = models.abstract_params(model, (1, 8, 8, channels), (1,))
    assert models.count_params(shapes) == int(stated.replace(",", ""))


def test_ddpm_group_norm_groups_equal_score_sde_from_nf_128():
  """DDPM's GroupNorm takes ``min(C // 4, 32)`` groups; score_sde's DDPM takes 32 at every width:
  the same at every width of the nf = 128 model, fewer groups below C = 128."""
  for width in (32, 64, 96, 128, 256, 512):
    assert layers.num_groups(width) == min(width // 4, 32)
  assert all(layers.num_groups(128 * m) == 32 for m in (1, 2, 2, 2))
  assert layers.num_groups(64) < 32


def test_count_flops_counts_products_where_they_run():
  """``models.count_flops``: 2 x multiply-adds of convolutions and matrix products, by hand for a
  3x3 convolution and a dense layer, a scan body times its length, a cond's costliest branch;
  the DDPM++ cont. network at one CIFAR-10 image gives the GPU issue's 21.7 GFLOP and EDM's
  DDPM++ (channel_mult 2, 2, 2) 42.4."""
  x = jax.ShapeDtypeStruct((2, 8, 8, 3), jnp.float32)
  w = jax.ShapeDtypeStruct((3, 3, 3, 16), jnp.float32)
  a = jax.ShapeDtypeStruct((2, 5), jnp.float32)
  b = jax.ShapeDtypeStruct((5, 7), jnp.float32)

  def conv(x, w):
    return jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))

  conv_flops = 2 * (2 * 8 * 8 * 16) * (3 * 3 * 3)
  assert models.count_flops(conv, x, w) == conv_flops
  assert models.count_flops(lambda a, b: (a @ b) * 2.0 + 1.0, a, b) == 2 * 2 * 7 * 5
  assert models.count_flops(lambda x, w: jnp.tanh(conv(x, w)).sum(), x, w) == conv_flops

  def scanned(a, b):
    return jax.lax.scan(lambda c, _: (c, c @ b), a, None, length=4)[1]

  assert models.count_flops(scanned, a, b) == 4 * 2 * 2 * 7 * 5
  square = jax.ShapeDtypeStruct((5, 5), jnp.float32)
  assert models.count_flops(lambda p, m: jax.lax.cond(p, lambda m: m @ m @ m, lambda m: m, m),
                            jax.ShapeDtypeStruct((), bool), square) == 2 * (2 * 5 * 5 * 5)
  for path, gflop in (("configs.cifar10.vp_ddpmpp_continuous", 21.69),
                      ("configs.cifar10.edm_ddpmpp", 42.38)):
    setup = train.Setup(importlib.import_module(path).get_config())
    params = jax.eval_shape(setup.init_state, jax.random.PRNGKey(0)).params
    flops = models.count_flops(lambda p, x, t: setup.model_fn(p, x, t), params,
                               jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32),
                               jax.ShapeDtypeStruct((1,), jnp.float32))
    assert abs(flops / 1e9 - gflop) < 0.01, (path, flops)
