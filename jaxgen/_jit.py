"""``jit`` for functions that take user callables (``score_fn``, ``drift_fn``, ...).

A callable cannot be a traced argument of ``jax.jit``, so the samplers and the likelihood used to
mark it static: cached by identity, which recompiles for every new closure (``lambda x, t:
apply(params, x, t)`` with new ``params``) and silently reuses the first trace for a function
that reads a global that changed. :func:`jit_with_callables` splits each callable as a pytree:
its array leaves are traced arguments, the rest (the function itself, Python numbers) is static.
So a ``jax.tree_util.Partial(apply, params)`` (or any pytree callable, e.g. an equinox module)
compiles once and then runs with whatever ``params`` it carries; a plain function or closure is a
single static leaf and behaves exactly as before (compiled per function object, cached by
identity, so it must not read mutable globals: that is ``jax.jit``'s own rule).
"""
from __future__ import annotations

import functools
import inspect
from typing import Any, Callable, Sequence, Tuple

import jax
import numpy as np

_ARRAY_TYPES = (jax.Array, np.ndarray, np.generic)


class _StaticPart:
  """The static part of a callable pytree: its tree structure and non-array leaves, hashed and
  compared as a tuple (functions by identity)."""

  __slots__ = ("treedef", "leaves")

  def __init__(self, treedef, leaves: Tuple[Any, ...]):
    self.treedef, self.leaves = treedef, leaves

  def _key(self):
    return (self.treedef, tuple(None if l is None else _leaf_key(l) for l in self.leaves))

  def __hash__(self):
    return hash(self._key())

  def __eq__(self, other):
    return isinstance(other, _StaticPart) and self._key() == other._key()


def _leaf_key(leaf):
  """A static leaf as a hashable key; a NaN float (never equal to itself) as one fixed key."""
  if isinstance(leaf, float) and leaf != leaf:
    return (float, "nan")
  return (type(leaf), leaf)


def split_callable(fn) -> Tuple[_StaticPart, list]:
  """``(static, arrays)``: the array leaves of ``fn`` (a pytree) and everything else."""
  leaves, treedef = jax.tree_util.tree_flatten(fn)
  is_array = [isinstance(leaf, _ARRAY_TYPES) for leaf in leaves]
  static = _StaticPart(treedef, tuple(None if a else leaf for leaf, a in zip(leaves, is_array)))
  return static, [leaf if a else None for leaf, a in zip(leaves, is_array)]


def merge_callable(static: _StaticPart, arrays: list):
  """The inverse of :func:`split_callable`."""
  leaves = [a if s is None else s for s, a in zip(static.leaves, arrays)]
  return jax.tree_util.tree_unflatten(static.treedef, leaves)


def jit_with_callables(fun: Callable = None, *, static_argnames: Sequence[str] = (),
                       callable_argnames: Sequence[str] = ()):
  """``jax.jit(fun, static_argnames=...)`` where the ``callable_argnames`` arguments are split
  by :func:`split_callable` (array leaves traced, the rest static). Arguments are passed to
  ``fun`` by name; the others are traced as usual."""
  if fun is None:
    return functools.partial(jit_with_callables, static_argnames=static_argnames,
                             callable_argnames=callable_argnames)
  signature = inspect.signature(fun)
  static_names, callable_names = frozenset(static_argnames), tuple(callable_argnames)

  @functools.partial(jax.jit, static_argnames=("static",))
  def jitted(dynamic, static):
    static = dict(static)
    kwargs = {**static, **dynamic}
    for name in callable_names:
      kwargs[name] = merge_callable(static[name], dynamic[name])
    return fun(**kwargs)

  @functools.wraps(fun)
  def wrapper(*args, **kwargs):
    bound = signature.bind(*args, **kwargs)
    bound.apply_defaults()
    static, dynamic = [], {}
    for name, value in bound.arguments.items():
      if name in callable_names:
        part, arrays = split_callable(value)
        static.append((name, part))
        dynamic[name] = arrays
      elif name in static_names:
        static.append((name, value))
      else:
        dynamic[name] = value
    return jitted(dynamic, tuple(static))

  wrapper.jitted = jitted  # the underlying jax.jit
  wrapper._cache_size = jitted._cache_size  # pylint: disable=protected-access
  return wrapper
