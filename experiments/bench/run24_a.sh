#!/bin/bash
# Run 24 call 1 (nvidia-h200-x2): training.data_parallel='shard_map' (one float32 all-reduce of
# the flat gradient per step) against 'auto' (XLA's per-gradient all-reduces, combined into 4
# bf16 NCCL calls plus ~570 copies; run 23 C). bf16 on 2 GPUs with --profile_dir (NCCL kernel
# dtype, exposed NCCL time, copy kernels), 1 GPU of each, then fp32 on 2 GPUs. Fresh processes.
set -u; python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site; export PYTHONUNBUFFERED=1
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
left() { echo $((575 - SECONDS)); }
run() {  # name devices dtype data_parallel [profile]
  prof=""; [ -n "${5:-}" ] && prof="--profile_dir /tmp/prof_$1"
  timeout $(left) python3 experiments/bench/scaling.py --set model.dtype=$3 --set training.data_parallel=$4 --devices $2 --steps 20 $prof --out $OUT/$1.json > $OUT/$1.log 2>&1; echo "rc $?" >> $OUT/$1.log
  echo "== $1 (devices $2, $3, $4) at ${SECONDS}s"; grep -v "Delay kernel" $OUT/$1.log | tail -n 14 | cut -c1-220
}
run two_shmap_bf16 2 bfloat16 shard_map p
run two_auto_bf16 2 bfloat16 auto p
run one_auto_bf16 1 bfloat16 auto
run one_shmap_bf16 1 bfloat16 shard_map
run two_shmap_fp32 2 float32 shard_map
run two_auto_fp32 2 float32 auto
