"""Every count the library takes goes through one integer rule (``jaxgen._checks.check_int``).

Before, hand-written copies disagreed: ``True`` passed as ``1`` for likelihood and CNF probes,
``make_mesh`` and the data pipeline; model fields truncated ``2.5`` to ``2`` through ``int()``. Each
entry below is a public function (or a config validator) called with a bad count; the error must
be a ValueError that names the field and shows the bad value.
"""
# pylint: disable=protected-access
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import base
from jaxgen import closed_form, cnf, evaluate, likelihood, models, parallel, processes
from jaxgen import rectified_flow, solvers, train
from jaxgen._checks import check_int, is_int
from jaxgen.data import pipeline, toy
from jaxgen.models import ffjord

BAD = [True, 2.5, "3", 0, -2, None]


def _drift(x, t):
  return -x * jnp.ones_like(t)[:, None]


def _score(x, t):
  return -x


def _model_config(**overrides):
  config = base.get_base_config()
  model = config.model.to_dict()
  model.update(name="ddpmpp", nf=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,))
  model.update(overrides)
  data = config.data.to_dict()
  data.update(image_size=8, num_channels=3)
  return model, ml_collections.ConfigDict(data)


def _validate_model(field):
  def call(value):
    model, data = _model_config(**{field: value})
    models.validate_model_config(model, data)
  return call


def _validate_num_channels(value):
  model, data = _model_config()
  data = ml_collections.ConfigDict({**data.to_dict(), "num_channels": value})
  models.validate_model_config(model, data)


def _sampling_config(num_steps):
  config = base.get_base_config()
  sampling = config.sampling.to_dict()
  sampling.update(num_steps=num_steps, method="euler")
  return ml_collections.ConfigDict({**config.to_dict(), "sampling": sampling})


