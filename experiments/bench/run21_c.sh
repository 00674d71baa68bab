#!/bin/bash
# Run 21 call 3 (H200): the autotune results jaxgen ships. (1) a cold bench.py process writes every
# autotuning result of the bf16/fp32 train steps, the forwards, the bf16 likelihood and DDIM
# (--dump_autotune_results); the file replaces jaxgen/autotune_results' H200 file on this machine;
# (2) a fresh process with an empty XLA autotune cache and jaxgen's defaults (training.
# autotune_results = "shipped") compiles the same steps; (3) another cold process without them.
set -u; python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site; export PYTHONUNBUFFERED=1
left() { echo $((575 - SECONDS)); }
L=$OUT/all.log
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > $OUT/gpu.txt 2>&1
B="python3 experiments/bench/bench.py --steps 10"
timeout $(left) $B --dump_autotune_results $OUT/at --train_modes bfloat16,float32 --fwd_modes float32,bfloat16 --lik_modes bfloat16 --sample_modes bfloat16 --xla_flags=--xla_gpu_per_fusion_autotune_cache_dir=/tmp/atc1 --out $OUT/bench_dump.json >> $L 2>&1; echo "dump rc $?" >> $L
ls -la $OUT/at >> $L; grep -c "^entries" $OUT/at/*.pbtxt >> $L
cp $OUT/at/*.pbtxt jaxgen/autotune_results/ && git status --short >> $L
timeout $(left) $B --train_modes bfloat16,float32 --fwd_modes bfloat16 --lik_modes "" --xla_flags=--xla_gpu_per_fusion_autotune_cache_dir=/tmp/atc2 --out $OUT/bench_shipped.json >> $L 2>&1; echo "shipped rc $?" >> $L
timeout $(left) $B --train_modes bfloat16 --fwd_modes "" --lik_modes "" --train_options autotune_results=none --xla_flags=--xla_gpu_per_fusion_autotune_cache_dir=/tmp/atc3 --out $OUT/bench_cold2.json >> $L 2>&1; echo "cold2 rc $?" >> $L
grep -v "Delay kernel" $L | grep -i "XLA_FLAGS\|forward\|DDIM\|likelihood\|compile\|img/s\|rc \|autotune\|entries\|pbtxt\|error" | cut -c1-250 | tail -40
