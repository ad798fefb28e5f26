# Copyright 2026 The ssgd_optax Authors. Licensed under the Apache License 2.0.
"""Tests for ssgd_optax.privacy.sampling."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from ssgd_optax import privacy


@functools.partial(jax.jit, static_argnums=(1, 3))
def _many(keys, n, q, b):
  return jax.vmap(lambda k: privacy.poisson_sample(k, n, q, b, return_size=True))(keys)


def test_shapes_dtypes_and_valid_distinct_indices():
  idx, mask = jax.jit(privacy.poisson_sample, static_argnums=(1, 3))(
      jax.random.key(0), 500, 0.1, 120)
  assert idx.shape == (120,) and idx.dtype == jnp.int32
  assert mask.shape == (120,) and mask.dtype == jnp.bool_
  idx, mask = np.asarray(idx), np.asarray(mask)
  assert ((0 <= idx) & (idx < 500)).all()
  sel = idx[mask]
  assert len(np.unique(sel)) == len(sel)
  assert (idx[~mask] == 0).all()


def test_batch_size_is_binomial_and_each_example_has_rate_q():
  n, q, b, reps = 400, 0.05, 60, 2000
  idx, mask, size = _many(jax.random.split(jax.random.key(1), reps), n, q, b)
  size, mask = np.asarray(size), np.asarray(mask)
  assert (mask.sum(1) == size).all()  # No overflow at b = 60 (mean 20).
  # Mean and variance of Binomial(n, q), within ~5 standard errors.
  assert abs(size.mean() - n * q) < 5 * np.sqrt(n * q * (1 - q) / reps)
  assert size.var() == pytest.approx(n * q * (1 - q), rel=0.15)
  # Per-example inclusion frequencies: chi-square against Binomial(reps, q).
  counts = np.zeros(n)
  np.add.at(counts, np.asarray(idx)[mask], 1)
  chi2 = ((counts - reps * q) ** 2 / (reps * q * (1 - q))).sum()
  assert stats.chi2.sf(chi2, n) > 1e-4


def test_overflow_keeps_a_uniform_random_subset():
  n, q, b, reps = 200, 0.5, 20, 500
  idx, mask, size = _many(jax.random.split(jax.random.key(2), reps), n, q, b)
  idx, mask, size = map(np.asarray, (idx, mask, size))
  assert (size > b).all() and mask.all()
  assert all(len(np.unique(r)) == b for r in idx)
  # Not the lowest indices: the kept indices are spread over [0, n).
  assert abs(idx.mean() - (n - 1) / 2) < 5 * np.sqrt(n**2 / 12 / idx.size)


@pytest.mark.parametrize('q,want', [(0.0, 0), (1.0, 50)])
def test_extreme_rates(q, want):
  idx, mask = privacy.poisson_sample(jax.random.key(3), 50, q, 50)
  assert int(mask.sum()) == want
  if want:
    assert sorted(np.asarray(idx).tolist()) == list(range(50))


def test_traced_rate_under_jit():
  f = jax.jit(lambda k, q: privacy.poisson_sample(k, 1000, q, 1000))
  assert int(f(jax.random.key(4), 1.0)[1].sum()) == 1000
  assert int(f(jax.random.key(4), 0.0)[1].sum()) == 0
  sizes = [int(f(k, 0.3)[1].sum()) for k in jax.random.split(jax.random.key(5), 20)]
  assert abs(np.mean(sizes) - 300) < 5 * np.sqrt(1000 * 0.21 / 20)


def test_keys_give_different_batches_and_same_key_same_batch():
  a = privacy.poisson_sample(jax.random.key(6), 1000, 0.05, 100)
  b = privacy.poisson_sample(jax.random.key(6), 1000, 0.05, 100)
  c = privacy.poisson_sample(jax.random.key(7), 1000, 0.05, 100)
  np.testing.assert_array_equal(a[0], b[0])
  assert not np.array_equal(a[0], c[0])


def test_padded_rows_contribute_nothing_to_a_masked_loss_gradient():
  x = jax.random.normal(jax.random.key(8), (300, 5))
  w = jnp.arange(5.0)
  idx, mask = privacy.poisson_sample(jax.random.key(9), 300, 0.1, 80)

  def masked_loss(w):
    per_example = jnp.sin(x[idx] @ w) ** 2
    return jnp.sum(jnp.where(mask, per_example, 0.0))

  sel = np.asarray(idx)[np.asarray(mask)]
  want = jax.grad(lambda w: jnp.sum(jnp.sin(x[sel] @ w) ** 2))(w)
  np.testing.assert_allclose(jax.grad(masked_loss)(w), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('n,q,steps', [(60000, 256 / 60000, 1170), (1000, 0.1, 1), (50, 0.9, 10)])
def test_max_batch_size_for_is_the_smallest_safe_size(n, q, steps):
  p = 1e-9
  b = privacy.max_batch_size_for(n, q, steps=steps, overflow_prob=p)
  assert privacy.overflow_probability(n, q, b, steps=steps) <= p
  if b < n:
    assert privacy.overflow_probability(n, q, b - 1, steps=steps) > p


def test_overflow_probability_and_truncation_delta():
  assert privacy.overflow_probability(100, 0.5, 100) == 0.0
  one = privacy.overflow_probability(1000, 0.1, 110)
  assert privacy.overflow_probability(1000, 0.1, 110, steps=10) == pytest.approx(
      1 - (1 - one) ** 10)
  assert privacy.truncation_delta(0.0, 1e-9) == pytest.approx(2e-9)


@pytest.mark.parametrize('args,err,match', [
    ((10, 0.1, 11), ValueError, 'max_batch_size'),
    ((10, 0.1, 0), ValueError, 'max_batch_size'),
    ((0, 0.1, 1), ValueError, 'num_examples'),
    ((10, 1.5, 5), ValueError, 'sampling_rate'),
    ((10.0, 0.1, 5), TypeError, 'num_examples'),
])
def test_poisson_sample_rejects_bad_arguments(args, err, match):
  with pytest.raises(err, match=match):
    privacy.poisson_sample(jax.random.key(0), *args)


def test_helpers_reject_bad_arguments():
  with pytest.raises(ValueError, match='overflow_prob'):
    privacy.max_batch_size_for(100, 0.1, overflow_prob=0.0)
  with pytest.raises(ValueError, match='sampling_rate'):
    privacy.max_batch_size_for(100, -0.1)
  with pytest.raises(ValueError, match='steps'):
    privacy.overflow_probability(100, 0.1, 10, steps=0)
