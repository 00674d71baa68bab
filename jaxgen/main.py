"""Command line: ``python -m jaxgen.main --config=configs/<...>.py --workdir=DIR --mode=MODE``.

Modes: ``train`` (resumes automatically; evaluates periodically; prints test bits/dim and the
sample grid at the end), ``eval`` (bits/dim over the whole test split with the probability-flow
ODE, summary JSON), ``sample`` (``sampling.num_samples`` samples as ``.npz`` and a PNG grid),
``reflow`` (coupled pairs of a trained rectified flow, resumable) and ``distill`` (one-step
generator trained on those pairs).
Override any config field with ``--config.a.b=value``; unknown keys are rejected.

Configuration, workdir and checkpoint errors end the run with one line on stderr,
``jaxgen: error: <message>``, and exit status 2 (``--debug`` shows their traceback); any other
exception is a bug and keeps its traceback. ``eval`` and ``sample`` never overwrite an earlier
result of the same step: a second one is written as ``..._2`` (``_3``, ...).
"""
import json
import logging as py_logging
import os
import re
import sys

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
_DEBUG = flags.DEFINE_bool("debug", False, "show the traceback of configuration, workdir and "
                           "checkpoint errors instead of one line")
flags.mark_flags_as_required(["config", "workdir"])

EXIT_USER_ERROR = 2


def _fail(message: str, immediate: bool = False) -> None:
  """Ends the program with ``jaxgen: error: <message>`` (on one line) on stderr and exit
  status 2.

  ``immediate`` (a checkpoint that could not be read) exits at once, after flushing the output
  and the log, without the interpreter's shutdown, and with nothing written to stderr after the
  error line: orbax's reads of a damaged checkpoint leave tensorstore threads whose asyncio
  callbacks, run after orbax closed its event loop or while Python tears down, printed "Exception
  ignored in ..." and "RuntimeError: Event loop is closed" tracebacks after the one-line error
  (in 3 of 6 runs, up to 516 lines). By then everything of the run is closed (its checkpoint
  manager and metric writer are closed in ``finally`` blocks) and the logging handlers are
  flushed and closed here; nothing else is left to finish. With several processes (hosts) it
  exits as usual, through ``jax.distributed``'s shutdown."""
  message = re.sub(r"\s*\n\s*", " ", message.strip())
  line = f"jaxgen: error: {message}"
  jax = sys.modules.get("jax")
  if immediate and jax is not None and jax.process_count() > 1:
    immediate = False  # several hosts: leave through jax.distributed's shutdown (atexit)
  if not immediate:
    print(line, file=sys.stderr, flush=True)
    sys.exit(EXIT_USER_ERROR)
  py_logging.shutdown()  # every logging handler flushed and closed (absl's included)
  sys.stdout.flush()
  sys.stderr.flush()
  # stderr goes to /dev/null first, then the line is written to a copy of it: no other thread's
  # output can land after it.
  stderr = os.dup(2)
  os.dup2(os.open(os.devnull, os.O_WRONLY), 2)
  data = (line + "\n").encode()
  while data:
    data = data[os.write(stderr, data):]
  os._exit(EXIT_USER_ERROR)  # pylint: disable=protected-access


def _exception_texts(error: BaseException):
  """The string arguments of ``error``, of exceptions among its arguments and of its chain."""
  seen, todo = set(), [error]
  while todo:
    e = todo.pop()
    if e is None or id(e) in seen:
      continue
    seen.add(id(e))
    for arg in e.args:
      if isinstance(arg, BaseException):
        todo.append(arg)
      elif isinstance(arg, str):
        yield arg
    todo += [e.__cause__, e.__context__]


def unknown_config_field(argv, error: BaseException):
  """The message for an override ``--config.a.b=...`` of a field the config lacks, found by
  walking the overrides in ``argv`` through the loaded config; None if there is none (``error``
  has another cause). Keeps ml_collections' "did you mean" suggestion."""
  config_arg, overrides = None, []
  for i, arg in enumerate(argv):
    match = re.match(r"^--?config(=(.*))?$", arg)
    if match and match.group(1):
      config_arg = match.group(2)
    elif match and i + 1 < len(argv):  # --config PATH
      config_arg = argv[i + 1]
    match = re.match(r"^--?(?:no)?config\.([^=]+)", arg)
    if match:
      overrides.append(match.group(1))
  if config_arg is None or not overrides:
    return None
  try:  # the config as the flag loads it, without the overrides
    config = flags.FLAGS["config"].parser.parse(config_arg)
  except Exception:  # pylint: disable=broad-except  # (the original error is raised instead)
    return None
  for override in overrides:
    node, parts = config, override.split(".")
    for j, part in enumerate(parts):
      if not hasattr(node, "keys"):  # a value (a tuple's index, say): not ours to judge
        break
      if part not in node.keys():
        field = "config." + ".".join(parts[:j + 1])
        hint = ""
        for text in _exception_texts(error):
          match = re.search(r'Did you mean "([^"]+)" instead of "([^"]+)"\?', text)
          if match and match.group(2) == part:
            hint = f"; did you mean {match.group(1)!r}?"
            break
        return f"unknown config field {field}{hint}"
      node = node[part]
  return None


def parse_flags(argv):
  """absl's flag parsing, with an override of an unknown config field (which ml_collections
  reports as a chained KeyError/AttributeError while parsing) reported in one line."""
  try:
    return app.parse_flags_with_usage(argv)
  except (KeyError, AttributeError) as e:
    message = unknown_config_field(argv, e)
    if message is None or any(re.match(r"^--?debug(=(true|1))?$", a, re.I) for a in argv):
      raise
    _fail(message)


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
  """``python -m jaxgen.main``: runs ``--mode`` (train, eval, sample, reflow, distill); a
  configuration, workdir or checkpoint error ends it with one line and exit status 2."""
  try:
    run(argv)
  except Exception as e:  # pylint: disable=broad-except
    if _DEBUG.value or not is_user_error(e):
      raise
    train = sys.modules.get("jaxgen.train")
    _fail(str(e), immediate=train is not None and isinstance(e, train.CheckpointError))


