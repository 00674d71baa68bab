#!/bin/bash
# Run 26 call 3 (nvidia-h200-x2): toy data now draw each step's global batch and split it by host,
# so run 25 C's toy job (2-D VP + MLP, 1,000 steps, defaults: 'auto' -> shard_map) should log the
# same losses in one process on both GPUs and in two processes of one GPU each (NCCL between
# the processes), up to float32 summation order. Run 25 C: 0.4044 vs 0.4038 at step 1,000.
# Call 4 repeats it after the evaluation batches were also made global (call 3: same losses, but
# held-out loss and NLL from other evaluation batches).
set -u; python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site; export PYTHONUNBUFFERED=1
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
left() { echo $((500 - SECONDS)); }
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > $OUT/gpu.txt 2>&1
D="--config=configs/toy/vp_mlp.py --config.training.n_iters=1000 --config.training.eval_every=1000 --config.training.log_every=250 --config.sampling.num_samples=2000 --mode=train"
timeout 200 python3 -m jaxgen.main $D --workdir=/tmp/w_auto > $OUT/main_auto.log 2>&1; echo "rc $? at ${SECONDS}s" >> $OUT/main_auto.log
GPUS_PER_PROCESS=1 PYTHON=python3 TIMEOUT=$(left) LOG_DIR=/tmp/mp launch/local_multiprocess.sh 2 $D --workdir=/tmp/w_mp > $OUT/main_2proc.log 2>&1; echo "rc $? at ${SECONDS}s" >> $OUT/main_2proc.log
cp /tmp/mp/process_0.log $OUT/mp_process_0.log 2>/dev/null
for w in auto mp; do cp /tmp/w_$w/metrics.jsonl $OUT/metrics_$w.jsonl 2>/dev/null; done
for f in $OUT/main_auto.log $OUT/mp_process_0.log $OUT/main_2proc.log; do echo "== $f"; grep -h -e "data parallel" -e "step " -e "NLL" -e "rc " $f | grep -v "Delay kernel" | cut -c1-200 | tail -10; done
python3 - <<'PY'
import json, os
out = os.environ["OUT"]
rows = {w: [json.loads(l) for l in open(f"{out}/metrics_{w}.jsonl")] for w in ("auto", "mp")}
for w, r in rows.items():
  print(w, [(x["step"], round(x["train/loss"], 6)) for x in r if "train/loss" in x])
PY
