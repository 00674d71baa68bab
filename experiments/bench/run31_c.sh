#!/bin/bash
# Run 31 call 3 (nvidia-h200, session 23): the table on this session's head. This session changed
# no GPU program of bench.py (one integer rule, checkpoint-error exit; bench.py lost an unused import), so the
# prediction is run 30's numbers within the lease-to-lease spread and the same first losses
# (1.083667 bf16 / 1.083567 fp32) and bits/dim (15.51299).
set -u; python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site; export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > $OUT/gpu.txt 2>&1
L=$OUT/bench.log
timeout 330 python3 experiments/bench/bench.py --train_modes bfloat16,float32 --fwd_modes bfloat16 --lik_modes bfloat16 --budget 280 --out $OUT/bench.json >> $L 2>&1; echo "bench rc $?" >> $L
grep -v "Delay kernel" $L | grep -v "^ *$" | cut -c1-200 | tail -24
