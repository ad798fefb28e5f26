# Copyright 2026 The ssgd_optax Authors. Licensed under the Apache License 2.0.
"""Tests for the clipping and backprop-clipping layers of ssgd_optax.privacy."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from ssgd_examples import models as models_lib
from ssgd_optax import privacy

C_IN, C_OUT = 3.0, 0.5


def _kernel_grad_norms(layer, x, upstream):
  """Per-example kernel-gradient norms, computed independently with vmap."""
  graphdef, params, rest = nnx.split(layer, nnx.Param, ...)

  def one(p, xi, ui):
    m = nnx.merge(graphdef, p, rest)
    return jnp.sum(m(xi[None]) * ui[None])

  g = jax.jit(jax.vmap(jax.grad(one), in_axes=(None, 0, 0)))(params, x, upstream)
  leaves = jax.tree.leaves(g)
  return jnp.sqrt(sum(jnp.sum(l.reshape(l.shape[0], -1) ** 2, axis=1) for l in leaves))


def _plain_l2_conv(conv):
  """The wrong recipe: plain L2 clipping of a conv's upstream gradient."""
  return lambda x: privacy.clip_upstream(conv(privacy.clip_inputs(x, C_IN)), C_OUT, 'l2')


# ---------------------------------------------------------------------------
# The sensitivity bound.


def test_dense_kernel_gradient_bounded():
  layer = privacy.ClippedLinear(20, 7, input_bound=C_IN, grad_bound=C_OUT, rngs=nnx.Rngs(0))
  kx, ku = jax.random.split(jax.random.key(0))
  x = 10 * jax.random.normal(kx, (16, 20)) * jnp.logspace(-3, 2, 16)[:, None]
  u = 10 * jax.random.normal(ku, (16, 7)) * jnp.logspace(2, -3, 16)[:, None]
  norms = _kernel_grad_norms(layer, x, u)
  assert (norms <= C_IN * C_OUT * (1 + 1e-5)).all()
  assert norms.max() > 0.99 * C_IN * C_OUT  # The bound is reached, not loose.


def test_dense_on_sequences_uses_the_mixed_norm():
  layer = privacy.ClippedLinear(4, 3, input_bound=C_IN, grad_bound=C_OUT, rngs=nnx.Rngs(1))
  x = jnp.ones((2, 10, 4))  # Same token repeated: worst case for plain L2.
  u = jnp.ones((2, 10, 3))
  assert (_kernel_grad_norms(layer, x, u) <= C_IN * C_OUT * (1 + 1e-5)).all()


@pytest.mark.parametrize('kwargs', [
    dict(kernel_size=(3, 3)),
    dict(kernel_size=(4, 4), strides=2, padding='VALID'),
    dict(kernel_size=(3, 3), kernel_dilation=2),
])
def test_conv_kernel_gradient_bounded_random(kwargs):
  layer = privacy.ClippedConv(2, 3, input_bound=C_IN, grad_bound=C_OUT, rngs=nnx.Rngs(2),
                              **kwargs)
  x = 5 * jax.random.normal(jax.random.key(1), (6, 9, 9, 2))
  out_shape = layer(x).shape
  u = 5 * jax.random.normal(jax.random.key(2), out_shape)
  assert (_kernel_grad_norms(layer, x, u) <= C_IN * C_OUT * (1 + 1e-5)).all()


def test_conv_adversarial_constant_image_mixed_norm_holds_plain_l2_breaks():
  conv = nnx.Conv(1, 1, (3, 3), use_bias=False, rngs=nnx.Rngs(3))
  x = jnp.ones((1, 8, 8, 1))
  u = jnp.ones((1, 8, 8, 1))  # Coherent upstream gradient at every position.
  good = privacy.ClippedLayer(conv, input_bound=C_IN, grad_bound=C_OUT)
  assert _kernel_grad_norms(good, x, u)[0] <= C_IN * C_OUT * (1 + 1e-5)

  graphdef, params, rest = nnx.split(conv, nnx.Param, ...)

  def wrong(p):
    return jnp.sum(_plain_l2_conv(nnx.merge(graphdef, p, rest))(x) * u)

  g = jax.grad(wrong)(params)
  # Plain L2 clipping of the cotangent lets 2.5x the bound through here.
  assert jnp.linalg.norm(g['kernel'][...]) > 2 * C_IN * C_OUT


