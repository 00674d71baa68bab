#!/bin/bash
# Run 22 call 4 (H200): the cold bf16 compile with the shipped autotune results, in fresh processes
# with and without XLA's per-fusion autotune cache directory (jaxgen.main sets one by default; run
# 21's bench processes had an empty one, run 22's call 2 none: 42 s vs 51 s).
set -u; python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site; export PYTHONUNBUFFERED=1
left() { echo $((560 - SECONDS)); }
L=$OUT/all.log
for i in 1 2; do
  timeout $(left) python3 experiments/bench/bench.py --steps 10 --train_modes bfloat16 --fwd_modes "" --lik_modes "" --xla_flags=--xla_gpu_per_fusion_autotune_cache_dir=/tmp/atc$i --out $OUT/cachedir_$i.json >> $L 2>&1; echo "cachedir $i rc $?" >> $L
  timeout $(left) python3 experiments/bench/bench.py --steps 10 --train_modes bfloat16 --fwd_modes "" --lik_modes "" --out $OUT/nocachedir_$i.json >> $L 2>&1; echo "nocachedir $i rc $?" >> $L
done
grep -v "Delay kernel" $L | grep -i "XLA_FLAGS\|compile\|rc " | cut -c1-250
