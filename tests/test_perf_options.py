"""Performance options of the convolutional networks change speed, never the function.

``model.fused_norm`` (GroupNorm+swish with a hand-written backward pass) must give the values and
gradients of flax's GroupNorm followed by swish, with the same parameter tree; ``fast_dropout``
must drop with the configured rate, rescale the kept values, and be a function of the key.
"""
import collections

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import base
from jaxgen import models
from jaxgen.models import layers
from conftest import FAST_COMPILE, perturbed_params  # pylint: disable=wrong-import-order




def _jit(fn, **kwargs):
  return jax.jit(fn, compiler_options=FAST_COMPILE, **kwargs)


class _NormAct(nn.Module):
  act: object
  fused: bool
  dtype: str = "float32"

  @nn.compact
  def __call__(self, x):
    return layers.norm_act(x, self.dtype, self.act, self.fused)


def _rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.linalg.norm(a - b) / np.linalg.norm(a))


@pytest.mark.parametrize("act", ["swish", None])
@pytest.mark.parametrize("shape", [(3, 8, 8, 64), (2, 4, 4, 12), (2, 16, 5)])
def test_fused_norm_matches_flax_group_norm(act, shape):
  key = jax.random.PRNGKey(0)
  # A large mean and unequal channel scales, so that a wrong grouping or statistic shows.
  x = (jax.random.normal(key, shape) * jnp.linspace(0.5, 3.0, shape[-1]) + 2.0)
  plain, fused = _NormAct(act, False), _NormAct(act, True)
  params = plain.init(key, x)
  assert (jax.tree_util.tree_structure(params)
          == jax.tree_util.tree_structure(fused.init(key, x)))
  params = jax.tree_util.tree_map(
      lambda p: p + 0.3 * jax.random.normal(jax.random.PRNGKey(1), p.shape), params)
  y_plain, y_fused = plain.apply(params, x), fused.apply(params, x)
  assert _rel(y_plain, y_fused) < 1e-5
  w = jax.random.normal(jax.random.PRNGKey(2), y_plain.shape)
  loss = lambda m: (lambda p, x: jnp.sum(m.apply(p, x) * w))
  g_plain = jax.grad(loss(plain), argnums=(0, 1))(params, x)
  g_fused = jax.grad(loss(fused), argnums=(0, 1))(params, x)
  for a, b in zip(jax.tree_util.tree_leaves(g_plain), jax.tree_util.tree_leaves(g_fused)):
    assert _rel(a, b) < 1e-4, (a.shape, _rel(a, b))


class _FlaxGroupNorm(nn.Module):
  """flax's own ``nn.GroupNorm`` with the library's groups and epsilon: the reference."""

  @nn.compact
  def __call__(self, x):
    return nn.GroupNorm(num_groups=layers.num_groups(x.shape[-1]),
                        epsilon=layers.GN_EPS)(x.astype(jnp.float32))


class _GroupNorm(nn.Module):
  two_stage: bool

  @nn.compact
  def __call__(self, x):
    return layers.group_norm(x, "float32", self.two_stage)


@pytest.mark.parametrize("two_stage", [False, True])
@pytest.mark.parametrize("shape", [(3, 8, 8, 64), (2, 4, 4, 12), (2, 16, 5), (2, 3, 4, 4, 16)])
def test_group_norm_is_flax_group_norm(two_stage, shape):
  """``layers.group_norm`` (both statistics from one stacked reduction, NOTES.md run 18) is
  flax's ``nn.GroupNorm``: the same parameter tree, and values, gradients and forward-mode
  tangents up to float32 summation order."""
  x = (jax.random.normal(jax.random.PRNGKey(20), shape) * jnp.linspace(0.5, 3.0, shape[-1])
       + 2.0)
  ref, ours = _FlaxGroupNorm(), _GroupNorm(two_stage)
  params = ref.init(jax.random.PRNGKey(21), x)
  mine = ours.init(jax.random.PRNGKey(21), x)
  assert (jax.tree_util.tree_map(jnp.shape, params) == jax.tree_util.tree_map(jnp.shape, mine))
  params = jax.tree_util.tree_map(
      lambda p: p + 0.3 * jax.random.normal(jax.random.PRNGKey(22), p.shape), params)
  assert _rel(ref.apply(params, x), ours.apply(params, x)) < 1e-6
  w = jax.random.normal(jax.random.PRNGKey(23), shape)
  loss = lambda m: (lambda p, x: jnp.sum(jnp.tanh(m.apply(p, x)) * w))
  for a, b in zip(jax.tree_util.tree_leaves(jax.grad(loss(ref), argnums=(0, 1))(params, x)),
                  jax.tree_util.tree_leaves(jax.grad(loss(ours), argnums=(0, 1))(params, x))):
    assert _rel(a, b) < 1e-5, (a.shape, _rel(a, b))
  tangent = lambda m: jax.jvp(lambda y: m.apply(params, y), (x,), (w,))[1]
  assert _rel(tangent(ref), tangent(ours)) < 1e-5


