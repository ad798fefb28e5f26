# Copyright 2026 The ssgd_optax Authors. Licensed under the Apache License 2.0.
"""Argument checks shared by every public factory.

Hyper-parameters may arrive as tracers (``optax.inject_hyperparams`` re-calls a
factory inside ``update`` with traced values), so numeric checks run only when
the value is concrete; a traced value is accepted as it is.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterable
from typing import Any

import jax
import numpy as np

__all__ = [
  'concrete_float',
  'check_choice',
  'check_nonnegative',
  'check_positive',
  'check_probability',
  'check_int',
  'check_axis_name',
  'check_learning_rate',
]


def concrete_float(value: Any) -> float | None:
  """``float(value)`` when ``value`` is a concrete real scalar, else ``None``."""
  if isinstance(value, bool):
    return None
  if isinstance(value, numbers.Real):
    return float(value)
  if isinstance(value, jax.core.Tracer):
    return None
  if isinstance(value, (np.ndarray, np.generic, jax.Array)):
    if np.ndim(value) != 0:
      return None
    try:
      return float(np.asarray(value))
    except (TypeError, jax.errors.ConcretizationTypeError):
      return None
  return None


def _is_number_like(value: Any) -> bool:
  if isinstance(value, bool):
    return False
  if isinstance(value, (numbers.Real, jax.core.Tracer)):
    return True
  if isinstance(value, (np.ndarray, np.generic, jax.Array)):
    return np.issubdtype(np.asarray(value).dtype if not isinstance(
        value, jax.core.Tracer) else value.dtype, np.number)
  return False


def check_choice(name: str, value: Any, choices: Iterable[Any]) -> None:
  """Raises ``ValueError`` unless ``value`` is one of ``choices``."""
  choices = tuple(choices)
  if not isinstance(value, str) or value not in choices:
    raise ValueError(
        f'{name} must be one of {", ".join(repr(c) for c in choices)}; '
        f'got {value!r}.')


def _check_number(name: str, value: Any) -> float | None:
  if not _is_number_like(value):
    raise TypeError(
        f'{name} must be a real number (a Python float or a scalar array); '
        f'got {type(value).__name__} {value!r}.')
  return concrete_float(value)


def check_nonnegative(name: str, value: Any, *, allow_inf: bool = False) -> None:
  """Raises unless ``value`` is a real number >= 0 (checked if concrete)."""
  v = _check_number(name, value)
  if v is None:
    return
  if math.isnan(v) or v < 0 or (math.isinf(v) and not allow_inf):
    upper = 'inf]' if allow_inf else 'inf)'
    raise ValueError(f'{name} must be a finite number in [0, {upper}; got {v!r}.'
                     if not allow_inf else
                     f'{name} must be a number in [0, {upper}; got {v!r}.')


def check_positive(name: str, value: Any, *, allow_inf: bool = False) -> None:
  """Raises unless ``value`` is a real number > 0 (checked if concrete)."""
  v = _check_number(name, value)
  if v is None:
    return
  if math.isnan(v) or v <= 0 or (math.isinf(v) and not allow_inf):
    raise ValueError(f'{name} must be a {"" if allow_inf else "finite "}number '
                     f'> 0; got {v!r}.')


def check_probability(name: str, value: Any, *, open_left: bool = False) -> None:
  """Raises unless ``value`` lies in [0, 1] (or (0, 1] with ``open_left``)."""
  v = _check_number(name, value)
  if v is None:
    return
  low_ok = v > 0 if open_left else v >= 0
  if math.isnan(v) or not low_ok or v > 1:
    interval = '(0, 1]' if open_left else '[0, 1]'
    raise ValueError(f'{name} must be in {interval}; got {v!r}.')


def check_int(name: str, value: Any, *, minimum: int | None = None) -> None:
  """Raises unless ``value`` is a Python/NumPy integer >= ``minimum``."""
  if isinstance(value, bool) or not isinstance(value, numbers.Integral):
    raise TypeError(f'{name} must be an int; got {type(value).__name__} {value!r}.')
  if minimum is not None and value < minimum:
    raise ValueError(f'{name} must be an int >= {minimum}; got {value!r}.')


def check_axis_name(name: str, value: Any) -> None:
  """Axis names are hashables or tuples of them (``None`` allowed)."""
  if value is None:
    return
  items = value if isinstance(value, tuple) else (value,)
  if not items:
    raise ValueError(f'{name} must be an axis name, a tuple of axis names or None; got ().')
  for item in items:
    try:
      hash(item)
    except TypeError:
      raise TypeError(
          f'{name} must be a hashable axis name (usually a str), a tuple of them, '
          f'or None; got {value!r}.') from None


def check_learning_rate(value: Any, name: str = 'learning_rate') -> None:
  """A learning rate is a real number (possibly traced) or a schedule callable."""
  if isinstance(value, Callable) and not isinstance(value, (jax.Array, np.ndarray)):
    return
  v = _check_number(name, value)
  if v is not None and not math.isfinite(v):
    raise ValueError(f'{name} must be finite; got {v!r}.')
