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
4. the server adds it to the global parameters and updates its statistics.

Orders (``order=``):

===================  ========================================================
``"round_robin"``    participants 0..N-1 in turn; each downloads what the
                     previous ones uploaded (``lax.scan`` over participants)
``"random"``         the same with a fresh random order every round
``"asynchronous"``   ``concurrency`` participants at a time train at once
                     (``vmap``) from the same download, so each misses the
                     uploads of the others in its group; with
                     ``max_staleness`` the download is the global model of
                     ``d ~ U{0..max_staleness}`` rounds ago
===================  ========================================================

Everything is a pure function of explicit state and keys and runs under
``jit``; the asynchronous order vectorises the participants, which is what
lets hundreds of them run on one CPU. Participants marked inactive in a round
(dropouts) leave both the server and their own local state untouched, as do
uploads that are not finite.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from ssgd_optax import _validation
from ssgd_optax.federated import _server as server_lib
__all__ = ['ORDERS', 'ClientStates', 'SimulationState', 'RoundInfo', 'DSSGD', 'make_dssgd',
           'local_sgd', 'train_centralized', 'train_standalone', 'shard']

ORDERS = ('round_robin', 'random', 'asynchronous')

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
    accepted: bool ``(N,)``: whose upload the server added.
    shared: int ``(N,)``: nonzero entries in each participant's upload.
    staleness: int ``(N,)``: how many rounds old each download was.
  """
  accepted: jax.Array
  shared: jax.Array
  staleness: jax.Array


class DSSGD(NamedTuple):
  """A configured simulation: pure functions, jit them as a whole.

  Attributes:
    init: ``init(key) -> SimulationState``; every participant starts from
      the initial parameters.
    round: ``round(state, x, y, active=None) -> (state, RoundInfo)`` with
      shards ``x: (N, M, ...)``, ``y: (N, M)`` and ``active`` a bool ``(N,)``.
    client_update: ``client_update(local, upload_state, global, mask, x, y,
      key) -> (local, upload_state, upload)``: one participant's
      download/train/upload on flat vectors; shared with the Python-loop
      baseline and the Flower adapter.
    ravel: pytree -> flat vector.
    unravel: flat vector -> pytree.
    num_params: ``P``.
  """
  init: Callable[..., SimulationState]
  round: Callable[..., tuple[SimulationState, RoundInfo]]
  client_update: Callable[..., Any]
  ravel: Callable[[Any], jax.Array]
  unravel: Callable[[jax.Array], Any]
  num_params: int


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


def _tree_index(tree: Any, i: jax.Array) -> Any:
  return jax.tree.map(lambda a: a[i], tree)


def _tree_set(tree: Any, i: jax.Array, value: Any, active: jax.Array) -> Any:
  return jax.tree.map(lambda a, v: a.at[i].set(jnp.where(active, v, a[i])), tree, value)


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
               stat_decay: Any = 1.0) -> DSSGD:
  r"""Builds a DSSGD simulation (Shokri & Shmatikov, CCS 2015).

  Per participant ``i`` and round, with download mask ``D`` (``theta_d``):

  .. math::

    w_i \leftarrow D \odot w_{\text{global}} + (1 - D) \odot w_i, \quad
    \Delta_i = \mathrm{SGD}^{E}(w_i; \text{shard}_i) - w_i, \quad
    w_{\text{global}} \leftarrow w_{\text{global}} + \mathrm{upload}(\Delta_i)

  where ``upload`` is any optax transform applied to ``Delta_i`` as a
  gradient-shaped tree (``optax.identity()`` shares everything). For DSSGD
  pass ``selective_sharing(theta_u, clip=gamma, ...)``; remember that the
  server *adds* uploads, so a transform that rescales (``unit_normalize``)
  changes the global step size.

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
    order: ``"round_robin"``, ``"random"`` or ``"asynchronous"``.
    max_staleness: ``>= 0`` rounds (asynchronous order only).
    concurrency: asynchronous order only: how many participants train at
      once from the same download (``None``: all ``N``, the fastest; it must
      divide ``N``). The server adds each group's uploads before the next
      group downloads, so ``concurrency=1`` is the random-free sequential
      order and larger values mean staler downloads.
    stat_decay: ``beta`` in ``[0, 1]`` for the server statistics.

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
  _validation.check_int('num_participants', num_participants, minimum=1)
  _validation.check_learning_rate(learning_rate)
  _validation.check_int('batch_size', batch_size, minimum=1)
  _validation.check_int('local_epochs', local_epochs, minimum=0)
  _validation.check_probability('theta_d', theta_d)
  if _validation.concrete_float(theta_d) is None:
    raise TypeError(f'theta_d must be a concrete number in [0, 1]; got {theta_d!r}.')
  _validation.check_choice('download', download, server_lib.DOWNLOAD_CRITERIA)
  _validation.check_choice('order', order, ORDERS)
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
  if upload is None:
    upload = optax.identity()
  if not isinstance(upload, optax.GradientTransformation):
    raise TypeError('upload must be an optax.GradientTransformation (e.g. '
                    f'selective_sharing(0.1)); got {type(upload).__name__}.')
  flat0, unravel = ravel_pytree(params)
  if flat0.size == 0 or not jnp.issubdtype(flat0.dtype, jnp.floating):
    raise ValueError('params must be a non-empty pytree of floating-point arrays.')
  num_params = int(flat0.size)
  n = num_participants
  theta_d = float(theta_d)

  def ravel(tree):
    return ravel_pytree(tree)[0]

  def client_update(local, upload_state, global_params, mask, x, y, key):
    start = jnp.where(mask, global_params, local)
    after = local_sgd(loss_fn, unravel, start, x, y, key, learning_rate=learning_rate,
                      batch_size=batch_size, epochs=local_epochs)
    shared, upload_state = upload.update(unravel(after - start), upload_state, unravel(start))
    return after, upload_state, ravel(shared).astype(start.dtype)

  def init(key):
    up0 = upload.init(params)
    up = jax.vmap(lambda i: _rekey(up0, i))(jnp.arange(n))
    clients = ClientStates(jnp.tile(flat0[None], (n, 1)), up)
    history = jnp.tile(flat0[None], (max_staleness + 1, 1))
    return SimulationState(server_lib.server_init(flat0), clients, history, key)

  def check_shards(x, y, active):
    if x.shape[0] != n or y.shape[0] != n:
      raise ValueError(f'x and y must have a leading participant axis of size {n}; '
                       f'got {x.shape} and {y.shape}.')
    if active is None:
      return jnp.ones((n,), bool)
    active = jnp.asarray(active)
    if active.shape != (n,):
      raise ValueError(f'active must be a bool array of shape ({n},); got {active.shape}.')
    return active.astype(bool)

  def sequential_round(state, x, y, active, k_order, k_rest):
    turns = jnp.arange(n) if order == 'round_robin' else jax.random.permutation(k_order, n)

    def turn(carry, t):
      srv, clients = carry
      i = turns[t]
      k_dl, k_train = jax.random.split(jax.random.fold_in(k_rest, i))
      mask = server_lib.download_mask(srv, theta_d, key=k_dl, criterion=download)
      local, up, shared = client_update(clients.params[i], _tree_index(clients.upload_state, i),
                                        srv.params, mask, x[i], y[i], k_train)
      srv, ok = server_lib.server_apply(srv, shared, active=active[i], decay=stat_decay)
      clients = ClientStates(
          clients.params.at[i].set(jnp.where(active[i], local, clients.params[i])),
          _tree_set(clients.upload_state, i, up, active[i]))
      return (srv, clients), (i, ok, jnp.sum(shared != 0))

    (srv, clients), (who, ok, nnz) = jax.lax.scan(turn, (state.server, state.clients),
                                                 jnp.arange(n))
    accepted = jnp.zeros((n,), bool).at[who].set(ok)
    shared = jnp.zeros((n,), jnp.int32).at[who].set(nnz.astype(jnp.int32))
    srv = srv._replace(round=srv.round + 1)
    info = RoundInfo(accepted, shared, jnp.zeros((n,), jnp.int32))
    return SimulationState(srv, clients, srv.params[None], state.key), info

  def async_round(state, x, y, active, k_stale, k_rest):
    available = jnp.minimum(state.server.round, max_staleness)
    stale = jax.random.randint(k_stale, (n,), 0, max_staleness + 1)
    stale = jnp.minimum(stale, available).astype(jnp.int32)
    keys = jax.random.split(k_rest, n)
    waves = n // concurrency
    # Participants run in `waves` groups of `concurrency`: a group trains at
    # once (vmap) from the same download, the groups follow one another.
    group = lambda a: a.reshape((waves, concurrency) + a.shape[1:])

    def wave(srv, inputs):
      stale_w, local_w, up_w, x_w, y_w, key_w, active_w = inputs
      fresh = jnp.concatenate([srv.params[None], state.history[1:]], axis=0)

      def one(stale_i, local, up, xi, yi, key):
        k_dl, k_train = jax.random.split(key)
        mask = server_lib.download_mask(srv, theta_d, key=k_dl, criterion=download)
        return client_update(local, up, fresh[stale_i], mask, xi, yi, k_train)

      local, up, shared = jax.vmap(one)(stale_w, local_w, up_w, x_w, y_w, key_w)
      srv, ok = server_lib.server_apply_many(srv, shared, active=active_w, decay=stat_decay,
                                             end_round=False)
      return srv, (local, up, ok, jnp.sum(shared != 0, axis=1).astype(jnp.int32))

    srv, (local, up, ok, nnz) = jax.lax.scan(
        wave, state.server,
        jax.tree.map(group, (stale, state.clients.params, state.clients.upload_state, x, y,
                             keys, active)))
    ungroup = lambda a: a.reshape((n,) + a.shape[2:])
    local, up, ok, nnz = jax.tree.map(ungroup, (local, up, ok, nnz))
    srv = srv._replace(round=srv.round + 1)
    keep = lambda new, old: jnp.where(
        active.reshape((n,) + (1,) * (new.ndim - 1)), new, old)
    clients = ClientStates(keep(local, state.clients.params),
                           jax.tree.map(keep, up, state.clients.upload_state))
    history = jnp.concatenate([srv.params[None], state.history[:-1]], axis=0)
    return SimulationState(srv, clients, history, state.key), RoundInfo(ok, nnz, stale)

  def round_fn(state, x, y, active=None):
    x = jnp.asarray(x)
    y = jnp.asarray(y)
    active = check_shards(x, y, active)
    next_key, k1, k2 = jax.random.split(state.key, 3)
    body = async_round if order == 'asynchronous' else sequential_round
    new_state, info = body(state, x, y, active, k1, k2)
    return new_state._replace(key=next_key), info

  return DSSGD(init, round_fn, client_update, ravel, unravel, num_params)


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
