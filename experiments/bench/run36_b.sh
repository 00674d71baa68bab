#!/bin/bash
# Run 36 call 2 (nvidia-h200, session 27): the table with bench.py's defaults on this head. This
# session changed no code on the bench's paths (the VP DDPM++ step, forward, likelihood): x0
# conversions at sigma = 0, the closed-form velocity, Heun's uniform grid, augmentation for other
# losses, the train loop's bookkeeping. Prediction: run 35's numbers within the lease-to-lease
# spread, likelihood NFE 601, first losses 1.083667 / 1.083567 and bits/dim 15.51299.
set -u; python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site || exit; export PYTHONUNBUFFERED=1
L=$OUT/h200_run36_b_bench.log
timeout 330 python3 experiments/bench/bench.py --train_modes bfloat16,float32 --fwd_modes bfloat16 --lik_modes bfloat16 --budget 290 --out $OUT/h200_run36_b_bench.json >> $L 2>&1; echo "bench rc $?" >> $L
grep -v "Delay kernel" $L | grep -v "^ *$" | cut -c1-200 | tail -16
