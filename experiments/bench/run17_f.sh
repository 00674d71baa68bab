#!/bin/bash
# Run 17 call 6 (H200): profiles of the bf16 forward with model.pallas_norm off and on (where the
# 0.8 ms that call 5 measured go).
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site || exit 1
export PYTHONUNBUFFERED=1
XLA_FLAGS=--xla_gpu_experimental_enable_fusion_autotuner=false timeout 240 python3 experiments/bench/probe.py \
  --out $OUT/probe --fwd bf16_tb_ts@cast,bf16_tb_ts_pn@cast \
  --profile bf16_tb_ts@cast,bf16_tb_ts_pn@cast --budget 200 > $OUT/probe.log 2>&1
echo "probe rc $?" >> $OUT/probe.log
grep -v "Delay kernel" $OUT/probe.log | tail -30
python3 - <<'P'
import json, glob, os
for f in glob.glob(os.environ["OUT"] + "/probe*.json"):
  d = json.load(open(f))
  for k, v in d.items():
    if k.startswith("fwd_") and isinstance(v, dict):
      print(k, {kk: vv for kk, vv in v.items() if "ms" in kk or "rel" in kk or kk == "gpu_categories"})
P
