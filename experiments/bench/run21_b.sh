#!/bin/bash
# Run 21 call 2 (H200): (A) the bf16 forward and DDIM with command buffers off per executable, in
# one process (fwd_cb.py); (B) XLA's autotune results dumped by a cold bf16+fp32 compile and loaded
# by a fresh process with an empty per-fusion autotune cache (how much of the cold compile a
# shipped autotune database would save).
set -u; python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site; export PYTHONUNBUFFERED=1
left() { echo $((570 - SECONDS)); }
L=$OUT/all.log
XLA_FLAGS="--xla_gpu_per_fusion_autotune_cache_dir=/tmp/atc0" timeout 150 python3 experiments/bench/fwd_cb.py --out $OUT/fwd_cb.json >> $L 2>&1; echo "fwd_cb rc $?" >> $L
bench() {  # label, flags
  timeout $(left) python3 experiments/bench/bench.py --train_modes bfloat16,float32 --fwd_modes "" --lik_modes "" --steps 10 --xla_flags="$2" --out $OUT/bench_$1.json >> $L 2>&1; echo "bench $1 rc $?" >> $L
}
bench dump "--xla_gpu_per_fusion_autotune_cache_dir=/tmp/atc_dump --xla_gpu_dump_autotune_results_to=/tmp/at.pbtxt"
ls -la /tmp/at.pbtxt >> $L 2>&1; gzip -c /tmp/at.pbtxt > $OUT/at.pbtxt.gz; ls -la $OUT/at.pbtxt.gz >> $L
bench load "--xla_gpu_per_fusion_autotune_cache_dir=/tmp/atc_load --xla_gpu_load_autotune_results_from=/tmp/at.pbtxt"
grep -v "Delay kernel" $L | grep -i "forward\|DDIM\|differ\|compile\|img/s\|rc \|at.pbtxt\|error" | tail -30
