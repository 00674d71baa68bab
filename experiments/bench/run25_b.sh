#!/bin/bash
# Run 25 call 2 (nvidia-h200-x2): training.data_parallel='shard_map' now draws the global batch's
# randomness on every device (parallel.global_batch_draw: time, noise, flips, dequantization; the
# dropout masks from the global row index). Same lease: shard_map with 1 and 8 buckets, and auto.
set -u; python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site; export PYTHONUNBUFFERED=1
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
left() { echo $((560 - SECONDS)); }
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > $OUT/gpu.txt 2>&1
run() {  # name data_parallel buckets
  timeout $(left) python3 experiments/bench/scaling.py --set model.dtype=bfloat16 --set training.data_parallel=$2 --set training.allreduce_buckets=$3 --devices 2 --steps 20 --out $OUT/$1.json > $OUT/$1.log 2>&1; echo "rc $?" >> $OUT/$1.log
  echo "== $1 at ${SECONDS}s"; grep -v "Delay kernel" $OUT/$1.log | tail -n 6 | cut -c1-220
}
run two_shmap_b1_bf16 shard_map 1
run two_auto_bf16 auto 1
run two_shmap_b8_bf16 shard_map 8
