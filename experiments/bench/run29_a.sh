#!/bin/bash
# Run 29 call 1 (nvidia-h200, session 21): the table on this session's head, and for the first
# time on the device image the test files that need tensorflow-datasets (carried as wheels in
# .whl with its missing dependencies and tensorboardX). This session changed no GPU program of
# bench.py (data checks, dequantization edges, RNODE scaling, solver input checks), so the
# prediction is run 28's numbers within the lease-to-lease spread and the same first losses
# (1.083667 bf16 / 1.083567 fp32) and bits/dim (15.51299).
set -u; python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site; export PYTHONUNBUFFERED=1
left() { echo $((570 - SECONDS)); }
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > $OUT/gpu.txt 2>&1
python3 -c "import jax, flax, optax, orbax.checkpoint as o, diffrax, chex, tensorflow_datasets as tfds, tensorboardX; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, 'orbax', getattr(o, '__version__', '?'), 'diffrax', diffrax.__version__, 'chex', chex.__version__, 'tfds', tfds.__version__, 'tensorboardX', tensorboardX.__version__)" > $OUT/versions.txt 2>&1; cat $OUT/versions.txt | tail -3
L=$OUT/bench.log
timeout 300 python3 experiments/bench/bench.py --train_modes bfloat16,float32 --fwd_modes bfloat16 --lik_modes bfloat16 --budget 250 --out $OUT/bench.json >> $L 2>&1; echo "bench rc $?" >> $L
grep -v "Delay kernel" $L | grep -v "^ *$" | cut -c1-200 | tail -24
T=$OUT/pytest_tfds.log
JAX_PLATFORMS=cpu XLA_FLAGS=--xla_force_host_platform_device_count=8 timeout $(left) python3 -m pytest -q -n 14 -p no:cacheprovider tests/test_data.py tests/test_parallel.py tests/test_multihost.py > $T 2>&1; echo "pytest rc $?" >> $T
tail -3 $T; grep "^FAILED\|^ERROR" $T | cut -c1-200 | head -20
