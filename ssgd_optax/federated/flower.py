# Copyright 2026 The ssgd_optax Authors. Licensed under the Apache License 2.0.
"""The DSSGD client logic as a Flower ``ClientApp``/``ServerApp`` (optional).

For users who outgrow one machine: :func:`make_client_app` wraps the very
``client_update`` of a :func:`~ssgd_optax.federated.make_dssgd` simulation
(download ``theta_d``, local SGD, upload through the optax defence) in a
``flwr.clientapp.ClientApp``; :func:`make_server_app` runs the parameter
server (adds uploads, keeps statistics, round robin or all-at-once) as a
``flwr.serverapp.ServerApp``. Arrays travel as NumPy in ``ArrayRecord``s;
each participant keeps its local model and defence state in its own
``Context.state``, so the apps run unchanged under ``flwr run`` (simulation
or deployment). With the same keys the apps reproduce the simulation
exactly (tested).

:class:`LoopbackGrid` runs both apps in one process with no network: a
minimal ``flwr.serverapp.grid.Grid`` that hands every message straight to
the ``ClientApp``, for tests and notebooks. It sets Flower's process-wide
task identity, which a real Flower runtime would otherwise set.

Needs the ``flower`` extra (``pip install "ssgd_optax[flower]"``; tested with
``flwr`` 1.41.0). Set ``XLA_PYTHON_CLIENT_PREALLOCATE=false`` when several
JAX clients share a GPU.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

try:
  from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
  from flwr.clientapp import ClientApp
  from flwr.serverapp import ServerApp
  from flwr.serverapp.grid import Grid
  _FLWR_ERROR = None
except ImportError as _e:  # pragma: no cover - depends on the install
  # The module stays importable (docs, doctest collection); every entry
  # point raises a clear ImportError instead.
  _FLWR_ERROR = _e
  Grid = object


def _require_flwr() -> None:
  if _FLWR_ERROR is not None:
    raise ImportError('ssgd_optax.federated.flower needs Flower: '
                      'pip install "ssgd_optax[flower]"') from _FLWR_ERROR

from ssgd_optax import _validation
from ssgd_optax.federated import server as server_lib
from ssgd_optax.federated.simulation import DSSGD

__all__ = ['make_client_app', 'make_server_app', 'LoopbackGrid', 'run_loopback']

_ORDERS = ('round_robin', 'synchronous')


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


def make_client_app(sim: DSSGD, data_fn: Callable[[int], tuple[Any, Any]],
                    initial_params: Any) -> ClientApp:
  """A Flower ``ClientApp`` running ``sim.client_update`` for one participant.

  The ``train`` message carries ``arrays`` (``global``, ``mask``, ``key``:
  the raw key data of the round key) and ``config`` (``participant``); the
  reply carries ``arrays['upload']`` and ``metrics['shared']``. The local
  model and the defence's state live in ``context.state`` between rounds
  (their first value: ``initial_params`` and the defence's ``init``, with
  the participant id folded into its PRNG keys, as in the simulation).

  Args:
    sim: the simulation whose client logic to run.
    data_fn: ``participant_id -> (x, y)``, the participant's shard.
    initial_params: the initial parameters (pytree).

  Returns:
    A ``flwr.clientapp.ClientApp``.
  """
  _require_flwr()
  if not isinstance(sim, DSSGD):
    raise TypeError(f'sim must be a DSSGD from make_dssgd; got {type(sim).__name__}.')
  if not callable(data_fn):
    raise TypeError('data_fn must be a callable participant_id -> (x, y).')
  state0 = sim.init(jax.random.key(0)).clients
  flat0 = sim.ravel(initial_params)
  update = jax.jit(sim.client_update)
  app = ClientApp()

  @app.train()
  def train(msg: Message, context: Context) -> Message:
    pid = int(msg.content['config']['participant'])
    arrays = msg.content['arrays']
    if 'dssgd_local' in context.state:
      local = jnp.asarray(context.state['dssgd_local']['params'].numpy())
      stored = context.state['dssgd_local']
      up_template = jax.tree.map(lambda a: a[pid], state0.upload_state)
      n_up = len(jax.tree.leaves(up_template))
      up = _from_numpy_tree(up_template, [stored[f'up{i}'].numpy() for i in range(n_up)])
    else:
      local = flat0
      up = jax.tree.map(lambda a: a[pid], state0.upload_state)
    x, y = data_fn(pid)
    key = jax.random.wrap_key_data(jnp.asarray(arrays['key'].numpy()))
    local, up, shared = update(local, up, jnp.asarray(arrays['global'].numpy()),
                               jnp.asarray(arrays['mask'].numpy()), jnp.asarray(x),
                               jnp.asarray(y), key)
    context.state['dssgd_local'] = _record(
        params=np.asarray(local), **{f'up{i}': a for i, a in enumerate(_to_numpy_tree(up))})
    content = RecordDict({'arrays': _record(upload=np.asarray(shared)),
                          'metrics': MetricRecord({'shared': int(jnp.sum(shared != 0))})})
    return Message(content, reply_to=msg)

  return app


def make_server_app(sim: DSSGD, initial_params: Any, *, rounds: int, key: jax.Array,
                    theta_d: float = 1.0, download: str = 'most_updated',
                    order: str = 'round_robin', stat_decay: float = 1.0,
                    on_round: Callable[[int, server_lib.ServerState], None] | None = None
                    ) -> ServerApp:
  """A Flower ``ServerApp`` running the DSSGD parameter server.

  ``order="round_robin"`` sends to one participant at a time (node ids in
  sorted order = participants ``0..N-1``) and adds each upload before the
  next download, with exactly the keys of the simulation's round-robin
  order; ``"synchronous"`` sends to all at once and adds the uploads
  together. A participant that does not answer, answers with an error or
  with a non-finite upload is skipped and leaves the server state untouched.

  Args:
    sim: the simulation (for the flat parameter layout).
    initial_params: the initial parameters (pytree).
    rounds: number of rounds ``>= 0``.
    key: the simulation key (as passed to ``sim.init``).
    theta_d: download fraction.
    download: ``"most_updated"`` or ``"random"``.
    order: ``"round_robin"`` or ``"synchronous"``.
    stat_decay: ``beta`` for the server statistics.
    on_round: called as ``on_round(round, server_state)`` after every round
      (e.g. to evaluate or to keep the final model).

  Returns:
    A ``flwr.serverapp.ServerApp``.
  """
  _require_flwr()
  _validation.check_int('rounds', rounds, minimum=0)
  _validation.check_choice('order', order, _ORDERS)
  _validation.check_choice('download', download, server_lib.DOWNLOAD_CRITERIA)
  _validation.check_probability('theta_d', theta_d)
  app = ServerApp()
  dl = jax.jit(server_lib.download_mask, static_argnames=('fraction', 'criterion'))
  apply = jax.jit(server_lib.server_apply)

  def message(grid, node, pid, srv, k_dl, k_train, r):
    mask = dl(srv, theta_d, key=k_dl, criterion=download)
    content = RecordDict({
        'arrays': _record(**{'global': np.asarray(srv.params), 'mask': np.asarray(mask),
                             'key': np.asarray(jax.random.key_data(k_train))}),
        'config': ConfigRecord({'participant': pid})})
    return grid.create_message(content, 'train', node, str(r))

  def upload_of(reply):
    if reply.has_error() or 'arrays' not in reply.content:
      return None
    return jnp.asarray(reply.content['arrays']['upload'].numpy())

  @app.main()
  def main(grid: Grid, context: Context) -> None:
    del context
    nodes = sorted(grid.get_node_ids())
    n = len(nodes)
    srv = server_lib.server_init(sim.ravel(initial_params))
    state_key = key
    for r in range(rounds):
      state_key, _, k_rest = jax.random.split(state_key, 3)
      keys = [jax.random.split(jax.random.fold_in(k_rest, i)) for i in range(n)]
      if order == 'round_robin':
        for i, node in enumerate(nodes):
          replies = list(grid.send_and_receive(
              [message(grid, node, i, srv, keys[i][0], keys[i][1], r)]))
          up = upload_of(replies[0]) if replies else None
          if up is not None:
            srv, _ = apply(srv, up, decay=stat_decay)
      else:
        msgs = [message(grid, node, i, srv, keys[i][0], keys[i][1], r)
                for i, node in enumerate(nodes)]
        ups = [upload_of(m) for m in grid.send_and_receive(msgs)]
        ups = [u for u in ups if u is not None]
        if ups:
          srv, _ = server_lib.server_apply_many(srv, jnp.stack(ups), decay=stat_decay,
                                                end_round=False)
      srv = srv._replace(round=srv.round + 1)
      if on_round is not None:
        on_round(r, srv)

  return app


class LoopbackGrid(Grid):
  """A Flower ``Grid`` that delivers messages to a ``ClientApp`` in-process.

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
      if node not in self._drop:
        self._replies[mid] = self._app(m, self._contexts[node])
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
