#!/bin/bash
# Run 25 call 1 (H200): the library's defaults against the same with model.fused_norm (the
# hand-written GroupNorm+swish backward, now with run 18's stacked statistics), in one process:
# bf16 forward (alternating windows, profile), then the bf16 and fp32 train steps (loss at step 0,
# alternating windows, XLA temp memory).
set -u; python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site; export PYTHONUNBUFFERED=1
left() { echo $((575 - SECONDS)); }
L=$OUT/all.log
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > $OUT/gpu.txt 2>&1
timeout $(left) python3 experiments/bench/ab.py --specs bf16_tb_ts,bf16_tb_ts_fn --parts fwd,profile,train \
  --train_specs bf16_tb_ts,bf16_tb_ts_fn,fp32_tb_ts,fp32_tb_ts_fn --rounds 5 --out $OUT/ab.json >> $L 2>&1; echo "ab rc $?" >> $L
grep -v "Delay kernel" $L | grep -v "^ *$" | cut -c1-220 | tail -60
