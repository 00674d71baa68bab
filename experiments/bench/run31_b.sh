#!/bin/bash
# Run 31 call 2 (nvidia-h200): the damaged-checkpoint CLI on the device image's orbax 0.12.4 with
# restore_checkpoint's asyncio filter: 3 fresh workdirs (train 2 steps, empty the array files),
# 4 --mode=eval runs each. Every stderr should be the 2 orbax warnings and the error line, last.
set -u; python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site; export PYTHONUNBUFFERED=1
export JAX_PLATFORMS=cpu XLA_FLAGS=--xla_force_host_platform_device_count=8
TOY="--config configs/toy/vp_mlp.py:moons --config.model.hidden=(8,8) --config.eval.batch_size=16 --config.eval.num_bpd_batches=1 --config.sampling.num_samples=16 --config.training.batch_size=16"
for w in 1 2 3; do
  R=/tmp/orb$w
  timeout 90 python3 -m jaxgen.main $TOY --workdir=$R --config.training.n_iters=2 > $OUT/train$w.log 2>&1 || tail -5 $OUT/train$w.log
  for f in $R/checkpoints/2/state/ocdbt.process_*/d/*; do : > $f; done
  for i in 1 2 3 4; do
    timeout 60 python3 -m jaxgen.main $TOY --workdir=$R --mode=eval > /dev/null 2> /tmp/err_${w}_${i}.log; rc=$?
    echo "workdir $w run $i: rc=$rc stderr_lines=$(wc -l < /tmp/err_${w}_${i}.log) tracebacks=$(grep -c Traceback /tmp/err_${w}_${i}.log) asyncio_reports=$(grep -c 'asyncio.run() shutdown' /tmp/err_${w}_${i}.log) last_line_is_error=$(tail -1 /tmp/err_${w}_${i}.log | grep -c '^jaxgen: error: checkpoint 2')"
    [ "$(wc -l < /tmp/err_${w}_${i}.log)" -gt 3 ] && head -c 2000 /tmp/err_${w}_${i}.log > $OUT/noisy_w${w}_r$i.txt
  done
done | tee $OUT/summary.txt
