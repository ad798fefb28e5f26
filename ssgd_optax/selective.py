# Copyright 2026 The ssgd_optax Authors. Licensed under the Apache License 2.0.
"""Selective sharing (Shokri & Shmatikov, CCS 2015): upload only a few entries.

:func:`selective_sharing` keeps at most ``ceil(fraction * size)`` entries of an
update (DSSGD's ``theta_u``), chosen by largest magnitude or at random among
the entries above a threshold ``tau``, truncates them to ``[-gamma, gamma]``
and zeroes the rest. It is also the "gradient pruning" defence of the attack
benchmarks. :func:`dp_selective_sharing` is its differentially private
variant (Dwork & Roth's NumericSparse, as in the paper's DP experiments) and
:func:`dp_selective_sharing_privacy` reports what that variant guarantees:
``epsilon`` per participant per round and in total, never "per parameter".

Conventions shared by both transforms:

* ``fraction`` is **static** (a Python number): it fixes the top-k shape.
  Under ``optax.inject_hyperparams`` list it in ``static_args``, and ``key``
  too: optax would keep the caller's key buffer, uncopied, in its
  ``hyperparams``, where a donated state deletes it.
* ``scope="global"`` ranks all leaves as one vector (the paper's ``|w|``);
  ``"per_leaf"``/``"per_layer"``/callable keep ``ceil(fraction * n_k)`` in
  every group ``k`` (see :mod:`ssgd_optax.grouping`).
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

:func:`dp_selective_sharing` instead **drops** every non-finite entry (NaN,
``+-Inf`` count as 0) before its noisy selection, so its release is always
finite and never reveals that an entry was non-finite. Both transforms keep
a copy of their key in the state (``init`` may follow a ``jit`` that donated
an earlier state) and split it on every update (:mod:`ssgd_optax._keys`).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from ssgd_optax import _keys
from ssgd_optax import _validation
from ssgd_optax import grouping as grouping_lib

__all__ = [
  'STRATEGIES',
  'SelectiveSharingState',
  'DPSelectiveSharingState',
  'DPSparseVectorPrivacy',
  'SparseVectorMechanism',
  'num_shared',
  'selective_sharing',
  'dp_selective_sharing',
  'dp_selective_sharing_privacy',
  'sparse_vector_mechanism',
  'epsilon_from_per_parameter',
]

STRATEGIES = ('largest', 'threshold_random')


class SelectiveSharingState(NamedTuple):
  """State of :func:`selective_sharing` with a random strategy.

  Attributes:
    key: a typed PRNG key (``jax.random.key``), split on every update so
      that no key is used twice.
  """
  key: jax.Array


class DPSelectiveSharingState(NamedTuple):
  """State of :func:`dp_selective_sharing`.

  Attributes:
    key: a typed PRNG key, split on every update.
    rounds: how many updates (rounds) have been released so far; the total
      privacy cost is ``rounds * epsilon`` (see
      :func:`dp_selective_sharing_privacy`).
  """
  key: jax.Array
  rounds: jax.Array


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
  _check_fraction(fraction)
  # Round to 9 decimals first: 0.07 is stored as 0.07000000000000000666,
  # which would otherwise round 7 up to 8.
  k = math.ceil(round(float(fraction) * size, 9))
  return int(min(max(k, 0), size))


def _check_fraction(fraction: Any) -> None:
  if isinstance(fraction, jax.core.Tracer):
    raise TypeError(
        'fraction must be a concrete Python number in [0, 1]: it fixes the '
        'shape of the top-k selection. Under optax.inject_hyperparams pass '
        "static_args=('fraction',).")
  _validation.check_probability('fraction', fraction)
  if _validation.concrete_float(fraction) is None:
    raise TypeError(f'fraction must be a concrete number in [0, 1]; got {fraction!r}.')


def _check_leaves(grouping: grouping_lib.Grouping, who: str) -> None:
  for path, leaf in zip(grouping.paths, grouping.leaves):
    dtype = jnp.result_type(leaf)
    if not jnp.issubdtype(dtype, jnp.floating):
      raise TypeError(
          f'{who} accepts only real floating-point leaves; leaf '
          f'{jax.tree_util.keystr(path)!r} has dtype {dtype}. Exclude it with '
          'optax.masked.')


def _groups(grouping: grouping_lib.Grouping) -> list[list[int]]:
  members: list[list[int]] = [[] for _ in range(grouping.num_groups)]
  for i, k in enumerate(grouping.group_of_leaf):
    members[k].append(i)
  return members


def _flat_group(leaves: list[jax.Array]) -> jax.Array:
  """One vector for ranking; mixed dtypes are promoted (magnitudes only)."""
  dtype = jnp.result_type(*leaves)
  return jnp.concatenate([jnp.ravel(x).astype(dtype) for x in leaves])


def _split_like(flat: jax.Array, leaves: list[jax.Array]) -> list[jax.Array]:
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
  differential privacy (see :func:`dp_selective_sharing`); the entries it
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
  >>> tx = ssgd_optax.selective.selective_sharing(0.5, clip=2.0)
  >>> g = {'a': jnp.array([0.1, -3.0]), 'b': jnp.array([1.0, 0.5])}
  >>> u, _ = tx.update(g, tx.init(g))
  >>> print(u['a'], u['b'])
  [ 0. -2.] [1. 0.]
  """
  _check_fraction(fraction)
  _validation.check_choice('strategy', strategy, STRATEGIES)
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
    _check_leaves(grouping, 'selective_sharing')
    leaves = [jnp.asarray(x) for x in grouping.leaves]
    out = list(leaves)
    if random:
      next_key, step_key = _keys.split_step(state.key)
      state = SelectiveSharingState(key=next_key)
    for gi, members in enumerate(_groups(grouping)):
      group = [leaves[i] for i in members]
      n = sum(x.size for x in group)
      if n == 0:
        continue
      flat = _flat_group(group)
      k = num_shared(n, fraction)
      group_key = jax.random.fold_in(step_key, gi) if random else None
      mask = _select(flat, k, strategy, threshold, group_key)
      for i, m in zip(members, _split_like(mask, group)):
        x = leaves[i]
        out[i] = jnp.where(m, _clip(x, clip), jnp.zeros((), x.dtype))
    return jax.tree_util.tree_unflatten(grouping.treedef, out), state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


