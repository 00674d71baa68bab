"""Does a Pallas (Triton) kernel compile and run here? Prints its result and error."""
import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

def kern(x_ref, o_ref):
  o_ref[...] = x_ref[...] * 2.0 + 1.0

x = jnp.arange(1024, dtype=jnp.float32).reshape(8, 128)
f = pl.pallas_call(kern, out_shape=jax.ShapeDtypeStruct(x.shape, x.dtype))
y = jax.jit(f)(x)
print("pallas ok", float(jnp.max(jnp.abs(y - (x * 2 + 1)))), jax.__version__)
