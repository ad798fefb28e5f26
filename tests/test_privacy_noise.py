# Copyright 2026 The ssgd_optax Authors. Licensed under the Apache License 2.0.
"""Tests for the noise step and per-example clipping of ssgd_optax.privacy."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from ssgd_optax import privacy


def _apply(tx, updates, steps=1):
  state = tx.init(updates)
  out = []
  for _ in range(steps):
    u, state = tx.update(updates, state)
    out.append(u)
  return out, state


def test_noise_has_the_specified_std_per_leaf():
  z, bbar = 2.0, 4.0
  updates = {'a': jnp.zeros(200_000), 'b': jnp.zeros((400, 250))}
  sens = {'a': jnp.float32(0.5), 'b': jnp.float32(3.0)}
  (u,), _ = _apply(privacy.add_gaussian_noise(z, sens, bbar, key=jax.random.key(0)), updates)
  for name, s in sens.items():
    x = np.asarray(u[name]).ravel()
    want = z * float(s) / bbar
    # std of a 1e5-sample std estimate is ~ want / sqrt(2n): 1% is > 4 sigma.
    assert abs(x.std() / want - 1) < 0.01, name
    assert abs(x.mean()) < 5 * want / np.sqrt(x.size)
  # Independent leaves.
  assert abs(np.corrcoef(np.asarray(u['a'][:100_000]), np.asarray(u['b']).ravel())[0, 1]) < 0.02


def test_signal_is_divided_by_expected_batch_and_zero_noise_is_exact():
  g = {'w': jnp.arange(6.0).reshape(2, 3)}
  (u,), _ = _apply(privacy.add_gaussian_noise(0.0, 1.0, 3.0, key=jax.random.key(1)), g)
  np.testing.assert_array_equal(u['w'], g['w'] / 3.0)


def test_fresh_noise_each_step_and_reproducible_from_the_key():
  g = {'w': jnp.zeros(8)}
  tx = privacy.add_gaussian_noise(1.0, 1.0, 1.0, key=jax.random.key(2))
  (u1, u2), state = _apply(tx, g, steps=2)
  assert not np.allclose(u1['w'], u2['w'])
  assert int(state.count) == 2
  (v1, _), _ = _apply(privacy.add_gaussian_noise(1.0, 1.0, 1.0, key=jax.random.key(2)), g,
                      steps=2)
  np.testing.assert_array_equal(u1['w'], v1['w'])


def test_state_can_be_donated_and_init_called_again():
  """Defect 8: init handed out the caller's key buffer, which donation deleted."""
  key = jax.random.key(5)
  tx = privacy.add_gaussian_noise(1.0, 1.0, 2.0, key=key)
  params = {'w': jnp.zeros(3)}
  step = jax.jit(tx.update, donate_argnums=1)
  u1, s1 = step(params, tx.init(params))
  u2, _ = step(params, tx.init(params))  # raised "deleted or donated buffer" before
  np.testing.assert_array_equal(u1['w'], u2['w'])  # same key, same noise
  assert not key.is_deleted()  # the caller's key is untouched
  # The state's key advances by a split every step (never reused).
  assert not np.array_equal(jax.random.key_data(s1.key), jax.random.key_data(key))
  # The broken pattern this guards against (the old init put the caller's key
  # in the state): donation deletes that buffer.
  shared = jax.random.key(6)
  step(params, privacy.GaussianNoiseState(key=shared, count=jnp.zeros([], jnp.int32)))
  assert shared.is_deleted()


def test_legacy_prng_key_is_accepted_and_gives_a_typed_key_in_state():
  tx = privacy.add_gaussian_noise(1.0, 1.0, 1.0, key=jax.random.PRNGKey(3))
  state = tx.init({'w': jnp.zeros(2)})
  assert jnp.issubdtype(state.key.dtype, jax.dtypes.prng_key) and state.key.shape == ()
  with pytest.raises(ValueError, match='key'):
    privacy.add_gaussian_noise(1.0, 1.0, 1.0, key=jax.random.split(jax.random.key(0), 2))
  with pytest.raises(ValueError, match='key is required'):
    privacy.add_gaussian_noise(1.0, 1.0, 1.0, key=None)


def test_jit_inject_hyperparams_and_chain():
  tx = optax.chain(
      optax.inject_hyperparams(privacy.add_gaussian_noise, static_args=('key',))(
          noise_multiplier=1.0, sensitivity=1.0, expected_batch_size=2.0,
          key=jax.random.key(3)),
      optax.sgd(0.1))
  params = {'w': jnp.zeros(4)}
  state = tx.init(params)
  u, state = jax.jit(tx.update)({'w': jnp.ones(4)}, state)
  assert u['w'].shape == (4,) and np.isfinite(u['w']).all()


