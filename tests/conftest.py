"""Test setup: fake 8 CPU devices (before JAX initialises) so sharded code is exercised."""
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Run on a GPU with JAX_PLATFORMS=cuda: the tests that count drift evaluations do it with host
# callbacks (`jax.debug.callback`), which need the CPU platform beside it (the first listed stays
# the default backend).
_platforms = [p for p in os.environ["JAX_PLATFORMS"].split(",") if p]
if _platforms and "cpu" not in _platforms:  # (empty: jax picks every platform, the CPU included)
  os.environ["JAX_PLATFORMS"] = ",".join(_platforms + ["cpu"])

# A persistent compilation cache shared by the test processes (both xdist workers and the
# subprocesses they start): many tests compile the same step or network again (a run and its
# resumed half, the 'gspmd' and 'shard_map' sides, each config's one-step check), and a cache hit
# skips XLA's compile. Entries are keyed by the HLO, the compile options, the devices and the
# jax/jaxlib versions, so a stale directory only costs space, and that space is capped: past
# 512 MB jax deletes the least recently used entries (JAX_COMPILATION_CACHE_MAX_SIZE; one whole
# suite writes about 46 MB). JAX_COMPILATION_CACHE_DIR= (empty) turns the cache off. (A new
# directory name: jax's eviction reads an access-time file per entry, which entries written
# without the cap lack; in the old directory every write failed with a FileNotFoundError.)
import tempfile  # noqa: E402  pylint: disable=wrong-import-position

os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR",
    os.path.join(tempfile.gettempdir(), f"jaxgen-test-xla-lru-cache-{os.getuid()}"))
# The command-line runs the tests start (``python -m jaxgen.main``) use it too, instead of their
# default ~/.cache/jaxgen/xla: that one holds entries without the access-time files that the cap
# below needs, and every cache write of those runs failed there.
os.environ.setdefault("JAXGEN_COMPILATION_CACHE", os.environ["JAX_COMPILATION_CACHE_DIR"])
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.3")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
try:  # jax's eviction locks the directory with `filelock` (a test dependency in setup.cfg)
  import filelock  # noqa: F401  pylint: disable=unused-import,wrong-import-position
  os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(512 * 2**20))
except ImportError:
  pass

# XLA's cheapest CPU code generation (`xla_backend_optimization_level=0`) for every compile
# of the test processes, the library's jits included: it halves the compile time of the networks'
# steps (the NCSN++ config's step: 46 s -> 23 s) and costs nothing measurable when they run at
# test sizes. Both sides of every comparison compile alike. Measured on 2 cores with the cache
# above: the suite 1,007 s -> 873 s. The few tests whose time is spent running (the trained toy CNF
# of tests/test_cnf.py: 73 s -> 169 s) compile with ``FULL_OPTIMIZATION``. The main job's test
# runs its subprocess with its own XLA_FLAGS, at XLA's default level.
if "xla_backend_optimization_level" not in os.environ["XLA_FLAGS"]:
  os.environ["XLA_FLAGS"] += " --xla_backend_optimization_level=0"

import pytest  # noqa: E402  pylint: disable=wrong-import-position,wrong-import-order


@pytest.fixture(autouse=True)
def _float32_products_on_accelerators(request):
  """On a GPU, every test runs at float32's full matrix-product precision.

  The tests check float32 arithmetic against closed forms (their own fields ``x @ A.T`` included),
  with float32 tolerances. XLA's default for float32 products on NVIDIA GPUs is TF32 (10-bit
  mantissa), which moved the closed-form likelihood tests by 1e-4 to 9e-4 nats/dim on an H200
  (NOTES.md run 35). Tests marked ``default_precision`` check the default arithmetic itself. On
  the CPU (the default here) nothing changes and jax is not touched before the test."""
  if (os.environ["JAX_PLATFORMS"].split(",")[0] == "cpu"  # (empty: jax's choice, asked below)
      or request.node.get_closest_marker("default_precision")):
    yield
    return
  import jax  # pylint: disable=import-outside-toplevel
  if jax.default_backend() == "cpu":
    yield
    return
  with jax.default_matmul_precision("highest"):
    yield


# Per-jit compiler options (``from conftest import FAST_COMPILE, FULL_OPTIMIZATION``).
FAST_COMPILE = {"xla_backend_optimization_level": 0}
FULL_OPTIMIZATION = {"xla_backend_optimization_level": 3}  # XLA's default


def enable_x64(enabled=True):
  """jax's ``enable_x64`` context manager (top-level since jax 0.8, in ``jax.experimental``
  before)."""
  import jax  # pylint: disable=import-outside-toplevel
  try:
    context = jax.enable_x64
  except AttributeError:  # older jax
    from jax.experimental import enable_x64 as context  # pylint: disable=import-outside-toplevel
  return context(enabled)


def perturbed_params(setup, scale, seed=0):
  """A ``train.Setup``'s initial parameters plus ``scale * N(0, 1) / sqrt(fan)`` noise, so that
  zero-initialised output layers do not hide the network's arithmetic (for likelihood tests)."""
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  params = jax.jit(setup.init_state)(jax.random.PRNGKey(seed)).params
  leaves, tree = jax.tree_util.tree_flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(seed + 1), len(leaves))
  return tree.unflatten([p + scale * jax.random.normal(k, p.shape) / np.sqrt(p.shape[0])
                         for p, k in zip(leaves, keys)])
