# Copyright 2026 The ssgd_optax Authors. Licensed under the Apache License 2.0.
"""Tests of unit_normalize, ssgd and group_norms: numerics, validation, interop."""

import functools

import hypothesis
import hypothesis.extra.numpy as hnp
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import ssgd_optax
from ssgd_optax import _grouping as grouping
from ssgd_optax import _normalize as normalize
from ssgd_optax import testing


SCOPES = ('global', 'per_leaf', 'per_layer')


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


def _reference(tree, scope, eps=0.0):
  """A plain NumPy (float64) implementation of every scope."""
  paths_leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  if scope == 'global':
    keys = ['g'] * len(paths_leaves)
  elif scope == 'per_leaf':
    keys = [jax.tree_util.keystr(p) for p, _ in paths_leaves]
  elif scope == 'per_layer':
    keys = [jax.tree_util.keystr(grouping.layer_path(p)) for p, _ in paths_leaves]
  else:
    keys = [scope(p, x) for p, x in paths_leaves]
  norms = {}
  for k, (_, x) in zip(keys, paths_leaves):
    norms[k] = norms.get(k, 0.0) + float(np.sum(np.square(np.asarray(x, np.float64))))
  out = []
  for k, (_, x) in zip(keys, paths_leaves):
    n = np.sqrt(norms[k])
    scale = 0.0 if n == 0 else 1.0 / max(n, eps)
    out.append(np.asarray(x, np.float64) * scale)
  treedef = jax.tree.structure(tree)
  return (jax.tree_util.tree_unflatten(treedef, out),
          jax.tree_util.tree_unflatten(treedef, [np.sqrt(norms[k]) for k in keys]))


# ----------------------------------------------------------------------------
# Grouping and exact values


@pytest.mark.parametrize('scope', SCOPES)
def test_matches_numpy_reference(scope):
  tree = _tree()
  want, _ = _reference(tree, scope)
  got = jax.jit(lambda t: _apply(ssgd_optax.unit_normalize(scope), t))(tree)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
               got, want)


def test_scopes_give_unit_norm_per_group():
  tree = _tree()
  out = _apply(ssgd_optax.unit_normalize('global'), tree)
  assert float(optax.tree.norm(out)) == pytest.approx(1.0, abs=1e-6)
  out = _apply(ssgd_optax.unit_normalize('per_leaf'), tree)
  for leaf in jax.tree.leaves(out):
    assert float(jnp.linalg.norm(leaf)) == pytest.approx(1.0, abs=1e-6)
  out = _apply(ssgd_optax.unit_normalize('per_layer'), tree)
  for layer in out.values():
    assert float(optax.tree.norm(layer)) == pytest.approx(1.0, abs=1e-6)
  # per_layer differs from per_leaf: kernel and bias share one norm.
  assert float(jnp.linalg.norm(out['dense']['kernel'])) < 1.0


@hypothesis.settings(max_examples=15, deadline=None)
@hypothesis.given(
    shapes=st.lists(hnp.array_shapes(min_dims=0, max_dims=3, max_side=4), min_size=1, max_size=5),
    scope=st.sampled_from(SCOPES),
    scale=st.sampled_from([1e-3, 1.0, 1e3]),
    seed=st.integers(0, 2**16),
)
def test_property_matches_reference(shapes, scope, scale, seed):
  rng = np.random.default_rng(seed)
  # Two leaves per layer, so that per_layer has groups of several leaves.
  tree = {}
  for i, s in enumerate(shapes):
    tree.setdefault(f'layer{i // 2}', {})[f'p{i}'] = jnp.asarray(rng.normal(size=s) * scale,
                                                                 jnp.float32)
  want, want_norms = _reference(tree, scope)
  got = _apply(ssgd_optax.unit_normalize(scope), tree)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-6, atol=1e-7), got, want)
  got_norms = ssgd_optax.group_norms(tree, scope)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-6), got_norms, want_norms)


def test_group_norms_values_and_structure():
  tree = {'a': jnp.array([3., 0.]), 'b': {'c': jnp.array([4.]), 'd': None}}
  n = ssgd_optax.group_norms(tree)
  assert jax.tree.structure(n) == jax.tree.structure(tree)
  assert float(n['a']) == float(n['b']['c']) == 5.0
  n = ssgd_optax.group_norms(tree, 'per_leaf')
  assert (float(n['a']), float(n['b']['c'])) == (3.0, 4.0)
  assert n['a'].dtype == jnp.float32


