#!/bin/bash
# Run 34 call 1 (nvidia-h200, session 25): the table with bench.py's defaults on this head (bench.py
# gained --config and the FLOP counter in session 24; the default network's GPU programs did not
# change, so the prediction is run 31's numbers within the lease-to-lease spread and the same first
# losses 1.083667 / 1.083567 and bits/dim 15.51299). Then the EDM, density-plot and class-conditional
# reflow tests on the GPU itself (JAX_PLATFORMS=cuda: tests/conftest.py defaults it to cpu), again,
# since run 33 call 2's logs were lost with that session's device folder.
set -u; python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site || exit; export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > $OUT/h200_run34_gpu.txt 2>&1
python3 -c "import jax, flax, optax, orbax.checkpoint as o, diffrax, chex; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, 'orbax', o.__version__, 'diffrax', diffrax.__version__, 'chex', chex.__version__)" >> $OUT/h200_run34_gpu.txt 2>&1
L=$OUT/h200_run34_a_bench.log
timeout 300 python3 experiments/bench/bench.py --train_modes bfloat16,float32 --fwd_modes bfloat16 --lik_modes bfloat16 --budget 260 --out $OUT/h200_run34_a_bench.json >> $L 2>&1; echo "bench rc $?" >> $L
grep -v "Delay kernel" $L | grep -v "^ *$" | cut -c1-200 | tail -14
G=$OUT/h200_run34_a_pytest_gpu.log; START=$(date +%s)
export JAX_PLATFORMS=cuda XLA_FLAGS=--xla_backend_optimization_level=3
python3 -c "import jax; print('devices', jax.devices())" > $G 2>&1
timeout 200 python3 -m pytest -q -s -p no:cacheprovider tests/test_edm.py tests/test_density_plots.py tests/test_conditional_reflow.py >> $G 2>&1; echo "gpu pytest rc $? in $(( $(date +%s) - START )) s" >> $G
grep "^devices\|sigma\|mode fractions\|NLL\|mass on\|class \|passed\|failed\|rc \|^FAILED\|Error" $G | cut -c1-220 | head -40
