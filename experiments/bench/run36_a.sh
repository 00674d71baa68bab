#!/bin/bash
# Run 36 call 1 (nvidia-h200, session 27): the test files that this session's changes touched, on
# the GPU itself: x0 predictions at sigma = 0 and the closed-form velocity at VP t = 0
# (test_processes), Heun's uniform grid ending at 0 (test_solvers), augmentation for the score and
# flow losses (test_augment, test_losses), and the train loop's stop, rate, snapshot and number
# checks (test_train, the new tests only: the file's others assume 8 CPU devices).
# Prediction: all pass.
set -u; python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site || exit; export PYTHONUNBUFFERED=1
export JAX_PLATFORMS=cuda XLA_PYTHON_CLIENT_PREALLOCATE=false JAX_COMPILATION_CACHE_DIR=/tmp/jcache
G=$OUT/h200_run36_a_pytest_gpu.log; START=$(date +%s)
python3 -c "import jax; print('devices', jax.devices())" > $G 2>&1
timeout 330 python3 -m pytest -q -n 4 -p no:cacheprovider -rfE --junitxml=$OUT/h200_run36_a_junit.xml \
  tests/test_processes.py tests/test_solvers.py tests/test_losses.py tests/test_augment.py >> $G 2>&1
echo "gpu pytest rc $? in $(( $(date +%s) - START )) s" >> $G
timeout 150 python3 -m pytest -q -p no:cacheprovider -rfE tests/test_train.py \
  -k "stop_after or rate_counts or snapshot_steps or infinite_numbers or seeds_outside or time_limit_at" >> $G 2>&1
echo "gpu train pytest rc $? in $(( $(date +%s) - START )) s" >> $G
grep "^devices\|passed\|failed\|rc \|^FAILED\|^ERROR" $G | cut -c1-300 | head -30
