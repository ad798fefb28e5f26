# Copyright 2026 The ssgd_optax Authors. Licensed under the Apache License 2.0.
"""The DSSGD client logic as a Flower ``ClientApp``/``ServerApp`` (optional).

For users who outgrow one machine: :func:`make_client_app` wraps the very
``client_update`` of a :func:`~ssgd_optax.federated.make_dssgd` simulation
(download ``theta_d``, local SGD, upload through the optax defence) in a
``flwr.clientapp.ClientApp``; :func:`make_server_app` runs the parameter
server (adds uploads, keeps statistics, round robin or all-at-once) as a
``flwr.serverapp.ServerApp``. Arrays travel as NumPy in ``ArrayRecord``s;
each participant keeps its local model and defence state in its own
``Context.state``. Tested on Flower's simulation engine
(``flwr.simulation.run_simulation``, Ray backend) and in deployment mode
(``flower-superlink`` + ``flower-supernode`` processes driven by
``flwr run``, see ``examples/flower_app``); with the same keys the apps
reproduce the in-process simulation.

**Nodes.** On a real runtime the nodes register asynchronously: the server
waits (up to ``node_timeout`` seconds) until exactly ``num_nodes`` nodes
are connected, then maps them to participants deterministically: the
``i``-th smallest node id is participant ``i``.

**Failures are loud** (``logging`` records carry round, participant and
node id):

* no answer within ``reply_timeout``, or an error reply from the runtime
  (node unavailable, message lost): a **dropout**. DSSGD tolerates dropouts
  (as ``active=False`` in the simulation: the server state is untouched), so
  the round goes on; a node that left the grid is not asked again.
* an exception in the ``ClientApp`` (error reply ``CLIENT_APP_RAISED_EXCEPTION``
  or ``LOAD_CLIENT_APP_EXCEPTION``): a bug, not a network fault, so
  :class:`FederatedRunError` by default (``client_errors='dropout'`` counts
  it as a dropout instead).
* a reply that answers no message of this round or comes from another node
  than the one asked: logged and ignored (``unexpected`` in the report).
* a malformed reply (no ``upload`` or the wrong shape): :class:`FederatedRunError`.
* a non-finite upload: rejected by the server rule (state untouched), counted.
* fewer than ``min_participants`` accepted uploads in a round (at least 1: a
  round where no upload arrived always stops the run): :class:`FederatedRunError`.

``order="secure"`` runs this project's secure aggregation
(:mod:`~ssgd_optax.federated.secure_aggregation`, not Flower's SecAgg+)
as Flower ``query`` messages, so the server process only receives masked
uploads; a dropout at any protocol step is allowed while ``threshold``
participants remain, fewer stop the run. Tested on Flower's simulation engine
(a participant failing after sharing its keys) and in deployment mode (a
SuperNode killed after sharing its keys): the server's received messages
hold no copy of an upload and no vector correlated with one, and the sum
of the survivors is exact.

Every round yields a :class:`RoundReport`; :class:`RunSummary` (passed to
``on_end``) holds them with the final server state and, for
``dp_selective_sharing`` uploads (``dp_epsilon``), the privacy cost of every
participant composed over the rounds it was asked to upload in.

:class:`LoopbackGrid` runs both apps in one process with no network, for
tests and notebooks; it reports an exception in the ``ClientApp`` and a
dropped node as a real runtime does (error replies).

Needs the ``flower`` extra (``pip install "ssgd_optax[flower]"``, ``flwr`` >=
1.42; tested with 1.42.0 and Ray 2.55). Set
``XLA_PYTHON_CLIENT_PREALLOCATE=false`` when several JAX clients share a GPU.
"""

from __future__ import annotations

import logging
import pickle
import re
import secrets
import time
from collections.abc import Callable, Iterable
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

from ssgd_optax import _validation
from ssgd_optax.federated import _server as server_lib
from ssgd_optax.federated._simulation import DSSGD

__all__ = ['FederatedRunError', 'RoundReport', 'RunSummary', 'make_client_app',
           'make_server_app', 'LoopbackGrid', 'run_loopback', 'MIN_FLWR_VERSION']

