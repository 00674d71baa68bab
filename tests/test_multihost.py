"""Multi-host training on one machine: 2 processes x 4 CPU devices through ``jax.distributed``.

What "equal" means here. Each host reads its own shard of the digits train split (host ``i`` of
``n`` takes the ``i``-th contiguous block and walks it in its own seeded order), and
``parallel.host_local_to_global`` lays the hosts' local batches out host by host, so the global
batch of step ``s`` is ``concat(host 0's batch s, host 1's batch s)``. A single process reading
the whole split would see a different batch, so the one-process reference is made to read the
same one: its data set is replaced by a view that concatenates what the two hosts read
(:class:`TwoHostView`). With the same seed, config and global batches, the two runs execute the
same program on the same 8 data shards; they can differ only in the order of the cross-device
sums (gloo vs in-process all-reduce), so the states agree to float32 tolerance, and the two
processes of the multi-host run hold bit-identical replicated states.

The multi-host run trains 5 steps, writes an orbax checkpoint from both processes, exits; two
fresh processes restore it and train 5 more. The reference trains 10 steps without a break.
"""
import collections
import json
import os
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

import multihost_worker
from jaxgen import data as data_lib
from jaxgen import parallel, train

NUM_PROCESSES = 2
LOCAL_DEVICES = 4
PHASE_TIMEOUT_S = 720  # hang guards: a slow 2-core machine took 2.5x its usual time
WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "multihost_worker.py")


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _tail(path, n=60):
  try:
    with open(path, errors="replace") as f:
      return "".join(f.readlines()[-n:])
  except OSError:
    return "<no log>"


def run_workers(tmp_path, name, extra_args, timeout=PHASE_TIMEOUT_S):
  """Start NUM_PROCESSES workers, wait for all; on any failure or timeout kill the rest and fail
  with every worker's log."""
  port = _free_port()
  env = dict(os.environ)
  env.pop("XLA_FLAGS", None)  # the worker sets its own device count
  procs, logs = [], []
  for i in range(NUM_PROCESSES):
    log = tmp_path / f"{name}_worker{i}.log"
    logs.append(log)
    cmd = [sys.executable, WORKER, "--coordinator_address", f"localhost:{port}",
           "--num_processes", str(NUM_PROCESSES), "--process_id", str(i),
           "--local_devices", str(LOCAL_DEVICES)] + extra_args
    with open(log, "w") as f:
      procs.append(subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env))
  deadline = time.time() + timeout
  failed = None
  while True:
    codes = [p.poll() for p in procs]
    if any(c not in (None, 0) for c in codes):
      failed = f"worker exited with {codes}"
      break
    if all(c == 0 for c in codes):
      break
    if time.time() > deadline:
      failed = f"timeout after {timeout}s (exit codes {codes})"
      break
    time.sleep(0.2)
  if failed:
    for p in procs:
      if p.poll() is None:
        p.kill()
    for p in procs:
      p.wait()
    report = "\n".join(f"----- worker {i} ({logs[i]}) -----\n{_tail(logs[i])}"
                       for i in range(NUM_PROCESSES))
    pytest.fail(f"{name}: {failed}\n{report}")
  return logs


