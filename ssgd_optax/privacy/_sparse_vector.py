# Copyright 2026 The ssgd_optax Authors. Licensed under the Apache License 2.0.
"""The sparse-vector release of DSSGD: differentially private selective sharing.

:func:`dp_selective_sharing` is the DP variant of
:func:`ssgd_optax.selective_sharing` used in Shokri & Shmatikov's DP
experiments (Dwork & Roth's NumericSparse), :class:`SparseVectorMechanism`
the mechanism object that the transform and the accountant read, and
:func:`dp_selective_sharing_privacy` the report of what it guarantees:
``epsilon`` per participant per round and in total, never "per parameter".

Every non-finite entry (NaN, ``+-Inf``) is **dropped** (counts as 0) before the
noisy selection, so the release is always finite and never reveals that an
entry was non-finite. The transform keeps a copy of its key in the state and
splits it on every update (:mod:`ssgd_optax._keys`).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import dp_accounting
import jax
import jax.numpy as jnp
import optax

from ssgd_optax import _keys
from ssgd_optax import _selective as selective
from ssgd_optax import _validation
from ssgd_optax import _grouping as grouping_lib
from ssgd_optax.privacy import _accounting as accounting
from ssgd_optax.privacy import _mechanisms as mechanisms

__all__ = [
    'DPSelectiveSharingState',
    'DPSparseVectorPrivacy',
    'SparseVectorMechanism',
    'dp_selective_sharing',
    'dp_selective_sharing_privacy',
    'epsilon_from_per_parameter',
    'sparse_vector_mechanism',
]


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
    return mechanisms.REPLACE_ONE

  @property
  def noise_multiplier(self) -> None:
    """``None``: the noise is Laplace, with the scales of :meth:`scales`."""
    return None

  @property
  def stddev(self) -> None:
    """``None``: the noise is Laplace, with the scales of :meth:`scales`."""
    return None

  @property
  def num_releases(self) -> int:
    """One pure ``epsilon``-DP release (the whole update) per round."""
    return 1

  @property
  def sampled(self) -> bool:
    """``False``, not sampled; every round releases the participant's update."""
    return False

  def dp_event(self, *, sampling_rate: float | None = None, accountant: str = 'pld',
               num_examples: int | None = None,
               max_batch_size: int | None = None) -> dp_accounting.DpEvent:
    """One round: binary randomized response at ``epsilon``, the tight pure-DP event.

    Any pure ``epsilon``-DP mechanism is dominated by randomized response
    with ``P[flip] = 1 / (1 + e^epsilon)`` (Kairouz, Oh & Viswanath), so
    composing this event gives the optimal composition of the rounds
    (replace-one relation).
    """
    del accountant
    if sampling_rate not in (None, 1, 1.0) or num_examples is not None or (
        max_batch_size is not None):
      raise ValueError('The sparse-vector release is not sampled: sampling_rate must be None '
                       'and num_examples/max_batch_size unset.')
    eps = _validation.concrete_float(self.epsilon)
    if eps is None:
      raise TypeError('SparseVectorMechanism.epsilon must be a concrete number for accounting; '
                      f'got {type(self.epsilon).__name__}.')
    # RandomizedResponseDpEvent's noise_parameter is the probability of a
    # uniformly random answer: 2 / (1 + e^eps) over 2 buckets.
    return dp_accounting.RandomizedResponseDpEvent(noise_parameter=2.0 / (1.0 + math.exp(eps)),
                                                   num_buckets=2)

  def num_shared(self, num_params: int) -> int:
    """``c = ceil(fraction * num_params)``, releases per round."""
    return selective.num_shared(num_params, self.fraction)

  def scales(self, num_params: int) -> _SparseVectorScales:
    """The Laplace scales (threshold, query, value) for ``num_params`` entries."""
    return _sparse_vector_scales(self.num_shared(num_params), self.epsilon, self.clip)

  def privacy(self, rounds: int, *, num_params: int,
              delta: float | None = None) -> DPSparseVectorPrivacy:
    """:func:`dp_selective_sharing_privacy` of ``rounds`` releases."""
    return dp_selective_sharing_privacy(self.epsilon, rounds, num_params=num_params,
                                        fraction=self.fraction, delta=delta)


def _check_sparse_vector(fraction, epsilon, clip, threshold) -> None:
  selective.check_fraction(fraction)
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
  >>> from ssgd_optax import privacy
  >>> tx = privacy.dp_selective_sharing(
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
    selective.check_leaves(grouping, 'dp_selective_sharing')
    leaves = [jnp.asarray(x) for x in grouping.leaves]
    next_key, step_key = _keys.split_step(state.key)
    new_state = DPSelectiveSharingState(key=next_key, rounds=state.rounds + 1)
    n = sum(x.size for x in leaves)
    if n == 0:
      return updates, new_state
    k = selective.num_shared(n, fraction)
    if k == 0:
      out = [jnp.zeros_like(x) for x in leaves]
    else:
      flat = _numeric_sparse(
          selective.flat_group(leaves), k, jnp.asarray(epsilon, jnp.float32),
          jnp.asarray(clip, jnp.float32), jnp.asarray(threshold, jnp.float32), step_key)
      out = [y.astype(x.dtype) for x, y in zip(leaves, selective.split_like(flat, leaves))]
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

  >>> from ssgd_optax.privacy import dp_selective_sharing_privacy
  >>> p = dp_selective_sharing_privacy(0.5, 10, num_params=1000, fraction=0.1)
  >>> p.total_epsilon, p.num_shared
  (5.0, 100)
  """
  _validation.check_positive('epsilon', epsilon)
  _validation.check_int('rounds', rounds, minimum=0)
  _validation.check_int('num_params', num_params, minimum=0)
  c = selective.num_shared(num_params, fraction)
  eps = float(epsilon)
  at_delta = None
  if delta is not None:
    _validation.check_probability('delta', delta, open_left=True)
    if float(delta) >= 1:
      raise ValueError(f'delta must be in (0, 1); got {delta!r}.')
    # The accountant's exact composition (one path for every mechanism).
    mechanism = SparseVectorMechanism(fraction, eps, 1.0)
    at_delta = min(accounting.compute_epsilon(mechanism, steps=rounds, delta=float(delta)),
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
  return float(per_parameter_epsilon) * selective.num_shared(num_params, fraction)
