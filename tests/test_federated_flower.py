# Copyright 2026 The ssgd_optax Authors. Licensed under the Apache License 2.0.
"""The Flower adapter runs the simulation's client logic (in-process loopback)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

pytest.importorskip('flwr')

from ssgd_optax import federated  # noqa: E402
from ssgd_optax.federated import flower  # noqa: E402
from ssgd_optax.selective import selective_sharing  # noqa: E402

D, C, N = 5, 3, 3


def loss_fn(params, x, y):
  return optax.softmax_cross_entropy_with_integer_labels(x @ params['w'] + params['b'], y).mean()


def _setup(upload):
  params = {'w': jnp.zeros((D, C)), 'b': jnp.zeros((C,))}
  rng = np.random.default_rng(0)
  x = rng.normal(size=(N, 8, D)).astype(np.float32)
  y = rng.integers(0, C, size=(N, 8)).astype(np.int32)
  sim = federated.make_dssgd(loss_fn, params, num_participants=N, learning_rate=0.1,
                             batch_size=4, upload=upload, theta_d=0.5)
  return params, x, y, sim


def test_flower_round_robin_reproduces_the_simulation():
  upload = selective_sharing(0.3, strategy='threshold_random', key=jax.random.key(5))
  params, x, y, sim = _setup(upload)
  key = jax.random.key(7)
  seen = []
  server_app = flower.make_server_app(sim, params, rounds=2, key=key, theta_d=0.5,
                                      on_round=lambda r, s: seen.append(s))
  client_app = flower.make_client_app(sim, lambda i: (x[i], y[i]), params)
  flower.run_loopback(server_app, client_app, N)
  state = sim.init(key)
  step = jax.jit(sim.round)
  for _ in range(2):
    state, _ = step(state, jnp.asarray(x), jnp.asarray(y))
  assert len(seen) == 2
  np.testing.assert_allclose(seen[-1].params, state.server.params, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(seen[-1].stats, state.server.stats)
  assert int(seen[-1].round) == 2


def test_flower_dropped_node_leaves_server_untouched():
  params, x, y, sim = _setup(selective_sharing(0.5))
  out = {}
  for drop in ((), (2,)):
    got = []
    server_app = flower.make_server_app(sim, params, rounds=1, key=jax.random.key(0),
                                        order='synchronous', on_round=lambda r, s: got.append(s))
    client_app = flower.make_client_app(sim, lambda i: (x[i], y[i]), params)
    flower.run_loopback(server_app, client_app, N, drop=drop)
    out[drop] = got[-1]
  assert bool(jnp.isfinite(out[(2,)].params).all())
  # Node 2 is participant 1: its share of the stats is missing, nothing else.
  assert float(out[(2,)].stats.sum()) < float(out[()].stats.sum())


def test_flower_validation():
  params, _, _, sim = _setup(None)
  with pytest.raises(ValueError, match='order'):
    flower.make_server_app(sim, params, rounds=1, key=jax.random.key(0), order='async')
  with pytest.raises(TypeError, match='DSSGD'):
    flower.make_client_app(object(), lambda i: None, params)
