# Copyright 2026 The ssgd_optax Authors. Licensed under the Apache License 2.0.
"""Tests of DP-SSGD: per-example normalisation, noise, keys, devices, accounting."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

import ssgd_optax
from ssgd_optax import privacy
from ssgd_optax.privacy import _unit_normalization as dp
from ssgd_optax import _grouping as grouping
from ssgd_optax import per_example
from ssgd_optax import testing
from ssgd_examples.scripts import load as _load


SCOPES = ('global', 'per_leaf', 'per_layer')


def _per_example_tree(b=6, seed=0, dtype=jnp.float32):
  k = jax.random.split(jax.random.key(seed), 4)
  return {
      'dense': {'kernel': jax.random.normal(k[0], (b, 5, 3), dtype),
                'bias': jax.random.normal(k[1], (b, 3), dtype)},
      'out': {'kernel': jax.random.normal(k[2], (b, 3, 2), dtype),
              'bias': jax.random.normal(k[3], (b, 2), dtype)},
  }


def _group_norms_per_row(tree, scope):
  """float64 NumPy norms of every (row, group)."""
  paths_leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  g = grouping.resolve_groups(jax.tree.map(lambda x: x[0], tree), scope)
  b = paths_leaves[0][1].shape[0]
  sq = np.zeros((b, g.num_groups))
  for (_, x), k in zip(paths_leaves, g.group_of_leaf):
    sq[:, k] += np.sum(np.square(np.asarray(x, np.float64)).reshape(b, -1), axis=1)
  return np.sqrt(sq)


def _total_norm_per_row(tree):
  return np.sqrt(sum(np.sum(np.square(np.asarray(x, np.float64)).reshape(x.shape[0], -1), 1)
                     for x in jax.tree.leaves(tree)))


@pytest.mark.parametrize('scope', SCOPES)
def test_every_example_has_unit_norm_groups_and_zero_rows_stay_zero(scope):
  tree = _per_example_tree()
  tree = jax.tree.map(lambda x: x.at[2].set(0.0), tree)  # example 2: zero gradient
  u = jax.jit(lambda t: dp.normalize_per_example(t, scope))(tree)
  norms = _group_norms_per_row(u, scope)
  num_groups = norms.shape[1]
  for i in range(6):
    if i == 2:
      assert all(np.all(np.asarray(x[2]) == 0) for x in jax.tree.leaves(u))
    else:
      np.testing.assert_allclose(norms[i], 1.0, rtol=1e-6)
      np.testing.assert_allclose(_total_norm_per_row(u)[i], math.sqrt(num_groups), rtol=1e-6)
  assert dp.dp_ssgd_mechanism(jax.tree.map(lambda x: x[0], tree), 1.0, scope).sensitivity == (
      pytest.approx(math.sqrt(num_groups)))
  assert not any(np.isnan(np.asarray(x)).any() for x in jax.tree.leaves(u))


def test_one_zero_group_in_a_per_layer_example_is_zero_not_nan():
  tree = _per_example_tree(b=2)
  tree['out'] = jax.tree.map(jnp.zeros_like, tree['out'])
  u = jax.jit(lambda t: dp.normalize_per_example(t, 'per_layer'))(tree)
  norms = _group_norms_per_row(u, 'per_layer')
  np.testing.assert_allclose(norms[:, 0], 1.0, rtol=1e-6)
  np.testing.assert_array_equal(norms[:, 1], 0.0)
  # The gradient through a zero example is finite too.
  grad = jax.jit(jax.grad(lambda t: jnp.sum(dp.normalize_per_example(t)['out']['kernel'])))(tree)
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(grad))


@pytest.mark.parametrize('stability', [0.0, 0.1, 10.0])
def test_stability_is_auto_s(stability):
  tree = _per_example_tree()
  tree = jax.tree.map(lambda x: x.at[0].set(0.0), tree)
  norms_in = _group_norms_per_row(tree, 'per_layer')
  # Traced stability (as under inject_hyperparams) takes the general path.
  u = jax.jit(lambda t, s: dp.normalize_per_example(t, 'per_layer', stability=s))(
      tree, stability)
  norms_out = _group_norms_per_row(u, 'per_layer')
  want = norms_in / np.where(norms_in == 0, 1.0, norms_in + stability)
  np.testing.assert_allclose(norms_out, want, rtol=1e-5)


@pytest.mark.parametrize('scale', [1e-30, 1e30])
def test_tiny_and_huge_examples_have_unit_norm(scale):
  tree = jax.tree.map(lambda x: x * scale, _per_example_tree(b=3))
  u = jax.jit(lambda t: dp.normalize_per_example(t, stability=1e-6 if scale > 1 else 0.0))(tree)
  np.testing.assert_allclose(_total_norm_per_row(u), 1.0, rtol=1e-5)


@pytest.mark.parametrize('dtype', [jnp.bfloat16, jnp.float16])
def test_low_precision_is_normalised_in_float32(dtype):
  tree = _per_example_tree(dtype=dtype)

  @jax.jit
  def both(t):
    return (dp.normalize_per_example(t),
            dp.noisy_normalized_mean(t, jax.random.key(0), noise_multiplier=1.0,
                                     expected_batch_size=6))

  u, out = both(tree)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(u))
  np.testing.assert_allclose(_total_norm_per_row(u), 1.0, rtol=1e-6)
  assert all(x.dtype == dtype for x in jax.tree.leaves(out))
  assert all(np.isfinite(np.asarray(x, np.float32)).all() for x in jax.tree.leaves(out))


def test_nonfinite_examples_propagate_or_drop():
  tree = _per_example_tree(b=3)
  bad = jax.tree.map(lambda x: x.at[1].set(jnp.nan), tree)
  bad['out']['bias'] = bad['out']['bias'].at[2, 0].set(jnp.inf)

  @functools.partial(jax.jit, static_argnames='nonfinite')
  def both(t, nonfinite):
    return (dp.normalize_per_example(t, nonfinite=nonfinite),
            dp.noisy_normalized_mean(t, jax.random.key(0), noise_multiplier=0.0,
                                     expected_batch_size=3, nonfinite=nonfinite))

  u, mean = both(bad, 'propagate')
  assert np.isnan(np.asarray(u['dense']['kernel'][1])).all()
  assert np.isnan(np.asarray(u['dense']['kernel'][2])).all()
  assert np.isfinite(np.asarray(u['dense']['kernel'][0])).all()
  assert np.isnan(np.asarray(mean['out']['kernel'])).all()
  u_drop, dropped = both(bad, 'drop')
  assert all(np.all(np.asarray(x[1:]) == 0) for x in jax.tree.leaves(u_drop))
  # Dropping examples 1 and 2 leaves example 0's normalised gradient / 3.
  only_first = jax.tree.map(lambda x: x[0] / 3, u_drop)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), dropped, only_first)
  np.testing.assert_allclose(_total_norm_per_row(u_drop)[0], 1.0, rtol=1e-6)


@pytest.mark.parametrize('scope', SCOPES + (lambda path, leaf: leaf.ndim,))
def test_one_example_without_noise_equals_unit_normalize(scope):
  tree = _per_example_tree(b=1)
  tx = dp.dp_unit_normalize(0.0, expected_batch_size=1, key=jax.random.key(3), scope=scope)
  one = jax.tree.map(lambda x: x[0], tree)
  got, _ = jax.jit(tx.update)(tree, tx.init(one))
  want, _ = ssgd_optax.unit_normalize(scope).update(one, optax.EmptyState())
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), got, want)


def test_padded_rows_change_nothing():
  tree = _per_example_tree(b=4)
  padded = jax.tree.map(
      lambda x: jnp.concatenate([x, jnp.full((3,) + x.shape[1:], jnp.nan)]), tree)
  padded['dense']['bias'] = padded['dense']['bias'].at[5].set(1e30)
  mask = jnp.array([1, 1, 1, 1, 0, 0, 0])
  key = jax.random.key(7)
  tx = dp.dp_unit_normalize(1.3, expected_batch_size=5, key=key, scope='per_layer')
  params = jax.tree.map(lambda x: x[0], tree)
  want, _ = jax.jit(tx.update)(tree, tx.init(params))
  got, _ = jax.jit(tx.update)(padded, tx.init(params), mask=mask)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), got, want)


@pytest.mark.parametrize('scope', ['global', 'per_layer'])
def test_noise_std_matches_the_accounted_mechanism(scope):
  b, sigma, bbar = 4, 0.7, 8.0
  tree = {'a': {'w': jnp.zeros((b, 200, 200))}, 'b': {'w': jnp.zeros((b, 100, 100))}}
  tx = dp.dp_unit_normalize(sigma, expected_batch_size=bbar, key=jax.random.key(0), scope=scope)
  params = jax.tree.map(lambda x: x[0], tree)
  out, _ = jax.jit(tx.update)(tree, tx.init(params))
  mech = dp.dp_ssgd_mechanism(params, sigma, scope)
  assert mech.num_groups == (1 if scope == 'global' else 2)
  noise = np.concatenate([np.ravel(x) for x in jax.tree.leaves(out)]) * bbar
  assert abs(noise.mean()) < 0.01 * mech.stddev
  np.testing.assert_allclose(noise.std(), mech.stddev, rtol=0.01)
  # What the accountant is fed: stddev / sensitivity = sigma.
  assert mech.stddev / mech.sensitivity == pytest.approx(sigma)


def test_accountant_uses_the_mechanism():
  params = {'a': {'w': jnp.zeros(3)}, 'b': {'w': jnp.zeros(3)}, 'c': {'w': jnp.zeros(3)}}
  kw = dict(sampling_rate=0.01, steps=200, delta=1e-5)
  eps = {s: privacy.compute_epsilon(dp.dp_ssgd_mechanism(params, 1.1, s), **kw)
         for s in SCOPES}
  want = privacy.compute_epsilon(noise_multiplier=1.1, num_releases=1, **kw)
  for s in SCOPES:
    assert eps[s] == pytest.approx(want)
  sigma = privacy.calibrate_noise_multiplier(2.0, accountant='rdp', **kw)
  assert privacy.compute_epsilon(
      dp.dp_ssgd_mechanism(params, sigma, 'per_layer'), accountant='rdp',
      **kw) == pytest.approx(2.0, rel=0.02)


def test_noise_differs_across_steps_and_is_reproducible():
  tree = {'w': jnp.zeros((2, 1000))}
  tx = dp.dp_unit_normalize(1.0, expected_batch_size=2, key=jax.random.key(0))
  update = jax.jit(tx.update)
  state0 = tx.init({'w': jnp.zeros(1000)})
  u1, state1 = update(tree, state0)
  u2, state2 = update(tree, state1)
  assert abs(np.corrcoef(u1['w'], u2['w'])[0, 1]) < 0.15
  assert not np.array_equal(jax.random.key_data(state1.key), jax.random.key_data(state2.key))
  again, _ = update(tree, state0)
  np.testing.assert_array_equal(again['w'], u1['w'])
  # A different key gives different noise.
  other = dp.dp_unit_normalize(1.0, expected_batch_size=2, key=jax.random.key(1))
  u_other, _ = jax.jit(other.update)(tree, other.init({'w': jnp.zeros(1000)}))
  assert abs(np.corrcoef(u1['w'], u_other['w'])[0, 1]) < 0.15


def _mesh():
  if len(jax.devices()) < 8:
    pytest.skip('needs 8 (virtual) devices')
  return jax.make_mesh((8,), ('data',), axis_types=(jax.sharding.AxisType.Auto,))


_CHECK_VMA = [False, True]


@pytest.mark.parametrize('check_vma', _CHECK_VMA)
def test_noise_differs_across_devices_and_is_added_once(check_vma):
  mesh = _mesh()
  n, sigma = 4000, 1.0
  tx = dp.dp_unit_normalize(sigma, expected_batch_size=1.0, key=jax.random.key(0),
                            axis_name='data')

  @functools.partial(jax.shard_map, mesh=mesh, in_specs=(P('data'), P()),
                     out_specs=(P(), P('data')), check_vma=check_vma)
  def step(per_example_zero, state):
    u, _ = tx.update({'w': per_example_zero}, state)
    # Each device's own share, recomputed the way the transform draws it.
    _, noise_key = jax.random.split(state.key)
    share = jax.random.normal(
        jax.random.split(jax.random.fold_in(noise_key, jax.lax.axis_index('data')), 1)[0],
        (n,))
    return u['w'], share[None]

  zeros = jnp.zeros((16, n))
  total, shares = jax.jit(step)(zeros, tx.init({'w': jnp.zeros(n)}))
  shares = np.asarray(shares)
  # Shares differ across devices (pairwise near-uncorrelated) ...
  corr = np.corrcoef(shares)
  assert np.max(np.abs(corr[~np.eye(8, dtype=bool)])) < 0.1
  # ... and sum to the update, with total std sigma (once, not sqrt(8) times).
  np.testing.assert_allclose(total, shares.sum(0) * sigma / math.sqrt(8), rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(np.std(total), sigma, rtol=0.05)


@pytest.mark.parametrize('check_vma', _CHECK_VMA)
def test_sharded_without_noise_matches_one_device(check_vma):
  mesh = _mesh()
  tree = _per_example_tree(b=16)
  params = jax.tree.map(lambda x: x[0], tree)
  single = dp.dp_unit_normalize(0.0, expected_batch_size=16, key=jax.random.key(0),
                                scope='per_layer')
  want, _ = jax.jit(single.update)(tree, single.init(params))
  multi = dp.dp_unit_normalize(0.0, expected_batch_size=16, key=jax.random.key(0),
                               scope='per_layer', axis_name='data')

  @functools.partial(jax.shard_map, mesh=mesh, in_specs=(P('data'), P()), out_specs=P(),
                     check_vma=check_vma)
  def step(g, state):
    return multi.update(g, state)[0]

  got = jax.jit(step)(tree, multi.init(params))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), got, want)
  # jit over a batch-sharded array (no axis_name): one global noise draw.
  sharded = jax.device_put(tree, jax.NamedSharding(mesh, P('data')))
  got2, _ = jax.jit(single.update)(sharded, single.init(params))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), got2, want)


class _Net(nnx.Module):

  def __init__(self, rngs):
    self.l1 = nnx.Linear(2, 8, rngs=rngs)
    self.l2 = nnx.Linear(8, 2, rngs=rngs)

  def __call__(self, x):
    return self.l2(nnx.relu(self.l1(x)))


def _loss(model, x, y):
  return optax.softmax_cross_entropy_with_integer_labels(model(x), y).sum()


def test_dp_ssgd_trains_an_nnx_model_with_padding():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(256, 2)).astype(np.float32)
  y = (x[:, 0] + x[:, 1] > 0).astype(np.int32)
  model = _Net(nnx.Rngs(0))
  opt = nnx.Optimizer(
      model, dp.dp_ssgd(0.5, 0.5, expected_batch_size=32, key=jax.random.key(1),
                        scope='per_layer', momentum=0.5), wrt=nnx.Param)

  @nnx.jit
  def step(model, opt, xb, yb, mask):
    grads = per_example.nnx_per_example_grads(_loss, model, xb, yb, mask=mask,
                                              microbatch_size=16)
    opt.update(model, grads, mask=mask)

  def acc():
    return float(jnp.mean(jnp.argmax(model(x), -1) == y))

  before = acc()
  for t in range(60):
    idx = rng.choice(256, 40, replace=False)
    mask = jnp.asarray(np.arange(40) < 30 + t % 10)
    step(model, opt, x[idx], y[idx], mask)
  assert acc() > max(before, 0.9)


def test_inject_hyperparams_and_chain_with_adam():
  factory = optax.inject_hyperparams(dp.dp_unit_normalize, static_args=('key', 'scope'))
  tx = optax.chain(factory(0.5, expected_batch_size=2.0, key=jax.random.key(0),
                           scope='per_leaf'), optax.adam(1e-2))
  params = {'w': jnp.ones(3), 'b': jnp.ones(1)}
  grads = {'w': jnp.ones((2, 3)), 'b': jnp.ones((2, 1))}
  state = tx.init(params)
  u, state = jax.jit(tx.update)(grads, state, params)
  assert jax.tree.map(jnp.shape, u) == {'w': (3,), 'b': (1,)}
  state[0].hyperparams['noise_multiplier'] = jnp.asarray(0.0)
  u0, _ = jax.jit(tx.update)(grads, state, params)
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(u0))


def test_empty_tree_and_none_leaves():
  tx = dp.dp_unit_normalize(1.0, expected_batch_size=1, key=jax.random.key(0))
  assert tx.update({}, tx.init({}))[0] == {}
  tree = {'a': jnp.ones((2, 3)), 'b': None}
  out, _ = tx.update(tree, tx.init({'a': jnp.ones(3), 'b': None}))
  assert out['b'] is None and out['a'].shape == (3,)


@pytest.mark.parametrize('call,err,match', [
    (lambda: dp.dp_ssgd(0.1, -1.0, expected_batch_size=2, key=jax.random.key(0)), ValueError,
     'noise_multiplier'),
    (lambda: dp.dp_ssgd(0.1, 1.0, expected_batch_size=0, key=jax.random.key(0)), ValueError,
     'expected_batch_size'),
    (lambda: dp.dp_ssgd(0.1, 1.0, expected_batch_size=2, key=None), ValueError,
     'key is required'),
    (lambda: dp.dp_ssgd(0.1, 1.0, expected_batch_size=2, key=0), TypeError, 'PRNG key'),
    (lambda: dp.dp_ssgd(0.1, 1.0, expected_batch_size=2, key=jax.random.split(
        jax.random.key(0))), ValueError, 'single PRNG key'),
    (lambda: dp.dp_ssgd(0.1, 1.0, expected_batch_size=2, key=jax.random.key(0), scope='x'),
     ValueError, 'scope'),
    (lambda: dp.dp_ssgd(0.1, 1.0, expected_batch_size=2, key=jax.random.key(0),
                        stability=-1.0), ValueError, 'stability'),
    (lambda: dp.dp_ssgd(0.1, 1.0, expected_batch_size=2, key=jax.random.key(0),
                        nonfinite='zero'), ValueError, 'nonfinite'),
    (lambda: dp.dp_ssgd(0.1, 1.0, expected_batch_size=2, key=jax.random.key(0),
                        momentum=-0.1), ValueError, 'momentum'),
    (lambda: dp.dp_ssgd(0.1, 1.0, expected_batch_size=2, key=jax.random.key(0),
                        nesterov=True), ValueError, 'nesterov'),
    (lambda: dp.dp_ssgd(float('nan'), 1.0, expected_batch_size=2, key=jax.random.key(0)),
     ValueError, 'learning_rate'),
    (lambda: dp.normalize_per_example({'w': jnp.ones(())}), ValueError, 'leading batch axis'),
    (lambda: dp.normalize_per_example({'w': jnp.ones((3, 2)), 'b': jnp.ones((2,))}),
     ValueError, 'leading batch size'),
    (lambda: dp.normalize_per_example({'w': jnp.ones((3, 2))}, mask=jnp.ones(4)), ValueError,
     'mask has 4'),
    (lambda: dp.normalize_per_example({'w': jnp.ones((3, 2), jnp.int32)}), TypeError,
     'floating-point'),
])
def test_bad_arguments(call, err, match):
  with pytest.raises(err, match=match):
    call()




def test_example_runs_end_to_end(capsys, tmp_path):
  example = _load('examples/dp_ssgd.py')
  results = example.main(['--epsilons', '8', '--train-size', '400', '--epochs', '2',
                          '--batch-size', '100', '--hidden', '16', '--accountant', 'rdp',
                          '--workdir', str(tmp_path / 'run')])
  (res,) = results
  assert 0 < res.epsilon <= 8.0 and res.steps == 8 and res.noise_multiplier > 0
  assert res.accuracy > 0.3  # 10 classes: well above chance after 8 private steps
  assert 'target eps 8: test accuracy' in capsys.readouterr().out


@pytest.mark.parametrize('flags,match', [
    (['--epsilons', '0'], '--epsilons'),
    (['--delta', '2'], '--delta'),
    (['--momentum', '1'], '--momentum'),
    (['--scope', 'per_block'], 'invalid choice'),
    (['--stability', '-1'], '--stability'),
])
def test_example_rejects_bad_flags(flags, match, capsys):
  example = _load('examples/dp_ssgd.py')
  with pytest.raises(SystemExit):
    example.main(flags)
  assert match in capsys.readouterr().err


@pytest.mark.slow  # benchmark smoke test: run with -m slow
def test_benchmark_quick(tmp_path):
  bench = _load('benchmarks/dp_ssgd.py')
  text = bench.main(['--quick', '--out', str(tmp_path / 'dp_ssgd.md')])
  for name in ('dp_ssgd', 'dp_sgd_clip', 'backprop_clip', 'ratio to dp_ssgd', 'CPU cores'):
    assert name in text


# --- Issue 11 defects 6 and 8, issue 13 (GPU collapse): regression tests. ---


@pytest.mark.devices(8)
def test_jit_on_the_projects_explicit_mesh_matches_one_device():
  from ssgd_optax import parallel  # pylint: disable=import-outside-toplevel
  mesh = parallel.data_mesh(8)
  assert jax.sharding.AxisType.Explicit in mesh.axis_types
  tree = _per_example_tree(b=16)
  # Row 3 forces the rescue path, row 5 (NaN) the select path.
  tree['dense']['bias'] = tree['dense']['bias'].at[3].set(1e-25).at[5, 0].set(jnp.nan)
  params = jax.tree.map(lambda x: x[0], tree)
  tx = dp.dp_unit_normalize(0.7, expected_batch_size=16, key=jax.random.key(0),
                            scope='per_layer')
  want, _ = jax.jit(tx.update)(tree, tx.init(params))
  sharded = jax.device_put(tree, jax.NamedSharding(mesh, P('data')))
  got, _ = jax.jit(tx.update)(sharded, tx.init(params))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), got, want)
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(got))
  mean = jax.jit(lambda g: dp.noisy_normalized_mean(
      g, jax.random.key(1), noise_multiplier=0.0, expected_batch_size=16))(sharded)
  want_mean = dp.noisy_normalized_mean(tree, jax.random.key(1), noise_multiplier=0.0,
                                       expected_batch_size=16)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               mean, want_mean)


@pytest.mark.parametrize('make', [
    lambda key: dp.dp_unit_normalize(1.0, expected_batch_size=2, key=key),
    lambda key: dp.dp_ssgd(0.1, 1.0, expected_batch_size=2, key=key, momentum=0.9),
])
def test_donating_the_state_does_not_break_a_second_init(make):
  params, grads = {'w': jnp.zeros(3)}, {'w': jnp.ones((2, 3))}

  def keys(state):
    return [np.asarray(jax.random.key_data(x)) for x in jax.tree.leaves(state)
            if jnp.issubdtype(x.dtype, jax.dtypes.prng_key)]

  for key in (jax.random.key(3), jax.random.PRNGKey(3)):
    tx = make(key)
    first = tx.init(params)
    want = keys(first)
    jax.jit(tx.update, donate_argnums=1)(grads, first, params)
    again = tx.init(params)
    np.testing.assert_array_equal(keys(again), want)
    u, _ = jax.jit(tx.update)(grads, again, params)
    assert np.isfinite(np.asarray(u['w'])).all()

  # The check fails on a transform that stores the caller's buffer itself.
  key = jax.random.key(3)
  broken = optax.GradientTransformation(lambda p: dp.DPUnitNormalizeState(key),
                                        lambda u, s, p=None: (u, s))
  jax.jit(broken.update, donate_argnums=1)(params, broken.init(params))
  with pytest.raises(RuntimeError, match='deleted'):
    keys(broken.init(params))


@pytest.mark.parametrize('scope', SCOPES)
def test_tiny_gradients_whose_squares_underflow_are_finite_and_unit_norm(scope):
  # A confident model's per-example gradients: every square is 0 in float32.
  tree = jax.tree.map(lambda x: x * 1e-25, _per_example_tree(b=3))
  tree = jax.tree.map(lambda x: x.at[1].multiply(1e-12), tree)   # 1e-37: still normal
  u = jax.jit(lambda t: dp.normalize_per_example(t, scope))(tree)
  norms = _group_norms_per_row(u, scope)
  np.testing.assert_allclose(norms, 1.0, rtol=1e-5)
  mean = jax.jit(lambda t: dp.noisy_normalized_mean(
      t, jax.random.key(0), noise_multiplier=0.5, expected_batch_size=3, scope=scope))(tree)
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(mean))


@pytest.mark.parametrize('fill', [np.inf, -np.inf, np.nan, 3e38])
def test_padded_rows_with_inf_or_nan_give_the_unpadded_release(fill):
  tree = _per_example_tree(b=4)
  padded = jax.tree.map(
      lambda x: jnp.concatenate([x, jnp.full((2,) + x.shape[1:], fill, x.dtype)]), tree)
  mask = jnp.array([1, 1, 1, 1, 0, 0])
  params = jax.tree.map(lambda x: x[0], tree)
  tx = dp.dp_ssgd(0.5, 1.0, expected_batch_size=5, key=jax.random.key(2), scope='per_layer',
                  momentum=0.5)
  want, _ = jax.jit(tx.update)(tree, tx.init(params), params)
  got, _ = jax.jit(tx.update)(padded, tx.init(params), params, mask=mask)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), got, want)
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(got))


# ----------------------------------------------------------------------------
# The norms are ssgd_optax._numerics' (one safe norm for the package): range
# safety of both forms, and the compiled HLO of the common path on CPU.


def _extreme_rows():
  """Rows at the float32 limits: norm near max, tiny, squares that flush,
  subnormal, zero."""
  x = np.zeros((5, 1001), np.float32)
  x[0, :] = 1e35            # squares overflow; 1/n = 3e-37 would be near subnormal
  x[0, :4] = 3e38           # norm 6e38 > max: 1/n is subnormal (0 on CPU)
  x[1, :3] = 2e-38          # norm 3.5e-38: squares below tiny
  x[2, :] = 1e-19           # squares flush to 0 ...
  x[2, 0] = 1.2e-19         # ... but this one's does not: the norm-26 case
  x[3, :] = 1e-39           # subnormal: a zero row on every backend
  return x                  # row 4: zeros


@pytest.mark.parametrize('method', ['rescue', 'fused'])
def test_rows_at_the_float32_limits_have_unit_norm_in_both_forms(method, monkeypatch):
  monkeypatch.setattr(dp, '_METHOD', method)
  x = _extreme_rows()
  u = jax.jit(lambda t: dp.normalize_per_example(t))({'w': x})['w']
  norms = np.linalg.norm(np.asarray(u, np.float64), axis=1)
  np.testing.assert_allclose(norms, [1, 1, 1, 0, 0], rtol=1e-6)
  assert np.all(np.asarray(u[3:]) == 0)
  out = jax.jit(lambda t: dp.noisy_normalized_mean(t, jax.random.key(0), noise_multiplier=0.0,
                                                   expected_batch_size=1.0))({'w': x})['w']
  np.testing.assert_allclose(np.asarray(out, np.float64), np.asarray(u, np.float64).sum(0),
                             rtol=1e-5, atol=1e-6)
  # Negative control: one scale per row, 1 / n, is subnormal for row 0 (its
  # norm exceeds the float32 max): 0 on CPU, a zero row instead of a unit one.
  n = min(float(np.linalg.norm(x[0].astype(np.float64))), float(np.finfo(np.float32).max))
  one_scale = jax.jit(lambda r, inv: r * inv)(x[0], 1 / jnp.float32(n))
  assert np.linalg.norm(np.asarray(one_scale, np.float64)) < 0.5


_hlo_counts = testing.hlo_op_counts


@pytest.mark.parametrize('scope', SCOPES)
def test_hlo_common_path_has_one_conditional_and_one_reduction_per_leaf(scope, monkeypatch):
  """CPU: one sum of squares per leaf on the common path (no max pass), the
  scaled sums only in the rescue branch, one batch-level conditional."""
  tree = {f'l{i}': {'w': jnp.ones((8, 3, 3, 4, 8)), 'b': jnp.ones((8, 8))} for i in range(3)}
  n = len(jax.tree.leaves(tree))
  key = jax.random.key(0)

  def normalized(t):
    return dp.normalize_per_example(t, scope)

  def released(t, k):
    return dp.noisy_normalized_mean(t, k, noise_multiplier=1.0, expected_batch_size=8,
                                    scope=scope)

  # Fresh lambdas: jit's cache would otherwise ignore the change of _METHOD.
  for f, args in ((lambda t: normalized(t), (tree,)), (lambda t, k: released(t, k), (tree, key))):
    counts = _hlo_counts(f, *args)
    assert counts['conditional'] == 1, counts
    assert counts['reduce'] == 3 * n, counts   # plain + (x 2^-84, x 2^84) in the rescue
  # The accelerator form: branch-free, the same three reductions per leaf.
  monkeypatch.setattr(dp, '_METHOD', 'fused')
  for f, args in ((lambda t: normalized(t), (tree,)), (lambda t, k: released(t, k), (tree, key))):
    counts = _hlo_counts(f, *args)
    assert counts['branches'] == 0 and counts['conditional'] == 0, counts
    assert counts['reduce'] == 3 * n, counts
  # Negative control: a max|g| pass per leaf (the previous rescue's input)
  # breaks the count.
  monkeypatch.setattr(dp, '_METHOD', 'auto')
  assert _hlo_counts(lambda t: (normalized(t), [jnp.max(jnp.abs(x), axis=(1, 2, 3, 4)[:x.ndim - 1])
                                                for x in jax.tree.leaves(t)]),
                     tree)['reduce'] > 3 * n