MIN_FLWR_VERSION = (1, 42)
_ORDERS = ('round_robin', 'synchronous', 'secure')
_CLIENT_ERRORS = ('raise', 'dropout')
_POLL_S = 0.05
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


class RoundReport(NamedTuple):
  """What happened in one round of :func:`make_server_app`.

  Attributes:
    round: the round index (from 0).
    asked: participants sent a ``train`` message.
    accepted: participants whose upload the server added.
    dropped: participants counted as dropouts (left the grid, no answer in
      time, error reply from the runtime, or an exception with
      ``client_errors='dropout'``).
    rejected: participants whose upload was non-finite (not added).
    unexpected: replies that answered no message of this round or came
      from a node other than the one asked (ignored).
    shared: ``{participant: nonzero entries of its upload}``.
  """
  round: int
  asked: tuple[int, ...]
  accepted: tuple[int, ...]
  dropped: tuple[int, ...]
  rejected: tuple[int, ...]
  unexpected: int
  shared: dict[int, int]


class RunSummary(NamedTuple):
  """The outcome of a :func:`make_server_app` run (passed to ``on_end``).

  Attributes:
    server: the final :class:`~ssgd_optax.federated.ServerState`.
    node_ids: ``node_ids[i]`` is the Flower node id of participant ``i``.
    rounds: one :class:`RoundReport` per round.
    privacy: ``None``, or with ``dp_epsilon``: ``{participant:
      DPSparseVectorPrivacy}``, the ``dp_selective_sharing`` cost composed
      over the rounds the participant was asked to upload in (an upper
      bound: a reply lost in transit may still have been released).
  """
  server: server_lib.ServerState
  node_ids: tuple[int, ...]
  rounds: tuple[RoundReport, ...]
  privacy: dict[int, Any] | None

  @property
  def dropouts_per_round(self) -> list[int]:
    return [len(r.dropped) for r in self.rounds]


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


def _num_participants(sim: DSSGD) -> int:
  return int(jax.eval_shape(sim.init, jax.random.key(0)).clients.params.shape[0])


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
                    int(cfg['sa_sender']), int(cfg['sa_recipient']), bytes(cfg['sa_payload']),
                    bytes(cfg['sa_tag']))


def _dump_participant(participant: Any) -> bytes:
  """Pickles a secure-aggregation participant, its key objects as raw bytes.

  Every Flower message may run in a fresh ``ClientApp`` process, so the
  participant's secrets between protocol steps live in the node's own
  ``Context.state`` (never sent anywhere).
  """
  import io
  from cryptography.hazmat.primitives.asymmetric import ed25519, x25519

  class KeyPickler(pickle.Pickler):
    def reducer_override(self, obj):
      for cls in (x25519.X25519PrivateKey, ed25519.Ed25519PrivateKey):
        if isinstance(obj, cls):
          return cls.from_private_bytes, (obj.private_bytes_raw(),)
      for cls in (x25519.X25519PublicKey, ed25519.Ed25519PublicKey):
        if isinstance(obj, cls):
          return cls.from_public_bytes, (obj.public_bytes_raw(),)
      return NotImplemented

  buf = io.BytesIO()
  KeyPickler(buf).dump(participant)
  return buf.getvalue()


