# Copyright 2026 The ssgd_optax Authors. Licensed under the Apache License 2.0.
"""The DSSGD rounds as a Flower ``ClientApp``/``ServerApp`` (optional).

For users who outgrow one machine: :func:`make_client_app` wraps the very
``client_update`` of a :func:`~ssgd_optax.federated.make_dssgd` simulation
(download ``theta_d``, local SGD, upload through the optax defence) in a
``flwr.clientapp.ClientApp``; :func:`make_server_app` runs the parameter
server as a ``flwr.serverapp.ServerApp``. Both run the simulation's own
round (``sim.config``: the order, the download, the statistics and secure
aggregation) through the same server-side functions
(``federated/_rounds.py``: keys, upload checks, the add and mean rules,
:class:`~ssgd_optax.federated.RoundReport`). Arrays travel as NumPy in
``ArrayRecord``s; each participant keeps its local model and defence state in
its own ``Context.state``. Tested on the in-process :class:`LoopbackGrid`, on
Flower's simulation engine (``flwr.simulation.run_simulation``, Ray backend)
and in deployment mode (``flower-superlink`` + ``flower-supernode`` processes
driven by ``flwr run``, see ``examples/flower_app``).

**Orders**: ``"round_robin"`` and ``"random"`` (one participant at a time, the
server adds each upload before the next download, in the simulation's turns)
and ``"synchronous"`` (all at once from one model; the server applies the
mean), with or without secure aggregation (``sim.config.secure_aggregation``).
``"asynchronous"`` is simulation-only.

**Randomness belongs to the client.** The server sends no key: every
participant draws its training key (each round) and its defence's keys
(``threshold_random`` sampling, ``dp_selective_sharing`` noise: re-keyed on
first use) from the operating system (:func:`ssgd_optax.privacy.os_seed`), so
a server cannot make two rounds' updates repeat or subtract a DP noise it
chose. ``make_client_app(..., testing_key=k)`` derives them instead exactly as
the in-process simulation started with ``sim.init(k)`` does, for tests and
reproducible runs only: whoever knows ``k`` knows the training randomness.

**Nodes.** On a real runtime the nodes register asynchronously: the server
waits (up to ``node_timeout`` seconds) until exactly ``num_nodes`` nodes are
connected. Without secure aggregation the ``i``-th smallest node id is
participant ``i``; with it, each node names its participant id (the registry
entry of its own identity key) in the set-up reply, and every later message
must carry that id.

**Messages** (the public format; ``P`` = parameters, ``r`` = round):

* ``train`` (plain orders): ``config`` ``{participant, round}``, ``arrays``
  ``{global: float (P,), mask: bool (P,)}``; the reply carries
  ``arrays['upload']`` (``(P,)``) and ``metrics['shared']``.
* ``query`` (secure aggregation), ``config['step']`` one of ``setup``,
  ``advertise``, ``share``, ``masked``, ``consistency``, ``unmask``, with
  ``round`` and (but ``setup``) ``participant``; the protocol message as
  ``sa_session, sa_round, sa_step, sa_sender, sa_recipient, sa_payload, sa_tag``
  (:class:`~ssgd_optax.federated.secure_aggregation.ProtocolMessage`);
  ``setup`` carries ``sa_n, sa_t, sa_session, sa_server_key, sa_frac_bits,
  sa_bits`` (each checked against the client's own ``sim.config``) and is
  answered with ``{participant, sa_channel_key}``; ``masked`` also carries
  the ``train`` arrays.

**A client contributes once per model.** With secure aggregation a client
keeps a :class:`~ssgd_optax.federated.secure_aggregation.ParticipantRecord`
on its node's disk: before training it refuses (``RepeatedContributionError``)
a second contribution to one ``(session, round)`` or on a global model
(``global`` and ``mask``, :func:`~ssgd_optax.federated.secure_aggregation.model_digest`)
it already contributed to, and it signs at most one survivor set per
``(session, round)``, across restarts. A server that repeats a round to
difference two sums gets an error reply instead.

**Failures are loud** (``logging`` records carry round, participant and
node id):

* no answer within ``reply_timeout``, or an error reply from the runtime
  (node unavailable, message lost): a **dropout**. DSSGD tolerates dropouts
  (as ``active=False`` in the simulation: the server state is untouched), so
  the round goes on; a node that left the grid is not asked again.
* an exception in the ``ClientApp`` (error reply ``CLIENT_APP_RAISED_EXCEPTION``
  or ``LOAD_CLIENT_APP_EXCEPTION``): a bug or a refusal, not a network
  fault, so :class:`FederatedRunError` by default (``client_errors='dropout'``
  counts it as a dropout instead).
* a reply that answers no message of this round or comes from another node
  than the one asked: logged and ignored (``unexpected`` in the report).
* a malformed reply (no ``upload`` or the wrong shape): :class:`FederatedRunError`.
* a non-finite upload: rejected by the server rule (state untouched), counted.
* fewer than ``min_participants`` accepted uploads in a round (at least 1: a
  round where no upload arrived always stops the run), or a secure round that
  cannot be completed (fewer than ``threshold`` participants left, a sum that
  fails its checks): :class:`FederatedRunError`.

Every round yields a :class:`~ssgd_optax.federated.RoundReport`;
:class:`RunSummary` (passed to ``on_end``) holds them with the final server
state and, given the participants' DP ``mechanism`` (e.g. the
``SparseVectorMechanism`` of ``dp_selective_sharing`` uploads), each
participant's ``(epsilon, delta)`` from the one accountant
(``privacy.compute_epsilon(mechanism, steps=rounds, delta=...)``) over the
rounds it was asked to upload in.

:class:`LoopbackGrid` runs both apps in one process with no network, for
tests and notebooks; it reports an exception in the ``ClientApp`` and a
dropped node as a real runtime does (error replies).

Needs the ``flower`` extra (``pip install "ssgd_optax[flower]"``, ``flwr`` >=
1.42; tested with 1.42.0 and Ray 2.55), and ``cryptography`` (the
``federated`` extra) for secure aggregation. Set
``XLA_PYTHON_CLIENT_PREALLOCATE=false`` when several JAX clients share a GPU.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import re
import secrets
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

try:
  import flwr as _flwr
  from flwr.app import (Array, ArrayRecord, ConfigRecord, Context, Error, Message,
                        MetricRecord, RecordDict)
  from flwr.clientapp import ClientApp
  from flwr.common.constant import ErrorCode
  from flwr.serverapp import ServerApp
  from flwr.serverapp.grid import Grid
  _FLWR_ERROR = None
except ImportError as _e:  # pragma: no cover - depends on the install
  # The module stays importable (docs, doctest collection); every entry
  # point raises a clear ImportError instead.
  _FLWR_ERROR = _e
  Grid = object

from ssgd_optax import _keys
from ssgd_optax import _validation
from ssgd_optax.federated import _rounds as rounds
from ssgd_optax.federated import _server as server_lib
from ssgd_optax.federated._simulation import DSSGD

__all__ = ['FederatedRunError', 'ParticipantPrivacy', 'RunSummary', 'make_client_app',
           'make_server_app', 'LoopbackGrid', 'run_loopback', 'MIN_FLWR_VERSION']

_STATE_FORMAT = 'ssgd_optax flower server state'
_STATE_VERSION = 1
_STATE_FILE = 'server-state.json'
_STATE_PREV = 'server-state.prev.json'

MIN_FLWR_VERSION = (1, 42)
_CLIENT_ERRORS = ('raise', 'dropout')
_FLOWER_ORDERS = ('round_robin', 'random', 'synchronous')
_SECURE_STEPS = ('setup', 'advertise', 'share', 'masked', 'consistency', 'unmask')
_POLL_S = 0.05
_MAX_TESTING_ROUNDS = 1_000_000
_log = logging.getLogger(__name__)


def _version_tuple(version: str) -> tuple[int, ...]:
  return tuple(int(p) for p in re.findall(r'\d+', version)[:2])


def _require_flwr() -> None:
  if _FLWR_ERROR is not None:
    raise ImportError('ssgd_optax.federated.flower needs Flower: '
                      'pip install "ssgd_optax[flower]"') from _FLWR_ERROR
  got = getattr(_flwr, '__version__', '0')
  if _version_tuple(got) < MIN_FLWR_VERSION:
    raise ImportError(f'ssgd_optax.federated.flower needs flwr >= '
                      f'{".".join(map(str, MIN_FLWR_VERSION))} (the Message API, the grid '
                      f'and the runtimes it was tested with); flwr {got} is installed: '
                      'pip install -U "ssgd_optax[flower]"')


class FederatedRunError(RuntimeError):
  """A federated run that cannot go on (too few participants, a broken client...)."""


class ParticipantPrivacy(NamedTuple):
  """One participant's privacy cost over a run, from ``privacy.compute_epsilon``.

  Attributes:
    rounds: rounds the participant was asked to upload in (an upper bound on
      its releases: a reply lost in transit may still have been released).
    epsilon: ``epsilon`` at ``delta`` of that many releases of the mechanism.
    delta: the ``delta``.
  """
  rounds: int
  epsilon: float
  delta: float


class RunSummary(NamedTuple):
  """The outcome of a :func:`make_server_app` run (passed to ``on_end``).

  Attributes:
    server: the final :class:`~ssgd_optax.federated.ServerState`.
    node_ids: ``node_ids[i]`` is the Flower node id of participant ``i``
      (``-1`` for a participant whose node never registered).
    rounds: one :class:`~ssgd_optax.federated.RoundReport` per round.
    privacy: ``None``, or with a ``mechanism``: ``{participant:
      ParticipantPrivacy}``.
  """
  server: server_lib.ServerState
  node_ids: tuple[int, ...]
  rounds: tuple[rounds.RoundReport, ...]
  privacy: dict[int, ParticipantPrivacy] | None

  @property
  def dropouts_per_round(self) -> list[int]:
    return [len(r.dropped) for r in self.rounds]


# ---------------------------------------------------------------------------
# Message contents.


def _to_numpy_tree(tree: Any) -> list[np.ndarray]:
  def leaf(x):
    x = jnp.asarray(x)
    if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
      x = jax.random.key_data(x)
    return np.asarray(x)
  return [leaf(x) for x in jax.tree.leaves(tree)]


def _from_numpy_tree(template: Any, arrays: list[np.ndarray]) -> Any:
  leaves, treedef = jax.tree.flatten(template)
  out = []
  for t, a in zip(leaves, arrays):
    t = jnp.asarray(t)
    if jnp.issubdtype(t.dtype, jax.dtypes.prng_key):
      out.append(jax.random.wrap_key_data(jnp.asarray(a), impl=jax.random.key_impl(t)))
    else:
      out.append(jnp.asarray(a, t.dtype))
  return jax.tree.unflatten(treedef, out)


def _record(**arrays: np.ndarray) -> ArrayRecord:
  return ArrayRecord({k: Array(np.asarray(v)) for k, v in arrays.items()})


def _check_sim(sim: Any) -> None:
  if not isinstance(sim, DSSGD):
    raise TypeError(f'sim must be a DSSGD from make_dssgd; got {type(sim).__name__}.')


def _sa_to_config(m: Any) -> dict:
  return {'sa_session': m.session, 'sa_round': int(m.round), 'sa_step': m.step,
          'sa_sender': int(m.sender), 'sa_recipient': int(m.recipient),
          'sa_payload': m.payload, 'sa_tag': m.tag}


def _sa_from_config(cfg: Any) -> Any:
  from ssgd_optax.federated import secure_aggregation as sa
  return sa.ProtocolMessage(bytes(cfg['sa_session']), int(cfg['sa_round']), str(cfg['sa_step']),
                            int(cfg['sa_sender']), int(cfg['sa_recipient']),
                            bytes(cfg['sa_payload']), bytes(cfg['sa_tag']))


# ---------------------------------------------------------------------------
# The client.


def _os_rekey(tree: Any) -> Any:
  """Every typed PRNG key in ``tree`` replaced by a fresh key from the OS."""

  def fresh(leaf):
    if isinstance(leaf, jax.Array) and jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key):
      return jax.random.key(_keys.os_seed(), impl=jax.random.key_impl(leaf))
    return leaf

  return jax.tree.map(fresh, tree)


class _Client:
  """One ``ClientApp``'s logic: local state, training, the secure-aggregation steps."""

  def __init__(self, sim: DSSGD, data_fn: Callable[[int], tuple[Any, Any]], flat0: jax.Array,
               identity: Callable[[Any], Any] | None, registry: Mapping[int, bytes] | None,
               record: Callable[[Any], Any] | None, testing_key: jax.Array | None):
    self.sim, self.data_fn, self.flat0 = sim, data_fn, flat0
    self.n = sim.config.num_participants
    self.secure = sim.config.secure_aggregation
    self.identity, self.registry, self.record = identity, registry, record
    self.testing_key = testing_key
    self.upload_state0 = sim.init(jax.random.key(0)).clients.upload_state
    self.update = jax.jit(sim.client_update)
    self._chain: list[jax.Array] = [] if testing_key is None else [testing_key]

  # -- helpers --------------------------------------------------------------

  def participant_of(self, msg: Message) -> int:
    pid = int(msg.content['config']['participant'])
    if not 0 <= pid < self.n:
      raise ValueError(f'participant index {pid} is out of range [0, {self.n}) for this '
                       'simulation (more nodes than participants?).')
    return pid

  def shard(self, pid: int) -> tuple[np.ndarray, np.ndarray]:
    x, y = self.data_fn(pid)
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim < 1 or y.ndim < 1 or x.shape[0] != y.shape[0] or x.shape[0] == 0:
      raise ValueError(f'data_fn({pid}) must return (x, y) with the same number M >= 1 of '
                       f'examples on axis 0; got x {x.shape}, y {y.shape}.')
    return x, y

  def training_key(self, pid: int, round_: int) -> jax.Array:
    """The OS's, or with ``testing_key`` the simulation's key of ``(round, participant)``."""
    if self.testing_key is None:
      return jax.random.key(_keys.os_seed())
    if not 0 <= round_ < _MAX_TESTING_ROUNDS:
      raise ValueError(f'round {round_} is outside [0, {_MAX_TESTING_ROUNDS}) (testing_key '
                       'derives the keys of every round before it).')
    while len(self._chain) <= round_:
      self._chain.append(rounds.round_keys(self._chain[-1]).next)
    return rounds.participant_keys(rounds.round_keys(self._chain[round_]).rest, pid)[1]

  def local_state(self, pid: int, context: Context) -> tuple[jax.Array, Any]:
    """The participant's local model and defence state (first use: fresh keys)."""
    template = jax.tree.map(lambda a: a[pid], self.upload_state0)
    if 'dssgd_local' not in context.state:
      return self.flat0, template if self.testing_key is not None else _os_rekey(template)
    stored = context.state['dssgd_local']
    n_up = len(jax.tree.leaves(template))
    return (jnp.asarray(stored['params'].numpy()),
            _from_numpy_tree(template, [stored[f'up{i}'].numpy() for i in range(n_up)]))

  def train(self, pid: int, round_: int, download: tuple[Any, Any],
            context: Context) -> tuple[jax.Array, Any, jax.Array]:
    """Download, train, upload through the defence; returns ``(local, state, upload)``."""
    local, up = self.local_state(pid, context)
    x, y = self.shard(pid)
    try:
      return self.update(local, up, jnp.asarray(download[0]), jnp.asarray(download[1]),
                         jnp.asarray(x), jnp.asarray(y), self.training_key(pid, round_))
    except (TypeError, ValueError) as e:
      raise ValueError(f'participant {pid}: the model cannot train on data_fn({pid}) = '
                       f'(x {x.dtype}{list(x.shape)}, y {y.dtype}{list(y.shape)}): {e}') from e

  @staticmethod
  def store(context: Context, local: jax.Array, up: Any) -> None:
    context.state['dssgd_local'] = _record(
        params=np.asarray(local), **{f'up{i}': a for i, a in enumerate(_to_numpy_tree(up))})

  # -- plain orders ---------------------------------------------------------

  def on_train(self, msg: Message, context: Context) -> Message:
    if self.secure is not None:
      raise ValueError('this client runs secure aggregation: its upload leaves the node only '
                       'masked; refusing a plain train message.')
    pid = self.participant_of(msg)
    local, up, shared = self.train(pid, int(msg.content['config']['round']),
                                   self.download(msg.content['arrays']), context)
    self.store(context, local, up)
    content = RecordDict({'arrays': _record(upload=np.asarray(shared)),
                          'metrics': MetricRecord({'shared': int(jnp.sum(shared != 0))})})
    return Message(content, reply_to=msg)

  # -- secure aggregation ---------------------------------------------------

  def own_participant_id(self, signing_key: Any) -> int:
    public = signing_key.public_key().public_bytes_raw()
    ids = [i for i, k in self.registry.items() if k == public]
    if not ids:
      raise ValueError("this node's identity key is not in the registry: register its "
                       'public key (distributed out of band) before the run.')
    return ids[0]

  def setup(self, cfg: Any, context: Context) -> tuple[Any, dict]:
    """Checks the server's settings against the client's own; a fresh ``Participant``."""
    from ssgd_optax.federated import secure_aggregation as sa
    mine = {'sa_n': self.n, 'sa_t': self.secure.threshold, 'sa_frac_bits': self.secure.frac_bits,
            'sa_bits': self.secure.bits}
    for name, value in mine.items():
      if int(cfg[name]) != value:
        raise ValueError(f'the server runs secure aggregation with {name}={int(cfg[name])}; '
                         f'this client is configured for {value}: refusing.')
    signing_key = self.identity(context)
    pid = self.own_participant_id(signing_key)
    part = sa.Participant(pid, self.n, self.secure.threshold, bytes(cfg['sa_server_key']),
                          signing_key=signing_key, registry=self.registry,
                          session=bytes(cfg['sa_session']), frac_bits=self.secure.frac_bits,
                          bits=self.secure.bits, clip=self.secure.clip, dp=self.secure.dp,
                          record=sa.ParticipantRecord(self.record(context)))
    return part, {'participant': pid, 'sa_channel_key': part.channel_public_key}

  def download(self, arrays: Any) -> tuple[np.ndarray, np.ndarray]:
    """The ``global`` and ``mask`` arrays as training uses them (the parameters' dtype)."""
    p, dtype = self.sim.num_params, self.flat0.dtype
    g, m = np.asarray(arrays['global'].numpy()), np.asarray(arrays['mask'].numpy())
    if g.shape != (p,) or m.shape != (p,):
      raise ValueError(f'the server sent global {g.shape} and mask {m.shape}; ({p},) expected.')
    return g.astype(dtype), m.astype(bool)

  def masked(self, part: Any, msg: Message, context: Context) -> dict:
    """Refuses a repeated model before training, then trains and uploads masked."""
    from ssgd_optax.federated import secure_aggregation as sa
    g, m = self.download(msg.content['arrays'])
    # Of what training uses, with -0.0 as 0.0: a model re-sent in another dtype or
    # with signed zeros trains the same and must have the same digest.
    digest = sa.model_digest({'global': g + g.dtype.type(0), 'mask': m})
    part.record.check_contribution(part.session, part.round, digest)
    local, up, shared = self.train(part.index, part.round, (g, m), context)
    out = part.masked_input(_sa_from_config(msg.content['config']), np.asarray(shared),
                            model_digest=digest)
    self.store(context, local, up)
    return _sa_to_config(out)

  def on_query(self, msg: Message, context: Context) -> Message:
    from ssgd_optax.federated import secure_aggregation as sa
    if self.secure is None:
      raise ValueError('secure-aggregation message for a simulation without '
                       'secure_aggregation (make_dssgd(..., secure_aggregation=...)).')
    cfg = msg.content['config']
    step = str(cfg['step'])
    if step not in _SECURE_STEPS:
      raise ValueError(f'unknown secure-aggregation step {step!r}.')
    if step == 'setup':
      part, out = self.setup(cfg, context)
    else:
      part = sa.Participant.from_bytes(bytes(context.state['dssgd_secagg']['participant']))
      if self.participant_of(msg) != part.index:
        raise ValueError(f'the server addressed participant {self.participant_of(msg)}; this '
                         f'node is participant {part.index}: refusing.')
      if step == 'advertise':
        out = _sa_to_config(part.advertise(int(cfg['round'])))
      elif step == 'share':
        out = _sa_to_config(part.share(_sa_from_config(cfg)))
      elif step == 'masked':
        out = self.masked(part, msg, context)
      elif step == 'consistency':
        out = _sa_to_config(part.consistency_check(_sa_from_config(cfg)))
      else:
        out = _sa_to_config(part.unmask(_sa_from_config(cfg)))
    context.state['dssgd_secagg'] = ConfigRecord({'participant': part.to_bytes()})
    return Message(RecordDict({'config': ConfigRecord(out)}), reply_to=msg)