def test_none_leaves_empty_trees_dtypes_and_nan():
  tx = privacy.add_gaussian_noise(1.0, 0.1, 2.0, key=jax.random.key(4))
  (u,), _ = _apply(tx, {'a': None, 'b': jnp.ones(3, jnp.bfloat16)})
  assert u['a'] is None and u['b'].dtype == jnp.bfloat16
  (u,), _ = _apply(tx, {})
  assert u == {}
  (u,), _ = _apply(tx, {'c': jnp.array([jnp.nan, 1.0])})
  assert np.isnan(u['c'][0]) and np.isfinite(u['c'][1])


@pytest.mark.parametrize('args,kw,err,match', [
    ((-1.0, 1.0, 1.0), {}, ValueError, 'noise_multiplier'),
    ((1.0, -1.0, 1.0), {}, ValueError, 'sensitivity'),
    ((1.0, None, 1.0), {}, ValueError, 'sensitivity'),
    ((1.0, 1.0, 0.0), {}, ValueError, 'expected_batch_size'),
    ((1.0, 1.0, 1.0), {'key': 0}, TypeError, 'key'),
])
def test_noise_rejects_bad_arguments(args, kw, err, match):
  kw = {'key': jax.random.key(0), **kw}
  with pytest.raises(err, match=match):
    privacy.add_gaussian_noise(*args, **kw)


def test_sensitivity_structure_mismatch():
  tx = privacy.add_gaussian_noise(1.0, {'a': 1.0}, 1.0, key=jax.random.key(0))
  with pytest.raises(ValueError, match='structure'):
    _apply(tx, {'a': jnp.ones(2), 'b': jnp.ones(2)})


# ---------------------------------------------------------------------------
# DP-SGD baseline.


def _ce(m, x, y):
  return optax.softmax_cross_entropy_with_integer_labels(m(x), y)


def test_dpsgd_sum_equals_loop_of_clipped_per_example_gradients():
  model = nnx.Sequential(nnx.Linear(5, 4, rngs=nnx.Rngs(0)), nnx.relu,
                         nnx.Linear(4, 3, use_bias=False, rngs=nnx.Rngs(1)))
  x = 3 * jax.random.normal(jax.random.key(5), (6, 5))
  y = jnp.arange(6) % 3
  mask = jnp.array([1, 1, 0, 1, 1, 0], bool)
  c = 0.3
  loss, got = nnx.jit(lambda m, x, y, mask: privacy.dpsgd_grad_sum(
      _ce, m, x, y, clip_norm=c, mask=mask))(model, x, y, mask)
  grad_one = nnx.jit(nnx.grad(lambda m, xi, yi: _ce(m, xi, yi).sum()))
  want, norms = None, []
  for i in np.flatnonzero(np.asarray(mask)):
    g = grad_one(model, x[i:i + 1], y[i:i + 1])
    n = np.sqrt(sum(float(jnp.sum(l ** 2)) for l in jax.tree.leaves(g)))
    norms.append(n)
    g = jax.tree.map(lambda l: l * min(1.0, c / n), g)
    want = g if want is None else jax.tree.map(jnp.add, want, g)
  assert max(norms) > c  # Clipping is active in this test.
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), got, want)
  np.testing.assert_allclose(loss, _ce(model, x, y)[mask].sum(), rtol=1e-5)


def test_clip_global_per_example_edge_cases():
  g = {'a': jnp.array([[0.0], [jnp.nan], [3e30]]), 'b': jnp.array([[0.0], [1.0], [4e30]])}
  clipped, norms = privacy.clip_global_per_example(g, 1.0)
  np.testing.assert_array_equal(clipped['a'][0], [0.0])
  # A non-finite example is dropped in every leaf (default), NaN only on opt-in.
  assert clipped['a'][1] == 0 and clipped['b'][1] == 0
  prop, _ = privacy.clip_global_per_example(g, 1.0, nonfinite='propagate')
  assert np.isnan(prop['a'][1]).all() and np.isnan(prop['b'][1]).all()
  np.testing.assert_allclose([prop['a'][2, 0], prop['b'][2, 0]], [0.6, 0.8], rtol=1e-5)
  # Finite entries above 2**126: the norm used to underflow to 0 (no clipping).
  huge, n = privacy.clip_global_per_example({'a': jnp.full((1, 3), 3e38)}, 1.0)
  assert np.isfinite(huge['a']).all() and float(jnp.linalg.norm(huge['a'])) <= 1.0
  np.testing.assert_allclose([clipped['a'][2, 0], clipped['b'][2, 0]], [0.6, 0.8], rtol=1e-5)
  np.testing.assert_allclose(norms[2], 5e30, rtol=1e-5)
  empty, n = privacy.clip_global_per_example({}, 1.0)
  assert empty == {} and n.shape == (0,)
  with pytest.raises(ValueError, match='clip_norm'):
    privacy.clip_global_per_example(g, -1.0)


