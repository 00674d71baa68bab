"""FFJORD's ODE networks (Grathwohl et al., 2019) in Flax linen: time-conditioned MLPs and the
convolutional multiscale architecture for images.

Every layer takes ``(x, t)``, ``t`` of shape ``(batch,)``, and conditions on time in one of
FFJORD's ways:

* ``ignore``:       ``W x + b``                         (autonomous field);
* ``concat``:       ``W [t, x] + b``                    (time as an extra input feature / channel);
* ``concatsquash``: ``(W x + b) * sigmoid(a t + c) + d t`` (time gates and shifts every unit).

``ODENet`` stacks such layers with a nonlinearity (tanh, softplus, ...) between them; its output
has the shape of its input. Initialisation draws weights and biases from
``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` as PyTorch's ``nn.Linear`` / ``nn.Conv2d`` do, so a fresh
network starts with FFJORD's dynamics (and NFE). ``zero_last`` (RNODE's ``zero_last_weight``)
zeroes every weight of the last layer (its kernel, and a concatsquash layer's gate and shift
weights) and keeps its biases: a fresh block is a constant field, with zero divergence.

The two CNF models hold one ``ODENet`` per CNF block and, with ``train_T``, one learnable end time
per block (``T = sqrt_end_time ** 2`` as in FFJORD). They describe their chain of blocks and fixed
bijections with :meth:`layout` (plain Python, no parameters), evaluate block ``i``'s field with
:meth:`velocity` and its end time with :meth:`end_time`; :mod:`jaxgen.cnf` walks the layout.
``__call__(x, t, train=False)`` touches every block (so ``init`` creates all parameters) and
returns block 0's velocity at ``x``.

Layout steps (from data to prior), tuples whose first entry names the step:

* ``("cnf", index, shape)``: CNF block ``index`` acting on examples of ``shape``;
* ``("logit", alpha)``: ``y = logit(alpha + (1 - 2 alpha) x)`` for data in ``[0, 1]``;
* ``("shift", -0.5)``: ``y = x - 0.5`` (FFJORD's ``ZeroMeanTransform`` when ``alpha = 0``);
* ``("squeeze",)``: ``(H, W, C) -> (H/2, W/2, 4C)``;
* ``("factor_out",)``: the last half of the channels leaves for the prior (multiscale).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxgen._checks import check_int, is_int
from jaxgen.models import layers

Array = jax.Array

LAYER_TYPES = ("ignore", "concat", "concatsquash")
NONLINEARITIES = ("tanh", "softplus", "relu", "elu", "swish")
FFJORD_MODELS = ("ffjord_mlp", "ffjord_multiscale")


def _uniform_fan_in(fan_in: int):
  """PyTorch's default ``Linear``/``Conv`` initialiser: ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``."""
  bound = 1.0 / math.sqrt(max(fan_in, 1))

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def _dense(features: int, fan_in: int, dtype, use_bias: bool = True, name: Optional[str] = None,
           zero_kernel: bool = False):
  kernel_init = nn.initializers.zeros if zero_kernel else _uniform_fan_in(fan_in)
  return nn.Dense(features, use_bias=use_bias, kernel_init=kernel_init,
                  bias_init=_uniform_fan_in(fan_in), dtype=dtype, param_dtype=jnp.float32,
                  name=name)


def _check_layer_type(layer_type: str) -> None:
  if layer_type not in LAYER_TYPES:
    raise ValueError(f"unknown layer_type {layer_type!r}; expected one of {LAYER_TYPES}")


