#!/bin/bash
# Run 16, call D (H200): the forward inside the library's DDIM sampler (one jitted loop), with the
# default allocator and with XLA_PYTHON_CLIENT_ALLOCATOR=vmm; then fp32 training in bench.py.
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site || exit 1
export PYTHONUNBUFFERED=1
timeout 130 python3 experiments/bench/bench.py --train_modes "" --fwd_modes bfloat16 --lik_modes "" \
  --sample_modes bfloat16 --out $OUT/sample.json > $OUT/sample.log 2>&1; echo "rc $?" >> $OUT/sample.log
XLA_PYTHON_CLIENT_ALLOCATOR=vmm timeout 120 python3 experiments/bench/bench.py --train_modes "" --fwd_modes bfloat16 \
  --lik_modes "" --sample_modes bfloat16 --out $OUT/sample_vmm.json > $OUT/sample_vmm.log 2>&1; echo "rc $?" >> $OUT/sample_vmm.log
timeout 130 python3 experiments/bench/bench.py --train_modes float32 --fwd_modes "" --lik_modes "" \
  --out $OUT/fp32.json > $OUT/fp32.log 2>&1; echo "rc $?" >> $OUT/fp32.log
for f in sample sample_vmm fp32; do grep -v "Delay kernel" $OUT/$f.log | tail -8; done
