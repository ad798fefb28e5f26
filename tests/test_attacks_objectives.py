# Copyright 2026 The ssgd_optax Authors. Licensed under the Apache License 2.0.
"""Gradient distances: invariances that make SSGD transparent to cosine attacks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ssgd_optax
from ssgd_optax import attacks


def _tree(key):
  k = jax.random.split(key, 4)
  return {'conv': {'kernel': jax.random.normal(k[0], (3, 3, 1, 4)),
                   'bias': jax.random.normal(k[1], (4,))},
          'head': {'kernel': jax.random.normal(k[2], (16, 5)),
                   'bias': jax.random.normal(k[3], (5,))}}


def test_global_cosine_invariant_to_global_rescaling():
  a, b = _tree(jax.random.key(0)), _tree(jax.random.key(1))
  d = attacks.cosine_distance(a, b)
  scaled = jax.tree_util.tree_map(lambda v: 37.5 * v, b)
  np.testing.assert_allclose(attacks.cosine_distance(a, scaled), d, rtol=1e-5)
  # ...and to the SSGD global unit normalisation itself.
  u, _ = ssgd_optax.unit_normalize('global').update(b, None)
  np.testing.assert_allclose(attacks.cosine_distance(a, u), d, rtol=1e-5)
  # But not to per-layer rescaling: the test can fail.
  per_layer = {'conv': jax.tree_util.tree_map(lambda v: 10 * v, b['conv']), 'head': b['head']}
  assert abs(float(attacks.cosine_distance(a, per_layer)) - float(d)) > 1e-3


@pytest.mark.parametrize('scope', ['per_layer', 'per_leaf'])
def test_grouped_cosine_invariant_to_group_rescaling(scope):
  a, b = _tree(jax.random.key(2)), _tree(jax.random.key(3))
  d = attacks.cosine_distance(a, b, scope)
  factors = {'conv': {'kernel': 3.0, 'bias': 3.0 if scope == 'per_layer' else 0.01},
             'head': {'kernel': 250.0, 'bias': 250.0 if scope == 'per_layer' else 7.0}}
  scaled = jax.tree_util.tree_map(lambda v, c: c * v, b, factors)
  np.testing.assert_allclose(attacks.cosine_distance(a, scaled, scope), d, rtol=1e-5)
  u, _ = ssgd_optax.unit_normalize(scope).update(b, None)
  np.testing.assert_allclose(attacks.cosine_distance(a, u, scope), d, rtol=1e-5)


def test_cosine_values_and_zero_gradient():
  a = {'w': jnp.array([1.0, 0.0])}
  assert float(attacks.cosine_distance(a, {'w': jnp.array([0.0, 2.0])})) == pytest.approx(1.0)
  assert float(attacks.cosine_distance(a, {'w': jnp.array([-1.0, 0.0])})) == pytest.approx(2.0)
  zero = {'w': jnp.zeros(2)}
  value, grad = jax.value_and_grad(attacks.cosine_distance)(zero, a)
  assert float(value) == pytest.approx(1.0)
  assert np.all(np.isfinite(grad['w']))


def test_l2_distance_and_none_leaves():
  a = {'w': jnp.array([1.0, 2.0]), 'skip': None}
  b = {'w': jnp.array([1.0, 0.0]), 'skip': None}
  assert float(attacks.l2_distance(a, b)) == pytest.approx(4.0)
  assert float(attacks.gradient_distance(a, b, 'cosine')) > 0


def test_distances_reject_mismatched_trees():
  with pytest.raises(ValueError, match='structure'):
    attacks.l2_distance({'w': jnp.ones(2)}, {'v': jnp.ones(2)})
  with pytest.raises(ValueError, match='shape'):
    attacks.cosine_distance({'w': jnp.ones(2)}, {'w': jnp.ones(3)})
  with pytest.raises(ValueError, match='distance must be one of'):
    attacks.gradient_distance({'w': jnp.ones(2)}, {'w': jnp.ones(2)}, 'l1')
  with pytest.raises(ValueError, match='scope'):
    attacks.cosine_distance({'w': jnp.ones(2)}, {'w': jnp.ones(2)}, 'per_tensor')


def test_total_variation():
  x = jnp.zeros((1, 3, 3, 1)).at[0, 1, 1, 0].set(1.0)
  # 2 of 6 vertical and 2 of 6 horizontal differences are 1.
  assert float(attacks.total_variation(x)) == pytest.approx(4 / 6)
  with pytest.raises(ValueError, match='images'):
    attacks.total_variation(jnp.zeros((3, 3)))
