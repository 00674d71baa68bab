#!/bin/bash
# Run 23 call 1 (H200, fresh lease): where the first bench process's extra cold-compile time goes
# (47.9 and 51.2 s against 34.1-43.3 s in later processes, run 22). Hypothesis: on a freshly
# started machine the first compile also reads cuDNN/cuBLAS from a cold disk. P1 (first process)
# and P3 time a small conv + matmul first (--warmup); P2 does not. JAX_LOG_COMPILES splits tracing
# and lowering from XLA's compile; XLA's scoped timers (gpu_compiler) split XLA's phases.
set -u; python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site; export PYTHONUNBUFFERED=1
left() { echo $((570 - SECONDS)); }
L=$OUT/all.log
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > $OUT/gpu.txt 2>&1
LIBS=$(python3 -c "import os, nvidia; print(' '.join(os.path.join(p, d) for p in nvidia.__path__ for d in os.listdir(p)))" 2>/dev/null)
resid() { echo "== page-cache residency ($1)"; (command -v fincore >/dev/null && find $LIBS -name "*.so*" -size +20M -exec fincore -b {} + 2>&1 | sort -k2 -n | tail -12) || echo "no fincore"; }
resid before >> $L
export JAX_LOG_COMPILES=1 TF_CPP_MIN_LOG_LEVEL=0 TF_CPP_VMODULE=gpu_compiler=1
run() {  # name, extra args
  timeout $(left) python3 experiments/bench/bench.py --steps 10 --train_modes bfloat16 --fwd_modes "" --lik_modes "" $2 --out $OUT/$1.json > $OUT/$1.raw 2>&1; echo "$1 rc $?" >> $L
  grep -v "Delay kernel" $OUT/$1.raw | grep -E "warm-up|train |Finished|took|GpuCompiler|NVPTX|ptxas|rc " | cut -c1-230 >> $L
  gzip -f $OUT/$1.raw
}
echo "== P1 (first process, --warmup)" >> $L; run p1_warmup --warmup
resid after-P1 >> $L
echo "== P2 (no warm-up)" >> $L; run p2_nowarmup ""
echo "== P3 (--warmup)" >> $L; run p3_warmup --warmup
grep -E "== |warm-up|train bf|rc |Finished XLA compilation of jit\(step|RunHloPasses|RunBackend|CompileTargetBinary" $L | cut -c1-200 | head -80
