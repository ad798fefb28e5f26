# Copyright 2026 The ssgd_optax Authors. Licensed under the Apache License 2.0.
"""The threat-model helper and the defence registry."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import ssgd_optax
from ssgd_optax import attacks


def _model():
  params = {'fc': {'kernel': jax.random.normal(jax.random.key(0), (6, 3)), 'bias': jnp.zeros(3)}}

  def apply_fn(p, x):
    return x.reshape(len(x), -1) @ p['fc']['kernel'] + p['fc']['bias']
  return apply_fn, params


def test_observe_applies_the_defence_to_the_batch_gradient():
  f, p = _model()
  x = jax.random.uniform(jax.random.key(1), (2, 3, 2))
  y = jnp.array([0, 2])
  raw = attacks.observe(f, p, x, y)
  g = attacks.batch_gradient(f, p, x, y)
  np.testing.assert_allclose(raw.update['fc']['kernel'], g['fc']['kernel'], rtol=1e-6)
  obs = attacks.observe(f, p, x, y, ssgd_optax.unit_normalize('per_leaf'), reveal_labels=True)
  for leaf in jax.tree_util.tree_leaves(obs.update):
    assert float(jnp.linalg.norm(leaf)) == pytest.approx(1.0, rel=1e-5)
  assert obs.labels.tolist() == [0, 2] and obs.num_examples == 2
  assert obs.input_shape == (3, 2) and obs.num_classes == 3


def test_defence_state_is_threaded_for_fresh_noise():
  f, p = _model()
  x, y = jnp.ones((1, 3, 2)), jnp.array([1])
  d = attacks.make_defence('noise_1e-1', jax.random.key(0))
  obs1, state = attacks.observe(f, p, x, y, d, return_state=True)
  obs2, _ = attacks.observe(f, p, x, y, d, defence_state=state, return_state=True)
  a, b = obs1.update['fc']['kernel'], obs2.update['fc']['kernel']
  assert not np.allclose(a, b)
  # The noise has the registered scale.
  g = attacks.batch_gradient(f, p, x, y)['fc']['kernel']
  assert 0.02 < float(jnp.std(a - g)) < 0.3


@pytest.mark.parametrize('name', list(attacks.available_defences()))
def test_every_registered_defence_yields_an_update_shaped_like_params(name):
  f, p = _model()
  x = jax.random.uniform(jax.random.key(2), (2, 3, 2))
  d = attacks.make_defence(name, jax.random.key(3), 2)
  assert d.name == name
  u = attacks.shared_update(f, p, x, jnp.array([0, 1]), d)
  assert jax.tree_util.tree_structure(u) == jax.tree_util.tree_structure(p)
  assert all(np.all(np.isfinite(v)) for v in jax.tree_util.tree_leaves(u))


def test_pruning_keeps_the_largest_entries_per_tensor():
  g = {'w': jnp.array([0.1, -5.0, 0.2, 3.0]), 'b': jnp.array([1.0, -2.0])}
  u, _ = attacks.prune(0.5).update(g, attacks.prune(0.5).init(g))
  assert u['w'].tolist() == [0.0, -5.0, 0.0, 3.0]
  assert u['b'].tolist() == [0.0, -2.0]


def test_registry_validation():
  with pytest.raises(ValueError, match='unknown defence'):
    attacks.make_defence('nope', jax.random.key(0))
  with pytest.raises(ValueError, match='already registered'):
    attacks.register_defence('none', lambda k, b: attacks.Defence(optax.identity()))
  attacks.register_defence('bad', lambda k, b: optax.identity())
  try:
    with pytest.raises(TypeError, match='not a Defence'):
      attacks.make_defence('bad', jax.random.key(0))
  finally:
    attacks.unregister_defence('bad')
  with pytest.raises(TypeError, match='defence must be'):
    attacks.shared_update(*_model(), jnp.ones((1, 3, 2)), jnp.array([0]), defence='ssgd')
  with pytest.raises(ValueError, match='bounds'):
    attacks.observe(*_model(), jnp.ones((1, 3, 2)), jnp.array([0]), bounds=(1, 0))
