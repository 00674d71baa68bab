"""What a user of the command line sees: one-line errors, kept results, progress, paths, JSON."""
import glob
import json
import os
import re
import subprocess
import sys

import jax
import numpy as np
import pytest

from configs.toy import vp_mlp
from jaxgen import evaluate, parallel, train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOY = [f"--config={REPO}/configs/toy/vp_mlp.py:moons", "--config.model.hidden=(16,16)",
       "--config.eval.batch_size=5000", "--config.eval.rtol=1e-2", "--config.eval.atol=1e-2",
       "--config.eval.num_bpd_batches=1", "--config.sampling.method=euler",
       "--config.sampling.num_steps=4", "--config.sampling.num_samples=64",
       "--config.sampling.batch_size=32"]


def _run(args, cwd=REPO, returncode=0, devices=2):
  """``python -m jaxgen.main ARGS`` in ``cwd`` on ``devices`` CPU devices; returns (stdout,
  stderr)."""
  path = os.pathsep.join(p for p in (REPO, os.environ.get("PYTHONPATH", "")) if p)
  env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=path, JAX_PLATFORMS="cpu",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
  proc = subprocess.run([sys.executable, "-m", "jaxgen.main"] + args, cwd=cwd, env=env,
                        capture_output=True, text=True, timeout=1800)
  assert proc.returncode == returncode, (proc.stdout + proc.stderr)[-4000:]
  return proc.stdout, proc.stderr


def _without_unraisable_reports(stderr):
  """``stderr`` without Python's "Exception ignored in: ..." reports: orbax's async readers of a
  damaged checkpoint are sometimes garbage-collected with their error unretrieved, at a time
  that varies from run to run. Not the run's own error: it is reported apart from it."""
  kept, skipping = [], False
  for line in stderr.splitlines():
    if line.startswith("Exception ignored in"):
      skipping = True
    elif skipping and (line.startswith("jaxgen: error: ") or re.match(r"^[IWEF]\d{4} ", line)):
      skipping = False
    if not skipping:
      kept.append(line)
  return _without_closed_loop_reports("\n".join(kept))


# orbax's asyncio callbacks, run from tensorstore's threads while the interpreter shuts down after
# a damaged checkpoint, print "RuntimeError: Event loop is closed" tracebacks (before or after
# our error line, interleaved with each other). Each has one header, two asyncio frames and the
# error; none of their lines comes from jaxgen.
_CLOSED_LOOP_ERROR = "RuntimeError: Event loop is closed"
_CLOSED_LOOP_PARTS = ("asyncio/base_events.py", "self._check_closed()",
                      "raise RuntimeError('Event loop is closed')", _CLOSED_LOOP_ERROR)


def _without_closed_loop_reports(stderr):
  """``stderr`` without those reports' lines: their frames and errors, and as many traceback
  headers as there were such errors, also where one was printed onto the end of another line
  (an extra header, ours, stays and fails the check)."""
  header = "Traceback (most recent call last):"
  headers = stderr.count(_CLOSED_LOOP_ERROR)
  kept = []
  for line in stderr.splitlines():
    if any(part in line for part in _CLOSED_LOOP_PARTS):
      continue
    while headers > 0 and header in line:  # a header may be printed onto another line's end
      line = line.replace(header, "", 1)
      headers -= 1
    if line.strip() or not kept:
      kept.append(line)
  return "\n".join(kept)


def _one_line_error(stderr):
  """The ``jaxgen: error:`` line of a user error; no traceback of ours, nothing of ours after it."""
  stderr = _without_unraisable_reports(stderr)
  # No traceback of the run itself: none through jaxgen's code or absl's app runner. (orbax's
  # threads may still print their own asyncio/tensorstore tracebacks of a damaged checkpoint at
  # shutdown, at a time and in a shape that vary from run to run: its frames are orbax's.)
  ours = re.search(r'File "[^"]*(/jaxgen/|/absl/app\.py)', stderr)
  assert ours is None, stderr[-4000:]
  lines = [l for l in stderr.splitlines() if l.startswith("jaxgen: error: ")]
  assert len(lines) == 1, stderr[-4000:]
  if "Traceback" not in stderr:  # without orbax's reports, nothing follows the error line
    assert stderr.rstrip().endswith(lines[0]), stderr[-4000:]
  return lines[0][len("jaxgen: error: "):]