def test_bias_gradient_bounded_by_grad_bound():
  layer = privacy.ClippedConv(1, 2, (3, 3), input_bound=C_IN, grad_bound=C_OUT,
                              use_bias=True, rngs=nnx.Rngs(4))
  graphdef, params, rest = nnx.split(layer, nnx.Param, ...)
  x, u = jnp.ones((3, 6, 6, 1)), 7 * jnp.ones((3, 6, 6, 2))

  def one(p, xi, ui):
    return jnp.sum(nnx.merge(graphdef, p, rest)(xi[None]) * ui[None])

  g = jax.vmap(jax.grad(one), in_axes=(None, 0, 0))(params, x, u)
  bias = g['layer']['bias'][...]
  assert (jnp.linalg.norm(bias, axis=1) <= C_OUT * (1 + 1e-5)).all()
  s = privacy.sensitivities(layer)
  assert float(s['layer']['bias'][...]) == C_OUT
  assert float(s['layer']['kernel'][...]) == C_IN * C_OUT
  assert privacy.num_releases(layer) == 2


def _clipped_cnn():
  model = nnx.Sequential(
      nnx.Conv(1, 3, (3, 3), use_bias=False, rngs=nnx.Rngs(5)), nnx.relu,
      lambda h: h.reshape(h.shape[0], -1),
      nnx.Linear(6 * 6 * 3, 4, use_bias=True, rngs=nnx.Rngs(6)))
  return privacy.clip_layers(model, input_bound=C_IN, grad_bound=C_OUT)


def _ce(m, x, y):
  return optax.softmax_cross_entropy_with_integer_labels(m(x), y)


@nnx.jit
def _grad_sum(model, x, y, mask=None):
  return privacy.backprop_clip_grad_sum(_ce, model, x, y, mask=mask)


@jax.default_matmul_precision('highest')
def test_batched_gradient_equals_sum_of_clipped_per_example_gradients():
  # Exactness is the claim: TF32 matmuls (GPU default) would differ by ~1e-4.
  model = _clipped_cnn()
  x = 4 * jax.random.normal(jax.random.key(7), (5, 6, 6, 1))
  y = jnp.arange(5) % 4
  _, batched = _grad_sum(model, x, y)
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  per = jax.jit(jax.vmap(jax.grad(lambda p, xi, yi: _ce(nnx.merge(graphdef, p, rest), xi[None],
                                                        yi[None]).sum()),
                         in_axes=(None, 0, 0)))(params, x, y)
  summed = jax.tree.map(lambda g: g.sum(0), per)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
               batched, summed)
  # And every per-example tensor respects its own sensitivity.
  sens = privacy.sensitivities(model)
  jax.tree.map(
      lambda g, s: np.testing.assert_array_less(
          jnp.linalg.norm(g.reshape(g.shape[0], -1), axis=1), s * (1 + 1e-5)), per, sens)


def test_padded_rows_change_nothing():
  model = _clipped_cnn()
  x = jax.random.normal(jax.random.key(8), (6, 6, 6, 1))
  y = jnp.arange(6) % 4
  mask = jnp.array([1, 0, 1, 1, 0, 0], bool)
  garbage = x.at[~mask].set(1e30)  # Padding content must not matter.
  loss_m, g_m = _grad_sum(model, garbage, y, mask)
  loss_s, g_s = _grad_sum(model, x[mask], y[mask])
  np.testing.assert_allclose(loss_m, loss_s, rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-8), g_m, g_s)


@pytest.mark.slow
def test_huge_bounds_give_the_plain_model():
  plain = models_lib.StevensCNN(rngs=nnx.Rngs(9))
  clipped = privacy.clip_layers(models_lib.StevensCNN(rngs=nnx.Rngs(9)), input_bound=1e6,
                                grad_bound=1e6)
  x = jax.random.uniform(jax.random.key(10), (2, 28, 28, 1))
  y = jnp.array([1, 2])
  forward = nnx.jit(lambda m, x: m(x))
  np.testing.assert_allclose(forward(clipped, x), forward(plain, x), rtol=1e-6)
  g_plain = nnx.jit(nnx.grad(lambda m: _ce(m, x, y).sum()))(plain)
  _, g_clip = _grad_sum(clipped, x, y)
  for name in ('conv1', 'conv2', 'fc1', 'fc2'):
    np.testing.assert_allclose(g_clip[name]['layer']['kernel'][...],
                               g_plain[name]['kernel'][...], rtol=1e-4, atol=1e-7)
  assert privacy.num_releases(clipped) == 4


# ---------------------------------------------------------------------------
# Primitives.


