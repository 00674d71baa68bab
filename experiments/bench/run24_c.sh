#!/bin/bash
# Run 24 call 3 (nvidia-h200-x2): with 8 buckets the all-reduces overlap the backward pass, but
# the backward's kernels run ~0.6 ms slower next to NCCL's. Fewer NCCL channels (fewer SMs taken
# by NCCL, slower all-reduce, which is hidden anyway): NCCL_MAX_NCHANNELS = 2, 4, 8.
set -u; python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site; export PYTHONUNBUFFERED=1
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
left() { echo $((400 - SECONDS)); }
run() {  # name channels
  NCCL_MAX_NCHANNELS=$2 timeout $(left) python3 experiments/bench/scaling.py --set model.dtype=bfloat16 --set training.data_parallel=shard_map --set training.allreduce_buckets=8 --devices 2 --steps 20 --profile_dir /tmp/prof_$1 --out $OUT/$1.json > $OUT/$1.log 2>&1; echo "rc $?" >> $OUT/$1.log
  echo "== $1 (NCCL_MAX_NCHANNELS=$2) at ${SECONDS}s"; grep -v "Delay kernel" $OUT/$1.log | tail -n 7 | cut -c1-220
}
run two_shmap_b8_ch2_bf16 2
run two_shmap_b8_ch4_bf16 4
run two_shmap_b8_ch8_bf16 8