# ----------------------------------------------------------------------------
# Numerics


def test_mixed_precision_tree_keeps_dtypes_and_accumulates_in_f32():
  tree = {'a': jnp.full((300,), 100.0, jnp.float16),   # sum of squares 3e6 > f16 max
          'b': jnp.full((4,), 0.5, jnp.bfloat16),
          'c': jnp.full((4,), 0.5, jnp.float32)}
  n = ssgd_optax.group_norms(tree)
  assert n['a'].dtype == jnp.float32
  assert float(n['a']) == pytest.approx(np.sqrt(300 * 1e4 + 8 * 0.25), rel=1e-6)
  for scope in SCOPES:
    out = jax.jit(lambda t: _apply(ssgd_optax.unit_normalize(scope), t))(tree)
    assert {k: v.dtype for k, v in out.items()} == {k: v.dtype for k, v in tree.items()}
    assert all(bool(jnp.all(jnp.isfinite(v))) for v in out.values())
    total = optax.tree.norm(jax.tree.map(lambda x: x.astype(jnp.float32), out))
    if scope == 'global':
      assert float(total) == pytest.approx(1.0, rel=1e-2)


def test_bf16_million_elements_unit_norm():
  x = jax.random.normal(jax.random.key(1), (1000, 1000), jnp.bfloat16)
  out = jax.jit(lambda t: _apply(ssgd_optax.unit_normalize(), t))(x)
  assert out.dtype == jnp.bfloat16
  assert float(jnp.linalg.norm(out.astype(jnp.float32))) == pytest.approx(1.0, rel=1e-2)


def test_float64_accumulates_in_float64():
  with jax.enable_x64(True):
    tree = {'a': jnp.full((3,), 1e200, jnp.float64), 'b': jnp.array([1e-3], jnp.float32)}
    n = ssgd_optax.group_norms(tree, 'per_leaf')
    assert n['a'].dtype == jnp.float64 and n['b'].dtype == jnp.float32
    out = _apply(ssgd_optax.unit_normalize(), tree)
    assert out['a'].dtype == jnp.float64
    assert float(jnp.linalg.norm(out['a'])) == pytest.approx(1.0, rel=1e-12)


@pytest.mark.parametrize('scope', SCOPES)
@pytest.mark.parametrize('magnitude', [1e30, 1e-30, 1e-37, 3e38])
def test_no_overflow_or_underflow(scope, magnitude):
  x = jnp.linspace(0.5, 1.0, 100, dtype=jnp.float32) * jnp.float32(magnitude)
  tree = {'l1': {'w': x, 'b': x[:3]}, 'l2': {'w': x[::-1]}}
  out = jax.jit(lambda t: _apply(ssgd_optax.unit_normalize(scope), t))(tree)
  assert all(bool(jnp.all(jnp.isfinite(v))) for v in jax.tree.leaves(out))
  norms = ssgd_optax.group_norms(out, scope)
  for n in jax.tree.leaves(norms):
    assert float(n) == pytest.approx(1.0, rel=1e-5)
  raw = float(ssgd_optax.group_norms(tree, 'per_leaf')['l2']['w'])
  true = float(np.linalg.norm(np.asarray(x, np.float64)))
  if true < float(jnp.finfo(jnp.float32).max):
    assert raw == pytest.approx(true, rel=1e-5)
  else:  # documented: a norm beyond float32's range is reported as inf
    assert raw == float('inf')


def test_subnormal_input_is_unit_or_flushed_to_zero():
  # XLA flushes subnormals to zero on most backends; either way, never NaN.
  x = jnp.full((10,), 1e-42, jnp.float32)
  out = jax.jit(lambda t: _apply(ssgd_optax.unit_normalize(), t))(x)
  n = float(jnp.linalg.norm(out))
  assert n == pytest.approx(1.0, rel=1e-5) or bool(jnp.all(out == 0))


def test_fp16_overflowing_sum_of_squares():
  x = jnp.full((1000,), 60000.0, jnp.float16)
  out = _apply(ssgd_optax.unit_normalize(), x)
  assert bool(jnp.all(jnp.isfinite(out)))
  assert float(jnp.linalg.norm(out.astype(jnp.float32))) == pytest.approx(1.0, rel=1e-3)


