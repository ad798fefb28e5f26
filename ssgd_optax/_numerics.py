# Copyright 2026 The ssgd_optax Authors. Licensed under the Apache License 2.0.
"""Overflow- and underflow-safe L2 norms in one branch-free pass (private).

Every norm in the package (``unit_normalize``, ``group_norms``, DP-SSGD's
per-example scales, the DP-SGD clipping norms) is computed here, so the speed
and the numerics hold everywhere at once.

The sum of squares is accumulated in float32 (float64 for float64 inputs)
three times at once, on ``x``, on ``x 2^-S`` and on ``x 2^S`` with
``S = 2 (maxexp // 3)`` (84 in float32); the group's totals then pick one,
with ``T = tiny 2^(S-8)`` (2^-50 in float32) and ``N < 2^40`` entries:

==========================  =========================  =========================
``plain = sum x^2``         norm                       why nothing is lost
==========================  =========================  =========================
``T <= plain < inf``        ``sqrt(plain)``            underflowed squares sum
                                                       to ``< N tiny << T``
``inf`` (overflow)          ``sqrt(sum (x 2^-S)^2)``   finite; what underflows
                            ``* 2^S``                  is ``< N 2^-86`` of it
``< T`` (0 included)        ``sqrt(sum (x 2^S)^2)``    at most ``2^S (T + N
                            ``* 2^-S``                 tiny)``: finite
NaN (or an Inf entry)       NaN                        poisons the whole group
==========================  =========================  =========================

The norm is ``root / pre``, ``pre`` a power of two, so that ``(x * pre) /
root`` is the unit vector with no intermediate that overflows. Scalings by
powers of two are exact, and each of the three sums is a multiply-and-add
reduction of the same input: on GPU/TPU XLA fuses them into one pass, with no
``lax.cond`` and no float32 copy of a bfloat16 input. On CPU a plain sum
alone is cheaper and a conditional costs nothing, so there the scaled sums
are computed only when some group needs them (:func:`group_scales`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Hashable, Sequence
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp

__all__ = ['Sums', 'METHODS', 'accumulation_dtype', 'sums_of_squares', 'add', 'reduce_over',
           'scales', 'safe_sqrt', 'norm', 'group_scales', 'row_norms', 'RowScales',
           'per_row']

AxisName = Optional[Hashable | tuple[Hashable, ...]]


class Sums(NamedTuple):
  """Sums of squares of ``x 2^-S``, ``x`` and ``x 2^S`` (see module doc)."""
  down: jax.Array
  plain: jax.Array
  up: jax.Array


def accumulation_dtype(dtype: Any) -> jnp.dtype:
  """float32, or float64 for float64 inputs (only under ``jax_enable_x64``)."""
  return jnp.promote_types(dtype, jnp.float32)


def _shift(dtype: Any) -> int:
  return 2 * (int(jnp.finfo(dtype).maxexp) // 3)


def _threshold(dtype: Any) -> jax.Array:
  """Below this ``plain`` total, squares lost to underflow may matter."""
  return jnp.asarray(float(jnp.finfo(dtype).tiny) * 2.0 ** (_shift(dtype) - 8), dtype)


def _sum_sq(x: jax.Array, scale: float, axis: Any, dtype: Any) -> jax.Array:
  """``sum((x * scale)^2)`` over ``axis`` in ``dtype``."""
  return _sum_sq_jvp(scale, axis, jnp.dtype(dtype), jnp.asarray(x))


@functools.partial(jax.custom_jvp, nondiff_argnums=(0, 1, 2))
def _sum_sq_jvp(scale, axis, dtype, x):
  # The cast is part of the reduction's fusion: no float32 copy of x.
  y = x.astype(dtype)
  if scale != 1:
    y = y * jnp.asarray(scale, dtype)
    reduced = x.size if axis is None else math.prod(x.shape[a] for a in _axes(axis, x.ndim))
    if reduced <= 1:
      # A trivial reduction (a scalar leaf, a one-entry shard) becomes an
      # element-wise (x s)(x s), which XLA rewrites as (x x)(s s): s s is
      # 2^-168 or 2^168, 0 or inf in float32, and the sum turned NaN. The
      # barrier stops the rewrite; nothing is left to fuse here anyway.
      y = jax.lax.optimization_barrier(y)
  return jnp.sum(y * y, axis=axis)


def _axes(axis: Any, ndim: int) -> tuple[int, ...]:
  axis = (axis,) if isinstance(axis, int) else tuple(axis)
  return tuple(a % ndim for a in axis)


@_sum_sq_jvp.defjvp
def _sum_sq_jvp_rule(scale, axis, dtype, primals, tangents):
  # d sum((s x)^2) = 2 s sum((s x) dx). Where a finite x overflows s x, that
  # sum is infinite and never selected (see `scales`), but autodiff of the
  # primal would multiply its zero cotangent by inf: NaN. Such entries get a
  # zero tangent instead; s is applied last so that s * s never underflows.
  (x,), (dx,) = primals, tangents
  out = _sum_sq_jvp(scale, axis, dtype, x)
  x, dx = x.astype(dtype), dx.astype(dtype)
  s = jnp.asarray(scale, dtype)
  y = x * s
  if scale > 1:
    y = jnp.where(jnp.isinf(y) & jnp.isfinite(x), 0, y)
  return out, (2 * jnp.sum(y * dx, axis=axis)) * s


def sums_of_squares(x: jax.Array, axis: Any = None, dtype: Any = None) -> Sums:
  """The three sums of ``x`` over ``axis``, in ``dtype`` (default float32/64).

  >>> import jax.numpy as jnp
  >>> s = sums_of_squares(jnp.array([3e30, 4e30]))
  >>> norm(s)
  Array(5.e+30, dtype=float32)
  """
  x = jnp.asarray(x)
  dtype = accumulation_dtype(x.dtype) if dtype is None else jnp.dtype(dtype)
  s = _shift(dtype)
  return Sums(_sum_sq(x, 2.0 ** -s, axis, dtype), _sum_sq(x, 1, axis, dtype),
              _sum_sq(x, 2.0 ** s, axis, dtype))


def add(parts: Sequence[Sums]) -> Sums:
  """The sums of the union of several inputs (same shapes)."""
  parts = list(parts)
  dtype = jnp.result_type(*[p.plain for p in parts])
  return Sums(*[sum(getattr(p, f).astype(dtype) for p in parts) for f in Sums._fields])


def reduce_over(sums: Sums, axes: tuple[Any, ...], collective: Callable = jax.lax.psum) -> Sums:
  """``psum`` of the range sums over mapped ``axes`` (none: unchanged)."""
  if not axes:
    return sums
  return Sums(*collective(tuple(sums), axes))


def safe_sqrt(s: jax.Array) -> jax.Array:
  """sqrt with 0 at 0 and a finite gradient there; NaN/Inf propagate.

  >>> safe_sqrt(jnp.array([0., 4.]))
  Array([0., 2.], dtype=float32)
  """
  zero = s == 0
  return jnp.where(zero, 0, jnp.sqrt(jnp.where(zero, 1, s)))


def scales(sums: Sums) -> tuple[jax.Array, jax.Array]:
  """``(pre, root)`` with ``norm = root / pre``, ``pre`` a power of two.

  ``x * pre`` neither overflows nor underflows (beyond what is negligible next
  to the norm); ``pre`` is NaN when the input held a NaN or an Inf.

  >>> pre, root = scales(sums_of_squares(jnp.array([3e-30, 4e-30])))
  >>> root / pre
  Array(5.e-30, dtype=float32)
  """
  dtype = sums.plain.dtype
  s = _shift(dtype)
  over = jnp.isinf(sums.plain)
  under = sums.plain < _threshold(dtype)
  t = jnp.where(over, sums.down, jnp.where(under, sums.up, sums.plain))
  pre = jnp.where(over, jnp.asarray(2.0 ** -s, dtype),
                  jnp.where(under, jnp.asarray(2.0 ** s, dtype), jnp.ones((), dtype)))
  # An Inf entry makes `down` infinite too, a NaN every sum: the group's
  # outputs are then all NaN, as with g / ||g||.
  pre = jnp.where(jnp.isfinite(t), pre, jnp.nan)
  return jax.lax.stop_gradient(pre), safe_sqrt(t)


def norm(sums: Sums) -> jax.Array:
  """The L2 norm ``root / pre`` (``inf`` beyond the dtype's range, NaN for NaN/Inf input)."""
  pre, root = scales(sums)
  return root / pre


def _plain_sums(x: jax.Array, axis: Any, dtype: Any) -> Sums:
  """``Sums`` with only ``plain`` computed (the others NaN, never used)."""
  plain = _sum_sq(x, 1, axis, dtype)
  nan = jnp.full_like(plain, jnp.nan)
  return Sums(nan, plain, nan)


def _unsafe(sums: Sums) -> jax.Array:
  """Whether :func:`scales` needs the scaled sums (0 included: an all-zero
  group and a wholly underflowed one both sum to 0)."""
  return jnp.isinf(sums.plain) | (sums.plain < _threshold(sums.plain.dtype))


METHODS = ('auto', 'fused', 'rescue')


def group_scales(leaves: Sequence[jax.Array], dtypes: Sequence[Any], *,
                 groups: Sequence[Sequence[int]] | None = None,
                 per_example: bool = False,
                 reduce: Callable[[list[Sums]], list[Sums]] = lambda s: s,
                 method: str = 'auto') -> tuple[list[jax.Array], list[jax.Array]]:
  """``(pre, root)`` of every group of leaves (see :func:`scales`).

  Args:
    leaves: arrays; each is reduced over all its axes, or with
      ``per_example`` over all but the first (then ``pre``/``root`` are
      ``[B]``).
    dtypes: the accumulation dtype of each leaf (one per group, repeated).
    groups: lists of leaf indices (default: each leaf alone).
    reduce: maps the per-leaf sums to the sums after any collectives
      (``psum`` over the axes a leaf is sharded over).
    method: ``"fused"``: :func:`sums_of_squares`, one branch-free pass per
      leaf (three sibling reductions of one input, which XLA fuses on GPU and
      TPU). ``"rescue"``: a plain sum of squares per leaf, and the scaled sums
      under a ``lax.cond`` only if some group's total is below the threshold
      or infinite; on CPU each reduction is its own vectorised pass (XLA does
      not fuse sibling reductions there) and a conditional is free.
      ``"auto"``: ``"rescue"`` on CPU, ``"fused"`` elsewhere (decided when
      lowering, with :func:`jax.lax.platform_dependent`).

  Returns:
    Two lists with one array per group.

  >>> pre, root = group_scales([jnp.array([3., 0.]), jnp.array([4.])],
  ...                          [jnp.float32] * 2, groups=[[0, 1]])
  >>> root[0] / pre[0]
  Array(5., dtype=float32)
  """
  if method not in METHODS:
    raise ValueError(f'method must be one of {METHODS}; got {method!r}.')
  leaves = [jnp.asarray(x) for x in leaves]
  axes = [tuple(range(1, x.ndim)) if per_example else None for x in leaves]
  groups = [[i] for i in range(len(leaves))] if groups is None else [list(g) for g in groups]
  if not groups:
    return [], []

  def finish(sums):
    out = [scales(add([sums[i] for i in g])) for g in groups]
    return [p for p, _ in out], [r for _, r in out]

  def fused(xs):
    return finish(reduce([sums_of_squares(x, a, d) for x, a, d in zip(xs, axes, dtypes)]))

  def rescue(xs):
    plain = reduce([_plain_sums(x, a, d) for x, a, d in zip(xs, axes, dtypes)])
    unsafe = jnp.stack([jnp.any(_unsafe(add([plain[i] for i in g]))) for g in groups]).any()

    def scaled(xs):
      scaled = reduce([Sums(_sum_sq(x, 2.0 ** -_shift(d), a, d), jnp.zeros_like(p.plain),
                            _sum_sq(x, 2.0 ** _shift(d), a, d))
                       for x, a, d, p in zip(xs, axes, dtypes, plain)])
      return finish([Sums(s.down, p.plain, s.up) for s, p in zip(scaled, plain)])

    # The branches return the few (pre, root) scalars, not the per-leaf sums:
    # XLA would otherwise recompute every group total inside each consumer's
    # fusion (70k HLO lines and a 2.5x compile for ResNet-50 on CPU). Under
    # vmap a batched predicate turns the cond into a select of both branches.
    return jax.lax.cond(unsafe, scaled, lambda xs: finish(plain), xs)

  if method == 'fused':
    return fused(leaves)
  if method == 'rescue':
    return rescue(leaves)
  return jax.lax.platform_dependent(leaves, cpu=rescue, default=fused)


def row_norms(x: jax.Array) -> jax.Array:
  """Row norms of ``x`` (``[B, ...]``) over every non-batch axis.

  >>> row_norms(jnp.array([[3., 4.], [0., 0.]]))
  Array([5., 0.], dtype=float32)
  """
  x = jnp.asarray(x)
  [pre], [root] = group_scales([x], [accumulation_dtype(x.dtype)], per_example=True)
  return root / pre


class RowScales(NamedTuple):
  """Per group, ``[B]`` arrays (see :func:`per_row`).

  Row ``i`` of a leaf of group ``k`` normalises to ``(x_i pre_ki) coef_ki =
  x_i / (n_ki + gamma)``, the two factors applied in this order: their
  product, ``1 / (n + gamma)``, is subnormal (flushed to 0 on CPU) for a norm
  near the float max and overflows for a norm below ``1 / max``; neither
  factor leaves the normal range.
  """
  pre: list[jax.Array]    # a power of two (1 in the plain branch); NaN if bad
  coef: list[jax.Array]   # 1 / (root + gamma pre); exact 0 where root == 0
  bad: list[jax.Array]    # bool: the row's group holds a NaN or an Inf


def _coef(root: jax.Array, pre: jax.Array, stability: Any) -> jax.Array:
  """``1 / (root + gamma pre)``, exact 0 (with a finite gradient) at ``root = 0``."""
  zero = root == 0
  denom = root + jnp.asarray(stability, root.dtype) * pre
  return jnp.where(zero, 0, 1 / jnp.where(zero, 1, denom))


def _flushed(x: jax.Array, dtype: Any) -> jax.Array:
  """``x`` with entries below ``finfo(dtype).tiny`` (subnormal) set to 0.

  XLA's CPU flushes subnormals (a GPU need not): flushing them explicitly
  where ``x`` is scaled up by ``2^S`` makes a row of subnormals a zero row on
  every backend, and its norm agree with its pre-scaled entries.
  """
  tiny = jnp.asarray(jnp.finfo(dtype).tiny, x.dtype)   # 0 for float16: nothing flushed
  return jnp.where(jnp.abs(x) < tiny, jnp.zeros((), x.dtype), x)


def _row_bcast(v: jax.Array, x: jax.Array) -> jax.Array:
  return v.reshape(v.shape + (1,) * (x.ndim - 1))


def per_row(leaves: Sequence[jax.Array], dtypes: Sequence[Any], groups: Sequence[Sequence[int]],
            rescued: Callable[[list[jax.Array], RowScales], Any], *,
            plain: Sequence[Callable[[list[jax.Array], RowScales], Any]] | None = None,
            choose: Callable[[RowScales], jax.Array] | None = None,
            stability: Any = 0.0,
            include: jax.Array | None = None,
            method: str = 'auto') -> Any:
  """Per-row, per-group unit scaling of batched leaves, one batch-level decision.

  Every leaf is ``[B, ...]`` and reduced over all axes but the first; the
  norm of row ``i`` in group ``k`` is that of :func:`scales` (``x_i pre_ki``
  never overflows, never loses mass to underflow). The caller gets the
  scaled rows and :class:`RowScales` through one of its functions:

  * ``rescued(ys, rs)``: ``ys[i] = flushed(leaves[i]) * pre`` (row-wise,
    the leaf's group); always for ``"fused"`` (branch-free, the three sums
    of one pass, as on GPU/TPU).
  * ``plain[j](leaves, rs)``: with ``"rescue"`` (CPU), when no included row
    needs a pre-scale: ``pre = 1`` and the leaves are passed unchanged (no
    pre-scaled copy); ``j = choose(rs)``. The plain sum of squares is one
    reduction per leaf; the scaled sums are computed only in the
    ``rescued`` branch. All of it is one ``lax.switch`` on a batch-level
    index: under ``vmap`` a per-row ``cond`` would compute every branch for
    every row.

  Args:
    leaves: ``[B, ...]`` arrays.
    dtypes: the accumulation dtype of each leaf (one per group, repeated).
    groups: lists of leaf indices.
    rescued: see above.
    plain: see above (default ``[rescued]``).
    choose: a traced index into ``plain`` (default 0).
    stability: ``gamma >= 0`` in ``coef = 1 / (root + gamma pre)``.
    include: ``None`` or ``[B]`` bool: only these rows can force the
      rescue (padded rows never do).
    method: ``"auto"``, ``"fused"`` or ``"rescue"`` (as in :func:`group_scales`).

  Returns:
    What the selected function returns.

  >>> x = jnp.array([[3e30, 4e30], [0., 0.], [3e-30, 4e-30]])
  >>> per_row([x], [jnp.float32], [[0]],
  ...         lambda ys, rs: ys[0] * rs.coef[0][:, None]).round(6)
  Array([[0.6, 0.8],
         [0. , 0. ],
         [0.6, 0.8]], dtype=float32)
  """
  if method not in METHODS:
    raise ValueError(f'method must be one of {METHODS}; got {method!r}.')
  leaves = [jnp.asarray(x) for x in leaves]
  dtypes = [jnp.dtype(d) for d in dtypes]
  groups = [list(g) for g in groups]
  plain = [rescued] if plain is None else list(plain)
  axes = [tuple(range(1, x.ndim)) for x in leaves]
  group_of = {i: k for k, g in enumerate(groups) for i in g}

  def finish(xs, sums):
    pres, coefs, bads = [], [], []
    for g in groups:
      pre, root = scales(add([sums[i] for i in g]))
      pres.append(pre)
      coefs.append(_coef(root, pre, stability))
      bads.append(jnp.isnan(pre))
    ys = [_flushed(x, d) * _row_bcast(pres[group_of[i]].astype(x.dtype), x)
          for i, (x, d) in enumerate(zip(xs, dtypes))]
    return rescued(ys, RowScales(pres, coefs, bads))

  def up(x, a, d):
    return _sum_sq(_flushed(x, d), 2.0 ** _shift(d), a, d)

  def fused(xs):
    return finish(xs, [Sums(_sum_sq(x, 2.0 ** -_shift(d), a, d), _sum_sq(x, 1, a, d), up(x, a, d))
                       for x, a, d in zip(xs, axes, dtypes)])

  def rescue(xs):
    plains = [_sum_sq(x, 1, a, d) for x, a, d in zip(xs, axes, dtypes)]
    totals = []
    for g in groups:
      dtype = jnp.result_type(*[plains[i] for i in g])
      totals.append(sum(plains[i].astype(dtype) for i in g))
    unsafe = jnp.stack([_unsafe(Sums(t, t, t)) for t in totals]).any(axis=0)
    if include is not None:
      unsafe = unsafe & include
    rs = RowScales([jnp.ones_like(t) for t in totals],
                   [_coef(safe_sqrt(t), jnp.ones((), t.dtype), stability) for t in totals],
                   [~jnp.isfinite(t) for t in totals])
    index = jnp.zeros((), jnp.int32) if choose is None else jnp.asarray(choose(rs), jnp.int32)
    index = jnp.where(jnp.any(unsafe), len(plain), index)

    def scaled(xs):
      return finish(xs, [Sums(_sum_sq(x, 2.0 ** -_shift(d), a, d), p, up(x, a, d))
                         for x, a, d, p in zip(xs, axes, dtypes, plains)])

    branches = [lambda xs, f=f: f(xs, rs) for f in plain] + [scaled]
    return jax.lax.switch(index, branches, xs)

  if method == 'fused':
    return fused(leaves)
  if method == 'rescue':
    return rescue(leaves)
  return jax.lax.platform_dependent(leaves, cpu=rescue, default=fused)
