#!/bin/bash
# Run 16, call A (H200): the per_sample refactor (d9b8132) timed; forward and train-step profiles;
# GroupNorm micro-benchmark; bf16 ms/NFE and likelihood call. Writes under $OUT.
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site || exit 1
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv > $OUT/gpu.txt 2>&1
timeout 60 python3 experiments/bench/pallas_smoke.py > $OUT/pallas_smoke.log 2>&1; echo "pallas rc $?" >> $OUT/pallas_smoke.log
XLA_FLAGS=--xla_gpu_experimental_enable_fusion_autotuner=false timeout 330 python3 experiments/bench/probe.py \
  --out $OUT/probe --gn --seq bf16_tb_ts,fp32_tb_ts --profile bf16_tb_ts,bf16_tb_ts@cast,bf16_tb_fn@cast \
  --fwd bf16_tb_ts@cast,bf16_tb_fn@cast --steps 20 --budget 300 > $OUT/probe.log 2>&1
echo "probe rc $?" >> $OUT/probe.log
timeout 200 python3 experiments/bench/bench.py --train_modes "" --fwd_modes bfloat16 --lik_modes bfloat16 \
  --out $OUT/lik.json > $OUT/lik.log 2>&1
echo "bench rc $?" >> $OUT/lik.log
tail -5 $OUT/pallas_smoke.log; tail -30 $OUT/probe.log; tail -6 $OUT/lik.log
