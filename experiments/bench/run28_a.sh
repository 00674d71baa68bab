#!/bin/bash
# Run 28 (nvidia-h200): this session's changes on the device image's versions (jax 0.11.2, flax
# 0.12.10, optax 0.2.8, orbax 0.12.4, diffrax 0.7.2): the samplers/likelihood now jit through
# jaxgen._jit.jit_with_callables (callables split into traced arrays and a static rest), the
# likelihood has a classical RK4 tableau, the CLI/train/config checks grew. First the test files
# that do not need tensorflow-datasets (absent there) on 8 fake CPU devices, then one fresh
# bench.py process with the defaults: the table should not move (loss0 1.083667 bf16 / 1.083567
# fp32; likelihood call 9.72 s at NFE 601 in run 27).
set -u; python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site; export PYTHONUNBUFFERED=1
left() { echo $((580 - SECONDS)); }
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > $OUT/gpu.txt 2>&1
python3 -c "import jax, flax, optax, orbax.checkpoint as o, diffrax, chex; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, 'orbax', o.__version__ if hasattr(o, '__version__') else '?', 'diffrax', diffrax.__version__, 'chex', chex.__version__)" > $OUT/versions.txt 2>&1
T=$OUT/pytest_cpu.log
JAX_PLATFORMS=cpu XLA_FLAGS=--xla_force_host_platform_device_count=8 timeout 260 python3 -m pytest -q -n 12 -p no:cacheprovider tests --ignore=tests/test_main_job.py --ignore=tests/test_data.py --ignore=tests/test_multihost.py --ignore=tests/test_parallel.py > $T 2>&1; echo "pytest rc $?" >> $T
tail -3 $T; grep -c "tensorflow_datasets" $T; grep "^FAILED\|^ERROR" $T | cut -c1-160 | head -30
L=$OUT/bench.log
timeout $(left) python3 experiments/bench/bench.py --train_modes bfloat16,float32 --fwd_modes bfloat16 --lik_modes bfloat16 --budget 260 --out $OUT/bench.json >> $L 2>&1; echo "bench rc $?" >> $L
grep -v "Delay kernel" $L | grep -v "^ *$" | cut -c1-200 | tail -30