def test_unknown_config_field_is_one_line_naming_the_field(tmp_path):
  """ml_collections raises a chained KeyError/AttributeError while absl parses the flags (before
  main runs): reported as the field's full name with its "did you mean", exit status 2."""
  _, err = _run(TOY + [f"--workdir={tmp_path}", "--config.training.n_iter=5"], returncode=2)
  assert _one_line_error(err) == "unknown config field config.training.n_iter; did you mean " \
                                 "'n_iters'?"
  _, err = _run([f"--workdir={tmp_path}", "--config", f"{REPO}/configs/toy/vp_mlp.py:moons",
                 "--config.trainin.n_iters=5", "--config.data.pairs_dir=/tmp"], returncode=2)
  assert _one_line_error(err) == "unknown config field config.trainin; did you mean 'training'?"
  assert not os.listdir(tmp_path)  # nothing ran


def test_workdir_and_checkpoint_errors_are_one_line(tmp_path):
  _, err = _run(TOY + [f"--workdir={tmp_path / 'none'}", "--mode=eval"], returncode=2)
  assert _one_line_error(err) == (f"no checkpoints in {tmp_path / 'none' / 'checkpoints'}: "
                                  "train first (--mode=train)")
  (tmp_path / "file").write_text("")
  _, err = _run(TOY + [f"--workdir={tmp_path / 'file'}", "--config.training.n_iters=1"],
                returncode=2)
  assert _one_line_error(err) == f"--workdir {tmp_path / 'file'} is a file, not a folder"


def test_user_errors_and_bugs_are_told_apart():
  from jaxgen import main  # pylint: disable=import-outside-toplevel
  assert main.is_user_error(ValueError("config.x must be > 0"))
  assert main.is_user_error(NotADirectoryError("w"))
  assert main.is_user_error(train.CheckpointError("corrupt"))
  assert main.is_user_error(train.NonFiniteLossError("non-finite loss at step 6"))
  assert not main.is_user_error(RuntimeError("a bug"))
  assert not main.is_user_error(TypeError("a bug"))
  assert not main.is_user_error(KeyError("a bug"))
  # a ValueError raised inside a library (a shape bug) keeps its traceback; jaxgen's checks don't
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from jaxgen import likelihood  # pylint: disable=import-outside-toplevel
  with pytest.raises(ValueError) as library:
    jnp.split(jnp.ones((3,)), 2)  # raised inside jax.numpy
  assert not main.is_user_error(library.value)
  with pytest.raises(ValueError) as ours:
    likelihood.bits_per_dim(jnp.ones((2,)), (0,))
  assert main.is_user_error(ours.value)


