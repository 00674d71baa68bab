#!/bin/bash
# Run 27 call 2 (nvidia-h200): the second round of audit fixes (sampling and conditioning checks,
# conditional models, linear-path samplers, mesh / start-up checks) on the device image's jax
# 0.11.2: the test files that do not need tensorflow-datasets, on 8 fake CPU devices.
set -u; python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site; export PYTHONUNBUFFERED=1
T=$OUT/pytest_cpu.log
JAX_PLATFORMS=cpu XLA_FLAGS=--xla_force_host_platform_device_count=8 timeout 400 python3 -m pytest -q -n 14 -p no:cacheprovider tests --ignore=tests/test_main_job.py --ignore=tests/test_data.py --ignore=tests/test_multihost.py --ignore=tests/test_parallel.py > $T 2>&1; echo "pytest rc $?" >> $T
tail -3 $T; grep -c "tensorflow_datasets" $T; grep "^FAILED\|^ERROR" $T | cut -c1-160 | head -30
