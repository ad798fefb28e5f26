# Copyright 2026 The ssgd_optax Authors. Licensed under the Apache License 2.0.
"""Gradient sums for the two DP training methods, on the same Flax NNX models.

* :func:`backprop_clip_grad_sum`: one batched ``nnx.grad`` of the masked,
  sum-reduced loss of a model whose layers are clipped
  (:func:`ssgd_optax.privacy.clip_layers`). No per-example gradients; each
  tensor has its own sensitivity (``L`` releases per step).
* :func:`dpsgd_grad_sum`: the per-example-clipping DP-SGD baseline (Abadi et
  al.): vmapped per-example gradients
  (:func:`ssgd_optax.per_example.nnx_per_example_grads`), each clipped to
  global L2 norm ``C``, summed (sensitivity ``C``, one release per step).

Both take the fixed-size padded batch of
:func:`ssgd_optax.privacy.poisson_sample` and its mask; padded rows contribute
exactly zero. Feed the sum to :func:`ssgd_optax.privacy.add_gaussian_noise`.

**Non-finite examples.** By default (``nonfinite="drop"``) an example with a
NaN/Inf in its batch arrays, its loss, its gradient or (backprop clipping) the
input of a clipped layer contributes exactly zero, as if it were a padded row:
otherwise one such example makes the released sum NaN, which reveals that it
was in the batch and voids the (epsilon, delta) claim. ``"propagate"`` keeps
the NaN (debugging only; **the privacy guarantee is then void**).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from ssgd_optax import _batch
from ssgd_optax import _nnx
from ssgd_optax import _numerics
from ssgd_optax import _validation
from ssgd_optax import per_example as per_example_lib
from ssgd_optax.privacy import _clipping as clipping
from ssgd_optax.privacy import _forward_pass as forward_pass
__all__ = ['backprop_clip_grad_sum', 'clip_global_per_example', 'dpsgd_grad_sum']


@_nnx.clear_model_errors('backprop_clip_grad_sum')
def backprop_clip_grad_sum(per_example_loss: Callable[..., jax.Array], model: nnx.Module,
                           *batch: Any, mask: jax.Array | None = None,
                           wrt: Any = nnx.Param,
                           nonfinite: str = 'drop') -> tuple[jax.Array, Any]:
  r"""Loss and gradient of ``sum_i m_i loss_i`` for a backprop-clipped model.

  .. math:: G = \nabla_\theta \sum_i m_i f_i\, \ell(\theta; x_i, y_i)
     = \sum_i m_i f_i\, \tilde g_i

  where ``g~_i`` is example ``i``'s gradient through the clipped layers
  (each tensor's ``||g~_{i,l}|| <= Delta_l``) and ``f_i = 0`` drops an example
  with a NaN/Inf batch entry, loss, or clipped-layer input (``f_i = 1``
  otherwise). The loss must be summed, not averaged: the clip bounds refer to
  one example's cotangent.

  The forward pass is traced in a scope that counts the calls of every
  :class:`~ssgd_optax.privacy.ClippedLayer` (a ``ValueError`` past its
  ``uses``, or for a call inside a nested ``scan``/``vmap``/``remat``), and
  checks that each clipped layer sees the ``B`` examples on its leading axis.

  The model is split and merged inside (``ssgd_optax._nnx``), so this works
  eagerly, under ``nnx.jit``/``nnx.value_and_grad`` with the model as an
  argument, and under plain ``jax.jit``/``jax.grad`` with the model captured
  from the enclosing scope. A forward pass that changes the model's state
  (``nnx.Dropout``'s RNG count) is written back to the model, except when it
  is captured from outside a ``jax`` transform: that raises a ``ValueError``
  naming the ``nnx.jit`` and split/merge forms.

  Args:
    per_example_loss: ``per_example_loss(model, *batch) -> [B]`` losses.
    model: an ``nnx.Module`` with clipped layers.
    *batch: arrays with leading axis ``B``.
    mask: ``[B]`` 0/1 (or bool) mask of real rows; ``None`` = all real.
    wrt: ``nnx`` filter of the trained variables.
    nonfinite: ``"drop"`` (default: a non-finite example contributes zero, so
      the sum stays finite and within the sensitivity) or ``"propagate"``
      (its NaN reaches the sum; **voids the privacy guarantee**, debugging
      only).

  Returns:
    ``(masked loss sum, gradient State)``; the loss sum leaves dropped
    examples out too.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> from flax import nnx
    >>> from ssgd_optax.privacy import ClippedLinear, backprop_clip_grad_sum
    >>> model = ClippedLinear(3, 2, input_bound=1.0, grad_bound=0.1, rngs=nnx.Rngs(0))
    >>> loss = lambda m, x, y: optax.softmax_cross_entropy_with_integer_labels(m(x), y)
    >>> x, y = jnp.ones((4, 3)), jnp.zeros(4, int)
    >>> _, g = backprop_clip_grad_sum(loss, model, x, y)
    >>> bool(jnp.linalg.norm(g['layer']['kernel'][...]) <= 4 * 1.0 * 0.1 + 1e-6)
    True

    Under ``jax.jit`` with the model captured from the enclosing scope (or
    under ``nnx.jit`` with the model as an argument) the result is the same:

    >>> import jax
    >>> _, g1 = jax.jit(lambda x, y: backprop_clip_grad_sum(loss, model, x, y))(x, y)
    >>> bool(jnp.allclose(g1['layer']['kernel'][...], g['layer']['kernel'][...]))
    True
  """
  if not callable(per_example_loss):
    raise TypeError(f'per_example_loss must be callable; got {type(per_example_loss).__name__}.')
  _validation.check_choice('nonfinite', nonfinite, clipping.NONFINITE)

  def total(m):
    with forward_pass.scope(m, nonfinite) as scope:
      losses = _batch.per_example_losses(per_example_loss(m, *batch), batch)
    if nonfinite == 'propagate':
      return _batch.masked_sum(losses, mask)
    ok = jnp.isfinite(losses) & _batch.finite_rows(batch, losses.shape[0])
    for layer, bad in scope.flags:
      if bad.shape != losses.shape:
        raise ValueError(
            f'ClippedLayer at {scope.where(layer)!r} got an input with leading axis '
            f'{bad.shape[0]}, but the batch has {losses.shape[0]} examples. The clip '
            'bounds are per row of the leading axis, so each example must be one row '
            '(do not fold other axes into the batch axis).')
      ok = ok & ~bad
    return _batch.masked_sum(
        losses, ok if mask is None else ok & _batch.check_mask(mask, losses.shape[0]))

  return _nnx.value_and_grad(total, model, wrt, fn_name='backprop_clip_grad_sum')


def clip_global_per_example(grads: Any, clip_norm: Any,
                            nonfinite: str = 'drop') -> tuple[Any, jax.Array]:
  r"""Clips each example's whole gradient (all leaves) to global L2 norm ``C``.

  .. math:: \tilde g_i = g_i \min\big(1, C / \|g_i\|_2\big), \quad
     \|g_i\|_2^2 = \textstyle\sum_l \|g_{i,l}\|_2^2

  Same edge cases as :func:`ssgd_optax.privacy.clip_per_example` (zeros stay
  zeros, no overflow; an example with a NaN/Inf entry in any leaf becomes
  zeros in every leaf, or NaN with ``nonfinite="propagate"``).

  Args:
    grads: a tree of per-example gradients (leading axis ``B`` on every leaf).
    clip_norm: ``C >= 0``.
    nonfinite: ``"drop"`` (default) or ``"propagate"`` (voids the guarantee).

  Returns:
    ``(clipped grads, [B] norms before clipping)``.

  Example:
    >>> import jax.numpy as jnp
    >>> from ssgd_optax.privacy import clip_global_per_example
    >>> g = {'a': jnp.array([[3.0], [0.0]]), 'b': jnp.array([[4.0], [0.5]])}
    >>> clipped, norms = clip_global_per_example(g, 1.0)
    >>> clipped['a'][:, 0], norms
    (Array([0.6, 0. ], dtype=float32), Array([5. , 0.5], dtype=float32))
  """
  _validation.check_nonnegative('clip_norm', clip_norm)
  _validation.check_choice('nonfinite', nonfinite, clipping.NONFINITE)
  leaves = jax.tree.leaves(grads)
  if not leaves:
    return grads, jnp.zeros((0,), jnp.float32)
  norm = _global_norm(leaves)
  c = jnp.asarray(clip_norm, norm.dtype)

  def scale_of(n, bad):
    s = jnp.where(n > c, c / jnp.where(n > 0, n, 1), 1.0)
    return jnp.where(jnp.isfinite(n), s, bad)

  def rows(v, x):
    return v.reshape((-1,) + (1,) * (x.ndim - 1))

  ok = functools.reduce(jnp.logical_and, [_batch.finite_examples(x) for x in leaves])
  if nonfinite == 'propagate':
    scale = scale_of(norm, jnp.where(ok, 0.0, jnp.nan))
    return jax.tree.map(lambda x: x * rows(scale, x).astype(x.dtype), grads), norm
  # Two wheres, so that a dropped example's gradient through this is 0, not NaN.
  safe = jax.tree.map(lambda x: jnp.where(rows(ok, x), x, 0), grads)
  scale = scale_of(_global_norm(jax.tree.leaves(safe)), 0.0)
  clipped = jax.tree.map(lambda x: jnp.where(rows(ok, x), x * rows(scale, x).astype(x.dtype), 0),
                         safe)
  return clipped, norm


def _global_norm(leaves: Sequence[jax.Array]) -> jax.Array:
  # The package's overflow- and underflow-safe norm (one pass per leaf, no
  # max|g| pass): NaN for a row with a NaN or Inf, inf beyond float range.
  rows = [x.reshape(x.shape[0], -1) for x in leaves]
  dtype = jnp.result_type(*[_numerics.accumulation_dtype(x.dtype) for x in rows])
  [pre], [root] = _numerics.group_scales(rows, [dtype] * len(rows),
                                         groups=[list(range(len(rows)))], per_example=True)
  return root / pre


@_nnx.clear_model_errors('dpsgd_grad_sum')
def dpsgd_grad_sum(per_example_loss: Callable[..., jax.Array], model: nnx.Module,
                   *batch: Any, clip_norm: Any, mask: jax.Array | None = None,
                   microbatch_size: int | None = None,
                   wrt: Any = nnx.Param, nonfinite: str = 'drop') -> tuple[jax.Array, Any]:
  r"""DP-SGD's sum of per-example gradients, each clipped to global norm ``C``.

  .. math:: G = \sum_i m_i\, g_i \min\big(1, C / \|g_i\|_2\big)

  Per-example gradients come from a ``vmap`` over the batch
  (:func:`ssgd_optax.per_example.nnx_per_example_grads`); the L2
  sensitivity of ``G`` is ``C``. Works on the unclipped model (the same
  architecture as backprop clipping without the wrappers), eagerly, under
  ``nnx.jit``, or under ``jax.jit``/``jax.grad`` with the model captured from
  the enclosing scope (it is split and merged inside); deterministic models
  only (a forward pass that changes the model's state raises a
  ``ValueError``).

  Args:
    per_example_loss: ``per_example_loss(model, *batch) -> [B]`` losses.
    model: an ``nnx.Module`` (no BatchNorm).
    *batch: arrays with leading axis ``B``.
    clip_norm: ``C >= 0``.
    mask: ``[B]`` mask of real rows, ``None`` = all.
    microbatch_size: examples vmapped at once (memory), ``None`` = all.
    wrt: ``nnx`` filter of the trained variables.
    nonfinite: ``"drop"`` (default: an example with a NaN/Inf batch entry,
      loss or gradient contributes zero) or ``"propagate"`` (its NaN reaches
      the sum; **voids the privacy guarantee**, debugging only).

  Returns:
    ``(masked loss sum, clipped gradient sum State)``; dropped examples are
    left out of both.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> from flax import nnx
    >>> from ssgd_optax.privacy import dpsgd_grad_sum
    >>> model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
    >>> loss = lambda m, x, y: optax.softmax_cross_entropy_with_integer_labels(m(x), y)
    >>> _, g = dpsgd_grad_sum(loss, model, jnp.ones((4, 3)), jnp.zeros(4, int),
    ...                       clip_norm=0.1)
    >>> g['kernel'][...].shape
    (3, 2)
  """
  if not callable(per_example_loss):
    raise TypeError(f'per_example_loss must be callable; got {type(per_example_loss).__name__}.')
  _validation.check_nonnegative('clip_norm', clip_norm)
  _validation.check_choice('nonfinite', nonfinite, clipping.NONFINITE)

  def single(m, *example):
    loss = per_example_loss(m, *example)
    return jnp.sum(loss), loss

  grads, losses = per_example_lib.nnx_per_example_grads(
      single, model, *batch, mask=mask, microbatch_size=microbatch_size, wrt=wrt, has_aux=True)
  clipped, _ = clip_global_per_example(grads, clip_norm, nonfinite)
  losses = losses.reshape(losses.shape[0], -1).sum(-1)
  keep = None if mask is None else _batch.check_mask(mask, losses.shape[0])
  if nonfinite == 'drop':
    ok = jnp.isfinite(losses) & _batch.finite_rows(batch, losses.shape[0])
    keep = ok if keep is None else keep & ok
  if keep is not None:
    # Padded rows are zero already; where keeps a NaN example from leaking in.
    clipped = jax.tree.map(
        lambda x: jnp.where(keep.reshape((-1,) + (1,) * (x.ndim - 1)), x, 0), clipped)
  summed = jax.tree.map(lambda x: jnp.sum(x, axis=0), clipped)
  return _batch.masked_sum(losses, keep), summed
