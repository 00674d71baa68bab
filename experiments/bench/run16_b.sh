#!/bin/bash
# Run 16, call B (H200): command-buffer update mode and the VMM allocator (cmdbuf.py), one fresh
# process per setting; the convolution autotuning is shared through XLA's per-fusion cache.
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site || exit 1
export PYTHONUNBUFFERED=1
L=$OUT/modes.log
grep -n "vmm\|cuda_async\|\"platform\"\|allocator ==" $(python3 -c "import jax._src.xla_bridge as m; print(m.__file__)") | head -20 > $L 2>&1
for V in SKIP_TEMP VMM_PERSISTENT_TEMP NEVER_UPDATE CAPTURE_CMD_NEVER_UPDATE DYNAMIC_ALLOCATE ALWAYS_UPDATE; do
  XLA_FLAGS=--xla_gpu_command_buffer_update_mode=$V XLA_PYTHON_CLIENT_ALLOCATOR=vmm timeout 60 python3 -c "import jax,jax.numpy as jnp; print('ok', jax.jit(lambda x: x*2)(jnp.ones(3)).sum())" > /tmp/m_$V.log 2>&1
  echo "$V rc=$? $(grep -v 'Delay kernel' /tmp/m_$V.log | tail -c 400 | tr '\n' ' ')" >> $L
done
MODE=""
for V in SKIP_TEMP VMM_PERSISTENT_TEMP NEVER_UPDATE; do
  if grep -q "^$V rc=0 .*ok" $L; then MODE=$V; break; fi
done
echo "chosen MODE=$MODE" >> $L
BASE="--xla_gpu_experimental_enable_fusion_autotuner=false --xla_gpu_per_fusion_autotune_cache_dir=/tmp/atc"
A=$OUT/all.log
XLA_FLAGS="$BASE" timeout 190 python3 experiments/bench/cmdbuf.py --train --label base --out $OUT/cb_A.json >> $A 2>&1; echo "A rc $?" >> $A
if [ -n "$MODE" ]; then
XLA_FLAGS="$BASE --xla_gpu_command_buffer_update_mode=$MODE" XLA_PYTHON_CLIENT_ALLOCATOR=vmm timeout 140 python3 experiments/bench/cmdbuf.py --train --label vmm_$MODE --out $OUT/cb_C.json >> $A 2>&1; echo "C rc $?" >> $A
fi
XLA_FLAGS="$BASE" XLA_PYTHON_CLIENT_ALLOCATOR=vmm timeout 110 python3 experiments/bench/cmdbuf.py --train --label vmm --out $OUT/cb_B.json >> $A 2>&1; echo "B rc $?" >> $A
if [ -n "$MODE" ]; then
XLA_FLAGS="$BASE --xla_gpu_command_buffer_update_mode=$MODE" timeout 70 python3 experiments/bench/cmdbuf.py --label default_alloc_$MODE --out $OUT/cb_D.json >> $A 2>&1; echo "D rc $?" >> $A
fi
cat $L; grep -v "Delay kernel" $A | tail -40
