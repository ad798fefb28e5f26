# Copyright 2026 The ssgd_optax Authors. Licensed under the Apache License 2.0.
"""Tests of ssgd_optax._numerics: the overflow-safe norms every module shares.

The two forms of the group norm (fused and rescue) are tested through
unit_normalize in test_normalize.py.
"""

import hypothesis
import hypothesis.strategies as st
import jax.numpy as jnp
import numpy as np
import pytest

from ssgd_optax import _numerics


@hypothesis.settings(max_examples=40, deadline=None)
@hypothesis.given(
    exponents=st.lists(st.integers(-140, 127), min_size=1, max_size=6),
    seed=st.integers(0, 2**16))
def test_range_sums_give_the_float64_norm(exponents, seed):
  """The three range sums recover the norm of entries spanning float32's range."""
  rng = np.random.default_rng(seed)
  x = np.concatenate([rng.uniform(0.5, 1.0, 5) * 2.0 ** e for e in exponents]).astype(np.float32)
  want = np.linalg.norm(x.astype(np.float64))
  got = float(_numerics.norm(_numerics.sums_of_squares(jnp.asarray(x))))
  if want > float(jnp.finfo(jnp.float32).max):
    assert got == float('inf')
  elif max(exponents) < -126:  # all subnormal: flushed to zero or exact
    assert got == 0 or got == pytest.approx(want, rel=1e-3)
  else:
    assert got == pytest.approx(want, rel=1e-5)


def test_per_example_norm_rows_are_independent():
  x = jnp.stack([jnp.full((2, 3), 1e30), jnp.zeros((2, 3)), jnp.full((2, 3), 1e-30),
                 jnp.array([[jnp.nan, 0, 0], [0, 0, 0]])])
  n = _numerics.row_norms(x)
  np.testing.assert_allclose(n[:3], [np.sqrt(6) * 1e30, 0, np.sqrt(6) * 1e-30], rtol=1e-6)
  assert bool(jnp.isnan(n[3]))
  with pytest.raises(ValueError, match='method must be one of'):
    _numerics.group_scales([x], [jnp.float32], method='fast')
