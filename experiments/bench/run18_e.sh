#!/bin/bash
# Run 18 call 5 (H200, same lease as call 4): bench.py in a fresh process with an empty autotune
# cache directory (a cold compile of the final code): bf16 train step, forward, ms/NFE.
set -u; python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site; export PYTHONUNBUFFERED=1; timeout 200 python3 experiments/bench/bench.py --train_modes bfloat16 --fwd_modes bfloat16 --lik_modes "" --xla_flags=--xla_gpu_per_fusion_autotune_cache_dir=/tmp/atc_cold_$$ --out $OUT/bench_bf16_cold.json > $OUT/bench_bf16_cold.log 2>&1; echo "rc $?" >> $OUT/bench_bf16_cold.log; grep -v "Delay kernel" $OUT/bench_bf16_cold.log | tail -8
