#!/bin/bash
# Run 19 call 4 (H200): bench.py's bf16 forward, ms/NFE and whole likelihood call (128 images)
# with the linear divergence baseline at rtol = atol = 1e-4 (the setting calls 1-3 found accurate).
set -u; python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site; export PYTHONUNBUFFERED=1
timeout 300 python3 experiments/bench/bench.py --train_modes "" --fwd_modes bfloat16 --lik_modes bfloat16 --lik_tol 1e-4 --lik_baseline --out $OUT/bench_lik_base.json > $OUT/bench_lik_base.log 2>&1; echo "rc $?" >> $OUT/bench_lik_base.log; grep -v "Delay kernel" $OUT/bench_lik_base.log | tail -12
