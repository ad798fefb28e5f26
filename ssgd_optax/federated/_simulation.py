# Copyright 2026 The ssgd_optax Authors. Licensed under the Apache License 2.0.
"""Distributed selective SGD (DSSGD) simulated on one machine.

``N`` participants, each with its own data shard, and a parameter server
(:func:`ssgd_optax.federated.server_apply`). One round, for every participant:

1. download a ``theta_d`` fraction of the global parameters (most updated or
   random) and overwrite the local copies;
2. run ``local_epochs`` epochs of mini-batch SGD on the local shard;
3. pass ``delta_w = w_after - w_before`` through the client-side defence, any
   optax transform (``selective_sharing(theta_u, ...)``, ``unit_normalize``,
   ``dp_selective_sharing``, a chain...), and upload the result;
4. the server applies it by the rule of the order.

The orders, their keys and the server's rules are those of every DSSGD round
of the package (``federated/_rounds.py``): ``"round_robin"`` and
``"random"`` (``lax.scan`` over participants; the server adds each upload),
``"synchronous"`` (``vmap``: all train from one model; the server applies the
mean, optionally through secure aggregation, then on the host) and
``"asynchronous"`` (``concurrency`` participants at a time train at once
(``vmap``) from the same download, so each misses the uploads of the others in
its group; with ``max_staleness`` the download is the global model of ``d ~
U{0..max_staleness}`` rounds ago; the server adds each upload).

Everything but secure aggregation is a pure function of explicit state and
keys and runs under ``jit``; vectorising the participants is what lets
hundreds of them run on one CPU. Participants marked inactive in a round
(dropouts) leave both the server and their own local state untouched, as do
uploads that are not finite.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from ssgd_optax import _validation
from ssgd_optax.federated import _rounds as rounds
from ssgd_optax.federated import _server as server_lib

__all__ = ['ClientStates', 'SimulationState', 'RoundInfo', 'DSSGD', 'make_dssgd', 'local_sgd',
           'train_centralized', 'train_standalone', 'shard']

LossFn = Callable[[Any, jax.Array, jax.Array], jax.Array]


class ClientStates(NamedTuple):
  """All participants' local state, stacked along a leading axis ``N``.

  Attributes:
    params: ``(N, P)`` local parameters (flat).
    upload_state: the upload transform's state, every leaf with a leading
      ``N`` axis (typed PRNG keys in it differ per participant).
  """
  params: jax.Array
  upload_state: Any


class SimulationState(NamedTuple):
  """State of a DSSGD simulation.

  Attributes:
    server: the :class:`~ssgd_optax.federated.ServerState`.
    clients: the :class:`ClientStates`.
    history: ``(max_staleness + 1, P)`` past global parameters, newest first
      (asynchronous order; a single row otherwise).
    key: the simulation's PRNG key, split every round.
  """
  server: server_lib.ServerState
  clients: ClientStates
  history: jax.Array
  key: jax.Array


class RoundInfo(NamedTuple):
  """What happened in one round.

  Attributes:
    accepted: bool ``(N,)``: whose upload the server applied (with secure
      aggregation: the survivors of an applied round).
    shared: int ``(N,)``: nonzero entries in each participant's upload.
    staleness: int ``(N,)``: how many rounds old each download was.
  """
  accepted: jax.Array
  shared: jax.Array
  staleness: jax.Array


class DSSGD(NamedTuple):
  """A configured simulation: pure functions, jit them as a whole (but see ``round``).

  Attributes:
    init: ``init(key) -> SimulationState``; every participant starts from
      the initial parameters.
    round: ``round(state, x, y, active=None) -> (state, RoundInfo)`` with
      shards ``x: (N, M, ...)``, ``y: (N, M)`` and ``active`` a bool ``(N,)``;
      with secure aggregation it runs on the host (do not ``jit`` it).
    client_update: ``client_update(local, upload_state, global, mask, x, y,
      key) -> (local, upload_state, upload)``: one participant's
      download/train/upload on flat vectors; shared with the Python-loop
      baseline and the Flower adapter.
    ravel: pytree -> flat vector.
    unravel: flat vector -> pytree.
    num_params: ``P``.
    config: the :class:`~ssgd_optax.federated.RoundConfig` (order, download,
      statistics, secure aggregation), which the Flower server runs too.
  """
  init: Callable[..., SimulationState]
  round: Callable[..., tuple[SimulationState, RoundInfo]]
  client_update: Callable[..., Any]
  ravel: Callable[[Any], jax.Array]
  unravel: Callable[[jax.Array], Any]
  num_params: int
  config: rounds.RoundConfig


def local_sgd(loss_fn: LossFn, unravel: Callable[[jax.Array], Any], flat: jax.Array,
              x: jax.Array, y: jax.Array, key: jax.Array, *, learning_rate: Any,
              batch_size: int, epochs: int) -> jax.Array:
  """``epochs`` epochs of mini-batch SGD on ``(x, y)``, on flat parameters.

  Every epoch visits a fresh random permutation in ``M // batch_size`` full
  batches (the remainder is skipped that epoch); ``loss_fn(params, xb, yb)``
  should be the batch mean.

  Args:
    loss_fn: ``(params_pytree, x_batch, y_batch) -> scalar``.
    unravel: flat vector -> params pytree.
    flat: ``(P,)`` starting parameters.
    x: ``(M, ...)`` inputs.
    y: ``(M, ...)`` targets.
    key: a PRNG key.
    learning_rate: step size (may be traced).
    batch_size: static ``1 <= batch_size <= M``.
    epochs: static ``>= 0``.

  Returns:
    The ``(P,)`` parameters after training.

  Example:

  >>> import jax, jax.numpy as jnp
  >>> loss = lambda p, xb, yb: jnp.mean((xb * p['w'] - yb) ** 2)
  >>> x = jnp.arange(1., 9.); y = 3 * x
  >>> w = local_sgd(loss, lambda f: {'w': f[0]}, jnp.zeros(1), x, y,
  ...               jax.random.key(0), learning_rate=0.01, batch_size=4, epochs=20)
  >>> round(float(w[0]), 3)
  3.0
  """
  m = x.shape[0]
  _validation.check_int('batch_size', batch_size, minimum=1)
  _validation.check_int('epochs', epochs, minimum=0)
  if batch_size > m:
    raise ValueError(f'batch_size must be <= the shard size {m}; got {batch_size}.')
  steps = m // batch_size

  def grad_flat(w, xb, yb):
    g = jax.grad(loss_fn)(unravel(w), xb, yb)
    return ravel_pytree(g)[0].astype(w.dtype)

  def epoch(w, k):
    idx = jax.random.permutation(k, m)[:steps * batch_size].reshape(steps, batch_size)

    def step(w, i):
      return w - jnp.asarray(learning_rate, w.dtype) * grad_flat(w, x[i], y[i]), None

    return jax.lax.scan(step, w, idx)[0], None

  if epochs == 0:
    return flat
  return jax.lax.scan(epoch, flat, jax.random.split(key, epochs))[0]


def _rekey(tree: Any, index: jax.Array) -> Any:
  """Folds ``index`` into every typed PRNG key so that participants differ."""

  def fold(leaf):
    if isinstance(leaf, jax.Array) and jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key):
      return jax.random.fold_in(leaf, index)
    return leaf

  return jax.tree.map(fold, tree)


def _tree_index(tree: Any, i: Any) -> Any:
  return jax.tree.map(lambda a: a[i], tree)


def _tree_set(tree: Any, i: Any, value: Any, active: Any) -> Any:
  return jax.tree.map(lambda a, v: a.at[i].set(jnp.where(active, v, a[i])), tree, value)


def _keep_active(active: jax.Array, new: Any, old: Any) -> Any:
  """``new`` for the active participants (leading axis), ``old`` for the others."""
  return jax.tree.map(
      lambda a, b: jnp.where(active.reshape((-1,) + (1,) * (a.ndim - 1)), a, b), new, old)


class _Local(NamedTuple):
  """What one participant's download/train/upload step needs (static)."""
  loss_fn: LossFn
  unravel: Callable[[jax.Array], Any]
  upload: optax.GradientTransformation
  learning_rate: Any
  batch_size: int
  epochs: int