class TimeDense(nn.Module):
  """A dense layer conditioned on time (``ignore`` / ``concat`` / ``concatsquash``).

  ``__call__(x (batch, d_in), t (batch,)) -> (batch, features)``. ``zero_weights``: every kernel
  starts at zero (biases as usual).
  """
  features: int
  layer_type: str = "concatsquash"
  dtype: Any = jnp.float32
  zero_weights: bool = False

  @nn.compact
  def __call__(self, x: Array, t: Array) -> Array:
    _check_layer_type(self.layer_type)
    d_in = x.shape[-1]
    tt = t.reshape(-1, 1).astype(x.dtype)
    dense = lambda fan_in, name, **kw: _dense(self.features, fan_in, self.dtype, name=name,
                                              zero_kernel=self.zero_weights, **kw)
    if self.layer_type == "ignore":
      return dense(d_in, "layer")(x)
    if self.layer_type == "concat":
      return dense(d_in + 1, "layer")(jnp.concatenate([tt, x], axis=-1))
    h = dense(d_in, "layer")(x)
    gate = dense(1, "hyper_gate")(tt)
    shift = dense(1, "hyper_bias", use_bias=False)(tt)
    return h * jax.nn.sigmoid(gate) + shift


class TimeConv(nn.Module):
  """A 'SAME' ``kernel_size`` convolution conditioned on time; NHWC.

  ``__call__(x (batch, H, W, C_in), t (batch,)) -> (batch, H, W, features)``; ``concat`` adds
  ``t`` as a constant input channel, ``concatsquash`` gates and shifts every output channel.
  ``zero_weights``: every kernel starts at zero (biases as usual).
  """
  features: int
  layer_type: str = "concat"
  kernel_size: int = 3
  dtype: Any = jnp.float32
  zero_weights: bool = False

  def _conv(self, fan_in_channels: int, name: str):
    fan_in = fan_in_channels * self.kernel_size ** 2
    kernel_init = nn.initializers.zeros if self.zero_weights else _uniform_fan_in(fan_in)
    return nn.Conv(self.features, (self.kernel_size, self.kernel_size), padding="SAME",
                   kernel_init=kernel_init, bias_init=_uniform_fan_in(fan_in),
                   dtype=self.dtype, param_dtype=jnp.float32, name=name)

  @nn.compact
  def __call__(self, x: Array, t: Array) -> Array:
    _check_layer_type(self.layer_type)
    c_in = x.shape[-1]
    tt = t.reshape(-1, 1, 1, 1).astype(x.dtype)
    if self.layer_type == "ignore":
      return self._conv(c_in, "layer")(x)
    if self.layer_type == "concat":
      t_channel = jnp.broadcast_to(tt, x.shape[:-1] + (1,))
      return self._conv(c_in + 1, "layer")(jnp.concatenate([t_channel, x], axis=-1))
    h = self._conv(c_in, "layer")(x)
    t2 = t.reshape(-1, 1).astype(x.dtype)
    gate = _dense(self.features, 1, self.dtype, name="hyper_gate",
                  zero_kernel=self.zero_weights)(t2)[:, None, None, :]
    shift = _dense(self.features, 1, self.dtype, use_bias=False, name="hyper_bias",
                   zero_kernel=self.zero_weights)(t2)
    return h * jax.nn.sigmoid(gate) + shift[:, None, None, :]


class ODENet(nn.Module):
  """FFJORD's ``ODEnet``: time-conditioned layers ``hidden_dims + (D,)`` with a nonlinearity
  between them (none after the last).

  ``__call__(x, t)``: ``x`` ``(batch, D)`` (dense) or ``(batch, H, W, C)`` (``conv=True``, 3x3
  stride-1 convolutions, output channels ``C``), ``t`` ``(batch,)``; returns ``x``'s shape, float32.
  ``zero_last``: the last layer's weights start at zero (RNODE's ``zero_last_weight``).
  """
  hidden_dims: Sequence[int] = (64, 64, 64)
  layer_type: str = "concatsquash"
  nonlinearity: str = "tanh"
  conv: bool = False
  dtype: Any = "float32"
  zero_last: bool = False

  @nn.compact
  def __call__(self, x: Array, t: Array) -> Array:
    if t.shape != x.shape[:1]:
      raise ValueError(f"t must have shape (batch,) = {x.shape[:1]}, got {t.shape}")
    dtype = jnp.dtype(self.dtype)
    act = layers.get_activation(self.nonlinearity)
    h = x.astype(dtype)
    if not self.conv:
      h = h.reshape(x.shape[0], -1)
    widths = tuple(int(w) for w in self.hidden_dims) + (h.shape[-1],)
    for i, width in enumerate(widths):
      zero = bool(self.zero_last) and i == len(widths) - 1
      if self.conv:
        h = TimeConv(width, self.layer_type, dtype=dtype, zero_weights=zero,
                     name=f"layer_{i}")(h, t)
      else:
        h = TimeDense(width, self.layer_type, dtype=dtype, zero_weights=zero,
                      name=f"layer_{i}")(h, t)
      if i < len(widths) - 1:
        h = act(h)
    return h.astype(jnp.promote_types(x.dtype, jnp.float32)).reshape(x.shape)