def _check_client_args(sim: DSSGD, data_fn: Any, identity: Any, registry: Any, record: Any,
                       testing_key: Any) -> jax.Array | None:
  if not callable(data_fn):
    raise TypeError('data_fn must be a callable participant_id -> (x, y).')
  secure = sim.config.secure_aggregation is not None
  given = {'identity': identity, 'registry': registry, 'record': record}
  if not secure:
    extra = [k for k, v in given.items() if v is not None]
    if extra:
      raise ValueError(f'{", ".join(extra)}: for secure aggregation only, and this simulation '
                       'has none (make_dssgd(..., secure_aggregation=...)).')
  else:
    missing = [k for k, v in given.items() if v is None]
    if missing:
      raise ValueError(f'secure aggregation needs identity, registry and record; missing: '
                       f'{", ".join(missing)} (the node\'s identity key, the registry of every '
                       'identity public key obtained out of band, the file of its '
                       'ParticipantRecord).')
    for name in ('identity', 'record'):
      if not callable(given[name]):
        raise TypeError(f'{name} must be a callable of the node\'s flwr Context.')
    n = sim.config.num_participants
    if not isinstance(registry, Mapping) or set(registry) != set(range(n)) or not all(
        isinstance(v, bytes) and len(v) == 32 for v in registry.values()):
      raise ValueError(f'registry must map every participant id 0..{n - 1} to its raw 32-byte '
                       'Ed25519 public key.')
  return None if testing_key is None else _keys.check_key(testing_key, 'testing_key')