def _client_update(spec: _Local, local, upload_state, global_params, mask, x, y, key):
  """Download (overwrite the masked entries), train, pass ``delta_w`` through the defence."""
  start = jnp.where(mask, global_params, local)
  after = local_sgd(spec.loss_fn, spec.unravel, start, x, y, key,
                    learning_rate=spec.learning_rate, batch_size=spec.batch_size,
                    epochs=spec.epochs)
  shared, upload_state = spec.upload.update(spec.unravel(after - start), upload_state,
                                            spec.unravel(start))
  return after, upload_state, ravel_pytree(shared)[0].astype(start.dtype)


def _check_round_config(num_participants, order, theta_d, download, max_staleness,
                        concurrency, stat_decay, secure_aggregation,
                        num_params) -> rounds.RoundConfig:
  """Validates the round settings of :func:`make_dssgd`."""
  _validation.check_int('num_participants', num_participants, minimum=1)
  _validation.check_probability('theta_d', theta_d)
  if _validation.concrete_float(theta_d) is None:
    raise TypeError(f'theta_d must be a concrete number in [0, 1]; got {theta_d!r}.')
  _validation.check_choice('download', download, server_lib.DOWNLOAD_CRITERIA)
  rounds.check_order(order)
  _validation.check_int('max_staleness', max_staleness, minimum=0)
  if max_staleness and order != 'asynchronous':
    raise ValueError(f"max_staleness > 0 needs order='asynchronous'; got order={order!r}.")
  if concurrency is None:
    concurrency = num_participants
  _validation.check_int('concurrency', concurrency, minimum=1)
  if num_participants % concurrency:
    raise ValueError(f'concurrency must divide num_participants={num_participants}; '
                     f'got {concurrency}.')
  if concurrency != num_participants and order != 'asynchronous':
    raise ValueError(f"concurrency needs order='asynchronous'; got order={order!r}.")
  _validation.check_probability('stat_decay', stat_decay)
  if secure_aggregation is not None:
    if order != 'synchronous':
      raise ValueError("secure_aggregation needs order='synchronous' (the server must receive "
                       f"a round's uploads together to see only their sum); got order={order!r}.")
    secure_aggregation = rounds.check_secure_aggregation(
        secure_aggregation, num_participants=num_participants, num_params=num_params)
  return rounds.RoundConfig(num_participants, order, float(theta_d), download, stat_decay,
                            max_staleness, concurrency, secure_aggregation)