def test_group_norm_forms_reject_bad_combinations():
  x = jnp.ones((2, 4, 4, 8))
  with pytest.raises(ValueError, match="two_stage=True"):
    layers.GroupNorm(two_stage=True).init(jax.random.PRNGKey(0), x)
  with pytest.raises(ValueError, match="swish=True"):
    layers.GroupNorm(xla=True, swish=True).init(jax.random.PRNGKey(0), x)


def test_fused_norm_bfloat16_within_bfloat16_rounding():
  x = jax.random.normal(jax.random.PRNGKey(3), (2, 8, 8, 32)).astype(jnp.bfloat16)
  ref = _NormAct("swish", False, "float32")
  params = ref.init(jax.random.PRNGKey(0), x)
  y_ref = ref.apply(params, x.astype(jnp.float32))
  y16 = _NormAct("swish", True, "bfloat16").apply(params, x)
  assert y16.dtype == jnp.bfloat16
  assert _rel(y_ref, y16.astype(jnp.float32)) < 1e-2
  g = jax.grad(lambda x: jnp.sum(_NormAct("swish", True, "bfloat16").apply(params, x)
                                 .astype(jnp.float32)))(x)
  assert g.dtype == jnp.bfloat16 and bool(jnp.all(jnp.isfinite(g.astype(jnp.float32))))


def _tiny(**overrides):
  config = base.get_base_config()
  config.data.image_size, config.data.num_channels = 8, 3
  m = config.model
  m.nf, m.ch_mult, m.num_res_blocks, m.attn_resolutions = 16, (1, 2), 1, (4,)
  for k, v in overrides.items():
    m[k] = v
  models.validate_model_config(config.model, config.data)
  return models.get_model(config.model, config.data)


def _tiny_pair(**option):
  """(x, cond, plain network, network with ``option``, random parameters both accept).

  Asserts that the option keeps the parameter tree.
  """
  x = jax.random.normal(jax.random.PRNGKey(4), (2, 8, 8, 3))
  cond = jnp.array([0.3, 0.9])
  plain, other = _tiny(dropout=0.0), _tiny(dropout=0.0, **option)
  shapes = models.abstract_params(plain, x.shape, cond.shape)
  assert (jax.tree_util.tree_structure(shapes)
          == jax.tree_util.tree_structure(models.abstract_params(other, x.shape, cond.shape)))
  rng = np.random.default_rng(0)
  params = jax.tree_util.tree_map(
      lambda s: jnp.asarray(rng.normal(size=s.shape) * 0.2, jnp.float32), shapes)
  return x, cond, plain, other, params


def test_ddpmpp_fused_norm_same_function_and_gradients():
  x, cond, plain, fused, params = _tiny_pair(fused_norm=True)
  loss = lambda m: (lambda p: jnp.sum(jnp.square(m.apply({"params": p}, x, cond, train=True))))
  l_plain, g_plain = _jit(jax.value_and_grad(loss(plain)))(params)
  l_fused, g_fused = _jit(jax.value_and_grad(loss(fused)))(params)
  assert abs(float(l_plain - l_fused)) / float(l_plain) < 1e-5
  flat_p = np.concatenate([np.ravel(a) for a in jax.tree_util.tree_leaves(g_plain)])
  flat_f = np.concatenate([np.ravel(a) for a in jax.tree_util.tree_leaves(g_fused)])
  assert _rel(flat_p, flat_f) < 1e-4


def test_fast_dropout_rate_scale_and_key():
  class Drop(nn.Module):
    @nn.compact
    def __call__(self, x):
      return layers.dropout(self, x, 0.3, deterministic=False, fast=True)

  x = jnp.ones((64, 32, 32))
  a = Drop().apply({}, x, rngs={"dropout": jax.random.PRNGKey(0)})
  b = Drop().apply({}, x, rngs={"dropout": jax.random.PRNGKey(0)})
  c = Drop().apply({}, x, rngs={"dropout": jax.random.PRNGKey(1)})
  kept = np.asarray(a) != 0
  n = kept.size
  # Fraction dropped within 5 binomial standard errors of 0.3; kept values rescaled by 1/0.7
  # (exactly 2**16 / (2**16 - round(0.3 * 2**16)), 4e-6 from 1/0.7).
  assert abs((1 - kept.mean()) - 0.3) < 5 * np.sqrt(0.3 * 0.7 / n)
  np.testing.assert_allclose(np.asarray(a)[kept], 1 / 0.7, rtol=1e-5)
  np.testing.assert_array_equal(a, b)
  assert (np.asarray(c) != 0).mean() != kept.mean() or not np.array_equal(a, c)
  assert not np.array_equal(a, c)
  # Deterministic (evaluation) mode is the identity.
  class Eval(nn.Module):
    @nn.compact
    def __call__(self, x):
      return layers.dropout(self, x, 0.3, deterministic=True, fast=True)
  np.testing.assert_array_equal(Eval().apply({}, x), x)


