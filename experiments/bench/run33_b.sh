#!/bin/bash
# Run 33 call 2 (nvidia-h200): every test file but the main job's on the device image's versions
# (CPU, 8 fake devices; CI installs jax 0.10.2), after the EDM configs and models.count_flops.
# Then the EDM, density-plot and class-conditional reflow tests on the GPU itself: JAX_PLATFORMS
# set to cuda explicitly, since tests/conftest.py defaults it to cpu (run 32's "on the GPU" runs
# did not set it, so they ran on the CPU of the device image).
set -u; python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site; export PYTHONUNBUFFERED=1
T=$OUT/h200_run33_b_pytest_cpu.log; START=$(date +%s)
JAX_PLATFORMS=cpu XLA_FLAGS=--xla_force_host_platform_device_count=8 timeout 400 python3 -m pytest -q -n 14 -p no:cacheprovider tests --ignore=tests/test_main_job.py > $T 2>&1; echo "pytest rc $? in $(( $(date +%s) - START )) s" >> $T
tail -3 $T; grep "^FAILED\|^ERROR\|^SKIPPED" $T | cut -c1-200 | head -30
G=$OUT/h200_run33_b_pytest_gpu.log; START=$(date +%s)
export JAX_PLATFORMS=cuda XLA_FLAGS=--xla_backend_optimization_level=3
python3 -c "import jax; print('devices', jax.devices())" > $G 2>&1
timeout 150 python3 -m pytest -q -s -p no:cacheprovider tests/test_edm.py tests/test_density_plots.py tests/test_conditional_reflow.py >> $G 2>&1; echo "gpu pytest rc $? in $(( $(date +%s) - START )) s" >> $G
grep "^devices\|sigma\|mode fractions\|NLL\|mass on\|class \|passed\|failed\|rc \|^FAILED\|Error" $G | cut -c1-220 | head -40
