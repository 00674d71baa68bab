#!/bin/bash
# Run 18 call 1 (H200): GroupNorm statistics with fewer small kernels (gn_stats.py): the bf16
# forward per variant (pipelined ms, profile), then bf16 and fp32 train steps, one process.
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site || exit 1
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > $OUT/gpu.txt 2>&1
XLA_FLAGS="--xla_gpu_experimental_enable_fusion_autotuner=false" timeout 575 python3 \
  experiments/bench/gn_stats.py --out $OUT --budget 540 \
  --fwd flax,grouped,matmul,stacked,flax --profile flax,grouped,matmul,stacked \
  --train bf16:flax,bf16:grouped,bf16:matmul,bf16:stacked,fp32:flax,fp32:grouped,fp32:matmul \
  > $OUT/gn_stats.log 2>&1
echo "rc $?" >> $OUT/gn_stats.log
grep -v "Delay kernel" $OUT/gn_stats.log | grep -v "^\s*$" | tail -32
