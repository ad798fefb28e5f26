# Copyright 2026 The ssgd_optax Authors. Licensed under the Apache License 2.0.
"""Tests for ssgd_optax._selective: selective sharing (ssgd_optax.selective_sharing)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ssgd_optax import _selective as selective
from ssgd_optax import num_shared, selective_sharing
from ssgd_optax.privacy import dp_selective_sharing


def _apply(tx, g, state=None):
  state = tx.init(g) if state is None else state
  return jax.jit(tx.update)(g, state)


@pytest.mark.parametrize('size,fraction,expected', [
    (100, 0.07, 7), (10, 0.01, 1), (10, 0.0, 0), (10, 1.0, 10), (3, 0.5, 2), (0, 0.3, 0)])
def test_num_shared(size, fraction, expected):
  assert num_shared(size, fraction) == expected


@pytest.mark.parametrize('fraction', [0.01, 0.1, 0.33, 1.0])
def test_largest_keeps_the_top_magnitudes_globally(fraction):
  rng = np.random.default_rng(0)
  g = {'a': jnp.asarray(rng.normal(size=(7, 5)), jnp.float32),
       'b': jnp.asarray(rng.normal(size=(13,)), jnp.float32)}
  u, _ = _apply(selective_sharing(fraction), g)
  flat_g = np.concatenate([np.ravel(g['a']), np.ravel(g['b'])])
  flat_u = np.concatenate([np.ravel(u['a']), np.ravel(u['b'])])
  k = math.ceil(fraction * flat_g.size - 1e-9)
  expected = np.zeros_like(flat_g)
  top = np.argsort(-np.abs(flat_g), kind='stable')[:k]
  expected[top] = flat_g[top]
  np.testing.assert_array_equal(flat_u, expected)


def test_per_leaf_scope_keeps_ceil_per_leaf():
  g = {'a': jnp.arange(1.0, 11.0), 'b': jnp.arange(1.0, 4.0) * 100}
  u, _ = _apply(selective_sharing(0.2, scope='per_leaf'), g)
  np.testing.assert_array_equal(u['a'], [0] * 8 + [9.0, 10.0])
  np.testing.assert_array_equal(u['b'], [0, 0, 300.0])
  # Globally the large leaf would take all three slots.
  u, _ = _apply(selective_sharing(0.2), g)
  np.testing.assert_array_equal(u['a'], np.zeros(10))
  np.testing.assert_array_equal(u['b'], [100.0, 200.0, 300.0])


def test_ties_go_to_the_first_entries():
  g = {'a': jnp.ones((4,)), 'b': -jnp.ones((4,))}
  u, _ = _apply(selective_sharing(0.5), g)
  np.testing.assert_array_equal(u['a'], np.ones(4))
  np.testing.assert_array_equal(u['b'], np.zeros(4))


def test_threshold_and_clip():
  g = jnp.array([0.05, -0.2, 5.0, -7.0, 0.1])
  u, _ = _apply(selective_sharing(1.0, threshold=0.1, clip=1.0), g)
  np.testing.assert_allclose(u, [0.0, -0.2, 1.0, -1.0, 0.0])


def test_threshold_random_selects_only_eligible_and_changes_every_step():
  g = jnp.concatenate([jnp.full((50,), 1e-3), jnp.linspace(0.5, 1.0, 50)])
  tx = selective_sharing(0.1, strategy='threshold_random', threshold=0.01,
                         key=jax.random.key(0))
  state = tx.init(g)
  update = jax.jit(tx.update)
  masks = []
  for _ in range(200):
    u, state = update(g, state)
    m = np.asarray(u != 0)
    assert m.sum() == 10
    assert not m[:50].any()
    np.testing.assert_array_equal(np.asarray(u)[m], np.asarray(g)[m])
    masks.append(m)
  masks = np.stack(masks)
  assert len({m.tobytes() for m in masks}) > 190  # fresh randomness every step
  # Uniform over eligible entries: each is chosen with probability 10/50.
  freq = masks[:, 50:].mean(0)
  assert np.all(np.abs(freq - 0.2) < 0.12), freq
  # Not the largest ones.
  assert masks[:, 50:75].sum() > 0.3 * masks.sum()


def test_threshold_random_with_fewer_eligible_than_k_shares_all_eligible():
  g = jnp.array([0.0, 2.0, 0.0, -3.0, 0.0, 0.0])
  tx = selective_sharing(1.0, strategy='threshold_random', key=jax.random.key(1))
  u, _ = _apply(tx, g)
  np.testing.assert_array_equal(u, g)


def test_random_strategy_same_key_same_result_and_legacy_key():
  g = jnp.linspace(-1, 1, 40)
  a, _ = _apply(selective_sharing(0.2, strategy='threshold_random', key=jax.random.key(3)), g)
  b, _ = _apply(selective_sharing(0.2, strategy='threshold_random', key=jax.random.PRNGKey(3)), g)
  np.testing.assert_array_equal(a, b)


def test_nan_is_shared_and_inf_clipped():
  g = jnp.array([1.0, jnp.nan, 2.0, -jnp.inf, 0.5])
  u, _ = _apply(selective_sharing(0.4, clip=3.0), g)
  assert np.isnan(u[1])
  assert np.asarray(u)[3] == -3.0
  np.testing.assert_array_equal(np.asarray(u)[[0, 2, 4]], [0.0, 0.0, 0.0])


@pytest.mark.parametrize('dtype', [jnp.bfloat16, jnp.float16, jnp.float32])
def test_low_precision_dtypes_kept(dtype):
  g = {'w': jnp.array([1.0, -4.0, 2.0, 3.0], dtype), 'v': jnp.array([0.5], jnp.float32)}
  u, _ = _apply(selective_sharing(0.4, clip=3.5), g)
  assert u['w'].dtype == dtype and u['v'].dtype == jnp.float32
  np.testing.assert_array_equal(np.asarray(u['w'], np.float32), [0, -3.5, 0, 3.0])


def test_zeros_none_empty():
  g = {'z': jnp.zeros((3,)), 'n': None, 'e': jnp.zeros((0,))}
  u, _ = _apply(selective_sharing(0.5), g)
  assert u['n'] is None and u['e'].shape == (0,)
  np.testing.assert_array_equal(u['z'], np.zeros(3))
  u, _ = _apply(selective_sharing(0.5), {})
  assert u == {}


def test_fraction_zero_shares_nothing():
  u, _ = _apply(selective_sharing(0.0), jnp.arange(5.0))
  np.testing.assert_array_equal(u, np.zeros(5))


def test_inject_hyperparams_with_static_fraction():
  tx = optax.inject_hyperparams(selective_sharing, static_args=('fraction',))(
      0.5, threshold=0.0, clip=1.0)
  g = jnp.array([0.3, -2.0, 0.1, 4.0])
  state = tx.init(g)
  u, state = jax.jit(tx.update)(g, state)
  np.testing.assert_allclose(u, [0, -1.0, 0, 1.0])
  state.hyperparams['clip'] = jnp.asarray(0.5)
  u, _ = jax.jit(tx.update)(g, state)
  np.testing.assert_allclose(u, [0, -0.5, 0, 0.5])


def test_chain_with_sgd_and_vmap():
  tx = optax.chain(selective_sharing(0.25), optax.sgd(1.0))
  g = jnp.arange(8.0).reshape(2, 4)
  u, _ = jax.vmap(lambda x: tx.update(x, tx.init(x)))(g)
  np.testing.assert_array_equal(u, [[0, 0, 0, -3.0], [0, 0, 0, -7.0]])


@pytest.mark.parametrize('kwargs,exc,match', [
    (dict(fraction=1.5), ValueError, 'fraction'),
    (dict(fraction=-0.1), ValueError, 'fraction'),
    (dict(fraction='0.1'), TypeError, 'fraction'),
    (dict(fraction=0.1, strategy='random'), ValueError, 'strategy'),
    (dict(fraction=0.1, threshold=-1.0), ValueError, 'threshold'),
    (dict(fraction=0.1, clip=-1.0), ValueError, 'clip'),
    (dict(fraction=0.1, strategy='threshold_random'), ValueError, 'key'),
    (dict(fraction=0.1, strategy='threshold_random', key=3), TypeError, 'key'),
    (dict(fraction=0.1, scope='per_row'), ValueError, 'scope'),
])
def test_validation(kwargs, exc, match):
  fraction = kwargs.pop('fraction')
  with pytest.raises(exc, match=match):
    selective_sharing(fraction, **kwargs)


def test_traced_fraction_and_integer_leaves_rejected():
  with pytest.raises(TypeError, match='static_args'):
    jax.jit(lambda f: selective_sharing(f).init(jnp.zeros(2)))(0.5)
  tx = selective_sharing(0.5)
  with pytest.raises(TypeError, match='floating-point'):
    tx.update({'i': jnp.arange(3)}, tx.init(None))


@pytest.mark.parametrize('make', [
    lambda k: selective_sharing(0.5, strategy='threshold_random', key=k),
    lambda k: dp_selective_sharing(0.5, epsilon=1.0, clip=1.0, key=k),
], ids=['threshold_random', 'dp'])
def test_donated_state_does_not_break_init(make):
  key = jax.random.PRNGKey(0)  # legacy keys are wrapped, then copied too
  tx = make(key)
  g = jnp.linspace(-1.0, 1.0, 8)
  first, _ = jax.jit(tx.update, donate_argnums=1)(g, tx.init(g))
  second, state = jax.jit(tx.update, donate_argnums=1)(g, tx.init(g))
  np.testing.assert_array_equal(first, second)  # init hands out the same key
  jax.jit(tx.update, donate_argnums=1)(g, state)
  assert not key.is_deleted()


def test_keys_are_checked_by_the_shared_checker():
  for make in (lambda k: selective_sharing(0.1, strategy='threshold_random', key=k),
               lambda k: dp_selective_sharing(0.1, epsilon=1.0, clip=1.0, key=k)):
    with pytest.raises(ValueError, match='single PRNG key'):
      make(jax.random.split(jax.random.key(0), 2))
    with pytest.raises(TypeError, match='key'):
      make(np.zeros((3,), np.uint32))
  assert not hasattr(selective, '_as_typed_key')