def test_grad_sums_reject_bad_arguments():
  model = nnx.Linear(2, 2, rngs=nnx.Rngs(0))
  with pytest.raises(TypeError, match='per_example_loss'):
    privacy.dpsgd_grad_sum('loss', model, jnp.ones((2, 2)), clip_norm=1.0)
  with pytest.raises(TypeError, match='per_example_loss'):
    privacy.backprop_clip_grad_sum(None, model, jnp.ones((2, 2)))
  with pytest.raises(ValueError, match='mask'):
    privacy.backprop_clip_grad_sum(lambda m, x: m(x).sum(1), model, jnp.ones((2, 2)),
                                   mask=jnp.ones(3))
  with pytest.raises(ValueError, match='nonfinite'):
    privacy.backprop_clip_grad_sum(lambda m, x: m(x).sum(1), model, jnp.ones((2, 2)),
                                   nonfinite='ignore')
  with pytest.raises(ValueError, match='nonfinite'):
    privacy.dpsgd_grad_sum(lambda m, x: m(x).sum(1), model, jnp.ones((2, 2)),
                           clip_norm=1.0, nonfinite='nan')
  with pytest.raises(ValueError, match='nonfinite'):
    privacy.clip_global_per_example({'a': jnp.ones((2, 1))}, 1.0, nonfinite='zero')


# ---------------------------------------------------------------------------
# One noise step under shard_map: DP-SGD and backprop clipping like DP-SSGD.


def _sharded_release(method, noise_multiplier, keys):
  """The noisy mean of a batch split over the data mesh, one per key (shard_map)."""
  from jax.sharding import PartitionSpec as P  # pylint: disable=import-outside-toplevel
  from ssgd_optax import parallel  # pylint: disable=import-outside-toplevel
  mesh = parallel.data_mesh()
  d = mesh.shape['data']
  b = 2 * d
  rng = np.random.default_rng(0)
  x = rng.normal(size=(b, 6)).astype(np.float32)
  y = (np.arange(b) % 3).astype(np.int32)
  ce = lambda m, x, y: optax.softmax_cross_entropy_with_integer_labels(m(x), y)
  if method == 'dpsgd':
    model = nnx.Linear(6, 3, rngs=nnx.Rngs(0))
    mechanism = privacy.dpsgd_mechanism(0.5, noise_multiplier)
    grad_sum = lambda m, x, y: privacy.dpsgd_grad_sum(ce, m, x, y, clip_norm=0.5)[1]
  else:
    model = privacy.clip_layers(nnx.Linear(6, 3, use_bias=False, rngs=nnx.Rngs(0)),
                                input_bound=1.0, grad_bound=0.5)
    mechanism = privacy.backprop_clip_mechanism(model, noise_multiplier)
    grad_sum = lambda m, x, y: privacy.backprop_clip_grad_sum(ce, m, x, y)[1]
  graphdef, state = nnx.split(model)
  params = nnx.state(model, nnx.Param)

  def release(key, axis_name):
    tx = privacy.add_gaussian_noise(mechanism=mechanism, expected_batch_size=float(b), key=key,
                                    axis_name=axis_name)
    return tx, tx.init(params)

  # The model's state is an argument, merged inside (see backprop_clip_grad_sum).
  def one(key, st, xs, ys):
    tx, s = release(key, 'data')
    g = grad_sum(nnx.merge(graphdef, st), xs, ys)
    return tx.update(g, s)[0]

  sharded = jax.jit(jax.shard_map(one, mesh=mesh, in_specs=(P(), P(), P('data'), P('data')),
                                  out_specs=P(), check_vma=False))

  def single(key, st):
    tx, s = release(key, None)
    return tx.update(grad_sum(nnx.merge(graphdef, st), x, y), s)[0]

  xs, ys = parallel.shard_batch((x, y), mesh)
  st = parallel.replicate_on_mesh(state, mesh)
  got = [sharded(parallel.replicate_on_mesh(k, mesh), st, xs, ys) for k in keys]
  return got, functools.partial(jax.jit(single), st=state), mechanism, b


@pytest.mark.devices(2)
@pytest.mark.parametrize('method', ['dpsgd', 'backprop'])
def test_noise_under_shard_map_matches_one_device_and_is_added_once(method):
  keys = [jax.random.key(i) for i in range(40)]
  got, single, _, _ = _sharded_release(method, 0.0, keys[:1])
  # Without noise: the psum of the per-device sums is the one-device sum.
  jax.tree.map(lambda a, w: np.testing.assert_allclose(a, w, rtol=1e-5, atol=1e-7),
               got[0], single(keys[0]))
  noisy, _, mechanism, b = _sharded_release(method, 2.0, keys)
  clean = jax.tree.leaves(got[0])
  stds = jax.tree.leaves(mechanism.stddev)
  stds = stds * len(clean) if len(stds) == 1 else stds
  for i, (base, std) in enumerate(zip(clean, stds)):
    noise = (np.stack([np.asarray(jax.tree.leaves(n)[i]) for n in noisy]) - base) * b
    # Added once with std sigma * Delta: D shares of 1/sqrt(D) each (not D full draws,
    # not one share): 40 x 18 samples, a 6 % tolerance.
    assert abs(noise.std() / float(std) - 1) < 0.06, (method, i, noise.std(), float(std))