_OWN_DIRS = tuple(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), d)
                  + os.sep for d in ("jaxgen", "configs"))


def _raised_by_jaxgen(error: BaseException) -> bool:
  """Whether the innermost frame of ``error``'s traceback is jaxgen's or a config's code (its
  checks), not a library's (a ValueError from inside jax or flax is a bug, not a bad config)."""
  tb, last = error.__traceback__, None
  while tb is not None:
    last, tb = tb, tb.tb_next
  if last is None:  # never raised: nothing says otherwise
    return True
  return os.path.abspath(last.tb_frame.f_code.co_filename).startswith(_OWN_DIRS)


def is_user_error(error: BaseException) -> bool:
  """Whether ``error`` reports a bad config, workdir or checkpoint, or a run that diverged (one
  line, exit status 2) rather than a bug (a traceback): a ValueError raised by jaxgen's own
  checks, NotADirectoryError, FileExistsError, :class:`jaxgen.train.CheckpointError` and
  :class:`jaxgen.train.NonFiniteLossError` (its message names the step and the checkpoint kept)."""
  if isinstance(error, (NotADirectoryError, FileExistsError)):
    return True
  if isinstance(error, ValueError):
    return _raised_by_jaxgen(error)
  train = sys.modules.get("jaxgen.train")  # imported by now if it can have raised
  return train is not None and isinstance(error, (train.CheckpointError,
                                                  train.NonFiniteLossError))


def run(argv):
  """The body of :func:`main`."""
  del argv
  from jaxgen import parallel  # pylint: disable=import-outside-toplevel
  parallel.configure_xla_flags()  # before the first use of a device
  import jax  # pylint: disable=import-outside-toplevel
  from jaxgen import evaluate, train  # pylint: disable=import-outside-toplevel

  logging.set_verbosity(logging.WARNING)   # orbax / TFDS info lines would drown the progress
  enable_compilation_cache(_CACHE.value)
  parallel.initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  config, workdir = _CONFIG.value, _WORKDIR.value
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise NotADirectoryError(f"--workdir {os.path.abspath(workdir)} is a file, not a folder")
  if _MODE.value == "train":
    summary = train.train_and_evaluate(config, workdir,
                                       evaluate_fn=evaluate.make_periodic_evaluation(config))
    summary.pop("state")
    evaluate.write_json(os.path.join(workdir, "train_summary.json"), summary)
    if jax.process_index() == 0:
      name = "test NLL (nats)" if evaluate.is_toy(config) else "test bits/dim"
      value = summary.get("nll_nats", summary.get("bpd"))
      if value is not None:  # the last periodic evaluation's (at n_iters unless stopped early)
        step = summary.get("eval_step", summary.get("final_step"))
        count = summary.get("nll_examples")
        what = (f"{count:,} examples" if isinstance(count, int)
                else f"{config.eval.num_bpd_batches} batches")
        print(f"{name} at step {step} ({what}): {value:.4f}")
      if "sample_grid" in summary:
        print(f"sample grid: {os.path.abspath(summary['sample_grid'])}")
      if "density_plot" in summary:
        print(f"density plot: {os.path.abspath(summary['density_plot'])}")
  elif _MODE.value in ("reflow", "distill"):
    from jaxgen import rectified_flow  # pylint: disable=import-outside-toplevel
    run = rectified_flow.run_reflow if _MODE.value == "reflow" else rectified_flow.run_distill
    run(config, workdir)
  elif _MODE.value == "eval":
    mesh = parallel.make_mesh()
    setup, state = train.load_state(config, workdir, mesh)
    results = evaluate.evaluate_likelihood(setup, state.ema_params, mesh)
    results["step"] = int(state.step)
    eval_dir = os.path.abspath(os.path.join(workdir, "eval"))
    name = evaluate.unused_name(eval_dir, f"eval_step_{int(state.step)}",
                                (".json", "_density.png"))
    path = os.path.join(eval_dir, f"{name}.json")
    if evaluate.density_grid(config):  # 2-D toy data: the model's density as a PNG
      results["density_plot"] = evaluate.write_density(
          setup, state.ema_params, os.path.join(eval_dir, f"{name}_density.png"),
          lim=evaluate.density_extent(config), n=evaluate.density_grid(config), mesh=mesh)
    evaluate.write_json(path, dict(results, options=evaluate.run_options(config, "eval")))
    if jax.process_index() == 0:
      print(json.dumps(evaluate.json_safe(results), default=str))
      if "density_plot" in results:
        print(f"density plot: {results['density_plot']}")
      print(f"summary: {path}")
  else:
    mesh = parallel.make_mesh()
    setup, state = train.load_state(config, workdir, mesh)
    samples, nfe, labels = evaluate.generate_samples(
        setup, state.ema_params, mesh, int(config.sampling.num_samples), seed=config.seed,
        return_labels=True)
    metadata = {"step": int(state.step), "num_samples": len(samples), "nfe": nfe,
                "seed": config.seed, "options": evaluate.run_options(config, "sampling")}
    paths = evaluate.write_samples(setup, samples, workdir, f"sample_step_{int(state.step)}",
                                   keep_existing=True, metadata=metadata, labels=labels)
    if jax.process_index() == 0:
      print(f"{len(samples)} samples ({config.sampling.method}, NFE {nfe}): {paths['npz']}")
      print(f"sample grid: {paths['png']}")
      print(f"options: {paths['json']}")


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