def test_eval_and_sample_keep_earlier_results_with_their_options(tmp_path):
  """Training announces its final evaluation and prints absolute paths from a relative workdir;
  a second eval / sample of the same step is written next to the first (``_2``) with the
  options that made it; a corrupt checkpoint is a one-line refusal."""
  out, _ = _run(TOY + ["--workdir=run", "--config.training.n_iters=2",
                       "--config.training.eval_every=2"], cwd=tmp_path)
  lines = out.splitlines()
  announce = [i for i, l in enumerate(lines) if l.startswith("evaluating @ step 2: ")]
  assert announce and "1 nll batches of 5000" in lines[announce[0]]
  assert "64 samples (euler)" in lines[announce[0]]
  result = [l for l in lines[announce[0]:] if l.startswith("eval @ step 2: ")][0]
  assert f"sample_grid {tmp_path / 'run' / 'samples' / 'step_0000002.png'}" in result
  # 2-D toy data: the model's probability-flow density as a PNG too, announced and printed
  assert "a density plot (100^2 points)" in lines[announce[0]]
  assert f"density_plot {tmp_path / 'run' / 'samples' / 'density_0000002.png'}" in result
  assert f"density plot: {tmp_path / 'run' / 'samples' / 'density_0000002.png'}" in lines
  # the final line names the evaluation's step and how many examples it averaged (one batch of
  # 5,000 toy points; it said "(1 batches)" whatever the split held or the step it came from)
  final = [l for l in lines if l.startswith("test NLL (nats) at step 2 (5,000 examples): ")]
  assert len(final) == 1, lines[-6:]

  run = tmp_path / "run"
  out1, _ = _run(TOY + [f"--workdir={run}", "--mode=eval"])
  out2, _ = _run(TOY + [f"--workdir={run}", "--mode=eval", "--config.eval.rtol=1e-3"])
  assert f"summary: {run / 'eval' / 'eval_step_2.json'}" in out1
  assert f"summary: {run / 'eval' / 'eval_step_2_2.json'}" in out2
  first = json.loads((run / "eval" / "eval_step_2.json").read_text())
  second = json.loads((run / "eval" / "eval_step_2_2.json").read_text())
  assert first["options"]["eval"]["rtol"] == 1e-2 and second["options"]["eval"]["rtol"] == 1e-3
  assert first["options"]["eval"]["solver"] == "dopri5" and first["options"]["split"] == "test"
  assert json.loads(out1.splitlines()[-3])["step"] == 2  # the printed summary is JSON too
  for name in ("eval_step_2", "eval_step_2_2"):  # each evaluation's density plot beside it
    png = run / "eval" / f"{name}_density.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((run / "eval" / f"{name}.json").read_text())["density_plot"] == str(png)
  assert f"density plot: {run / 'eval' / 'eval_step_2_2_density.png'}" in out2

  out1, err1 = _run(TOY + [f"--workdir={run}", "--mode=sample"])
  out2, _ = _run(TOY + [f"--workdir={run}", "--mode=sample", "--config.sampling.method=heun"])
  assert "samples (euler)" in err1 and "2/2" in err1  # a progress bar over the two batches
  assert f"NFE 4): {run / 'samples' / 'sample_step_2.npz'}" in out1
  assert f"sample grid: {run / 'samples' / 'sample_step_2_2.png'}" in out2
  for name, method in (("sample_step_2", "euler"), ("sample_step_2_2", "heun")):
    meta = json.loads((run / "samples" / f"{name}.json").read_text())
    assert meta["options"]["sampling"]["method"] == method and meta["step"] == 2
    assert np.load(run / "samples" / f"{name}.npz")["samples"].shape == (64, 2)

  data = glob.glob(str(run / "checkpoints" / "2" / "state" / "ocdbt.process_*" / "d" / "*"))
  assert data
  for path in data:  # the arrays' data files lost their contents
    open(path, "w").close()
  _, err = _run(TOY + [f"--workdir={run}", "--mode=eval"], returncode=2)
  assert "checkpoint 2 in" in _one_line_error(err) and "corrupt or incompatible" in err
  # main exits at once on a checkpoint error, with stderr closed to other threads first: orbax's
  # shutdown tracebacks (up to 516 lines in 3 of 6 runs before) can no longer follow the line.
  assert err.rstrip().splitlines()[-1].startswith("jaxgen: error: checkpoint 2 in"), err[-4000:]


def _toy_setup(**eval_options):
  config = vp_mlp.get_config()
  config.model.hidden = (8, 8)
  config.eval.batch_size = 16
  config.eval.rtol = config.eval.atol = 1e-2
  for name, value in eval_options.items():
    config.eval[name] = value
  return train.Setup(config)


@pytest.mark.parametrize("num_repeats", [1, 2])
def test_num_repeats_passes_over_the_batches_with_fresh_keys(num_repeats):
  """``eval.num_repeats`` passes over the same batches, each with new keys (dequantization noise
  and probes); one pass keeps the keys of before, ``fold_in(PRNGKey(seed), batch)``."""
  setup = _toy_setup(num_repeats=num_repeats)
  calls = []

  def fake_nll(params, key, batch):
    del params
    calls.append((np.asarray(key), np.asarray(batch["image"])))
    return np.full((16,), float(len(calls)), np.float32), 7

  out = evaluate.evaluate_likelihood(setup, None, parallel.make_mesh(), max_batches=2,
                                     progress=False, cache={"nll": fake_nll})
  assert len(calls) == 2 * num_repeats
  keys = [k.tobytes() for k, _ in calls]
  assert len(set(keys)) == len(keys)  # fresh noise for every solve
  for i in range(2):
    np.testing.assert_array_equal(calls[i][0], jax.random.fold_in(jax.random.PRNGKey(0), i))
    for r in range(1, num_repeats):  # the same examples again
      np.testing.assert_array_equal(calls[r * 2 + i][1], calls[i][1])
  assert out["num_examples"] == 32 * num_repeats and out["num_failed"] == 0
  assert out["nll_nats"] == pytest.approx(np.mean(np.arange(1, 2 * num_repeats + 1)))
  assert out["mean_nfe"] == 7
  assert out.get("num_repeats", 1) == num_repeats