def make_client_app(sim: DSSGD, data_fn: Callable[[int], tuple[Any, Any]],
                    initial_params: Any, *, identity: Callable[[Any], Any] | None = None,
                    registry: Mapping[int, bytes] | None = None,
                    record: Callable[[Any], str | os.PathLike] | None = None,
                    testing_key: jax.Array | None = None) -> ClientApp:
  """A Flower ``ClientApp`` running ``sim.client_update`` for one participant.

  It answers ``train`` messages (plain orders) and, when
  ``sim.config.secure_aggregation`` is set, the ``query`` messages of the
  secure-aggregation steps (the upload leaves the node only masked). The
  local model and the defence's state live in ``context.state`` between
  rounds (their first value: ``initial_params`` and the defence's ``init``
  with fresh OS keys). Message formats: the module docstring.

  Args:
    sim: the simulation whose client logic and round settings to run.
    data_fn: ``participant_id -> (x, y)``, the participant's shard: ``x``
      ``(M, ...)`` and ``y`` ``(M,)`` with the same ``M``, as one row of the
      simulation's ``x``/``y``.
    initial_params: the initial parameters (pytree).
    identity: secure aggregation: ``context -> Ed25519PrivateKey``, this
      node's long-term identity key (e.g. ``secure_aggregation.read_identity``
      of a path in ``context.node_config``); its registry entry is the node's
      participant id.
    registry: secure aggregation: ``{participant_id: raw Ed25519 public
      key}`` for all ``N`` participants, obtained out of band (not from the
      server).
    record: secure aggregation: ``context -> path`` of the node's
      :class:`~ssgd_optax.federated.secure_aggregation.ParticipantRecord`
      file (its folder must exist); it must survive restarts.
    testing_key: ``None`` (the default: training and defence keys from the
      OS), or for tests and reproducible runs the key the simulation was
      started with (``sim.init(testing_key)``): the keys are then those of the
      in-process simulation. Never set it from anything the server sends.

  Returns:
    A ``flwr.clientapp.ClientApp``. Inside it, a participant index out of
    ``[0, N)``, data the model cannot train on, settings that differ from the
    client's own, or a refused contribution raise (the server then stops with
    :class:`FederatedRunError`, or counts a dropout).

  Example:

  >>> import jax, jax.numpy as jnp
  >>> from ssgd_optax import federated
  >>> from ssgd_optax.federated import flower
  >>> loss = lambda p, x, y: jnp.mean((x @ p - y) ** 2)
  >>> sim = federated.make_dssgd(loss, jnp.zeros(2), num_participants=2, learning_rate=0.1,
  ...                            batch_size=2)
  >>> app = flower.make_client_app(sim, lambda i: (jnp.ones((4, 2)), jnp.ones(4)),
  ...                              jnp.zeros(2))
  >>> type(app).__name__
  'ClientApp'
  """
  _require_flwr()
  _check_sim(sim)
  testing_key = _check_client_args(sim, data_fn, identity, registry, record, testing_key)
  flat0 = sim.ravel(initial_params)
  if flat0.shape != (sim.num_params,):
    raise ValueError(f'initial_params has {flat0.size} entries; the simulation has '
                     f'{sim.num_params}.')
  client = _Client(sim, data_fn, flat0, identity, None if registry is None else dict(registry),
                   record, testing_key)
  app = ClientApp()

  @app.train()
  def train(msg: Message, context: Context) -> Message:
    return client.on_train(msg, context)

  @app.query()
  def secure_step(msg: Message, context: Context) -> Message:
    return client.on_query(msg, context)

  return app


