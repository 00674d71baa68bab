#!/bin/bash
# Run 23 call 5 (nvidia-h200-x2): call 4 found 567 more copy kernels (+0.83 ms) on 2 GPUs than on
# 1: XLA copies every gradient into one contiguous buffer for the combined all-reduce and back
# (all-reduce combining). jaxlib 0.11.2 has no xla_gpu_all_reduce_contiguous flag (the first try
# aborted at flag parsing), so this call turns combining off instead (threshold 1 byte).
set -u; python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site; export PYTHONUNBUFFERED=1
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
XLA_FLAGS="--xla_gpu_all_reduce_combine_threshold_bytes=1" timeout 200 python3 experiments/bench/scaling.py --set model.dtype=bfloat16 --devices 2 --steps 20 --repeats 2 --profile_dir /tmp/prof --out $OUT/two_nocombine.json > $OUT/two_nocombine.log 2>&1; echo "rc $?" >> $OUT/two_nocombine.log
grep -v "Delay kernel" $OUT/two_nocombine.log | grep -E "GPU|^ +2 |rc " | cut -c1-400
