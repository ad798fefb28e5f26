# Copyright 2026 The ssgd_optax Authors. Licensed under the Apache License 2.0.
"""Tests for ssgd_examples.models: shapes, no BatchNorm, per-example independence."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from ssgd_examples import models


SMALL = {
  'mlp': dict(hidden=(16, 8)),
  'cnn': dict(channels=(4, 8), dense=16),
  'resnet': dict(widths=(4, 8), groups=2),
}


@pytest.mark.parametrize('name, shape', [
  ('mlp', (28, 28, 1)), ('cnn', (28, 28, 1)), ('cnn', (8, 8, 1)),
  ('resnet', (32, 32, 3)), ('resnet', (8, 8, 1)),
])
def test_output_shapes(name, shape):
  model = nnx.eval_shape(lambda: models.make_model(
      name, shape, 10, rngs=nnx.Rngs(0), **SMALL[name]))
  out = nnx.eval_shape(lambda m, x: m(x), model, jnp.zeros((3,) + shape))
  assert out.shape == (3, 10) and out.dtype == jnp.float32


@pytest.mark.parametrize('name', ['mlp', 'cnn', 'resnet'])
def test_finite_and_examples_do_not_mix(name):
  """No BatchNorm: example 0's logits ignore the rest of the batch."""
  shape = (8, 8, 3)
  x = jax.random.normal(jax.random.key(2), (4,) + shape)

  @jax.jit  # init and both calls in one program: one compile
  def logits(x):
    model = models.make_model(name, shape, 10, rngs=nnx.Rngs(0),
                              **SMALL[name])
    return model(x), model(x.at[1:].set(100.0))

  full, other = logits(x)
  assert bool(jnp.all(jnp.isfinite(full)))
  assert float(jnp.abs(full).sum()) > 0
  np.testing.assert_allclose(full[0], other[0], rtol=1e-5, atol=1e-5)
  assert not np.allclose(full[1], other[1])


def test_no_batchnorm_anywhere():
  for name, shape in (('mlp', (8, 8, 1)), ('cnn', (8, 8, 1)),
                      ('resnet', (8, 8, 3))):
    model = nnx.eval_shape(lambda: models.make_model(
        name, shape, 10, rngs=nnx.Rngs(0), **SMALL[name]))
    kinds = {type(m).__name__ for _, m in nnx.iter_graph(model)}
    assert 'BatchNorm' not in kinds, (name, kinds)
  resnet = nnx.eval_shape(lambda: models.ResNet((8, 8, 3), 10, widths=(4, 8),
                                                rngs=nnx.Rngs(0)))
  assert 'GroupNorm' in {type(m).__name__ for _, m in nnx.iter_graph(resnet)}


def test_count_params_matches_the_formula():
  mlp = nnx.eval_shape(lambda: models.MLP((28, 28, 1), 10, hidden=(128,),
                                          rngs=nnx.Rngs(0)))
  assert models.count_params(mlp) == 784 * 128 + 128 + 128 * 10 + 10
  cnn = nnx.eval_shape(lambda: models.CNN((28, 28, 1), 10, rngs=nnx.Rngs(0)))
  assert models.count_params(cnn) == (
      9 * 16 + 16 + 9 * 16 * 32 + 32 + 7 * 7 * 32 * 128 + 128 + 128 * 10 + 10)
  logreg = nnx.eval_shape(lambda: models.MLP((8, 8, 1), 10, hidden=(),
                                             rngs=nnx.Rngs(0)))
  assert models.count_params(logreg) == 64 * 10 + 10


def test_same_seed_same_init_and_different_seed_differs():
  init = jax.jit(lambda key: nnx.state(models.MLP(
      (8, 8, 1), 10, hidden=(8,), rngs=nnx.Rngs(key)), nnx.Param))
  a, b, c = (init(jax.random.key(s)) for s in (0, 0, 1))
  np.testing.assert_array_equal(a['head']['kernel'][...],
                                b['head']['kernel'][...])
  assert not np.array_equal(a['head']['kernel'][...], c['head']['kernel'][...])


def test_resnet_blocks_start_as_identity():
  """Zero-initialised last GroupNorm scale: each block is x -> act(x)."""
  x = jax.nn.relu(jax.random.normal(jax.random.key(0), (2, 8, 8, 4)))
  block = jax.jit(lambda x: models.ResNet(
      (8, 8, 4), 10, widths=(4,), groups=2, rngs=nnx.Rngs(0)).blocks[0](x))
  np.testing.assert_allclose(block(x), x, atol=1e-6)


@pytest.mark.parametrize('activation', ['tanh', 'sigmoid', 'gelu'])
def test_smooth_activations_have_second_derivatives(activation):
  x = jax.random.normal(jax.random.key(3), (1, 4, 4, 1))

  @jax.jit
  def hvp(x):
    model = models.MLP((4, 4, 1), 10, hidden=(8,), activation=activation,
                       rngs=nnx.Rngs(0))
    loss = lambda x: optax.softmax_cross_entropy_with_integer_labels(
        model(x), jnp.array([3])).sum()
    return jax.jvp(jax.grad(loss), (x,), (jnp.ones_like(x),))[1]

  out = hvp(x)
  assert bool(jnp.all(jnp.isfinite(out))) and float(jnp.abs(out).sum()) > 0


def test_ssgd_per_layer_groups_kernel_and_bias():
  """per_layer scope sees one group per Linear/Conv layer of these models."""
  from ssgd_optax import _grouping as grouping
  model = nnx.eval_shape(lambda: models.CNN((8, 8, 1), 10, channels=(2, 4),
                                            dense=8, rngs=nnx.Rngs(0)))
  params = nnx.state(model, nnx.Param)
  assert grouping.resolve_groups(params, 'per_layer').num_groups == 4
  assert grouping.resolve_groups(params, 'per_leaf').num_groups == 8


@pytest.mark.parametrize('kwargs, exc, match', [
  (dict(name='vit'), ValueError, "model must be one of 'mlp'"),
  (dict(input_shape=(28, 28)), ValueError, r'input_shape must be \(height'),
  (dict(input_shape=(28, 0, 1)), ValueError, 'input_shape must hold ints'),
  (dict(num_classes=0), ValueError, 'num_classes'),
  (dict(hidden=16), TypeError, 'hidden must be a sequence'),
  (dict(hidden=(16, -1)), ValueError, 'hidden must hold ints >= 1'),
  (dict(activation='swish'), ValueError, "activation must be one of"),
  (dict(name='cnn', input_shape=(30, 30, 1)), ValueError, 'divisible by 4'),
  (dict(name='cnn', channels=(4,)), ValueError, 'channels must be two ints'),
  (dict(name='resnet', widths=()), ValueError, 'widths must not be empty'),
  (dict(name='resnet', blocks_per_stage=0), ValueError, 'blocks_per_stage'),
])
def test_bad_arguments(kwargs, exc, match):
  args = dict(name='mlp', input_shape=(28, 28, 1), num_classes=10)
  args.update(kwargs)
  name = args.pop('name')
  shape = args.pop('input_shape')
  classes = args.pop('num_classes')
  with pytest.raises(exc, match=match):
    models.make_model(name, shape, classes, rngs=nnx.Rngs(0), **args)
