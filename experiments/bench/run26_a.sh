#!/bin/bash
# Run 26 call 1 (nvidia-h200-x2): the shard_map step's global-batch draws per device's rows only
# (parallel.rows_of_draw: each device computes the threefry counters of its own rows).
# 1. jax 0.11.2 compatibility: the draw tests on the CPU (8 fake devices) with this image's jax.
# 2. draws.py: whole-batch draw + slice against rows only, G = 1..256 simulated devices (GPU 0).
# 3. scaling.py on 2 GPUs, bf16: shard_map (8 buckets) and gspmd, same lease; the loss at step 66
#    must equal run 25's (0.98728228 shard_map, 0.98728192 gspmd): the draws are bit-identical.
set -u; python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl .whl_test/*.whl && export PYTHONPATH=/tmp/site; export PYTHONUNBUFFERED=1
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
left() { echo $((570 - SECONDS)); }
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > $OUT/gpu.txt 2>&1
( export JAX_PLATFORMS=cpu XLA_FLAGS=--xla_force_host_platform_device_count=8
  timeout 200 python3 -m pytest -q -p no:cacheprovider tests/test_parallel.py -k "rows or global_batch_draw or mul_u32" 2>&1 | tail -4
  timeout 200 python3 -m pytest -q -p no:cacheprovider tests/test_train.py -k "shard_map_step_equals or global_batch_noise" 2>&1 | tail -4
) > $OUT/cpu_tests.log 2>&1
echo "== cpu tests at ${SECONDS}s"; cat $OUT/cpu_tests.log | cut -c1-200
CUDA_VISIBLE_DEVICES=0 timeout $(left) python3 experiments/bench/draws.py --out $OUT/draws.json > $OUT/draws.log 2>&1; echo "rc $?" >> $OUT/draws.log
echo "== draws at ${SECONDS}s"; grep -v "Delay kernel" $OUT/draws.log | tail -n 9
run() {  # name data_parallel
  timeout $(left) python3 experiments/bench/scaling.py --set model.dtype=bfloat16 --set training.data_parallel=$2 --set training.allreduce_buckets=8 --devices 2 --steps 20 --out $OUT/$1.json > $OUT/$1.log 2>&1; echo "rc $?" >> $OUT/$1.log
  echo "== $1 at ${SECONDS}s"; grep -v "Delay kernel" $OUT/$1.log | tail -n 5 | cut -c1-220
  python3 -c "import json,sys; r=json.load(open(sys.argv[1]))['results'][-1]; print('last_loss', repr(r['last_loss']), 'img/s', r['images_per_s'])" $OUT/$1.json
}
run two_shmap_bf16 shard_map
run two_gspmd_bf16 gspmd