# ---------------------------------------------------------------------------
# The server.


def _wait_for_nodes(grid: Grid, num_nodes: int, timeout: float) -> list[int]:
  """Waits until ``num_nodes`` nodes are connected; they register asynchronously."""
  deadline = time.monotonic() + timeout
  while True:
    nodes = sorted(int(i) for i in grid.get_node_ids())
    if len(nodes) >= num_nodes or time.monotonic() >= deadline:
      break
    time.sleep(0.2)
  if len(nodes) != num_nodes:
    raise FederatedRunError(
        f'expected num_nodes={num_nodes} connected nodes, saw {len(nodes)} after waiting '
        f'{timeout:g} s (node_timeout); start {num_nodes} SuperNodes (simulation: '
        f'num_supernodes={num_nodes}).')
  return nodes


def _who(label: Any) -> str:
  """``participant i``, or a set-up label (the node's id is not known yet)."""
  return label if isinstance(label, str) else f'participant {label}'


class _RoundLog:
  """What happens to each participant in a round, as the server sees it."""

  def __init__(self, round_: int):
    self.round = round_
    self.asked: list[int] = []
    self.accepted: list[int] = []
    self.dropped: list[int] = []
    self.rejected: list[int] = []
    self.unexpected = 0
    self.shared: dict[int, int] = {}

  def drop(self, who: Any, why: str, *args: Any) -> None:
    _log.warning('round %d: %s ' + why, self.round, _who(who), *args)
    self.dropped.append(who)

  def uploaded(self, pid: int, upload: jax.Array, ok: Any) -> None:
    self.shared[pid] = int(jnp.sum(upload != 0))
    if bool(ok):
      self.accepted.append(pid)
    else:
      self.rejected.append(pid)
      _log.warning('round %d: rejected the non-finite upload of participant %d.',
                   self.round, pid)

  def report(self) -> rounds.RoundReport:
    return rounds.RoundReport(self.round, tuple(self.asked), tuple(self.accepted),
                              tuple(sorted(self.dropped)), tuple(self.rejected),
                              self.unexpected, dict(self.shared))


class _ServerSpec(NamedTuple):
  """The validated arguments of :func:`make_server_app`."""
  sim: DSSGD
  flat0: jax.Array
  rounds: int
  key: jax.Array
  num_nodes: int
  min_participants: int
  client_errors: str
  node_timeout: float
  reply_timeout: float
  mechanism: Any
  delta: float | None
  accountant: str
  on_round: Callable[[int, server_lib.ServerState], None] | None
  on_end: Callable[[RunSummary], None] | None
  checkpoint_dir: str | None = None
  resume: bool = False


# ------------------------------------------------------- the server's checkpoint
#
# After every round the server writes what it needs to continue (rounds done,
# its state, the key of the next round, the rounds' reports) to one JSON file
# with the SHA-256 of every array and of the whole record, atomically (a
# temporary file, fsync, rename), keeping the previous one: a kill leaves an
# intact file, and a damaged newest file is named in one warning and the
# previous one used.


def _digest_of(record: dict) -> str:
  body = {k: v for k, v in record.items() if k != 'sha256'}
  return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(',', ':')).encode()
                        ).hexdigest()


def _array_json(a: Any) -> dict:
  a = np.ascontiguousarray(np.asarray(a))
  raw = a.tobytes()
  return {'dtype': a.dtype.str, 'shape': list(a.shape), 'data': base64.b64encode(raw).decode(),
          'sha256': hashlib.sha256(raw).hexdigest()}


def _array_from_json(d: Any) -> np.ndarray:
  raw = base64.b64decode(d['data'], validate=True)
  if hashlib.sha256(raw).hexdigest() != d['sha256']:
    raise ValueError('an array does not match its SHA-256')
  return np.frombuffer(raw, np.dtype(d['dtype'])).reshape(d['shape']).copy()


