# Copyright 2026 The ssgd_optax Authors. Licensed under the Apache License 2.0.
"""The ClientApp: one DSSGD participant per SuperNode."""

import functools

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from ssgd_flower_app import task as task_lib
from ssgd_optax.federated import flower

app = ClientApp()


@functools.lru_cache(maxsize=4)
def _client(items):
  # Built once per process and run configuration (jit caches included).
  c = dict(items)
  t = task_lib.build(c)
  kw = {}
  if c.get('order') == 'secure':
    keys, registry = task_lib.demo_identities(c)
    kw = {'signing_key': lambda i: keys[i], 'registry': registry}
  return flower.make_client_app(t.sim, lambda i: (t.xs[i], t.ys[i]), t.params, **kw)


@app.train()
def train(msg: Message, context: Context) -> Message:
  return _client(tuple(sorted(context.run_config.items())))(msg, context)


@app.query()
def query(msg: Message, context: Context) -> Message:
  return _client(tuple(sorted(context.run_config.items())))(msg, context)
