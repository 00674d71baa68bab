#!/bin/bash
# Run 17 call 5 (H200): GroupNorm+swish as one Pallas kernel (model.pallas_norm), micro-benchmark
# on the DDPM++ shapes and the whole bf16 forward off/on (pallas_gn.py).
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site || exit 1
export PYTHONUNBUFFERED=1
XLA_FLAGS="--xla_gpu_experimental_enable_fusion_autotuner=false" timeout 330 python3 \
  experiments/bench/pallas_gn.py --out $OUT/pallas_gn.json > $OUT/pallas_gn.log 2>&1
echo "rc $?" >> $OUT/pallas_gn.log
grep -v "Delay kernel" $OUT/pallas_gn.log | tail -30
