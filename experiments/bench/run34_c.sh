#!/bin/bash
# Run 34 call 3 (nvidia-h200, session 25): what EDM's augmentation costs, in one process on one
# lease (call 2 compared with run 33's lease: bf16 3,025 against 3,160 img/s, and the forward,
# which the augmentation does not touch, was 3 % slower too). bf16 train steps of the EDM config:
# as configured (augment_p 0.12, EMA warm-up), without the augmentation, without either, and as
# configured again. Prediction: the augmentation costs 1-3 % of the step. Then the test files that
# this session added or changed, on the device image's versions (CPU, 8 fake devices), including
# the sharded augmentation test that call 2 left out.
set -u; python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site || exit; export PYTHONUNBUFFERED=1
L=$OUT/h200_run34_c_augment_cost.log
timeout 210 python3 experiments/bench/bench.py --config cifar10.edm_ddpmpp --warmup \
  --train_modes bfloat16 --fwd_modes "" --lik_modes "" \
  --variants "bfloat16:augment_p=0.0,bfloat16:augment_p=0.0+ema_rampup_ratio=0.0,bfloat16:ema_rampup_ratio=0.05" \
  --out $OUT/h200_run34_c_augment_cost.json > $L 2>&1; echo "bench rc $?" >> $L
grep -v "Delay kernel" $L | grep -v "^ *$" | cut -c1-200 | tail -9
T=$OUT/h200_run34_c_pytest_cpu.log; START=$(date +%s)
JAX_PLATFORMS=cpu XLA_FLAGS=--xla_force_host_platform_device_count=8 timeout 230 python3 -m pytest -q -n 14 -p no:cacheprovider tests/test_augment.py tests/test_ema.py tests/test_parity_configs.py tests/test_configs.py tests/test_models.py tests/test_losses.py tests/test_edm.py > $T 2>&1; echo "pytest rc $? in $(( $(date +%s) - START )) s" >> $T
tail -3 $T; grep "^FAILED\|^ERROR\|^SKIPPED" $T | cut -c1-200 | head -20