def _identity(spec: _ServerSpec) -> dict:
  cfg = spec.sim.config
  return {'num_params': int(spec.sim.num_params), 'num_participants': cfg.num_participants,
          'order': cfg.order, 'secure_aggregation': cfg.secure_aggregation is not None,
          'rounds': spec.rounds}


def _rounds_done(srv: server_lib.ServerState) -> int:
  return int(np.asarray(srv.round).item())  # a scalar, or (1,) after some jitted rules


def _save_state(spec: _ServerSpec, srv: server_lib.ServerState, key: jax.Array,
                reports: list[rounds.RoundReport]) -> None:
  record = {'format': _STATE_FORMAT, 'version': _STATE_VERSION, **_identity(spec),
            'rounds_done': _rounds_done(srv), 'key': _array_json(jax.random.key_data(key)),
            'server': {name: _array_json(v) for name, v in srv._asdict().items()},
            'reports': [{**r._asdict(), 'shared': {str(k): v for k, v in r.shared.items()}}
                        for r in reports]}
  record['sha256'] = _digest_of(record)
  folder = spec.checkpoint_dir
  path, tmp = os.path.join(folder, _STATE_FILE), os.path.join(folder, _STATE_FILE + '.tmp')
  with open(tmp, 'w', encoding='utf-8') as f:
    json.dump(record, f)
    f.flush()
    os.fsync(f.fileno())
  if os.path.exists(path):
    os.replace(path, os.path.join(folder, _STATE_PREV))
  os.replace(tmp, path)


def _read_state(spec: _ServerSpec, path: str):
  with open(path, encoding='utf-8') as f:
    record = json.load(f)
  if not isinstance(record, dict) or record.get('format') != _STATE_FORMAT:
    raise ValueError('not a server checkpoint')
  if record.get('version') != _STATE_VERSION or record.get('sha256') != _digest_of(record):
    raise ValueError('its record does not match its SHA-256 (or is of another version)')
  want = _identity(spec)
  have = {k: record.get(k) for k in want}
  if have != want:
    raise FederatedRunError(
        f'the server checkpoint {path} is of another run ({have}); this server runs {want}. '
        'Name another checkpoint_dir or restore it with the settings that wrote it.')
  srv = server_lib.ServerState(**{k: jnp.asarray(_array_from_json(v))
                                  for k, v in record['server'].items()})
  key = jax.random.wrap_key_data(jnp.asarray(_array_from_json(record['key'])),
                                 impl=jax.random.key_impl(spec.key))
  reports = [rounds.RoundReport(**{**r, **{k: tuple(r[k]) for k in (
      'asked', 'accepted', 'dropped', 'rejected')}, 'shared': {
          int(k): v for k, v in r['shared'].items()}}) for r in record['reports']]
  if _rounds_done(srv) != record['rounds_done'] or len(reports) != record['rounds_done']:
    raise ValueError('its round count does not match its state')
  return srv, key, reports


def _restore_state(spec: _ServerSpec):
  """``(server state, next key, reports)`` of the newest intact checkpoint, or ``None``."""
  found, damaged = None, []
  for name in (_STATE_FILE, _STATE_PREV):
    path = os.path.join(spec.checkpoint_dir, name)
    if not os.path.exists(path):
      continue
    try:
      found = _read_state(spec, path)
      break
    except FederatedRunError:
      raise
    except (OSError, ValueError, KeyError, TypeError) as e:
      damaged.append((path, ' '.join(str(e).split())[:100] or type(e).__name__))
  for path, why in damaged:
    _log.warning('server checkpoint %s is damaged (%s)%s', path, why,
                 f'; using the one of round {_rounds_done(found[0])}' if found else
                 '; no intact server checkpoint is left: starting from round 0')
  return found


_download = jax.jit(rounds.participant_download, static_argnames=('fraction', 'criterion'))
_add = jax.jit(rounds.add_upload)
_mean = jax.jit(rounds.apply_mean)


