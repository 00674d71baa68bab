#!/bin/bash
# Run 29 call 2 (nvidia-h200): every test file but the main job's on the device image's versions
# (jax 0.11.2, flax 0.12.10, optax 0.2.8, orbax 0.12.4, diffrax 0.7.2), CPU with 8 fake devices,
# tensorflow-datasets and tensorboardX carried as wheels (.whl): for the first time nothing is
# left out for a missing package. The head of this session (audit fixes, the RNODE test weights).
set -u; python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site; export PYTHONUNBUFFERED=1
T=$OUT/pytest_cpu.log
JAX_PLATFORMS=cpu XLA_FLAGS=--xla_force_host_platform_device_count=8 timeout 540 python3 -m pytest -q -n 14 -p no:cacheprovider tests --ignore=tests/test_main_job.py > $T 2>&1; echo "pytest rc $?" >> $T
tail -3 $T; grep "^FAILED\|^ERROR\|^SKIPPED" $T | cut -c1-200 | head -30
