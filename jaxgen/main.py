"""Command line: ``python -m jaxgen.main --config=configs/<...>.py --workdir=DIR --mode=MODE``.

Modes: ``train`` (resumes automatically; evaluates periodically; prints test bits/dim and the
sample grid at the end), ``eval`` (bits/dim over the whole test split with the probability-flow
ODE, summary JSON), ``sample`` (``sampling.num_samples`` samples as ``.npz`` and a PNG grid),
``reflow`` (coupled pairs of a trained rectified flow, resumable) and ``distill`` (one-step
generator trained on those pairs).
Override any config field with ``--config.a.b=value``; unknown keys are rejected.
"""
import os

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "experiment config file",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "directory holding all state of the run")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "eval", "sample", "reflow", "distill"],
                          "what to do (reflow: generate coupled pairs of a trained flow; distill: "
                          "train an n-step generator, or a warm-started k-rectified flow, on them)")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None,
                                   "jax.distributed coordinator host:port (multi-host runs)")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "number of processes (multi-host)")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "this process's index (multi-host)")
_CACHE = flags.DEFINE_string(
    "compilation_cache", os.environ.get("JAXGEN_COMPILATION_CACHE",
                                        os.path.expanduser("~/.cache/jaxgen/xla")),
    "persistent XLA compilation cache directory ('' turns it off)")
flags.mark_flags_as_required(["config", "workdir"])


def enable_compilation_cache(path: str) -> None:
  """Persistent compilation cache: a re-run (or a resumed run) skips recompiling the step."""
  import jax  # pylint: disable=import-outside-toplevel
  if not path:
    return
  os.makedirs(path, exist_ok=True)
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def main(argv):
  """``python -m jaxgen.main``: runs ``--mode`` (train, eval, sample, reflow, distill)."""
  del argv
  from jaxgen import parallel  # pylint: disable=import-outside-toplevel
  parallel.configure_xla_flags()  # before the first use of a device
  import jax  # pylint: disable=import-outside-toplevel
  from jaxgen import evaluate, train  # pylint: disable=import-outside-toplevel

  logging.set_verbosity(logging.WARNING)   # orbax / TFDS info lines would drown the progress
  enable_compilation_cache(_CACHE.value)
  parallel.initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  config, workdir = _CONFIG.value, _WORKDIR.value
  if _MODE.value == "train":
    summary = train.train_and_evaluate(config, workdir,
                                       evaluate_fn=evaluate.make_periodic_evaluation(config))
    summary.pop("state")
    evaluate.write_json(os.path.join(workdir, "train_summary.json"), summary)
    if jax.process_index() == 0:
      name = "test NLL (nats)" if evaluate.is_toy(config) else "test bits/dim"
      value = summary.get("nll_nats", summary.get("bpd"))
      if value is not None:
        print(f"{name} ({config.eval.num_bpd_batches} batches): {value:.4f}")
      if "sample_grid" in summary:
        print(f"sample grid: {os.path.abspath(summary['sample_grid'])}")
  elif _MODE.value in ("reflow", "distill"):
    from jaxgen import rectified_flow  # pylint: disable=import-outside-toplevel
    run = rectified_flow.run_reflow if _MODE.value == "reflow" else rectified_flow.run_distill
    run(config, workdir)
  elif _MODE.value == "eval":
    mesh = parallel.make_mesh()
    setup, state = train.load_state(config, workdir, mesh)
    results = evaluate.evaluate_likelihood(setup, state.ema_params, mesh)
    results["step"] = int(state.step)
    path = os.path.join(workdir, "eval", f"eval_step_{int(state.step)}.json")
    evaluate.write_json(path, results)
    if jax.process_index() == 0:
      print({k: v for k, v in results.items()})
      print(f"summary: {os.path.abspath(path)}")
  else:
    mesh = parallel.make_mesh()
    setup, state = train.load_state(config, workdir, mesh)
    samples, nfe = evaluate.generate_samples(setup, state.ema_params, mesh,
                                             int(config.sampling.num_samples), seed=config.seed)
    paths = evaluate.write_samples(setup, samples, workdir, f"sample_step_{int(state.step)}")
    if jax.process_index() == 0:
      print(f"{len(samples)} samples ({config.sampling.method}, NFE {nfe}): {paths['npz']}")
      print(f"sample grid: {os.path.abspath(paths['png'])}")


if __name__ == "__main__":
  app.run(main)
