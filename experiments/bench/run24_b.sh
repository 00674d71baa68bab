#!/bin/bash
# Run 24 call 2 (nvidia-h200-x2): call 1's shard_map step exposes its one all-reduce (0.9 ms, none
# of it overlapped). training.allreduce_buckets splits the flat gradient into groups in backward
# order, each all-reduced as soon as its gradients exist: 4 and 8 buckets (bf16, profiled), 4 with
# the latency-hiding scheduler, and the fp32 'auto' row that call 1 ran out of time for.
set -u; python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site; export PYTHONUNBUFFERED=1
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
left() { echo $((580 - SECONDS)); }
run() {  # name devices dtype data_parallel buckets xla_flags [profile]
  prof=""; [ -n "${7:-}" ] && prof="--profile_dir /tmp/prof_$1"
  XLA_FLAGS="$6" timeout $(left) python3 experiments/bench/scaling.py --set model.dtype=$3 --set training.data_parallel=$4 --set training.allreduce_buckets=$5 --devices $2 --steps 20 $prof --out $OUT/$1.json > $OUT/$1.log 2>&1; echo "rc $?" >> $OUT/$1.log
  echo "== $1 (devices $2, $3, $4, buckets $5, flags '$6') at ${SECONDS}s"; grep -v "Delay kernel" $OUT/$1.log | tail -n 7 | cut -c1-220
}
run two_shmap_b4_bf16 2 bfloat16 shard_map 4 "" p
run two_shmap_b8_bf16 2 bfloat16 shard_map 8 "" p
run two_shmap_b4_lhs_bf16 2 bfloat16 shard_map 4 "--xla_gpu_enable_latency_hiding_scheduler=true" p
run two_auto_fp32 2 float32 auto 1 ""
