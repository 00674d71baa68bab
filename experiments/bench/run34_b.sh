#!/bin/bash
# Run 34 call 2 (nvidia-h200, session 25): jaxgen's EDM config now as EDM trains it, with its
# augmentation (training.augment_p 0.12, 9 labels into the embedding) and its EMA warm-up, in
# bench.py at batch 128: the cost of the augmentation against run 33 call 1 (bf16 3,160 img/s,
# fp32 1,481, peak 6.57 / 11.64 GiB). Prediction: within 3 % (the resampling is ~1 GFLOP per
# batch against ~16 TFLOP of the train step; a few small gathers). Then tests/test_augment.py and
# tests/test_ema.py on the GPU itself (JAX_PLATFORMS=cuda).
set -u; python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site || exit; export PYTHONUNBUFFERED=1
L=$OUT/h200_run34_b_edm_augment.log
timeout 300 python3 experiments/bench/bench.py --config cifar10.edm_ddpmpp --warmup \
  --train_modes bfloat16,float32 --fwd_modes bfloat16 --lik_modes "" \
  --out $OUT/h200_run34_b_edm_augment.json > $L 2>&1; echo "bench rc $?" >> $L
grep -v "Delay kernel" $L | grep -v "^ *$" | cut -c1-200 | tail -9
G=$OUT/h200_run34_b_pytest_gpu.log; START=$(date +%s)
export JAX_PLATFORMS=cuda XLA_FLAGS=--xla_backend_optimization_level=3
python3 -c "import jax; print('devices', jax.devices())" > $G 2>&1
timeout 200 python3 -m pytest -q -s -p no:cacheprovider tests/test_augment.py tests/test_ema.py -k "not sharded" >> $G 2>&1; echo "gpu pytest rc $? in $(( $(date +%s) - START )) s" >> $G
grep "^devices\|relative rms\|distance\|passed\|failed\|rc \|^FAILED\|Error" $G | cut -c1-220 | head -30