class _ServerRun:
  """One run of the parameter server over a Flower grid."""

  def __init__(self, spec: _ServerSpec, grid: Grid):
    self.spec, self.grid = spec, grid
    self.cfg = spec.sim.config
    self.n, self.p = self.cfg.num_participants, spec.sim.num_params
    self.nodes: dict[int, int] = {}   # participant -> node id
    self.sa_server = None

  # -- transport ------------------------------------------------------------

  def exchange(self, msgs: list[Message], who: list[Any], log: _RoundLog) -> dict[Any, Message]:
    """Sends ``msgs`` (to ``who``); returns ``{who: reply}``; counts dropouts in ``log``."""
    ids = list(self.grid.push_messages(msgs))
    pending = {mid: (w, m.metadata.dst_node_id) for mid, m, w in zip(ids, msgs, who)}
    got = {}
    deadline = time.monotonic() + self.spec.reply_timeout
    while pending:
      for reply in self.grid.pull_messages(list(pending)):
        mid = reply.metadata.reply_to_message_id
        if mid not in pending:
          log.unexpected += 1
          _log.warning('round %d: ignored a reply from node %s to no pending message of '
                       'this round.', log.round, reply.metadata.src_node_id)
          continue
        w, node = pending[mid]
        if reply.has_error():
          del pending[mid]
          self.error_reply(reply, w, node, log)
          continue
        if int(reply.metadata.src_node_id) != int(node):
          log.unexpected += 1
          _log.warning('round %d: ignored a reply from node %s to the message sent to '
                       '%s (node %s).', log.round, reply.metadata.src_node_id, _who(w), node)
          continue
        del pending[mid]
        got[w] = reply
      if not pending or time.monotonic() >= deadline:
        break
      time.sleep(_POLL_S)
    for w, node in pending.values():
      log.drop(w, '(node %s) dropped out: no reply within reply_timeout=%g s.', node,
               self.spec.reply_timeout)
    return got

  def error_reply(self, reply: Message, who: Any, node: int, log: _RoundLog) -> None:
    code, reason = reply.error.code, reply.error.reason
    fatal = code in (ErrorCode.CLIENT_APP_RAISED_EXCEPTION, ErrorCode.LOAD_CLIENT_APP_EXCEPTION)
    if fatal and self.spec.client_errors == 'raise':
      raise FederatedRunError(f'round {log.round}: the ClientApp of {_who(who)} (node '
                              f'{node}) failed (error code {code}): {reason}')
    log.drop(who, '(node %s) dropped out: error code %d: %s', node, code, reason)

  def upload_of(self, reply: Message, pid: int, r: int) -> jax.Array:
    try:
      up = reply.content['arrays']['upload'].numpy()
    except (KeyError, AttributeError) as e:
      raise FederatedRunError(f'round {r}: the reply of participant {pid} (node '
                              f'{reply.metadata.src_node_id}) has no arrays["upload"]: '
                              f'{e!r}') from e
    try:
      return rounds.check_upload(up, self.p)
    except ValueError as e:
      raise FederatedRunError(f'round {r}: participant {pid} (node '
                              f'{reply.metadata.src_node_id}): {e}') from e

  def train_arrays(self, srv: server_lib.ServerState, keys: rounds.RoundKeys,
                   pid: int) -> ArrayRecord:
    mask, _ = _download(srv, keys.rest, pid, fraction=self.cfg.theta_d,
                        criterion=self.cfg.download)
    return _record(**{'global': np.asarray(srv.params), 'mask': np.asarray(mask)})

  def train_message(self, srv, keys, pid, r) -> Message:
    content = RecordDict({'arrays': self.train_arrays(srv, keys, pid),
                          'config': ConfigRecord({'participant': pid, 'round': r})})
    return Message(content, dst_node_id=self.nodes[pid], message_type='train', group_id=str(r))

  def query(self, node: int, step: str, r: int, cfg: dict, arrays: Any = None) -> Message:
    content = {'config': ConfigRecord({'step': step, 'round': r, **cfg})}
    if arrays is not None:
      content['arrays'] = arrays
    return Message(RecordDict(content), dst_node_id=node, message_type='query', group_id=str(r))

  # -- plain orders ---------------------------------------------------------

  def sequential_round(self, srv, keys, turn, log):
    """``round_robin``/``random``: one at a time; the server adds each upload."""
    order = [int(i) for i in rounds.turn_order(self.cfg.order, keys.order, self.n)
             if int(i) in turn]
    for pid in order:
      got = self.exchange([self.train_message(srv, keys, pid, log.round)], [pid], log)
      if pid in got:
        up = self.upload_of(got[pid], pid, log.round)
        srv, ok = _add(srv, up, decay=self.cfg.stat_decay)
        log.uploaded(pid, up, ok)
    return srv

  def synchronous_round(self, srv, keys, turn, log):
    """``synchronous``: all from one model; the server applies the mean of the accepted."""
    got = self.exchange([self.train_message(srv, keys, pid, log.round) for pid in turn],
                        list(turn), log)
    ups = {pid: self.upload_of(m, pid, log.round) for pid, m in got.items()}
    if ups:
      who = sorted(ups)
      srv, ok = _mean(srv, jnp.stack([ups[i] for i in who]), decay=self.cfg.stat_decay)
      for pid, o in zip(who, ok):
        log.uploaded(pid, ups[pid], o)
    return srv

  # -- secure aggregation ---------------------------------------------------

  def secure_setup(self, nodes: list[int]) -> None:
    """One session for the run: each node names its participant id and channel key."""
    from ssgd_optax.federated import secure_aggregation as sa
    secure = self.cfg.secure_aggregation
    session = secrets.token_bytes(16)
    self.sa_server = sa.Server(self.n, secure.threshold, session=session,
                               frac_bits=secure.frac_bits, bits=secure.bits, clip=secure.clip,
                               dp=secure.dp)
    log = _RoundLog(-1)
    cfg = {'sa_n': self.n, 'sa_t': secure.threshold, 'sa_session': session,
           'sa_server_key': self.sa_server.public_key, 'sa_frac_bits': secure.frac_bits,
           'sa_bits': secure.bits}
    got = self.exchange([self.query(node, 'setup', -1, cfg) for node in nodes],
                        [f'the participant at set-up on node {node}' for node in nodes], log)
    for label, reply in got.items():
      node = int(reply.metadata.src_node_id)
      try:
        pid = int(reply.content['config']['participant'])
        channel_key = bytes(reply.content['config']['sa_channel_key'])
      except (KeyError, TypeError, ValueError) as e:
        raise FederatedRunError(f'secure-aggregation set-up: malformed reply from node {node}: '
                                f'{e!r}') from e
      if not 0 <= pid < self.n or pid in self.nodes:
        raise FederatedRunError(f'secure-aggregation set-up: node {node} claims participant id '
                                f'{pid}, ' + (f'already claimed by node {self.nodes[pid]}.'
                                              if pid in self.nodes else
                                              f'outside [0, {self.n}).'))
      try:
        self.sa_server.register(pid, channel_key)
      except sa.SecureAggregationError as e:
        raise FederatedRunError(f'secure-aggregation set-up: node {node}: {e}') from e
      self.nodes[pid] = node
    if len(self.nodes) < secure.threshold:
      raise FederatedRunError(f'secure-aggregation set-up: only {len(self.nodes)} participants '
                              f'registered; threshold={secure.threshold}.')

  def secure_step(self, name: str, msgs: dict[int, Any], log: _RoundLog,
                  arrays: Callable[[int], Any] | None = None) -> list[Any]:
    """One protocol step: ``msgs[pid]`` to each participant, their protocol messages back."""
    who = sorted(msgs)
    out = [self.query(self.nodes[pid], name, log.round,
                      {'participant': pid, **({} if msgs[pid] is None else
                                              _sa_to_config(msgs[pid]))},
                      None if arrays is None else arrays(pid)) for pid in who]
    replies = self.exchange(out, who, log)
    parsed = []
    for pid, reply in sorted(replies.items()):
      try:
        parsed.append(_sa_from_config(reply.content['config']))
      except (KeyError, TypeError, ValueError) as e:
        raise FederatedRunError(f'round {log.round}: malformed secure-aggregation reply from '
                                f'participant {pid}: {e!r}') from e
    return parsed

  def secure_round(self, srv, keys, turn, log):
    """Advertise, share, masked input, consistency, unmask; apply the survivors' mean."""
    from ssgd_optax.federated import secure_aggregation as sa
    server = self.sa_server
    server.start_round(log.round)
    try:
      keys_msgs = server.collect_keys(self.secure_step('advertise', {i: None for i in turn},
                                                       log))
      forward = server.collect_shares(self.secure_step('share', keys_msgs, log))
      survivors = server.collect_masked(self.secure_step(
          'masked', forward, log, lambda pid: self.train_arrays(srv, keys, pid)))
      signatures = server.collect_consistency(self.secure_step('consistency', survivors, log))
      total = server.finish(self.secure_step('unmask', signatures, log))
    except sa.SecureAggregationError as e:
      raise FederatedRunError(f'round {log.round}: secure aggregation failed '
                              f'({type(e).__name__}): {e}; dropped so far: '
                              f'{sorted(log.dropped)}.') from e
    srv, report = rounds.apply_secure_sum(srv, total, round_=log.round, asked=turn,
                                          survivors=survivors, decay=self.cfg.stat_decay)
    log.accepted, log.rejected = list(report.accepted), list(report.rejected)
    return srv

  # -- the run --------------------------------------------------------------

  def participants_to_ask(self, log: _RoundLog) -> list[int]:
    alive = {int(i) for i in self.grid.get_node_ids()}
    for pid in range(self.n):
      if pid not in self.nodes:
        log.dropped.append(pid)
      elif self.nodes[pid] in alive:
        log.asked.append(pid)
      else:
        log.drop(pid, '(node %s) dropped out: it left the grid.', self.nodes[pid])
    return list(log.asked)

  def check_round(self, report: rounds.RoundReport) -> None:
    r = report.round
    if not report.accepted:
      raise FederatedRunError(f'round {r}: no upload was accepted (dropped: '
                              f'{list(report.dropped)}, rejected: {list(report.rejected)}); '
                              'stopping instead of training on nothing.')
    if len(report.accepted) < self.spec.min_participants:
      raise FederatedRunError(f'round {r}: only {len(report.accepted)} uploads accepted, fewer '
                              f'than min_participants={self.spec.min_participants} (dropped: '
                              f'{list(report.dropped)}).')

  def privacy(self, reports: list[rounds.RoundReport]) -> dict[int, ParticipantPrivacy] | None:
    """Each participant's cost over the rounds it was asked in (the one accountant)."""
    if self.spec.mechanism is None:
      return None
    from ssgd_optax import privacy  # pylint: disable=g-import-not-at-top (the privacy extra)
    out = {}
    for pid in range(self.n):
      asked = sum(pid in r.asked for r in reports)
      eps = privacy.compute_epsilon(self.spec.mechanism, steps=asked, delta=self.spec.delta,
                                    accountant=self.spec.accountant)
      out[pid] = ParticipantPrivacy(asked, float(eps), float(self.spec.delta))
      _log.info('privacy: participant %d was asked to upload in %d rounds: (%g, %g)-DP.', pid,
                asked, eps, self.spec.delta)
    return out

  def run(self) -> RunSummary:
    srv = server_lib.server_init(self.spec.flat0)
    key, reports = self.spec.key, []
    restored = _restore_state(self.spec) if self.spec.resume else None  # before any message
    if restored is not None:
      srv, key, reports = restored
      _log.info('DSSGD server: resuming after round %d of %d from %s.', _rounds_done(srv) - 1,
                self.spec.rounds, self.spec.checkpoint_dir)
    # A fresh secure-aggregation session per run, restarted or not: a resumed
    # server never reuses a (session, round) its participants contributed to.
    nodes = _wait_for_nodes(self.grid, self.spec.num_nodes, self.spec.node_timeout)
    if self.cfg.secure_aggregation is None:
      self.nodes = dict(enumerate(nodes))
    else:
      self.secure_setup(nodes)
    _log.info('DSSGD server: %d nodes connected; participant -> node %s.', self.n, self.nodes)
    body = (self.secure_round if self.cfg.secure_aggregation is not None else
            self.synchronous_round if self.cfg.order == 'synchronous' else
            self.sequential_round)
    for r in range(_rounds_done(srv), self.spec.rounds):
      keys = rounds.round_keys(key)
      key = keys.next
      log = _RoundLog(r)
      srv = rounds.end_round(body(srv, keys, self.participants_to_ask(log), log))
      report = log.report()
      reports.append(report)
      _log.info('round %d: %d accepted, %d dropped %s, %d rejected, %d unexpected replies.',
                r, len(report.accepted), len(report.dropped), list(report.dropped),
                len(report.rejected), report.unexpected)
      if self.spec.checkpoint_dir is not None:
        _save_state(self.spec, srv, key, reports)
      if self.spec.on_round is not None:
        self.spec.on_round(r, srv)
      self.check_round(report)
    node_ids = tuple(self.nodes.get(i, -1) for i in range(self.n))
    return RunSummary(srv, node_ids, tuple(reports), self.privacy(reports))


