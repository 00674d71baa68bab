"""One process of the local multi-host test (``tests/test_multihost.py`` starts several).

Usage::

    python tests/multihost_worker.py --coordinator_address localhost:PORT --num_processes 2 \
        --process_id I --local_devices 4 --workdir W --data_dir D --out O --n_iters 5 [--epoch]

The process starts ``jax.distributed`` with CPU devices (gloo collectives), checks the topology,
runs ``train.train_and_evaluate`` on :func:`tiny_config` (resuming from the newest checkpoint in
``W`` if there is one) and writes ``O/state_<I>.npz`` (the final train state, flattened). With
``--epoch`` it also writes ``O/epoch_<I>.npz``: one epoch of the train-split shard that this host
reads through ``get_dataset`` with the default process index and count.

Importing this module has no side effects (the test imports :func:`tiny_config` from it).
"""
import argparse
import os
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(data_dir: str, n_iters: int):
  """Digits 8x8 (TFDS, host-sharded) with a small MLP: a few seconds to compile on CPU."""
  if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)
  from configs.digits import vp_unet  # pylint: disable=import-outside-toplevel
  config = vp_unet.get_config()
  config.data.data_dir = data_dir
  config.data.random_flip = True  # exercises the per-step data key
  training = config.training
  training.batch_size = 16          # global: 2 rows per device on 8 devices
  training.n_iters = n_iters
  training.log_every = 1
  training.eval_every = 0
  training.snapshot_every = 0
  training.preemption_every = 5
  training.keep_checkpoints = 2
  config.eval.batch_size = 16
  model = config.model
  model.name = "mlp"
  model.hidden = (32, 32)
  model.embedding_dim = 16
  model.embedding_type = "positional"
  model.dropout = 0.0
  model.ema_rate = 0.9
  config.optim.lr = 1e-3
  config.optim.warmup = 2
  return config


def flatten_state(state) -> dict:
  """``{'params/Dense_0/kernel': array, ...}`` of a host copy of a TrainState."""
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  flat = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
    flat[jax.tree_util.keystr(path)] = np.asarray(leaf)
  return flat


def _one_epoch(dataset, local_batch: int) -> dict:
  """This host's shard, in its first-epoch order: images (n, H, W, C), labels (n,)."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  steps = -(-dataset.num_examples // local_batch)
  batches = [dataset.get_batch(s, local_batch) for s in range(steps)]
  n = dataset.num_examples
  return {"image": np.concatenate([b["image"] for b in batches])[:n],
          "label": np.concatenate([b["label"] for b in batches])[:n]}


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--coordinator_address", required=True)
  parser.add_argument("--num_processes", type=int, required=True)
  parser.add_argument("--process_id", type=int, required=True)
  parser.add_argument("--local_devices", type=int, default=4)
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--data_dir", required=True)
  parser.add_argument("--out", required=True)
  parser.add_argument("--n_iters", type=int, required=True)
  parser.add_argument("--epoch", action="store_true")
  args = parser.parse_args(argv)

  # Before JAX starts: this process's fake CPU devices.
  os.environ["JAX_PLATFORMS"] = "cpu"
  os.environ["XLA_FLAGS"] = (f"--xla_force_host_platform_device_count={args.local_devices} "
                             + os.environ.get("XLA_FLAGS_EXTRA", ""))
  if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from jaxgen import data as data_lib  # pylint: disable=import-outside-toplevel
  from jaxgen import parallel, train  # pylint: disable=import-outside-toplevel

  started = parallel.initialize_distributed(args.coordinator_address, args.num_processes,
                                            args.process_id, initialization_timeout=60)
  if not started:
    raise RuntimeError("jax.distributed did not start")
  expected = (args.num_processes, args.process_id, args.local_devices,
              args.num_processes * args.local_devices)
  got = (jax.process_count(), jax.process_index(), jax.local_device_count(), jax.device_count())
  if got != expected:
    raise RuntimeError(f"topology (process_count, process_index, local devices, devices) is "
                       f"{got}, expected {expected}")
  mesh = parallel.make_mesh()
  print(parallel.describe(mesh), flush=True)
  os.makedirs(args.out, exist_ok=True)

  # Host <-> global plumbing: this host feeds its rows of a global batch 0..15; every host must
  # get the whole batch back, the same mean, and the same replicated values.
  rows = parallel.host_batch_rows(16, mesh)
  local = np.repeat(np.arange(16, dtype=np.float32)[rows][:, None], 3, axis=1)
  global_x = parallel.host_local_to_global({"x": local}, mesh)["x"]
  replicated = parallel.replicate({"w": np.arange(3, dtype=np.float32)}, mesh)["w"]
  np.savez(os.path.join(args.out, f"plumbing_{args.process_id}.npz"),
           rows=np.asarray([rows.start, rows.stop]), gathered=parallel.to_host(global_x),
           mean=parallel.global_mean(global_x), replicated=parallel.to_host(replicated),
           addressable_rows=np.sort(np.concatenate(
               [np.asarray(s.data)[:, 0] for s in global_x.addressable_shards])))

  config = tiny_config(args.data_dir, args.n_iters)
  summary = train.train_and_evaluate(config, args.workdir, evaluate_fn=None)
  state = parallel.to_host(summary["state"])
  np.savez(os.path.join(args.out, f"state_{args.process_id}.npz"), **flatten_state(state))
  print(f"process {args.process_id}: steps {summary['start_step']} -> {summary['final_step']}",
        flush=True)

  if args.epoch:
    dataset = data_lib.get_dataset(config.data, config.data.train_split, seed=config.seed)
    epoch = _one_epoch(dataset, parallel.check_global_batch(
        config.training.batch_size, parallel.make_mesh()))
    np.savez(os.path.join(args.out, f"epoch_{args.process_id}.npz"),
             process_index=jax.process_index(), process_count=jax.process_count(),
             num_examples_total=dataset.num_examples_total, **epoch)
  jax.distributed.shutdown()
  return 0


if __name__ == "__main__":
  sys.exit(main())