_X = jnp.ones((2, 2))
ENTRIES = {
    "solve_ode num_steps": ("`num_steps`", lambda v: solvers.solve_ode(
        _drift, _X, 1.0, 0.5, solver="euler", num_steps=v)),
    "solve_ode max_steps": ("`max_steps`", lambda v: solvers.solve_ode(
        _drift, _X, 1.0, 0.5, solver="dopri5", max_steps=v)),
    "pc_sample n_steps_each": ("`n_steps_each`", lambda v: solvers.pc_sample(
        jax.random.PRNGKey(0), processes.VPSDE(), _score, (2, 2), n_steps_each=v, num_steps=4)),
    "edm_heun_sample num_steps": ("`num_steps`", lambda v: solvers.edm_heun_sample(
        jax.random.PRNGKey(0), lambda x, s: x, (2, 2), num_steps=v)),
    "ddim_sample shape": ("`shape`", lambda v: solvers.ddim_sample(
        jax.random.PRNGKey(0), processes.VPSDE(), lambda x, t: x, (v, 2), num_steps=4)),
    "ode_log_likelihood num_probes": ("`num_probes`", lambda v: likelihood.ode_log_likelihood(
        _drift, _X, key=jax.random.PRNGKey(0), prior_logp=lambda z: -0.5 * jnp.sum(z**2, -1),
        divergence="rademacher", num_probes=v)),
    "ode_log_likelihood max_steps": ("`max_steps`", lambda v: likelihood.ode_log_likelihood(
        _drift, _X, prior_logp=lambda z: -0.5 * jnp.sum(z**2, -1), max_steps=v)),
    "ode_log_likelihood fixed num_steps": ("`num_steps`", lambda v: likelihood.ode_log_likelihood(
        _drift, _X, prior_logp=lambda z: -0.5 * jnp.sum(z**2, -1), solver="euler",
        num_steps=v)),
    "sample_probes num_probes": ("`num_probes`", lambda v: likelihood.sample_probes(
        jax.random.PRNGKey(0), (2, 2), "rademacher", num_probes=v)),
    "num_levels": ("`num_levels`", lambda v: likelihood.check_num_levels(v if v != 0 else 1)),
    "cnf SolveOptions num_probes": ("cnf num_probes", lambda v: cnf.SolveOptions(num_probes=v)),
    "cnf SolveOptions max_steps": ("cnf max_steps", lambda v: cnf.SolveOptions(max_steps=v)),
    "cnf SolveOptions num_steps": ("is fixed-step: it needs num_steps", lambda v: cnf.SolveOptions(
        solver="euler", num_steps=v)),
    "GaussianMixture.sample n": ("`n`", lambda v: closed_form.random_gaussian(2).sample(
        jax.random.PRNGKey(0), v)),
    "sample_toy n": ("number of toy samples", lambda v: toy.sample_toy("moons", 0, v)),
    "gmm dimension": ("gmm dimension", toy.gmm_parameters),
    "check_batch_size": ("global batch size", lambda v: pipeline.check_batch_size(v, 1, 1)),
    "get_batch local_batch_size": ("local_batch_size", lambda v: pipeline.get_dataset(
        ml_collections.ConfigDict({"dataset": "toy_moons"}), "train", seed=0, process_index=0,
        process_count=1).get_batch(0, v)),
    "make_mesh model_parallel": ("model_parallel", lambda v: parallel.make_mesh(
        model_parallel=v)),
    "check_global_batch": ("batch_size", lambda v: parallel.check_global_batch(
        v, parallel.make_mesh())),
    "eval num_repeats": ("config.eval.num_repeats", lambda v: evaluate.eval_num_repeats(
        {"num_repeats": v})),
    "trajectory_statistics num_points": ("`num_points`", lambda v:
                                         rectified_flow.trajectory_statistics(
                                             _drift, _X, num_points=v)),
    "generate_pairs num_pairs": ("`num_pairs`", lambda v: rectified_flow.generate_pairs(
        lambda p, x, t: x, None, processes.LinearPath(), (2,), "/nonexistent/never-written",
        num_pairs=v)),
    "distill num_steps": ("config.distill.num_steps", lambda v: rectified_flow._distill_steps(
        {"distill": {"num_steps": v}})),
    "allreduce_buckets": ("config.training.allreduce_buckets", lambda v: train.data_parallel_mode(
        ml_collections.ConfigDict({"training": {"allreduce_buckets": v}}))),
    "model.nf": ("model.nf", _validate_model("nf")),
    "model.num_res_blocks": ("model.num_res_blocks", _validate_model("num_res_blocks")),
    "model.conv_size": ("model.conv_size", _validate_model("conv_size")),
    "data.num_channels": ("data.num_channels", _validate_num_channels),
    "ffjord num_blocks": ("model.num_blocks", lambda v: ffjord.validate_model_config(
        {"name": "ffjord_mlp", "num_blocks": v})),
    "ffjord num_scales": ("model.num_scales", lambda v: ffjord.validate_model_config(
        {"name": "ffjord_multiscale", "num_scales": v, "alpha": 0.0},
        ml_collections.ConfigDict({"image_size": 8}))),
    "generate_pairs max_chunks": ("`max_chunks`", lambda v: rectified_flow.generate_pairs(
        lambda p, x, t: x, None, processes.LinearPath(), (2,), "/nonexistent/never-written",
        num_pairs=4, max_chunks=v)),
    "sampling.num_steps": ("config.sampling.num_steps", lambda v: evaluate.validate_sampling_config(
        _sampling_config(v), processes.VPSDE())),
}
# Counts whose smallest value is 0 (and max_chunks, which may be None).
ALLOWED = {"ffjord num_scales": (0,), "generate_pairs max_chunks": (0, None),
           "sampling.num_steps": (0,)}


@pytest.mark.parametrize("bad", BAD, ids=repr)
@pytest.mark.parametrize("entry", sorted(ENTRIES))
def test_every_count_refuses_non_ints_by_name(entry, bad):
  name, call = ENTRIES[entry]
  if bad in ALLOWED.get(entry, ()) and not isinstance(bad, bool):
    return
  if entry == "ddim_sample shape":
    with pytest.raises(ValueError, match=f"{name} must be a non-empty tuple .* of positive ints"):
      call(bad)
    return
  with pytest.raises(ValueError) as info:
    call(bad)
  message = str(info.value)
  assert name in message, message
  assert "positive int" in message or "an int >= " in message, message
  shown = repr(bad if not (entry == "num_levels" and bad == 0) else 1)
  assert shown in message, message


