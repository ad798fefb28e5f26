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
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from ssgd_optax import _validation
from ssgd_optax import per_example as per_example_lib
from ssgd_optax.privacy import clipping

__all__ = ['backprop_clip_grad_sum', 'clip_global_per_example', 'dpsgd_grad_sum']


def _masked_sum(values: jax.Array, mask: jax.Array | None) -> jax.Array:
  if mask is None:
    return jnp.sum(values)
  if jnp.shape(mask) != jnp.shape(values):
    raise ValueError(f'mask must have shape {jnp.shape(values)} (one entry per example); '
                     f'got {jnp.shape(mask)}.')
  # where, not multiply: a padded row's NaN/Inf loss cannot leak into the sum.
  return jnp.sum(jnp.where(mask.astype(bool), values, 0))


def backprop_clip_grad_sum(per_example_loss: Callable[..., jax.Array], model: nnx.Module,
                           *batch: Any, mask: jax.Array | None = None,
                           wrt: Any = nnx.Param) -> tuple[jax.Array, Any]:
  r"""Loss and gradient of ``sum_i m_i loss_i`` for a backprop-clipped model.

  .. math:: G = \nabla_\theta \sum_i m_i\, \ell(\theta; x_i, y_i)
     = \sum_i m_i\, \tilde g_i

  where ``g~_i`` is example ``i``'s gradient through the clipped layers
  (each tensor's ``||g~_{i,l}|| <= Delta_l``). The loss must be summed, not
  averaged: the clip bounds refer to one example's cotangent.

  Args:
    per_example_loss: ``per_example_loss(model, *batch) -> [B]`` losses.
    model: an ``nnx.Module`` with clipped layers.
    *batch: arrays with leading axis ``B``.
    mask: ``[B]`` 0/1 (or bool) mask of real rows; ``None`` = all real.
    wrt: ``nnx`` filter of the trained variables.

  Returns:
    ``(masked loss sum, gradient State)``.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> from flax import nnx
    >>> from ssgd_optax.privacy import ClippedLinear, backprop_clip_grad_sum
    >>> model = ClippedLinear(3, 2, input_bound=1.0, grad_bound=0.1, rngs=nnx.Rngs(0))
    >>> loss = lambda m, x, y: optax.softmax_cross_entropy_with_integer_labels(m(x), y)
    >>> _, g = backprop_clip_grad_sum(loss, model, jnp.ones((4, 3)), jnp.zeros(4, int))
    >>> bool(jnp.linalg.norm(g['layer']['kernel'][...]) <= 4 * 1.0 * 0.1 + 1e-6)
    True
  """
  if not callable(per_example_loss):
    raise TypeError(f'per_example_loss must be callable; got {type(per_example_loss).__name__}.')

  def total(m):
    return _masked_sum(per_example_loss(m, *batch), mask)

  return nnx.value_and_grad(total, argnums=nnx.DiffState(0, wrt))(model)


def clip_global_per_example(grads: Any, clip_norm: Any) -> tuple[Any, jax.Array]:
  r"""Clips each example's whole gradient (all leaves) to global L2 norm ``C``.

  .. math:: \tilde g_i = g_i \min\big(1, C / \|g_i\|_2\big), \quad
     \|g_i\|_2^2 = \textstyle\sum_l \|g_{i,l}\|_2^2

  Same edge cases as :func:`ssgd_optax.privacy.clip_per_example` (zeros stay
  zeros, a non-finite example becomes NaN, no overflow).

  Args:
    grads: a tree of per-example gradients (leading axis ``B`` on every leaf).
    clip_norm: ``C >= 0``.

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
  leaves = jax.tree.leaves(grads)
  if not leaves:
    return grads, jnp.zeros((0,), jnp.float32)
  norms = [clipping.per_example_norm(x.reshape(x.shape[0], -1)) for x in leaves]
  # Combine the leaf norms through their max, so the sum of squares cannot overflow.
  stacked = jnp.stack(norms)
  top = jnp.max(stacked, axis=0)
  safe = jnp.where((top > 0) & jnp.isfinite(top), top, 1)
  norm = jnp.sqrt(jnp.sum((stacked / safe) ** 2, axis=0)) * safe
  c = jnp.asarray(clip_norm, norm.dtype)
  scale = jnp.where(norm > c, c / jnp.where(norm > 0, norm, 1), 1.0)
  scale = jnp.where(jnp.isfinite(norm), scale, jnp.nan)
  clipped = jax.tree.map(
      lambda x: x * scale.astype(x.dtype).reshape((-1,) + (1,) * (x.ndim - 1)), grads)
  return clipped, norm


def dpsgd_grad_sum(per_example_loss: Callable[..., jax.Array], model: nnx.Module,
                   *batch: Any, clip_norm: Any, mask: jax.Array | None = None,
                   microbatch_size: int | None = None,
                   wrt: Any = nnx.Param) -> tuple[jax.Array, Any]:
  r"""DP-SGD's sum of per-example gradients, each clipped to global norm ``C``.

  .. math:: G = \sum_i m_i\, g_i \min\big(1, C / \|g_i\|_2\big)

  Per-example gradients come from a ``vmap`` over the batch
  (:func:`ssgd_optax.per_example.nnx_per_example_grads`); the L2
  sensitivity of ``G`` is ``C``. Works on the unclipped model (the same
  architecture as backprop clipping without the wrappers).

  Args:
    per_example_loss: ``per_example_loss(model, *batch) -> [B]`` losses.
    model: an ``nnx.Module`` (no BatchNorm).
    *batch: arrays with leading axis ``B``.
    clip_norm: ``C >= 0``.
    mask: ``[B]`` mask of real rows, ``None`` = all.
    microbatch_size: examples vmapped at once (memory), ``None`` = all.
    wrt: ``nnx`` filter of the trained variables.

  Returns:
    ``(masked loss sum, clipped gradient sum State)``.

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

  def single(m, *example):
    loss = per_example_loss(m, *example)
    return jnp.sum(loss), loss

  grads, losses = per_example_lib.nnx_per_example_grads(
      single, model, *batch, mask=mask, microbatch_size=microbatch_size, wrt=wrt, has_aux=True)
  clipped, _ = clip_global_per_example(grads, clip_norm)
  if mask is not None:
    # Padded rows are zero already; where keeps a NaN example from leaking in.
    m = mask.astype(bool)
    clipped = jax.tree.map(
        lambda x: jnp.where(m.reshape((-1,) + (1,) * (x.ndim - 1)), x, 0), clipped)
  summed = jax.tree.map(lambda x: jnp.sum(x, axis=0), clipped)
  return _masked_sum(losses.reshape(losses.shape[0], -1).sum(-1), mask), summed
