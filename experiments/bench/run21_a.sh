#!/bin/bash
# Run 21 call 1 (H200): programmatic dependent launch (PDL, Hopper) for the bf16 forward. One fresh
# process per setting (cmdbuf.py: forward pipelined, cycling inputs, waited for; outputs checked bit
# for bit against waited-for calls), sharing one autotune cache; then the train step for the two
# settings that matter.
set -u; python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site; export PYTHONUNBUFFERED=1
left() { echo $((560 - SECONDS)); }
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv > $OUT/gpu.txt 2>&1
BASE="--xla_gpu_experimental_enable_fusion_autotuner=false --xla_gpu_per_fusion_autotune_cache_dir=/tmp/atc"
PDL="--xla_gpu_enable_pdl=true --xla_gpu_enable_pdl_launch=true"
NOPDL="--xla_gpu_enable_pdl=false --xla_gpu_enable_pdl_launch=false"
run() {  # label, min seconds needed, extra flags, extra args
  if [ $(left) -lt $2 ]; then echo "== $1 skipped (time)"; return; fi
  XLA_FLAGS="$BASE $3" timeout $(left) python3 experiments/bench/cmdbuf.py --label $1 --out $OUT/fwd_$1.json $4 > $OUT/fwd_$1.log 2>&1
  echo "== $1 rc $? ($3 $4)"; grep -v "Delay kernel" $OUT/fwd_$1.log | grep "forward\|step\|img/s\|Error\|error" | tail -4
}
run base 60 "" ""
run pdl 45 "$PDL" ""
run nopdl 45 "$NOPDL" ""
run pdl_nocb 45 "$PDL --xla_gpu_enable_command_buffer=" ""
run base2 45 "" ""
run pdl2 45 "$PDL" ""
run pdl_train 120 "$PDL" "--train"
run base_train 120 "" "--train"
