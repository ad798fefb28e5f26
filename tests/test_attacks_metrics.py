# Copyright 2026 The ssgd_optax Authors. Licensed under the Apache License 2.0.
"""Metrics: PSNR convention (peak 1 on [0, 1]), SSIM, batch matching, labels."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssgd_optax import attacks


def test_psnr_convention():
  a = jnp.zeros((2, 4, 4, 1))
  b = a.at[0].set(0.1).at[1].set(0.01)
  np.testing.assert_allclose(attacks.psnr(a, b), [20.0, 40.0], rtol=1e-5)
  assert float(attacks.psnr(a, a)[0]) == 100.0  # capped, never inf
  # Bounds map linearly to [0, 1]: an error of 0.2 on [-1, 1] is 0.1 on [0, 1].
  np.testing.assert_allclose(attacks.psnr(a - 1, b * 2 - 1, bounds=(-1, 1)), [20.0, 40.0],
                             rtol=1e-5)
  assert np.isnan(attacks.psnr(a, b.at[0, 0, 0, 0].set(jnp.nan))[0])


def test_ssim_and_shapes():
  x = jax.random.uniform(jax.random.key(0), (2, 16, 16, 3))
  np.testing.assert_allclose(attacks.ssim(x, x), [1.0, 1.0], atol=1e-5)
  assert float(attacks.ssim(x, 1 - x)[0]) < 0.1
  with pytest.raises(ValueError, match='shapes differ'):
    attacks.psnr(x, x[:1])
  with pytest.raises(ValueError, match='images'):
    attacks.ssim(x.reshape(2, -1), x.reshape(2, -1))


def test_batch_is_matched_before_scoring():
  x = jax.random.uniform(jax.random.key(1), (4, 12, 12, 1))
  perm = jnp.array([2, 0, 3, 1])
  s = attacks.score(x, x[perm], true_labels=jnp.array([0, 1, 2, 3]),
                    rec_labels=jnp.array([3, 2, 1, 0]))
  np.testing.assert_allclose(s.psnr, 100.0)
  np.testing.assert_allclose(s.ssim, 1.0, atol=1e-5)
  assert s.label_accuracy == 1.0
  assert attacks.match_batch(x, x[perm]).tolist() == [1, 3, 0, 2]


def test_every_exact_copy_is_counted():
  # An imprint-like batch: inputs 0 and 1 come back as exact copies, input 2 is
  # lost in a mixture that lies on the far side of input 0 from input 2. Minimum
  # total MSE pairs the copy of input 0 with input 2 (squared errors 0.09 + 0.09
  # beat 0 + 0.36) and so counts one copy of two; maximum total PSNR keeps both.
  x = jnp.stack([jnp.full((16,), v) for v in (0.5, 0.1, 0.8)])   # not images: no SSIM
  rec = jnp.stack([x[0], x[1], jnp.full((16,), 0.2)])
  s = attacks.score(x, rec)
  assert int(np.sum(s.psnr > 60)) == 2, s.psnr
  np.testing.assert_allclose(s.psnr[:2], 100.0)
  # What the old matching did (shows the case exercises the difference).
  from scipy.optimize import linear_sum_assignment
  t, r = np.asarray(x).reshape(3, -1), np.asarray(rec).reshape(3, -1)
  _, cols = linear_sum_assignment(((t[:, None] - r[None]) ** 2).mean(-1))
  assert int(np.sum(np.all(t == r[cols], axis=1))) == 1


def test_label_accuracy_is_a_multiset_score():
  assert attacks.label_accuracy(jnp.array([1, 1, 2]), jnp.array([1, 2, 2])) == pytest.approx(2 / 3)
  assert np.isnan(attacks.label_accuracy(jnp.array([1]), None))
  with pytest.raises(ValueError, match='counts differ'):
    attacks.label_accuracy(jnp.array([1, 2]), jnp.array([1]))
