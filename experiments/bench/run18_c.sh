#!/bin/bash
# Run 18 call 3 (H200), the library's GroupNorm with one reduction (layers._xla_gn):
# 1. bench.py, fresh process on a fresh machine (cold compile): bf16 train step, forward, ms/NFE,
#    likelihood call (per-image bits/dim, compared offline with run 10's reference);
# 2. gn_stats.py: bf16 train step, library then flax's formula (the order call 2 could not run);
# 3. bench.py, fresh process: fp32 train step.
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site || exit 1
export PYTHONUNBUFFERED=1
AT="--xla_gpu_per_fusion_autotune_cache_dir=/tmp/atc"
timeout 235 python3 experiments/bench/bench.py --train_modes bfloat16 --fwd_modes bfloat16 \
  --lik_modes bfloat16 --xla_flags="$AT" --out $OUT/bench_bf16.json > $OUT/bench_bf16.log 2>&1
echo "bench rc $?" >> $OUT/bench_bf16.log
XLA_FLAGS="--xla_gpu_experimental_enable_fusion_autotuner=false $AT" timeout 130 python3 \
  experiments/bench/gn_stats.py --out $OUT --budget 200 --fwd "" \
  --train bf16:library,bf16:flax > $OUT/gn_stats.log 2>&1
echo "rc $?" >> $OUT/gn_stats.log
timeout 170 python3 experiments/bench/bench.py --train_modes float32 --fwd_modes "" \
  --lik_modes "" --xla_flags="$AT" --out $OUT/bench_fp32.json > $OUT/bench_fp32.log 2>&1
echo "bench rc $?" >> $OUT/bench_fp32.log
grep -v "Delay kernel" $OUT/bench_bf16.log | tail -12
grep -v "Delay kernel" $OUT/gn_stats.log | grep -v "^\s*$" | tail -6
grep -v "Delay kernel" $OUT/bench_fp32.log | tail -8
