#!/bin/bash
# Run 19 call 3 (H200): the linear divergence baseline at looser tolerances (what it costs in NFE
# and what it keeps of the accuracy), against calls 1-2 (--merge).
# In these calls the baseline was an extra state entry outside the error norm; the library now
# adds its closed-form integral instead (the same step-size control).
set -u; python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site; export PYTHONUNBUFFERED=1
S="bf16_base_r4=bfloat16:default:32:1e-4:base,ref_base_r4=float32:highest:32:1e-4:base,bf16_r4=bfloat16:default:32:1e-4,bf16_base_r3e5=bfloat16:default:32:3e-5:base"
timeout 430 python3 experiments/bench/lik_precision.py --images 32 --settings "$S" --merge experiments/bench/h200_run19_a_lik_precision.json,experiments/bench/h200_run19_b_lik_precision.json --out $OUT/lik_precision.json > $OUT/lik_precision.log 2>&1; echo "rc $?" >> $OUT/lik_precision.log; grep -v "Delay kernel" $OUT/lik_precision.log | grep -v "bf16_res32\|bf16_pallas\|tf32\|_b16" | tail -40