def _check_shards(n: int, x: Any, y: Any, active: Any) -> tuple[jax.Array, jax.Array, jax.Array]:
  x, y = jnp.asarray(x), jnp.asarray(y)
  if x.shape[0] != n or y.shape[0] != n:
    raise ValueError(f'x and y must have a leading participant axis of size {n}; '
                     f'got {x.shape} and {y.shape}.')
  if active is None:
    return x, y, jnp.ones((n,), bool)
  active = jnp.asarray(active)
  if active.shape != (n,):
    raise ValueError(f'active must be a bool array of shape ({n},); got {active.shape}.')
  return x, y, active.astype(bool)


def _sequential_round(cfg: rounds.RoundConfig, update: Callable[..., Any],
                      state: SimulationState, x, y, active,
                      keys: rounds.RoundKeys) -> tuple[SimulationState, RoundInfo]:
  """``round_robin``/``random``: one participant at a time (``lax.scan``); the server adds."""
  n = cfg.num_participants
  turns = rounds.turn_order(cfg.order, keys.order, n)

  def turn(carry, t):
    srv, clients = carry
    i = turns[t]
    mask, k_train = rounds.participant_download(srv, keys.rest, i, fraction=cfg.theta_d,
                                                criterion=cfg.download)
    local, up, shared = update(clients.params[i], _tree_index(clients.upload_state, i),
                               srv.params, mask, x[i], y[i], k_train)
    srv, ok = rounds.add_upload(srv, shared, active=active[i], decay=cfg.stat_decay)
    clients = ClientStates(
        clients.params.at[i].set(jnp.where(active[i], local, clients.params[i])),
        _tree_set(clients.upload_state, i, up, active[i]))
    return (srv, clients), (i, ok, jnp.sum(shared != 0))

  (srv, clients), (who, ok, nnz) = jax.lax.scan(turn, (state.server, state.clients),
                                               jnp.arange(n))
  accepted = jnp.zeros((n,), bool).at[who].set(ok)
  shared = jnp.zeros((n,), jnp.int32).at[who].set(nnz.astype(jnp.int32))
  srv = rounds.end_round(srv)
  info = RoundInfo(accepted, shared, jnp.zeros((n,), jnp.int32))
  return SimulationState(srv, clients, srv.params[None], state.key), info


