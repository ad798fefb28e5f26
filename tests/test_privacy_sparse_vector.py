# Copyright 2026 The ssgd_optax Authors. Licensed under the Apache License 2.0.
"""Tests for ssgd_optax.privacy._sparse_vector: DP selective sharing (NumericSparse)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import ssgd_optax
from ssgd_optax.privacy import _sparse_vector as sparse_vector
from ssgd_optax import privacy
from ssgd_optax import num_shared
from ssgd_optax.privacy import (dp_selective_sharing, dp_selective_sharing_privacy,
                                epsilon_from_per_parameter)


def _apply(tx, g, state=None):
  state = tx.init(g) if state is None else state
  return jax.jit(tx.update)(g, state)



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
  assert ssgd_optax.SELECTION_STRATEGIES == ('largest', 'threshold_random')


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
      lambda k: tx.update(g, privacy.DPSelectiveSharingState(k, jnp.zeros((), jnp.int32)))[0]))
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
  right = sparse_vector._sparse_vector_scales

  def halved(k, epsilon, clip):
    s = right(k, epsilon, clip)
    return s._replace(value=s.value / 2)

  monkeypatch.setattr(sparse_vector, '_sparse_vector_scales', halved)
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
  right = sparse_vector._sparse_vector_scales
  monkeypatch.setattr(sparse_vector, '_sparse_vector_scales',
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

  _check_bounded(sparse_vector._bounded_entries, np.array(_SPECIAL) * 1.0, gamma)

  @settings(max_examples=60, deadline=None, derandomize=True)
  @given(hnp.arrays(np.float32, (16,), elements=st.one_of(
      st.floats(width=32, allow_nan=True, allow_infinity=True), st.sampled_from(_SPECIAL))))
  def fuzz(x):
    _check_bounded(sparse_vector._bounded_entries, x, gamma)

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


