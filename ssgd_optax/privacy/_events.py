# Copyright 2026 The ssgd_optax Authors. Licensed under the Apache License 2.0.
"""``dp_accounting`` events as plain JSON values, and back.

What a privacy ledger and a tracker's ``state_dict`` record of a mechanism is
the ``dp_accounting`` event of one step, so that the total over any number of
runs is composed by ``dp_accounting`` from the events themselves, never from
epsilons. ``dp_accounting``'s own ``to_named_tuple``/``from_named_tuple`` would
import any module a file names; here only the event classes of
``dp_accounting.dp_event`` are accepted, by class name, with exactly their
fields.

Example:

>>> import dp_accounting
>>> e = dp_accounting.PoissonSampledDpEvent(0.01, dp_accounting.GaussianDpEvent(1.1))
>>> event_from_json(event_to_json(e)) == e
True
"""

from __future__ import annotations

import math
from typing import Any

import attr
import dp_accounting
from dp_accounting import dp_event as dp_event_lib

__all__ = ['event_from_json', 'event_to_json']


def _event_class(name: Any) -> type:
  cls = getattr(dp_event_lib, name, None) if isinstance(name, str) else None
  if not (isinstance(cls, type) and issubclass(cls, dp_accounting.DpEvent) and attr.has(cls)
          and cls is not dp_accounting.DpEvent):
    raise ValueError(f'unknown dp_accounting event type {name!r}.')
  return cls


def _value_to_json(value: Any) -> Any:
  if isinstance(value, dp_accounting.DpEvent):
    return event_to_json(value)
  if isinstance(value, (list, tuple)):
    return [_value_to_json(v) for v in value]
  if value is None or isinstance(value, (bool, str)):
    return value
  if isinstance(value, int):
    return int(value)
  if isinstance(value, float) or hasattr(value, '__float__'):
    v = float(value)
    if math.isnan(v):
      raise ValueError('a dp_accounting event holds NaN; it cannot be accounted.')
    return v
  raise ValueError(f'cannot record a dp_accounting event field of type {type(value).__name__}.')


def event_to_json(event: dp_accounting.DpEvent) -> dict[str, Any]:
  """``event`` as a dict of JSON values: ``{'type': class name, field: value, ...}``.

  Args:
    event: an event of ``dp_accounting.dp_event`` (nested events included).

  Returns:
    A dict that :func:`event_from_json` turns back into an equal event.

  Raises:
    TypeError: ``event`` is not a ``dp_accounting.DpEvent``.
    ValueError: an event class outside ``dp_accounting.dp_event``, or a field
      that is not a number, string, event or list of them.
  """
  if not isinstance(event, dp_accounting.DpEvent):
    raise TypeError(f'event must be a dp_accounting.DpEvent; got {type(event).__name__}.')
  cls = type(event)
  if _event_class(cls.__name__) is not cls:
    raise ValueError(f'{cls.__name__} is not an event class of dp_accounting.dp_event.')
  out: dict[str, Any] = {'type': cls.__name__}
  for field in attr.fields(cls):
    out[field.name] = _value_to_json(getattr(event, field.name))
  return out


def _value_from_json(value: Any) -> Any:
  if isinstance(value, dict):
    return event_from_json(value)
  if isinstance(value, list):
    return [_value_from_json(v) for v in value]
  if value is None or isinstance(value, (bool, int, float, str)):
    return value
  raise ValueError(f'unexpected value {value!r} in a recorded event.')


def event_from_json(data: Any) -> dp_accounting.DpEvent:
  """The event that :func:`event_to_json` recorded as ``data``.

  Raises:
    ValueError: ``data`` is not a recorded event (unknown type, missing or
      extra fields, values of the wrong kind).
  """
  if not isinstance(data, dict) or 'type' not in data:
    raise ValueError(f'a recorded event must be a dict with a "type"; got {data!r:.80}.')
  cls = _event_class(data['type'])
  names = {f.name for f in attr.fields(cls)}
  given = set(data) - {'type'}
  if given != names:
    raise ValueError(f'recorded {cls.__name__} has fields {sorted(given)}; dp_accounting '
                     f'expects {sorted(names)}.')
  try:
    return cls(**{k: _value_from_json(data[k]) for k in names})
  except (TypeError, ValueError) as e:
    raise ValueError(f'recorded {cls.__name__} is invalid: {e}') from None