def _synchronous_round(cfg: rounds.RoundConfig, update: Callable[..., Any],
                       state: SimulationState, x, y, active,
                       keys: rounds.RoundKeys) -> tuple[SimulationState, RoundInfo]:
  """``synchronous``: all train from one model (``vmap``); the server applies the mean."""
  n = cfg.num_participants
  srv = state.server

  def one(i, local, up, xi, yi):
    mask, k_train = rounds.participant_download(srv, keys.rest, i, fraction=cfg.theta_d,
                                                criterion=cfg.download)
    return update(local, up, srv.params, mask, xi, yi, k_train)

  local, up, shared = jax.vmap(one)(jnp.arange(n), state.clients.params,
                                    state.clients.upload_state, x, y)
  srv, ok = rounds.apply_mean(srv, shared, active=active, decay=cfg.stat_decay)
  srv = rounds.end_round(srv)
  clients = ClientStates(*_keep_active(active, (local, up),
                                       (state.clients.params, state.clients.upload_state)))
  info = RoundInfo(ok, jnp.sum(shared != 0, axis=1).astype(jnp.int32),
                   jnp.zeros((n,), jnp.int32))
  return SimulationState(srv, clients, srv.params[None], state.key), info


def _asynchronous_round(cfg: rounds.RoundConfig, update: Callable[..., Any],
                        state: SimulationState, x, y, active,
                        keys: rounds.RoundKeys) -> tuple[SimulationState, RoundInfo]:
  """``asynchronous``: groups of ``concurrency`` train at once from stale downloads."""
  n, max_staleness = cfg.num_participants, cfg.max_staleness
  available = jnp.minimum(state.server.round, max_staleness)
  stale = jax.random.randint(keys.order, (n,), 0, max_staleness + 1)
  stale = jnp.minimum(stale, available).astype(jnp.int32)
  participant_key = jax.random.split(keys.rest, n)
  waves = n // cfg.concurrency
  # Participants run in `waves` groups of `concurrency`: a group trains at
  # once (vmap) from the same download, the groups follow one another.
  group = lambda a: a.reshape((waves, cfg.concurrency) + a.shape[1:])

  def wave(srv, inputs):
    stale_w, local_w, up_w, x_w, y_w, key_w, active_w = inputs
    fresh = jnp.concatenate([srv.params[None], state.history[1:]], axis=0)

    def one(stale_i, local, up, xi, yi, key):
      k_dl, k_train = jax.random.split(key)
      mask = server_lib.download_mask(srv, cfg.theta_d, key=k_dl, criterion=cfg.download)
      return update(local, up, fresh[stale_i], mask, xi, yi, k_train)

    local, up, shared = jax.vmap(one)(stale_w, local_w, up_w, x_w, y_w, key_w)
    srv, ok = server_lib.server_apply_many(srv, shared, active=active_w, decay=cfg.stat_decay,
                                           end_round=False)
    return srv, (local, up, ok, jnp.sum(shared != 0, axis=1).astype(jnp.int32))

  srv, (local, up, ok, nnz) = jax.lax.scan(
      wave, state.server,
      jax.tree.map(group, (stale, state.clients.params, state.clients.upload_state, x, y,
                           participant_key, active)))
  ungroup = lambda a: a.reshape((n,) + a.shape[2:])
  local, up, ok, nnz = jax.tree.map(ungroup, (local, up, ok, nnz))
  srv = rounds.end_round(srv)
  clients = ClientStates(*_keep_active(active, (local, up),
                                       (state.clients.params, state.clients.upload_state)))
  history = jnp.concatenate([srv.params[None], state.history[:-1]], axis=0)
  return SimulationState(srv, clients, history, state.key), RoundInfo(ok, nnz, stale)


