#!/bin/bash
# Run 17 call 1 (2026-11-29): base and conv fell back to the CPU (empty XLA_PYTHON_CLIENT_ALLOCATOR is refused by jaxlib 0.11.2); fixed here for call 2.
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
run base 170 "" --train
run conv 110 "$CB" --train
ALLOC=vmm run vmm 110 "" --train
grep -v "Delay kernel" $A | grep -v "^ \|Traceback\|ERROR\|WARNING" | tail -40
