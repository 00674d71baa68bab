#!/bin/bash
# Run 35 call 4 (nvidia-h200, session 26): the test files that the session's later changes touched,
# on the GPU, on the final code (review fixes: the likelihood's first stage on diffrax's promoted
# state; argument checks; density grids over the mesh). A device budget of 465 s leaves out the
# CNF, models, evaluation and Monte-Carlo files of call 2. Prediction: all pass.
set -u; python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site || exit; export PYTHONUNBUFFERED=1
export JAX_PLATFORMS=cuda XLA_FLAGS=--xla_backend_optimization_level=3 XLA_PYTHON_CLIENT_PREALLOCATE=false JAX_COMPILATION_CACHE_DIR=/tmp/jcache
G=$OUT/h200_run35_d_pytest_gpu.log; START=$(date +%s)
python3 -c "import jax; print('devices', jax.devices())" > $G 2>&1
timeout 300 python3 -m pytest -q -n 4 -p no:cacheprovider -rfE --junitxml=$OUT/h200_run35_d_junit.xml \
  tests/test_processes.py tests/test_solvers.py tests/test_likelihood.py tests/test_losses.py \
  tests/test_rectified_flow.py tests/test_density_plots.py >> $G 2>&1
echo "gpu pytest rc $? in $(( $(date +%s) - START )) s" >> $G
grep "^devices\|passed\|failed\|rc \|^FAILED\|^ERROR\|NFE at end" $G | cut -c1-300 | head -30