class _SparseVectorScales(NamedTuple):
  """Laplace scales of one NumericSparse release (Dwork & Roth, Alg. 3).

  With ``c`` releases, sensitivity ``Delta = 2 gamma``, ``eps_1 = 8 eps / 9``
  and ``eps_2 = 2 eps / 9``, and ``b(e) = 2 c Delta / e``:

  Attributes:
    threshold: ``b(eps_1)``, the noise of the threshold, redrawn per release.
    query: ``2 b(eps_1)``, the noise of every threshold test.
    value: ``b(eps_2)``, the noise of every released value: the value
      releases cost ``eps_2 / 2 = eps / 9`` in all, so a round costs
      ``8 eps / 9 + eps / 9 = eps``.
  """
  threshold: jax.Array
  query: jax.Array
  value: jax.Array


def _sparse_vector_scales(k: int, epsilon: Any, clip: Any) -> _SparseVectorScales:
  sens = 2.0 * clip
  eps1 = 8.0 * epsilon / 9.0
  eps2 = 2.0 * epsilon / 9.0
  b_threshold = 2.0 * k * sens / eps1
  # Shokri & Shmatikov and NumericSparse: b(eps_2) = 2 c Delta / eps_2. Half
  # of it would make the value releases cost 2 eps / 9 and a round 10 eps / 9.
  b_value = 2.0 * k * sens / eps2
  return _SparseVectorScales(b_threshold, 2.0 * b_threshold, b_value)


def _bounded_entries(flat: jax.Array, clip: jax.Array) -> jax.Array:
  """``clip(x, -gamma, gamma)`` in float32, non-finite entries replaced by 0.

  Every query ``|x_j|`` and every value is then in ``[0, gamma]`` resp.
  ``[-gamma, gamma]`` whatever the input, which is what the sensitivity
  ``2 gamma`` rests on. A non-finite entry is dropped (0, no contribution)
  rather than clipped to ``+-gamma``: an overflowed or NaN entry carries no
  usable value, and NaN has no sign to clip to.
  """
  x = flat.astype(jnp.float32)
  x = jnp.where(jnp.isfinite(x), x, 0.0)
  return jnp.clip(x, -clip, clip)


