#!/bin/bash
# Run 25 call 3 (nvidia-h200-x2): the main job (toy 2-D VP + MLP: the device image has no
# tensorflow-datasets for the digits builder; a first try with digits stopped at that import) on
# both GPUs with the defaults ('auto' -> shard_map),
# with data_parallel=gspmd, and in two processes of one GPU each ('auto' -> shard_map over NCCL
# between processes). The three should log the same losses up to float32 summation order.
set -u; python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site; export PYTHONUNBUFFERED=1
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
left() { echo $((560 - SECONDS)); }
D="--config=configs/toy/vp_mlp.py --config.training.n_iters=1000 --config.training.eval_every=1000 --config.training.log_every=250 --config.sampling.num_samples=2000 --mode=train"
timeout 170 python3 -m jaxgen.main $D --workdir=/tmp/w_auto > $OUT/main_auto.log 2>&1; echo "rc $? at ${SECONDS}s" >> $OUT/main_auto.log
timeout 150 python3 -m jaxgen.main $D --config.training.data_parallel=gspmd --workdir=/tmp/w_gspmd > $OUT/main_gspmd.log 2>&1; echo "rc $? at ${SECONDS}s" >> $OUT/main_gspmd.log
GPUS_PER_PROCESS=1 PYTHON=python3 TIMEOUT=$(left) LOG_DIR=$OUT/mp launch/local_multiprocess.sh 2 $D --workdir=/tmp/w_mp > $OUT/main_2proc.log 2>&1; echo "rc $? at ${SECONDS}s" >> $OUT/main_2proc.log
for w in auto gspmd mp; do cp /tmp/w_$w/metrics.jsonl $OUT/metrics_$w.jsonl 2>/dev/null; done
for f in $OUT/main_auto.log $OUT/main_gspmd.log $OUT/mp/process_0.log $OUT/main_2proc.log; do echo "== $f"; grep -h -e "data parallel" -e "step " -e "bits" -e "bpd" -e "rc " -e "first train" $f | grep -v "Delay kernel" | cut -c1-200 | tail -12; done
