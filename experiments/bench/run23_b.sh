#!/bin/bash
# Run 23 call 2 (H200): model.remat on the DDPM++ train step, one fresh process per variant so
# that each peak memory is its own: the default step (no remat), remat with the new policy
# "save_convs" (convolution/matmul outputs kept, normalization/activation/dropout recomputed), and
# the full remat (whole blocks recomputed); then fp32 default vs save_convs.
set -u; python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site; export PYTHONUNBUFFERED=1
left() { echo $((575 - SECONDS)); }
L=$OUT/all.log
run() {  # name, args
  timeout $(left) python3 experiments/bench/bench.py --steps 10 --fwd_modes "" --lik_modes "" $2 --out $OUT/$1.json >> $L 2>&1; echo "$1 rc $?" >> $L
}
run bf16_default "--train_modes bfloat16"
run bf16_save_convs "--train_modes= --variants bfloat16:remat+remat_policy=save_convs"
run bf16_full "--train_modes= --variants bfloat16:remat"
run fp32_save_convs "--train_modes= --variants float32:remat+remat_policy=save_convs"
run fp32_default "--train_modes float32"
grep -v "Delay kernel" $L | grep -E "train |rc |Error|error" | cut -c1-220 | tail -40