def test_ddpmpp_fast_dropout_trains_and_is_identity_at_eval():
  x = jax.random.normal(jax.random.PRNGKey(5), (2, 8, 8, 3))
  cond = jnp.array([0.3, 0.9])
  slow = _tiny(dropout=0.2, fast_dropout=False)
  fast = _tiny(dropout=0.2, fast_dropout=True)
  params = models.abstract_params(slow, x.shape, cond.shape)
  rng = np.random.default_rng(1)
  params = jax.tree_util.tree_map(
      lambda s: jnp.asarray(rng.normal(size=s.shape) * 0.2, jnp.float32), params)
  np.testing.assert_allclose(fast.apply({"params": params}, x, cond),
                             slow.apply({"params": params}, x, cond), rtol=1e-6, atol=1e-6)
  rngs = lambda k: {"dropout": jax.random.PRNGKey(k)}
  t1 = fast.apply({"params": params}, x, cond, train=True, rngs=rngs(0))
  t2 = fast.apply({"params": params}, x, cond, train=True, rngs=rngs(1))
  t1b = fast.apply({"params": params}, x, cond, train=True, rngs=rngs(0))
  np.testing.assert_array_equal(t1, t1b)
  assert not np.allclose(t1, t2)


@pytest.mark.parametrize("stride,size", [(1, 3), (2, 3), (1, 1)])
def test_conv_ohwi_is_flax_conv(stride, size):
  x = jax.random.normal(jax.random.PRNGKey(6), (2, 8, 8, 5))
  ref = nn.Conv(7, (size, size), strides=(stride, stride), padding="SAME",
                kernel_init=layers.default_init(1.0))
  hwio, ohwi = layers.conv2d(7, size, stride), layers.conv2d(7, size, stride, kernel_layout="OHWI")
  p_ref, p_hwio = ref.init(jax.random.PRNGKey(1), x), hwio.init(jax.random.PRNGKey(1), x)
  p_ohwi = ohwi.init(jax.random.PRNGKey(1), x)
  # HWIO: flax's Conv parameter for parameter; OHWI: the same initial kernel, transposed.
  for a, b in zip(jax.tree_util.tree_leaves(p_ref), jax.tree_util.tree_leaves(p_hwio)):
    np.testing.assert_array_equal(a, b)
  assert p_ohwi["params"]["kernel"].shape == (7, size, size, 5)
  np.testing.assert_array_equal(layers.convert_kernel_layout(p_hwio, "OHWI")["params"]["kernel"],
                                p_ohwi["params"]["kernel"])
  y = ref.apply(p_ref, x)
  np.testing.assert_allclose(hwio.apply(p_hwio, x), y, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(ohwi.apply(p_ohwi, x), y, rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="kernel_layout"):
    layers.conv2d(7, kernel_layout="IOHW").init(jax.random.PRNGKey(1), x)


def test_ddpmpp_ohwi_same_function_gradients_and_conversion():
  x = jax.random.normal(jax.random.PRNGKey(7), (2, 8, 8, 3))
  cond = jnp.array([0.3, 0.9])
  hwio = _tiny(dropout=0.0, kernel_layout="HWIO")
  ohwi = _tiny(dropout=0.0, kernel_layout="OHWI")
  rng = np.random.default_rng(2)
  params = jax.tree_util.tree_map(
      lambda s: jnp.asarray(rng.normal(size=s.shape) * 0.2, jnp.float32),
      models.abstract_params(hwio, x.shape, cond.shape))
  converted = layers.convert_kernel_layout(params, "OHWI")
  shapes = models.abstract_params(ohwi, x.shape, cond.shape)
  assert (jax.tree_util.tree_map(lambda s: s.shape, shapes)
          == jax.tree_util.tree_map(jnp.shape, converted))
  n4 = sum(p.ndim == 4 for p in jax.tree_util.tree_leaves(params))
  assert n4 > 5
  loss = lambda m: (lambda p: jnp.sum(jnp.square(m.apply({"params": p}, x, cond))))
  l_h, g_h = jax.value_and_grad(loss(hwio))(params)
  l_o, g_o = jax.value_and_grad(loss(ohwi))(converted)
  assert abs(float(l_h - l_o)) / float(l_h) < 1e-5
  g_back = layers.convert_kernel_layout(g_o, "HWIO")
  for a, b in zip(jax.tree_util.tree_leaves(g_h), jax.tree_util.tree_leaves(g_back)):
    assert a.shape == b.shape and _rel(a, b) < 1e-4
  # Round trip is exact; a bad layout name is refused by the config check and the converter.
  for a, b in zip(jax.tree_util.tree_leaves(params),
                  jax.tree_util.tree_leaves(layers.convert_kernel_layout(converted, "HWIO"))):
    np.testing.assert_array_equal(a, b)
  with pytest.raises(ValueError, match="kernel_layout"):
    _tiny(kernel_layout="NCHW")
  with pytest.raises(ValueError, match="kernel_layout"):
    layers.convert_kernel_layout(params, "NCHW")


def test_dropout_keep_mask_rate_and_independence():
  keep, scale = layers.dropout_keep_mask(jax.random.PRNGKey(8), (64, 16, 16, 8), 0.1)
  drop = 1.0 - np.asarray(keep, np.float64).ravel()
  n = drop.size
  rate = round(0.1 * 65536) / 65536
  assert abs(drop.mean() - rate) < 5 * np.sqrt(rate * (1 - rate) / n)
  assert scale == pytest.approx(1 / (1 - rate), rel=1e-12)
  # The four quarters of each row come from the same threefry calls (two words, two halves
  # each); neighbours are consecutive counters: no correlation.
  rows = drop.reshape(64, 4, -1)
  for i in range(4):
    for j in range(i + 1, 4):
      assert abs(np.corrcoef(rows[:, i].ravel(), rows[:, j].ravel())[0, 1]) < 5 / np.sqrt(n / 4)
  assert abs(np.corrcoef(drop[:-1], drop[1:])[0, 1]) < 5 / np.sqrt(n)
  # Row b does not depend on how many rows follow it (its counters are b W ... b W + W - 1).
  head, _ = layers.dropout_keep_mask(jax.random.PRNGKey(8), (5, 16, 16, 8), 0.1)
  np.testing.assert_array_equal(np.asarray(keep)[:5], head)
  # A function of the key, for raw and typed keys alike.
  again, _ = layers.dropout_keep_mask(jax.random.key(8), (64, 16, 16, 8), 0.1)
  np.testing.assert_array_equal(keep, again)
  other, _ = layers.dropout_keep_mask(jax.random.PRNGKey(9), (64, 16, 16, 8), 0.1)
  assert not np.array_equal(keep, other)


@pytest.mark.parametrize("name,extra", [
    ("ncsnpp", {}),
    ("ncsnpp", dict(embedding_type="fourier", fir=True, progressive="output_skip",
                    progressive_input="input_skip", resblock_type="ddpm", num_classes=3)),
    ("ddpm", {}),
    ("unet", {})])
def test_inference_params_same_network_output(name, extra):
  """``Setup.inference_params`` casts the kernels and the conv/dense/NIN biases once; the
  network's output (and the likelihood's tangent) from them is bit for bit the output from the
  float32 parameters, so nothing but the per-call casts went away. GroupNorm's scale and offset
  and the Fourier frequencies stay float32."""
  from jaxgen import train  # pylint: disable=import-outside-toplevel
  config = base.get_base_config()
  config.data.image_size, config.data.num_channels = 8, 3
  m = config.model
  m.name, m.nf, m.ch_mult, m.num_res_blocks, m.attn_resolutions = name, 16, (1, 2), 1, (4,)
  m.dtype = "bfloat16"
  for k, v in extra.items():
    m[k] = v
  setup = train.Setup(config)
  params = _jit(setup.init_state)(jax.random.PRNGKey(0)).params
  params = jax.tree_util.tree_map(
      lambda p: p + 0.1 * jax.random.normal(jax.random.PRNGKey(1), p.shape), params)
  cast = setup.inference_params(params)
  kept, biases = [], []
  for path, p in jax.tree_util.tree_flatten_with_path(cast)[0]:
    where = jax.tree_util.keystr(path)
    if p.ndim >= 2:
      assert p.dtype == jnp.bfloat16, where
    elif p.dtype == jnp.bfloat16:
      biases.append(where)
      assert where.endswith(("['bias']", "['b']")) and "GroupNorm" not in where, where
    else:
      kept.append(where)
  assert biases and kept
  assert any("GroupNorm" in k for k in kept)
  if extra.get("embedding_type") == "fourier":
    assert any("W" in k for k in kept if "GroupNorm" not in k)
  x = jax.random.normal(jax.random.PRNGKey(2), (2, 8, 8, 3))
  t = jnp.array([0.2, 0.7])
  kwargs = {"y": jnp.array([0, 2])} if extra.get("num_classes") else {}
  fn = _jit(lambda p, x, t: setup.model.apply({"params": p}, x, t, **kwargs))
  np.testing.assert_array_equal(np.asarray(fn(params, x, t)), np.asarray(fn(cast, x, t)))
  v = jax.random.normal(jax.random.PRNGKey(3), x.shape)
  tangent = _jit(lambda p: jax.jvp(lambda y: setup.model.apply({"params": p}, y, t, **kwargs),
                                   (x,), (v,))[1])
  np.testing.assert_array_equal(np.asarray(tangent(params)), np.asarray(tangent(cast)))
  # float32 models get their parameters back untouched.
  config.model.dtype = "float32"
  assert train.Setup(config).inference_params(params) is params


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_temb_barrier_same_function_gradients_and_jvp(dtype):
  """``temb_barrier`` only hides the time-embedding add from XLA's conv side-input fusion: the
  same parameter tree, output, gradients and forward-mode tangent (the likelihood's ``jvp``).
  Bitwise in float32; in bfloat16 the compiler may round the convolution's output before the
  add instead of after it, so there the test allows bfloat16 rounding."""
  x = jax.random.normal(jax.random.PRNGKey(6), (2, 8, 8, 3))
  cond = jnp.array([0.2, 0.7])
  # Both options are on in the base config: the reference turns them off explicitly.
  plain = _tiny(dropout=0.0, dtype=dtype, temb_barrier=False, two_stage_grads=False)
  barrier = _tiny(dropout=0.0, dtype=dtype, temb_barrier=True, two_stage_grads=False)
  shapes = models.abstract_params(plain, x.shape, cond.shape)
  assert (jax.tree_util.tree_structure(shapes)
          == jax.tree_util.tree_structure(models.abstract_params(barrier, x.shape, cond.shape)))
  rng = np.random.default_rng(1)
  params = jax.tree_util.tree_map(
      lambda s: jnp.asarray(rng.normal(size=s.shape) * 0.2, jnp.float32), shapes)
  out = lambda m: _jit(lambda p, x: m.apply({"params": p}, x, cond))
  def same(a, b):
    a = np.asarray(jnp.asarray(a, jnp.float32))
    b = np.asarray(jnp.asarray(b, jnp.float32))
    if dtype == "float32":
      np.testing.assert_array_equal(a, b)
    else:
      assert _rel(a, b) < 2e-2, _rel(a, b)

  same(out(plain)(params, x), out(barrier)(params, x))
  loss = lambda m: _jit(jax.value_and_grad(
      lambda p: jnp.sum(jnp.square(m.apply({"params": p}, x, cond).astype(jnp.float32)))))
  (l_p, g_p), (l_b, g_b) = loss(plain)(params), loss(barrier)(params)
  assert float(l_p) > 0
  same(l_p, l_b)
  same(np.concatenate([np.ravel(a) for a in jax.tree_util.tree_leaves(g_p)]),
       np.concatenate([np.ravel(a) for a in jax.tree_util.tree_leaves(g_b)]))
  v = jax.random.normal(jax.random.PRNGKey(7), x.shape)
  tangent = lambda m: _jit(lambda p: jax.jvp(lambda y: m.apply({"params": p}, y, cond),
                                                 (x,), (v,))[1])
  t_p, t_b = tangent(plain)(params), tangent(barrier)(params)
  assert float(jnp.max(jnp.abs(t_p.astype(jnp.float32)))) > 0
  same(t_p, t_b)


@pytest.mark.parametrize("resblock_type", ["biggan", "ddpm"])
def test_two_stage_grads_same_function_gradients_and_jvp(resblock_type):
  """``two_stage_grads`` (GroupNorm scale/bias and the residual blocks' conv biases with their
  gradients reduced over positions, then over the batch) keeps the parameter tree, the output
  bit for bit, the forward-mode tangent, and the gradients up to float32 summation order."""
  x = jax.random.normal(jax.random.PRNGKey(8), (3, 8, 8, 3))
  cond = jnp.array([0.2, 0.5, 0.9])
  kw = dict(dropout=0.0, resblock_type=resblock_type, temb_barrier=True)
  plain, two = _tiny(two_stage_grads=False, **kw), _tiny(two_stage_grads=True, **kw)
  shapes = models.abstract_params(plain, x.shape, cond.shape)
  assert (jax.tree_util.tree_structure(shapes)
          == jax.tree_util.tree_structure(models.abstract_params(two, x.shape, cond.shape)))
  rng = np.random.default_rng(2)
  params = jax.tree_util.tree_map(
      lambda s: jnp.asarray(rng.normal(size=s.shape) * 0.2, jnp.float32), shapes)
  out = lambda m: _jit(lambda p: m.apply({"params": p}, x, cond))
  np.testing.assert_array_equal(out(plain)(params), out(two)(params))
  w = jax.random.normal(jax.random.PRNGKey(9), x.shape)
  loss = lambda m: _jit(jax.value_and_grad(
      lambda p: jnp.sum(m.apply({"params": p}, x, cond) * w)))
  (l_p, g_p), (l_t, g_t) = loss(plain)(params), loss(two)(params)
  assert abs(float(l_p - l_t)) <= 1e-6 * abs(float(l_p))
  top = max(float(jnp.max(jnp.abs(a))) for a in jax.tree_util.tree_leaves(g_p))
  for path, a in jax.tree_util.tree_flatten_with_path(g_p)[0]:
    b = g_t
    for k in path:
      b = b[k.key]
    # Per leaf, up to summation order; the attention's key bias has a zero gradient
    # (softmax ignores it), so its float32 noise is compared with the largest gradient.
    err = float(jnp.max(jnp.abs(a - b)))
    assert err <= 1e-5 * float(jnp.max(jnp.abs(a))) + 1e-7 * top, (jax.tree_util.keystr(path), err)
  v = jax.random.normal(jax.random.PRNGKey(10), x.shape)
  tangent = lambda m: _jit(lambda p: jax.jvp(lambda y: m.apply({"params": p}, y, cond),
                                                 (x,), (v,))[1])
  np.testing.assert_allclose(tangent(plain)(params), tangent(two)(params), rtol=1e-5, atol=1e-6)


def test_add_bias_two_stage_gradient_and_tangent():
  """The custom rule of :func:`layers.add_bias_two_stage`: the sum's value, and the bias
  gradient (cotangent summed over batch and positions) and tangent of the plain add."""
  y = jax.random.normal(jax.random.PRNGKey(11), (4, 3, 5, 6))
  b = jax.random.normal(jax.random.PRNGKey(12), (6,))
  g = jax.random.normal(jax.random.PRNGKey(13), y.shape)
  np.testing.assert_array_equal(layers.add_bias_two_stage(y, b), y + b)
  _, vjp = jax.vjp(layers.add_bias_two_stage, y, b)
  dy, db = vjp(g)
  np.testing.assert_array_equal(dy, g)
  np.testing.assert_allclose(db, jnp.sum(g, axis=(0, 1, 2)), rtol=1e-5, atol=1e-5)
  ty, tb = jnp.ones_like(y), jnp.arange(6.0)
  _, t = jax.jvp(layers.add_bias_two_stage, (y, b), (ty, tb))
  np.testing.assert_allclose(t, ty + tb, rtol=0, atol=0)


def test_two_stage_grads_leave_inference_untouched():
  """:func:`layers.per_sample` acts only where its parameter is differentiated: the forward pass
  and the likelihood's ``jvp`` in ``x`` (parameters closed over) trace no optimization barrier,
  and the parameter gradient does; the options differ from the plain model in the
  gradient's program, not in the value."""
  x = jax.random.normal(jax.random.PRNGKey(14), (2, 8, 8, 3))
  cond = jnp.array([0.4, 0.8])
  two = _tiny(dropout=0.0, temb_barrier=False, two_stage_grads=True)
  params = two.init(jax.random.PRNGKey(15), x, cond)["params"]
  apply = lambda p, y: two.apply({"params": p}, y, cond)

  def barriers(fn, *args):
    return str(jax.make_jaxpr(fn)(*args)).count("optimization_barrier")

  assert barriers(apply, params, x) == 0
  assert barriers(lambda y: jax.jvp(lambda z: apply(params, z), (y,), (y,))[1], x) == 0
  assert barriers(jax.grad(lambda p: jnp.sum(apply(p, x))), params) > 0


# --- model.pallas_norm: GroupNorm+swish forward as one Pallas kernel (interpreted on the CPU) ---

def _flax_gn_swish(x, scale, bias, groups, swish=True):
  y = nn.GroupNorm(num_groups=groups, epsilon=1e-6).apply(
      {"params": {"scale": scale, "bias": bias}}, x.astype(jnp.float32))
  return y * jax.nn.sigmoid(y) if swish else y


@pytest.mark.parametrize("groups,dtype", [(16, "float32"), (8, "bfloat16"), (32, "float32")])
def test_pallas_gn_act_matches_flax_values_jvp_and_grad(groups, dtype):
  from jaxgen.models import pallas_norm
  c = 64
  keys = jax.random.split(jax.random.PRNGKey(7), 4)
  # Unequal channel means and scales, so that a wrong grouping or block offset shows.
  x = (jax.random.normal(keys[0], (2, 8, 8, c)) * jnp.linspace(0.5, 3.0, c)
       + jnp.linspace(-2.0, 2.0, c)).astype(dtype)
  scale = 1.0 + 0.3 * jax.random.normal(keys[1], (c,))
  bias = 0.3 * jax.random.normal(keys[2], (c,))
  # 2 channel blocks of 32 and 4 row blocks of 16 positions: every loop and offset is used.
  f = lambda x, s, b: pallas_norm.gn_act(x, s, b, groups, True, "float32", channel_block=32,
                                         row_block=16)
  assert pallas_norm.pallas_supported(x.shape, groups, 32, 16)
  assert "pallas_call" in str(jax.make_jaxpr(f)(x, scale, bias))
  y = f(x, scale, bias)
  ref = _flax_gn_swish(x, scale, bias, groups)
  assert _rel(ref, y) < 1e-5
  # Derivatives (XLA's formula through the custom JVP rule): forward and reverse mode.
  t = jax.random.normal(keys[3], x.shape).astype(dtype)
  _, dy = jax.jvp(lambda x: f(x, scale, bias), (x,), (t,))
  _, dref = jax.jvp(lambda x: _flax_gn_swish(x, scale, bias, groups), (x,), (t,))
  assert _rel(dref, dy) < 1e-5
  w = jax.random.normal(keys[3], y.shape)
  g = jax.grad(lambda x, s, b: jnp.sum(f(x, s, b) * w), argnums=(0, 1, 2))(x, scale, bias)
  gref = jax.grad(lambda x, s, b: jnp.sum(_flax_gn_swish(x, s, b, groups) * w),
                  argnums=(0, 1, 2))(x, scale, bias)
  for a, b in zip(gref, g):
    assert _rel(a, b) < (1e-2 if dtype == "bfloat16" else 1e-5)


def test_pallas_gn_act_unsupported_shapes_fall_back_to_xla():
  from jaxgen.models import pallas_norm
  x = jax.random.normal(jax.random.PRNGKey(8), (2, 6, 6, 12))  # 12 channels: no power-of-2 block
  assert not pallas_norm.pallas_supported(x.shape, 3)
  f = lambda x: pallas_norm.gn_act(x, jnp.ones(12), jnp.zeros(12), 3)
  assert "pallas_call" not in str(jax.make_jaxpr(f)(x))
  assert _rel(_flax_gn_swish(x, jnp.ones(12), jnp.zeros(12), 3), f(x)) < 1e-6


def test_ddpmpp_pallas_norm_same_parameters_function_and_divergence():
  x, cond, plain, fast, params = _tiny_pair(pallas_norm=True)
  f = lambda m: (lambda x: m.apply({"params": params}, x, cond))
  assert "pallas_call" in str(jax.make_jaxpr(f(fast))(x))
  # Values, and the jvp that the likelihood's divergence takes of the network.
  v = jax.random.rademacher(jax.random.PRNGKey(5), x.shape, jnp.float32)
  jvp = lambda m: _jit(lambda x, v: jax.jvp(f(m), (x,), (v,)))(x, v)
  (y_plain, dy_plain), (y_fast, dy_fast) = jvp(plain), jvp(fast)
  assert _rel(y_plain, y_fast) < 1e-5
  assert _rel(dy_plain, dy_fast) < 1e-5


def _collectives(hlo_text):
  kinds = ("all-reduce", "all-gather", "reduce-scatter", "collective-permute", "all-to-all")
  found = collections.Counter()
  for line in hlo_text.splitlines():
    for kind in kinds:
      if f" {kind}(" in line or f" {kind}-start(" in line:
        found[kind] += 1
  return found


@pytest.mark.parametrize("shape", [(8, 4, 4, 6), (16, 5), (8, 3, 3, 1)])
def test_dropout_keep_mask_is_drawn_on_each_batch_shard_without_communication(shape):
  """Under a batch-sharded jit each device draws its own rows: no collective in the compiled
  mask, and the same mask as on one device (run 20: the earlier flat draw all-gathered every
  dropout mask, 1.37x instead of ~2x on two GPUs)."""
  from jaxgen import parallel  # pylint: disable=import-outside-toplevel
  mesh = parallel.make_mesh(jax.devices()[:2])
  fn = _jit(lambda k: layers.dropout_keep_mask(k, shape, 0.25)[0],
               out_shardings=parallel.batch_sharded(mesh))
  compiled = fn.lower(jax.random.PRNGKey(3)).compile()
  assert not _collectives(compiled.as_text()), _collectives(compiled.as_text())
  sharded = fn(jax.random.PRNGKey(3))
  assert len(sharded.sharding.device_set) == 2
  one, _ = layers.dropout_keep_mask(jax.random.PRNGKey(3), shape, 0.25)
  np.testing.assert_array_equal(np.asarray(sharded), np.asarray(one))


@pytest.mark.parametrize("mode", ["gspmd", "shard_map"])
def test_data_parallel_ddpmpp_train_step_communicates_only_gradient_all_reduces(mode):
  """The training loop's step of a (tiny) DDPM++ with dropout and every speed option of the base
  config, on a 2-device mesh, in both data-parallel modes: the only collectives XLA emits are
  all-reduces (the gradients and the loss), i.e. nothing of the per-example work (dropout masks,
  noise, flips, GroupNorm) crosses devices."""
  from jaxgen import parallel, train  # pylint: disable=import-outside-toplevel
  config = base.get_base_config()
  config.data.image_size, config.data.num_channels = 8, 3
  m = config.model
  m.name, m.nf, m.ch_mult, m.num_res_blocks, m.attn_resolutions = "ncsnpp", 16, (1, 2), 1, (4,)
  m.dropout, m.dtype = 0.1, "bfloat16"
  assert m.fast_dropout and config.optim.flat_update
  config.training.batch_size = 4
  config.training.data_parallel = mode
  mesh = parallel.make_mesh(jax.devices()[:2])
  setup = train.Setup(config)
  step, to_carry, _ = train.make_sharded_train_step(setup, mesh)
  repl = parallel.replicated(mesh)
  carry = jax.eval_shape(lambda k: setup.to_flat_state(setup.init_state(k)),
                         jax.random.PRNGKey(0))
  carry = jax.tree_util.tree_map(
      lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=repl), carry)
  batch = {"image": jax.ShapeDtypeStruct((4, 8, 8, 3), jnp.uint8,
                                         sharding=parallel.batch_sharded(mesh))}
  found = _collectives(step.lower(carry, batch).compile().as_text())
  assert found["all-reduce"] >= 1 and set(found) == {"all-reduce"}, found


