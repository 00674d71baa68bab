#!/bin/bash
# Run 33 call 1 (nvidia-h200): jaxgen's EDM config (configs/cifar10/edm_ddpmpp.py: EDM's DDPM++,
# channel_mult 2,2,2, 55.73 M parameters, EDM preconditioning and loss) in bench.py at the issue's
# batch 128: bf16 and fp32 training, compile, peak memory, bf16 forward and ms/NFE; the issue's
# EDM peer row (SongUNet, same network) is the comparison. Then the EDM tests on the GPU.
set -u; python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site; export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > $OUT/gpu.txt 2>&1
timeout 330 python3 experiments/bench/bench.py --config cifar10.edm_ddpmpp --warmup \
  --train_modes bfloat16,float32 --fwd_modes bfloat16 --lik_modes "" \
  --out $OUT/h200_run33_a_edm.json > $OUT/h200_run33_a_edm.log 2>&1; echo "bench rc $?" >> $OUT/h200_run33_a_edm.log
tail -8 $OUT/h200_run33_a_edm.log
G=$OUT/h200_run33_a_pytest_gpu.log; START=$(date +%s)
timeout 200 python3 -m pytest -q -s -p no:cacheprovider tests/test_edm.py tests/test_density_plots.py -k "edm" > $G 2>&1; echo "gpu pytest rc $? in $(( $(date +%s) - START )) s" >> $G
grep "sigma\|mode fractions\|NLL\|mass on\|passed\|failed\|rc " $G | cut -c1-200