_download_jit = jax.jit(rounds.participant_download, static_argnames=('fraction', 'criterion'))


def _secure_round(cfg: rounds.RoundConfig, update: Callable[..., Any],
                  state: SimulationState, x, y, active,
                  keys: rounds.RoundKeys) -> tuple[SimulationState, RoundInfo]:
  """``synchronous`` with secure aggregation, on the host.

  Each active participant trains as a Flower client does (``update`` is the
  jitted ``client_update``, one participant at a time, so that the uploads
  are bit for bit those of the Flower apps); participants whose upload is not
  finite or who are inactive drop out after the key exchange. The server sees
  only the sum (:func:`~ssgd_optax.federated.secure_aggregation.secure_sum`)
  and applies :func:`~ssgd_optax.federated._rounds.secure_update`. Too few
  survivors to unmask: the round is lost (only the counters advance).
  """
  from ssgd_optax.federated import secure_aggregation as sa  # pylint: disable=g-import-not-at-top
  n, srv, secure = cfg.num_participants, state.server, cfg.secure_aggregation
  active_np = np.asarray(active)
  uploads = np.zeros((n, srv.params.shape[0]), np.asarray(srv.params).dtype)
  params, upload_state = state.clients.params, state.clients.upload_state
  for i in np.flatnonzero(active_np):
    mask, k_train = _download_jit(srv, keys.rest, int(i), fraction=cfg.theta_d,
                                  criterion=cfg.download)
    local, up, shared = update(params[i], _tree_index(upload_state, i), srv.params, mask,
                               x[i], y[i], k_train)
    uploads[i] = np.asarray(shared)
    params = params.at[i].set(local)
    upload_state = _tree_set(upload_state, i, up, True)
  finite = np.isfinite(uploads).all(axis=1)
  survivors = [int(i) for i in np.flatnonzero(active_np & finite)]
  shared_count = jnp.asarray((uploads != 0).sum(axis=1), jnp.int32)
  lost = RoundInfo(jnp.zeros((n,), bool), shared_count, jnp.zeros((n,), jnp.int32))
  try:
    total = sa.secure_sum(np.where(finite[:, None], uploads, 0),
                          dropped=[i for i in range(n) if i not in survivors],
                          threshold=secure.threshold, frac_bits=secure.frac_bits,
                          bits=secure.bits, round_=int(srv.round), clip=secure.clip,
                          dp=secure.dp)
  except sa.DropoutError:
    return state._replace(server=rounds.end_round(srv)), lost
  srv, report = rounds.apply_secure_sum(
      srv, total, round_=int(srv.round), asked=np.flatnonzero(active_np), survivors=survivors,
      dropped=np.flatnonzero(~active_np), decay=cfg.stat_decay)
  srv = rounds.end_round(srv)
  clients = ClientStates(*_keep_active(jnp.asarray(active_np), (params, upload_state),
                                       (state.clients.params, state.clients.upload_state)))
  accepted = jnp.zeros((n,), bool).at[jnp.asarray(report.accepted, jnp.int32)].set(True)
  info = RoundInfo(accepted, shared_count, jnp.zeros((n,), jnp.int32))
  return SimulationState(srv, clients, srv.params[None], state.key), info


