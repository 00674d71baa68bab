#!/bin/bash
# Run 28 call 2 (nvidia-h200): after the review fixes (adapters returning Partials, the fixed
# device-image test failures of call 1), the test files that do not need tensorflow-datasets
# again on the device image's versions (CPU, 8 fake devices). No GPU program changed.
set -u; python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site; export PYTHONUNBUFFERED=1
python3 -c "import jax, flax, diffrax; print('jax', jax.__version__, 'flax', flax.__version__, 'diffrax', diffrax.__version__)" > $OUT/versions.txt 2>&1
T=$OUT/pytest_cpu.log
JAX_PLATFORMS=cpu XLA_FLAGS=--xla_force_host_platform_device_count=8 timeout 400 python3 -m pytest -q -n 14 -p no:cacheprovider tests --ignore=tests/test_main_job.py --ignore=tests/test_data.py --ignore=tests/test_multihost.py --ignore=tests/test_parallel.py > $T 2>&1; echo "pytest rc $?" >> $T
tail -3 $T; grep "^FAILED\|^ERROR" $T | cut -c1-200 | head -30
