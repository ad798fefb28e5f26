# Copyright 2026 The ssgd_optax Authors. Licensed under the Apache License 2.0.
"""The NNX-taking DP functions under jax.jit / jax.grad with the model captured (ssgd_optax._nnx).

``nnx.value_and_grad`` of a model captured from an enclosing ``jax.jit``
raised flax's "Cannot extract graph node from different trace level"; every
model-taking DP function now splits the model and merges it inside, so the
captured form gives the eager result. A model whose forward pass changes its
state (``nnx.Dropout``) gets a ``ValueError`` naming the form to use instead
of a raw flax error.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from ssgd_optax import per_example
from ssgd_optax import privacy


def _loss(m, x, y):
  return optax.softmax_cross_entropy_with_integer_labels(m(x), y)


def _batch():
  x = jax.random.normal(jax.random.key(0), (5, 3))
  return x, jnp.array([0, 1, 0, 1, 1])


# Each entry: (name, model factory, f(model, x, y) -> (scalar, gradient tree)).
# The functions that already split the model are slow-marked (~8-13 s each at load 5: four
# compilations); backprop_clip_grad_sum, the one that raised, runs by default.
_SLOW = pytest.mark.slow
CASES = [
    pytest.param('backprop_clip_grad_sum',
                 lambda: privacy.ClippedLinear(3, 2, input_bound=1.0, grad_bound=0.1,
                                               rngs=nnx.Rngs(0)),
                 lambda m, x, y: privacy.backprop_clip_grad_sum(_loss, m, x, y),
                 id='backprop_clip_grad_sum'),
    pytest.param('dpsgd_grad_sum', lambda: nnx.Linear(3, 2, rngs=nnx.Rngs(0)),
                 lambda m, x, y: privacy.dpsgd_grad_sum(_loss, m, x, y, clip_norm=0.5),
                 id='dpsgd_grad_sum', marks=_SLOW),
    pytest.param('ghost_grad_sum', lambda: nnx.Linear(3, 2, rngs=nnx.Rngs(0)),
                 lambda m, x, y: privacy.ghost_grad_sum(_loss, m, x, y, clip_norm=0.5)[:2],
                 id='ghost_grad_sum', marks=_SLOW),
    pytest.param('ghost_norms', lambda: nnx.Linear(3, 2, rngs=nnx.Rngs(0)),
                 lambda m, x, y: (jnp.sum(privacy.ghost_norms(_loss, m, x, y).norms), {}),
                 id='ghost_norms', marks=_SLOW),
    pytest.param('nnx_per_example_grads', lambda: nnx.Linear(3, 2, rngs=nnx.Rngs(0)),
                 lambda m, x, y: (jnp.zeros(()), per_example.nnx_per_example_grads(
                     lambda mm, xx, yy: _loss(mm, xx, yy).sum(), m, x, y)),
                 id='nnx_per_example_grads', marks=_SLOW),
]


def _leaves(tree):
  return [np.asarray(v) for v in jax.tree.leaves(tree)]


@pytest.mark.parametrize('name, make, f', CASES)
def test_captured_model_under_jax_jit_and_grad_matches_eager(name, make, f):
  # Reference: nnx.jit with the model as an argument (the form that always worked).
  model = make()
  x, y = _batch()
  value, grads = nnx.jit(f)(model, x, y)
  # jax.jit with the model captured from this scope (raised "different trace level" before).
  jv, jg = jax.jit(lambda x, y: f(model, x, y))(x, y)
  np.testing.assert_allclose(jv, value, rtol=1e-6, err_msg=name)
  for a, b in zip(_leaves(jg), _leaves(grads)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7, err_msg=name)
  # jax.grad of the returned scalar with respect to the inputs, model captured, against
  # nnx.grad with the model passed as an argument (each compiled once).
  gx = jax.jit(jax.grad(lambda x: f(model, x, y)[0]))(x)
  nx = nnx.jit(nnx.grad(lambda m, x: f(m, x, y)[0], argnums=1))(model, x)
  np.testing.assert_allclose(gx, nx, rtol=1e-5, atol=1e-7, err_msg=name)


class _DropoutModel(nnx.Module):

  def __init__(self, rngs):
    self.fc = privacy.ClippedLinear(3, 2, input_bound=1.0, grad_bound=0.1, rngs=rngs)
    self.drop = nnx.Dropout(0.5, rngs=rngs)

  def __call__(self, x):
    return self.drop(self.fc(x))


def _count(model):
  return int(model.drop.rngs.count[...])


def test_backprop_clipping_writes_a_state_change_back_like_nnx_grad():
  # The dropout's RNG count advances on every call (as with nnx.value_and_grad), out of
  # nnx.jit with the model as an argument (and eagerly: the same nnx.update), so
  # successive calls draw new masks.
  model = _DropoutModel(nnx.Rngs(0))
  x, y = _batch()
  before = _count(model)
  step = nnx.jit(lambda m, x, y: privacy.backprop_clip_grad_sum(_loss, m, x, y))
  _, g1 = step(model, x, y)
  _, g2 = step(model, x, y)
  assert _count(model) == before + 2
  assert not np.allclose(g1['fc']['layer']['kernel'][...], g2['fc']['layer']['kernel'][...])


def test_a_state_change_of_a_captured_model_names_the_forms_to_use():
  model = _DropoutModel(nnx.Rngs(0))
  x, y = _batch()
  with pytest.raises(ValueError, match=r'backprop_clip_grad_sum.*captured.*nnx\.jit.*nnx\.split'):
    jax.jit(lambda x, y: privacy.backprop_clip_grad_sum(_loss, model, x, y))(x, y)


@pytest.mark.parametrize('name, f', [
    pytest.param('nnx_per_example_grads', lambda m, x, y: per_example.nnx_per_example_grads(
        lambda mm, xx, yy: _loss(mm, xx, yy).sum(), m, x, y), marks=_SLOW),
    ('ghost_norms', lambda m, x, y: privacy.ghost_norms(_loss, m, x, y)),
    pytest.param('ghost_grad_sum', lambda m, x, y: privacy.ghost_grad_sum(
        _loss, m, x, y, clip_norm=1.0), marks=_SLOW),
])
def test_per_example_paths_refuse_a_stateful_model_by_name(name, f):
  model = _DropoutModel(nnx.Rngs(0))
  x, y = _batch()
  with pytest.raises(ValueError, match=f'{name}.*deterministic'):
    f(model, x, y)
  model.eval()   # the documented remedy (compiled: one program instead of op-by-op)
  nnx.jit(f)(model, x, y)
