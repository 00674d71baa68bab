"""Counts the matrix products in the optimized HLO of the bf16 DDPM++ forward and train step.

Tells whether XLA merged the ~44 time-embedding projections of the residual blocks (they share
their input, act(temb)) into one product (its dot-merger pass), or runs each as its own GEMM.

    python experiments/bench/count_dots.py [--forward_only]
"""
import collections
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from jaxgen import parallel  # pylint: disable=wrong-import-position
parallel.configure_xla_flags()
import jax  # pylint: disable=wrong-import-position
import jax.numpy as jnp  # pylint: disable=wrong-import-position
from configs.cifar10 import vp_ddpmpp_continuous  # pylint: disable=wrong-import-position
from jaxgen import train  # pylint: disable=wrong-import-position


def products(text):
  """Shapes of the GEMM custom calls / dot fusions and plain dots in optimized HLO text."""
  out = collections.Counter()
  for line in text.splitlines():
    if ("custom_call_target=\"__cublas" in line or " dot(" in line
        or "kind=kCustom" in line and "dot" in line):
      m = re.search(r"= (\S+\[[^\]]*\])", line) or re.search(r"= \((\S+)", line)
      out[m.group(1) if m else line.strip()[:60]] += 1
  return out


def main():
  config = vp_ddpmpp_continuous.get_config()
  config.model.dtype = "bfloat16"
  config.training.batch_size = 128
  setup = train.Setup(config)
  state = setup.init_state(jax.random.PRNGKey(0))
  x = jnp.zeros((128, 32, 32, 3), jnp.float32)
  t = jnp.full((128,), 0.5, jnp.float32)
  fwd = jax.jit(lambda p, x, t: setup.model_fn(p, x, t)).lower(
      setup.inference_params(state.params), x, t).compile().as_text()
  for name, text in (("forward", fwd),):
    c = products(text)
    print(f"{name}: {sum(c.values())} products")
    for shape, n in c.most_common():
      print(f"  {n:4d} x {shape}")
  if "--forward_only" in sys.argv:
    return
  flat = setup.to_flat_state(state)
  step = jax.jit(setup.make_flat_train_step()).lower(
      flat, {"image": jnp.zeros((128, 32, 32, 3), jnp.uint8)}).compile().as_text()
  c = products(step)
  print(f"train step: {sum(c.values())} products")
  for shape, n in c.most_common(25):
    print(f"  {n:4d} x {shape}")


if __name__ == "__main__":
  main()
