# Copyright 2026 The ssgd_optax Authors. Licensed under the Apache License 2.0.
r"""The server side of one DSSGD round, written once.

The in-process simulation (:func:`~ssgd_optax.federated.make_dssgd`), the
Flower apps (:mod:`~ssgd_optax.federated.flower`) and ``examples/federated.py``
all run their rounds through these functions: the orders, the keys of a round,
the check of an upload, the rule that turns uploads (or their secure sum) into
one update of the global parameters, and the :class:`RoundReport`.

Orders (``order=``), one vocabulary everywhere:

==================  ===========================================================
``"round_robin"``   participants ``0..N-1`` in turn; each downloads what the
                    previous ones uploaded; the server **adds** every upload
``"random"``        the same in a fresh random order every round
``"synchronous"``   every participant trains from the same global model (its
                    own download mask); the server applies the **mean** of the
                    round's accepted uploads, once
``"asynchronous"``  (simulation only) groups of ``concurrency`` participants
                    train at once from the same, possibly stale, download; the
                    server adds every upload
==================  ===========================================================

Secure aggregation is an option, not an order: :class:`SecureAggregation`
(threshold, encoding, distributed DP) with ``order="synchronous"``, the only
order in which the server receives a round's uploads together. The server
then sees only their sum ``S`` over the survivors ``U3`` and applies

.. math::

  w \leftarrow w + S / |U3|,

the same mean as the plain synchronous order (so secure aggregation changes
what the server sees, and the fixed-point rounding, not the model).

**Why the mean.** Shokri & Shmatikov's server adds each upload (no averaging),
but each of their uploads is computed on a model that already holds the
uploads before it (round robin, random or unsynchronised order). In a
synchronous round all ``N`` updates are computed on one model, so their sum is
``N`` local steps taken from one point: a step ``N`` times as long. Measured
on ``examples/federated.py``'s setting (MNIST subset, 30 participants, 10
rounds, lr 0.05; ``benchmarks/federated_rounds.py --study rule``, 3 seeds):
adding the secure sum reached 20.5 % test accuracy, the mean 86.8 % (the plain
synchronous mean 86.9 %). The mean also keeps the step size independent of
how many participants survive a round (the server knows ``|U3|``).

Keys, for the key ``k`` of a round (the simulation's ``state.key``; the
Flower server's chain from its ``key``):
``(next, order, rest) = split(k, 3)`` (:func:`round_keys`), and participant
``i`` downloads with and trains with ``split(fold_in(rest, i))``
(:func:`participant_keys`). A client that must not accept randomness from the
server (the Flower client) derives its training key this way only when given
the run's key on purpose (testing), and draws it from the OS otherwise.

Uploads: an upload of the wrong shape is refused (:func:`check_upload`); an
upload with a non-finite entry, or from a participant that dropped out, is
not accepted and leaves the server state bit-for-bit unchanged.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ssgd_optax import _validation
from ssgd_optax.federated import _server as server_lib

__all__ = ['ORDERS', 'SEQUENTIAL_ORDERS', 'SecureAggregation', 'RoundConfig', 'RoundKeys',
           'RoundReport', 'check_order', 'check_secure_aggregation', 'default_threshold',
           'round_keys', 'round_keys_at', 'participant_keys', 'participant_download',
           'turn_order', 'check_upload', 'add_upload', 'mean_update', 'apply_mean',
           'secure_update', 'apply_secure_sum', 'end_round']

ORDERS = ('round_robin', 'random', 'synchronous', 'asynchronous')
SEQUENTIAL_ORDERS = ('round_robin', 'random')


class SecureAggregation(NamedTuple):
  """Secure aggregation of a synchronous round's uploads (the option, with its settings).

  Attributes:
    threshold: Shamir threshold ``t`` with ``N/2 < t <= N``; ``None``:
      ``max(2, ceil(2N/3))``.
    frac_bits: fixed-point fractional bits of the encoding.
    bits: the ring, 32 or 64.
    clip: the largest ``|entry|`` of an upload (e.g. selective sharing's
      ``gamma``), or ``None`` for the ring's limit; see
      :func:`~ssgd_optax.federated.secure_aggregation.clip_limit`.
    dp: a :class:`~ssgd_optax.federated.distributed_dp.DistributedDiscreteGaussianMechanism`
      (every participant adds its share of noise; ``dimension`` = the number
      of parameters, ``frac_bits``/``bits`` as here, no ``clip``), or ``None``.
  """
  threshold: int | None = None
  frac_bits: int = 16
  bits: int = 32
  clip: float | None = None
  dp: Any = None


class RoundConfig(NamedTuple):
  """How the rounds of a DSSGD run go: what the simulation and the Flower server both run.

  Attributes:
    num_participants: ``N``.
    order: one of :data:`ORDERS`.
    theta_d: the download fraction.
    download: ``"most_updated"`` or ``"random"``.
    stat_decay: ``beta`` of the server statistics.
    max_staleness: rounds a download may lag (``"asynchronous"`` only).
    concurrency: participants training at once (``"asynchronous"`` only).
    secure_aggregation: a validated :class:`SecureAggregation` (``"synchronous"``
      only) or ``None``.
  """
  num_participants: int
  order: str
  theta_d: float
  download: str
  stat_decay: Any
  max_staleness: int
  concurrency: int
  secure_aggregation: SecureAggregation | None


def check_order(order: Any) -> None:
  """Raises ``ValueError`` unless ``order`` is one of :data:`ORDERS`."""
  _validation.check_choice('order', order, ORDERS)


def default_threshold(num_participants: int) -> int:
  """``max(2, ceil(2N/3))``: a strict majority with room for dropouts."""
  return max(2, -(-2 * num_participants // 3))


def check_secure_aggregation(secure: Any, *, num_participants: int,
                             num_params: int) -> SecureAggregation:
  """Validates ``secure`` for ``N`` participants and ``P`` parameters; fills the threshold.

  Args:
    secure: a :class:`SecureAggregation`.
    num_participants: ``N >= 2``.
    num_params: ``P``, entries of an upload.

  Returns:
    ``secure`` with ``threshold`` set. Raises ``TypeError``/``ValueError``
    naming the field (threshold, encoding, distributed DP) otherwise.

  Example:

  >>> check_secure_aggregation(SecureAggregation(), num_participants=6,
  ...                          num_params=10).threshold
  4
  """
  if not isinstance(secure, SecureAggregation):
    raise TypeError('secure_aggregation must be a SecureAggregation(threshold=, frac_bits=, '
                    f'bits=, clip=, dp=) or None; got {type(secure).__name__}.')
  _validation.check_int('num_participants', num_participants, minimum=2)
  t = default_threshold(num_participants) if secure.threshold is None else secure.threshold
  _validation.check_int('threshold', t, minimum=1)
  if not num_participants / 2 < t <= num_participants:
    raise ValueError(f'threshold must satisfy N/2 < threshold <= N = {num_participants}; got '
                     f'{t} (a smaller one lets a server split the participants).')
  secure = secure._replace(threshold=int(t))
  if secure.dp is not None and getattr(secure.dp, 'dimension', num_params) != num_params:
    raise ValueError(f'secure_aggregation.dp.dimension={secure.dp.dimension} must be the '
                     f'number of parameters, {num_params}.')
  from ssgd_optax.federated import secure_aggregation as sa  # pylint: disable=g-import-not-at-top
  # The protocol's own checks of the encoding and of the mechanism, now rather
  # than in the first round.
  sa.Server(num_participants, secure.threshold, session=b'settings check',
            frac_bits=secure.frac_bits, bits=secure.bits, clip=secure.clip, dp=secure.dp)
  return secure


class RoundKeys(NamedTuple):
  """The keys of one round: ``split(key, 3)``.

  Attributes:
    next: the key of the next round.
    order: the random order (``"random"``), the staleness (``"asynchronous"``).
    rest: the participants' keys, :func:`participant_keys`.
  """
  next: jax.Array
  order: jax.Array
  rest: jax.Array


def round_keys(key: jax.Array) -> RoundKeys:
  """The keys of the round whose key is ``key``.

  Example:

  >>> import jax
  >>> k = round_keys(jax.random.key(0))
  >>> bool((jax.random.key_data(round_keys_at(jax.random.key(0), 1).rest)
  ...       == jax.random.key_data(round_keys(k.next).rest)).all())
  True
  """
  return RoundKeys(*jax.random.split(key, 3))


def round_keys_at(key: jax.Array, round_: int) -> RoundKeys:
  """The keys of round ``round_`` of a run that started from ``key`` (``round_`` splits)."""
  _validation.check_int('round_', round_, minimum=0)
  for _ in range(round_):
    key = round_keys(key).next
  return round_keys(key)


def participant_keys(rest: jax.Array, index: Any) -> tuple[jax.Array, jax.Array]:
  """``(download key, training key)`` of participant ``index``: ``split(fold_in(rest, index))``."""
  k_download, k_train = jax.random.split(jax.random.fold_in(rest, index))
  return k_download, k_train


def participant_download(state: server_lib.ServerState, rest: jax.Array, index: Any, *,
                         fraction: float, criterion: str) -> tuple[jax.Array, jax.Array]:
  """Participant ``index``'s download mask and training key (:func:`participant_keys`)."""
  k_download, k_train = participant_keys(rest, index)
  return server_lib.download_mask(state, fraction, key=k_download, criterion=criterion), k_train