def _check_server_args(sim: DSSGD, initial_params: Any, *, rounds_: int, key: Any,
                       num_nodes: Any, min_participants: Any, client_errors: Any,
                       node_timeout: Any, reply_timeout: Any, mechanism: Any, delta: Any,
                       accountant: Any, on_round: Any, on_end: Any,
                       checkpoint_dir: Any = None, resume: Any = False) -> _ServerSpec:
  _check_sim(sim)
  if not isinstance(resume, bool):
    raise TypeError(f'resume must be a bool; got {resume!r}.')
  if checkpoint_dir is not None:
    if not isinstance(checkpoint_dir, (str, os.PathLike)) or not os.fspath(checkpoint_dir):
      raise TypeError(f'checkpoint_dir must be None or a folder path; got {checkpoint_dir!r}.')
    checkpoint_dir = os.path.abspath(os.fspath(checkpoint_dir))
    if os.path.exists(checkpoint_dir) and not os.path.isdir(checkpoint_dir):
      raise ValueError(f'checkpoint_dir {checkpoint_dir!r} is a file; name a folder.')
    os.makedirs(checkpoint_dir, exist_ok=True)
    if not os.access(checkpoint_dir, os.W_OK):
      raise ValueError(f'checkpoint_dir {checkpoint_dir!r} is not writable.')
    held = any(os.path.exists(os.path.join(checkpoint_dir, n)) for n in (_STATE_FILE,
                                                                        _STATE_PREV))
    if held and not resume:
      raise ValueError(f'checkpoint_dir {checkpoint_dir!r} already holds a server checkpoint: '
                       'pass resume=True to continue that run, or name another folder.')
  elif resume:
    raise ValueError('resume=True needs checkpoint_dir (where the server checkpoint is).')
  cfg = sim.config
  n = cfg.num_participants
  if cfg.order not in _FLOWER_ORDERS:
    raise ValueError(f'the Flower server runs the orders {_FLOWER_ORDERS}; the simulation has '
                     f"order={cfg.order!r} (simulation only). Build the simulation with one of "
                     'them.')
  _validation.check_int('rounds', rounds_, minimum=1)
  key = _keys.check_key(key)
  num_nodes = n if num_nodes is None else num_nodes
  _validation.check_int('num_nodes', num_nodes, minimum=1)
  if num_nodes != n:
    raise ValueError(f'num_nodes must equal the simulation\'s num_participants={n} (one '
                     f'node per participant); got {num_nodes}.')
  _validation.check_int('min_participants', min_participants, minimum=1)
  if min_participants > n:
    raise ValueError(f'min_participants must be in [1, {n}]; got {min_participants}.')
  _validation.check_choice('client_errors', client_errors, _CLIENT_ERRORS)
  _validation.check_positive('node_timeout', node_timeout)
  _validation.check_positive('reply_timeout', reply_timeout)
  if mechanism is not None:
    if delta is None:
      raise ValueError('mechanism needs delta= (the privacy report is (epsilon, delta)).')
    from ssgd_optax import privacy  # pylint: disable=g-import-not-at-top (the privacy extra)
    # Validates the mechanism, delta and accountant now rather than after the run.
    privacy.compute_epsilon(mechanism, steps=1, delta=delta, accountant=accountant)
  elif delta is not None:
    raise ValueError('delta is for the privacy report: pass the participants\' mechanism too.')
  for name, fn in (('on_round', on_round), ('on_end', on_end)):
    if fn is not None and not callable(fn):
      raise TypeError(f'{name} must be callable or None.')
  flat0 = sim.ravel(initial_params)
  if flat0.shape != (sim.num_params,):
    raise ValueError(f'initial_params has {flat0.size} entries; the simulation has '
                     f'{sim.num_params}.')
  return _ServerSpec(sim, flat0, rounds_, key, num_nodes, min_participants, client_errors,
                     float(node_timeout), float(reply_timeout), mechanism, delta, accountant,
                     on_round, on_end, checkpoint_dir, resume)