def _numeric_sparse(flat: jax.Array, k: int, epsilon: jax.Array, clip: jax.Array,
                    threshold: jax.Array, key: jax.Array) -> jax.Array:
  """NumericSparse (Dwork & Roth, Alg. 3) over ``flat``, in float32.

  Query ``j`` is ``|clip(x_j)|``; answers above a noisy threshold release a
  noisy, re-clipped value; at most ``k`` releases; entries visited in a
  uniformly random order. Sensitivity ``2 * clip`` for every query and value;
  the scales are :func:`_sparse_vector_scales`.
  """
  n = flat.shape[0]
  x = _bounded_entries(flat, clip)
  scales = _sparse_vector_scales(k, epsilon, clip)
  k_perm, k_thr, k_query, k_value = jax.random.split(key, 4)
  order = jax.random.permutation(k_perm, n)
  thr_noise = scales.threshold * jax.random.laplace(k_thr, (k + 1,), jnp.float32)
  noisy_query = (jnp.abs(x[order])
                 + scales.query * jax.random.laplace(k_query, (n,), jnp.float32))

  # Inherently sequential: the threshold noise is redrawn after every hit.
  def body(carry, q):
    count, = carry
    hit = (count < k) & (q >= threshold + thr_noise[jnp.minimum(count, k)])
    return (count + hit.astype(jnp.int32),), hit

  _, hits = jax.lax.scan(body, (jnp.zeros((), jnp.int32),), noisy_query, unroll=8)
  noise = scales.value * jax.random.laplace(k_value, (n,), jnp.float32)
  released = jnp.clip(x[order] + noise, -clip, clip)
  # x is finite, so NaN here comes only from an overflowing scale (inf * 0
  # for a tiny epsilon or a huge gamma): replacing it does not depend on x.
  released = jnp.where(jnp.isnan(released), 0.0, released)
  out_perm = jnp.where(hits, released, 0.0)
  return jnp.zeros((n,), jnp.float32).at[order].set(out_perm)


class SparseVectorMechanism(NamedTuple):
  r"""The sparse-vector release (NumericSparse) of one DSSGD upload.

  Attributes:
    fraction: ``theta_u``, static; sets ``c = ceil(fraction * |w|)``.
    epsilon: ``> 0``, the cost of one released update (may be traced).
    clip: ``gamma > 0``, the truncation bound (may be traced).
    threshold: ``tau >= 0`` (may be traced).

  The epsilon split is ``eps_1 = 8 eps / 9`` for the threshold tests and
  ``eps_2 = 2 eps / 9`` for the values (whose ``c`` releases cost
  ``eps_2 / 2 = eps / 9``); the Laplace scales for an update of ``|w|``
  entries are :meth:`scales`.

  Guarantees:
    * Neighbouring relation: **replace one participant's contribution** to
      the round: the participant's whole local data set may be replaced by any
      other (equivalently, its gradient by any other gradient), because every
      query and value is truncated to ``[-gamma, gamma]`` whatever the data.
      This is participant-level (user-level) DP, not example-level, and there
      is no sampling amplification.
    * Sensitivity: ``Delta f = 2 gamma`` for every query ``|clip(g_j)|`` and
      every value ``clip(g_j)`` (L1 and L-infinity: one entry per query).
    * Each released update is pure ``epsilon``-DP; ``R`` rounds compose to
      ``(R epsilon, 0)``, or less at ``delta > 0``
      (:func:`ssgd_optax.privacy.compute_epsilon` with this mechanism, or
      :func:`dp_selective_sharing_privacy`). ``epsilon / c`` ("per
      parameter") is **not** a guarantee.
  """

  fraction: float
  epsilon: Any
  clip: Any
  threshold: Any = 0.0

  @property
  def sensitivity(self) -> Any:
    """``Delta f = 2 gamma``, of every query and every released value."""
    return 2.0 * self.clip

  @property
  def epsilon_split(self) -> tuple[Any, Any]:
    """``(eps_1, eps_2) = (8 eps / 9, 2 eps / 9)``."""
    return 8.0 * self.epsilon / 9.0, 2.0 * self.epsilon / 9.0

  @property
  def neighboring_relation(self) -> str:
    return 'replace_one'

  def num_shared(self, num_params: int) -> int:
    """``c = ceil(fraction * num_params)``, releases per round."""
    return num_shared(num_params, self.fraction)

  def scales(self, num_params: int) -> _SparseVectorScales:
    """The Laplace scales (threshold, query, value) for ``num_params`` entries."""
    return _sparse_vector_scales(self.num_shared(num_params), self.epsilon, self.clip)

  def privacy(self, rounds: int, *, num_params: int,
              delta: float | None = None) -> DPSparseVectorPrivacy:
    """:func:`dp_selective_sharing_privacy` of ``rounds`` releases."""
    return dp_selective_sharing_privacy(self.epsilon, rounds, num_params=num_params,
                                        fraction=self.fraction, delta=delta)


