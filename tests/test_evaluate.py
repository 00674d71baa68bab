"""Tests of what ``jaxgen.evaluate`` reports and writes (cheap: fake likelihoods, tiny MLPs)."""
import json

import jax
import numpy as np
import pytest

from configs.digits import vp_unet
from configs.toy import vp_mlp
from jaxgen import data as data_lib
from jaxgen import evaluate, parallel, train


def _toy_setup():
  config = vp_mlp.get_config()
  config.model.hidden = (8, 8)
  config.eval.batch_size = 1536  # 10,000 toy points: 7 batches, the last with 784 real rows
  return train.Setup(config)


def test_mean_is_over_the_split_and_stderr_uses_the_sample_std():
  """The padded last batch is left out of the mean, and the standard error is
  ``std(ddof=1) / sqrt(n)`` over exactly the split's examples (it was ``ddof=0``)."""
  setup = _toy_setup()

  def fake_nll(params, key, batch):  # a value per point; padding rows (zeros) would give 1e6
    del params, key
    x = np.asarray(batch["image"])
    padding = np.all(x == 0, axis=-1)
    return np.where(padding, 1e6, 3.0 + x[:, 0] ** 2).astype(np.float32), 5

  out = evaluate.evaluate_likelihood(setup, None, parallel.make_mesh(), progress=False,
                                     cache={"nll": fake_nll})
  ds = data_lib.get_dataset(setup.config.data, setup.config.data.eval_split,
                           seed=setup.config.seed)
  points = np.concatenate([b["image"][b["mask"]] for b in ds.iterate(1536)])
  expected = (3.0 + points[:, 0] ** 2).astype(np.float32).astype(np.float64)
  assert out["num_examples"] == len(expected) == 10_000 and out["num_failed"] == 0
  assert out["nll_nats"] == pytest.approx(expected.mean(), rel=1e-6)
  assert out["nll_nats_stderr"] == pytest.approx(
      expected.std(ddof=1) / np.sqrt(len(expected)), rel=1e-6)
  assert out["mean_nfe"] == 5

  # one example: no estimate of the spread (null in JSON), not 0
  one = evaluate.evaluate_likelihood(
      setup, None, parallel.make_mesh(), progress=False, max_batches=1,
      cache={"nll": lambda p, k, b: (np.where(np.arange(len(b["image"])) == 0, 1.0, np.nan)
                                     .astype(np.float32), 1)})
  assert one["num_examples"] == 1 and np.isnan(one["nll_nats_stderr"])


def test_eval_options_record_dtype_seed_and_bits_per_dim_convention():
  """Two evaluations of one step that differ in ``model.dtype`` (the arithmetic of
  ``eval.precision='model'``), ``seed`` (a toy evaluation set) or the data's levels must write
  different ``options``."""
  config = vp_unet.get_config()
  options = evaluate.run_options(config, "eval")
  assert options["data"] == {"dataset": "digits", "num_levels": 17, "centered": True}
  assert options["seed"] == config.seed and options["model_dtype"] == "float32"
  config.model.dtype = "bfloat16"
  assert evaluate.run_options(config, "eval")["model_dtype"] == "bfloat16"
  assert evaluate.run_options(config, "sampling")["model_dtype"] == "bfloat16"
  json.dumps(options, allow_nan=False)

  toy = vp_mlp.get_config()
  ds = lambda seed: data_lib.get_dataset(toy.data, toy.data.eval_split, seed=seed)
  first = lambda d: next(iter(d.iterate(8)))["image"]
  assert not np.array_equal(first(ds(0)), first(ds(1)))  # the seed draws the toy eval set
  toy.seed = 1
  assert evaluate.run_options(toy, "eval")["seed"] == 1


def test_zero_samples_is_an_error_naming_the_field():
  config = vp_mlp.get_config()
  config.model.hidden = (8, 8)
  setup = train.Setup(config)
  with pytest.raises(ValueError, match=r"config\.sampling\.num_samples .* got 0"):
    evaluate.generate_samples(setup, None, parallel.make_mesh(), 0, seed=0)


def test_eval_seed_draws_the_likelihood_keys():
  """``config.eval.seed`` (default 0) draws every bits/dim pass's dequantization noise and probes:
  the periodic, final and ``--mode=eval`` evaluations of a checkpoint use it (they agree), another
  seed draws other keys, an explicit ``seed`` argument wins, and the options record it."""
  setup = _toy_setup()
  assert setup.config.eval.seed == 0

  def keys_of(setup, **kwargs):
    seen = []

    def fake_nll(params, key, batch):
      del params
      seen.append(np.asarray(jax.random.key_data(key) if jax.dtypes.issubdtype(
          key.dtype, jax.dtypes.prng_key) else key))
      return np.ones(len(batch["image"]), np.float32), 1

    evaluate.evaluate_likelihood(setup, None, parallel.make_mesh(), progress=False,
                                 max_batches=2, cache={"nll": fake_nll}, **kwargs)
    return seen

  expected = lambda seed: [np.asarray(jax.random.fold_in(jax.random.PRNGKey(seed), i))
                           for i in range(2)]
  np.testing.assert_array_equal(keys_of(setup), expected(0))
  config = setup.config
  config.eval.seed = 3
  other = train.Setup(config)
  np.testing.assert_array_equal(keys_of(other), expected(3))
  np.testing.assert_array_equal(keys_of(other, seed=5), expected(5))
  assert evaluate.run_options(config, "eval")["eval"]["seed"] == 3
  config.eval.seed = -1
  with pytest.raises(ValueError, match=r"config\.eval\.seed must be >= 0"):
    train.validate_config(config, num_devices=8)
