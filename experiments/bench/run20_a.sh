#!/bin/bash
# Run 20 call 1 (nvidia-h200-x2, 2 x H200): jaxgen's data parallelism on real GPUs.
#  1. the training loop (jaxgen.main, toy 2-D VP + MLP, train + evaluate) in one process on both
#     GPUs, then in two processes of one GPU each (jax.distributed, NCCL;
#     GPUS_PER_PROCESS=1 launch/local_multiprocess.sh 2), then that run resumed;
#  2. scaling.py: the DDPM++ cont. (VP) train step on 1 and 2 GPUs, 128 images per GPU, bf16, then
#     fp32 (one process each; the training loop's own step; cold compiles).
set -u; python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site; export PYTHONUNBUFFERED=1
left() { echo $((575 - SECONDS)); }
{ nvidia-smi -L; nvidia-smi topo -m; env | grep -i -e nccl -e nvshmem; } > $OUT/gpu.txt 2>&1
TOY="--config=configs/toy/vp_mlp.py --config.training.n_iters=1000 --config.training.eval_every=1000 --config.training.log_every=250 --config.sampling.num_samples=2000"
timeout 100 python3 -m jaxgen.main $TOY --workdir=/tmp/w1 --mode=train > $OUT/main_1proc.log 2>&1; echo "rc $?" >> $OUT/main_1proc.log
GPUS_PER_PROCESS=1 PYTHON=python3 TIMEOUT=100 LOG_DIR=$OUT/mp launch/local_multiprocess.sh 2 $TOY --workdir=/tmp/w2 --mode=train > $OUT/main_2proc.log 2>&1; echo "rc $?" >> $OUT/main_2proc.log
GPUS_PER_PROCESS=1 PYTHON=python3 TIMEOUT=60 LOG_DIR=$OUT/mp_resume launch/local_multiprocess.sh 2 $TOY --config.training.n_iters=1250 --workdir=/tmp/w2 --mode=train > $OUT/main_2proc_resume.log 2>&1; echo "rc $?" >> $OUT/main_2proc_resume.log
mkdir -p $OUT/w1 $OUT/w2; cp /tmp/w1/metrics.jsonl $OUT/w1/ 2>/dev/null; cp /tmp/w2/metrics.jsonl $OUT/w2/ 2>/dev/null; cp -r /tmp/w1/samples $OUT/w1/ 2>/dev/null
grep -h -e "step " -e "bpd\|bits" -e "rc " -e resumed $OUT/main_*.log | grep -v "Delay kernel" | tail -30
timeout $(left) python3 experiments/bench/scaling.py --set model.dtype=bfloat16 --out $OUT/scaling_bf16.json > $OUT/scaling_bf16.log 2>&1; echo "rc $?" >> $OUT/scaling_bf16.log
grep -v "Delay kernel" $OUT/scaling_bf16.log | tail -8
timeout $(left) python3 experiments/bench/scaling.py --out $OUT/scaling_fp32.json > $OUT/scaling_fp32.log 2>&1; echo "rc $?" >> $OUT/scaling_fp32.log
grep -v "Delay kernel" $OUT/scaling_fp32.log | tail -8
