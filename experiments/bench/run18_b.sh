#!/bin/bash
# Run 18 call 2 (H200): GroupNorm statistics in one reduction, now the library's (layers._xla_gn).
# 1. bench.py, fresh process on a fresh machine (cold compile): bf16 train step, forward, ms/NFE,
#    likelihood call. 2. gn_stats.py: flax's formula against the library's, forward (with
#    correct per-variant profiles) and train steps in both precisions, one process.
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site || exit 1
export PYTHONUNBUFFERED=1
AT="--xla_gpu_per_fusion_autotune_cache_dir=/tmp/atc"
timeout 250 python3 experiments/bench/bench.py --train_modes bfloat16 --fwd_modes bfloat16 \
  --lik_modes bfloat16 --xla_flags "$AT" --out $OUT/bench_bf16.json > $OUT/bench_bf16.log 2>&1
echo "bench rc $?" >> $OUT/bench_bf16.log
XLA_FLAGS="--xla_gpu_experimental_enable_fusion_autotuner=false $AT" timeout 300 python3 \
  experiments/bench/gn_stats.py --out $OUT --budget 280 \
  --fwd flax,library,flax,library --profile flax,library \
  --train fp32:library,fp32:flax,bf16:flax,bf16:library > $OUT/gn_stats.log 2>&1
echo "rc $?" >> $OUT/gn_stats.log
grep -v "Delay kernel" $OUT/bench_bf16.log | tail -14
grep -v "Delay kernel" $OUT/gn_stats.log | grep -v "^\s*$" | grep -v "ms/call in" | tail -22
