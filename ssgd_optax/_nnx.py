# Copyright 2026 The ssgd_optax Authors. Licensed under the Apache License 2.0.
"""Flax NNX models inside JAX transforms: the rules every model-taking DP path shares.

The DP paths that take an ``nnx.Module`` (``backprop_clip_grad_sum``,
``dpsgd_grad_sum``, ``ghost_norms``/``ghost_grad_sum``,
``nnx_per_example_grads``) run the model as a pure function of its
parameters: ``nnx.split`` outside the differentiated function, ``nnx.merge``
inside it. That is what lets them be called

* eagerly, or under ``nnx.jit``/``nnx.grad`` with the model as an argument;
* under plain ``jax.jit``/``jax.grad``/``jax.vmap`` with the model *captured*
  from the enclosing Python scope (a constant of the trace). ``nnx.grad`` of
  a captured model raises flax's "Cannot extract graph node from different
  trace level"; the split form does not.

What a pure function cannot do is change the model: a forward pass that
updates its own state (the RNG counts of ``nnx.Dropout``, BatchNorm
statistics) raises ``flax.errors.TraceContextError`` deep inside flax. The
helpers here turn that into a ``ValueError`` that names the function and the
form to use instead (:func:`clear_model_errors`), and
:func:`value_and_grad` writes a changed state back when the model belongs to
the caller's trace (eager, ``nnx.jit``), as ``nnx.value_and_grad`` did.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
from flax import errors as flax_errors
from flax import nnx

__all__ = ['clear_model_errors', 'value_and_grad']

_PURE_FORMS = (
    'Either pass the model as an argument of nnx.jit / nnx.grad, e.g. '
    'nnx.jit(lambda m, x, y: {fn}(loss, m, x, y))(model, x, y), or split it outside the '
    'transform and merge it inside: graphdef, state = nnx.split(model); '
    'jax.jit(lambda s, x, y: {fn}(loss, nnx.merge(graphdef, s), x, y))(state, x, y).')


def _stateful_message(fn: str, error: Exception) -> str:
  return (f'{fn}: the model changed its own state during the forward pass ({error}). '
          f'{fn} runs the model as a pure function of its parameters (nnx.split / nnx.merge), '
          'so it works under jax.jit and jax.grad, but a state change (the RNG count of '
          'nnx.Dropout, BatchNorm statistics) cannot be made there. Per-example DP needs a '
          'deterministic model anyway: call model.eval() (or build nnx.Dropout with '
          'deterministic=True) before computing DP gradients.')


def clear_model_errors(fn_name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
  """Decorator: flax's trace-level errors from the model become a named ``ValueError``.

  Args:
    fn_name: the public function's name, used in the message.

  Returns:
    A decorator that keeps the function's signature and docstring.
  """

  def decorate(fn):
    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
      try:
        return fn(*args, **kwargs)
      except flax_errors.TraceContextError as e:
        raise ValueError(_stateful_message(fn_name, e)) from e
    return wrapped

  return decorate


def value_and_grad(fn: Callable[[nnx.Module], Any], model: nnx.Module, wrt: Any, *,
                   fn_name: str) -> tuple[Any, Any]:
  """``nnx.value_and_grad(fn, argnums=nnx.DiffState(0, wrt))(model)``, by split and merge.

  The gradient is taken with ``jax.value_and_grad`` over the ``wrt`` state,
  the model rebuilt inside (``nnx.merge(..., copy=True)``: new Variables
  owned by the current trace). Works with a model captured from an enclosing
  ``jax.jit``/``jax.grad``. If the forward pass changed any other variable
  (found by identity while tracing), the change is written back to
  ``model`` with ``nnx.update``; when ``model`` belongs to an outer trace
  that is impossible and raises a ``ValueError`` naming the working forms.

  Args:
    fn: ``fn(model) -> scalar``.
    model: the ``nnx.Module``.
    wrt: the ``nnx`` filter of the differentiated variables.
    fn_name: the public function's name, for error messages.

  Returns:
    ``(value, gradient State)``, like ``nnx.value_and_grad``.
  """
  graphdef, params, rest = nnx.split(model, wrt, ...)
  changed = []

  def pure(p):
    m = nnx.merge(graphdef, p, rest, copy=True)
    value = fn(m)
    _, _, after = nnx.split(m, wrt, ...)
    # Static while tracing: a variable the forward pass did not touch keeps its array.
    changed.append(any(a is not b for a, b in zip(jax.tree.leaves(rest),
                                                  jax.tree.leaves(after))))
    return value, after

  (value, after), grads = jax.value_and_grad(pure, has_aux=True)(params)
  if changed and changed[-1]:
    try:
      nnx.update(model, after)
    except flax_errors.TraceContextError as e:
      raise ValueError(
          f'{fn_name}: the model changed its own state during the forward pass (RNG counts '
          'of nnx.Dropout, BatchNorm statistics) and was captured from outside the enclosing '
          'jax.jit / jax.grad, so the change cannot be written back to it. '
          + _PURE_FORMS.format(fn=fn_name)) from e
  return value, grads
