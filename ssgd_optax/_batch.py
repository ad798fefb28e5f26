# Copyright 2026 The ssgd_optax Authors. Licensed under the Apache License 2.0.
"""Rows of a batch: the rules every per-example DP path shares.

A batch is a pytree whose leaves share a leading axis of ``B`` rows, one
example per row. Differential privacy bounds what *one row* adds to a
release, so every DP path (per-example gradients, DP-SGD, DP-SSGD, ghost
norms, backprop clipping) must keep the rows apart. The rules, stated once:

* **A row is real** where the padding ``mask`` (``[B]``, bool or 0/1) is true;
  a padded row contributes exact zeros, selected with ``jnp.where``, never
  multiplied (``0 * NaN = NaN``): :func:`check_mask`, :func:`masked_sum`,
  :func:`select_rows`.
* **A row is finite** when every floating entry of every batch leaf is
  finite (:func:`finite_rows`); integer leaves (labels) always are.
* **One row cannot reach another.** A batched kernel may mix rows: on XLA:CPU
  the per-example kernel gradient of a convolution under ``vmap`` (a grouped
  convolution over the batch) turns one example's NaN into NaN in *every*
  row (float32 with ``feature_group_count`` 2, float64 with an ordinary conv).
  So rows are isolated *before* any batched gradient
  (:func:`isolated_rows`): non-finite and padded rows are replaced by a copy
  of a real row, and if a real row still comes back non-finite (an overflow
  inside the model) every row is recomputed one example at a time.
* **Losses are per example**: a ``[B]`` vector, never a mean
  (:func:`per_example_losses`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

__all__ = [
    'batch_size',
    'check_mask',
    'finite_examples',
    'finite_rows',
    'isolated_rows',
    'masked_sum',
    'per_example_losses',
    'rows_like',
    'select_rows',
]


def batch_size(tree: Any, what: str) -> int:
  """The shared leading size ``B`` of every leaf of ``tree`` (a ``ValueError`` if none)."""
  leaves = jax.tree.leaves(tree)
  if not leaves:
    raise ValueError(f'{what} has no array leaves; per-example gradients need a batch.')
  sizes = set()
  for leaf in leaves:
    if jnp.ndim(leaf) == 0:
      raise ValueError(
          f'every leaf of {what} needs a leading batch axis; got a scalar leaf.')
    sizes.add(jnp.shape(leaf)[0])
  if len(sizes) != 1:
    raise ValueError(
        f'every leaf of {what} must share the leading batch size; got sizes {sorted(sizes)}.')
  return sizes.pop()


def rows_like(v: jax.Array, x: jax.Array) -> jax.Array:
  """``v`` (shape ``[B]``) reshaped to broadcast over the rows of ``x``."""
  return jnp.reshape(v, (-1,) + (1,) * (jnp.ndim(x) - 1))


def finite_examples(x: jax.Array) -> jax.Array:
  """``[B]`` bool: True where every entry of row ``x_i`` is finite (always for integers)."""
  x = jnp.asarray(x)
  if not jnp.issubdtype(x.dtype, jnp.inexact):
    return jnp.ones(x.shape[:1], bool)
  return jnp.all(jnp.isfinite(x), axis=tuple(range(1, x.ndim)))


def finite_rows(batch: Any, size: int) -> jax.Array:
  """``[B]`` bool: every floating entry of row ``i`` of every leaf is finite.

  Leaves without the leading size ``B`` (broadcast arguments) are ignored.
  """
  ok = jnp.ones((size,), bool)
  for b in jax.tree.leaves(batch):
    b = jnp.asarray(b)
    if b.ndim >= 1 and b.shape[0] == size:
      ok = ok & finite_examples(b)
  return ok


def check_mask(mask: Any, size: int) -> jax.Array:
  """``mask`` as a ``[B]`` bool vector, or a ``ValueError`` naming the shapes."""
  mask = jnp.asarray(mask)
  if mask.shape != (size,):
    raise ValueError(f'mask must have shape ({size},) (one entry per example); '
                     f'got {mask.shape}.')
  return mask.astype(bool)


def select_rows(keep: jax.Array, tree: Any, fill: Any = 0) -> Any:
  """Rows of ``tree`` where ``keep``, ``fill`` elsewhere (a select: ``NaN`` cannot leak)."""
  return jax.tree.map(
      lambda x: jnp.where(rows_like(keep, x), x, jnp.asarray(fill, jnp.asarray(x).dtype)), tree)


def masked_sum(values: jax.Array, keep: jax.Array | None) -> jax.Array:
  """``sum_i values_i`` over the rows where ``keep`` (all rows for ``None``)."""
  if keep is None:
    return jnp.sum(values)
  keep = check_mask(keep, jnp.shape(values)[0])
  return jnp.sum(jnp.where(keep, values, 0))


def per_example_losses(losses: Any, batch: Sequence[Any]) -> jax.Array:
  """Checks that a loss function returned one loss per example (a ``[B]`` vector)."""
  losses = jnp.asarray(losses)
  leaves = [b for b in jax.tree.leaves(batch) if jnp.ndim(b) >= 1]
  if losses.ndim != 1 or (leaves and losses.shape[0] != jnp.shape(leaves[0])[0]):
    want = f'[{jnp.shape(leaves[0])[0]}]' if leaves else '[B]'
    raise ValueError(
        f'per_example_loss must return one loss per example (shape {want}); got shape '
        f'{losses.shape}. Do not average or sum it: the clip bounds refer to one example.')
  return losses


def _finite_tree_rows(tree: Any, size: int) -> jax.Array:
  ok = jnp.ones((size,), bool)
  for leaf in jax.tree.leaves(tree):
    ok = ok & finite_examples(leaf)
  return ok


def _nan_rows(keep: jax.Array, tree: Any) -> Any:
  def fill(x):
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.inexact):
      return x
    return jnp.where(rows_like(keep, x), x, jnp.asarray(jnp.nan, x.dtype))
  return jax.tree.map(fill, tree)


def isolated_rows(one: Callable[[Any], Any], batch: Any, *, mask: jax.Array | None = None,
                  microbatch_size: int | None = None) -> Any:
  r"""``out[i] = one(batch[i])`` for every row, with no row able to reach another.

  A batched evaluation (``vmap``, or ``lax.map`` in microbatches) is fast but
  may mix rows (see the module docstring). So:

  1. rows with a non-finite floating entry, and padded rows (``mask == 0``),
     are replaced by a copy of the first real, finite row before anything is
     evaluated;
  2. the batch is evaluated at once; if every real row comes back finite, no
     non-finite value existed to mix, and that is the result;
  3. otherwise (a finite input overflowed inside ``one``) every row is
     evaluated again one at a time (``lax.map``), whose rows cannot mix; a
     ``lax.cond`` runs this only when needed.

  Finally padded rows become exact zeros and rows with non-finite inputs
  become ``NaN`` (their own result was never computed), so the caller's
  non-finite rule (drop or propagate) sees them as before.

  Args:
    one: a function of one row (no batch axis) returning a pytree.
    batch: a pytree whose leaves share a leading axis ``B``.
    mask: ``None`` or a ``[B]`` mask of real rows.
    microbatch_size: ``None`` (one ``vmap``) or ``m``: ``m`` rows at a time.

  Returns:
    The pytree of ``one``'s outputs with a leading axis ``B``.

  Example:

  >>> import jax.numpy as jnp
  >>> out = isolated_rows(lambda x: 2 * x, jnp.array([1., jnp.nan, 3.]),
  ...                     mask=jnp.array([1, 1, 0]))
  >>> out
  Array([ 2., nan,  0.], dtype=float32)
  """
  batch = jax.tree.map(jnp.asarray, batch)
  size = batch_size(batch, 'the batch')
  real = jnp.ones((size,), bool) if mask is None else check_mask(mask, size)
  finite_in = finite_rows(batch, size)
  keep = real & finite_in
  # A real row stands in for the others: a stand-in must be as harmless as a
  # real example (zeros may not be: a loss with log(x) or x/|x| is NaN there).
  first = jnp.argmax(keep)
  clean = jax.tree.map(
      lambda x: jnp.where(rows_like(keep, x), x, x[first][None]), batch)

  def batched(b):
    if microbatch_size is None or microbatch_size >= size:
      return jax.vmap(one)(b)
    return jax.lax.map(one, b, batch_size=microbatch_size)

  out = batched(clean)
  suspect = jnp.any(keep & ~_finite_tree_rows(out, size))
  out = jax.lax.cond(suspect, lambda b, _: jax.lax.map(one, b), lambda _, o: o, clean, out)
  out = _nan_rows(finite_in | ~real, out)
  return select_rows(real, out) if mask is not None else out
