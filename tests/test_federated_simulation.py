# Copyright 2026 The ssgd_optax Authors. Licensed under the Apache License 2.0.
"""Tests for ssgd_optax.federated (DSSGD simulation and parameter server)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ssgd_optax import federated
from ssgd_optax.federated import _server as srv
from ssgd_optax import selective_sharing

D, C = 6, 3


def loss_fn(params, x, y):
  logits = x @ params['w'] + params['b']
  return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def _params():
  return {'w': jnp.zeros((D, C)), 'b': jnp.zeros((C,))}


def _data(n, m=8, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, m, D)).astype(np.float32)
  y = rng.integers(0, C, size=(n, m)).astype(np.int32)
  return jnp.asarray(x), jnp.asarray(y)


def _sim(n, **kw):
  kw.setdefault('learning_rate', 0.1)
  kw.setdefault('batch_size', 4)
  return federated.make_dssgd(loss_fn, _params(), num_participants=n, **kw)


@pytest.mark.parametrize('order', ['round_robin', 'random'])
def test_sequential_full_sharing_server_equals_last_local_model(order):
  sim = _sim(4, order=order)
  x, y = _data(4)
  state = sim.init(jax.random.key(0))
  state, info = jax.jit(sim.round)(state, x, y)
  assert bool(info.accepted.all())
  # Each participant downloads everything and uploads its whole delta, so the
  # server ends with the model of whoever went last.
  dists = jnp.abs(state.clients.params - state.server.params).max(axis=1)
  assert float(dists.min()) < 1e-6
  assert int((dists < 1e-6).sum()) == 1
  assert int(state.server.round) == 1
  if order == 'round_robin':
    assert int(jnp.argmin(dists)) == 3


def test_random_order_changes_every_round():
  x, y = _data(5)
  sim = _sim(5, order='random')
  state = sim.init(jax.random.key(1))
  step = jax.jit(sim.round)
  who = []
  for _ in range(4):
    state, _ = step(state, x, y)
    d = jnp.abs(state.clients.params - state.server.params).max(axis=1)
    who.append(int(jnp.argmin(d)))
  assert len(set(who)) > 1


# The synchronous order's statistics (one applied mean per round) are checked in
# test_synchronous_order_applies_the_mean_of_the_accepted_uploads.
@pytest.mark.parametrize('order', ['round_robin', 'random', 'asynchronous'])
def test_selective_upload_limits_shared_entries_and_stats(order):
  n = 4
  sim = _sim(n, order=order, upload=selective_sharing(0.1))
  x, y = _data(n)
  state = sim.init(jax.random.key(0))
  state, info = jax.jit(sim.round)(state, x, y)
  k = math.ceil(0.1 * sim.num_params)
  assert np.all(np.asarray(info.shared) <= k) and np.all(np.asarray(info.shared) > 0)
  changed = state.server.params != sim.ravel(_params())
  assert float(state.server.stats.sum()) == float(info.shared.sum())
  assert int(changed.sum()) <= n * k


@pytest.mark.parametrize('order', federated.ORDERS)
def test_dropout_never_touches_server_or_local_state(order):
  n = 4
  sim = _sim(n, order=order, upload=selective_sharing(0.5))
  x, y = _data(n)
  state = sim.init(jax.random.key(0))
  active = jnp.array([True, False, True, True])
  step = jax.jit(sim.round)
  # Participant 3 uploads a non-finite update: rejected like a dropout.
  x = x.at[3, 0, 0].set(jnp.inf)
  a, info_a = step(state, x, y, active)
  # The dropped participant's data cannot influence anything, even NaN.
  b, _ = step(state, x.at[1].set(jnp.nan), y, active)
  assert info_a.accepted.tolist() == [True, False, True, False]
  for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    if jnp.issubdtype(u.dtype, jax.dtypes.prng_key):
      u, v = jax.random.key_data(u), jax.random.key_data(v)
    np.testing.assert_array_equal(np.asarray(u), np.asarray(v))
  np.testing.assert_array_equal(a.clients.params[1], state.clients.params[1])
  assert bool(jnp.isfinite(a.server.params).all())


def test_hundreds_of_participants_vmapped():
  n = 300
  sim = _sim(n, order='asynchronous', upload=selective_sharing(0.05), batch_size=4)
  x, y = _data(n, m=8)
  state = sim.init(jax.random.key(0))
  step = jax.jit(sim.round)
  loss0 = float(loss_fn(sim.unravel(state.server.params), x.reshape(-1, D), y.reshape(-1)))
  for _ in range(3):
    state, info = step(state, x, y)
  assert bool(info.accepted.all())
  loss1 = float(loss_fn(sim.unravel(state.server.params), x.reshape(-1, D), y.reshape(-1)))
  assert math.isfinite(loss1) and loss1 != loss0


def test_async_concurrency_and_staleness():
  n = 6
  sim = _sim(n, order='asynchronous', concurrency=2, max_staleness=2)
  x, y = _data(n)
  state = sim.init(jax.random.key(3))
  step = jax.jit(sim.round)
  seen = []
  for r in range(5):
    state, info = step(state, x, y)
    s = np.asarray(info.staleness)
    assert s.max() <= min(r, 2)
    seen.extend(s.tolist())
  assert set(seen) == {0, 1, 2}
  assert state.history.shape == (3, sim.num_params)
  np.testing.assert_array_equal(state.history[0], state.server.params)


def test_async_full_concurrency_adds_all_deltas_from_one_download():
  n = 3
  sim = _sim(n, order='asynchronous')
  x, y = _data(n)
  state0 = sim.init(jax.random.key(0))
  state, _ = jax.jit(sim.round)(state0, x, y)
  deltas = state.clients.params - state0.server.params
  np.testing.assert_allclose(state.server.params, state0.server.params + deltas.sum(0),
                             rtol=1e-5, atol=1e-6)


def test_synchronous_order_applies_the_mean_of_the_accepted_uploads():
  # One rule for a synchronous round, plain or secure: the mean of what was
  # accepted (the sum of N updates from one model is a step N times as long).
  n = 3
  sim = _sim(n, order='synchronous')
  x, y = _data(n)
  x = x.at[2, 0, 0].set(jnp.nan)   # participant 2's upload is not finite: rejected
  state0 = sim.init(jax.random.key(0))
  active = jnp.array([True, False, True])   # participant 1 drops out
  state, info = jax.jit(sim.round)(state0, x, y, active)
  assert info.accepted.tolist() == [True, False, False]
  delta0 = state.clients.params[0] - state0.server.params
  np.testing.assert_allclose(state.server.params, state0.server.params + delta0, atol=1e-6)
  np.testing.assert_array_equal(state.clients.params[1], state0.clients.params[1])
  state, info = jax.jit(sim.round)(state0, x.at[2].set(x[0]), y, None)
  deltas = state.clients.params - state0.server.params
  np.testing.assert_allclose(state.server.params, state0.server.params + deltas.mean(0),
                             rtol=1e-5, atol=1e-6)
  # One update per round: the statistics count the mean's nonzero entries once.
  changed = state.server.params != state0.server.params
  assert float(state.server.stats.sum()) == int(changed.sum())


def test_random_upload_keys_differ_between_participants():
  n = 4
  sim = _sim(n, order='asynchronous',
             upload=selective_sharing(0.2, strategy='threshold_random', key=jax.random.key(0)))
  state = sim.init(jax.random.key(0))
  keys = jax.random.key_data(state.clients.upload_state.key)
  assert len({tuple(np.asarray(k).tolist()) for k in keys}) == n


def test_theta_d_zero_is_standalone_training():
  n = 3
  sim = _sim(n, theta_d=0.0, order='asynchronous')
  x, y = _data(n)
  state0 = sim.init(jax.random.key(0))
  state, _ = jax.jit(sim.round)(state0, x, y)
  state, _ = jax.jit(sim.round)(state, x, y)
  # Nobody ever downloads: the local models only see their own data, and the
  # server is the initial model plus every delta.
  total = (state.clients.params - state0.clients.params).sum(0)
  np.testing.assert_allclose(state.server.params, state0.server.params + total, atol=1e-5)


def test_download_mask_criteria():
  dl = jax.jit(srv.download_mask, static_argnames=('fraction', 'criterion'))
  s = srv.server_init(jnp.zeros(10))._replace(stats=jnp.arange(10.0))
  m = dl(s, 0.3, key=jax.random.key(0))
  assert m.tolist() == [False] * 7 + [True] * 3
  s0 = srv.server_init(jnp.zeros(100))
  masks = [dl(s0, 0.1, key=jax.random.key(i)) for i in range(5)]
  assert all(int(mm.sum()) == 10 for mm in masks)
  assert len({np.asarray(mm).tobytes() for mm in masks}) == 5  # random tie-break
  r = dl(s, 0.5, key=jax.random.key(1), criterion='random')
  assert int(r.sum()) == 5
  with pytest.raises(ValueError, match='criterion'):
    srv.download_mask(s, 0.5, key=jax.random.key(1), criterion='newest')


def test_server_apply_decay_and_last_updated():
  s = srv.server_init(jnp.zeros(3))
  s, _ = srv.server_apply(s, jnp.array([1.0, 0.0, 2.0]), decay=0.5)
  s, _ = srv.server_apply(s, jnp.array([1.0, 1.0, 0.0]), decay=0.5)
  np.testing.assert_allclose(s.stats, [1.5, 1.0, 0.5])
  np.testing.assert_allclose(s.params, [2.0, 1.0, 2.0])
  s, ok = srv.server_apply(s, jnp.ones(3), active=False)
  assert not bool(ok)
  np.testing.assert_allclose(s.params, [2.0, 1.0, 2.0])
  assert s.last_updated.tolist() == [0, 0, 0]


@pytest.mark.parametrize('kwargs,exc,match', [
    (dict(num_participants=0), ValueError, 'num_participants'),
    (dict(order='sync'), ValueError, 'order'),
    (dict(order='secure'), ValueError, 'order'),
    (dict(secure_aggregation=federated.SecureAggregation()), ValueError, 'synchronous'),
    (dict(order='synchronous', secure_aggregation=federated.SecureAggregation(threshold=2)),
     ValueError, 'threshold'),
    (dict(order='synchronous', secure_aggregation={'threshold': 3}), TypeError,
     'SecureAggregation'),
    (dict(download='newest'), ValueError, 'download'),
    (dict(theta_d=2.0), ValueError, 'theta_d'),
    (dict(max_staleness=1), ValueError, 'asynchronous'),
    (dict(order='asynchronous', concurrency=3), ValueError, 'divide'),
    (dict(upload=lambda g: g), TypeError, 'upload'),
    (dict(batch_size=0), ValueError, 'batch_size'),
])
def test_validation(kwargs, exc, match):
  kw = dict(num_participants=4, learning_rate=0.1, batch_size=2)
  kw.update(kwargs)
  with pytest.raises(exc, match=match):
    federated.make_dssgd(loss_fn, _params(), **kw)


def test_wrong_shard_shapes_rejected():
  sim = _sim(3)
  x, y = _data(2)
  with pytest.raises(ValueError, match='leading participant axis'):
    sim.round(sim.init(jax.random.key(0)), x, y)
  x, y = _data(3)
  with pytest.raises(ValueError, match='active'):
    sim.round(sim.init(jax.random.key(0)), x, y, jnp.ones(2, bool))


def test_shard_is_disjoint_and_equal():
  xs, ys = federated.shard(np.arange(31), np.arange(31), 5, seed=1)
  assert xs.shape == (5, 6)
  flat = xs.ravel()
  assert len(set(flat.tolist())) == 30
  np.testing.assert_array_equal(xs, ys)
  with pytest.raises(ValueError, match='exceeds'):
    federated.shard(np.arange(3), np.arange(3), 5)


def test_dp_upload_in_the_vmapped_simulation_counts_rounds_per_participant():
  from ssgd_optax import num_shared
  from ssgd_optax.privacy import dp_selective_sharing
  n = 4
  sim = _sim(n, order='asynchronous', upload=dp_selective_sharing(
      0.2, epsilon=1.0, clip=0.05, key=jax.random.key(0)))
  x, y = _data(n)
  state = sim.init(jax.random.key(0))
  state, info = jax.jit(sim.round)(state, x, y)
  assert state.clients.upload_state.rounds.tolist() == [1] * n
  assert np.all(np.asarray(info.shared) <= num_shared(sim.num_params, 0.2))
  moved = np.abs(np.asarray(state.server.params - sim.ravel(_params())))
  assert moved.max() <= n * 0.05 + 1e-6