def test_remat_policies_same_function_and_gradients():
  """``model.remat`` recomputes the residual blocks in the backward pass; ``remat_policy`` says
  what they keep. Without dropout both policies give the plain network's loss and gradients under
  the renamed parameters; ``full`` recomputes convolutions (more in the gradient program),
  ``save_convs`` none. With dropout (whose keys follow the renamed module paths, so another stream
  than the plain network's) the masks ``save_convs`` draws again in the backward pass are the
  forward's: its gradient agrees with forward-mode derivatives."""
  x = jax.random.normal(jax.random.PRNGKey(8), (2, 8, 8, 3))
  cond = jnp.array([0.4, 0.8])

  def net(policy, dropout=0.0):   # DDPM++'s BigGAN blocks (the base config's)
    return _tiny(dropout=dropout, remat=policy != "none",
                 remat_policy="full" if policy == "none" else policy)

  shapes = models.abstract_params(net("none"), x.shape, cond.shape)
  rng = np.random.default_rng(3)
  plain = jax.tree_util.tree_map(
      lambda s: jnp.asarray(rng.normal(size=s.shape) * 0.2, jnp.float32), shapes)
  # flax names a rematerialized block class "Checkpoint<Block>".
  renamed = layers.remat_param_names(plain, True)
  assert any(k.startswith("CheckpointResnetBlock") for k in renamed)
  assert layers.remat_param_names(renamed, False) == plain
  assert layers.remat_param_names(renamed, True) == renamed
  assert (jax.tree_util.tree_structure(models.abstract_params(net("save_convs"), x.shape,
                                                              cond.shape))
          == jax.tree_util.tree_structure(renamed))
  flat = lambda tree: np.concatenate([np.ravel(a) for a in jax.tree_util.tree_leaves(
      layers.remat_param_names(tree, False))])

  def loss(m):
    return lambda p: jnp.sum(jnp.square(m.apply({"params": p}, x, cond, train=True,
                                                rngs={"dropout": jax.random.PRNGKey(5)})))

  results, convs = {}, {}
  for policy in ("none", "full", "save_convs"):
    lowered = _jit(jax.value_and_grad(loss(net(policy)))).lower(
        plain if policy == "none" else renamed)
    convs[policy] = lowered.as_text().count("stablehlo.convolution")
    value, grads = lowered.compile()(plain if policy == "none" else renamed)
    results[policy] = (float(value), flat(grads))
  assert results["none"][0] > 0
  for policy in ("full", "save_convs"):
    assert abs(results[policy][0] - results["none"][0]) / results["none"][0] < 1e-6, policy
    assert _rel(results["none"][1], results[policy][1]) < 1e-5, policy
  assert convs["full"] > convs["none"] == convs["save_convs"], convs

  # Dropout on: <gradient, v> against the forward-mode derivative along v (nothing recomputed).
  f = loss(net("save_convs", dropout=0.2))
  v = jax.tree_util.tree_map(lambda a: jnp.asarray(rng.normal(size=a.shape), jnp.float32),
                             renamed)
  grads = _jit(jax.grad(f))(renamed)
  tangent = float(_jit(lambda p, v: jax.jvp(f, (p,), (v,))[1])(renamed, v))
  dot = sum(float(jnp.vdot(g, w)) for g, w in zip(jax.tree_util.tree_leaves(grads),
                                                   jax.tree_util.tree_leaves(v)))
  assert abs(tangent) > 0 and abs(dot - tangent) <= 1e-4 * abs(tangent), (dot, tangent)