@pytest.mark.parametrize('eps', [0.0, 1e-3])
def test_zero_group_gives_exact_zeros(eps):
  tree = {'zero': {'w': jnp.zeros((3,))}, 'one': {'w': jnp.array([0., 2.])}}
  for scope in ('per_leaf', 'per_layer'):
    out = _apply(ssgd_optax.unit_normalize(scope, eps=eps), tree)
    np.testing.assert_array_equal(out['zero']['w'], np.zeros(3))
    np.testing.assert_allclose(out['one']['w'], [0., 1.])
  out = _apply(ssgd_optax.unit_normalize(eps=eps), jax.tree.map(jnp.zeros_like, tree))
  assert all(bool(jnp.all(v == 0)) for v in jax.tree.leaves(out))


def test_eps_rule():
  x = jnp.array([3e-4, 4e-4])  # norm 5e-4
  out = _apply(ssgd_optax.unit_normalize(eps=1e-3), x)
  np.testing.assert_allclose(out, x / 1e-3, rtol=1e-6)
  out = _apply(ssgd_optax.unit_normalize(eps=1e-4), x)
  assert float(jnp.linalg.norm(out)) == pytest.approx(1.0, rel=1e-6)


@pytest.mark.parametrize('bad', [jnp.nan, jnp.inf, -jnp.inf])
def test_nan_or_inf_poisons_its_group_only(bad):
  tree = {'a': {'w': jnp.array([1.0, bad])}, 'b': {'w': jnp.array([3.0, 4.0])}}
  out = _apply(ssgd_optax.unit_normalize('per_layer'), tree)
  assert bool(jnp.all(jnp.isnan(out['a']['w'])))
  np.testing.assert_allclose(out['b']['w'], [0.6, 0.8], rtol=1e-6)
  out = _apply(ssgd_optax.unit_normalize('global'), tree)
  assert all(bool(jnp.all(jnp.isnan(v))) for v in jax.tree.leaves(out))


def test_apply_if_finite_notices_nan():
  tx = optax.apply_if_finite(optax.chain(ssgd_optax.unit_normalize(), optax.sgd(1.0)), 3)
  params = {'w': jnp.ones(2)}
  state = tx.init(params)
  u, state = tx.update({'w': jnp.array([jnp.nan, 1.0])}, state, params)
  np.testing.assert_array_equal(u['w'], [0.0, 0.0])
  assert int(state.notfinite_count) == 1
  u, state = tx.update({'w': jnp.array([3.0, 4.0])}, state, params)
  np.testing.assert_allclose(u['w'], [-0.6, -0.8], rtol=1e-6)


@pytest.mark.parametrize('scope', SCOPES)
def test_gradient_through_transform(scope):
  def f(tree):
    out = _apply(ssgd_optax.unit_normalize(scope), tree)
    return sum(jnp.sum(jnp.sin(3 * v)) for v in jax.tree.leaves(out))

  tree = _tree()
  # Reverse mode against a central finite difference along a random direction.
  direction = _tree(11)
  h = 1e-3
  plus = jax.tree.map(lambda x, d: x + h * d, tree, direction)
  minus = jax.tree.map(lambda x, d: x - h * d, tree, direction)
  numeric = (f(plus) - f(minus)) / (2 * h)
  analytic = sum(jnp.vdot(a, b) for a, b in zip(jax.tree.leaves(jax.grad(f)(tree)),
                                                 jax.tree.leaves(direction)))
  assert float(analytic) == pytest.approx(float(numeric), rel=2e-2, abs=2e-3)
  zeros = jax.tree.map(jnp.zeros_like, tree)
  for t in (zeros, {'a': jnp.zeros(3), 'b': jnp.full(2, 1e-30)}):
    g = jax.grad(f)(t)
    assert all(bool(jnp.all(jnp.isfinite(v))) for v in jax.tree.leaves(g))


def test_none_masked_node_and_empty_trees():
  tree = {'a': jnp.array([3., 4.]), 'n': None, 'm': optax.MaskedNode(), 'e': {}}
  out = _apply(ssgd_optax.unit_normalize(), tree)
  assert out['n'] is None and isinstance(out['m'], optax.MaskedNode) and out['e'] == {}
  np.testing.assert_allclose(out['a'], [0.6, 0.8])
  for empty in ({}, (), None, [None]):
    assert jax.jit(lambda t: _apply(ssgd_optax.unit_normalize('per_layer'), t))(empty) == empty
    assert ssgd_optax.group_norms(empty) == empty


def test_integer_and_complex_leaves_raise():
  with pytest.raises(TypeError, match=r"\['step'\].*int32"):
    _apply(ssgd_optax.unit_normalize(), {'w': jnp.ones(2), 'step': jnp.array(3, jnp.int32)})
  with pytest.raises(TypeError, match='complex'):
    ssgd_optax.group_norms({'w': jnp.ones(2, jnp.complex64)})


