# Copyright 2026 The ssgd_optax Authors. Licensed under the Apache License 2.0.
"""SSGD: rescale gradients to unit L2 norm (Duan et al., arXiv 2012.02076).

:func:`unit_normalize` is the transformation, :func:`ssgd` the optimizer built
from it, :func:`group_norms` the norms the transformation hides.

Edge cases of ``unit_normalize`` (``n`` is a group's L2 norm):

=====================  ====================================================
group                  output
=====================  ====================================================
``n >= eps``, finite   ``g / n``: unit norm (to float rounding)
``0 < n < eps``        ``g / eps``: norm ``n / eps < 1``
all zeros              exact zeros (never NaN), gradient through it finite
huge or tiny entries   unit norm: squares are summed in three ranges
                       scaled by exact powers of two, in the same pass
                       (:mod:`ssgd_optax._numerics`), so none over- or
                       underflows (subnormal inputs may be flushed to zero
                       by XLA, giving exact zeros)
any NaN or +-Inf       NaN in the whole group, so ``optax.apply_if_finite``
                       and the user notice
=====================  ====================================================
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from ssgd_optax import _numerics
from ssgd_optax import _validation
from ssgd_optax import _grouping as grouping_lib
from ssgd_optax._numerics import AxisName

__all__ = ['unit_normalize', 'ssgd', 'group_norms']

# How the norms are computed (see ssgd_optax._numerics.group_scales); the tests
# and benchmarks set it to compare the CPU and accelerator forms on one host.
_METHOD = 'auto'


def _accumulation_dtype(path: Any, leaf: jax.Array) -> jnp.dtype:
  dtype = jnp.result_type(leaf)
  if not jnp.issubdtype(dtype, jnp.floating):
    raise TypeError(
        'unit_normalize and group_norms accept only real floating-point leaves '
        f'(float16, bfloat16, float32, float64); leaf {jax.tree_util.keystr(path)!r} '
        f'has dtype {dtype}. Leave integer or complex leaves out of the tree, '
        'or exclude them with optax.masked.')
  # float64 only exists under jax_enable_x64; then it is kept.
  return jnp.promote_types(dtype, jnp.float32)


def _leaf_axes(leaves: list[jax.Array], axis_name: AxisName) -> list[tuple[Any, ...]]:
  """The axes each leaf's squared norm is summed over.

  Inside ``jax.shard_map`` with ``check_vma=True`` (the default) JAX types
  say which leaves vary over an axis; a leaf replicated over it (a
  row-parallel layer's bias, say) is then *not* summed, or it would be
  counted once per device. Where no leaf carries that information (pmap,
  vmap, ``check_vma=False``) every leaf is taken to be sharded over every
  named axis.
  """
  if axis_name is None:
    return [()] * len(leaves)
  names = axis_name if isinstance(axis_name, tuple) else (axis_name,)
  varying = []
  for x in leaves:
    mat = getattr(jax.typeof(x), 'mat', None)
    varying.append(getattr(mat, 'varying', None))
  known = {a for a in names if any(v is not None and a in v for v in varying)}
  return [tuple(a for a in names if a not in known or (v is not None and a in v))
          for v in varying]


class _GroupScales(NamedTuple):
  """Per group ``k``: the norm is ``root[k] / pre[k]`` with ``pre[k]`` a power
  of two (see :func:`ssgd_optax._numerics.scales`)."""
  pre: list[jax.Array]
  root: list[jax.Array]


def _group_scales(grouping: grouping_lib.Grouping,
                  axis_name: AxisName) -> _GroupScales:
  """Overflow- and underflow-safe group norms, in float32 (or float64), one pass."""
  leaves = [jnp.asarray(x) for x in grouping.leaves]
  acc = [_accumulation_dtype(p, x) for p, x in zip(grouping.paths, leaves)]
  members: list[list[int]] = [[] for _ in range(grouping.num_groups)]
  for i, k in enumerate(grouping.group_of_leaf):
    members[k].append(i)
  if not members:
    return _GroupScales([], [])
  group_acc = [jnp.result_type(*[acc[i] for i in m]) for m in members]
  leaf_axes = _leaf_axes(leaves, axis_name)

  # The barrier keeps XLA from fusing these reductions with the consumers of
  # the same leaves (the final rescale): on CPU such fusions ran 1.5x-7x
  # slower than a separate reduction pass (benchmarks/transform_overhead.py).
  # One barrier per leaf: a barrier over several values would also merge
  # their shard_map varying-axes types.
  reduce_in = [jax.lax.optimization_barrier(x) for x in leaves]
  # One collective per distinct set of axes, for all the leaves sharded over it.
  by_axes: dict[tuple[Any, ...], list[int]] = {}
  for i, axes in enumerate(leaf_axes):
    if axes:
      by_axes.setdefault(axes, []).append(i)

  def reduce(sums):
    sums = list(sums)
    for axes, idx in by_axes.items():
      reduced = jax.lax.psum([tuple(sums[i]) for i in idx], axes)
      for i, r in zip(idx, reduced):
        sums[i] = _numerics.Sums(*r)
    return sums

  pre, root = _numerics.group_scales(
      reduce_in, [group_acc[k] for k in grouping.group_of_leaf], groups=members,
      reduce=reduce, method=_METHOD)
  return _GroupScales(pre, root)


def group_norms(updates: optax.Updates,
                scope: grouping_lib.Scope = 'global',
                *,
                axis_name: AxisName = None) -> optax.Updates:
  """The L2 norm of every group: what :func:`unit_normalize` removes.

  ``n_k = sqrt(sum_{leaves l in group k} sum_i g_{l,i}^2)``, accumulated in
  float32 (float64 for float64 leaves), overflow- and underflow-safe.

  Args:
    updates: a pytree of floating-point arrays (``None`` and
      ``optax.MaskedNode`` leaves are skipped).
    scope: ``"global"``, ``"per_leaf"``, ``"per_layer"`` or a callable
      ``(path, leaf) -> hashable`` (see :data:`ssgd_optax.SCOPES`).
    axis_name: mapped axis name(s) over which leaves are sharded; the norm
      then covers the whole leaf (``psum`` of squared norms).

  Returns:
    A tree with the structure of ``updates`` whose every leaf is the scalar
    norm of the group that leaf belongs to (so with ``scope="global"`` all
    leaves hold the same value). A norm beyond the accumulation dtype's range
    (above ~3.4e38 in float32) is reported as ``inf``.

  Example:

  >>> import jax.numpy as jnp
  >>> import ssgd_optax
  >>> g = {'a': jnp.array([3., 0.]), 'b': jnp.array([4.])}
  >>> ssgd_optax.group_norms(g)['a']
  Array(5., dtype=float32)
  >>> ssgd_optax.group_norms(g, 'per_leaf')['b']
  Array(4., dtype=float32)
  """
  grouping_lib.check_scope(scope)
  _validation.check_axis_name('axis_name', axis_name)
  grouping = grouping_lib.resolve_groups(updates, scope)
  scales = _group_scales(grouping, axis_name)
  # A norm beyond the dtype's range comes out as inf (it is not representable).
  norms = [r / p for p, r in zip(scales.pre, scales.root)]
  return jax.tree_util.tree_unflatten(
      grouping.treedef, [norms[k] for k in grouping.group_of_leaf])


def unit_normalize(scope: grouping_lib.Scope = 'global',
                   *,
                   eps: Any = 0.0,
                   axis_name: AxisName = None
                   ) -> optax.GradientTransformationExtraArgs:
  r"""Rescales updates to unit L2 norm within each group (SSGD).

  For every group ``k`` of leaves (see ``scope``) with norm
  ``n_k = ||g_k||_2``:

  .. math::

    u_k = \begin{cases} g_k / \max(n_k, \epsilon) & n_k > 0 \\
                        0 & n_k = 0 \end{cases}

  so with ``eps=0`` every nonzero group has norm exactly 1 (to float rounding)
  and an all-zero group stays exact zeros; with ``eps > 0`` a group whose norm
  is below ``eps`` is scaled by ``1 / eps`` instead (its norm becomes
  ``n_k / eps < 1``), a continuous guard for tiny, noise-dominated gradients.
  Norms accumulate in float32 (float64 for float64 leaves) and the result is
  cast back to each leaf's dtype. A NaN or Inf anywhere in a group makes the
  whole group NaN.

  The transformation hides only the norms (one scalar per group): the update
  direction, and what it reveals about the data, is shared unchanged. Place
  it *before* any aggregation to protect what leaves the device.

  Args:
    scope: ``"global"`` (all leaves form one vector), ``"per_leaf"`` (each
      array on its own), ``"per_layer"`` (leaves grouped by parent path, e.g.
      a Flax layer's kernel and bias, for linen dicts and ``flax.nnx.State``)
      or a callable ``(path, leaf) -> hashable`` naming each leaf's group.
    eps: a number ``>= 0`` (may be traced, e.g. by
      ``optax.inject_hyperparams``): the norm below which groups are scaled
      by ``1 / eps`` rather than to unit norm.
    axis_name: ``None`` for ordinary and data-parallel training. For model
      parallelism inside ``jax.shard_map``/``pmap``/``vmap``, the mapped axis
      name(s) over which each leaf is sharded, so that a group's norm covers
      the whole leaf (``psum`` of the shards' squared norms).

  Returns:
    A :class:`optax.GradientTransformationExtraArgs` with an empty state.

  Example:

  >>> import jax.numpy as jnp
  >>> import optax, ssgd_optax
  >>> tx = optax.chain(ssgd_optax.unit_normalize(), optax.sgd(0.1))
  >>> g = {'w': jnp.array([3., 4.]), 'b': jnp.array([0.])}
  >>> u, _ = tx.update(g, tx.init(g))
  >>> print(u['w'].round(4))
  [-0.06 -0.08]
  """
  grouping_lib.check_scope(scope)
  _validation.check_nonnegative('eps', eps)
  _validation.check_axis_name('axis_name', axis_name)

  def update_fn(updates, state, params=None, **extra_args):
    del params, extra_args
    grouping = grouping_lib.resolve_groups(updates, scope)
    pre, root = _group_scales(grouping, axis_name)
    post = []
    for p, r in zip(pre, root):
      # u = (g * pre) / max(root, eps * pre) = g / max(norm, eps), with no
      # intermediate that overflows or flushes to zero.
      zero = r == 0
      safe = jnp.maximum(jnp.where(zero, 1, r), jnp.asarray(eps, r.dtype) * p)
      post.append(jnp.where(zero, 0, 1 / safe))
    out = []
    for x, k in zip(grouping.leaves, grouping.group_of_leaf):
      x = jnp.asarray(x)
      dtype = post[k].dtype
      out.append(((x.astype(dtype) * pre[k]) * post[k]).astype(x.dtype))
    return jax.tree_util.tree_unflatten(grouping.treedef, out), state

  return optax.GradientTransformationExtraArgs(optax.init_empty_state, update_fn)


def ssgd(learning_rate: optax.ScalarOrSchedule,
         *,
         scope: grouping_lib.Scope = 'global',
         momentum: Any = None,
         nesterov: bool = False,
         eps: Any = 0.0) -> optax.GradientTransformationExtraArgs:
  r"""Super stochastic gradient descent: unit-normalise, then SGD.

  .. math::

    u_t = N_{\text{scope}}(g_t), \quad m_t = \mu m_{t-1} + u_t, \quad
    \theta_{t+1} = \theta_t - \eta_t\, m_t

  with :math:`N` = :func:`unit_normalize` and :math:`\mu` = ``momentum`` (no
  trace when ``momentum`` is ``None``; with ``nesterov=True`` the Nesterov
  form of :func:`optax.trace`). Every step has length ``eta_t`` (times the
  momentum gain), whatever the gradient's size, so a schedule that decays the
  learning rate is what makes SSGD converge. The paper's step multiplier
  ``m`` is absorbed into ``learning_rate``.

  Args:
    learning_rate: a float (may be traced) or an optax schedule.
    scope: the normalisation scope, see :func:`unit_normalize`.
    momentum: ``None`` or a decay rate ``>= 0`` for a momentum trace applied
      after normalisation.
    nesterov: use Nesterov momentum (requires ``momentum``).
    eps: the small-norm guard of :func:`unit_normalize`.

  Returns:
    A :class:`optax.GradientTransformationExtraArgs`.

  With ``optax.inject_hyperparams(ssgd)``, ``learning_rate``, ``momentum`` and
  ``eps`` become traced hyper-parameters; a callable ``scope`` must be listed
  in ``static_args=('scope',)`` (otherwise it is mistaken for a schedule).

  Example:

  >>> import jax, jax.numpy as jnp
  >>> import optax, ssgd_optax
  >>> params = jnp.array([1., -2.])
  >>> opt = ssgd_optax.ssgd(0.5, momentum=0.9)
  >>> state = opt.init(params)
  >>> g = jax.grad(lambda p: jnp.sum(p ** 2))(params)
  >>> u, state = opt.update(g, state, params)
  >>> float(jnp.linalg.norm(u))
  0.5
  """
  grouping_lib.check_scope(scope)
  tail = momentum_and_learning_rate(learning_rate, momentum, nesterov)
  return optax.chain(unit_normalize(scope, eps=eps), *tail)


def momentum_and_learning_rate(learning_rate: optax.ScalarOrSchedule, momentum: Any,
                               nesterov: bool) -> list[optax.GradientTransformation]:
  """The optimiser after a normalisation: optional momentum trace, then ``-learning_rate``.

  Validates the three arguments (shared by :func:`ssgd` and
  :func:`ssgd_optax.privacy.dp_ssgd`).

  Example:

  >>> len(momentum_and_learning_rate(0.1, 0.9, False))
  2
  """
  _validation.check_learning_rate(learning_rate)
  if momentum is not None:
    _validation.check_nonnegative('momentum', momentum)
  if not isinstance(nesterov, bool):
    raise TypeError(f'nesterov must be a bool; got {type(nesterov).__name__} {nesterov!r}.')
  if nesterov and momentum is None:
    raise ValueError('nesterov=True requires momentum (a decay rate >= 0); got momentum=None.')
  parts = []
  if momentum is not None:
    parts.append(optax.trace(decay=momentum, nesterov=nesterov))
  parts.append(optax.scale_by_learning_rate(learning_rate))
  return parts
