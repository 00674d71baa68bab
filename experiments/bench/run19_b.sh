#!/bin/bash
# Run 19 call 2 (H200): the same 32 images with the VP drift's linear divergence integrated
# outside the step-size control (likelihood.linear_divergence_baseline), compared with call 1's
# settings (--merge).
# In these calls the baseline was an extra state entry outside the error norm; the library now
# adds its closed-form integral instead (the same step-size control).
set -u; python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site; export PYTHONUNBUFFERED=1
S="ref_base=float32:highest:32:1e-5:base,bf16_base=bfloat16:default:32:1e-5:base,ref_base_b16=float32:highest:16:1e-5:base,bf16_base_b16=bfloat16:default:16:1e-5:base,ref_tight_base=float32:highest:32:1e-6:base"
timeout 570 python3 experiments/bench/lik_precision.py --images 32 --settings "$S" --merge experiments/bench/h200_run19_a_lik_precision.json --out $OUT/lik_precision.json > $OUT/lik_precision.log 2>&1; echo "rc $?" >> $OUT/lik_precision.log; grep -v "Delay kernel" $OUT/lik_precision.log | grep -v "bf16_res32\|bf16_pallas\|tf32" | tail -60