# ----------------------------------------------------------------------------
# Validation


@pytest.mark.parametrize('eps,error', [(-1e-3, ValueError), (float('nan'), ValueError),
                                       (float('inf'), ValueError), ('0', TypeError),
                                       (True, TypeError)])
def test_bad_eps(eps, error):
  with pytest.raises(error, match='eps'):
    ssgd_optax.unit_normalize(eps=eps)


def test_bad_ssgd_arguments():
  with pytest.raises(TypeError, match='learning_rate'):
    ssgd_optax.ssgd('fast')
  with pytest.raises(ValueError, match='learning_rate'):
    ssgd_optax.ssgd(float('inf'))
  with pytest.raises(ValueError, match='momentum'):
    ssgd_optax.ssgd(0.1, momentum=-0.5)
  with pytest.raises(ValueError, match='nesterov=True requires momentum'):
    ssgd_optax.ssgd(0.1, nesterov=True)
  with pytest.raises(TypeError, match='nesterov'):
    ssgd_optax.ssgd(0.1, momentum=0.9, nesterov='yes')
  with pytest.raises(TypeError, match='axis_name'):
    ssgd_optax.unit_normalize(axis_name=['data'])


# ----------------------------------------------------------------------------
# Interoperability


def _quadratic_problem():
  target = _tree(7)
  params = jax.tree.map(jnp.zeros_like, target)
  loss = lambda p: sum(jnp.sum((a - b) ** 2) for a, b in zip(jax.tree.leaves(p),
                                                             jax.tree.leaves(target)))
  return params, loss


@pytest.mark.parametrize('make_tx', [
    lambda: optax.chain(ssgd_optax.unit_normalize(), optax.sgd(0.1)),
    lambda: optax.chain(ssgd_optax.unit_normalize('per_leaf'), optax.adam(0.05)),
    lambda: optax.chain(ssgd_optax.unit_normalize('per_layer'), optax.trace(0.9), optax.scale(-0.02)),
    lambda: optax.chain(optax.scale_by_adam(), ssgd_optax.unit_normalize(), optax.scale(-0.05)),
    lambda: optax.chain(optax.sgd(1.0), ssgd_optax.unit_normalize('per_layer'), optax.scale(0.05)),
])
def test_chain_trains(make_tx):
  params, loss = _quadratic_problem()
  tx = make_tx()
  state = tx.init(params)

  @jax.jit
  def step(params, state):
    g = jax.grad(loss)(params)
    u, state = tx.update(g, state, params)
    return optax.apply_updates(params, u), state

  start = loss(params)
  for _ in range(100):
    params, state = step(params, state)
  assert float(loss(params)) < 0.05 * float(start)


def test_chain_order_matters():
  g = {'w': jnp.array([3.0, 4.0])}
  tx = optax.chain(ssgd_optax.unit_normalize(), optax.scale(2.0))
  np.testing.assert_allclose(_apply(tx, g)['w'], [1.2, 1.6], rtol=1e-6)
  tx = optax.chain(optax.scale(2.0), ssgd_optax.unit_normalize())
  np.testing.assert_allclose(_apply(tx, g)['w'], [0.6, 0.8], rtol=1e-6)


def test_ssgd_matches_manual_chain_with_momentum_and_schedule():
  params, loss = _quadratic_problem()
  schedule = optax.cosine_decay_schedule(0.1, 50)
  opt = ssgd_optax.ssgd(schedule, scope='per_layer', momentum=0.9, nesterov=True)
  manual = optax.chain(ssgd_optax.unit_normalize('per_layer'), optax.trace(0.9, nesterov=True),
                       optax.scale_by_learning_rate(schedule))
  s1, s2 = opt.init(params), manual.init(params)
  p1 = p2 = params
  for _ in range(5):
    u1, s1 = opt.update(jax.grad(loss)(p1), s1, p1)
    u2, s2 = manual.update(jax.grad(loss)(p2), s2, p2)
    p1, p2 = optax.apply_updates(p1, u1), optax.apply_updates(p2, u2)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), p1, p2)


def test_ssgd_step_length_is_learning_rate():
  params, loss = _quadratic_problem()
  opt = ssgd_optax.ssgd(0.3)
  u, _ = opt.update(jax.grad(loss)(params), opt.init(params), params)
  assert float(optax.tree.norm(u)) == pytest.approx(0.3, rel=1e-6)