def make_client_app(sim: DSSGD, data_fn: Callable[[int], tuple[Any, Any]],
                    initial_params: Any, *, signing_key: Callable[[int], Any] | None = None,
                    registry: dict[int, bytes] | None = None) -> ClientApp:
  """A Flower ``ClientApp`` running ``sim.client_update`` for one participant.

  The ``train`` message carries ``arrays`` (``global``, ``mask``, ``key``:
  the raw key data of the round key) and ``config`` (``participant``); the
  reply carries ``arrays['upload']`` and ``metrics['shared']``. The local
  model and the defence's state live in ``context.state`` between rounds
  (their first value: ``initial_params`` and the defence's ``init``, with
  the participant id folded into its PRNG keys, as in the simulation).

  With ``signing_key`` and ``registry`` the app also answers the ``query``
  messages of ``order="secure"`` (:mod:`~ssgd_optax.federated.secure_aggregation`
  run step by step over Flower): the upload leaves the node only masked.

  Args:
    sim: the simulation whose client logic to run.
    data_fn: ``participant_id -> (x, y)``, the participant's shard: ``x``
      ``(M, ...)`` and ``y`` ``(M,)`` with the same ``M``, as one row of the
      simulation's ``x``/``y``.
    initial_params: the initial parameters (pytree).
    signing_key: ``participant_id -> Ed25519PrivateKey``, the participant's
      long-term identity key (see ``secure_aggregation.generate_identities``).
    registry: ``{participant_id: raw Ed25519 public key}`` for all ``N``
      participants, obtained out of band (not from the server).

  Returns:
    A ``flwr.clientapp.ClientApp``. Inside it, a participant index out of
    ``[0, N)`` or data the model cannot train on raise ``ValueError`` (the
    server then stops with :class:`FederatedRunError`).

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
  if not callable(data_fn):
    raise TypeError('data_fn must be a callable participant_id -> (x, y).')
  if (signing_key is None) != (registry is None):
    raise ValueError('secure aggregation needs both signing_key and registry (or neither).')
  if signing_key is not None and not callable(signing_key):
    raise TypeError('signing_key must be a callable participant_id -> Ed25519PrivateKey.')
  state0 = sim.init(jax.random.key(0)).clients
  n = int(state0.params.shape[0])
  if registry is not None and (not isinstance(registry, dict) or set(registry) != set(range(n))):
    raise ValueError(f'registry must map every participant id 0..{n - 1} to its raw Ed25519 '
                     'public key.')
  flat0 = sim.ravel(initial_params)
  if flat0.shape != (sim.num_params,):
    raise ValueError(f'initial_params has {flat0.size} entries; the simulation has '
                     f'{sim.num_params}.')
  update = jax.jit(sim.client_update)
  app = ClientApp()

  def shard(pid):
    x, y = data_fn(pid)
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim < 1 or y.ndim < 1 or x.shape[0] != y.shape[0] or x.shape[0] == 0:
      raise ValueError(f'data_fn({pid}) must return (x, y) with the same number M >= 1 of '
                       f'examples on axis 0; got x {x.shape}, y {y.shape}.')
    return x, y

  def participant_of(msg):
    pid = int(msg.content['config']['participant'])
    if not 0 <= pid < n:
      raise ValueError(f'participant index {pid} is out of range [0, {n}) for this '
                       'simulation (more nodes than participants?).')
    return pid

  def local_step(pid, arrays, context):
    """Download, train, upload through the defence; keeps the local state."""
    up_template = jax.tree.map(lambda a: a[pid], state0.upload_state)
    if 'dssgd_local' in context.state:
      stored = context.state['dssgd_local']
      local = jnp.asarray(stored['params'].numpy())
      n_up = len(jax.tree.leaves(up_template))
      up = _from_numpy_tree(up_template, [stored[f'up{i}'].numpy() for i in range(n_up)])
    else:
      local, up = flat0, up_template
    x, y = shard(pid)
    key = jax.random.wrap_key_data(jnp.asarray(arrays['key'].numpy()))
    try:
      local, up, shared = update(local, up, jnp.asarray(arrays['global'].numpy()),
                                 jnp.asarray(arrays['mask'].numpy()), jnp.asarray(x),
                                 jnp.asarray(y), key)
    except (TypeError, ValueError) as e:
      raise ValueError(f'participant {pid}: the model cannot train on data_fn({pid}) = '
                       f'(x {x.dtype}{list(x.shape)}, y {y.dtype}{list(y.shape)}): {e}') from e
    context.state['dssgd_local'] = _record(
        params=np.asarray(local), **{f'up{i}': a for i, a in enumerate(_to_numpy_tree(up))})
    return shared

  @app.train()
  def train(msg: Message, context: Context) -> Message:
    pid = participant_of(msg)
    shared = local_step(pid, msg.content['arrays'], context)
    content = RecordDict({'arrays': _record(upload=np.asarray(shared)),
                          'metrics': MetricRecord({'shared': int(jnp.sum(shared != 0))})})
    return Message(content, reply_to=msg)

  @app.query()
  def secure_step(msg: Message, context: Context) -> Message:
    from ssgd_optax.federated import secure_aggregation as sa
    if signing_key is None:
      raise ValueError('order="secure" needs make_client_app(..., signing_key=, registry=).')
    pid = participant_of(msg)
    cfg = msg.content['config']
    step = str(cfg['step'])
    if step == 'setup':
      if int(cfg['sa_n']) != n:
        raise ValueError(f'the server runs secure aggregation over {int(cfg["sa_n"])} '
                         f'participants; this simulation has {n}.')
      part = sa.Participant(pid, n, int(cfg['sa_t']), bytes(cfg['sa_server_key']),
                            signing_key=signing_key(pid), registry=registry,
                            session=bytes(cfg['sa_session']), frac_bits=int(cfg['sa_frac_bits']),
                            bits=int(cfg['sa_bits']))
      out = {'sa_channel_key': part.channel_public_key}
    else:
      part = pickle.loads(bytes(context.state['dssgd_secagg']['participant']))
      if step == 'advertise':
        out = _sa_to_config(part.advertise(int(cfg['sa_round'])))
      elif step == 'share':
        out = _sa_to_config(part.share(_sa_from_config(cfg)))
      elif step == 'masked':
        shared = local_step(pid, msg.content['arrays'], context)
        out = _sa_to_config(part.masked_input(_sa_from_config(cfg), np.asarray(shared)))
      elif step == 'consistency':
        out = _sa_to_config(part.consistency_check(_sa_from_config(cfg)))
      elif step == 'unmask':
        out = _sa_to_config(part.unmask(_sa_from_config(cfg)))
      else:
        raise ValueError(f'unknown secure-aggregation step {step!r}.')
    context.state['dssgd_secagg'] = ConfigRecord({'participant': _dump_participant(part)})
    return Message(RecordDict({'config': ConfigRecord(out)}), reply_to=msg)

  return app


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


def make_server_app(sim: DSSGD, initial_params: Any, *, rounds: int, key: jax.Array,
                    num_nodes: int | None = None, theta_d: float = 1.0,
                    download: str = 'most_updated', order: str = 'round_robin',
                    stat_decay: float = 1.0, min_participants: int = 1,
                    client_errors: str = 'raise', node_timeout: float = 120.0,
                    reply_timeout: float = 600.0, threshold: int | None = None,
                    frac_bits: int = 16, dp_epsilon: float | None = None,
                    dp_fraction: float = 0.1, dp_delta: float | None = None,
                    on_round: Callable[[int, server_lib.ServerState], None] | None = None,
                    on_end: Callable[[RunSummary], None] | None = None) -> ServerApp:
  """A Flower ``ServerApp`` running the DSSGD parameter server.

  ``order="round_robin"`` sends to one participant at a time (node ids in
  sorted order = participants ``0..N-1``) and adds each upload before the
  next download, with exactly the keys of the simulation's round-robin
  order; ``"synchronous"`` sends to all at once and adds the uploads
  together; ``"secure"`` runs every round as one secure-aggregation session
  (:mod:`~ssgd_optax.federated.secure_aggregation`: advertise, share,
  masked input, consistency, unmask, each a Flower ``query`` message to the
  participants still in) so the server only ever receives masked uploads and
  adds their exact sum (quantised, ``frac_bits``; the statistics then count
  the nonzero entries of the sum once per round, as the server cannot see
  who updated what). Dropouts there are allowed at every step as long as
  ``threshold`` participants remain. Faults are handled as described in the
  module docstring.

  Args:
    sim: the simulation (for the flat parameter layout and ``N``).
    initial_params: the initial parameters (pytree).
    rounds: number of rounds ``>= 1``.
    key: the simulation key (as passed to ``sim.init``).
    num_nodes: nodes to wait for; must be the simulation's ``N`` (the
      default).
    theta_d: download fraction.
    download: ``"most_updated"`` or ``"random"``.
    order: ``"round_robin"``, ``"synchronous"`` or ``"secure"`` (the
      clients need ``signing_key`` and ``registry``).
    stat_decay: ``beta`` for the server statistics.
    min_participants: ``1 <= m <= N``: stop when fewer uploads are accepted
      in a round.
    client_errors: ``"raise"`` (an exception in a ``ClientApp`` stops the
      run) or ``"dropout"``.
    node_timeout: seconds ``> 0`` to wait for the nodes to connect.
    reply_timeout: seconds ``> 0`` to wait for a reply (per message in
      round robin, per round when synchronous, per step when secure); then
      a dropout.
    threshold: ``order="secure"``: Shamir threshold ``N/2 < t <= N``
      (default ``max(2, ceil(2N/3))``).
    frac_bits: ``order="secure"``: fixed-point fractional bits (32-bit ring).
    dp_epsilon: ``None``, or the ``epsilon`` of the participants'
      ``dp_selective_sharing`` uploads, for the privacy report.
    dp_fraction: their ``fraction`` (reported as ``num_shared``).
    dp_delta: ``None`` or in ``(0, 1)``: also report ``(eps, delta)``.
    on_round: called as ``on_round(round, server_state)`` after every round.
    on_end: called once with the :class:`RunSummary`.

  Returns:
    A ``flwr.serverapp.ServerApp``; it raises :class:`FederatedRunError`
    (too few nodes or participants, a broken client).
  """
  _require_flwr()
  _check_sim(sim)
  n = _num_participants(sim)
  _validation.check_int('rounds', rounds, minimum=1)
  if num_nodes is None:
    num_nodes = n
  _validation.check_int('num_nodes', num_nodes, minimum=1)
  if num_nodes != n:
    raise ValueError(f'num_nodes must equal the simulation\'s num_participants={n} (one '
                     f'node per participant); got {num_nodes}.')
  _validation.check_int('min_participants', min_participants, minimum=1)
  if min_participants > n:
    raise ValueError(f'min_participants must be in [1, {n}]; got {min_participants}.')
  _validation.check_choice('order', order, _ORDERS)
  _validation.check_choice('download', download, server_lib.DOWNLOAD_CRITERIA)
  _validation.check_choice('client_errors', client_errors, _CLIENT_ERRORS)
  _validation.check_probability('theta_d', theta_d)
  _validation.check_positive('node_timeout', node_timeout)
  _validation.check_positive('reply_timeout', reply_timeout)
  if order == 'secure':
    if threshold is None:
      threshold = max(2, -(-2 * n // 3))
    _validation.check_int('threshold', threshold, minimum=1)
    if not n / 2 < threshold <= n:
      raise ValueError(f'threshold must satisfy N/2 < threshold <= N = {n}; got {threshold}.')
    from ssgd_optax.federated import secure_aggregation as sa
    sa.quantize(0.0, frac_bits=frac_bits)  # validates frac_bits now
  if dp_epsilon is not None:
    from ssgd_optax.privacy import dp_selective_sharing_privacy
    # Validates epsilon, fraction and delta now rather than after the run.
    dp_selective_sharing_privacy(dp_epsilon, 0, num_params=sim.num_params,
                                 fraction=dp_fraction, delta=dp_delta)
  app = ServerApp()
  dl = jax.jit(server_lib.download_mask, static_argnames=('fraction', 'criterion'))
  apply = jax.jit(server_lib.server_apply)
  p = sim.num_params

  def message(grid, node, pid, srv, k_dl, k_train, r):
    mask = dl(srv, theta_d, key=k_dl, criterion=download)
    content = RecordDict({
        'arrays': _record(**{'global': np.asarray(srv.params), 'mask': np.asarray(mask),
                             'key': np.asarray(jax.random.key_data(k_train))}),
        'config': ConfigRecord({'participant': pid})})
    return Message(content, dst_node_id=node, message_type='train', group_id=str(r))

  def exchange(grid, msgs, who, r, report):
    """Sends ``msgs`` (to participants ``who``); returns ``{pid: reply}``."""
    ids = list(grid.push_messages(msgs))
    pending = {mid: (pid, m.metadata.dst_node_id) for mid, m, pid in zip(ids, msgs, who)}
    got = {}
    deadline = time.monotonic() + reply_timeout
    while pending:
      for reply in grid.pull_messages(list(pending)):
        mid = reply.metadata.reply_to_message_id
        if mid not in pending:
          report['unexpected'] += 1
          _log.warning('round %d: ignored a reply from node %s to no pending message of '
                       'this round.', r, reply.metadata.src_node_id)
          continue
        pid, node = pending[mid]
        if reply.has_error():
          code, reason = reply.error.code, reply.error.reason
          del pending[mid]
          fatal = code in (ErrorCode.CLIENT_APP_RAISED_EXCEPTION,
                           ErrorCode.LOAD_CLIENT_APP_EXCEPTION)
          if fatal and client_errors == 'raise':
            raise FederatedRunError(f'round {r}: the ClientApp of participant {pid} (node '
                                    f'{node}) failed (error code {code}): {reason}')
          _log.warning('round %d: participant %d (node %s) dropped out: error code %d: %s',
                       r, pid, node, code, reason)
          report['dropped'].append(pid)
          continue
        if int(reply.metadata.src_node_id) != int(node):
          report['unexpected'] += 1
          _log.warning('round %d: ignored a reply from node %s to the message sent to '
                       'participant %d (node %s).', r, reply.metadata.src_node_id, pid, node)
          continue
        del pending[mid]
        got[pid] = reply
      if not pending or time.monotonic() >= deadline:
        break
      time.sleep(_POLL_S)
    for pid, node in pending.values():
      _log.warning('round %d: participant %d (node %s) dropped out: no reply within '
                   'reply_timeout=%g s.', r, pid, node, reply_timeout)
      report['dropped'].append(pid)
    return got

  def upload_of(reply, pid, r):
    try:
      up = np.asarray(reply.content['arrays']['upload'].numpy())
    except (KeyError, AttributeError) as e:
      raise FederatedRunError(f'round {r}: the reply of participant {pid} (node '
                              f'{reply.metadata.src_node_id}) has no arrays["upload"]: '
                              f'{e!r}') from e
    if up.shape != (p,):
      raise FederatedRunError(f'round {r}: participant {pid} (node {reply.metadata.src_node_id}) '
                              f'uploaded shape {up.shape}; expected ({p},).')
    return jnp.asarray(up)

  def record(report, pid, up, ok):
    report['shared'][pid] = int(jnp.sum(up != 0))
    if bool(ok):
      report['accepted'].append(pid)
    else:
      report['rejected'].append(pid)
      _log.warning('round %d: rejected the non-finite upload of participant %d.',
                   report['round'], pid)

  def query(node, pid, step, r, sa_msg=None, arrays=None, extra=None):
    cfg = {'participant': pid, 'step': step, 'sa_round': r, **(extra or {})}
    if sa_msg is not None:
      cfg.update(_sa_to_config(sa_msg))
    content = {'config': ConfigRecord(cfg)}
    if arrays is not None:
      content['arrays'] = arrays
    return Message(RecordDict(content), dst_node_id=node, message_type='query', group_id=str(r))

  def sa_replies(got, r):
    out = []
    for pid, reply in sorted(got.items()):
      try:
        out.append(_sa_from_config(reply.content['config']))
      except (KeyError, TypeError, ValueError) as e:
        raise FederatedRunError(f'round {r}: malformed secure-aggregation reply from '
                                f'participant {pid}: {e!r}') from e
    return out

  def secure_setup(grid, nodes):
    session = secrets.token_bytes(16)
    sa_server = sa.Server(n, threshold, session=session, frac_bits=frac_bits)
    report = {'round': -1, 'dropped': [], 'unexpected': 0}
    cfg = {'sa_n': n, 'sa_t': threshold, 'sa_session': session,
           'sa_server_key': sa_server.public_key, 'sa_frac_bits': frac_bits, 'sa_bits': 32}
    msgs = [query(node, i, 'setup', 0, extra=cfg) for i, node in enumerate(nodes)]
    got = exchange(grid, msgs, list(range(n)), -1, report)
    for pid, reply in got.items():
      try:
        sa_server.register(pid, bytes(reply.content['config']['sa_channel_key']))
      except (KeyError, TypeError, ValueError) as e:
        raise FederatedRunError(f'secure-aggregation set-up: malformed reply from participant '
                                f'{pid}: {e!r}') from e
    if len(got) < threshold:
      raise FederatedRunError(f'secure-aggregation set-up: only {len(got)} participants '
                              f'registered; threshold={threshold}.')
    return sa_server, set(got)

  def secure_round(grid, nodes, turn, srv, keys, r, sa_server, report):
    sa_server.start_round(r)
    mask = dl(srv, theta_d, key=keys[0][0], criterion=download)

    def step(name, msgs_by_pid, arrays_fn=None):
      who = sorted(msgs_by_pid)
      msgs = [query(nodes[i], i, name, r, msgs_by_pid[i],
                    None if arrays_fn is None else arrays_fn(i)) for i in who]
      return sa_replies(exchange(grid, msgs, who, r, report), r)

    train_arrays = lambda i: _record(**{
        'global': np.asarray(srv.params), 'mask': np.asarray(mask),
        'key': np.asarray(jax.random.key_data(keys[i][1]))})
    try:
      keys_msgs = sa_server.collect_keys(step('advertise', {i: None for i in turn}))
      forward = sa_server.collect_shares(step('share', keys_msgs))
      survivors = sa_server.collect_masked(step('masked', forward, train_arrays))
      signatures = sa_server.collect_consistency(step('consistency', survivors))
      total = sa_server.finish(step('unmask', signatures))
    except sa.SecureAggregationError as e:
      raise FederatedRunError(f'round {r}: secure aggregation failed ({type(e).__name__}): '
                              f'{e}; dropped so far: {sorted(report["dropped"])}.') from e
    srv, ok = apply(srv, jnp.asarray(total, srv.params.dtype), decay=stat_decay)
    for i in sorted(survivors):
      (report['accepted'] if bool(ok) else report['rejected']).append(i)
    return srv

  @app.main()
  def main(grid: Grid, context: Context) -> None:
    del context
    nodes = _wait_for_nodes(grid, num_nodes, node_timeout)
    _log.info('DSSGD server: %d nodes connected; participant i = node %s.', n, nodes)
    srv = server_lib.server_init(sim.ravel(initial_params))
    state_key = key
    sa_server, registered = None, set(range(n))
    if order == 'secure':
      sa_server, registered = secure_setup(grid, nodes)
    asked_count = [0] * n
    reports = []
    for r in range(rounds):
      state_key, _, k_rest = jax.random.split(state_key, 3)
      keys = [jax.random.split(jax.random.fold_in(k_rest, i)) for i in range(n)]
      alive = {int(i) for i in grid.get_node_ids()}
      report = {'round': r, 'asked': [], 'accepted': [], 'dropped': [], 'rejected': [],
                'unexpected': 0, 'shared': {}}
      turn = []
      for i, node in enumerate(nodes):
        if i not in registered:
          report['dropped'].append(i)
        elif node in alive:
          turn.append(i)
        else:
          _log.warning('round %d: participant %d (node %s) dropped out: it left the grid.',
                       r, i, node)
          report['dropped'].append(i)
      report['asked'] = list(turn)
      for i in turn:
        asked_count[i] += 1
      if order == 'round_robin':
        for i in turn:
          got = exchange(grid, [message(grid, nodes[i], i, srv, keys[i][0], keys[i][1], r)],
                         [i], r, report)
          if i in got:
            up = upload_of(got[i], i, r)
            srv, ok = apply(srv, up, decay=stat_decay)
            record(report, i, up, ok)
      elif order == 'secure':
        srv = secure_round(grid, nodes, [i for i in turn if i in registered], srv, keys, r,
                           sa_server, report)
      else:
        msgs = [message(grid, nodes[i], i, srv, keys[i][0], keys[i][1], r) for i in turn]
        got = exchange(grid, msgs, turn, r, report)
        ups = {i: upload_of(m, i, r) for i, m in got.items()}
        if ups:
          who = sorted(ups)
          srv, ok = server_lib.server_apply_many(srv, jnp.stack([ups[i] for i in who]),
                                                 decay=stat_decay, end_round=False)
          for i, o in zip(who, ok):
            record(report, i, ups[i], o)
      srv = srv._replace(round=srv.round + 1)
      rep = RoundReport(r, tuple(report['asked']), tuple(report['accepted']),
                        tuple(sorted(report['dropped'])), tuple(report['rejected']),
                        report['unexpected'], dict(report['shared']))
      reports.append(rep)
      _log.info('round %d: %d accepted, %d dropped %s, %d rejected, %d unexpected replies.',
                r, len(rep.accepted), len(rep.dropped), list(rep.dropped), len(rep.rejected),
                rep.unexpected)
      if on_round is not None:
        on_round(r, srv)
      if not rep.accepted:
        raise FederatedRunError(f'round {r}: no upload was accepted (dropped: '
                                f'{list(rep.dropped)}, rejected: {list(rep.rejected)}); '
                                'stopping instead of training on nothing.')
      if len(rep.accepted) < min_participants:
        raise FederatedRunError(f'round {r}: only {len(rep.accepted)} uploads accepted, fewer '
                                f'than min_participants={min_participants} (dropped: '
                                f'{list(rep.dropped)}).')
    privacy = None
    if dp_epsilon is not None:
      from ssgd_optax.privacy import dp_selective_sharing_privacy
      privacy = {i: dp_selective_sharing_privacy(dp_epsilon, asked_count[i],
                                                 num_params=p, fraction=dp_fraction,
                                                 delta=dp_delta) for i in range(n)}
      for i, acc in privacy.items():
        _log.info('privacy: participant %d released at most %d dp_selective_sharing uploads: '
                  '(%g, 0)-DP%s.', i, acc.rounds, acc.total_epsilon,
                  '' if acc.delta is None else
                  f', ({acc.total_epsilon_at_delta:g}, {acc.delta:g})-DP')
    summary = RunSummary(srv, tuple(nodes), tuple(reports), privacy)
    if on_end is not None:
      on_end(summary)

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
  """

  def __init__(self, client_app: ClientApp, num_nodes: int, *, drop: Iterable[int] = ()):
    _require_flwr()
    _validation.check_int('num_nodes', num_nodes, minimum=1)
    from flwr.supercore.task_identity import TaskIdentity
    # A real runtime sets these per process; all apps share this one.
    if TaskIdentity._run_id is None:  # pylint: disable=protected-access
      TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    self._app = client_app
    self._nodes = list(range(1, num_nodes + 1))
    self._drop = set(drop)
    self._contexts = {n: Context(run_id=1, node_id=n, node_config={}, state=RecordDict(),
                                 run_config={}) for n in self._nodes}
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
                 drop: Iterable[int] = ()) -> LoopbackGrid:
  """Runs ``server_app`` against ``num_nodes`` in-process ``client_app`` nodes.

  Args:
    server_app: from :func:`make_server_app`.
    client_app: from :func:`make_client_app`.
    num_nodes: number of participants.
    drop: node ids (``1..num_nodes``) that never answer.

  Returns:
    The :class:`LoopbackGrid` used (its node contexts hold the local state).
  """
  grid = LoopbackGrid(client_app, num_nodes, drop=drop)
  server_app(grid, Context(run_id=1, node_id=0, node_config={}, state=RecordDict(),
                           run_config={}))
  return grid
