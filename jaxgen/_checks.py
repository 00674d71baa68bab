"""The one integer check behind every count the library takes (steps, probes, batch sizes, ...).

Before, about fifteen hand-written copies disagreed: some let ``True`` through as ``1`` (it is an
``int`` to Python), some refused ``numpy`` integers, and some model fields silently truncated
``2.5`` to ``2`` through ``int()``. :func:`check_int` is the single rule: a Python or NumPy
integer, not a ``bool``, at least ``minimum``; the ``ValueError`` names the field and the value.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np


def is_int(value: Any) -> bool:
  """Whether ``value`` is a Python or NumPy integer that is not a ``bool``."""
  return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


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


def check_positive_number(value: Any, name: str, note: str = "") -> float:
  """``value`` as a Python ``float`` if it is a finite real number ``> 0`` (not a bool or a
  string; a NumPy or 0-d JAX scalar is fine).

  Raises:
    ValueError: ``"{name} must be a finite number > 0{note}, got {value!r}"``.
  """
  try:
    number = None if isinstance(value, (bool, np.bool_, str, bytes)) else float(value)
  except (TypeError, ValueError):
    number = None
  if number is None or not (math.isfinite(number) and number > 0):
    raise ValueError(f"{name} must be a finite number > 0{note}, got {value!r}")
  return number
