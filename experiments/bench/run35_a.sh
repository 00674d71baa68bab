#!/bin/bash
# Run 35 call 1 (nvidia-h200, session 26): the core numerical test files on the GPU itself
# (JAX_PLATFORMS=cuda; tests/conftest.py defaults to the CPU), which no run has done before:
# processes, solvers, likelihood, losses, CNF, rectified flow, models, evaluation. On the GPU
# float32 matrix products and convolutions run at XLA's default precision (TF32), so closed-form
# tolerances written for the CPU may not hold; the prediction is that most pass and any failure
# names a tolerance that a researcher on a GPU would hit too.
set -u; python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site || exit; export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > $OUT/h200_run35_gpu.txt 2>&1
python3 -c "import jax, flax, optax, orbax.checkpoint as o, diffrax, chex; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, 'orbax', o.__version__, 'diffrax', diffrax.__version__, 'chex', chex.__version__)" >> $OUT/h200_run35_gpu.txt 2>&1
G=$OUT/h200_run35_a_pytest_gpu.log; START=$(date +%s)
export JAX_PLATFORMS=cuda XLA_FLAGS=--xla_backend_optimization_level=3 XLA_PYTHON_CLIENT_PREALLOCATE=false JAX_COMPILATION_CACHE_DIR=/tmp/jcache
python3 -c "import jax; print('devices', jax.devices())" > $G 2>&1
timeout 520 python3 -m pytest -q -n 4 -p no:cacheprovider -rfE --durations=15 --junitxml=$OUT/h200_run35_a_junit.xml \
  tests/test_processes.py tests/test_processes_mc.py tests/test_solvers.py tests/test_likelihood.py \
  tests/test_losses.py tests/test_cnf.py tests/test_rectified_flow.py tests/test_models.py tests/test_evaluate.py >> $G 2>&1
echo "gpu pytest rc $? in $(( $(date +%s) - START )) s" >> $G
grep "^devices\|passed\|failed\|rc \|^FAILED\|^ERROR" $G | cut -c1-300 | head -60
