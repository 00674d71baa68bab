#!/bin/bash
# Run 31 call 4 (nvidia-h200): the test files added or changed after call 1 (the README example,
# docstrings, integer rule, command-line errors, the asyncio filter) on the device image's versions.
set -u; python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site; export PYTHONUNBUFFERED=1
T=$OUT/pytest_cpu.log; START=$(date +%s)
JAX_PLATFORMS=cpu XLA_FLAGS=--xla_force_host_platform_device_count=8 timeout 300 python3 -m pytest -q -n 8 -p no:cacheprovider tests/test_readme.py tests/test_docstrings.py tests/test_checks.py tests/test_cli_ux.py tests/test_train.py > $T 2>&1; echo "pytest rc $? in $(( $(date +%s) - START )) s" >> $T
tail -3 $T; grep "^FAILED\|^ERROR\|^SKIPPED" $T | cut -c1-200 | head -30
