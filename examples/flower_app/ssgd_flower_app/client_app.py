# Copyright 2026 The ssgd_optax Authors. Licensed under the Apache License 2.0.
"""The ClientApp: one DSSGD participant per SuperNode.

Node-side settings come from the SuperNode's ``--node-config`` (what the node
operator controls; the run configuration is the server side's), or, where a
runtime gives nodes no configuration of their own (Flower's simulation
engine), from ``SSGD_FLOWER_<NAME>`` environment variables of the node
processes (``identity-key`` -> ``SSGD_FLOWER_IDENTITY_KEY``):

* ``identity-key``, ``registry``, ``record``: secure aggregation's identity
  key file of this node, the registry file obtained out of band, and the
  file of the node's participant record (see ``ssgd_flower_app.identity``).
  There is no default and no key derived from a seed: secure aggregation
  without them is refused.
* ``insecure-reproducible-keys``: ``true`` makes the node derive its
  training and defence keys from the run's seed, as the in-process
  simulation does (tests). INSECURE: the server knows the seed.
"""

import functools
import os

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from ssgd_flower_app import task as task_lib
from ssgd_optax.federated import flower
from ssgd_optax.federated import secure_aggregation as sa

app = ClientApp()
SECURE_SETTINGS = ('identity-key', 'registry', 'record')


def node_setting(node_config: dict, name: str) -> str | None:
  """``node_config[name]``, else ``$SSGD_FLOWER_<NAME>``, else ``None``."""
  if name in node_config and str(node_config[name]):
    return str(node_config[name])
  return os.environ.get('SSGD_FLOWER_' + name.upper().replace('-', '_')) or None


def secure_arguments(node_config: dict, num_participants: int) -> dict:
  """``identity``, ``registry`` and ``record`` for ``make_client_app``, from the node's files."""
  paths = {name: node_setting(node_config, name) for name in SECURE_SETTINGS}
  missing = [name for name, path in paths.items() if path is None]
  if missing:
    raise ValueError(
        f'secure aggregation needs this node\'s {", ".join(missing)} (node config, e.g. '
        "flower-supernode --node-config \"identity-key='node.key' registry='registry.json' "
        "record='secagg-record.jsonl'\"; create the key with python -m "
        'ssgd_flower_app.identity new). No identity is derived from the run\'s seed: the '
        'server knows it.')
  key = sa.read_identity(paths['identity-key'])
  return {'identity': lambda context: key,
          'registry': sa.read_registry(paths['registry'], num_participants),
          'record': lambda context: paths['record']}


@functools.lru_cache(maxsize=4)
def _client(run_items, node_items):
  # Built once per process, run and node configuration (jit caches included).
  run_config, node_config = dict(run_items), dict(node_items)
  t = task_lib.build(run_config)
  kw = {}
  if t.sim.config.secure_aggregation is not None:
    kw = secure_arguments(node_config, t.sim.config.num_participants)
  if task_lib.as_bool(node_setting(node_config, 'insecure-reproducible-keys') or False):
    kw['testing_key'] = t.key
  return flower.make_client_app(t.sim, lambda i: (t.xs[i], t.ys[i]), t.params, **kw)


def _for(context: Context):
  return _client(tuple(sorted(context.run_config.items())),
                 tuple(sorted(context.node_config.items())))


@app.train()
def train(msg: Message, context: Context) -> Message:
  return _for(context)(msg, context)


@app.query()
def query(msg: Message, context: Context) -> Message:
  return _for(context)(msg, context)
