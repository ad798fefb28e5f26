# Copyright 2026 The ssgd_optax Authors. Licensed under the Apache License 2.0.
"""Tests for ssgd_optax.selective (selective sharing and its DP variant)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ssgd_optax import selective
from ssgd_optax.selective import (dp_selective_sharing, dp_selective_sharing_privacy,
                                  epsilon_from_per_parameter, num_shared, selective_sharing)


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


# ---------------------------------------------------------------------------
# DP variant.


def test_dp_releases_at_most_c_bounded_values():
  g = {'a': jax.random.normal(jax.random.key(0), (40,)) * 5, 'b': jnp.ones((10,))}
  tx = dp_selective_sharing(0.1, epsilon=1.0, clip=0.5, threshold=0.1, key=jax.random.key(1))
  state = tx.init(g)
  update = jax.jit(tx.update)
  for r in range(5):
    u, state = update(g, state)
    flat = np.concatenate([np.asarray(u['a']), np.asarray(u['b'])])
    assert (flat != 0).sum() <= 5
    assert np.all(np.abs(flat) <= 0.5)
  assert int(state.rounds) == 5


def test_dp_with_huge_epsilon_releases_the_entries_above_threshold():
  # With negligible noise, NumericSparse returns the (clipped) entries whose
  # magnitude exceeds tau, at most c of them.
  g = jnp.array([0.0, 0.9, 0.0, -0.5, 0.0, 0.0, 0.7, 0.0, 0.0, 0.0])
  tx = dp_selective_sharing(0.3, epsilon=1e9, clip=0.8, threshold=0.2, key=jax.random.key(2))
  u, _ = _apply(tx, g)
  np.testing.assert_allclose(u, [0, 0.8, 0, -0.5, 0, 0, 0.7, 0, 0, 0], atol=1e-4)


def test_dp_with_small_epsilon_is_noise_dominated():
  g = jnp.zeros((200,))
  tx = dp_selective_sharing(0.05, epsilon=0.01, clip=1.0, threshold=0.0, key=jax.random.key(3))
  u, _ = _apply(tx, g)
  # Zero input, yet values come out: they are pure noise, clipped to gamma.
  assert 0 < int((u != 0).sum()) <= 10
  assert np.all(np.abs(np.asarray(u)) <= 1.0)


def test_dp_nan_is_not_propagated_and_dtype_kept():
  g = {'w': jnp.array([jnp.nan, 1.0, 2.0, 3.0], jnp.bfloat16)}
  tx = dp_selective_sharing(0.5, epsilon=1e9, clip=2.5, key=jax.random.key(4))
  u, _ = _apply(tx, g)
  assert u['w'].dtype == jnp.bfloat16
  assert np.all(np.isfinite(np.asarray(u['w'], np.float32)))


@pytest.mark.parametrize('kwargs,exc,match', [
    (dict(epsilon=0.0, clip=1.0), ValueError, 'epsilon'),
    (dict(epsilon=1.0, clip=None), ValueError, 'clip'),
    (dict(epsilon=1.0, clip=float('inf')), ValueError, 'clip'),
    (dict(epsilon=1.0, clip=1.0, key=None), ValueError, 'key'),
])
def test_dp_validation(kwargs, exc, match):
  kwargs.setdefault('key', jax.random.key(0))
  with pytest.raises(exc, match=match):
    dp_selective_sharing(0.1, **kwargs)


def test_dp_privacy_accounting():
  p = dp_selective_sharing_privacy(0.1, 100, num_params=105_506, fraction=0.01, delta=1e-5)
  assert p.total_epsilon == pytest.approx(10.0)
  assert p.num_shared == 1056
  assert 0 < p.total_epsilon_at_delta < p.total_epsilon
  assert dp_selective_sharing_privacy(1.0, 0, num_params=5, fraction=1.0).total_epsilon == 0
  with pytest.raises(ValueError, match='delta'):
    dp_selective_sharing_privacy(1.0, 2, num_params=5, fraction=1.0, delta=1.0)
  with pytest.raises(TypeError, match='rounds'):
    dp_selective_sharing_privacy(1.0, 2.5, num_params=5, fraction=1.0)


def test_per_parameter_epsilon_conversion_matches_mcsherry():
  # McSherry: per-parameter epsilon 1 with theta_u = 0.1 on the 105,506-parameter
  # CNN is about 10,550 per epoch.
  assert epsilon_from_per_parameter(1.0, num_params=105_506, fraction=0.1) == 10551.0
  assert selective.STRATEGIES == ('largest', 'threshold_random')


# ---------------------------------------------------------------------------
# Guarantees of the DP variant, attacked (issue 11): noise calibration,
# sensitivity of every query and value, non-finite inputs, donated state.


def _releases(fraction, n, *, epsilon, clip, threshold, trials, seed=0, x=0.0):
  """``trials`` independent releases of a constant ``n``-entry update."""
  tx = dp_selective_sharing(fraction, epsilon=epsilon, clip=clip, threshold=threshold,
                            key=jax.random.key(0))
  g = jnp.full((n,), x, jnp.float32)
  keys = jax.random.split(jax.random.key(seed), trials)
  step = jax.jit(jax.vmap(
      lambda k: tx.update(g, selective.DPSelectiveSharingState(k, jnp.zeros((), jnp.int32)))[0]))
  return np.asarray(step(keys))


def _check_value_noise(n, fraction):
  # Zero entries, gamma = 1 and a large epsilon: the clip at gamma is never
  # reached (P ~ e^-25) and the threshold noise is tiny, so about half of the
  # entries pass the test and each released value is pure Laplace noise,
  # whose mean absolute value is its scale 2 c Delta / eps2, Delta = 2 gamma.
  gamma, epsilon = 1.0, 900.0
  c = num_shared(n, fraction)
  expected = 2 * c * (2 * gamma) / (2 * epsilon / 9)
  u = _releases(fraction, n, epsilon=epsilon, clip=gamma, threshold=0.0, trials=40_000)
  released = np.abs(u[u != 0])
  assert released.size > 10_000
  # Standard error of the mean of |Lap(b)| is b / sqrt(size) < 1 % of b.
  assert np.mean(released) == pytest.approx(expected, rel=0.05), (np.mean(released), expected)


@pytest.mark.parametrize('n,fraction', [(1, 1.0), (4, 0.5)])
def test_dp_value_noise_has_the_papers_scale(n, fraction):
  _check_value_noise(n, fraction)


def test_dp_value_noise_check_fails_on_half_the_noise(monkeypatch):
  # The scale before issue 11 (c Delta / eps2): its value releases cost
  # 2 eps / 9, a round 10 eps / 9. The measured check must catch it.
  right = selective._sparse_vector_scales

  def halved(k, epsilon, clip):
    s = right(k, epsilon, clip)
    return s._replace(value=s.value / 2)

  monkeypatch.setattr(selective, '_sparse_vector_scales', halved)
  with pytest.raises(AssertionError):
    _check_value_noise(1, 1.0)


def _hit_rate_bound(b_query, b_threshold, tau):
  # P(Lap(a) - Lap(b) >= tau) for tau >= 0, a != b: the tail of the
  # difference of two independent Laplace variables.
  a, b = b_query, b_threshold
  return (a * a * math.exp(-tau / a) - b * b * math.exp(-tau / b)) / (2 * (a * a - b * b))


def _check_threshold_noise(gamma):
  # One zero entry (c = 1), tau = gamma: it passes the noisy threshold test
  # iff Lap(2 b) - Lap(b) >= tau with b = 2 c Delta / eps1, Delta = 2 gamma.
  # epsilon = 9 makes b = gamma / 2, so the rate is the same for every gamma.
  epsilon, c = 9.0, 1
  b = 2 * c * (2 * gamma) / (8 * epsilon / 9)
  expected = _hit_rate_bound(2 * b, b, gamma)
  u = _releases(1.0, 1, epsilon=epsilon, clip=gamma, threshold=gamma, trials=40_000, seed=1)
  rate = float(np.mean(u != 0))
  # Binomial standard error ~0.002; the tolerance is 7 of them.
  assert rate == pytest.approx(expected, abs=0.015), (rate, expected)


@pytest.mark.parametrize('gamma', [1.0, 0.25])
def test_dp_threshold_noise_is_calibrated_to_two_gamma(gamma):
  _check_threshold_noise(gamma)


def test_dp_threshold_check_fails_on_sensitivity_gamma(monkeypatch):
  # A stand-in that under-states the sensitivity 2x (Delta = gamma).
  right = selective._sparse_vector_scales
  monkeypatch.setattr(selective, '_sparse_vector_scales',
                      lambda k, epsilon, clip: right(k, epsilon, clip / 2))
  with pytest.raises(AssertionError):
    _check_threshold_noise(1.0)


_SPECIAL = [0.0, -0.0, 1e-45, -1e-45, 1e-38, 0.25, -0.25, 1.0, -1.0, 1.0000001, -1.0000001,
            3.4e38, -3.4e38, np.inf, -np.inf, np.nan]


def _check_bounded(bound_fn, x, gamma):
  y = np.asarray(jax.jit(bound_fn)(jnp.asarray(x, jnp.float32), jnp.float32(gamma)))
  assert np.all(np.isfinite(y)), (x, y)
  # Every query |y_j| is in [0, gamma] and every value in [-gamma, gamma], so
  # any two inputs give queries and values within Delta = 2 gamma.
  assert np.all(np.abs(y) <= np.float32(gamma)), (x, y)
  finite = np.isfinite(np.asarray(x, np.float32))
  np.testing.assert_array_equal(y[~finite], 0.0)


@pytest.mark.parametrize('gamma', [1e-30, 0.1, 1.0, 1e30])
def test_dp_bounded_entries_fuzz(gamma):
  from hypothesis import given, settings, strategies as st
  from hypothesis.extra import numpy as hnp

  _check_bounded(selective._bounded_entries, np.array(_SPECIAL) * 1.0, gamma)

  @settings(max_examples=60, deadline=None, derandomize=True)
  @given(hnp.arrays(np.float32, (16,), elements=st.one_of(
      st.floats(width=32, allow_nan=True, allow_infinity=True), st.sampled_from(_SPECIAL))))
  def fuzz(x):
    _check_bounded(selective._bounded_entries, x, gamma)

  fuzz()


def test_dp_bounded_entries_fuzz_fails_on_a_stand_in_that_keeps_nan():
  # Clipping alone leaves NaN in the queries: the check must notice.
  with pytest.raises(AssertionError):
    _check_bounded(lambda x, c: jnp.clip(x, -c, c), np.array(_SPECIAL), 1.0)


def test_dp_release_stays_finite_and_bounded_on_adversarial_inputs():
  gamma = 0.5
  x = np.array(_SPECIAL * 2, np.float32)
  with np.errstate(over='ignore'):  # 3.4e38 is meant to overflow fp16 to inf
    g = {'f32': jnp.asarray(x.reshape(4, -1)), 'bf16': jnp.asarray(x, jnp.bfloat16),
         'f16': jnp.asarray(x, jnp.float16), 'nan': jnp.asarray([np.nan, np.inf])}
  # epsilon traced: one compilation for noise from negligible to overwhelming.
  tx = optax.inject_hyperparams(dp_selective_sharing, static_args=('fraction',),
                                hyperparam_dtype=jnp.float32)(
      0.5, epsilon=1.0, clip=gamma, threshold=0.0, key=jax.random.key(5))
  state = tx.init(g)
  update = jax.jit(tx.update)
  for epsilon in (1e-3, 1.0, 1e9):
    state.hyperparams['epsilon'] = jnp.asarray(epsilon, jnp.float32)  # no retrace
    for _ in range(2):
      u, state = update(g, state)
      for name, leaf in u.items():
        assert leaf.dtype == g[name].dtype
        y = np.asarray(leaf, np.float32)
        assert np.all(np.isfinite(y)), (epsilon, name, y)
        # The cast to a low-precision dtype is post-processing; compare with
        # gamma in that dtype.
        assert np.all(np.abs(y) <= float(jnp.asarray(gamma, leaf.dtype))), (epsilon, name, y)


def test_dp_non_finite_entries_are_dropped_not_clipped():
  g = jnp.array([np.inf, 0.5, -np.inf, np.nan, -0.4])
  tx = dp_selective_sharing(1.0, epsilon=1e9, clip=1.0, threshold=0.2, key=jax.random.key(6))
  u, _ = _apply(tx, g)
  np.testing.assert_allclose(u, [0, 0.5, 0, 0, -0.4], atol=1e-4)


def test_dp_overflowing_noise_scale_gives_a_finite_release():
  # gamma near float32's limit: the Laplace scales overflow to inf.
  tx = dp_selective_sharing(1.0, epsilon=1e-3, clip=1e37, key=jax.random.key(7))
  u, _ = _apply(tx, jnp.array([1.0, -2.0, 0.0, 3e38]))
  assert np.all(np.isfinite(np.asarray(u))) and np.all(np.abs(np.asarray(u)) <= 1e37)


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