def turn_order(order: str, key: jax.Array, num_participants: int) -> jax.Array:
  """The turns of a sequential round: ``0..N-1`` (``round_robin``) or a permutation (``random``)."""
  _validation.check_choice('order', order, SEQUENTIAL_ORDERS)
  if order == 'round_robin':
    return jnp.arange(num_participants)
  return jax.random.permutation(key, num_participants)


class RoundReport(NamedTuple):
  """What happened in one round.

  Attributes:
    round: the round index (from 0).
    asked: participants asked to upload.
    accepted: participants whose upload the server applied (with secure
      aggregation: the survivors ``U3`` of an applied round).
    dropped: participants counted as dropouts (no upload arrived).
    rejected: participants whose upload was not applied: non-finite (plain),
      or a non-finite secure sum (its survivors).
    unexpected: replies that answered no message of this round or came from
      a node other than the one asked (ignored; Flower only).
    shared: ``{participant: nonzero entries of its upload}`` for the uploads
      the server saw (empty with secure aggregation).
  """
  round: int
  asked: tuple[int, ...]
  accepted: tuple[int, ...]
  dropped: tuple[int, ...]
  rejected: tuple[int, ...]
  unexpected: int
  shared: dict[int, int]


def check_upload(upload: Any, num_params: int) -> jax.Array:
  """An upload as a ``(P,)`` array; raises ``ValueError`` for another shape or a non-number.

  A non-finite entry is not an error here: the server rule rejects it
  (counted, state untouched).
  """
  a = np.asarray(upload)
  if a.shape != (num_params,) or not (np.issubdtype(a.dtype, np.floating)
                                      or np.issubdtype(a.dtype, np.integer)):
    raise ValueError(f'an upload must be a real array of shape ({num_params},); got '
                     f'{a.dtype}{list(a.shape)}.')
  return jnp.asarray(a)


