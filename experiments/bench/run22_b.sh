#!/bin/bash
# Run 22 call 2 (H200): Setup.inference_params now also casts the conv/dense/NIN biases once
# (bit-identical output; ~115 convert kernels less per forward). (1) ab.py: the bf16 forward and
# DDIM from the parameters as cast before (kernels only) and now, in one process; (2) bench.py
# with the library's defaults in a fresh process: bf16 train, forward, ms/NFE, likelihood, DDIM.
set -u; python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site; export PYTHONUNBUFFERED=1
left() { echo $((575 - SECONDS)); }
L=$OUT/all.log
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > $OUT/gpu.txt 2>&1
timeout $(left) python3 experiments/bench/ab.py --specs bf16_tb_ts:kernels,bf16_tb_ts:lib --parts fwd,profile,ddim --rounds 6 --out $OUT/ab_bias.json >> $L 2>&1; echo "ab rc $?" >> $L
timeout $(left) python3 experiments/bench/bench.py --steps 10 --train_modes bfloat16 --fwd_modes bfloat16 --lik_modes bfloat16 --sample_modes bfloat16 --out $OUT/bench.json >> $L 2>&1; echo "bench rc $?" >> $L
grep -v "Delay kernel" $L | grep -v "^ *$" | cut -c1-220 | tail -60
