# Copyright 2026 The ssgd_optax Authors. Licensed under the Apache License 2.0.
"""Selective sharing (Shokri & Shmatikov, CCS 2015): upload only a few entries.

:func:`selective_sharing` keeps at most ``ceil(fraction * size)`` entries of an
update (DSSGD's ``theta_u``), chosen by largest magnitude or at random among
the entries above a threshold ``tau``, truncates them to ``[-gamma, gamma]``
and zeroes the rest. It is also the "gradient pruning" defence of the attack
benchmarks. It is a heuristic, not differential privacy: its DP variant (the
sparse-vector release of the paper's DP experiments) is
:func:`ssgd_optax.privacy.dp_selective_sharing`, which uses the selection
helpers of this module (:func:`check_fraction`, :func:`flat_group`...).

Conventions shared with the DP variant:

* ``fraction`` is **static** (a Python number): it fixes the top-k shape.
  Under ``optax.inject_hyperparams`` list it in ``static_args``, and ``key``
  too: optax would keep the caller's key buffer, uncopied, in its
  ``hyperparams``, where a donated state deletes it.
* ``scope="global"`` ranks all leaves as one vector (the paper's ``|w|``);
  ``"per_leaf"``/``"per_layer"``/callable keep ``ceil(fraction * n_k)`` in
  every group ``k`` (see :data:`ssgd_optax.SCOPES`).
* Ties are broken deterministically: among equal magnitudes, the entry that
  comes first (leaf flattening order, then row-major) wins.
* ``None`` leaves and ``optax.MaskedNode`` pass through; empty leaves and
  empty trees are returned unchanged; integer or complex leaves raise.

Edge cases of :func:`selective_sharing` (``x`` an entry, ``tau`` the
threshold, ``gamma`` the clip):

=======================  ===================================================
entry                    result
=======================  ===================================================
``|x| <= tau``           never shared (0), whatever the strategy
NaN                      ranks above every number, so it is shared (as
                         NaN): ``optax.apply_if_finite`` notices
``+-Inf``                ranks first; shared as ``+-gamma`` (``+-Inf``
                         without a clip)
bf16 / fp16              ranked and clipped in the leaf's dtype, no upcast
                         of the values (rank is by magnitude only)
=======================  ===================================================

The DP variant instead **drops** every non-finite entry (see
:func:`ssgd_optax.privacy.dp_selective_sharing`). The transform keeps a copy
of its key in the state (``init`` may follow a ``jit`` that donated an earlier
state) and splits it on every update (:mod:`ssgd_optax._keys`).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from ssgd_optax import _keys
from ssgd_optax import _validation
from ssgd_optax import _grouping as grouping_lib
__all__ = [
  'SELECTION_STRATEGIES',
  'SelectiveSharingState',
  'check_fraction',
  'check_leaves',
  'flat_group',
  'group_members',
  'num_shared',
  'selective_sharing',
  'split_like',
]

SELECTION_STRATEGIES = ('largest', 'threshold_random')


class SelectiveSharingState(NamedTuple):
  """State of :func:`selective_sharing` with a random strategy.

  Attributes:
    key: a typed PRNG key (``jax.random.key``), split on every update so
      that no key is used twice.
  """
  key: jax.Array


def num_shared(size: int, fraction: float) -> int:
  """How many entries a group of ``size`` entries shares: ``ceil(fraction*size)``.

  Computed in exact rational arithmetic on the float's value, so e.g.
  ``num_shared(100, 0.07)`` is 7, not 8 (``0.07 * 100 = 7.000000000000001``
  in floating point).

  Args:
    size: number of entries (``>= 0``).
    fraction: a Python number in ``[0, 1]``.

  Returns:
    An ``int`` in ``[0, size]``.

  Example:

  >>> num_shared(105_506, 0.01), num_shared(10, 0.01), num_shared(0, 0.5)
  (1056, 1, 0)
  """
  _validation.check_int('size', size, minimum=0)
  check_fraction(fraction)
  # Round to 9 decimals first: 0.07 is stored as 0.07000000000000000666,
  # which would otherwise round 7 up to 8.
  k = math.ceil(round(float(fraction) * size, 9))
  return int(min(max(k, 0), size))


def check_fraction(fraction: Any) -> None:
  if isinstance(fraction, jax.core.Tracer):
    raise TypeError(
        'fraction must be a concrete Python number in [0, 1]: it fixes the '
        'shape of the top-k selection. Under optax.inject_hyperparams pass '
        "static_args=('fraction',).")
  _validation.check_probability('fraction', fraction)
  if _validation.concrete_float(fraction) is None:
    raise TypeError(f'fraction must be a concrete number in [0, 1]; got {fraction!r}.')


def check_leaves(grouping: grouping_lib.Grouping, who: str) -> None:
  for path, leaf in zip(grouping.paths, grouping.leaves):
    dtype = jnp.result_type(leaf)
    if not jnp.issubdtype(dtype, jnp.floating):
      raise TypeError(
          f'{who} accepts only real floating-point leaves; leaf '
          f'{jax.tree_util.keystr(path)!r} has dtype {dtype}. Exclude it with '
          'optax.masked.')


def group_members(grouping: grouping_lib.Grouping) -> list[list[int]]:
  members: list[list[int]] = [[] for _ in range(grouping.num_groups)]
  for i, k in enumerate(grouping.group_of_leaf):
    members[k].append(i)
  return members


def flat_group(leaves: list[jax.Array]) -> jax.Array:
  """One vector for ranking; mixed dtypes are promoted (magnitudes only)."""
  dtype = jnp.result_type(*leaves)
  return jnp.concatenate([jnp.ravel(x).astype(dtype) for x in leaves])


def split_like(flat: jax.Array, leaves: list[jax.Array]) -> list[jax.Array]:
  out, start = [], 0
  for x in leaves:
    out.append(flat[start:start + x.size].reshape(x.shape))
    start += x.size
  return out


def _topk_mask(score: jax.Array, k: int) -> jax.Array:
  """Boolean mask of the ``k`` largest scores; ties go to the lower index."""
  n = score.shape[0]
  if k >= n:
    return jnp.ones((n,), bool)
  # lax.top_k returns the lower index first among equal values.
  _, idx = jax.lax.top_k(score, k)
  return jnp.zeros((n,), bool).at[idx].set(True)


def _select(flat: jax.Array, k: int, strategy: str, threshold: Any,
            key: jax.Array | None) -> jax.Array:
  """The mask of shared entries of one group."""
  mag = jnp.abs(flat)
  # NaN ranks above everything so that it is shared and seen, not hidden.
  mag = jnp.where(jnp.isnan(flat), jnp.inf, mag)
  eligible = (mag > jnp.asarray(threshold, mag.dtype)) | jnp.isnan(flat)
  if strategy == 'largest':
    score = jnp.where(eligible, mag.astype(jnp.float32), -1.0)
  else:
    # A uniformly random k-subset of the eligible entries: the top-k of i.i.d.
    # uniform scores; ineligible entries score -1 and are masked off below.
    u = jax.random.uniform(key, flat.shape, jnp.float32)
    score = jnp.where(eligible, u, -1.0)
  return _topk_mask(score, k) & eligible


def _clip(x: jax.Array, clip: Any) -> jax.Array:
  if clip is None:
    return x
  c = jnp.asarray(clip, x.dtype)
  return jnp.clip(x, -c, c)


def selective_sharing(fraction: float,
                      *,
                      strategy: str = 'largest',
                      threshold: Any = 0.0,
                      clip: Any = None,
                      key: Any = None,
                      scope: grouping_lib.Scope = 'global'
                      ) -> optax.GradientTransformationExtraArgs:
  r"""Shares at most ``ceil(fraction * size)`` entries of the update (DSSGD).

  For every group ``g`` (see ``scope``) of ``n`` entries, with
  ``k = ceil(fraction * n)``, threshold ``tau`` and clip ``gamma``:

  .. math::

    S &= \begin{cases}
      \operatorname{top}_k \{ j : |g_j| > \tau \} \text{ by } |g_j|
        & \text{strategy} = \texttt{largest} \\
      \text{a uniform random $k$-subset of } \{ j : |g_j| > \tau \}
        & \text{strategy} = \texttt{threshold\_random}
    \end{cases} \\
    u_j &= \mathbb{1}[j \in S]\, \operatorname{clip}(g_j, -\gamma, \gamma)

  (all eligible entries when fewer than ``k`` exceed ``tau``). This is
  Shokri & Shmatikov's upload rule with ``fraction`` = ``theta_u``,
  ``threshold`` = ``tau`` and ``clip`` = ``gamma``. It alone is *not*
  differential privacy (see :func:`ssgd_optax.privacy.dp_selective_sharing`); the entries it
  shares are exact values, and an MLP's first-layer rows still show
  the inputs (McSherry, 2017).

  Args:
    fraction: the static share ``theta_u`` in ``[0, 1]`` (a Python number:
      it sets the shape of the top-k). ``0`` shares nothing, ``1`` everything
      above the threshold.
    strategy: ``"largest"`` (largest ``|g_j|``) or ``"threshold_random"``
      (uniformly at random among the entries with ``|g_j| > threshold``).
    threshold: ``tau >= 0`` (may be traced): entries with ``|g_j| <= tau`` are
      never shared.
    clip: ``None`` (no truncation) or ``gamma >= 0`` (may be traced; ``inf``
      allowed): shared entries are truncated to ``[-gamma, gamma]``.
    key: a PRNG key (``jax.random.key``); required by
      ``"threshold_random"``, ignored by ``"largest"``. It lives in the state
      and is split on every update.
    scope: ``"global"`` (the paper's rule: one ranking over all parameters),
      ``"per_leaf"``, ``"per_layer"`` or a callable (path, leaf) -> group.

  Returns:
    A :class:`optax.GradientTransformationExtraArgs`; its state is
    ``optax.EmptyState()`` for ``"largest"`` and a
    :class:`SelectiveSharingState` for ``"threshold_random"``.

  Example:

  >>> import jax.numpy as jnp
  >>> import ssgd_optax
  >>> tx = ssgd_optax.selective_sharing(0.5, clip=2.0)
  >>> g = {'a': jnp.array([0.1, -3.0]), 'b': jnp.array([1.0, 0.5])}
  >>> u, _ = tx.update(g, tx.init(g))
  >>> print(u['a'], u['b'])
  [ 0. -2.] [1. 0.]
  """
  check_fraction(fraction)
  _validation.check_choice('strategy', strategy, SELECTION_STRATEGIES)
  _validation.check_nonnegative('threshold', threshold)
  if clip is not None:
    _validation.check_nonnegative('clip', clip, allow_inf=True)
  grouping_lib.check_scope(scope)
  random = strategy == 'threshold_random'
  if random:
    typed_key = _keys.check_key(key)
  elif key is not None:
    _keys.check_key(key)

  def init_fn(params):
    del params
    if random:
      return SelectiveSharingState(key=_keys.copy_key(typed_key))
    return optax.EmptyState()

  def update_fn(updates, state, params=None, **extra_args):
    del params, extra_args
    grouping = grouping_lib.resolve_groups(updates, scope)
    check_leaves(grouping, 'selective_sharing')
    leaves = [jnp.asarray(x) for x in grouping.leaves]
    out = list(leaves)
    if random:
      next_key, step_key = _keys.split_step(state.key)
      state = SelectiveSharingState(key=next_key)
    for gi, members in enumerate(group_members(grouping)):
      group = [leaves[i] for i in members]
      n = sum(x.size for x in group)
      if n == 0:
        continue
      flat = flat_group(group)
      k = num_shared(n, fraction)
      group_key = jax.random.fold_in(step_key, gi) if random else None
      mask = _select(flat, k, strategy, threshold, group_key)
      for i, m in zip(members, split_like(mask, group)):
        x = leaves[i]
        out[i] = jnp.where(m, _clip(x, clip), jnp.zeros((), x.dtype))
    return jax.tree_util.tree_unflatten(grouping.treedef, out), state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
