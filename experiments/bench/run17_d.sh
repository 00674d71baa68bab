#!/bin/bash
# Run 17 call 4 (H200): forward only, one fresh process per command-buffer setting (graph size,
# command buffers off, no cuBLAS in graphs), then the library's DDIM sampler in bench.py with the
# kernels cast once (Setup.inference_params), which run 16 could not finish.
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site || exit 1
export PYTHONUNBUFFERED=1
BASE="--xla_gpu_experimental_enable_fusion_autotuner=false --xla_gpu_per_fusion_autotune_cache_dir=/tmp/atc"
A=$OUT/all.log
run() {  # label, timeout, extra XLA flags
  XLA_FLAGS="$BASE $3" timeout $2 python3 experiments/bench/cmdbuf.py --label $1 --out $OUT/cb_$1.json >> $A 2>&1
  echo "$1 rc $?" >> $A
}
run base 50 ""
run graph2 40 "--xla_gpu_graph_min_graph_size=2"
run graph20 40 "--xla_gpu_graph_min_graph_size=20"
run nocmdbuf 40 "--xla_gpu_enable_command_buffer="
run fusion_only 40 "--xla_gpu_enable_command_buffer=FUSION,CUSTOM_CALL"
run base2 40 ""
timeout 150 python3 experiments/bench/bench.py --train_modes "" --fwd_modes bfloat16 --lik_modes "" \
  --sample_modes bfloat16 --out $OUT/sample.json > $OUT/sample.log 2>&1; echo "rc $?" >> $OUT/sample.log
grep -v "Delay kernel" $A | grep "^\[.*forward\|rc " ; grep -v "Delay kernel" $OUT/sample.log | tail -12