def test_model_count_fields_refuse_bools_and_fractions():
  """These went through ``int()`` (2.5 -> 2, True -> 1) or ``isinstance(w, int)`` before."""
  for field, value in (("num_classes", True), ("num_classes", 2.5), ("ch_mult", (1, 2.5)),
                       ("ch_mult", (True, 2))):
    model, data = _model_config(**{field: value})
    with pytest.raises(ValueError, match=f"model.{field}"):
      models.validate_model_config(model, data)
  model, data = _model_config(name="mlp", hidden=(16, True))
  with pytest.raises(ValueError, match="model.hidden"):
    models.validate_model_config(model, data)
  with pytest.raises(ValueError, match="model.hidden_dims"):
    ffjord.validate_model_config({"name": "ffjord_mlp", "hidden_dims": (8, False)})


def test_numpy_integers_are_accepted_and_returned_as_python_ints():
  assert check_int(np.int64(3), "x") == 3 and type(check_int(np.int32(3), "x")) is int
  assert check_int(0, "x", minimum=0) == 0
  assert toy.sample_toy("moons", 0, np.int64(5)).shape == (5, 2)
  x, nfe = solvers.solve_ode(_drift, _X, 1.0, 0.5, solver="euler", num_steps=np.int32(4))
  assert int(nfe) == 4 and x.shape == (2, 2)
  model, data = _model_config(nf=np.int64(16), num_res_blocks=np.int64(1))
  models.validate_model_config(model, data)
  assert not is_int(np.bool_(True)) and not is_int(1.0) and is_int(np.uint8(1))


def test_check_int_message_names_rule_and_note():
  with pytest.raises(ValueError, match=r"^`k` must be a positive int, got True$"):
    check_int(True, "`k`")
  with pytest.raises(ValueError, match=r"^n must be an int >= 0 \(0: all\), got -1$"):
    check_int(-1, "n", minimum=0, note=" (0: all)")


@pytest.mark.parametrize("fn", [likelihood.bits_per_dim, likelihood.discrete_log_likelihood_bound])
def test_bits_per_dim_helpers_check_levels_and_range(fn):
  logp = jnp.array([-100.0, -200.0])
  for bad in (2.5, True, 1, "256"):
    with pytest.raises(ValueError, match="`num_levels` must be an int >= 2"):
      fn(logp, (4,), num_levels=bad)
  for bad in (0.0, -2.0, float("inf"), float("nan"), True):
    with pytest.raises(ValueError, match="`data_range` must be a finite number > 0"):
      fn(logp, (4,), data_range=bad)
  with pytest.raises(ValueError, match="`data_shape` must be non-empty"):
    fn(logp, (0,))
  # 256.0 from a config is 256; the bound and bits/dim agree: bpd = -bound / (D ln 2)
  bound = likelihood.discrete_log_likelihood_bound(logp, (4,), num_levels=256.0)
  np.testing.assert_allclose(likelihood.bits_per_dim(logp, (4,), num_levels=256.0),
                             -bound / (4 * np.log(2.0)), rtol=1e-6)


def test_check_positive_number_is_the_rule_of_data_range_and_cnf_times():
  from jaxgen._checks import check_positive_number  # pylint: disable=import-outside-toplevel
  assert check_positive_number(jnp.float32(2.0), "x") == 2.0
  assert check_positive_number(3, "x") == 3.0
  for bad in (True, "2.0", 0, -1.0, float("inf"), float("nan"), None):
    with pytest.raises(ValueError, match=r"^x must be a finite number > 0 \(why\), got "):
      check_positive_number(bad, "x", note=" (why)")
  with pytest.raises(ValueError, match="CNF block's integration time T"):
    cnf.vector_field_flow(lambda p, x, t: x, (2,), end_time="1.0")