def _check_sparse_vector(fraction, epsilon, clip, threshold) -> None:
  _check_fraction(fraction)
  _validation.check_positive('epsilon', epsilon)
  if clip is None:
    raise ValueError('clip (gamma) is required by dp_selective_sharing: it bounds '
                     'the sensitivity; got None.')
  _validation.check_positive('clip', clip)
  _validation.check_nonnegative('threshold', threshold)


def sparse_vector_mechanism(fraction: float, *, epsilon: Any, clip: Any,
                            threshold: Any = 0.0) -> SparseVectorMechanism:
  """The mechanism of :func:`dp_selective_sharing` (validated).

  Args:
    fraction: static ``theta_u`` in ``[0, 1]``.
    epsilon: ``> 0``, the cost of one released update.
    clip: ``gamma > 0``, finite.
    threshold: ``tau >= 0``.

  Returns:
    A :class:`SparseVectorMechanism`, to pass as ``mechanism=`` to
    :func:`dp_selective_sharing` and to the accountant.

  Example:

  >>> m = sparse_vector_mechanism(0.1, epsilon=0.9, clip=0.5)
  >>> m.sensitivity, m.num_shared(1000), [round(e, 2) for e in m.epsilon_split]
  (1.0, 100, [0.8, 0.2])
  """
  _check_sparse_vector(fraction, epsilon, clip, threshold)
  return SparseVectorMechanism(fraction, epsilon, clip, threshold)


_UNSET = object()


