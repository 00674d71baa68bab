"""The checks behind every count and number the library takes (steps, probes, batch sizes,
scales, ...).

Before, about fifteen hand-written copies disagreed: some let ``True`` through as ``1`` (it is an
``int`` to Python), some refused ``numpy`` integers, and some model fields silently truncated
``2.5`` to ``2`` through ``int()``. :func:`check_int` is the single rule for counts: a Python or
NumPy integer, not a ``bool``, at least ``minimum``; :func:`check_finite_number` and
:func:`check_positive_number` are the rules for real numbers. Each ``ValueError`` names the field
and the value.
"""
from __future__ import annotations

import math
from typing import Any, Optional

import jax
import numpy as np


def is_int(value: Any) -> bool:
  """Whether ``value`` is a Python or NumPy integer that is not a ``bool``."""
  return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def is_whole_number(value: Any) -> bool:
  """Whether ``value`` is an integer or an integer-valued float (``1000.0`` from a config): a
  Python, NumPy or 0-d JAX number; not a bool, NaN, inf, None or an array of several."""
  if isinstance(value, (bool, np.bool_, str, bytes)) or np.ndim(value) != 0:
    return False
  number = concrete_float(value)
  return number is not None and math.isfinite(number) and int(number) == number


def concrete_float(value: Any) -> Optional[float]:
  """``float(value)`` when ``value`` is a concrete scalar; ``None`` when it is traced (or not a
  number at all, or an array of several)."""
  try:
    return float(value)
  except (TypeError, ValueError, jax.errors.ConcretizationTypeError):
    return None


def check_int(value: Any, name: str, minimum: int = 1, note: str = "") -> int:
  """``value`` as a Python ``int`` if it is an integer (not a bool) ``>= minimum``.

  Args:
    value: the number to check.
    name: how the error names the field (e.g. ``"`num_steps`"`` or ``"config.eval.num_repeats"``).
    minimum: the smallest allowed value (1: "a positive int").
    note: text added after the rule in the error (e.g. ``" (0: the process's N)"``).
  Returns:
    ``int(value)``.
  Raises:
    ValueError: ``"{name} must be a positive int{note}, got {value!r}"`` (``"an int >= {minimum}"``
    when ``minimum != 1``).
  """
  if not is_int(value) or value < minimum:
    rule = "a positive int" if minimum == 1 else f"an int >= {minimum}"
    raise ValueError(f"{name} must be {rule}{note}, got {value!r}")
  return int(value)


def check_finite_number(value: Any, name: str, minimum: Optional[float] = None,
                        note: str = "") -> float:
  """``value`` as a Python ``float`` if it is a finite real number (not a bool or a string; a
  NumPy or 0-d JAX scalar is fine), ``>= minimum`` when given.

  Raises:
    ValueError: ``"{name} must be a finite number{ >= minimum}{note}, got {value!r}"``.
  """
  number = None if isinstance(value, (bool, np.bool_, str, bytes)) else concrete_float(value)
  if number is None or not math.isfinite(number) or (minimum is not None and number < minimum):
    rule = "" if minimum is None else f" >= {minimum:g}"
    raise ValueError(f"{name} must be a finite number{rule}{note}, got {value!r}")
  return number


def check_positive_number(value: Any, name: str, note: str = "") -> float:
  """``value`` as a Python ``float`` if it is a finite real number ``> 0`` (not a bool or a
  string; a NumPy or 0-d JAX scalar is fine).

  Raises:
    ValueError: ``"{name} must be a finite number > 0{note}, got {value!r}"``.
  """
  number = None if isinstance(value, (bool, np.bool_, str, bytes)) else concrete_float(value)
  if number is None or not (math.isfinite(number) and number > 0):
    raise ValueError(f"{name} must be a finite number > 0{note}, got {value!r}")
  return number
