#!/bin/bash
# Run 22 call 3 (H200): per-executable XLA options on the bf16 forward and DDIM, in one process
# (ab.py): concurrent regions in the command buffers (a block's shortcut and main branch may
# overlap), same-shape multi-output fusion, Triton heroless priority fusion.
set -u; python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site; export PYTHONUNBUFFERED=1
left() { echo $((400 - SECONDS)); }
L=$OUT/all.log
timeout $(left) python3 experiments/bench/ab.py --specs bf16_tb_ts,bf16_tb_ts@concurrent,bf16_tb_ts@same_shape_mof,bf16_tb_ts@heroless --parts fwd,profile,ddim --rounds 4 --out $OUT/ab_options.json >> $L 2>&1; echo "ab rc $?" >> $L
grep -v "Delay kernel" $L | grep -v "^ *$" | cut -c1-220 | tail -60
