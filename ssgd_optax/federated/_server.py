# Copyright 2026 The ssgd_optax Authors. Licensed under the Apache License 2.0.
"""The DSSGD parameter server: global parameters plus per-parameter statistics.

Parameters are kept as one flat float vector (``jax.flatten_util.ravel_pytree``
of the model's parameters). The server **adds** every accepted upload to the
global parameters (Shokri & Shmatikov: no averaging) and counts, per
parameter, how often it was updated (optionally decayed), which is what the
``"most_updated"`` download criterion ranks by.

An upload is *accepted* only if its participant is active (did not drop out)
and every entry is finite; a rejected upload leaves the state bit-for-bit
unchanged, so dropouts and broken clients never corrupt the server.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from ssgd_optax import _validation
from ssgd_optax._selective import num_shared

__all__ = ['DOWNLOAD_CRITERIA', 'ServerState', 'server_init', 'download_mask',
           'server_apply', 'server_apply_many']

DOWNLOAD_CRITERIA = ('most_updated', 'random')


class ServerState(NamedTuple):
  """State of the parameter server.

  Attributes:
    params: the global parameters, a flat vector ``(P,)``.
    stats: ``float32 (P,)``: how often each parameter was updated,
      ``stats <- decay * stats + 1[update_j != 0]`` per accepted upload.
    last_updated: ``int32 (P,)``: the round of each parameter's last update
      (``-1`` if never).
    round: ``int32`` scalar, rounds completed.
  """
  params: jax.Array
  stats: jax.Array
  last_updated: jax.Array
  round: jax.Array


def server_init(flat_params: jax.Array) -> ServerState:
  """A server holding ``flat_params`` with no update recorded yet.

  Args:
    flat_params: a 1-D floating-point array (the raveled model parameters).

  Returns:
    A :class:`ServerState`.

  Example:

  >>> import jax.numpy as jnp
  >>> s = server_init(jnp.zeros(3))
  >>> s.stats.tolist(), int(s.round)
  ([0.0, 0.0, 0.0], 0)
  """
  flat_params = jnp.asarray(flat_params)
  if flat_params.ndim != 1 or not jnp.issubdtype(flat_params.dtype, jnp.floating):
    raise ValueError('flat_params must be a 1-D floating-point array (use '
                     'jax.flatten_util.ravel_pytree); got '
                     f'{flat_params.dtype}{list(flat_params.shape)}.')
  p = flat_params.shape[0]
  return ServerState(flat_params, jnp.zeros((p,), jnp.float32),
                     jnp.full((p,), -1, jnp.int32), jnp.zeros((), jnp.int32))


def download_mask(state: ServerState, fraction: float, *, key: jax.Array,
                  criterion: str = 'most_updated') -> jax.Array:
  """Which parameters a participant downloads (``theta_d``).

  ``k = ceil(fraction * P)`` parameters: those with the largest update
  statistic (``"most_updated"``, ties broken uniformly at random so that no
  index is favoured before any update) or a uniformly random set
  (``"random"``).

  Args:
    state: the server state.
    fraction: static ``theta_d`` in ``[0, 1]``.
    key: a PRNG key (used by both criteria).
    criterion: ``"most_updated"`` or ``"random"``.

  Returns:
    A boolean ``(P,)`` mask.

  Example:

  >>> import jax, jax.numpy as jnp
  >>> s = server_init(jnp.zeros(4))._replace(stats=jnp.array([0., 3., 1., 2.]))
  >>> download_mask(s, 0.5, key=jax.random.key(0)).tolist()
  [False, True, False, True]
  """
  _validation.check_probability('fraction', fraction)
  _validation.check_choice('criterion', criterion, DOWNLOAD_CRITERIA)
  p = state.params.shape[0]
  k = num_shared(p, float(fraction))
  if k >= p:
    return jnp.ones((p,), bool)
  if k == 0:
    return jnp.zeros((p,), bool)
  perm = jax.random.permutation(key, p)
  score = state.stats if criterion == 'most_updated' else jnp.zeros((p,), jnp.float32)
  # top_k prefers lower indices among ties; ranking a random permutation
  # makes the tie-break uniform.
  _, idx = jax.lax.top_k(score[perm], k)
  return jnp.zeros((p,), bool).at[perm[idx]].set(True)


def _accepted(update: jax.Array, active: Any) -> jax.Array:
  return jnp.asarray(active, bool) & jnp.all(jnp.isfinite(update))


def server_apply(state: ServerState, update: jax.Array, *, active: Any = True,
                 decay: Any = 1.0) -> tuple[ServerState, jax.Array]:
  """Adds one participant's upload to the global parameters.

  ``w <- w + u`` and ``stats <- decay * stats + 1[u != 0]`` if the upload is
  accepted (``active`` and all-finite), else nothing changes. The round
  counter is not advanced (see :func:`server_apply_many` and the simulation).

  Args:
    state: the server state.
    update: ``(P,)`` upload (zeros where nothing is shared).
    active: bool (may be traced): ``False`` for a participant that dropped out.
    decay: ``beta`` in ``[0, 1]`` for the statistics.

  Returns:
    ``(new_state, accepted)``.

  Example:

  >>> import jax.numpy as jnp
  >>> s, ok = server_apply(server_init(jnp.zeros(2)), jnp.array([0., 1.]))
  >>> s.params.tolist(), s.stats.tolist(), bool(ok)
  ([0.0, 1.0], [0.0, 1.0], True)
  >>> s2, ok = server_apply(s, jnp.array([jnp.nan, 1.]))
  >>> s2.params.tolist(), bool(ok)
  ([0.0, 1.0], False)
  """
  _validation.check_probability('decay', decay)
  update = jnp.asarray(update)
  ok = _accepted(update, active)
  touched = ok & (update != 0)
  params = jnp.where(ok, state.params + jnp.where(ok, update, 0).astype(state.params.dtype),
                     state.params)
  stats = jnp.where(ok, jnp.asarray(decay, jnp.float32) * state.stats + touched, state.stats)
  last = jnp.where(touched, state.round, state.last_updated)
  return state._replace(params=params, stats=stats, last_updated=last), ok


def server_apply_many(state: ServerState, updates: jax.Array, *, active: Any = None,
                      decay: Any = 1.0, end_round: bool = True) -> tuple[ServerState, jax.Array]:
  """Adds a batch of uploads at once (asynchronous order) and ends the round.

  The sum of the accepted uploads is added; the statistics count every
  accepted upload that touched a parameter. Rejected rows (inactive or
  non-finite) contribute nothing, not even through ``0 * NaN``.

  Args:
    state: the server state.
    updates: ``(N, P)`` uploads.
    active: ``None`` (all active) or a bool ``(N,)``.
    decay: ``beta`` in ``[0, 1]``; applied once per accepted upload.
    end_round: increment the round counter (``False`` for a wave of
      uploads inside a round).

  Returns:
    ``(new_state, accepted)`` with ``accepted`` a bool ``(N,)``.

  Example:

  >>> import jax.numpy as jnp
  >>> u = jnp.array([[1., 0.], [2., 2.], [jnp.inf, 0.]])
  >>> s, ok = server_apply_many(server_init(jnp.zeros(2)), u)
  >>> s.params.tolist(), s.stats.tolist(), ok.tolist()
  ([3.0, 2.0], [2.0, 1.0], [True, True, False])
  """
  _validation.check_probability('decay', decay)
  updates = jnp.asarray(updates)
  if updates.ndim != 2 or updates.shape[1] != state.params.shape[0]:
    raise ValueError(f'updates must have shape (N, {state.params.shape[0]}); '
                     f'got {updates.shape}.')
  n = updates.shape[0]
  active = jnp.ones((n,), bool) if active is None else jnp.asarray(active, bool)
  ok = jax.vmap(_accepted)(updates, active)
  clean = jnp.where(ok[:, None], updates, 0).astype(state.params.dtype)
  touched = (clean != 0) & ok[:, None]
  count = jnp.sum(touched, axis=0, dtype=jnp.float32)
  num_ok = jnp.sum(ok).astype(jnp.float32)
  decay = jnp.asarray(decay, jnp.float32)
  # Sequential decay-then-add over the accepted uploads, in closed form for
  # the common decay == 1; otherwise every upload is treated as arriving
  # together: stats <- decay^n_ok * stats + count.
  stats = decay ** num_ok * state.stats + count
  params = state.params + jnp.sum(clean, axis=0)
  last = jnp.where(count > 0, state.round, state.last_updated)
  return ServerState(params, stats, last, state.round + int(bool(end_round))), ok
