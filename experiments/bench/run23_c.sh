#!/bin/bash
# Run 23 call 3 (nvidia-h200-x2): where the 2-GPU DDPM++ step's extra ~2.4 ms go (run 20: 92 %
# scaling). scaling.py --profile_dir traces 5 steps and reports per GPU the NCCL time that overlaps
# compute and the exposed rest. Fresh processes: 2 GPUs with XLA's defaults, 1 GPU (the same
# lease's reference), 2 GPUs with the latency-hiding scheduler, and with it plus 8 MB all-reduce
# combining and collectives started as early as possible.
set -u; python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site; export PYTHONUNBUFFERED=1
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
left() { echo $((570 - SECONDS)); }
nvidia-smi topo -m > $OUT/topo.txt 2>&1
run() {  # name devices extra-flags
  XLA_FLAGS="$3" timeout $(left) python3 experiments/bench/scaling.py --set model.dtype=bfloat16 --devices $2 --steps 20 --profile_dir /tmp/prof_$1 --out $OUT/$1.json > $OUT/$1.log 2>&1; echo "rc $?" >> $OUT/$1.log
  echo "== $1 ($3)"; grep -v "Delay kernel" $OUT/$1.log | grep -E "GPU|^ +[12] |rc " | cut -c1-200
}
run two_default 2 ""
run one 1 ""
run two_lhs 2 "--xla_gpu_enable_latency_hiding_scheduler=true"
run two_lhs_comb8_early 2 "--xla_gpu_enable_latency_hiding_scheduler=true --xla_gpu_all_reduce_combine_threshold_bytes=8388608 --xla_gpu_experimental_collective_start_as_early_as_possible=true"