def test_remat_policy_is_checked_by_name():
  with pytest.raises(ValueError, match="model.remat_policy='convs'"):
    _tiny(remat=True, remat_policy="convs")
  with pytest.raises(ValueError, match="model.remat_policy='convs'"):
    layers.maybe_remat(layers.ResnetBlockDDPM, False, "convs")


def test_fused_norm_likelihood_runs_with_xla_group_norm():
  """``model.fused_norm``'s custom VJP has no jvp; the bits/dim evaluation (a jvp divergence)
  runs the same function through ``Setup.eval_model_fn``, the plain network's bit for bit. A
  CNF with it is refused by name."""
  from configs.digits import vp_unet  # pylint: disable=import-outside-toplevel
  from jaxgen import evaluate, train  # pylint: disable=import-outside-toplevel
  config = vp_unet.get_config()
  config.model.name = "ncsnpp"
  m = config.model
  m.nf, m.ch_mult, m.num_res_blocks, m.attn_resolutions, m.dropout = 8, (1, 2), 1, (4,), 0.0
  config.eval.rtol = config.eval.atol = 1e-2
  params = perturbed_params(train.Setup(config), 0.2)
  batch = {"image": np.random.default_rng(2).integers(0, 256, (2, 8, 8, 1)).astype(np.uint8)}
  fused = config.copy_and_resolve_references()
  fused.model.fused_norm = True
  setup = train.Setup(fused)
  x = jax.random.normal(jax.random.PRNGKey(5), (2, 8, 8, 1))
  t = jnp.array([0.3, 0.8])
  with pytest.raises(TypeError, match="custom_vjp"):
    jax.jit(lambda y: jax.jvp(lambda z: setup.model_fn(params, z, t), (y,), (y,))).lower(x)
  out, tangent, fused_out, plain_out = jax.jit(lambda p, y: (
      *jax.jvp(lambda z: setup.eval_model_fn(p, z, t), (y,), (y,)), setup.model_fn(p, y, t),
      train.Setup(config).model_fn(p, y, t)))(params, x)
  np.testing.assert_allclose(out, fused_out, rtol=1e-4, atol=1e-5)
  assert bool(jnp.all(jnp.isfinite(tangent)))
  # the likelihood's network is the plain one (bit for bit), and the bits/dim evaluation runs
  np.testing.assert_array_equal(out, plain_out)
  got = jax.jit(evaluate.make_nll_fn(setup, fused.eval))(params, jax.random.PRNGKey(3), batch)[0]
  assert got.shape == (2,) and np.all(np.isfinite(np.asarray(got)))
  assert np.all((np.asarray(got) > 0.5) & (np.asarray(got) < 20))
  cnf_config = fused.copy_and_resolve_references()
  cnf_config.method = "cnf"
  with pytest.raises(ValueError, match="config.model.fused_norm"):
    train.Setup(cnf_config)
