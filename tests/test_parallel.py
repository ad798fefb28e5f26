# Copyright 2026 The ssgd_optax Authors. Licensed under the Apache License 2.0.
"""Tests of ssgd_optax.parallel on 8 virtual CPU devices (tests/conftest.py).

Multi-device tests skip with their reason on fewer devices.

Privacy mode (normalise, then share) and optimisation mode (share, then
normalise) under pmap and shard_map against single-device references; the
all-reduce count of compiled steps; model-parallel norms under shard_map; jit
with NamedSharding; the layout helpers; the example and the benchmark.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import ssgd_optax
from ssgd_optax import parallel
from ssgd_optax import testing
from ssgd_examples.scripts import load as _load

SCOPES = ('global', 'per_leaf', 'per_layer')
N = 8


# Tests that map over devices say how many they need (tests/conftest.py skips
# them, with the reason, on fewer: SSGD_TEST_DEVICES=1 or one accelerator);
# the vmap, validation and parsing tests run on any device count.
needs_n = pytest.mark.devices(N)


def _close(actual, desired, rtol=2e-5, atol=1e-6):
  jax.tree.map(lambda a, d: np.testing.assert_allclose(np.asarray(a), np.asarray(d),
                                                       rtol=rtol, atol=atol),
               actual, desired)


# --------------------------------------------------------------------------
# aggregate.


@pytest.mark.parametrize('reduction', ['mean', 'sum'])
def test_aggregate_under_vmap(reduction):
  g = {'a': jnp.arange(8.).reshape(4, 2), 'b': None}
  tx = parallel.aggregate('d', reduction=reduction)
  u = jax.vmap(lambda x: tx.update(x, tx.init(x))[0], axis_name='d')(g)
  want = g['a'].mean(0) if reduction == 'mean' else g['a'].sum(0)
  for row in u['a']:
    np.testing.assert_allclose(row, want)
  assert u['b'] is None


@needs_n
def test_aggregate_pmap_shard_map_and_tuple_axes():
  x = jnp.arange(16.).reshape(8, 2)
  tx = parallel.aggregate('i')
  out = jax.pmap(lambda v: tx.update(v, tx.init(v))[0], axis_name='i')(x)
  np.testing.assert_allclose(np.asarray(out), np.broadcast_to(x.mean(0), (8, 2)))
  mesh = jax.make_mesh((2, 4), ('a', 'b'))
  tx2 = parallel.aggregate(('a', 'b'), reduction='sum')
  f = jax.jit(jax.shard_map(lambda v: tx2.update(v, tx2.init(v))[0], mesh=mesh,
                            in_specs=P(('a', 'b')), out_specs=P()))
  np.testing.assert_allclose(f(jax.device_put(x, NamedSharding(mesh, P(('a', 'b'))))),
                             x.sum(0, keepdims=True))


def test_aggregate_keeps_dtype_and_empty_trees():
  tx = parallel.aggregate('d')
  u = jax.vmap(lambda x: tx.update(x, tx.init(x))[0], axis_name='d')(
      {'h': jnp.ones((2, 3), jnp.bfloat16), 'm': optax.MaskedNode()})
  assert u['h'].dtype == jnp.bfloat16
  assert isinstance(u['m'], optax.MaskedNode)
  assert jax.vmap(lambda x: tx.update(x, tx.init(x))[0], axis_name='d')(
      {'w': jnp.ones((2, 1))})['w'].shape == (2, 1)


@pytest.mark.parametrize('jit', [False, True])
def test_aggregate_outside_mapped_context_names_axis(jit):
  tx = parallel.aggregate('data')
  g = {'w': jnp.ones(3)}
  update = (jax.jit(tx.update) if jit else tx.update)
  with pytest.raises(NameError, match=r"axis name 'data' is not bound.*shard_map"):
    update(g, tx.init(g))
  # An empty tree issues no collective, but the missing axis is still caught.
  with pytest.raises(NameError, match="'data'"):
    tx.update({}, tx.init({}))


@needs_n
def test_aggregate_wrong_axis_inside_pmap():
  tx = parallel.aggregate('data')
  with pytest.raises(NameError, match="'data'.*jax.pmap"):
    jax.pmap(lambda v: tx.update(v, tx.init(v))[0], axis_name='batch')(jnp.ones((8, 2)))


@pytest.mark.parametrize('kwargs, error, match', [
    (dict(axis_name=None), ValueError, 'axis_name'),
    (dict(axis_name=['data']), TypeError, 'axis_name'),
    (dict(axis_name=()), ValueError, 'axis_name'),
    (dict(axis_name='data', reduction='max'), ValueError, "reduction.*'mean', 'sum'"),
])
def test_aggregate_validation(kwargs, error, match):
  with pytest.raises(error, match=match):
    parallel.aggregate(**kwargs)


# --------------------------------------------------------------------------
# Train steps against single-device references.


def _params(seed=0):
  k = jax.random.split(jax.random.key(seed), 4)
  return {'dense': {'kernel': jax.random.normal(k[0], (6, 5)) * 0.5,
                    'bias': jax.random.normal(k[1], (5,)) * 0.1},
          'out': {'kernel': jax.random.normal(k[2], (5, 3)) * 0.5,
                  'bias': jax.random.normal(k[3], (3,)) * 0.1}}


def _loss(params, batch):
  h = jnp.tanh(batch['x'] @ params['dense']['kernel'] + params['dense']['bias'])
  logits = h @ params['out']['kernel'] + params['out']['bias']
  return optax.softmax_cross_entropy_with_integer_labels(logits, batch['y']).mean()


def _batches(steps, size=2 * N, seed=1):
  rng = np.random.default_rng(seed)
  return [{'x': rng.normal(size=(size, 6)).astype(np.float32),
           'y': rng.integers(0, 3, size=size).astype(np.int32)} for _ in range(steps)]


def _tx(mode, scope, axis):
  norm = ssgd_optax.unit_normalize(scope)
  share = parallel.aggregate(axis)
  sgd = optax.sgd(0.1, momentum=0.9)
  return optax.chain(norm, share, sgd) if mode == 'privacy' else optax.chain(share, norm, sgd)


@functools.lru_cache(maxsize=None)
def _reference(mode, scope, steps, n=N):
  """One device: each shard's gradient, normalised then averaged (privacy)
  or averaged then normalised (optimisation), then SGD with momentum."""
  sgd = optax.sgd(0.1, momentum=0.9)
  norm = ssgd_optax.unit_normalize(scope)
  normalize = lambda g: norm.update(g, norm.init(g))[0]

  @jax.jit
  def step(params, state, batch):
    shards = jax.tree.map(lambda x: x.reshape((n, -1) + x.shape[1:]), batch)
    grads = jax.vmap(jax.grad(_loss), in_axes=(None, 0))(params, shards)  # one per shard
    if mode == 'privacy':
      grads = jax.vmap(normalize)(grads)
    avg = jax.tree.map(lambda g: jnp.mean(g, 0), grads)
    if mode == 'optimization':
      avg = normalize(avg)
    updates, state = sgd.update(avg, state, params)
    return optax.apply_updates(params, updates), state

  params = _params()
  state = sgd.init(params)
  for batch in _batches(steps):
    params, state = step(params, state, batch)
  return params


def _run_pmap(tx, batches):
  step = parallel.pmap_train_step(_loss, tx, axis_name='batch')
  params = parallel.replicate(_params())
  state = parallel.replicate(tx.init(_params()))
  for b in batches:
    params, state, loss = step(params, state, parallel.split_for_pmap(b))
  assert np.asarray(loss).shape == (N,)
  # Every replica holds the same parameters.
  for leaf in jax.tree.leaves(params):
    np.testing.assert_array_equal(np.asarray(leaf), np.broadcast_to(np.asarray(leaf)[0],
                                                                    leaf.shape))
  return parallel.unreplicate(params)


def _run_shard_map(tx, batches, mesh=None):
  mesh = mesh or parallel.data_mesh(N)
  step = parallel.shard_map_train_step(_loss, tx, mesh, axis_name='data')
  params = parallel.replicate_on_mesh(_params(), mesh)
  state = tx.init(params)
  for b in batches:
    params, state, loss = step(params, state, parallel.shard_batch(b, mesh))
  assert loss.shape == ()
  assert all(leaf.sharding.is_fully_replicated for leaf in jax.tree.leaves(params))
  return params


@needs_n
@pytest.mark.parametrize('scope', SCOPES)
@pytest.mark.parametrize('mode', ['privacy', 'optimization'])
@pytest.mark.parametrize('backend', ['pmap', 'shard_map'])
def test_train_step_matches_reference(backend, mode, scope):
  batches = _batches(2)
  if backend == 'pmap':
    got = _run_pmap(_tx(mode, scope, 'batch'), batches)
  else:
    got = _run_shard_map(_tx(mode, scope, 'data'), batches)
  _close(got, _reference(mode, scope, 2))
  # The two modes really differ, so the comparison can tell them apart.
  other = _reference('optimization' if mode == 'privacy' else 'privacy', scope, 2)
  assert max(float(jnp.max(jnp.abs(a - b))) for a, b in
             zip(jax.tree.leaves(got), jax.tree.leaves(other))) > 1e-3


@needs_n
def test_shard_map_step_on_explicit_and_auto_meshes_with_host_batch():
  batches = _batches(1)
  want = _reference('privacy', 'global', 1)
  for axis_type in (jax.sharding.AxisType.Explicit, jax.sharding.AxisType.Auto):
    mesh = jax.make_mesh((N,), ('data',), axis_types=(axis_type,))
    tx = _tx('privacy', 'global', 'data')
    step = parallel.shard_map_train_step(_loss, tx, mesh)
    # Plain host arrays: the step lays them out itself.
    params, _, _ = step(_params(), tx.init(_params()), batches[0])
    _close(params, want)


@needs_n
def test_default_shard_map_autodiff_already_sums_replicated_gradients():
  """Why shard_map_train_step sets check_vma=False (a canary for JAX changes)."""
  mesh = parallel.data_mesh(N)
  x = parallel.shard_batch(jnp.arange(8.), mesh)

  def grad_of(check_vma):
    f = lambda w, xs: jax.grad(lambda w: jnp.sum(xs * w))(w)
    return jax.jit(jax.shard_map(f, mesh=mesh, in_specs=(P(), P('data')),
                                 out_specs=P('data'), check_vma=check_vma))(jnp.ones(1), x)

  np.testing.assert_allclose(grad_of(False), np.arange(8.))  # each device's own
  np.testing.assert_allclose(grad_of(True), np.full(8, 28.))  # already psum-med


@needs_n
def test_has_aux_metrics_are_averaged():
  def loss_aux(p, b):
    loss = _loss(p, b)
    return loss, {'loss_copy': loss}

  mesh = parallel.data_mesh(N)
  tx = _tx('privacy', 'global', 'data')
  step = parallel.shard_map_train_step(loss_aux, tx, mesh, has_aux=True)
  b = _batches(1)[0]
  _, _, (loss, aux) = step(_params(), tx.init(_params()), b)
  np.testing.assert_allclose(loss, _loss(_params(), b), rtol=1e-5)
  np.testing.assert_allclose(aux['loss_copy'], loss)
  bad = parallel.shard_map_train_step(lambda p, b: (_loss(p, b), jnp.int32(1)), tx, mesh,
                                      has_aux=True)
  with pytest.raises(TypeError, match='floating point'):
    bad(_params(), tx.init(_params()), b)


@needs_n
def test_step_validation():
  tx = _tx('privacy', 'global', 'data')
  mesh = parallel.data_mesh(N)
  with pytest.raises(TypeError, match='loss_fn'):
    parallel.pmap_train_step(None, tx)
  with pytest.raises(TypeError, match='tx must be an optax.GradientTransformation'):
    parallel.pmap_train_step(_loss, optax.sgd)
  with pytest.raises(TypeError, match='has_aux'):
    parallel.pmap_train_step(_loss, tx, has_aux=1)
  with pytest.raises(TypeError, match='mesh'):
    parallel.shard_map_train_step(_loss, tx, 'mesh')
  with pytest.raises(ValueError, match="'batch'.*mesh.axis_names"):
    parallel.shard_map_train_step(_loss, tx, mesh, axis_name='batch')


# --------------------------------------------------------------------------
# Communication: the compiled HLO.


def _pmap_text(tx):
  step = parallel.pmap_train_step(_loss, tx, axis_name='batch')
  args = (parallel.replicate(_params()), parallel.replicate(tx.init(_params())),
          parallel.split_for_pmap(_batches(1)[0]))
  return step.lower(*args).compile().as_text()


def _shard_map_text(tx):
  mesh = parallel.data_mesh(N)
  step = parallel.shard_map_train_step(_loss, tx, mesh)
  params = parallel.replicate_on_mesh(_params(), mesh)
  return step.lower(params, tx.init(params),
                    parallel.shard_batch(_batches(1)[0], mesh)).compile().as_text()


@needs_n
@pytest.mark.parametrize('backend', ['pmap', 'shard_map'])
def test_ssgd_adds_no_all_reduce(backend):
  axis = 'batch' if backend == 'pmap' else 'data'
  text = _pmap_text if backend == 'pmap' else _shard_map_text
  sgd = optax.chain(parallel.aggregate(axis), optax.sgd(0.1))
  n_sgd = testing.count_all_reduces(text(sgd))
  assert n_sgd >= 1
  for mode in ('privacy', 'optimization'):
    for scope in ('per_layer',):
      norm, share = ssgd_optax.unit_normalize(scope), parallel.aggregate(axis)
      parts = (norm, share) if mode == 'privacy' else (share, norm)
      tx = optax.chain(*parts, optax.sgd(0.1))
      assert testing.count_all_reduces(text(tx)) <= n_sgd, (mode, scope)
  # The count does see extra communication: norms psum-med over the data axis
  # (a wrong use of axis_name) add all-reduces.
  leaky = optax.chain(ssgd_optax.unit_normalize(axis_name=axis), parallel.aggregate(axis),
                      optax.sgd(0.1))
  assert testing.count_all_reduces(text(leaky)) > n_sgd


def test_count_all_reduces_parses_hlo():
  text = '\n'.join([
      '%all-reduce = (f32[3]{0}, f32[]) all-reduce(%a, %b), channel_id=1, to_apply=%add',
      '%get-tuple-element.1 = f32[3]{0} get-tuple-element(%all-reduce), index=0',
      '%ars = f32[2]{0} all-reduce-start(f32[2]{0} %c), to_apply=%add',
      '%ard = f32[2]{0} all-reduce-done(f32[2]{0} %ars)',
      '%x = f32[] add(%p, %q)',
  ])
  assert testing.count_all_reduces(text) == 2
  with pytest.raises(TypeError, match='hlo_text'):
    testing.count_all_reduces(None)


# --------------------------------------------------------------------------
# Model parallelism: norms of leaves sharded over devices.


def _model_tree(seed=3, scale=1.0):
  k = jax.random.split(jax.random.key(seed), 4)
  return {'a': {'kernel': jax.random.normal(k[0], (3, 8)) * scale,
                'bias': jax.random.normal(k[1], (8,)) * scale},
          'b': {'kernel': jax.random.normal(k[2], (16, 8)) * scale,
                'bias': jax.random.normal(k[3], (8,)) * scale}}


# Every leaf is split over 'model' along its last axis.
_MODEL_SPEC = {'a': {'kernel': P(None, 'model'), 'bias': P('model')},
               'b': {'kernel': P(None, 'model'), 'bias': P('model')}}


@needs_n
@pytest.mark.parametrize('scope, scale', [(s, 1.0) for s in SCOPES] + [
    ('per_layer', 1e30), ('per_layer', 1e-30)])  # the overflow/underflow rescue (pmax)
def test_model_parallel_norms_equal_unsharded(scope, scale):
  tree = _model_tree(scale=scale)
  mesh = jax.make_mesh((N,), ('model',))
  sharded = jax.device_put(tree, jax.tree.map(lambda s: NamedSharding(mesh, s), _MODEL_SPEC))
  tx = ssgd_optax.unit_normalize(scope, axis_name='model')

  def per_device(g):
    return tx.update(g, tx.init(g))[0], ssgd_optax.group_norms(g, scope, axis_name='model')

  out_norms = jax.tree.map(lambda _: P(), _MODEL_SPEC)
  u, norms = jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=(_MODEL_SPEC,),
                                   out_specs=(_MODEL_SPEC, out_norms)))(sharded)
  ref = ssgd_optax.unit_normalize(scope)
  _close(u, ref.update(tree, ref.init(tree))[0])
  _close(norms, ssgd_optax.group_norms(tree, scope), rtol=2e-5, atol=0)
  assert u['b']['kernel'].sharding.spec == P(None, 'model')


@needs_n
@pytest.mark.parametrize('scope', SCOPES)
def test_data_and_model_parallel_privacy_mode(scope):
  """2-D mesh: each data shard normalises its model-sharded gradient (norm over
  'model'), then the data axis averages; equals the unsharded reference."""
  mesh = jax.make_mesh((2, 4), ('data', 'model'))
  trees = [_model_tree(seed=s) for s in (10, 11)]
  stacked = jax.tree.map(lambda *x: jnp.stack(x), *trees)
  spec = jax.tree.map(lambda s: P('data', *s), _MODEL_SPEC)
  tx = optax.chain(ssgd_optax.unit_normalize(scope, axis_name='model'), parallel.aggregate('data'))

  def per_device(g):
    g = jax.tree.map(lambda x: x[0], g)
    return tx.update(g, tx.init(g))[0]

  u = jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=(spec,), out_specs=_MODEL_SPEC,
                            check_vma=False))(
      jax.device_put(stacked, jax.tree.map(lambda s: NamedSharding(mesh, s), spec)))
  ref = ssgd_optax.unit_normalize(scope)
  want = jax.tree.map(lambda a, b: (a + b) / 2,
                      *[ref.update(t, ref.init(t))[0] for t in trees])
  _close(u, want)


# --------------------------------------------------------------------------
# jit with NamedSharding.


@needs_n
@pytest.mark.parametrize('axis_type', ['Explicit', 'Auto'])
@pytest.mark.parametrize('scope', ['global', 'per_layer'])
def test_jit_named_sharding_keeps_shardings(scope, axis_type):
  at = getattr(jax.sharding.AxisType, axis_type)
  mesh = jax.make_mesh((2, 4), ('data', 'model'), axis_types=(at, at))
  params = _model_tree(seed=5)
  shardings = jax.tree.map(lambda s: NamedSharding(mesh, s), _MODEL_SPEC)
  # The second layer's bias replicated: jit needs no per-leaf care.
  shardings['b']['bias'] = NamedSharding(mesh, P())
  params_s = jax.device_put(params, shardings)
  rng = np.random.default_rng(0)
  batch = {'x': rng.normal(size=(8, 3)).astype(np.float32),
           'y': rng.normal(size=(8, 8)).astype(np.float32)}
  batch_s = jax.device_put(batch, NamedSharding(mesh, P('data')))

  def loss(p, b):
    h = jnp.tanh(b['x'] @ p['a']['kernel'] + p['a']['bias'])
    h = jnp.concatenate([h, h], axis=-1) @ p['b']['kernel'] + p['b']['bias']
    return jnp.mean((h - b['y']) ** 2)

  tx = ssgd_optax.ssgd(0.1, scope=scope, momentum=0.9)

  def step(p, s, b):
    g = jax.grad(loss)(p, b)
    u, s = tx.update(g, s, p)
    return optax.apply_updates(p, u), s, u

  state_s = tx.init(params_s)
  new_p, new_s, u = jax.jit(step)(params_s, state_s, batch_s)
  # Explicit axes carry shardings in the types, so every leaf keeps its own.
  # Auto axes leave outputs to XLA's propagation, which keeps the sharded
  # leaves but may split a replicated one (pin those with out_shardings).
  check = (lambda x, sh: _same_sharding(x, sh)) if axis_type == 'Explicit' else (
      lambda x, sh: sh.is_fully_replicated or _same_sharding(x, sh))
  for tree in (new_p, u, new_s[1].trace):
    jax.tree.map(check, tree, shardings)
  want_p, _, want_u = jax.jit(step)(params, tx.init(params), batch)  # one device
  _close(u, want_u, rtol=1e-5, atol=1e-7)
  _close(new_p, want_p, rtol=1e-5, atol=1e-7)


def _same_sharding(x, sharding):
  assert x.sharding.is_equivalent_to(sharding, x.ndim), (x.sharding, sharding)


# --------------------------------------------------------------------------
# Layout helpers.


@needs_n
def test_replicate_unreplicate_round_trip():
  tree = {'w': jnp.arange(6.).reshape(2, 3), 's': 2.0, 'n': None}
  rep = parallel.replicate(tree)
  assert rep['w'].shape == (N, 2, 3) and rep['s'].shape == (N,)
  assert {s.device for s in rep['w'].addressable_shards} == set(jax.local_devices())
  assert rep['n'] is None
  back = parallel.unreplicate(rep)
  np.testing.assert_array_equal(back['w'], tree['w'])
  assert float(back['s']) == 2.0
  with pytest.raises(TypeError, match='devices'):
    parallel.replicate(tree, devices=['cpu:0'])
  with pytest.raises(ValueError, match='leading device axis'):
    parallel.unreplicate(jnp.float32(1.0))


@needs_n
def test_split_for_pmap():
  x = np.arange(32.).reshape(16, 2)
  s = parallel.split_for_pmap({'x': x, 'y': np.arange(16)})
  assert s['x'].shape == (N, 2, 2)
  np.testing.assert_array_equal(np.asarray(s['x']).reshape(16, 2), x)
  assert s['x'].addressable_shards[3].device == jax.local_devices()[3]
  with pytest.raises(ValueError, match='divisible by the number of devices 8'):
    parallel.split_for_pmap(np.ones((12, 2)))
  with pytest.raises(ValueError, match='same leading'):
    parallel.split_for_pmap({'x': np.ones((16, 2)), 'y': np.ones(8)})


@needs_n
def test_data_mesh_and_shard_batch():
  mesh = parallel.data_mesh(4, 'dp')
  assert dict(mesh.shape) == {'dp': 4}
  b = parallel.shard_batch({'x': np.ones((8, 3))}, mesh, 'dp')
  assert b['x'].sharding.spec == P('dp') and b['x'].shape == (8, 3)
  with pytest.raises(ValueError, match='exceeds'):
    parallel.data_mesh(N + 1)
  with pytest.raises(TypeError, match='num_devices'):
    parallel.data_mesh(2.0)
  with pytest.raises(ValueError, match='divisible by the 4 devices'):
    parallel.shard_batch(np.ones((6, 3)), mesh, 'dp')
  with pytest.raises(ValueError, match="not in mesh.axis_names"):
    parallel.shard_batch(np.ones((8, 3)), mesh, 'data')
  with pytest.raises(ValueError, match='no array leaves'):
    parallel.shard_batch({}, mesh, 'dp')
  r = parallel.replicate_on_mesh({'w': np.ones(3)}, mesh)
  assert r['w'].sharding.is_fully_replicated


# --------------------------------------------------------------------------
# Example and benchmark, on tiny settings.




@pytest.mark.devices(2)
@pytest.mark.parametrize('backend', ['pmap', 'shard_map'])
def test_example_data_parallel(backend, capsys):
  example = _load('examples/data_parallel.py')
  acc = example.main(['--backend', backend, '--devices', '2', '--epochs', '1',
                      '--train-size', '128', '--batch-size', '32', '--features', '2'])
  assert 0.0 <= acc <= 1.0
  assert 'test accuracy' in capsys.readouterr().out


@pytest.mark.slow  # benchmark smoke test: run with -m slow
@pytest.mark.devices(2)
def test_benchmark_quick(tmp_path):
  bench = _load('benchmarks/parallel.py')
  out = tmp_path / 'parallel.md'
  bench.main(['--quick', '--out', str(out)])
  text = out.read_text()
  assert '| devices |' in text and 'all-reduce' in text



@pytest.mark.slow
def test_accelerator_script_quick_on_cpu(tmp_path):
  """benchmarks/accelerator.sh --quick runs every step on the CPU (CI smoke
  test; a few minutes on 2 cores, hence slow)."""
  import os
  import subprocess
  import sys
  from ssgd_examples import ROOT
  out = tmp_path / 'results'
  env = {k: v for k, v in os.environ.items() if k not in ('XLA_FLAGS', 'JAX_PLATFORMS')}
  env.update(JAX_PLATFORMS='cpu', PYTHON=sys.executable)
  proc = subprocess.run(['bash', str(ROOT / 'benchmarks/accelerator.sh'), '--quick', '--out',
                         str(out)], cwd=ROOT, env=env, capture_output=True, text=True,
                        check=False)
  summary = (out / 'README.md').read_text()
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  for step in ('train', 'transform_overhead', 'dp', 'attack_speed', 'tests'):
    assert f'| {step} | ok |' in summary, summary
  assert 'quick (smoke test' in summary and 'passed' in summary
  for table in ('transform_overhead.md', 'dp.md', 'attack_speed.md', 'train/metrics.json'):
    assert (out / table).is_file(), table
  # A wrong flag is refused before any work.
  bad = subprocess.run(['bash', str(ROOT / 'benchmarks/accelerator.sh'), '--fast'], cwd=ROOT,
                       env=env, capture_output=True, text=True, check=False)
  assert bad.returncode == 2 and "unknown argument '--fast'" in bad.stderr