def make_server_app(sim: DSSGD, initial_params: Any, *, rounds: int, key: jax.Array,
                    num_nodes: int | None = None, min_participants: int = 1,
                    client_errors: str = 'raise', node_timeout: float = 120.0,
                    reply_timeout: float = 600.0, mechanism: Any = None,
                    delta: float | None = None, accountant: str = 'pld',
                    on_round: Callable[[int, server_lib.ServerState], None] | None = None,
                    on_end: Callable[[RunSummary], None] | None = None,
                    checkpoint_dir: str | os.PathLike | None = None,
                    resume: bool = False) -> ServerApp:
  """A Flower ``ServerApp`` running the DSSGD parameter server for ``sim``'s rounds.

  The order, the download (``theta_d``, criterion), the statistics and secure
  aggregation are the simulation's (``sim.config``): ``"round_robin"`` and
  ``"random"`` send to one participant at a time in the simulation's turns
  and add each upload before the next download; ``"synchronous"`` sends to
  all at once and applies the mean of the accepted uploads; with secure
  aggregation every round is one round of the protocol
  (:mod:`~ssgd_optax.federated.secure_aggregation`: advertise, share, masked
  input, consistency, unmask, each a Flower ``query`` message to the
  participants still in; one session per run) so the server only ever
  receives masked uploads and applies their sum divided by the number of
  survivors. Download masks come from ``key`` (the server's randomness);
  the participants draw their own training keys. Faults are handled as
  described in the module docstring.

  Args:
    sim: the simulation (parameter layout, ``N``, round settings).
    initial_params: the initial parameters (pytree).
    rounds: number of rounds ``>= 1``.
    key: the key of the first round, as passed to ``sim.init``.
    num_nodes: nodes to wait for; must be the simulation's ``N`` (the
      default).
    min_participants: ``1 <= m <= N``: stop when fewer uploads are accepted
      in a round.
    client_errors: ``"raise"`` (an exception in a ``ClientApp`` stops the
      run) or ``"dropout"``.
    node_timeout: seconds ``> 0`` to wait for the nodes to connect.
    reply_timeout: seconds ``> 0`` to wait for a reply (per message in
      the sequential orders, per round when synchronous, per step when
      secure); then a dropout.
    mechanism: ``None``, or the DP mechanism of one participant's release in
      a round (a :class:`~ssgd_optax.privacy.SparseVectorMechanism` for
      ``dp_selective_sharing`` uploads, or the secure sum's
      ``DistributedDiscreteGaussianMechanism`` with ``accountant="rdp"``),
      for the privacy report.
    delta: the report's ``delta`` in ``(0, 1)`` (with ``mechanism``).
    accountant: ``"pld"`` or ``"rdp"``, as for ``privacy.compute_epsilon``.
    on_round: called as ``on_round(round, server_state)`` after every round.
    on_end: called once with the :class:`RunSummary`.
    checkpoint_dir: a folder (created) where the server writes, after every
      round, what it needs to continue: the rounds done, its state
      (parameters, statistics), the key of the next round and the rounds'
      reports (for the privacy report), checksummed and written atomically
      (the previous one kept). ``None``: nothing is written.
    resume: continue from the newest intact checkpoint in ``checkpoint_dir``
      (a restarted server; a damaged newest file is named in a warning and
      the previous one used; none intact: from round 0). Without it, a folder
      that already holds a checkpoint is refused. The resumed server opens a
      fresh secure-aggregation session (new session id, fresh keys), so no
      ``(session, round)`` repeats; a participant that already contributed on
      the restored global model (a kill after its masked input) still refuses
      a second contribution (``RepeatedContributionError``): by design, since
      two sums on one model would reveal the difference. The participants'
      local models are not in the checkpoint: Flower starts every ``flwr
      run`` (and every ``run_simulation``) with an empty ``context.state``
      on each node, so after a restart they train from ``initial_params``.

  Returns:
    A ``flwr.serverapp.ServerApp``; it raises :class:`FederatedRunError`
    (too few nodes or participants, a broken or refusing client, a failed
    secure round).
  """
  _require_flwr()
  spec = _check_server_args(sim, initial_params, rounds_=rounds, key=key, num_nodes=num_nodes,
                            min_participants=min_participants, client_errors=client_errors,
                            node_timeout=node_timeout, reply_timeout=reply_timeout,
                            mechanism=mechanism, delta=delta, accountant=accountant,
                            on_round=on_round, on_end=on_end, checkpoint_dir=checkpoint_dir,
                            resume=resume)
  app = ServerApp()

  @app.main()
  def main(grid: Grid, context: Context) -> None:
    del context
    summary = _ServerRun(spec, grid).run()
    if spec.on_end is not None:
      spec.on_end(summary)

  return app


class LoopbackGrid(Grid):
  """A Flower ``Grid`` that delivers messages to a ``ClientApp`` in-process.

  Like a real runtime, an exception in the ``ClientApp`` comes back as an
  error reply (``CLIENT_APP_RAISED_EXCEPTION``) and a message to a node in
  ``drop`` as ``NODE_UNAVAILABLE``.

  Args:
    client_app: the ``ClientApp`` every node runs.
    num_nodes: how many nodes (participants), with node ids ``1..num_nodes``.
    drop: node ids that never answer (to test dropouts).
    node_config: ``node_id -> dict``, each node's ``Context.node_config``
      (what a SuperNode's ``--node-config`` sets); default empty.
    run_config: every node's ``Context.run_config`` (what ``flwr run
      --run-config`` sets); default empty.
  """

  def __init__(self, client_app: ClientApp, num_nodes: int, *, drop: Iterable[int] = (),
               node_config: Callable[[int], dict] | None = None,
               run_config: dict | None = None):
    _require_flwr()
    _validation.check_int('num_nodes', num_nodes, minimum=1)
    if node_config is not None and not callable(node_config):
      raise TypeError('node_config must be a callable node_id -> dict, or None.')
    from flwr.supercore.task_identity import TaskIdentity
    # A real runtime sets these per process; all apps share this one.
    if TaskIdentity._run_id is None:  # pylint: disable=protected-access
      TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    self._app = client_app
    self._nodes = list(range(1, num_nodes + 1))
    self._drop = set(drop)
    self._contexts = {n: Context(run_id=1, node_id=n,
                                 node_config={} if node_config is None else dict(node_config(n)),
                                 state=RecordDict(), run_config=dict(run_config or {}))
                      for n in self._nodes}
    self._replies: dict[str, Message] = {}
    self._run = None

  def set_run(self, run: Any) -> None:
    self._run = run

  @property
  def run(self) -> Any:
    return self._run

  def create_message(self, content: RecordDict, message_type: str, dst_node_id: int,
                     group_id: str, ttl: float | None = None) -> Message:
    return Message(content, dst_node_id=dst_node_id, message_type=message_type, ttl=ttl,
                   group_id=group_id)

  def get_node_ids(self) -> Iterable[int]:
    return list(self._nodes)

  def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
    ids = []
    for m in messages:
      mid = m.object_id
      node = m.metadata.dst_node_id
      if node not in self._contexts:
        raise ValueError(f'unknown node id {node}.')
      # A runtime assigns message ids on push; replies point back to them.
      m.metadata.__dict__['_message_id'] = mid
      if node in self._drop:
        reply = Message(Error(code=ErrorCode.NODE_UNAVAILABLE, reason='loopback drop'),
                        reply_to=m)
      else:
        try:
          reply = self._app(m, self._contexts[node])
        except Exception as e:  # pylint: disable=broad-exception-caught
          reply = Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION,
                                reason=f'{type(e).__name__}: {e}'), reply_to=m)
      self._replies[mid] = reply
      ids.append(mid)
    return ids

  def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
    return [self._replies.pop(i) for i in message_ids if i in self._replies]

  def send_and_receive(self, messages: Iterable[Message], *,
                       timeout: float | None = None) -> Iterable[Message]:
    del timeout
    return self.pull_messages(self.push_messages(messages))


def run_loopback(server_app: ServerApp, client_app: ClientApp, num_nodes: int, *,
                 drop: Iterable[int] = (),
                 node_config: Callable[[int], dict] | None = None) -> LoopbackGrid:
  """Runs ``server_app`` against ``num_nodes`` in-process ``client_app`` nodes.

  Args:
    server_app: from :func:`make_server_app`.
    client_app: from :func:`make_client_app`.
    num_nodes: number of participants.
    drop: node ids (``1..num_nodes``) that never answer.
    node_config: ``node_id -> dict``, each node's ``node_config``.

  Returns:
    The :class:`LoopbackGrid` used (its node contexts hold the local state).
  """
  grid = LoopbackGrid(client_app, num_nodes, drop=drop, node_config=node_config)
  server_app(grid, Context(run_id=1, node_id=0, node_config={}, state=RecordDict(),
                           run_config={}))
  return grid