class _CNFChain(nn.Module):
  """Shared machinery of the CNF models: one ``ODENet`` and one end time per block."""

  @nn.nowrap
  def num_nets(self) -> int:
    """Number of CNF blocks (each with its own ``ODENet`` and end time)."""
    raise NotImplementedError

  @nn.nowrap
  def net_module(self, index: int, name: Optional[str] = None) -> ODENet:
    """Block ``index``'s field as a stand-alone ``ODENet`` (its parameters are
    ``params[f'block_{index}']``)."""
    raise NotImplementedError

  @nn.nowrap
  def layout(self, shape: Sequence[int]) -> Tuple[tuple, ...]:
    """The flow's steps for one example of ``shape`` (without the batch axis), in order: e.g.
    ``("cnf", block_index, piece_shape)``, ``("squeeze",)``, ``("factor_out",)`` (the module
    docstring lists them)."""
    raise NotImplementedError

  def setup(self):
    n = self.num_nets()
    for i in range(n):  # submodules named block_<i> (setup names them by attribute)
      setattr(self, f"block_{i}", self.net_module(i))
    if self.train_T:
      init = nn.initializers.constant(math.sqrt(float(self.time_length)))
      self.sqrt_end_times = [self.param(f"sqrt_end_time_{i}", init, ()) for i in range(n)]

  def velocity(self, x: Array, t: Array, index: int) -> Array:
    """Block ``index``'s vector field ``f_index(x, t)``; ``x`` of that block's shape, ``t``
    ``(batch,)``."""
    return getattr(self, f"block_{index}")(x, t)

  def end_time(self, index: int) -> Array:
    """Block ``index``'s integration time ``T`` (scalar; learnable with ``train_T``)."""
    if self.train_T:
      return jnp.square(self.sqrt_end_times[index])
    return jnp.asarray(float(self.time_length), jnp.float32)

  def __call__(self, x: Array, t: Array, y: Optional[Array] = None,
               train: bool = False) -> Array:
    """Evaluates every block once (so ``init`` creates all parameters); returns block 0's
    velocity at ``x`` (data shape; after the elementwise input transform for images)."""
    del y, train
    batch = x.shape[0]
    out = None
    for step in self.layout(x.shape[1:]):
      if step[0] != "cnf":
        continue
      index, shape = step[1], step[2]
      inp = x if index == 0 else jnp.zeros((batch,) + tuple(shape), jnp.float32)
      v = self.velocity(inp, t, index)
      self.end_time(index)
      if index == 0:
        out = v
    return out