def test_inject_hyperparams_under_jit_with_schedule():
  params, loss = _quadratic_problem()
  schedule = optax.linear_schedule(0.2, 0.0, 10)
  opt = optax.inject_hyperparams(ssgd_optax.ssgd)(learning_rate=schedule, momentum=0.5, eps=1e-6)
  state = opt.init(params)

  @jax.jit
  def step(params, state):
    u, state = opt.update(jax.grad(loss)(params), state, params)
    return optax.apply_updates(params, u), state, u

  lengths = []
  for _ in range(3):
    params, state, u = step(params, state)
    lengths.append(float(optax.tree.norm(u)))
  # Momentum 0.5 on unit-norm updates: lr_t * |u_t + 0.5 u_{t-1} + ...|.
  assert lengths[0] == pytest.approx(0.2, rel=1e-5)
  assert float(state.hyperparams['learning_rate']) == pytest.approx(0.2 * 8 / 10, rel=1e-5)  # value of the last step
  # The scope stays static, the numeric hyper-parameters traced.
  opt = optax.inject_hyperparams(ssgd_optax.unit_normalize, static_args=('scope',))(
      scope='per_leaf', eps=0.5)
  out, _ = jax.jit(opt.update)({'a': jnp.array([0.1, 0.0])}, opt.init({'a': jnp.zeros(2)}))
  np.testing.assert_allclose(out['a'], [0.2, 0.0], rtol=1e-6)


def test_masked_normalises_selected_leaves_only():
  tree = {'w': jnp.array([3.0, 4.0]), 'b': jnp.array([100.0])}
  tx = optax.masked(ssgd_optax.unit_normalize(), {'w': True, 'b': False})
  out = _apply(tx, tree)
  np.testing.assert_allclose(out['w'], [0.6, 0.8], rtol=1e-6)
  np.testing.assert_array_equal(out['b'], [100.0])


def test_multisteps_normalises_accumulated_mean():
  tx = optax.MultiSteps(optax.chain(ssgd_optax.unit_normalize(), optax.scale(-1.0)), 2)
  params = {'w': jnp.zeros(2)}
  state = tx.init(params)
  u, state = tx.update({'w': jnp.array([1.0, 0.0])}, state, params)
  np.testing.assert_array_equal(u['w'], [0.0, 0.0])
  u, state = tx.update({'w': jnp.array([0.0, 1.0])}, state, params)
  np.testing.assert_allclose(u['w'], -np.array([1.0, 1.0]) / np.sqrt(2), rtol=1e-6)


def test_nnx_optimizer_trains_small_model():
  x = jax.random.normal(jax.random.key(0), (64, 4))
  y = (x[:, 0] > 0).astype(jnp.int32)
  model = nnx.Sequential(nnx.Linear(4, 16, rngs=nnx.Rngs(0)), nnx.relu,
                         nnx.Linear(16, 2, rngs=nnx.Rngs(1)))
  opt = nnx.Optimizer(model, ssgd_optax.ssgd(optax.exponential_decay(0.3, 10, 0.7),
                                             scope='per_layer', momentum=0.9), wrt=nnx.Param)

  def loss_fn(model):
    return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()

  @nnx.jit
  def step(model, opt):
    loss, grads = nnx.value_and_grad(loss_fn)(model)
    opt.update(model, grads)
    return loss

  first = float(step(model, opt))
  for _ in range(60):
    last = float(step(model, opt))
  assert last < 0.5 * first
  acc = float(jnp.mean(jnp.argmax(model(x), -1) == y))
  assert acc > 0.9


def test_jit_with_donated_buffers():
  tx = ssgd_optax.ssgd(0.1, scope='per_leaf', momentum=0.9)
  params = _tree()
  state = tx.init(params)

  @functools.partial(jax.jit, donate_argnums=(0, 1))
  def step(params, state, grads):
    u, state = tx.update(grads, state, params)
    return optax.apply_updates(params, u), state

  grads = _tree(3)
  want = jax.tree.map(lambda p, g: p - 0.1 * g / jnp.linalg.norm(g), params, grads)
  new_params, state = step(params, state, grads)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), new_params, want)


def test_vmap_over_batch_of_trees():
  batch = jax.vmap(_tree)(jnp.arange(4))
  out = jax.vmap(lambda t: _apply(ssgd_optax.unit_normalize('per_layer'), t))(batch)
  for i in range(4):
    single = _apply(ssgd_optax.unit_normalize('per_layer'), jax.tree.map(lambda x: x[i], batch))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a[i], b, rtol=1e-6), out, single)


