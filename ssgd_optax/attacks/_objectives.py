# Copyright 2026 The ssgd_optax Authors. Licensed under the Apache License 2.0.
"""Gradient-matching distances and image priors.

========================  =====================================================
distance                  definition (``a`` = dummy gradient, ``b`` = target)
========================  =====================================================
``l2``                    ``sum_k ||a_k - b_k||^2`` (DLG)
``cosine``, global        ``1 - <a, b> / (||a|| ||b||)`` over all leaves (IG
                          ``sim``): invariant to ``b -> c b``, ``c > 0``
``cosine``, per group     ``mean_k (1 - <a_k, b_k> / (||a_k|| ||b_k||))`` (IG
                          ``simlocal`` with ``scope="per_layer"``): invariant
                          to a positive scale per group
========================  =====================================================

Norms are "safe": a zero gradient contributes a cosine of 0 (distance 1) and
a finite derivative, never NaN. ``None`` leaves are skipped.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from ssgd_optax import _grouping as grouping_lib
__all__ = ['DISTANCES', 'l2_distance', 'cosine_distance', 'gradient_distance',
           'total_variation']

DISTANCES = ('l2', 'cosine')

_TINY = 1e-30


def _pairs(a: Any, b: Any) -> tuple[list[jax.Array], list[jax.Array]]:
  la = jax.tree_util.tree_leaves(a)
  lb = jax.tree_util.tree_leaves(b)
  if jax.tree_util.tree_structure(a) != jax.tree_util.tree_structure(b):
    raise ValueError('gradient trees differ in structure: '
                     f'{jax.tree_util.tree_structure(a)} vs {jax.tree_util.tree_structure(b)}.')
  for x, y in zip(la, lb):
    if jnp.shape(x) != jnp.shape(y):
      raise ValueError(f'gradient leaves differ in shape: {jnp.shape(x)} vs {jnp.shape(y)}.')
  return ([jnp.asarray(x, jnp.float32) for x in la],
          [jnp.asarray(y, jnp.float32) for y in lb])


def l2_distance(a: Any, b: Any) -> jax.Array:
  """Squared Euclidean distance between two gradient trees (DLG).

  ``d(a, b) = sum_leaves ||a_l - b_l||_2^2``

  Args:
    a: a pytree of arrays.
    b: a pytree with the same structure and shapes.

  Returns:
    A float32 scalar.

  Example:

  >>> import jax.numpy as jnp
  >>> float(l2_distance({'w': jnp.array([1., 2.])}, {'w': jnp.array([0., 0.])}))
  5.0
  """
  la, lb = _pairs(a, b)
  return sum((jnp.sum(jnp.square(x - y)) for x, y in zip(la, lb)), jnp.zeros((), jnp.float32))


def _safe_norm(s: jax.Array) -> jax.Array:
  return jnp.sqrt(jnp.maximum(s, _TINY))


def cosine_distance(a: Any, b: Any, scope: grouping_lib.Scope = 'global') -> jax.Array:
  r"""One minus the cosine similarity of two gradient trees (Inverting Gradients).

  .. math::

    d(a, b) = \frac{1}{K}\sum_{k=1}^K \Big(1 - \frac{\langle a_k, b_k\rangle}
      {\lVert a_k\rVert\,\lVert b_k\rVert}\Big)

  over the ``K`` groups of ``scope`` (one group for ``"global"``).

  Args:
    a: the dummy gradient tree.
    b: the target (shared) gradient tree, same structure.
    scope: ``"global"``, ``"per_leaf"``, ``"per_layer"`` or a callable, as in
      :func:`ssgd_optax.unit_normalize`.

  Returns:
    A float32 scalar in ``[0, 2]``.

  Example:

  >>> import jax.numpy as jnp
  >>> a = {'w': jnp.array([1., 0.]), 'b': jnp.array([2.])}
  >>> float(cosine_distance(a, {'w': jnp.array([3., 0.]), 'b': jnp.array([6.])}))
  0.0
  """
  grouping_lib.check_scope(scope)
  la, lb = _pairs(a, b)
  grouping = grouping_lib.resolve_groups(a, scope)
  k = grouping.num_groups
  if k == 0:
    return jnp.zeros((), jnp.float32)
  dot = [jnp.zeros((), jnp.float32)] * k
  na = [jnp.zeros((), jnp.float32)] * k
  nb = [jnp.zeros((), jnp.float32)] * k
  for x, y, g in zip(la, lb, grouping.group_of_leaf):
    dot[g] = dot[g] + jnp.vdot(x, y)
    na[g] = na[g] + jnp.vdot(x, x)
    nb[g] = nb[g] + jnp.vdot(y, y)
  terms = [1 - d / (_safe_norm(p) * _safe_norm(q)) for d, p, q in zip(dot, na, nb)]
  return sum(terms) / k


def gradient_distance(a: Any, b: Any, distance: str = 'cosine',
                      scope: grouping_lib.Scope = 'global') -> jax.Array:
  """Dispatches to :func:`l2_distance` or :func:`cosine_distance` by name.

  Example:

  >>> import jax.numpy as jnp
  >>> float(gradient_distance(jnp.ones(2), 2 * jnp.ones(2), 'l2'))
  2.0
  """
  if distance == 'l2':
    return l2_distance(a, b)
  if distance == 'cosine':
    return cosine_distance(a, b, scope)
  raise ValueError(f'distance must be one of {", ".join(map(repr, DISTANCES))}; '
                   f'got {distance!r}.')


def total_variation(x: jax.Array) -> jax.Array:
  r"""Anisotropic total variation of a batch of images ``[B, H, W, C]``.

  ``TV(x) = mean|x[:, 1:, :] - x[:, :-1, :]| + mean|x[:, :, 1:] - x[:, :, :-1]|``
  (the Inverting Gradients prior).

  Example:

  >>> import jax.numpy as jnp
  >>> float(total_variation(jnp.zeros((1, 4, 4, 1))))
  0.0
  """
  x = jnp.asarray(x)
  if x.ndim != 4:
    raise ValueError(f'total_variation expects images [B, H, W, C]; got shape {x.shape}.')
  dh = jnp.abs(x[:, 1:] - x[:, :-1])
  dw = jnp.abs(x[:, :, 1:] - x[:, :, :-1])
  out = jnp.zeros((), jnp.float32)
  if dh.size:
    out = out + dh.mean()
  if dw.size:
    out = out + dw.mean()
  return out