class FFJORDMLP(_CNFChain):
  """``num_blocks`` stacked CNFs with dense ``ODENet`` fields, for vectors ``(batch, D)`` (FFJORD's
  toy and tabular models; ``hidden_dims=(64, 64, 64)``, ``concatsquash``, ``tanh``,
  ``time_length=0.5``, ``train_T=True`` is its 2-D setting)."""
  hidden_dims: Sequence[int] = (64, 64, 64)
  layer_type: str = "concatsquash"
  nonlinearity: str = "tanh"
  num_blocks: int = 1
  time_length: float = 0.5
  train_T: bool = True
  zero_last: bool = False
  dtype: Any = "float32"

  @nn.nowrap
  def num_nets(self) -> int:
    return int(self.num_blocks)

  @nn.nowrap
  def net_module(self, index: int, name: Optional[str] = None) -> ODENet:
    del index
    return ODENet(tuple(self.hidden_dims), self.layer_type, self.nonlinearity, conv=False,
                  dtype=self.dtype, zero_last=self.zero_last, name=name)

  @nn.nowrap
  def layout(self, shape: Sequence[int]) -> Tuple[tuple, ...]:
    shape = tuple(int(s) for s in shape)
    return tuple(("cnf", i, shape) for i in range(int(self.num_blocks)))


def multiscale_num_scales(image_size: int, num_scales: int = 0) -> int:
  """FFJORD's number of scales: halve the side while it is at least 4 (28 -> 3, 32 -> 4);
  ``num_scales > 0`` caps it."""
  n, h = 0, int(image_size)
  while h >= 4:
    n, h = n + 1, h // 2
  return min(n, num_scales) if num_scales > 0 else n


class FFJORDMultiscale(_CNFChain):
  """FFJORD's multiscale image CNF (``ODENVP``), NHWC.

  Data in ``[0, 1]`` go through ``logit(alpha + (1 - 2 alpha) x)`` (``alpha > 0``) or ``x - 0.5``;
  then every scale but the last runs ``num_blocks`` CNFs, squeezes ``(H, W, C) -> (H/2, W/2, 4C)``,
  runs ``num_blocks`` more and factors half of the channels out to the prior; the last scale runs
  ``num_blocks`` CNFs. Each field is a convolutional ``ODENet`` (``hidden_dims`` channels, 3x3,
  stride 1, ``concat`` time, softplus; ``zero_last`` as RNODE's). MNIST: 3 scales, 10 blocks;
  CIFAR-10: 4 scales, 14 blocks.
  """
  hidden_dims: Sequence[int] = (64, 64, 64)
  layer_type: str = "concat"
  nonlinearity: str = "softplus"
  num_blocks: int = 2
  num_scales: int = 0
  alpha: float = 1e-6
  time_length: float = 1.0
  train_T: bool = True
  zero_last: bool = False
  image_size: int = 28
  dtype: Any = "float32"

  @nn.nowrap
  def layout(self, shape: Sequence[int]) -> Tuple[tuple, ...]:
    h, w, c = (int(s) for s in shape)
    if h != w:
      raise ValueError(f"FFJORDMultiscale needs square images, got shape {tuple(shape)}")
    n_scales = multiscale_num_scales(h, int(self.num_scales))
    if n_scales < 1:
      raise ValueError(f"image side {h} is too small for the multiscale CNF (needs >= 4)")
    steps = [("logit", float(self.alpha)) if self.alpha > 0 else ("shift", -0.5)]
    index = 0
    for scale in range(n_scales):
      for _ in range(int(self.num_blocks)):
        steps.append(("cnf", index, (h, w, c)))
        index += 1
      if scale < n_scales - 1:
        if h % 2 or w % 2:
          raise ValueError(f"scale {scale} has odd side {h}; cannot squeeze (shape {shape})")
        steps.append(("squeeze",))
        h, w, c = h // 2, w // 2, c * 4
        for _ in range(int(self.num_blocks)):
          steps.append(("cnf", index, (h, w, c)))
          index += 1
        steps.append(("factor_out",))
        c = c // 2
    return tuple(steps)

  @nn.nowrap
  def num_nets(self) -> int:
    n_scales = multiscale_num_scales(int(self.image_size), int(self.num_scales))
    return int(self.num_blocks) * (2 * n_scales - 1)

  @nn.nowrap
  def net_module(self, index: int, name: Optional[str] = None) -> ODENet:
    del index
    return ODENet(tuple(self.hidden_dims), self.layer_type, self.nonlinearity, conv=True,
                  dtype=self.dtype, zero_last=self.zero_last, name=name)

  def __call__(self, x: Array, t: Array, y: Optional[Array] = None,
               train: bool = False) -> Array:
    if x.shape[1] != int(self.image_size):
      raise ValueError(f"FFJORDMultiscale(image_size={self.image_size}) got images of shape "
                       f"{x.shape[1:]}")
    return super().__call__(x, t, y, train)


