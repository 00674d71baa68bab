F=--xla_gpu_experimental_enable_fusion_autotuner=false
GOOD=""
for v in "-triton" "cudnn,cublas_lt" "cudnn,blas" "cudnn,cublaslt" "cudnn,CUBLAS" "cudnn"; do
  if XLA_FLAGS="--xla_gpu_experimental_autotune_backends=$v" python3 -c "import jax; print(jax.jit(lambda x: x + 1)(1.0))" >/dev/null 2>$OUT/try.err; then echo "OK $v"; [ -z "$GOOD" ] && GOOD="$v"; else echo "BAD $v: $(grep -m1 Illegal $OUT/try.err)"; fi
done
echo "using $GOOD"
XLA_FLAGS="$F --xla_gpu_experimental_autotune_backends=$GOOD" timeout 170 python3 experiments/bench/probe.py --out $OUT/s1 --steps 15 --budget 160 --seq bf16_ohwi_fastdrop+trace > $OUT/s1.log 2>&1
XLA_FLAGS="$F --xla_gpu_experimental_autotune_backends=$GOOD" timeout 150 python3 experiments/bench/probe.py --out $OUT/s3 --steps 15 --budget 140 --seq fp32_ohwi_fastdrop > $OUT/s3.log 2>&1
for f in s1 s3; do grep -E "compiled|ms/step|rror|nknown|llegal" $OUT/$f.log | grep -v "/host" | head -5; done