@pytest.mark.parametrize('scope', SCOPES)
def test_axis_name_under_vmap_equals_unsharded(scope):
  tree = {'a': {'w': jax.random.normal(jax.random.key(0), (8, 6)), 'b': jnp.arange(8.0)},
          'c': {'w': jax.random.normal(jax.random.key(1), (8, 2))}}
  want = _apply(ssgd_optax.unit_normalize(scope), tree)
  # Every leaf is sharded into 4 row blocks along the vmapped axis 'model'.
  shards = jax.tree.map(lambda x: x.reshape(4, 2, *x.shape[1:]), tree)
  out = jax.vmap(lambda t: _apply(ssgd_optax.unit_normalize(scope, axis_name='model'), t),
                 axis_name='model')(shards)
  out = jax.tree.map(lambda x: x.reshape(8, *x.shape[2:]), out)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), out, want)
  # The overflow-rescue path also reduces over the axis.
  huge = jax.tree.map(lambda x: x * 1e30, shards)
  out = jax.vmap(lambda t: _apply(ssgd_optax.unit_normalize(scope, axis_name='model'), t),
                 axis_name='model')(huge)
  out = jax.tree.map(lambda x: x.reshape(8, *x.shape[2:]), out)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5), out, want)
  norms = jax.vmap(lambda t: ssgd_optax.group_norms(t, scope, axis_name='model'),
                   axis_name='model')(shards)
  want_norms = ssgd_optax.group_norms(tree, scope)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, jnp.full(4, b), rtol=1e-6),
               norms, want_norms)


def test_init_accepts_shape_dtype_structs():
  opt = ssgd_optax.ssgd(0.1, momentum=0.9)
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), _tree())
  state = jax.eval_shape(opt.init, abstract)
  assert jax.tree.structure(state) == jax.tree.structure(opt.init(_tree()))


@pytest.mark.devices(4)
@pytest.mark.parametrize('scope', SCOPES)
def test_shard_map_replicated_leaf_is_counted_once(scope):
  """A row-parallel layer: kernel sharded over 'model', bias replicated."""
  from jax.sharding import NamedSharding, PartitionSpec as P
  mesh = jax.make_mesh((4,), ('model',))
  tree = {'layer': {'kernel': jax.random.normal(jax.random.key(0), (8, 3)),
                    'bias': jnp.array([1.0, 2.0, 3.0])}}
  want = _apply(ssgd_optax.unit_normalize(scope), tree)
  want_norms = ssgd_optax.group_norms(tree, scope)
  specs = {'layer': {'kernel': P('model'), 'bias': P()}}
  placed = jax.tree.map(lambda x, s: jax.device_put(x, NamedSharding(mesh, s)), tree, specs)

  def local(t):
    out = _apply(ssgd_optax.unit_normalize(scope, axis_name='model'), t)
    return out, ssgd_optax.group_norms(t, scope, axis_name='model')

  out, norms = jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(specs,),
                                     out_specs=(specs, P())))(placed)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), out, want)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), norms, want_norms)


@pytest.mark.devices(4)
@pytest.mark.parametrize('scale', [1.0, 1e-30, 1e30])
@pytest.mark.parametrize('scope', ssgd_optax.SCOPES)
def test_shard_map_per_device_gradients_with_check_vma(scope, scale):
  """Privacy mode under shard_map(check_vma=True): each device's own (varying)
  gradient is normalised, also on the underflow/overflow rescue path."""
  from jax.sharding import NamedSharding, PartitionSpec as P
  mesh = jax.make_mesh((4,), ('data',))
  tree = {'layer': {'kernel': jax.random.normal(jax.random.key(0), (4, 5, 3)) * scale,
                    'bias': jax.random.normal(jax.random.key(1), (4, 3)) * scale}}
  want = jax.vmap(lambda t: _apply(ssgd_optax.unit_normalize(scope), t))(tree)
  placed = jax.device_put(tree, NamedSharding(mesh, P('data')))

  def local(t):
    t = jax.tree.map(lambda x: x[0], t)
    return jax.tree.map(lambda x: x[None], _apply(ssgd_optax.unit_normalize(scope), t))

  out = jax.jit(jax.shard_map(local, mesh=mesh, in_specs=P('data'), out_specs=P('data'),
                              check_vma=True))(placed)
  out = jax.tree.map(np.asarray, out)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), out, want)
  for d in range(4):
    norm = np.sqrt(sum(float(np.sum(np.square(x[d].astype(np.float64))))
                       for x in jax.tree.leaves(out)))
    expected = {'global': 1.0, 'per_leaf': np.sqrt(2.0), 'per_layer': 1.0}[scope]
    np.testing.assert_allclose(norm, expected, rtol=1e-5)