_ROUND = {'round_robin': _sequential_round, 'random': _sequential_round,
          'synchronous': _synchronous_round, 'asynchronous': _asynchronous_round}


def _round(cfg: rounds.RoundConfig, update: Callable[..., Any], update_jit: Callable[..., Any],
           state: SimulationState, x: Any, y: Any,
           active: Any = None) -> tuple[SimulationState, RoundInfo]:
  """One round of any order: the round's keys, the order's body, the next key."""
  x, y, active = _check_shards(cfg.num_participants, x, y, active)
  keys = rounds.round_keys(state.key)
  if cfg.secure_aggregation is None:
    new_state, info = _ROUND[cfg.order](cfg, update, state, x, y, active, keys)
  else:
    if any(isinstance(a, jax.core.Tracer) for a in (x, y, active, state.server.params)):
      raise TypeError('with secure_aggregation, sim.round runs the protocol on the host '
                      '(cryptography, not XLA): call it without jax.jit; it jits its own '
                      'training steps.')
    new_state, info = _secure_round(cfg, update_jit, state, x, y, active, keys)
  return new_state._replace(key=keys.next), info


def _init(params: Any, flat0: jax.Array, upload: optax.GradientTransformation,
          cfg: rounds.RoundConfig, key: jax.Array) -> SimulationState:
  """Every participant and the server start from ``params``; participant ids fold into keys."""
  n = cfg.num_participants
  up0 = upload.init(params)
  up = jax.vmap(lambda i: _rekey(up0, i))(jnp.arange(n))
  clients = ClientStates(jnp.tile(flat0[None], (n, 1)), up)
  history = jnp.tile(flat0[None], (cfg.max_staleness + 1, 1))
  return SimulationState(server_lib.server_init(flat0), clients, history, key)