class TwoHostView:
  """One process reading what ``num_hosts`` hosts read: batch ``step`` of global size ``B`` is
  the concatenation, in host order, of each host's ``get_batch(step, B // num_hosts)``."""

  def __init__(self, get_dataset, data_config, split, seed, num_hosts):
    self.hosts = [get_dataset(data_config, split, seed=seed, process_index=i,
                              process_count=num_hosts) for i in range(num_hosts)]

  def get_batch(self, step, batch_size):
    parts = [h.get_batch(step, batch_size // len(self.hosts)) for h in self.hosts]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  from jaxgen.data.builders import prepare_local_dataset
  path = str(tmp_path_factory.mktemp("tfds"))
  prepare_local_dataset("digits", path)  # once, before the workers (no race between them)
  return path


def _load(path):
  with np.load(path) as f:
    return {k: f[k] for k in f.files}


def _max_diff(a, b, prefix=""):
  return max(float(np.max(np.abs(a[k].astype(np.float64) - b[k].astype(np.float64))))
             for k in a if k.startswith(prefix) and a[k].size)


def test_two_processes_train_checkpoint_resume_equal_one_process(tmp_path, data_dir,
                                                                  monkeypatch):
  if jax.device_count() < NUM_PROCESSES * LOCAL_DEVICES:
    pytest.fail("the one-process reference needs 8 devices: run with "
                "XLA_FLAGS=--xla_force_host_platform_device_count=8 (tests/conftest.py sets it)")
  workdir = str(tmp_path / "workdir")
  common = ["--workdir", workdir, "--data_dir", data_dir]
  run_workers(tmp_path, "steps_0_to_5", common + ["--out", str(tmp_path / "out5"),
                                                  "--n_iters", "5", "--epoch"])
  assert os.path.isdir(os.path.join(workdir, "checkpoints", "5"))
  logs = run_workers(tmp_path, "steps_5_to_10", common + ["--out", str(tmp_path / "out10"),
                                                          "--n_iters", "10"])
  assert "resumed from" in _tail(logs[0]) and "steps 5 -> 10" in _tail(logs[0])

  # 0) host <-> global plumbing across processes
  for i in range(NUM_PROCESSES):
    plumbing = _load(tmp_path / "out5" / f"plumbing_{i}.npz")
    local = 16 // NUM_PROCESSES
    np.testing.assert_array_equal(plumbing["rows"], [i * local, (i + 1) * local])
    np.testing.assert_array_equal(plumbing["addressable_rows"], np.arange(i * local,
                                                                          (i + 1) * local))
    np.testing.assert_array_equal(plumbing["gathered"],
                                  np.repeat(np.arange(16, dtype=np.float32)[:, None], 3, axis=1))
    assert float(plumbing["mean"]) == 7.5
    np.testing.assert_array_equal(plumbing["replicated"], np.arange(3, dtype=np.float32))

  # 1) the processes agree bit for bit
  states = [_load(tmp_path / "out10" / f"state_{i}.npz") for i in range(NUM_PROCESSES)]
  assert int(states[0][".step"]) == 10
  for other in states[1:]:
    assert other.keys() == states[0].keys()
    for k in states[0]:
      np.testing.assert_array_equal(other[k], states[0][k], err_msg=k)

  # 2) ... and match one process on 8 devices fed the same global batches, 10 steps in one go
  original = data_lib.get_dataset
  monkeypatch.setattr(data_lib, "get_dataset", lambda data_config, split, *, seed: TwoHostView(
      original, data_config, split, seed, NUM_PROCESSES))
  config = multihost_worker.tiny_config(data_dir, 10)
  summary = train.train_and_evaluate(config, str(tmp_path / "reference"), evaluate_fn=None)
  monkeypatch.undo()
  reference = multihost_worker.flatten_state(parallel.to_host(summary["state"]))
  assert reference.keys() == states[0].keys()
  param_diff = _max_diff(reference, states[0], ".params")
  state_diff = _max_diff(reference, states[0])
  print(f"\nmax |multi-host - one-process| after 10 steps: params {param_diff:.3g}, "
        f"whole train state {state_diff:.3g}")
  moved = _max_diff(reference, _load(tmp_path / "out5" / "state_0.npz"), ".params")
  assert moved > 1e-4  # steps 6..10 changed the parameters
  for k in reference:
    np.testing.assert_allclose(states[0][k], reference[k], rtol=1e-5, atol=1e-6, err_msg=k)

  # 3) the 8-device checkpoint restores onto 4 and 2 devices
  for n in (4, 2):
    mesh = parallel.make_mesh(jax.devices()[:n])
    _, restored = train.load_state(config, workdir, mesh)
    leaves = jax.tree_util.tree_leaves(restored)
    assert all(leaf.sharding.is_fully_replicated and len(leaf.sharding.device_set) == n
               for leaf in leaves)
    flat = multihost_worker.flatten_state(parallel.to_host(restored))
    for k in flat:
      np.testing.assert_array_equal(flat[k], states[0][k], err_msg=f"{n} devices: {k}")

  # 4) the hosts' shards of one epoch (read with the default process index / count) are the
  #    train split, each example once
  epochs = [_load(tmp_path / "out5" / f"epoch_{i}.npz") for i in range(NUM_PROCESSES)]
  assert [int(e["process_index"]) for e in epochs] == list(range(NUM_PROCESSES))
  assert all(int(e["process_count"]) == NUM_PROCESSES for e in epochs)
  assert sum(len(e["label"]) for e in epochs) == int(epochs[0]["num_examples_total"]) == 1500
  whole = next(original(config.data, "train", seed=0, process_index=0,
                        process_count=1).iterate(1500))
  expected = collections.Counter((im.tobytes(), int(lb))
                                 for im, lb in zip(whole["image"], whole["label"]))
  seen = collections.Counter((im.tobytes(), int(lb)) for e in epochs
                             for im, lb in zip(e["image"], e["label"]))
  assert sum(expected.values()) == 1500
  assert seen == expected  # same multiset: every example once, nothing twice


def test_local_multiprocess_script(tmp_path):
  """launch/local_multiprocess.sh 2 trains a tiny config through jaxgen.main and checkpoints,
  with the per-device step (`data_parallel='shard_map'`, its all-reduces across the processes),
  and logs the same losses as one process with as many devices (toy data, run 26)."""
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

  def launch(processes, devices_per_process, workdir):
    # PYTHON: the interpreter running the tests, also when its environment is not activated.
    env = dict(os.environ, DEVICES_PER_PROCESS=str(devices_per_process), TIMEOUT="300",
               LOG_DIR=str(tmp_path / f"logs{processes}"), PYTHON=sys.executable)
    env.pop("XLA_FLAGS", None)
    result = subprocess.run(
        [os.path.join(repo, "launch", "local_multiprocess.sh"), str(processes),
         "--config=configs/toy/vp_mlp.py", f"--workdir={workdir}", "--config.training.n_iters=4",
         "--config.training.batch_size=16", "--config.training.log_every=1",
         "--config.training.eval_every=4", "--config.eval.num_bpd_batches=0",
         "--config.eval.batch_size=40", "--config.sampling.num_samples=16",
         "--config.training.preemption_every=4",
         "--config.model.hidden=(32,32)", "--config.training.data_parallel=shard_map",
         "--config.training.allreduce_buckets=3"],
        cwd=repo, env=env, capture_output=True, text=True, timeout=1080)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    with open(workdir / "metrics.jsonl") as f:
      rows = [json.loads(line) for line in f]
    held_out = [r["eval/held_out_loss"] for r in rows if "eval/held_out_loss" in r]
    return result, [r["train/loss"] for r in rows if "train/loss" in r], held_out

  workdir = tmp_path / "run"
  result, losses, held_out = launch(2, 2, workdir)
  # one process of 4 devices trains on the same global batches (toy data are drawn per global
  # batch, not per host) with the same noise (shard_map draws the global batch's rows)
  _, one_process, held_out_one = launch(1, 4, tmp_path / "run_one_process")
  assert len(losses) == 4
  np.testing.assert_allclose(losses, one_process, rtol=1e-5)
  # the periodic held-out loss (per-row losses gathered over the hosts, masked) is that of one
  # process: each host evaluates its rows of the same global evaluation batches
  assert len(held_out) == 1 and np.isfinite(held_out[0])
  np.testing.assert_allclose(held_out, held_out_one, rtol=1e-5)
  assert "with 4 device(s), steps 0 -> 4" in result.stdout
  # 3 buckets asked; the time embedding's 128 x 128 kernel, last in backward order, holds 63 %
  # of the parameters, so the groups are {rest} and {embedding}.
  assert "data parallel: shard_map, the float32 gradient all-reduced in 2 piece(s)" in result.stdout
  assert os.path.isdir(workdir / "checkpoints" / "4")
  # the periodic density plot: each process solved its half of the grid's rows, host 0 wrote it
  assert (workdir / "samples" / "density_0000004.png").stat().st_size > 0