def add_upload(state: server_lib.ServerState, upload: jax.Array, *, active: Any = True,
               decay: Any = 1.0) -> tuple[server_lib.ServerState, jax.Array]:
  """The sequential rule (the paper's): the server **adds** one accepted upload.

  :func:`~ssgd_optax.federated.server_apply`: accepted only if ``active`` and
  finite; ``stats`` count its nonzero entries.
  """
  return server_lib.server_apply(state, upload, active=active, decay=decay)


def mean_update(uploads: jax.Array, active: Any = None) -> tuple[jax.Array, jax.Array]:
  """The synchronous rule: the mean of the accepted rows of ``uploads`` ``(N, P)``.

  A row is accepted if ``active`` and finite; rejected rows contribute
  nothing, not even through ``0 * NaN``. Zero when none is accepted.

  Returns:
    ``(update (P,), accepted bool (N,))``.

  Example:

  >>> import jax.numpy as jnp
  >>> u, ok = mean_update(jnp.array([[1., 0.], [3., 2.], [jnp.nan, 0.]]))
  >>> u.tolist(), ok.tolist()
  ([2.0, 1.0], [True, True, False])
  """
  uploads = jnp.asarray(uploads)
  n = uploads.shape[0]
  active = jnp.ones((n,), bool) if active is None else jnp.asarray(active, bool)
  ok = active & jnp.all(jnp.isfinite(uploads), axis=1)
  total = jnp.sum(jnp.where(ok[:, None], uploads, 0), axis=0)
  count = jnp.sum(ok)
  return total / jnp.maximum(count, 1).astype(total.dtype), ok


