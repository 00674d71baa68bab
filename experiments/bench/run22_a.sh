#!/bin/bash
# Run 22 call 1 (H200): the up path's blocks given (h, skip) instead of their concatenation
# (model.split_skips), against the library's defaults, each pair in one process (ab.py): bf16
# forward (alternating windows, profile, optimized HLO), DDIM ms per evaluation, bf16 train step;
# then the fp32 train step.
# (model.split_skips and its probe variants were removed after this run: NOTES.md run 22, A; the
# script no longer runs as it is.)
set -u; python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site; export PYTHONUNBUFFERED=1
left() { echo $((575 - SECONDS)); }
L=$OUT/all.log
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > $OUT/gpu.txt 2>&1
timeout $(left) python3 experiments/bench/ab.py --specs bf16_tb_ts,bf16_tb_ts_ss --hlo_dir $OUT/hlo --out $OUT/ab_bf16.json >> $L 2>&1; echo "bf16 rc $?" >> $L
timeout $(left) python3 experiments/bench/ab.py --specs fp32_tb_ts,fp32_tb_ts_ss --parts train --out $OUT/ab_fp32.json >> $L 2>&1; echo "fp32 rc $?" >> $L
grep -v "Delay kernel" $L | grep -v "^ *$" | cut -c1-220 | tail -60
