#!/bin/bash
# Run 26 call 5 (nvidia-h200): the table at the end of this session, one fresh bench.py process
# with the library's defaults on the final head (this session changed no one-GPU program: toy
# data, config checks, cleanups; the first losses should equal run 25 D's, 1.083667 / 1.083567).
set -u; python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site; export PYTHONUNBUFFERED=1
left() { echo $((570 - SECONDS)); }
L=$OUT/bench.log
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > $OUT/gpu.txt 2>&1
timeout $(left) python3 experiments/bench/bench.py --train_modes bfloat16,float32 --fwd_modes bfloat16 --lik_modes bfloat16 --sample_modes bfloat16 --budget 480 --out $OUT/bench.json >> $L 2>&1; echo "bench rc $?" >> $L
grep -v "Delay kernel" $L | grep -v "^ *$" | cut -c1-200 | tail -45
