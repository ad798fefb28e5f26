# Copyright 2026 The ssgd_optax Authors. Licensed under the Apache License 2.0.
"""How the leaves of an update tree form normalisation groups.

A *scope* assigns every array leaf to a group; each group is treated as one
vector by :func:`ssgd_optax.unit_normalize` and :func:`ssgd_optax.group_norms`.

=================  ==========================================================
scope              groups
=================  ==========================================================
``"global"``       all leaves together: one vector, one norm
``"per_leaf"``     every array leaf alone (a kernel, a bias, ...)
``"per_layer"``    leaves with the same parent path, e.g. a Flax layer's
                   ``kernel`` and ``bias``; the ``.value`` attribute that
                   ``flax.nnx`` variables add to a path is ignored
callable           ``scope(path, leaf) -> hashable``: leaves whose keys are
                   equal share a group (``path`` as in
                   ``jax.tree_util.tree_flatten_with_path``)
=================  ==========================================================

``None`` leaves and ``optax.MaskedNode`` are empty subtrees, so they belong to
no group and pass through unchanged.

Grouping depends only on the tree structure, so it is resolved once at trace
time and costs nothing at run time.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import Any, NamedTuple, Union

import jax

__all__ = ['SCOPES', 'Scope', 'Grouping', 'resolve_groups', 'check_scope', 'layer_path']

SCOPES = ('global', 'per_leaf', 'per_layer')

Scope = Union[str, Callable[[tuple[Any, ...], Any], Hashable]]


class Grouping(NamedTuple):
  """A resolved grouping of a tree's leaves.

  Attributes:
    paths: the key path of every array leaf, in flattening order.
    leaves: the array leaves, in flattening order.
    treedef: the tree structure, to rebuild a tree from ``leaves``.
    group_of_leaf: for each leaf, the index of its group in ``keys``.
    keys: the group keys, in order of first appearance.
  """

  paths: tuple[tuple[Any, ...], ...]
  leaves: tuple[Any, ...]
  treedef: Any
  group_of_leaf: tuple[int, ...]
  keys: tuple[Hashable, ...]

  @property
  def num_groups(self) -> int:
    return len(self.keys)


def check_scope(scope: Any, name: str = 'scope') -> None:
  """Raises ``ValueError``/``TypeError`` for anything that is not a scope."""
  if isinstance(scope, str):
    if scope not in SCOPES:
      raise ValueError(
          f'{name} must be one of {", ".join(repr(s) for s in SCOPES)} or a '
          f'callable (path, leaf) -> hashable; got {scope!r}.')
    return
  if not callable(scope):
    raise TypeError(
        f'{name} must be one of {", ".join(repr(s) for s in SCOPES)} or a '
        f'callable (path, leaf) -> hashable; got {type(scope).__name__} {scope!r}.')


def _is_value_key(key: Any) -> bool:
  # flax.nnx Variables flatten to their payload under a trailing `.value`.
  return isinstance(key, jax.tree_util.GetAttrKey) and key.name == 'value'


def layer_path(path: Sequence[Any]) -> tuple[Any, ...]:
  """The parent path that ``"per_layer"`` groups by.

  Trailing ``.value`` keys (added by ``flax.nnx`` variables) are dropped first,
  then the last key (the parameter name: ``kernel``, ``bias``...).

  >>> import jax
  >>> [(p, _)] = jax.tree_util.tree_flatten_with_path({'Dense_0': {'kernel': 1.}})[0]
  >>> layer_path(p)
  (DictKey(key='Dense_0'),)
  """
  path = tuple(path)
  while path and _is_value_key(path[-1]):
    path = path[:-1]
  return path[:-1]


def resolve_groups(tree: Any, scope: Scope) -> Grouping:
  """Assigns every array leaf of ``tree`` to a group under ``scope``.

  Args:
    tree: a pytree of arrays (``None`` and ``optax.MaskedNode`` allowed).
    scope: ``"global"``, ``"per_leaf"``, ``"per_layer"`` or a callable
      ``(path, leaf) -> hashable``.

  Returns:
    A :class:`Grouping`.

  Example:

  >>> g = resolve_groups({'a': {'w': 1., 'b': 2.}, 'c': {'w': 3.}}, 'per_layer')
  >>> g.group_of_leaf, g.num_groups
  ((0, 0, 1), 2)
  """
  check_scope(scope)
  path_leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
  paths = tuple(p for p, _ in path_leaves)
  leaves = tuple(leaf for _, leaf in path_leaves)
  if scope == 'global':
    raw_keys = ['global'] * len(leaves)
  elif scope == 'per_leaf':
    raw_keys = [jax.tree_util.keystr(p) for p in paths]
  elif scope == 'per_layer':
    raw_keys = [jax.tree_util.keystr(layer_path(p)) for p in paths]
  else:
    raw_keys = []
    for p, leaf in zip(paths, leaves):
      key = scope(p, leaf)
      try:
        hash(key)
      except TypeError:
        raise TypeError(
            f'scope callable must return a hashable group key; for leaf '
            f'{jax.tree_util.keystr(p)} it returned {type(key).__name__} '
            f'{key!r}.') from None
      raw_keys.append(key)
  index: dict[Hashable, int] = {}
  group_of_leaf = []
  for key in raw_keys:
    if key not in index:
      index[key] = len(index)
    group_of_leaf.append(index[key])
  return Grouping(paths, leaves, treedef, tuple(group_of_leaf), tuple(index))
