#!/bin/bash
# Run 31 call 1 (nvidia-h200): every test file but the main job's on the device image's versions
# (jax 0.11.2, flax 0.12.10, optax 0.2.8, orbax 0.12.4, diffrax 0.7.2; CI installs jax 0.10.2),
# CPU with 8 fake devices, the extra packages carried as wheels (.whl; filelock for the tests'
# capped compilation cache). This session's head: one integer rule (jaxgen._checks), the
# immediate exit after a checkpoint error, bits/dim argument checks. Then the damaged-checkpoint
# CLI run 8 times on orbax 0.12.4: the error line must be the last line of stderr every time.
set -u; python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site; export PYTHONUNBUFFERED=1
python3 -c "import jax, jaxlib, flax, optax, orbax.checkpoint as o, diffrax, chex, filelock; print('jax', jax.__version__, 'jaxlib', jaxlib.__version__, 'flax', flax.__version__, 'optax', optax.__version__, 'orbax', o.__version__, 'diffrax', diffrax.__version__, 'chex', chex.__version__, 'filelock', filelock.__version__)" > $OUT/versions.txt 2>&1
T=$OUT/pytest_cpu.log
START=$(date +%s)
JAX_PLATFORMS=cpu XLA_FLAGS=--xla_force_host_platform_device_count=8 timeout 420 python3 -m pytest -q -n 14 -p no:cacheprovider tests --ignore=tests/test_main_job.py > $T 2>&1; echo "pytest rc $? in $(( $(date +%s) - START )) s" >> $T
cat $OUT/versions.txt; tail -3 $T; grep "^FAILED\|^ERROR\|^SKIPPED" $T | cut -c1-200 | head -30
R=/tmp/orb; TOY="--config configs/toy/vp_mlp.py:moons --config.model.hidden=(8,8) --config.eval.batch_size=16 --config.eval.num_bpd_batches=1 --config.sampling.num_samples=16 --config.training.batch_size=16"
export JAX_PLATFORMS=cpu XLA_FLAGS=--xla_force_host_platform_device_count=8
timeout 60 python3 -m jaxgen.main $TOY --workdir=$R --config.training.n_iters=2 > $OUT/orbax_train.log 2>&1
for f in $R/checkpoints/2/state/ocdbt.process_*/d/*; do : > $f; done
for i in 1 2 3 4 5 6 7 8; do
  timeout 60 python3 -m jaxgen.main $TOY --workdir=$R --mode=eval > /dev/null 2> $OUT/orbax_err$i.log; rc=$?
  echo "damaged checkpoint run $i: rc=$rc stderr_lines=$(wc -l < $OUT/orbax_err$i.log) tracebacks=$(grep -c Traceback $OUT/orbax_err$i.log) last_line_is_error=$(tail -1 $OUT/orbax_err$i.log | grep -c '^jaxgen: error: checkpoint 2')"
done | tee $OUT/orbax_summary.txt