# ----------------------------------------------------------------------------
# The two forms of the norm (ssgd_optax._numerics.group_scales): "fused" (one
# branch-free pass, used on GPU/TPU) and "rescue" (plain sum + lax.cond, used
# on CPU). Both are checked here on the CPU.


@pytest.fixture(params=['fused', 'rescue'])
def method(request, monkeypatch):
  monkeypatch.setattr(normalize, '_METHOD', request.param)
  return request.param


def _edge_trees():
  x = jnp.linspace(0.5, 1.0, 7, dtype=jnp.float32)
  yield 'mixed magnitudes', {'a': {'w': x * 1e30, 'b': x * 1e-30}, 'c': {'w': x}}
  for m in (3e38, 1e25, 1e-25, 1e-37, 1e-44):
    yield f'x{m:g}', {'a': {'w': x * jnp.float32(m), 'b': x[:2] * jnp.float32(m)},
                       'c': {'w': x[::-1] * jnp.float32(m)}}
  yield 'zeros', {'a': {'w': jnp.zeros(3), 'b': jnp.zeros(2)}, 'c': {'w': x}}
  yield 'fp16 overflow', {'a': {'w': jnp.full((1000,), 60000.0, jnp.float16)},
                          'c': {'w': jnp.full((3,), 0.5, jnp.bfloat16)}}


@pytest.mark.parametrize('scope', SCOPES)
def test_both_forms_match_float64_reference(scope, method):
  for name, tree in _edge_trees():
    want, want_norms = _reference(tree, scope)
    got = jax.jit(lambda t: _apply(ssgd_optax.unit_normalize(scope), t))(tree)
    # Subnormal inputs may be flushed to zero: then the output is exact zeros.
    for g, w, t in zip(jax.tree.leaves(got), jax.tree.leaves(want), jax.tree.leaves(tree)):
      g = np.asarray(g, np.float64)
      rtol = 1e-5 if t.dtype == jnp.float32 else 1e-2
      if name == 'x1e-44' and not np.any(g):
        continue
      np.testing.assert_allclose(g, w, rtol=rtol, atol=1e-7, err_msg=f'{name} {method}')
    norms = ssgd_optax.group_norms(tree, scope)
    for n, w in zip(jax.tree.leaves(norms), jax.tree.leaves(want_norms)):
      if name == 'x1e-44' or w > float(jnp.finfo(jnp.float32).max):
        continue
      np.testing.assert_allclose(float(n), w, rtol=1e-5, err_msg=f'{name} {method}')


@pytest.mark.parametrize('bad', [jnp.nan, jnp.inf, -jnp.inf])
def test_both_forms_poison_the_group_with_nan(bad, method):
  tree = {'a': {'w': jnp.array([1e30, bad]), 'b': jnp.array([1e-30])},
          'c': {'w': jnp.array([3.0, 4.0])}}
  out = jax.jit(lambda t: _apply(ssgd_optax.unit_normalize('per_layer'), t))(tree)
  assert bool(jnp.all(jnp.isnan(out['a']['w']))) and bool(jnp.all(jnp.isnan(out['a']['b'])))
  np.testing.assert_allclose(out['c']['w'], [0.6, 0.8], rtol=1e-6)
  assert bool(jnp.isnan(ssgd_optax.group_norms(tree, 'per_layer')['a']['w']))


def test_both_forms_have_finite_gradients_at_zero_and_tiny(method):
  def f(tree):
    out = _apply(ssgd_optax.unit_normalize('per_layer', eps=1e-3), tree)
    return sum(jnp.sum(jnp.sin(3 * v)) for v in jax.tree.leaves(out))

  for t in ({'a': {'w': jnp.zeros(3)}, 'b': {'w': jnp.full(2, 1e-30)}},
            {'a': {'w': jnp.full(3, 1e30)}, 'b': {'w': jnp.zeros(2)}}):
    g = jax.jit(jax.grad(f))(t)
    assert all(bool(jnp.all(jnp.isfinite(v))) for v in jax.tree.leaves(g)), method
  # And the gradient is the plain formula's, on the common path and scaled up.
  def plain(tree):
    n = optax.tree.norm(tree)
    return sum(jnp.sum(jnp.sin(3 * v / n)) for v in jax.tree.leaves(tree))

  f = lambda t: sum(jnp.sum(jnp.sin(3 * v)) for v in
                    jax.tree.leaves(_apply(ssgd_optax.unit_normalize(), t)))
  for scale in (1.0, 1e30, 1e-30):
    t = jax.tree.map(lambda x: x * scale, _tree())
    want = jax.grad(plain)(_tree())
    got = jax.grad(f)(t)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a * scale, b, rtol=1e-4, atol=1e-6),
                 got, want)