def validate_model_config(model_config, data_config=None) -> None:
  """Rejects a bad FFJORD model config before tracing (``ValueError`` naming the field)."""
  get = model_config.get
  name = str(get("name", "")).lower()
  if name not in FFJORD_MODELS:
    raise ValueError(f"model.name={name!r} is not an FFJORD model {FFJORD_MODELS}")
  hidden = tuple(get("hidden_dims", (64, 64, 64)))
  if not hidden or not all(is_int(w) and w > 0 for w in hidden):
    raise ValueError(f"model.hidden_dims={hidden} must be a non-empty sequence of positive ints")
  layer_type = str(get("layer_type", "concatsquash"))
  if layer_type not in LAYER_TYPES:
    raise ValueError(f"model.layer_type={layer_type!r} is not one of {LAYER_TYPES}")
  act = str(get("nonlinearity", "tanh")).lower()
  if act not in layers.ACTIVATIONS:
    raise ValueError(f"model.nonlinearity={act!r} is unknown; expected one of "
                     f"{sorted(layers.ACTIVATIONS)}")
  check_int(get("num_blocks", 1), "model.num_blocks")
  if not float(get("time_length", 1.0)) > 0:
    raise ValueError(f"model.time_length={get('time_length')} must be positive")
  for flag in ("zero_last", "train_T"):
    if not isinstance(get(flag, False), bool):
      raise ValueError(f"model.{flag}={get(flag)!r} must be True or False")
  if name == "ffjord_multiscale":
    alpha = float(get("alpha", 1e-6))
    if not 0.0 <= alpha < 0.5:
      raise ValueError(f"model.alpha={alpha} must be in [0, 0.5)")
    if data_config is not None:
      size = check_int(data_config.image_size, "data.image_size")
      if check_int(get("image_size", size), "model.image_size") != size:
        raise ValueError(f"model.image_size={get('image_size')} differs from "
                         f"data.image_size={size}")
      num_scales = check_int(get("num_scales", 0), "model.num_scales", minimum=0,
                             note=" (0: as many as the image size allows)")
      if multiscale_num_scales(size, num_scales) < 1:
        raise ValueError(f"data.image_size={size} is too small for ffjord_multiscale (>= 4)")
      if bool(data_config.get("centered", False)) and alpha > 0:
        raise ValueError("ffjord_multiscale with model.alpha > 0 (logit input) needs data in "
                         "[0, 1]: set data.centered=False")


_CLASSES = {"ffjord_mlp": FFJORDMLP, "ffjord_multiscale": FFJORDMultiscale}


def from_config(model_config, data_config=None) -> nn.Module:
  """The FFJORD model named by ``model_config.name`` with the config fields it declares (what
  ``jaxgen.models.get_model`` builds once it maps the two names; ``image_size`` defaults to
  ``data_config.image_size``)."""
  validate_model_config(model_config, data_config)
  cls = _CLASSES[str(model_config.name).lower()]
  fields = {f.name for f in dataclasses.fields(cls)} - {"parent", "name"}
  kwargs = {}
  for key, value in model_config.items():
    if key in fields:
      kwargs[key] = tuple(value) if isinstance(value, (list, tuple)) else value
  if "image_size" in fields and "image_size" not in kwargs and data_config is not None:
    kwargs["image_size"] = int(data_config.image_size)
  return cls(**kwargs)
