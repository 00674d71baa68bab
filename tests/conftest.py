"""Test setup: fake 8 CPU devices (before JAX initialises) so sharded code is exercised."""
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# Compiler options for the tests' own jits of small networks and steps: XLA's cheapest CPU code
# generation halves their compile time (the NCSN++ config's step: 46 s -> 23 s) and costs nothing
# measurable when they run at test sizes. Both sides of every comparison compile alike.
# (Imported by the test modules: ``from conftest import FAST_COMPILE``.)
FAST_COMPILE = {"xla_backend_optimization_level": 0}