def test_clip_upstream_is_identity_forward_and_clips_backward():
  z = jax.random.normal(jax.random.key(11), (4, 5, 5, 3))
  np.testing.assert_array_equal(privacy.clip_upstream(z, 0.1, 'conv'), z)
  for norm in privacy.NORMS:
    ct = jax.random.normal(jax.random.key(12), z.shape) * jnp.array([100, 1, 1e-4, 0])[:, None,
                                                                                        None, None]
    g = jax.grad(lambda z: jnp.sum(privacy.clip_upstream(z, 0.1, norm) * ct))(z)
    n_in, n_out = privacy.per_example_norm(ct, norm), privacy.per_example_norm(g, norm)
    np.testing.assert_allclose(n_out, jnp.minimum(n_in, 0.1), rtol=1e-5)
    np.testing.assert_array_equal(g[2:], ct[2:])  # Below the bound: untouched.


def test_clip_upstream_traced_bound_under_jit():
  f = jax.jit(lambda z, c: jax.grad(lambda z: jnp.sum(privacy.clip_upstream(z, c) * 3.0))(z))
  g = f(jnp.zeros((2, 4)), 0.5)
  np.testing.assert_allclose(jnp.linalg.norm(g, axis=1), 0.5, rtol=1e-6)


def test_mixed_norm_reference():
  x = jax.random.normal(jax.random.key(13), (3, 4, 5, 2))
  want = np.sqrt((np.abs(np.asarray(x)).sum(axis=(1, 2)) ** 2).sum(-1))
  np.testing.assert_allclose(privacy.per_example_norm(x, 'conv'), want, rtol=1e-5)
  np.testing.assert_allclose(privacy.per_example_norm(x[:, 0, 0], 'conv'),
                             privacy.per_example_norm(x[:, 0, 0], 'l2'), rtol=1e-6)


@pytest.mark.parametrize('scale', [1e-30, 1e-20, 1.0, 1e20, 1e30])
def test_huge_and_tiny_values(scale):
  x = jnp.array([[3.0, 4.0]]) * scale
  out = privacy.clip_inputs(x, 1.0)
  want = np.array([[0.6, 0.8]]) if scale >= 1.0 else np.asarray(x)
  np.testing.assert_allclose(out, want, rtol=1e-5)
  assert np.isfinite(out).all()


def test_zeros_nan_inf_and_zero_bound():
  x = jnp.array([[0.0, 0.0], [jnp.nan, 1.0], [jnp.inf, 1.0], [3.0, 4.0]])
  out = privacy.clip_inputs(x, 1.0)
  np.testing.assert_array_equal(out[0], [0.0, 0.0])
  # Default: a non-finite example is dropped (zeros), with a zero finite gradient.
  np.testing.assert_array_equal(out[1:3], 0.0)
  np.testing.assert_allclose(out[3], [0.6, 0.8], rtol=1e-6)
  g = jax.grad(lambda x: jnp.sum(privacy.clip_inputs(x, 1.0) * 2.0))(x)
  assert np.isfinite(g).all() and (g[1:3] == 0).all()
  # Cotangents too: a NaN cotangent example is zeroed, the others are kept.
  ct = x[::-1]
  g = jax.grad(lambda z: jnp.sum(privacy.clip_upstream(z, 10.0) * ct))(jnp.zeros((4, 2)))
  np.testing.assert_array_equal(g, jnp.array([[3.0, 4.0], [0, 0], [0, 0], [0, 0]]))
  # Opt-in propagation (voids the guarantee) keeps the old NaN behaviour.
  out = privacy.clip_inputs(x, 1.0, nonfinite='propagate')
  assert np.isnan(out[1]).all() and np.isnan(out[2]).all()
  # Finite entries whose norm overflows float32 are clipped, not NaN.
  big = privacy.clip_inputs(jnp.full((1, 4), 3e38), 1.0)
  assert np.isfinite(big).all() and float(jnp.linalg.norm(big)) <= 1.0 + 1e-6
  # Zero examples have a finite gradient through the clip.
  g = jax.grad(lambda x: jnp.sum(privacy.clip_inputs(x, 1.0)))(jnp.zeros((2, 3)))
  assert np.isfinite(g).all()
  np.testing.assert_array_equal(privacy.clip_inputs(jnp.ones((2, 3)), 0.0), 0.0)


@pytest.mark.parametrize('dtype', [jnp.bfloat16, jnp.float16])
def test_low_precision_dtypes_are_kept(dtype):
  x = (jnp.ones((2, 300)) * 100).astype(dtype)
  out = privacy.clip_inputs(x, 2.0)
  assert out.dtype == dtype
  np.testing.assert_allclose(np.linalg.norm(np.asarray(out, np.float32), axis=1), 2.0, rtol=2e-2)
  g = jax.grad(lambda z: jnp.sum(privacy.clip_upstream(z, 1.0, 'conv').astype(jnp.float32)
                                 * 1e3))(x)
  assert g.dtype == dtype and np.isfinite(np.asarray(g, np.float32)).all()