def apply_mean(state: server_lib.ServerState, uploads: jax.Array, *, active: Any = None,
               decay: Any = 1.0) -> tuple[server_lib.ServerState, jax.Array]:
  """Applies a synchronous round's plain uploads ``(N, P)``: their mean, once.

  ``w <- w + mean(accepted)``; ``stats`` count the nonzero entries of the
  mean once (as with secure aggregation, where the server sees only the sum).
  The round counter is not advanced (:func:`end_round`).

  Returns:
    ``(new_state, accepted bool (N,))``.
  """
  update, ok = mean_update(uploads, active)
  state, _ = server_lib.server_apply(state, update.astype(state.params.dtype),
                                     active=jnp.any(ok), decay=decay)
  return state, ok


def secure_update(total: Any, num_survivors: int, dtype: Any) -> np.ndarray:
  """The one rule for a secure sum: ``S / |U3|`` in float64, then cast to ``dtype``.

  Args:
    total: the decoded sum ``S`` of the survivors' uploads (float64 from
      ``Server.finish`` or ``secure_sum``).
    num_survivors: ``|U3| >= 1``.
    dtype: the global parameters' dtype.

  Returns:
    The update, a NumPy array of ``dtype``.

  Example:

  >>> secure_update([3.0, -1.5], 3, 'float32').tolist()
  [1.0, -0.5]
  """
  _validation.check_int('num_survivors', num_survivors, minimum=1)
  return (np.asarray(total, np.float64) / num_survivors).astype(dtype)


_apply_jit = jax.jit(server_lib.server_apply)


def apply_secure_sum(state: server_lib.ServerState, total: Any, *, round_: int,
                     asked: Any, survivors: Any, dropped: Any = (),
                     decay: Any = 1.0) -> tuple[server_lib.ServerState, RoundReport]:
  """Applies a secure round: :func:`secure_update` through ``server_apply``.

  A non-finite update (impossible for a range-checked sum, checked anyway) is
  rejected and leaves the state unchanged. The round counter is not advanced.

  Args:
    state: the server state.
    total: the decoded sum over ``survivors``.
    round_: the round index (for the report).
    asked: the participants asked to take part.
    survivors: ``U3``, whose uploads are in ``total`` (at least one).
    dropped: the participants counted as dropouts.
    decay: ``beta`` for the statistics.

  Returns:
    ``(new_state, RoundReport)``.
  """
  survivors = tuple(sorted(int(i) for i in survivors))
  update = secure_update(total, len(survivors), state.params.dtype)
  if update.shape != state.params.shape:
    raise ValueError(f'the secure sum has shape {update.shape}; the parameters '
                     f'{state.params.shape}.')
  state, ok = _apply_jit(state, jnp.asarray(update), decay=decay)
  ok = bool(ok)
  report = RoundReport(int(round_), tuple(sorted(int(i) for i in asked)),
                       survivors if ok else (), tuple(sorted(int(i) for i in dropped)),
                       () if ok else survivors, 0, {})
  return state, report


def end_round(state: server_lib.ServerState) -> server_lib.ServerState:
  """Advances the server's round counter (once per round, whatever the order)."""
  return state._replace(round=state.round + 1)
