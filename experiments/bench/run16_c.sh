#!/bin/bash
# Run 16, call C (H200): gn_slice_sums against the run-15 defaults in one process (train bf16 and
# fp32, forward, profiles), then bench.py's forward, ms/NFE and likelihood with the new defaults.
# (gn_slice_sums and its probe variants were removed after this run: NOTES.md run 16)
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site || exit 1
export PYTHONUNBUFFERED=1
XLA_FLAGS=--xla_gpu_experimental_enable_fusion_autotuner=false timeout 340 python3 experiments/bench/probe.py \
  --out $OUT/probe --seq bf16_tb_ts,bf16_tb_ts_gs,fp32_tb_ts,fp32_tb_ts_gs \
  --profile bf16_tb_ts_gs,bf16_tb_ts_gs@cast,bf16_tb_ts@cast --hlo bf16_tb_ts_gs \
  --fwd bf16_tb_ts@cast,bf16_tb_ts_gs@cast --steps 20 --budget 400 > $OUT/probe.log 2>&1
echo "probe rc $?" >> $OUT/probe.log
timeout 200 python3 experiments/bench/bench.py --train_modes "" --fwd_modes bfloat16 --lik_modes bfloat16 \
  --out $OUT/lik.json > $OUT/lik.log 2>&1
echo "bench rc $?" >> $OUT/lik.log
grep -v "Delay kernel" $OUT/probe.log | tail -45; tail -6 $OUT/lik.log