@pytest.mark.parametrize('call,err,match', [
    (lambda: privacy.clip_upstream(jnp.ones((2, 3)), 1.0, 'linf'), ValueError, "'l2', 'conv'"),
    (lambda: privacy.clip_upstream(jnp.ones((2, 3)), -1.0), ValueError, 'bound'),
    (lambda: privacy.clip_inputs(jnp.ones((2, 3), int), 1.0), TypeError, 'floating'),
    (lambda: privacy.clip_inputs(jnp.float32(1.0), 1.0), ValueError, 'batch axis'),
    (lambda: privacy.per_example_norm(jnp.ones((2, 3)), 'l1'), ValueError, 'norm'),
    (lambda: privacy.clip_inputs(jnp.ones((2, 3)), 1.0, 'nan'), ValueError, 'nonfinite'),
    (lambda: privacy.clip_upstream(jnp.ones((2, 3)), 1.0, 'l2', 'zero'), ValueError,
     'nonfinite'),
])
def test_primitives_reject_bad_arguments(call, err, match):
  with pytest.raises(err, match=match):
    call()


# ---------------------------------------------------------------------------
# Layers and model checks.


def test_batchnorm_is_rejected():
  model = nnx.Sequential(nnx.Linear(3, 3, rngs=nnx.Rngs(0)), nnx.BatchNorm(3, rngs=nnx.Rngs(0)))
  for fn in (privacy.check_model,
             lambda m: privacy.clip_layers(m, input_bound=1.0, grad_bound=1.0),
             privacy.sensitivities):
    with pytest.raises(ValueError, match='BatchNorm'):
      fn(model)


def test_unbounded_parameters_are_refused():
  model = nnx.Sequential(nnx.Linear(3, 3, rngs=nnx.Rngs(0)), nnx.LayerNorm(3, rngs=nnx.Rngs(0)))
  model = privacy.clip_layers(model, input_bound=1.0, grad_bound=1.0)
  with pytest.raises(ValueError, match='not inside a ClippedLayer'):
    privacy.sensitivities(model)


def test_clip_layers_is_idempotent_and_shares_parameters():
  inner = nnx.Linear(3, 2, use_bias=False, rngs=nnx.Rngs(0))
  model = nnx.Sequential(inner)
  model = privacy.clip_layers(model, input_bound=1.0, grad_bound=1.0)
  model = privacy.clip_layers(model, input_bound=1.0, grad_bound=1.0)
  assert isinstance(model.layers[0], privacy.ClippedLayer)
  assert model.layers[0].layer is inner
  assert privacy.num_releases(model) == 1
  single = privacy.clip_layers(nnx.Linear(3, 2, rngs=nnx.Rngs(0)), input_bound=1.0,
                               grad_bound=1.0)
  assert isinstance(single, privacy.ClippedLayer)


@pytest.mark.parametrize('call,err,match', [
    (lambda: privacy.ClippedLayer(nnx.LayerNorm(3, rngs=nnx.Rngs(0)), input_bound=1.0,
                                  grad_bound=1.0), TypeError, 'nnx.Linear or nnx.Conv'),
    (lambda: privacy.ClippedConv(1, 1, (3, 3), input_bound=1.0, grad_bound=1.0,
                                 padding='CIRCULAR', rngs=nnx.Rngs(0)), ValueError, 'CIRCULAR'),
    (lambda: privacy.ClippedLinear(2, 2, input_bound=0.0, grad_bound=1.0, rngs=nnx.Rngs(0)),
     ValueError, 'input_bound'),
    (lambda: privacy.ClippedLinear(2, 2, input_bound=1.0, grad_bound=-1.0, rngs=nnx.Rngs(0)),
     ValueError, 'grad_bound'),
    (lambda: privacy.ClippedLinear(2, 2, input_bound=1.0, grad_bound=float('inf'),
                                   rngs=nnx.Rngs(0)), ValueError, 'grad_bound'),
    (lambda: privacy.ClippedLinear(2, 2, input_bound=1.0, grad_bound=1.0, uses=0,
                                   rngs=nnx.Rngs(0)), ValueError, 'uses'),
    (lambda: privacy.check_model('model'), TypeError, 'nnx.Module'),
    (lambda: models_lib.StevensCNN(image_size=10, rngs=nnx.Rngs(0)), ValueError, 'image_size'),
])
def test_layers_reject_bad_arguments(call, err, match):
  with pytest.raises(err, match=match):
    call()
