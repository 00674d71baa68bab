#!/bin/bash
# Run 26 call 2 (nvidia-h200-x2, same lease as call 1): draws.py on GPU 0 (call 1's draws.py
# stopped at its import: the script did not put the repository on sys.path). Try 2 adds the
# draws timed inside one jitted loop (try 1 timed dispatch: a fold_in and a call per draw).
set -u; python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site; export PYTHONUNBUFFERED=1
CUDA_VISIBLE_DEVICES=0 timeout 200 python3 experiments/bench/draws.py --calls 200 --out $OUT/draws.json > $OUT/draws.log 2>&1; echo "rc $?" >> $OUT/draws.log
grep -v "Delay kernel" $OUT/draws.log | tail -n 9