def make_dssgd(loss_fn: LossFn,
               params: Any,
               *,
               num_participants: int,
               learning_rate: Any,
               batch_size: int,
               local_epochs: int = 1,
               upload: optax.GradientTransformation | None = None,
               theta_d: float = 1.0,
               download: str = 'most_updated',
               order: str = 'round_robin',
               max_staleness: int = 0,
               concurrency: int | None = None,
               stat_decay: Any = 1.0,
               secure_aggregation: rounds.SecureAggregation | None = None) -> DSSGD:
  r"""Builds a DSSGD simulation (Shokri & Shmatikov, CCS 2015).

  Per participant ``i`` and round, with download mask ``D`` (``theta_d``):

  .. math::

    w_i \leftarrow D \odot w_{\text{global}} + (1 - D) \odot w_i, \quad
    \Delta_i = \mathrm{SGD}^{E}(w_i; \text{shard}_i) - w_i, \quad
    w_{\text{global}} \leftarrow w_{\text{global}} + \mathrm{upload}(\Delta_i)

  where ``upload`` is any optax transform applied to ``Delta_i`` as a
  gradient-shaped tree (``optax.identity()`` shares everything). For DSSGD
  pass ``selective_sharing(theta_u, clip=gamma, ...)``; remember that the
  server *adds* uploads in the sequential orders, so a transform that
  rescales (``unit_normalize``) changes the global step size. In the
  ``"synchronous"`` order the server applies the mean of the round's
  uploads (see :mod:`~ssgd_optax.federated` and ``docs/federated.md``).

  Args:
    loss_fn: ``(params, x_batch, y_batch) -> scalar`` batch-mean loss.
    params: the initial parameters (a pytree of float arrays); they fix the
      structure and are every participant's and the server's start.
    num_participants: ``N >= 1``.
    learning_rate: local SGD step (may be traced).
    batch_size: local batch size (static).
    local_epochs: ``E >= 0`` local epochs per round (static).
    upload: the client-side defence (``None``: share everything).
    theta_d: static download fraction in ``[0, 1]``.
    download: ``"most_updated"`` or ``"random"``.
    order: one of :data:`~ssgd_optax.federated.ORDERS`: ``"round_robin"``,
      ``"random"``, ``"synchronous"`` or ``"asynchronous"``.
    max_staleness: ``>= 0`` rounds (asynchronous order only).
    concurrency: asynchronous order only: how many participants train at
      once from the same download (``None``: all ``N``, the fastest; it must
      divide ``N``). The server adds each group's uploads before the next
      group downloads, so ``concurrency=1`` is the random-free sequential
      order and larger values mean staler downloads.
    stat_decay: ``beta`` in ``[0, 1]`` for the server statistics.
    secure_aggregation: ``None``, or a
      :class:`~ssgd_optax.federated.SecureAggregation` (``order="synchronous"``
      only, ``N >= 2``): the server sees only the sum of each round's uploads
      (needs the ``federated`` extra). ``round`` then runs the protocol on the
      host and is not jittable.

  Returns:
    A :class:`DSSGD`.

  Example:

  >>> import jax, jax.numpy as jnp
  >>> from ssgd_optax.federated import make_dssgd
  >>> from ssgd_optax._selective import selective_sharing
  >>> loss = lambda p, x, y: jnp.mean((x @ p['w'] - y) ** 2)
  >>> sim = make_dssgd(loss, {'w': jnp.zeros(2)}, num_participants=3,
  ...                  learning_rate=0.1, batch_size=2,
  ...                  upload=selective_sharing(0.5), order='asynchronous')
  >>> x = jnp.ones((3, 4, 2)); y = jnp.ones((3, 4))
  >>> state = sim.init(jax.random.key(0))
  >>> state, info = jax.jit(sim.round)(state, x, y)
  >>> info.shared.tolist()
  [1, 1, 1]
  """
  _validation.check_learning_rate(learning_rate)
  _validation.check_int('batch_size', batch_size, minimum=1)
  _validation.check_int('local_epochs', local_epochs, minimum=0)
  if upload is None:
    upload = optax.identity()
  if not isinstance(upload, optax.GradientTransformation):
    raise TypeError('upload must be an optax.GradientTransformation (e.g. '
                    f'selective_sharing(0.1)); got {type(upload).__name__}.')
  flat0, unravel = ravel_pytree(params)
  if flat0.size == 0 or not jnp.issubdtype(flat0.dtype, jnp.floating):
    raise ValueError('params must be a non-empty pytree of floating-point arrays.')
  cfg = _check_round_config(num_participants, order, theta_d, download, max_staleness,
                            concurrency, stat_decay, secure_aggregation, int(flat0.size))
  update = functools.partial(_client_update, _Local(loss_fn, unravel, upload, learning_rate,
                                                    batch_size, local_epochs))
  return DSSGD(init=functools.partial(_init, params, flat0, upload, cfg),
               round=functools.partial(_round, cfg, update, jax.jit(update)),
               client_update=update, ravel=lambda tree: ravel_pytree(tree)[0],
               unravel=unravel, num_params=int(flat0.size), config=cfg)


