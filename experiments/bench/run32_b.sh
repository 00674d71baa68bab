#!/bin/bash
# Run 32 call 2 (nvidia-h200): every test file but the main job's on the device image's versions
# (jax 0.11.2, flax 0.12.10, optax 0.2.8, orbax 0.12.4, diffrax 0.7.2; CI installs jax 0.10.2),
# CPU with 8 fake devices, the extra packages carried as wheels (.whl). After call 1:
# density plots for every method on 2-D toy data (tests/test_density_plots.py, test_cli_ux, test_cli)
# and the review fixes of class-conditional reflow. Then the density tests on the GPU itself.
set -u; python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site; export PYTHONUNBUFFERED=1
python3 -c "import jax, jaxlib, flax, optax, orbax.checkpoint as o, diffrax, chex, tensorflow_datasets as t; print('jax', jax.__version__, 'jaxlib', jaxlib.__version__, 'flax', flax.__version__, 'optax', optax.__version__, 'orbax', o.__version__, 'diffrax', diffrax.__version__, 'chex', chex.__version__, 'tfds', t.__version__)" > $OUT/versions.txt 2>&1
ls -d /tmp/tmp*tfds 2>/dev/null | wc -l > $OUT/tfds_tmp_before.txt
T=$OUT/pytest_cpu.log; START=$(date +%s)
JAX_PLATFORMS=cpu XLA_FLAGS=--xla_force_host_platform_device_count=8 timeout 420 python3 -m pytest -q -n 14 -p no:cacheprovider tests --ignore=tests/test_main_job.py > $T 2>&1; echo "pytest rc $? in $(( $(date +%s) - START )) s" >> $T
echo "tmp*tfds folders in /tmp: before $(cat $OUT/tfds_tmp_before.txt), after $(ls -d /tmp/tmp*tfds 2>/dev/null | wc -l)" | tee $OUT/tfds_tmp.txt
cat $OUT/versions.txt; tail -3 $T; grep "^FAILED\|^ERROR\|^SKIPPED" $T | cut -c1-200 | head -30
G=$OUT/pytest_gpu.log; START=$(date +%s)
timeout 240 python3 -m pytest -q -s -p no:cacheprovider tests/test_density_plots.py tests/test_conditional_reflow.py > $G 2>&1; echo "gpu pytest rc $? in $(( $(date +%s) - START )) s" >> $G
grep "^class \|mass on\|passed\|failed\|rc " $G | cut -c1-200
