#!/bin/bash
# Run 20 call 3 (nvidia-h200-x2): where the remaining ~2.4 ms of the 2-GPU step go. scaling.py
# (bf16) in fresh processes sharing one autotune cache: 2 GPUs with XLA's defaults, with the
# latency-hiding scheduler, with it and 16 MB all-reduce combining; then 1 GPU on the same lease.
set -u; python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site; export PYTHONUNBUFFERED=1
left() { echo $((470 - SECONDS)); }
ATC="--xla_gpu_per_fusion_autotune_cache_dir=/tmp/atc"
run() {  # name devices extra-flags
  XLA_FLAGS="$ATC $3" timeout $(left) python3 experiments/bench/scaling.py --set model.dtype=bfloat16 --devices $2 --out $OUT/scaling_$1.json > $OUT/scaling_$1.log 2>&1; echo "rc $?" >> $OUT/scaling_$1.log
  echo "== $1 ($3)"; grep -v "Delay kernel" $OUT/scaling_$1.log | tail -3
}
run default 2 ""
run lhs 2 "--xla_gpu_enable_latency_hiding_scheduler=true"
run lhs_comb16 2 "--xla_gpu_enable_latency_hiding_scheduler=true --xla_gpu_all_reduce_combine_threshold_bytes=16777216"
run one 1 ""
