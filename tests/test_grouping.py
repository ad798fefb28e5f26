# Copyright 2026 The ssgd_optax Authors. Licensed under the Apache License 2.0.
"""Tests of ssgd_optax._grouping: how the leaves of an update form groups (scopes)."""

import flax.linen as linen
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import ssgd_optax
from ssgd_optax import _grouping as grouping


def _tree(key=0, dtype=jnp.float32):
  k = jax.random.split(jax.random.key(key), 4)
  return {
      'dense': {'kernel': jax.random.normal(k[0], (5, 3), dtype),
                'bias': jax.random.normal(k[1], (3,), dtype)},
      'out': {'kernel': jax.random.normal(k[2], (3, 2), dtype),
              'bias': jax.random.normal(k[3], (2,), dtype)},
  }


def _apply(tx, tree):
  return tx.update(tree, tx.init(tree))[0]


def _reference(tree, scope):
  """float64 NumPy unit normalisation per group of a callable ``scope(path, leaf)``."""
  paths_leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  keys = [scope(p, x) for p, x in paths_leaves]
  norms = {}
  for k, (_, x) in zip(keys, paths_leaves):
    norms[k] = norms.get(k, 0.0) + float(np.sum(np.square(np.asarray(x, np.float64))))
  out = [np.asarray(x, np.float64) / np.sqrt(norms[k]) for k, (_, x) in zip(keys, paths_leaves)]
  return jax.tree_util.tree_unflatten(jax.tree.structure(tree), out), norms


def test_custom_scope_callable():
  tree = _tree()
  by_name = lambda path, leaf: grouping.layer_path(path) and str(path[-1])
  want, _ = _reference(tree, by_name)
  got = _apply(ssgd_optax.unit_normalize(by_name), tree)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), got, want)
  # All kernels form one group, all biases another.
  kernels = {k: v['kernel'] for k, v in got.items()}
  assert float(optax.tree.norm(kernels)) == pytest.approx(1.0, abs=1e-6)


def test_custom_scope_must_return_hashable():
  tx = ssgd_optax.unit_normalize(lambda path, leaf: [1])
  with pytest.raises(TypeError, match='hashable'):
    _apply(tx, _tree())


def test_per_layer_on_nnx_state_and_linen_params():
  model = nnx.Sequential(nnx.Linear(4, 3, rngs=nnx.Rngs(0)), nnx.Linear(3, 2, rngs=nnx.Rngs(1)))
  state = nnx.state(model, nnx.Param)
  g = grouping.resolve_groups(state, 'per_layer')
  assert g.num_groups == 2 and g.group_of_leaf == (0, 0, 1, 1)
  out = _apply(ssgd_optax.unit_normalize('per_layer'), state)
  assert isinstance(out, nnx.State)
  for layer in out['layers'].values():
    assert float(optax.tree.norm(layer)) == pytest.approx(1.0, abs=1e-6)

  class MLP(linen.Module):
    @linen.compact
    def __call__(self, x):
      return linen.Dense(2)(linen.relu(linen.Dense(3)(x)))

  params = MLP().init(jax.random.key(0), jnp.ones((1, 4)))
  g = grouping.resolve_groups(params, 'per_layer')
  assert g.num_groups == 2 and len(g.leaves) == 4
  out = _apply(ssgd_optax.unit_normalize('per_layer'), params)
  for name in ('Dense_0', 'Dense_1'):
    assert float(optax.tree.norm(out['params'][name])) == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize('bad_scope,error,match', [
    ('global_', ValueError, "scope must be one of 'global', 'per_leaf', 'per_layer'"),
    ('', ValueError, 'scope must be one of'),
    (3, TypeError, 'scope must be one of .* or a callable'),
    (None, TypeError, 'callable'),
])
def test_bad_scope(bad_scope, error, match):
  with pytest.raises(error, match=match):
    ssgd_optax.unit_normalize(bad_scope)
  with pytest.raises(error, match=match):
    ssgd_optax.ssgd(0.1, scope=bad_scope)
  with pytest.raises(error, match=match):
    ssgd_optax.group_norms({'a': jnp.ones(1)}, bad_scope)