# ----------------------------------------------------------------------------
# The compiled HLO of the common path, so that a regression shows on CPU.


_hlo_counts = testing.hlo_op_counts


def _big_tree(dtype=jnp.float32, layers=3):
  return {f'l{i}': {'w': jnp.ones((3, 3, 16, 32), dtype), 'b': jnp.ones((32,), dtype)}
          for i in range(layers)}


@pytest.mark.parametrize('scope', SCOPES)
@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16])
def test_hlo_fused_form_is_branch_free_with_three_reductions_per_leaf(scope, dtype, monkeypatch):
  monkeypatch.setattr(normalize, '_METHOD', 'fused')
  tree = _big_tree(dtype)
  tx = ssgd_optax.unit_normalize(scope)
  counts = _hlo_counts(lambda t: _apply(tx, t), tree)
  n = len(jax.tree.leaves(tree))
  assert counts['branches'] == 0 and counts['conditional'] == 0, counts
  assert counts['reduce'] == 3 * n, counts  # x 2^-S, x, x 2^S: one pass, no max pass
  # The negative control: the CPU form has its rescue conditional.
  monkeypatch.setattr(normalize, '_METHOD', 'rescue')
  assert _hlo_counts(lambda t: _apply(tx, t), tree)['conditional'] == 1


@pytest.mark.parametrize('scope', SCOPES)
def test_hlo_cpu_form_one_conditional_and_one_reduction_per_leaf(scope):
  """On CPU ("auto" = "rescue"): one sum of squares per leaf on the common
  path, and one conditional for all groups, however many groups."""
  tree = _big_tree(layers=4)
  n = len(jax.tree.leaves(tree))
  tx = ssgd_optax.unit_normalize(scope)
  counts = _hlo_counts(lambda t: _apply(tx, t), tree)
  assert counts['conditional'] == 1, counts
  # Per leaf: 1 plain reduction + 2 scaled ones in the rescue branch; the
  # accelerator branch of platform_dependent is pruned when lowering for CPU.
  assert counts['reduce'] == 3 * n, counts
  # Fusions: a reduction and the rescale per leaf, two scalar fusions per
  # group (sqrt, reciprocal) and the overflow test; a per-leaf cast, square or
  # max materialised in its own pass would add one per leaf.
  groups = grouping.resolve_groups(tree, scope).num_groups
  assert counts['fusion'] <= 2 * n + 2 * groups + 4, counts
  # Negative control: a separate max|g| pass per leaf (the old rescue's
  # inputs, computed on the common path) breaks the reduction count.
  def with_max_pass(t):
    out = _apply(tx, t)
    return out, [jnp.max(jnp.abs(x)) for x in jax.tree.leaves(t)]
  assert _hlo_counts(with_max_pass, tree)['reduce'] > 3 * n


@pytest.mark.parametrize('scale', [1e30, 1e-30])
@pytest.mark.parametrize('shape', [(1,), (), (1, 1)])
def test_a_single_entry_leaf_at_the_range_limits_is_unit_norm(shape, scale):
  # A size-1 reduction let XLA fold (x s)^2 into x^2 s^2 with s^2 = 0 or inf:
  # NaN for a scalar parameter (or a one-entry shard) at 1e30 or 1e-30.
  g = {'w': jnp.full(shape, -3.0 * scale, jnp.float32), 'v': jnp.full((4,), scale, jnp.float32)}
  for scope in ('global', 'per_leaf'):
    tx = ssgd_optax.unit_normalize(scope)
    u, _ = jax.jit(tx.update)(g, tx.init(g))
    norms = [float(np.linalg.norm(np.asarray(x, np.float64))) for x in jax.tree.leaves(u)]
    total = float(np.sqrt(sum(n * n for n in norms)))
    assert np.isfinite(norms).all(), (scope, norms)
    assert total == pytest.approx(1.0 if scope == 'global' else np.sqrt(2), rel=1e-5)