def shard(x: np.ndarray, y: np.ndarray, num_participants: int, *,
          seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """Splits a data set into ``N`` equal, disjoint, shuffled shards.

  Each participant gets ``len(x) // N`` examples (the remainder is dropped).

  Args:
    x: ``(M, ...)`` inputs.
    y: ``(M, ...)`` labels.
    num_participants: ``N >= 1``, at most ``M``.
    seed: shuffling seed.

  Returns:
    ``(x_shards, y_shards)`` with shapes ``(N, M // N, ...)``.

  Example:

  >>> import numpy as np
  >>> xs, ys = shard(np.arange(10.), np.arange(10), 3)
  >>> xs.shape, sorted(np.concatenate(ys).tolist()) == sorted(set(np.concatenate(ys).tolist()))
  ((3, 3), True)
  """
  _validation.check_int('num_participants', num_participants, minimum=1)
  x = np.asarray(x)
  y = np.asarray(y)
  if len(x) != len(y):
    raise ValueError(f'x and y must have the same length; got {len(x)} and {len(y)}.')
  per = len(x) // num_participants
  if per == 0:
    raise ValueError(f'num_participants={num_participants} exceeds the {len(x)} examples.')
  idx = np.random.default_rng(seed).permutation(len(x))[:per * num_participants]
  return (x[idx].reshape((num_participants, per) + x.shape[1:]),
          y[idx].reshape((num_participants, per) + y.shape[1:]))


def train_centralized(loss_fn: LossFn, params: Any, x: Any, y: Any, key: jax.Array, *,
                      learning_rate: Any, batch_size: int, epochs: int) -> Any:
  """Baseline: one model trained with SGD on all the data.

  Args:
    loss_fn: ``(params, x_batch, y_batch) -> scalar``.
    params: initial parameters (pytree).
    x: ``(M, ...)`` all training inputs.
    y: ``(M, ...)`` labels.
    key: a PRNG key.
    learning_rate: SGD step.
    batch_size: static batch size.
    epochs: static number of epochs.

  Returns:
    The trained parameters (pytree).

  Example:

  >>> import jax, jax.numpy as jnp
  >>> loss = lambda p, x, y: jnp.mean((x * p - y) ** 2)
  >>> p = train_centralized(loss, jnp.zeros(()), jnp.ones(4), 2 * jnp.ones(4),
  ...                       jax.random.key(0), learning_rate=0.2, batch_size=2, epochs=10)
  >>> round(float(p), 2)
  2.0
  """
  flat, unravel = ravel_pytree(params)
  out = jax.jit(lambda f, xx, yy, k: local_sgd(
      loss_fn, unravel, f, xx, yy, k, learning_rate=learning_rate,
      batch_size=batch_size, epochs=epochs))(flat, jnp.asarray(x), jnp.asarray(y), key)
  return unravel(out)


def train_standalone(loss_fn: LossFn, params: Any, x_shards: Any, y_shards: Any,
                     key: jax.Array, *, learning_rate: Any, batch_size: int,
                     epochs: int) -> Any:
  """Baseline: every participant trains alone on its shard (vmapped).

  Args:
    loss_fn: ``(params, x_batch, y_batch) -> scalar``.
    params: initial parameters (pytree), shared by all participants.
    x_shards: ``(N, M, ...)`` shards.
    y_shards: ``(N, M, ...)`` labels.
    key: a PRNG key.
    learning_rate: SGD step.
    batch_size: static batch size.
    epochs: static number of epochs.

  Returns:
    The ``N`` trained models: the parameter pytree with a leading ``N`` axis.

  Example:

  >>> import jax, jax.numpy as jnp
  >>> loss = lambda p, x, y: jnp.mean((x * p - y) ** 2)
  >>> ps = train_standalone(loss, jnp.zeros(()), jnp.ones((2, 4)),
  ...                       jnp.array([[1.] * 4, [3.] * 4]), jax.random.key(0),
  ...                       learning_rate=0.2, batch_size=2, epochs=10)
  >>> ps.round(2).tolist()
  [1.0, 3.0]
  """
  flat, unravel = ravel_pytree(params)
  x_shards = jnp.asarray(x_shards)
  n = x_shards.shape[0]

  def one(xx, yy, k):
    return local_sgd(loss_fn, unravel, flat, xx, yy, k, learning_rate=learning_rate,
                     batch_size=batch_size, epochs=epochs)

  out = jax.jit(jax.vmap(one))(x_shards, jnp.asarray(y_shards), jax.random.split(key, n))
  return jax.vmap(unravel)(out)