def dp_selective_sharing(fraction: float | None = None,
                         *,
                         epsilon: Any = None,
                         clip: Any = None,
                         threshold: Any = _UNSET,
                         key: Any = None,
                         mechanism: SparseVectorMechanism | None = None
                         ) -> optax.GradientTransformationExtraArgs:
  r"""Differentially private selective sharing (DSSGD's sparse vector release).

  Every update is released by NumericSparse (Dwork & Roth 2014, Alg. 3), as
  in Shokri & Shmatikov's DP experiments, with ``c = ceil(fraction * |w|)``
  releases over the whole update, per-entry sensitivity
  ``Delta f = 2 * gamma`` (entries truncated to ``[-gamma, gamma]``),
  ``eps_1 = 8 eps / 9`` and ``eps_2 = 2 eps / 9``:

  .. math::

    \hat\tau &= \tau + \mathrm{Lap}(2 c \Delta f / \epsilon_1)
      \quad\text{(redrawn after every release)} \\
    \text{for $j$ in random order:}\quad
      &\text{if } |\bar g_j| + \mathrm{Lap}(4 c \Delta f/\epsilon_1) \ge \hat\tau:
      u_j = \operatorname{clip}(\bar g_j + \mathrm{Lap}(2 c\Delta f/\epsilon_2),
      -\gamma, \gamma),

  stopping after ``c`` releases; ``bar g = clip(g, -gamma, gamma)`` with
  every non-finite entry (NaN, ``+-Inf``) of ``g`` set to 0 first, all other
  entries 0. The threshold tests cost ``eps_1`` and the ``c`` value releases
  ``c * Delta f / (2 c Delta f / eps_2) = eps_2 / 2 = eps / 9``, so each update
  is ``epsilon``-DP (pure DP) **with respect to the participant's whole
  contribution to that round** (any change of its local data), because every
  query and value is bounded by ``Delta f`` no matter what the data are.
  Rounds compose: after ``R`` rounds the participant has spent
  ``R * epsilon`` (basic composition), or less for a ``delta > 0`` (see
  :func:`dp_selective_sharing_privacy`). The often-quoted "epsilon per
  parameter" (``epsilon / c``) is **not** a guarantee.

  The whole tree forms one vector (the paper's ``|w|``); the scan over its
  entries is sequential, ``O(|w|)`` steps per update. Computed in float32 and
  cast back to each leaf's dtype (a post-processing step: in bf16/fp16 a value
  may round to half an ulp beyond ``gamma``). Non-finite entries are dropped
  (treated as 0, not clipped to ``+-gamma``), so one Inf or NaN neither makes
  the release non-finite nor reveals itself.

  Pass either ``mechanism=`` (a :class:`SparseVectorMechanism`, the
  object the accountant reads too; see its "Guarantees") or the four
  numbers, not both.

  Args:
    fraction: static ``theta_u`` in ``[0, 1]``; sets ``c``.
    epsilon: ``> 0`` (may be traced): the privacy cost of one update, per
      participant per round.
    clip: ``gamma > 0``, finite (may be traced): the truncation bound; it sets
      the sensitivity ``2 * gamma``.
    threshold: ``tau >= 0`` (may be traced).
    key: a PRNG key (``jax.random.key``), required; kept in the state and
      split on every update.
    mechanism: a :class:`SparseVectorMechanism` (from
      :func:`sparse_vector_mechanism`) instead of ``fraction``, ``epsilon``,
      ``clip`` and ``threshold``.

  Returns:
    A :class:`optax.GradientTransformationExtraArgs` with a
    :class:`DPSelectiveSharingState` (key and number of rounds released).

  Example:

  >>> import jax, jax.numpy as jnp
  >>> import ssgd_optax
  >>> tx = ssgd_optax.selective.dp_selective_sharing(
  ...     0.25, epsilon=1.0, clip=0.1, key=jax.random.key(0))
  >>> g = {'w': jnp.arange(8.0) / 10}
  >>> u, state = tx.update(g, tx.init(g))
  >>> int((u['w'] != 0).sum()) <= 2, int(state.rounds)
  (True, 1)
  """
  if mechanism is not None:
    if not isinstance(mechanism, SparseVectorMechanism):
      raise TypeError('mechanism must be a SparseVectorMechanism (sparse_vector_mechanism); '
                      f'got {type(mechanism).__name__}.')
    given = [n for n, v in (('fraction', fraction), ('epsilon', epsilon), ('clip', clip))
             if v is not None] + (['threshold'] if threshold is not _UNSET else [])
    if given:
      raise ValueError(f'dp_selective_sharing got mechanism= and {", ".join(given)}: pass '
                       'either the mechanism or the numbers, not both.')
    fraction, epsilon, clip, threshold = mechanism
  elif fraction is None:
    raise ValueError('dp_selective_sharing needs fraction (theta_u in [0, 1]) or mechanism=.')
  if threshold is _UNSET:
    threshold = 0.0
  _check_sparse_vector(fraction, epsilon, clip, threshold)
  typed_key = _keys.check_key(key)

  def init_fn(params):
    del params
    return DPSelectiveSharingState(key=_keys.copy_key(typed_key),
                                   rounds=jnp.zeros((), jnp.int32))

  def update_fn(updates, state, params=None, **extra_args):
    del params, extra_args
    grouping = grouping_lib.resolve_groups(updates, 'global')
    _check_leaves(grouping, 'dp_selective_sharing')
    leaves = [jnp.asarray(x) for x in grouping.leaves]
    next_key, step_key = _keys.split_step(state.key)
    new_state = DPSelectiveSharingState(key=next_key, rounds=state.rounds + 1)
    n = sum(x.size for x in leaves)
    if n == 0:
      return updates, new_state
    k = num_shared(n, fraction)
    if k == 0:
      out = [jnp.zeros_like(x) for x in leaves]
    else:
      flat = _numeric_sparse(
          _flat_group(leaves), k, jnp.asarray(epsilon, jnp.float32),
          jnp.asarray(clip, jnp.float32), jnp.asarray(threshold, jnp.float32), step_key)
      out = [y.astype(x.dtype) for x, y in zip(leaves, _split_like(flat, leaves))]
    return jax.tree_util.tree_unflatten(grouping.treedef, out), new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


