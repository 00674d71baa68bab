#!/bin/bash
# Run 19 call 1 (H200): where the bits/dim differences between precisions come from.
# lik_precision.py on the real DDPM++ (nf 128), the 32 images and parameters of bench.py: the
# highest-precision reference against itself (another batch split, a tighter tolerance), and
# bf16 / TF32 / bf16 with a float32 residual stream / bf16 with pallas_norm against it.
# bf16_res32 ran with a patch that is not in the library: model.residual_dtype (a float32
# residual stream: block inputs, shortcuts, residual sums and skips), measured and reverted.
set -u; python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site; export PYTHONUNBUFFERED=1
S="ref=float32:highest:32:1e-5,bf16=bfloat16:default:32:1e-5,ref_b16=float32:highest:16:1e-5,bf16_b16=bfloat16:default:16:1e-5,ref_tight=float32:highest:32:1e-6,bf16_tight=bfloat16:default:32:1e-6,tf32=float32:default:32:1e-5,bf16_res32=bfloat16+residual_dtype=float32:default:32:1e-5,bf16_pallas=bfloat16+pallas_norm:default:32:1e-5"
timeout 570 python3 experiments/bench/lik_precision.py --images 32 --settings "$S" --out $OUT/lik_precision.json > $OUT/lik_precision.log 2>&1; echo "rc $?" >> $OUT/lik_precision.log; grep -v "Delay kernel" $OUT/lik_precision.log | tail -50
