"""The parameter EMA of the train step: a fixed rate, and EDM's warm-up (``model.ema_rampup_ratio``),
checked against the closed form of the decay and against the EMA recursion of the parameters'
own trajectory, with the optimizer and EMA on trees and on one flat vector."""
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import ml_collections
import pytest

from configs.toy import vp_mlp
from jaxgen import train
from jaxgen.data import sample_toy
from conftest import FAST_COMPILE  # pylint: disable=wrong-import-order


def test_decay_closed_form():
  """EDM's warm-up: half-life ``min(h, ratio * step)`` steps, ``h = ln 0.5 / ln rate``."""
  rate = 0.5 ** (512 / 500_000)                       # EDM's CIFAR-10: half-life 0.5 Mimg
  half_life = math.log(0.5) / math.log(rate)          # 976.5625 steps of 512 images
  np.testing.assert_allclose(half_life, 500_000 / 512, rtol=1e-12)
  assert float(train.ema_decay(0, rate, 0.05)) == 0.0  # the EMA starts as the parameters
  for step in (1, 10, 1000, 19_000):
    expected = 0.5 ** (1.0 / (0.05 * step))
    np.testing.assert_allclose(float(train.ema_decay(step, rate, 0.05)), expected, rtol=1e-5)
    assert float(train.ema_decay(step, rate, 0.05)) < rate
  # From 10 Mimg on (step >= h / ratio = 19,531.25) the rate itself.
  for step in (19_532, 20_000, 390_624):
    np.testing.assert_allclose(float(train.ema_decay(step, rate, 0.05)), rate, rtol=1e-6)
  # Traced steps give the same values as Python ints.
  steps = jnp.array([0, 1, 1000, 20_000])
  np.testing.assert_allclose(
      np.asarray(jax.jit(lambda s: train.ema_decay(s, rate, 0.05))(steps)),
      [float(train.ema_decay(int(s), rate, 0.05)) for s in steps], rtol=1e-6)
  # Without warm-up the configured rate, as a Python float (the step's program is unchanged).
  assert train.ema_decay(jnp.array(7), 0.999, 0.0) == 0.999
  assert isinstance(train.ema_decay(jnp.array(7), 0.999), float)
  assert train.ema_decay(5, 0.0, 0.05) == 0.0


@pytest.mark.parametrize("rate, ratio, name", [(1.0, 0.0, "ema_rate"), (-0.1, 0.0, "ema_rate"),
                                               (0.99, -0.05, "rampup_ratio"),
                                               (0.99, float("nan"), "rampup_ratio"),
                                               (0.99, float("inf"), "rampup_ratio")])
def test_decay_refuses_bad_values(rate, ratio, name):
  with pytest.raises(ValueError, match=name):
    train.ema_decay(3, rate, ratio)


@pytest.mark.parametrize("bad", [-0.05, "0.05", True, float("nan")])
def test_config_refuses_bad_rampup_ratio(bad):
  config = vp_mlp.get_config("8gaussians")
  model = config.model.to_dict()
  model["ema_rampup_ratio"] = bad                     # a ConfigDict field would refuse "0.05"
  config.model = ml_collections.ConfigDict(model)
  with pytest.raises(ValueError, match="config.model.ema_rampup_ratio"):
    train.validate_config(config, num_devices=8)


def _toy_config(flat: bool, ratio: float):
  config = vp_mlp.get_config("8gaussians")
  config.model.hidden = (16, 16)
  config.training.batch_size = 32
  config.model.ema_rate = 0.9
  config.model.ema_rampup_ratio = ratio
  config.optim.flat_update = flat
  config.optim.lr = 1e-2
  return config


@pytest.mark.parametrize("flat", [False, True])
def test_train_step_ema_follows_the_warm_up(flat):
  """Six steps with ``ema_rampup_ratio = 0.5`` and rate 0.9 (half-life 6.58 steps): the EMA is
  the parameters after step 0 and then ``d_k * ema + (1 - d_k) * params`` with EDM's decay
  ``d_k = 0.5 ** (1 / (0.5 k))`` of the k-th step; with ratio 0 the fixed rate from step 0.
  The two runs see the same data and gradients, so their parameters agree and their EMAs differ."""
  def run(ratio):
    config = _toy_config(flat, ratio)
    train.validate_config(config, num_devices=8)
    setup = train.Setup(config)
    state = setup.init_state(jax.random.PRNGKey(0))
    step_fn = jax.jit(setup.make_train_step(), compiler_options=FAST_COMPILE)
    ema = [np.asarray(x) for x in jax.tree_util.tree_leaves(state.ema_params)]
    expected = list(ema)
    for k in range(6):
      state, metrics = step_fn(state, {"image": sample_toy("8gaussians", k, 32)})
      assert bool(metrics["finite"])
      params = [np.asarray(x, np.float64) for x in jax.tree_util.tree_leaves(state.params)]
      decay = (0.5 ** (1.0 / (0.5 * k)) if k else 0.0) if ratio else 0.9
      expected = [decay * e + (1.0 - decay) * p for e, p in zip(expected, params)]
      got = [np.asarray(x) for x in jax.tree_util.tree_leaves(state.ema_params)]
      for g, e in zip(got, expected):
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-6)
    return state

  warm, fixed = run(0.5), run(0.0)
  for a, b in zip(jax.tree_util.tree_leaves(warm.params), jax.tree_util.tree_leaves(fixed.params)):
    np.testing.assert_array_equal(a, b)
  # The warm-up's EMA forgot the initialization (decay 0 at step 0): it lies nearer the final
  # parameters than the fixed rate's, which still weighs the initialization by 0.9**6 = 0.53.
  def distance(ema):
    return sum(float(np.sum(np.square(np.asarray(e) - np.asarray(p))))
               for e, p in zip(jax.tree_util.tree_leaves(ema),
                               jax.tree_util.tree_leaves(warm.params)))
  print(f"squared distance to the final parameters: warm-up EMA {distance(warm.ema_params):.3e}, "
        f"fixed rate {distance(fixed.ema_params):.3e}")
  assert distance(warm.ema_params) < 0.5 * distance(fixed.ema_params), (
      distance(warm.ema_params), distance(fixed.ema_params))


def test_workdir_written_before_the_warm_up_existed(tmp_path):
  """A workdir whose config.json predates ``model.ema_rampup_ratio`` trained without warm-up: it
  stays compatible with the default (0), and a run asking for a warm-up is refused by name."""
  config = vp_mlp.get_config("8gaussians")
  old = train._jsonable(train._config_fingerprint(config))  # pylint: disable=protected-access
  del old["model"]["ema_rampup_ratio"]
  (tmp_path / "config.json").write_text(json.dumps({"fingerprint": old}))
  train.check_workdir_compatible(str(tmp_path), config)
  config.model.ema_rampup_ratio = 0.05
  with pytest.raises(train.CheckpointError, match="model.ema_rampup_ratio"):
    train.check_workdir_compatible(str(tmp_path), config)
