# Copyright 2026 The ssgd_optax Authors. Licensed under the Apache License 2.0.
"""One traced forward pass of a model with clipped layers, and parameter paths.

Backprop clipping's bound holds for a layer applied at most ``uses`` times
per example, outside nested JAX transformations, on one example per row.
:func:`scope` opens the forward pass that
:func:`~ssgd_optax.privacy.backprop_clip_grad_sum` and the ghost-norm capture
trace; every :class:`~ssgd_optax.privacy.ClippedLayer` records itself in
:func:`current` (counting its calls, refusing calls inside a nested
transformation, flagging rows with a non-finite input). :func:`path_keys`
turns a ``jax.tree_util`` key path into the keys ``nnx`` uses, so that
parameters, sensitivities and per-layer norms are matched by one rule.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Sequence
from typing import Any

import jax
import jax.extend
from flax import nnx

from ssgd_optax import _batch

__all__ = ['ForwardPass', 'current', 'path_keys', 'scope', 'where_in']


# The forward pass being traced by backprop_clip_grad_sum, if any.
_CURRENT: contextvars.ContextVar[ForwardPass | None] = contextvars.ContextVar(
    'ssgd_optax_backprop_clip_pass', default=None)


def _trace_state() -> Any:
  return jax.extend.core.get_opaque_trace_state(convention='nnx')


def where_in(model: Any, node: Any) -> str:
  """The path of ``node`` in ``model`` (``"conv1"``, ``"layers/0"``), for error messages."""
  for path, n in nnx.iter_graph(model):
    if n is node:
      return '/'.join(map(str, path)) or 'model'
  return type(node).__name__


class ForwardPass:
  """Counts ClippedLayer calls and collects non-finite flags in one forward pass."""

  def __init__(self, model: Any, nonfinite: str):
    self.model = model
    self.nonfinite = nonfinite
    self.trace = _trace_state()
    self.calls: dict[int, int] = {}
    # Holding the layers keeps their ids unique for the life of the pass.
    self.flags: list[tuple[Any, jax.Array]] = []

  def record(self, layer: Any, x: jax.Array) -> None:
    if _trace_state() != self.trace:
      raise ValueError(
          f'ClippedLayer at {where_in(self.model, layer)!r} is called inside a JAX '
          'transformation nested in the forward pass (lax.scan/fori_loop/while_loop/cond, '
          'vmap, remat, nnx.scan...). One Python call there can run any number of '
          'times, so its uses (and the sensitivity) cannot be counted. Unroll the loop '
          'in Python, or apply the layer outside the transformation.')
    count = self.calls.get(id(layer), 0) + 1
    if count > layer.uses:
      raise ValueError(
          f'ClippedLayer at {where_in(self.model, layer)!r} is applied {count} times in one '
          f'forward pass but declares uses={layer.uses}. Each application adds up to '
          'C_in * C_out to one example\'s kernel gradient, so the sensitivity is '
          f'{count} * C_in * C_out, not what sensitivities() reports. Declare '
          f'ClippedLayer(..., uses={count}) (its bounds are then multiplied by {count}) or '
          'use a separate layer for each application.')
    self.calls[id(layer)] = count
    self.flags.append((layer, ~_batch.finite_examples(x)))

  def where(self, layer: Any) -> str:
    return where_in(self.model, layer)


@contextlib.contextmanager
def scope(model: Any, nonfinite: str) -> Iterator[ForwardPass]:
  """Scope of one traced forward pass (used by ``backprop_clip_grad_sum``)."""
  if _CURRENT.get() is not None:
    raise ValueError('backprop_clip_grad_sum cannot be nested inside another one\'s '
                     'forward pass.')
  scope = ForwardPass(model, nonfinite)
  token = _CURRENT.set(scope)
  try:
    yield scope
  finally:
    _CURRENT.reset(token)


def current() -> ForwardPass | None:
  """The forward pass being traced, if any."""
  return _CURRENT.get()


def path_keys(path: Sequence[Any]) -> tuple[Any, ...]:
  """A ``jax.tree_util`` key path as plain keys (``("conv1", "kernel")``), as ``nnx.iter_graph`` has them."""
  out = []
  for k in path:
    if isinstance(k, jax.tree_util.DictKey):
      out.append(k.key)
    elif isinstance(k, jax.tree_util.SequenceKey):
      out.append(k.idx)
    elif isinstance(k, jax.tree_util.GetAttrKey):
      if k.name != 'value':
        out.append(k.name)
    else:
      out.append(str(k))
  return tuple(out)