def test_num_repeats_draws_new_probes_and_is_validated():
  setup = _toy_setup(divergence="rademacher", num_repeats=1)
  params = setup.init_state(jax.random.PRNGKey(0)).params
  mesh = parallel.make_mesh()
  one = evaluate.evaluate_likelihood(setup, params, mesh, max_batches=1, progress=False)
  setup.config.eval.num_repeats = 2
  two = evaluate.evaluate_likelihood(setup, params, mesh, max_batches=1, progress=False)
  assert (one["num_examples"], two["num_examples"]) == (16, 32)
  assert np.isfinite(two["nll_nats"]) and two["nll_nats"] != one["nll_nats"]
  for bad in (0, -1):
    setup.config.eval.num_repeats = bad
    with pytest.raises(ValueError, match="config.eval.num_repeats"):
      train.validate_config(setup.config, num_devices=8)


def test_relative_source_dir_error_names_the_field_and_the_absolute_path(tmp_path, monkeypatch):
  from jaxgen.data.builders import prepare_local_dataset  # pylint: disable=import-outside-toplevel
  (tmp_path / "cwd").mkdir()
  monkeypatch.chdir(tmp_path / "cwd")
  with pytest.raises(ValueError) as info:
    prepare_local_dataset("mnist_local", str(tmp_path / "tfds"), "../shared/data/mnist")
  message = str(info.value)
  assert "config.data.source_dir '../shared/data/mnist'" in message
  assert f"tried {tmp_path / 'shared' / 'data' / 'mnist'}" in message
  assert f"resolved against the current directory, {tmp_path / 'cwd'}" in message


def test_json_has_null_for_nan_and_infinity(tmp_path):
  path = tmp_path / "a" / "eval.json"
  evaluate.write_json(str(path), {"bpd": float("nan"), "x": [np.float32(np.inf), 1.5],
                                  "n": np.int64(3), "ok": np.bool_(True), "s": "NaN"})
  text = path.read_text()
  assert "NaN" not in text.replace('"NaN"', "") and "Infinity" not in text

  def refuse(name):
    raise AssertionError(f"non-standard JSON constant {name}")

  assert json.loads(text, parse_constant=refuse) == {"bpd": None, "x": [None, 1.5], "n": 3,
                                                     "ok": True, "s": "NaN"}


def test_samples_progress_absolute_paths_and_kept_files(tmp_path, monkeypatch, capsys):
  setup = _toy_setup()
  setup.config.sampling.method, setup.config.sampling.num_steps = "euler", 2
  setup.config.sampling.batch_size = 16
  params = setup.init_state(jax.random.PRNGKey(0)).params
  samples, _ = evaluate.generate_samples(setup, params, parallel.make_mesh(), 32, seed=0)
  assert "samples (euler)" in capsys.readouterr().err  # two batches: a progress bar
  monkeypatch.chdir(tmp_path)
  first = evaluate.write_samples(setup, samples, "run", "s", keep_existing=True,
                                 metadata={"step": 1})
  again = evaluate.write_samples(setup, samples, "run", "s", keep_existing=True)
  samples_dir = tmp_path / "run" / "samples"
  assert first == {"npz": str(samples_dir / "s.npz"), "png": str(samples_dir / "s.png"),
                   "json": str(samples_dir / "s.json")}
  assert again == {"npz": str(samples_dir / "s_2.npz"), "png": str(samples_dir / "s_2.png")}
  assert json.loads((samples_dir / "s.json").read_text())["npz"] == first["npz"]
  assert sorted(os.listdir(samples_dir)) == ["s.json", "s.npz", "s.png", "s_2.npz", "s_2.png"]


def test_a_checkpoint_is_evaluated_on_another_device_count(tmp_path):
  """A run trained on 2 devices with a training batch of 16 is evaluated and sampled on 3: only
  the evaluation batch must split over the devices there (the training batch was checked too, and
  eval was refused: 'config.training.batch_size: ... not divisible by the number of devices 3').
  Training on 3 devices is still refused, naming the field."""
  run = tmp_path / "run"
  common = TOY + ["--config.training.batch_size=16", "--config.training.n_iters=2",
                  "--config.training.eval_every=0", "--config.eval.batch_size=4998",
                  f"--workdir={run}"]
  _run(common + ["--mode=train"])
  out, _ = _run(common + ["--mode=eval"], devices=3)
  summary = json.loads((run / "eval" / "eval_step_2.json").read_text())
  assert summary["step"] == 2 and summary["num_examples"] == 10000 and summary["num_failed"] == 0
  assert np.isfinite(summary["nll_nats"])
  out, _ = _run(common + ["--mode=sample"], devices=3)
  assert "64 samples (euler" in out
  _, err = _run(common + ["--mode=train", "--config.training.n_iters=4"], devices=3, returncode=2)
  assert "config.training.batch_size" in err and "devices 3" in err
