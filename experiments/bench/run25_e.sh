#!/bin/bash
# Run 25 call 5 (nvidia-h200-x2): fp32 on two GPUs, the new default ('auto' -> shard_map with 8
# buckets) against gspmd, same lease, one fresh scaling.py process each.
set -u; python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site; export PYTHONUNBUFFERED=1
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
left() { echo $((540 - SECONDS)); }
run() {  # name data_parallel
  timeout $(left) python3 experiments/bench/scaling.py --set training.data_parallel=$2 --devices 2 --steps 20 --out $OUT/$1.json > $OUT/$1.log 2>&1; echo "rc $?" >> $OUT/$1.log
  echo "== $1 at ${SECONDS}s"; grep -v "Delay kernel" $OUT/$1.log | tail -n 6 | cut -c1-220
}
run two_auto_fp32 auto
run two_gspmd_fp32 gspmd