class DPSparseVectorPrivacy(NamedTuple):
  """What :func:`dp_selective_sharing` guarantees one participant.

  Attributes:
    epsilon_per_round: pure-DP ``epsilon`` of one released update.
    rounds: number of released updates (rounds/epochs with an upload).
    total_epsilon: ``rounds * epsilon_per_round``: pure ``(eps, 0)``-DP by
      basic composition.
    delta: the ``delta`` of ``total_epsilon_at_delta`` (``None`` if not asked).
    total_epsilon_at_delta: the tighter ``(eps, delta)`` of the same
      ``rounds``-fold composition, from ``dp_accounting``'s privacy-loss
      distribution (``None`` when ``delta`` is ``None``).
    num_shared: ``c``, releases per round.
  """
  epsilon_per_round: float
  rounds: int
  total_epsilon: float
  delta: float | None
  total_epsilon_at_delta: float | None
  num_shared: int


def dp_selective_sharing_privacy(epsilon: float,
                                 rounds: int,
                                 *,
                                 num_params: int,
                                 fraction: float,
                                 delta: float | None = None) -> DPSparseVectorPrivacy:
  r"""The privacy cost of :func:`dp_selective_sharing`, per participant.

  One round is ``epsilon``-DP; ``R`` rounds are ``(R epsilon, 0)``-DP and, for
  ``delta > 0``, ``(epsilon', delta)``-DP with ``epsilon'`` from the optimal
  composition of ``R`` pure ``epsilon``-DP mechanisms computed by
  ``dp_accounting`` (privacy-loss distributions; needs the ``privacy``
  extra). The guarantee covers a participant's whole local data set.

  Args:
    epsilon: ``> 0``, the ``epsilon`` passed to :func:`dp_selective_sharing`.
    rounds: ``>= 0`` released updates.
    num_params: ``|w|``, the number of entries in the update.
    fraction: ``theta_u``, to report ``c`` (the cost does not depend on it:
      the noise grows with ``c`` instead).
    delta: ``None`` or in ``(0, 1)``.

  Returns:
    A :class:`DPSparseVectorPrivacy`.

  Example:

  >>> from ssgd_optax.selective import dp_selective_sharing_privacy
  >>> p = dp_selective_sharing_privacy(0.5, 10, num_params=1000, fraction=0.1)
  >>> p.total_epsilon, p.num_shared
  (5.0, 100)
  """
  _validation.check_positive('epsilon', epsilon)
  _validation.check_int('rounds', rounds, minimum=0)
  _validation.check_int('num_params', num_params, minimum=0)
  c = num_shared(num_params, fraction)
  eps = float(epsilon)
  at_delta = None
  if delta is not None:
    _validation.check_probability('delta', delta, open_left=True)
    if float(delta) >= 1:
      raise ValueError(f'delta must be in (0, 1); got {delta!r}.')
    if rounds == 0:
      at_delta = 0.0
    else:
      try:
        from dp_accounting.pld import common
        from dp_accounting.pld import privacy_loss_distribution as pld
      except ImportError as e:  # pragma: no cover - depends on the install
        raise ImportError('delta > 0 accounting needs dp-accounting: '
                          'pip install "ssgd_optax[privacy]".') from e
      loss = pld.from_privacy_parameters(common.DifferentialPrivacyParameters(eps, 0.0))
      at_delta = min(float(loss.self_compose(rounds).get_epsilon_for_delta(float(delta))),
                     rounds * eps)
  return DPSparseVectorPrivacy(eps, rounds, rounds * eps,
                               None if delta is None else float(delta), at_delta, c)


def epsilon_from_per_parameter(per_parameter_epsilon: float, *, num_params: int,
                               fraction: float) -> float:
  r"""Converts the paper's "privacy budget per parameter" to a real epsilon.

  Shokri & Shmatikov plot accuracy against ``epsilon / c``; the mechanism's
  cost per participant per round is ``epsilon = (epsilon / c) * c`` with
  ``c = ceil(theta_u * |w|)`` (McSherry's critique). Use this to read their
  figures, and log the result, never the per-parameter value.

  Args:
    per_parameter_epsilon: ``> 0``.
    num_params: ``|w|``.
    fraction: ``theta_u``.

  Returns:
    ``epsilon`` per participant per round (a float).

  Example:

  >>> epsilon_from_per_parameter(1.0, num_params=105_506, fraction=0.1)
  10551.0
  """
  _validation.check_positive('per_parameter_epsilon', per_parameter_epsilon)
  _validation.check_int('num_params', num_params, minimum=0)
  return float(per_parameter_epsilon) * num_shared(num_params, fraction)
