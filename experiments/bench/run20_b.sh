#!/bin/bash
# Run 20 call 2 (nvidia-h200-x2): scaling.py again after the batch-major dropout mask
# (layers.dropout_keep_mask draws each batch row from its own counters: no all-gathers).
set -u; python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site; export PYTHONUNBUFFERED=1
left() { echo $((575 - SECONDS)); }
timeout $(left) python3 experiments/bench/scaling.py --set model.dtype=bfloat16 --out $OUT/scaling_bf16.json > $OUT/scaling_bf16.log 2>&1; echo "rc $?" >> $OUT/scaling_bf16.log
grep -v "Delay kernel" $OUT/scaling_bf16.log | tail -7
timeout $(left) python3 experiments/bench/scaling.py --out $OUT/scaling_fp32.json > $OUT/scaling_fp32.log 2>&1; echo "rc $?" >> $OUT/scaling_fp32.log
grep -v "Delay kernel" $OUT/scaling_fp32.log | tail -7
