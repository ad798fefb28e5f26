# Copyright 2026 The ssgd_optax Authors. Licensed under the Apache License 2.0.
"""Tests of per-example gradients: values, microbatching, masks, NNX, devices."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from ssgd_optax import per_example


def _loss(params, x, y):
  h = jnp.tanh(x @ params['w1'] + params['b1'])
  return (jnp.dot(h, params['w2']) - y) ** 2


def _problem(b=7, seed=0):
  k = jax.random.split(jax.random.key(seed), 5)
  params = {'w1': jax.random.normal(k[0], (4, 3)), 'b1': jax.random.normal(k[1], (3,)),
            'w2': jax.random.normal(k[2], (3,))}
  x = jax.random.normal(k[3], (b, 4))
  y = jax.random.normal(k[4], (b,))
  return params, x, y


def _loop_grads(params, x, y):
  rows = [jax.grad(_loss)(params, x[i], y[i]) for i in range(x.shape[0])]
  return jax.tree.map(lambda *r: jnp.stack(r), *rows)


@pytest.mark.parametrize('microbatch_size', [None, 1, 3, 7, 20])
def test_matches_a_python_loop(microbatch_size):
  params, x, y = _problem()
  got = jax.jit(per_example.per_example_grads(_loss, microbatch_size=microbatch_size))(
      params, x, y)
  want = _loop_grads(params, x, y)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), got, want)


def test_sum_equals_batch_gradient():
  params, x, y = _problem()
  got = per_example.per_example_grads(_loss)(params, x, y)
  batch = jax.grad(lambda p: jnp.sum(jax.vmap(_loss, (None, 0, 0))(p, x, y)))(params)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a.sum(0), b, rtol=1e-5, atol=1e-6),
               got, batch)


@pytest.mark.parametrize('microbatch_size', [None, 2])
def test_masked_rows_are_exact_zeros_even_when_nan(microbatch_size):
  params, x, y = _problem()
  x = x.at[5:].set(jnp.nan)
  mask = jnp.arange(7) < 5
  got = per_example.per_example_grads(_loss, microbatch_size=microbatch_size)(
      params, x, y, mask=mask)
  want = _loop_grads(params, x[:5], y[:5])
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(a[:5], b, rtol=1e-5, atol=1e-6)
    assert np.all(np.asarray(a[5:]) == 0)


def test_has_aux_and_broadcast_arguments():
  params, x, y = _problem()

  def loss(p, x, y, scale):
    value = scale * _loss(p, x, y)
    return value, value

  fn = per_example.per_example_grads(loss, has_aux=True, batch_argnums=(1, 2))
  grads, aux = fn(params, x, y, 2.0)
  assert aux.shape == (7,)
  np.testing.assert_allclose(aux, 2 * jax.vmap(_loss, (None, 0, 0))(params, x, y), rtol=1e-6)
  want = _loop_grads(params, x, y)
  np.testing.assert_allclose(grads['w2'], 2 * want['w2'], rtol=1e-5)


class _MLP(nnx.Module):

  def __init__(self, rngs):
    self.l1 = nnx.Linear(4, 5, rngs=rngs)
    self.l2 = nnx.Linear(5, 3, rngs=rngs)

  def __call__(self, x):
    return self.l2(nnx.relu(self.l1(x)))


def _nnx_loss(model, x, y):
  return optax.softmax_cross_entropy_with_integer_labels(model(x), y).sum()


@pytest.mark.parametrize('microbatch_size', [None, 2])
def test_nnx_matches_nnx_grad_per_example(microbatch_size):
  model = _MLP(nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(1), (5, 4))
  y = jnp.array([0, 1, 2, 0, 1])
  mask = jnp.array([1, 1, 1, 1, 0])

  @nnx.jit
  def run(model, x, y, mask):
    return per_example.nnx_per_example_grads(_nnx_loss, model, x, y, mask=mask,
                                             microbatch_size=microbatch_size)

  got = run(model, x, y, mask)
  for i in range(5):
    want = nnx.grad(_nnx_loss)(model, x[i:i + 1], y[i:i + 1])
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
      np.testing.assert_allclose(a[i], b if i < 4 else jnp.zeros_like(b), rtol=1e-5, atol=1e-6)
  assert jax.tree.structure(jax.tree.map(lambda a: a[0], got)) == jax.tree.structure(
      nnx.state(model, nnx.Param))


def test_sharded_over_devices_matches_single_device():
  devices = jax.devices()
  if len(devices) < 8:
    pytest.skip('needs 8 (virtual) devices')
  mesh = jax.make_mesh((8,), ('data',), axis_types=(jax.sharding.AxisType.Auto,))
  params, x, y = _problem(b=16)
  fn = per_example.per_example_grads(_loss)
  want = fn(params, x, y)

  @functools.partial(jax.shard_map, mesh=mesh, in_specs=(P(), P('data'), P('data')),
                     out_specs=P('data'))
  def sharded(p, x, y):
    return per_example.per_example_grads(_loss, axis_name='data')(p, x, y)

  got = jax.jit(sharded)(params, x, y)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), got, want)
  # jit with a batch sharding: same values, output sharded along the batch.
  xs = jax.device_put(x, jax.NamedSharding(mesh, P('data')))
  got2 = jax.jit(fn)(params, xs, y)
  np.testing.assert_allclose(got2['w1'], want['w1'], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('call,err,match', [
    (lambda: per_example.per_example_grads(3), TypeError, 'fun must be callable'),
    (lambda: per_example.per_example_grads(_loss, microbatch_size=0), ValueError,
     'microbatch_size'),
    (lambda: per_example.per_example_grads(_loss, microbatch_size=2.5), TypeError,
     'microbatch_size'),
    (lambda: per_example.per_example_grads(_loss, argnums=1, batch_argnums=(1,)), ValueError,
     'batch_argnums'),
    (lambda: per_example.per_example_grads(_loss)(_problem()[0], jnp.ones((3, 4)), jnp.ones(2)),
     ValueError, 'leading batch size'),
    (lambda: per_example.per_example_grads(_loss)(_problem()[0], jnp.ones((3, 4)), jnp.ones(3),
                                                  mask=jnp.ones(4)), ValueError,
     r'mask must have shape \(3,\).*got \(4,\)'),
    (lambda: per_example.mask_rows({'a': jnp.ones((2, 2))}, jnp.ones((2, 1))), ValueError,
     'vector'),
    (lambda: per_example.nnx_per_example_grads(_nnx_loss, object(), jnp.ones((2, 4))),
     TypeError, 'nnx.Module'),
    (lambda: per_example.nnx_per_example_grads(_nnx_loss, _MLP(nnx.Rngs(0))), ValueError,
     'at least one batched'),
])
def test_bad_arguments(call, err, match):
  with pytest.raises(err, match=match):
    call()


@pytest.mark.parametrize('microbatch_size', [None, 2])
def test_a_nonfinite_example_stays_in_its_own_row(microbatch_size):
  # An Inf pixel must not leak into other rows (the DP transforms drop the
  # row by default; a leak would make that impossible).
  params, x, y = _problem()
  x = x.at[3, 0].set(jnp.inf)
  got = jax.jit(per_example.per_example_grads(_loss, microbatch_size=microbatch_size))(
      params, x, y)
  finite = np.stack([np.isfinite(np.asarray(g).reshape(7, -1)).all(1)
                     for g in jax.tree.leaves(got)]).all(0)
  assert list(finite) == [True, True, True, False, True, True, True]
  want = _loop_grads(params, jnp.delete(x, 3, 0), jnp.delete(y, 3, 0))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(np.delete(a, 3, 0), b, rtol=1e-4,
                                                       atol=1e-5), got, want)
