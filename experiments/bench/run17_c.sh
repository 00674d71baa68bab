#!/bin/bash
# Run 17 call 3: float32 and bfloat16 steps, default vs convolutions in the command buffers with
# SKIP_TEMP + VMM (call 2: CONVOLUTION without SKIP_TEMP fails with cuDNN status 5003), alternating.
# the cuDNN convolutions captured into XLA's command buffers (command type CONVOLUTION, not in
# XLA's default set), alone and with SKIP_TEMP (temporaries at stable virtual addresses, so that
# the captured graphs are not re-traced on every call). Run 16 found the bf16 forward host-bound:
# 7.9 ms of GPU work, 8.1-8.7 ms per call, with 158 convolution thunks and ~70 graphs per call.
# cmdbuf.py checks that every pipelined output equals the waited-for output of its own input.
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site || exit 1
export PYTHONUNBUFFERED=1
BASE="--xla_gpu_experimental_enable_fusion_autotuner=false --xla_gpu_per_fusion_autotune_cache_dir=/tmp/atc"
CB="--xla_gpu_enable_command_buffer=FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL,CUDNN,CONVOLUTION"
A=$OUT/all.log
run() {  # label, timeout, extra XLA flags, cmdbuf.py args; env ALLOC for the allocator
  XLA_FLAGS="$BASE $3" env ${ALLOC:+XLA_PYTHON_CLIENT_ALLOCATOR=$ALLOC} timeout $2 python3 \
    experiments/bench/cmdbuf.py --label $1 --out $OUT/cb_$1.json $4 >> $A 2>&1
  echo "$1 rc $?" >> $A
}
CS="$CB --xla_gpu_command_buffer_update_mode=SKIP_TEMP"
run fp32_base 150 "" "--train --spec fp32_tb_ts"
ALLOC=vmm run fp32_conv_skip_temp 110 "$CS" "--train --spec fp32_tb_ts"
ALLOC=vmm run bf16_conv_skip_temp 100 "$CS" --train
run bf16_base 100 "" --train
ALLOC=vmm run fp32_conv_skip_temp2 90 "$CS" "--train --spec fp32_tb_ts"
grep -v "Delay kernel" $A | grep -v "^ \|Traceback\|ERROR\|WARNING" | tail -40
