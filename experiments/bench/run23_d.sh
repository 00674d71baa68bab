#!/bin/bash
# Run 23 call 4 (nvidia-h200-x2): call 3 found the NCCL time almost all overlapped (0.05 ms
# exposed) but the compute kernels ~2 ms busier per step on 2 GPUs than on 1. This call repeats
# 2 GPUs and 1 GPU with the compute kernels by class per GPU (scaling.py --profile_dir), to find
# which class grows.
set -u; python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site; export PYTHONUNBUFFERED=1
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
left() { echo $((440 - SECONDS)); }
run() {  # name devices
  timeout $(left) python3 experiments/bench/scaling.py --set model.dtype=bfloat16 --devices $2 --steps 20 --repeats 2 --profile_dir /tmp/prof_$1 --out $OUT/$1.json > $OUT/$1.log 2>&1; echo "rc $?" >> $OUT/$1.log
  echo "== $1"; grep -v "Delay kernel" $OUT/$1.log | grep -E "GPU|^ +[12] |rc " | cut -c1-400
}
run two 2
run one 1
