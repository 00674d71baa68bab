#!/bin/bash
# Run 18 call 4 (H200): GroupNorm sums as one variadic reduction (gn_stats.py "variadic": var and
# rsqrt elementwise in its outputs, a candidate for XLA's reduction epilogue) against the
# library's stacked form (run 18 calls 1-3): bf16 forward with profiles, bf16 and fp32 steps.
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site || exit 1
export PYTHONUNBUFFERED=1
XLA_FLAGS="--xla_gpu_experimental_enable_fusion_autotuner=false --xla_gpu_per_fusion_autotune_cache_dir=/tmp/atc" \
  timeout 400 python3 experiments/bench/gn_stats.py --out $OUT --budget 450 \
  --fwd library,variadic,library,variadic --profile library,variadic \
  --train bf16:variadic,bf16:library,fp32:variadic > $OUT/gn_stats.log 2>&1
echo "rc $?" >> $OUT/gn_stats.log
grep -v "Delay kernel" $OUT/gn_stats.log | grep -v "^\s*$" | grep -v "ms/call in" | tail -24
