"""Score / noise / velocity networks (Flax linen) and the name -> class map of the configs.

Every model is called as ``model.apply({'params': p}, x, cond, y=None, train=False,
rngs={'dropout': key})`` with ``x`` ``(batch, ...)``, ``cond`` ``(batch,)`` the conditioning
value the caller computes (``999 t`` for VP, ``sigma(t)`` for VE) and ``y`` optional int labels
``(batch,)``; the output has the shape of ``x`` and dtype float32.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxgen._checks import check_int, is_int
from jaxgen.models import layers
from jaxgen.models.ddpm import DDPM
from jaxgen.models.embeddings import EMBEDDING_TYPES
from jaxgen.models.mlp import MLP
from jaxgen.models.ncsnpp import (NCSNpp, PROGRESSIVE, PROGRESSIVE_COMBINE, PROGRESSIVE_INPUT,
                                  RESBLOCK_TYPES)
from jaxgen.models.unet import UNet
from jaxgen.models import ffjord
from jaxgen.models.ffjord import FFJORDMLP, FFJORDMultiscale

__all__ = ["DDPM", "MLP", "NCSNpp", "UNet", "MODELS", "get_model", "validate_model_config",
           "count_params", "init_params", "abstract_params"]

MODELS = {
    "ncsnpp": NCSNpp,
    "ddpmpp": NCSNpp,
    "ddpm": DDPM,
    "unet": UNet,
    "mlp": MLP,
    "ffjord_mlp": FFJORDMLP,
    "ffjord_multiscale": FFJORDMultiscale,
}
CONV_MODELS = ("ncsnpp", "ddpmpp", "ddpm", "unet")
DTYPES = ("float32", "bfloat16", "float16")
# Config fields whose names differ from the module attribute they set.
_ALIASES = {"mlp": {"embedding": "embedding_dim", "nonlinearity": "activation"}}


def _static(value):
  """Config values as hashable Python values (lists -> tuples)."""
  if isinstance(value, (list, tuple)):
    return tuple(_static(v) for v in value)
  return value


def _module_kwargs(name: str, model_config, data_config) -> dict:
  cls = MODELS[name]
  fields = {f.name for f in dataclasses.fields(cls)} - {"parent", "name"}
  config = dict(model_config.items()) if hasattr(model_config, "items") else dict(model_config)
  kwargs = {}
  for key, attr in _ALIASES.get(name, {}).items():
    if key in config and attr in fields and attr not in config:
      kwargs[attr] = _static(config[key])
  for key, value in config.items():
    if key in fields:
      kwargs[key] = _static(value)
  if "centered" in fields and data_config is not None and "centered" in data_config:
    kwargs["centered"] = bool(data_config.centered)
  return kwargs


def get_model(model_config, data_config=None) -> nn.Module:
  """The Flax module named by ``model_config.name`` with its fields set from the config.

  Args:
    model_config: ``config.model`` (names: ncsnpp, ddpmpp, ddpm, unet, mlp).
    data_config: optional ``config.data``; ``data.centered=False`` makes NCSN++/DDPM map
      ``[0, 1]`` inputs to ``[-1, 1]`` as score_sde does.
  Raises:
    ValueError: unknown name.
  """
  name = str(model_config.name).lower()
  if name not in MODELS:
    raise ValueError(f"unknown model name {model_config.name!r}; expected one of {sorted(MODELS)}")
  return MODELS[name](**_module_kwargs(name, model_config, data_config))


def _require(condition: bool, message: str):
  if not condition:
    raise ValueError(message)


def validate_model_config(model_config, data_config=None) -> None:
  """Rejects, before any tracing or compilation, a model config the data cannot go through.

  Checks names and options, the dtype, and for convolutional models that ``image_size`` is
  divisible by ``2 ** (len(ch_mult) - 1)`` and every entry of ``attn_resolutions`` is a
  resolution the network reaches. Raises ``ValueError`` naming the bad field and value.
  """
  get = model_config.get
  name = str(get("name", "")).lower()
  _require(name in MODELS, f"unknown model name {get('name')!r}; expected one of {sorted(MODELS)}")
  dtype = str(get("dtype", "float32"))
  _require(dtype in DTYPES, f"model.dtype={dtype!r} is not one of {DTYPES}")
  if "nonlinearity" in model_config or "activation" in model_config:
    act = get("activation", get("nonlinearity"))
    _require(str(act).lower() in layers.ACTIVATIONS,
             f"model nonlinearity {act!r} is unknown; expected one of {sorted(layers.ACTIVATIONS)}")
  # Every noise-conditioned network embeds through embeddings.noise_features, which takes all
  # three types; 'fourier_linear' is EDM's NCSN++ embedding (Fourier features of c_noise itself).
  embedding_type = str(get("embedding_type", "positional")).lower()
  _require(embedding_type in EMBEDDING_TYPES,
           f"model.embedding_type={embedding_type!r} is not one of {EMBEDDING_TYPES} "
           f"for model {name!r}")
  num_classes = check_int(get("num_classes", 0), "model.num_classes", minimum=0)
  if num_classes > 0 and name in ("ncsnpp", "ddpmpp", "ddpm"):
    _require(bool(get("conditional", True)),
             f"model.num_classes={num_classes} needs model.conditional=True (labels join the "
             "time embedding)")

  augment_dim = check_int(get("augment_dim", 0), "model.augment_dim", minimum=0)
  if augment_dim > 0:
    _require(name in CONV_MODELS,
             f"model.augment_dim={augment_dim}: augmentation labels condition the image networks "
             f"{CONV_MODELS}, not {name!r}")
    _require(bool(get("conditional", True)),
             f"model.augment_dim={augment_dim} needs model.conditional=True (the labels join the "
             "noise embedding)")

  if name in ffjord.FFJORD_MODELS:
    ffjord.validate_model_config(model_config, data_config)
    return
  if name == "mlp":
    hidden = _static(get("hidden", (256, 256, 256)))
    _require(all(is_int(w) and w > 0 for w in hidden),
             f"model.hidden={hidden} must be a sequence of positive ints")
    return

  check_int(get("nf", 0), "model.nf")
  ch_mult = _static(get("ch_mult", ()))
  _require(len(ch_mult) > 0 and all(is_int(m) and m > 0 for m in ch_mult),
           f"model.ch_mult={ch_mult} must be a non-empty sequence of positive ints")
  check_int(get("num_res_blocks", 0), "model.num_res_blocks")
  conv_size = check_int(get("conv_size", 3), "model.conv_size")
  _require(conv_size % 2 == 1, f"model.conv_size={conv_size} must be odd")
  dropout = float(get("dropout", 0.0))
  _require(0.0 <= dropout < 1.0, f"model.dropout={dropout} must be in [0, 1)")
  policy = get("remat_policy", "full")
  _require(policy in layers.REMAT_POLICIES,
           f"model.remat_policy={policy!r} is not one of {sorted(layers.REMAT_POLICIES)}")

  if name in ("ncsnpp", "ddpmpp"):
    for field, allowed in (("progressive", PROGRESSIVE), ("progressive_input", PROGRESSIVE_INPUT),
                           ("progressive_combine", PROGRESSIVE_COMBINE),
                           ("resblock_type", RESBLOCK_TYPES), ("attention_type", ("ddpm",))):
      value = str(get(field, allowed[0])).lower()
      _require(value in allowed, f"model.{field}={value!r} is not one of {allowed}")
    layout = str(get("kernel_layout", "HWIO")).upper()
    _require(layout in layers.KERNEL_LAYOUTS,
             f"model.kernel_layout={get('kernel_layout')!r} is not one of {layers.KERNEL_LAYOUTS}")
    if get("fir", False):
      kernel = _static(get("fir_kernel", (1, 3, 3, 1)))
      _require(len(kernel) > 0 and sum(kernel) != 0,
               f"model.fir_kernel={kernel} must be non-empty with a non-zero sum")

  if data_config is None:
    return
  image_size = check_int(data_config.image_size, "data.image_size")
  factor = 2 ** (len(ch_mult) - 1)
  _require(image_size > 0 and image_size % factor == 0,
           f"data.image_size={image_size} is not divisible by 2**(len(ch_mult)-1)={factor} "
           f"(model.ch_mult={ch_mult}); choose an image size or a shorter ch_mult")
  reachable = [image_size // 2 ** i for i in range(len(ch_mult))]
  attn = _static(get("attn_resolutions", ()))
  bad = [r for r in attn if r not in reachable]
  _require(not bad, f"model.attn_resolutions={attn} contains {bad}, which the network never "
           f"reaches for data.image_size={image_size}; reachable: {reachable}")
  check_int(data_config.get("num_channels", 1), "data.num_channels")


def count_params(params) -> int:
  """Total number of scalars in a parameter tree (arrays or ``ShapeDtypeStruct``s)."""
  return int(sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(params)))


def count_flops(fn, *args) -> int:
  """Model FLOPs of ``fn(*args)``: 2 x the multiply-adds of every convolution and matrix product
  in its jaxpr (arrays or ``jax.ShapeDtypeStruct``s; nothing runs). Elementwise work is not
  counted, as in the MFU convention of the PaLM paper. Sub-programs count where they run:
  ``pjit``, custom derivatives and remat once, a ``scan`` body ``length`` times, a ``cond`` as
  its costliest branch; a ``while_loop`` body once (its trip count is unknown).

  For the DDPM++ cont. network of ``configs/cifar10/vp_ddpmpp_continuous.py`` at one 32x32x3 image
  this gives 21.69 GFLOP (the count the GPU issue's MFU uses); EDM's DDPM++ 42.38 GFLOP.
  """
  closed = jax.make_jaxpr(fn)(*args)
  return _jaxpr_flops(closed.jaxpr)


def _jaxpr_flops(jaxpr) -> int:
  from jax.extend import core as jcore  # pylint: disable=import-outside-toplevel

  def subs(value):
    for sub in value if isinstance(value, (list, tuple)) else [value]:
      if isinstance(sub, jcore.ClosedJaxpr):
        yield sub.jaxpr
      elif isinstance(sub, jcore.Jaxpr):
        yield sub

  total = 0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == "conv_general_dilated":
      out, rhs = eqn.outvars[0].aval, eqn.invars[1].aval
      spec = eqn.params["dimension_numbers"].rhs_spec  # (out features, in features, spatial...)
      per_output = math.prod(rhs.shape[d] for d in spec[2:]) * rhs.shape[spec[1]]
      total += 2 * math.prod(out.shape) * per_output
    elif name == "dot_general":
      (contract, _), _ = eqn.params["dimension_numbers"]
      lhs, out = eqn.invars[0].aval, eqn.outvars[0].aval
      total += 2 * math.prod(out.shape) * math.prod(lhs.shape[d] for d in contract)
    elif name == "cond":
      total += max((_jaxpr_flops(b) for v in eqn.params.values() for b in subs(v)), default=0)
      continue
    inner = sum(_jaxpr_flops(sub) for value in eqn.params.values() for sub in subs(value))
    total += inner * (int(eqn.params["length"]) if name == "scan" else 1)
  return total


def _dummy_inputs(model: nn.Module, x_shape: Sequence[int], cond_shape: Sequence[int]):
  x = jnp.zeros(tuple(x_shape), jnp.float32)
  cond = jnp.ones(tuple(cond_shape), jnp.float32)
  y = (jnp.zeros(tuple(cond_shape), jnp.int32)
       if getattr(model, "num_classes", 0) > 0 else None)
  return x, cond, y


def abstract_params(model: nn.Module, x_shape: Sequence[int], cond_shape: Sequence[int]):
  """Parameter shapes (``ShapeDtypeStruct`` tree) by ``jax.eval_shape``, without compiling."""
  x, cond, y = _dummy_inputs(model, x_shape, cond_shape)
  init = lambda key: model.init({"params": key}, x, cond, y, train=False)["params"]
  return jax.eval_shape(init, jax.random.PRNGKey(0))


def init_params(model: nn.Module, key: jax.Array, x_shape: Sequence[int],
                cond_shape: Sequence[int]) -> Any:
  """Initial float32 parameters for inputs ``x`` of ``x_shape`` and ``cond`` of ``cond_shape``.

  Dummy labels are supplied when ``model.num_classes > 0``. Jitted, so a large model is built
  in one compiled call rather than op by op.
  """
  x, cond, y = _dummy_inputs(model, x_shape, cond_shape)

  @jax.jit
  def init(key):
    return model.init({"params": key}, x, cond, y, train=False)["params"]

  params = init(key)
  return jax.tree_util.tree_map(lambda p: p.astype(jnp.float32), params)
