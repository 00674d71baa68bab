#!/bin/bash
# Run 21 call 4 (H200): two more fresh processes with empty XLA autotune caches and jaxgen's
# defaults (the shipped autotune results): fp32 compiled first, then bf16 first.
set -u; python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site; export PYTHONUNBUFFERED=1
left() { echo $((300 - SECONDS)); }
L=$OUT/all.log
timeout $(left) python3 experiments/bench/bench.py --steps 10 --train_modes float32,bfloat16 --fwd_modes "" --lik_modes "" --xla_flags=--xla_gpu_per_fusion_autotune_cache_dir=/tmp/atc4 --out $OUT/bench_shipped_fp32_first.json >> $L 2>&1; echo "fp32 first rc $?" >> $L
timeout $(left) python3 experiments/bench/bench.py --steps 10 --train_modes bfloat16 --fwd_modes "" --lik_modes "" --xla_flags=--xla_gpu_per_fusion_autotune_cache_dir=/tmp/atc5 --out $OUT/bench_shipped_bf16.json >> $L 2>&1; echo "bf16 rc $?" >> $L
grep -v "Delay kernel" $L | grep -i "XLA_FLAGS\|compile\|rc " | cut -c1-250
