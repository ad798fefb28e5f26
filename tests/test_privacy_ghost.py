# Copyright 2026 The ssgd_optax Authors. Licensed under the Apache License 2.0.
"""Ghost norms and book-keeping sums against per-example gradients (vmap)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from ssgd_examples import models
from ssgd_optax import per_example
from ssgd_optax import privacy
from ssgd_optax.privacy import _forward_pass as forward_pass
from ssgd_optax.privacy import _ghost as ghost
def _loss(m, x, y):
  return optax.softmax_cross_entropy_with_integer_labels(m(x), y)


def _reference(model, x, y, weights='clip', clip_norm=1.0, scope='global', stability=0.0,
               keep=None):
  """Per-example gradients (vmap), weights, weighted sum: the definition."""
  g = per_example.nnx_per_example_grads(lambda m, x, y: _loss(m, x, y).sum(), model, x, y)
  flat = jax.tree_util.tree_flatten_with_path(g)[0]

  def key(p):
    parts = forward_pass.path_keys(p)
    if scope == 'global':
      return 'all'
    return parts[:-1] if scope == 'per_layer' else parts

  sq = {}
  for p, v in flat:
    sq[key(p)] = sq.get(key(p), 0) + jnp.sum(v.reshape(v.shape[0], -1) ** 2, 1)
  norms = {k: jnp.sqrt(v) for k, v in sq.items()}
  total = jnp.sqrt(sum(sq.values()))

  def weight(n):
    if weights == 'clip':
      return jnp.minimum(1.0, clip_norm / jnp.maximum(n, 1e-30))
    return jnp.where(n + stability > 0, 1 / (n + stability), 0)

  def wsum(p, v):
    w = weight(norms[key(p)])
    if keep is not None:
      w = jnp.where(keep, w, 0)
    return jnp.tensordot(w, v, 1)

  return total, jax.tree_util.tree_map_with_path(wsum, g), len(norms)


def _close(a, b, rtol=2e-5, atol=1e-6):
  for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=rtol, atol=atol)


class _Dense(nnx.Module):
  """Dense on flat input, and on [B, T, D] (Gram form and explicit form)."""

  def __init__(self, rngs):
    self.flat = nnx.Linear(6, 16, rngs=rngs)
    self.seq_gram = nnx.Linear(16, 16, rngs=rngs)          # T=3: 3*32 <= 256, Gram
    self.seq_explicit = nnx.Linear(16, 3, use_bias=False, rngs=rngs)  # 3*19 > 48

  def __call__(self, x):
    h = jnp.tanh(self.flat(x))                              # [B, 16]
    seq = jnp.stack([h, h * 0.5 + 1, jnp.sin(h)], axis=1)   # [B, 3, 16]
    return self.seq_explicit(jnp.tanh(self.seq_gram(seq))).mean(1)


class _Convs(nnx.Module):
  """Every conv variant: SAME/VALID/explicit/circular padding, strides,
  dilation, groups, with and without bias, a Gram-form conv, LayerNorm."""

  def __init__(self, rngs):
    self.c1 = nnx.Conv(2, 4, (3, 3), strides=2, padding='SAME', rngs=rngs)
    self.c2 = nnx.Conv(4, 4, (2, 3), padding='VALID', use_bias=False, rngs=rngs)
    self.c3 = nnx.Conv(4, 6, (3, 3), padding=((1, 0), (2, 1)), feature_group_count=2,
                       kernel_dilation=(1, 2), rngs=rngs)
    self.c4 = nnx.Conv(6, 8, (3, 3), padding=((1, 1), (2, 1)), input_dilation=(2, 1),
                       rngs=rngs)
    self.c5 = nnx.Conv(8, 8, (3, 3), padding='CIRCULAR', rngs=rngs)
    self.gram = nnx.Conv(8, 16, (3, 3), strides=2, padding='VALID', rngs=rngs)
    self.norm = nnx.LayerNorm(16, rngs=rngs)
    self.head = nnx.Linear(16, 3, rngs=rngs)

  def __call__(self, x):
    x = jax.nn.relu(self.c1(x))
    x = jax.nn.relu(self.c2(x))
    x = jax.nn.relu(self.c3(x))
    x = jax.nn.relu(self.c4(x))
    x = jax.nn.relu(self.c5(x))
    x = self.norm(self.gram(x))
    return self.head(x.mean((1, 2)))


def _data(shape, b=5, seed=0, classes=3):
  x = jax.random.normal(jax.random.PRNGKey(seed), (b,) + shape)
  return x, jnp.arange(b) % classes


def _jitted(fn):
  """``fn(loss, model, *batch, **kw)`` traced and compiled as one program.

  Eagerly, the ghost path dispatches (and compiles) hundreds of small ops:
  3-4x the time of compiling the whole. Eager calls are tested in
  ``test_user_model_unchanged_and_jit``.
  """
  def call(loss, model, *batch, **kw):
    return nnx.jit(lambda m, *b: fn(loss, m, *b, **kw))(model, *batch)
  return call


ghost_grad_sum = _jitted(ghost.ghost_grad_sum)
ghost_norms = _jitted(ghost.ghost_norms)


CASES = {
    'dense': (lambda: _Dense(nnx.Rngs(0)), (6,)),
    'convs': (lambda: _Convs(nnx.Rngs(1)), (12, 12, 2)),
    'mlp': (lambda: models.MLP((4, 4, 1), 3, hidden=(8,), rngs=nnx.Rngs(2)), (4, 4, 1)),
    'cnn': (lambda: models.CNN((8, 8, 1), 3, channels=(4, 8), dense=16, rngs=nnx.Rngs(3)),
            (8, 8, 1)),
    'resnet': (lambda: models.ResNet((8, 8, 3), 3, widths=(4, 8), groups=2,
                                     rngs=nnx.Rngs(4)), (8, 8, 3)),
}


@pytest.mark.slow  # eager layer calls, ~15 s of CPU
def test_gram_and_explicit_forms_are_both_exercised():
  use_gram = ghost._use_gram  # pylint: disable=protected-access
  # _Dense: seq_gram T=3, K=C=16; seq_explicit K=16, C=3.
  assert use_gram(3, 16, 16) and not use_gram(3, 16, 3)
  # _Convs on 12x12: c1 has 6x6 outputs, K=18, C=4; `gram` has 3x1, K=72, C=16.
  assert not use_gram(36, 18, 4) and use_gram(3, 72, 16)
  m = _Convs(nnx.Rngs(1))
  h = jnp.zeros((1, 12, 12, 2))
  for layer in (m.c1, m.c2, m.c3, m.c4, m.c5):
    h = layer(h)
  assert m.c1(jnp.zeros((1, 12, 12, 2))).shape == (1, 6, 6, 4)
  assert m.gram(h).shape == (1, 3, 1, 16)


# resnet and the all-options conv stack take 45 s or more of CPU each: run with -m slow (the
# CNN case keeps a conv model in the default suite).
@pytest.mark.parametrize('name', [pytest.param(n, marks=pytest.mark.slow)
                                  if n in ('resnet', 'convs') else n for n in CASES])
def test_norms_and_clipped_sum_equal_vmap(name):
  make, shape = CASES[name]
  model = make()
  x, y = _data(shape)
  norms, want, _ = _reference(model, x, y, clip_norm=0.0)  # norms only
  got = ghost_norms(_loss, model, x, y, method='ghost')
  np.testing.assert_allclose(got.norms, norms, rtol=2e-5)
  c = float(jnp.median(norms))
  _, want, _ = _reference(model, x, y, clip_norm=c)
  out = ghost_grad_sum(_loss, model, x, y, clip_norm=c, method='ghost')
  _close(out.grads, want)
  assert out.sensitivity == pytest.approx(c)
  assert jax.tree.structure(out.grads) == jax.tree.structure(nnx.state(model, nnx.Param))


@pytest.mark.parametrize('scope,stability', [('global', 0.0), ('per_layer', 0.1),
                                             ('per_leaf', 0.0)])
def test_normalized_sum_equals_vmap(scope, stability):
  model = CASES['cnn'][0]()
  x, y = _data((8, 8, 1))
  _, want, groups = _reference(model, x, y, weights='normalize', scope=scope,
                               stability=stability)
  out = ghost_grad_sum(_loss, model, x, y, weights='normalize', scope=scope,
                             stability=stability, method='ghost')
  _close(out.grads, want)
  assert out.sensitivity == pytest.approx(np.sqrt(groups))
  assert groups == {'global': 1, 'per_layer': 4, 'per_leaf': 8}[scope]


def test_per_layer_clipping_equals_vmap():
  model = CASES['dense'][0]()
  x, y = _data((6,))
  _, want, groups = _reference(model, x, y, clip_norm=0.05, scope='per_layer')
  out = ghost_grad_sum(_loss, model, x, y, clip_norm=0.05, scope='per_layer')
  _close(out.grads, want)
  assert out.sensitivity == pytest.approx(0.05 * np.sqrt(groups))


def test_clip_global_matches_dpsgd_grad_sum():
  model = CASES['mlp'][0]()
  x, y = _data((4, 4, 1))
  loss, want = privacy.dpsgd_grad_sum(_loss, model, x, y, clip_norm=0.1)
  out = ghost_grad_sum(_loss, model, x, y, clip_norm=0.1)
  _close(out.grads, want)
  np.testing.assert_allclose(out.loss, loss, rtol=1e-6)


def test_mask_and_nonfinite_examples_equal_the_batch_without_them():
  model = CASES['cnn'][0]()
  x, y = _data((8, 8, 1), b=7)
  x = x.at[2].set(jnp.nan).at[4, 0, 0, 0].set(jnp.inf).at[6].set(jnp.nan)
  mask = jnp.array([1, 1, 1, 1, 1, 0, 0])        # rows 5, 6 padding (6 is NaN)
  kept = jnp.array([0, 1, 3])
  for weights in ('clip', 'normalize'):
    out = ghost_grad_sum(_loss, model, x, y, mask=mask, weights=weights,
                               clip_norm=0.3, scope='per_layer')
    ref = ghost_grad_sum(_loss, model, x[kept], y[kept], weights=weights,
                               clip_norm=0.3, scope='per_layer')
    _close(out.grads, ref.grads)
    np.testing.assert_allclose(out.loss, ref.loss, rtol=1e-6)
    assert all(bool(jnp.all(jnp.isfinite(v))) for v in jax.tree.leaves(out.grads))
  assert float(out.norms[5]) == 0.0 and float(out.norms[6]) == 0.0


def test_nan_gradient_with_finite_loss_is_dropped():
  class Sqrt(nnx.Module):
    def __init__(self):
      self.l = nnx.Linear(2, 2, rngs=nnx.Rngs(0))

    def __call__(self, x):
      return jnp.sqrt(jnp.abs(self.l(x)))    # d sqrt at 0 = inf -> NaN gradient

  model = Sqrt()
  x = jnp.array([[1.0, 2.0], [0.0, 0.0], [3.0, -1.0]])
  model.l.bias[...] = jnp.zeros(2)
  y = jnp.array([0, 1, 0])
  out = ghost.ghost_grad_sum(_loss, model, x, y, clip_norm=1.0)
  ref = ghost.ghost_grad_sum(_loss, model, x[jnp.array([0, 2])], y[jnp.array([0, 2])],
                             clip_norm=1.0)
  _close(out.grads, ref.grads)


def test_nan_gradient_inside_a_normalisation_layer_is_dropped():
  # The LayerNorm is the only trained layer; sqrt'(0) = inf makes example 1's
  # cotangent non-finite although its loss is finite.
  class Model(nnx.Module):
    def __init__(self):
      self.norm = nnx.LayerNorm(3, rngs=nnx.Rngs(0))

    def __call__(self, x):
      return jnp.sqrt(jnp.abs(self.norm(x)))

  model = Model()
  x = jnp.array([[1.0, 2.0, 4.0], [1.0, 0.0, -1.0], [3.0, -1.0, 0.5]])
  y = jnp.array([0, 1, 2])
  for weights in ('clip', 'normalize'):
    out = ghost.ghost_grad_sum(_loss, model, x, y, clip_norm=0.5, weights=weights,
                               method='ghost')
    keep = jnp.array([0, 2])
    ref = ghost.ghost_grad_sum(_loss, model, x[keep], y[keep], clip_norm=0.5,
                               weights=weights, method='vmap')
    _close(out.grads, ref.grads)
    assert all(bool(jnp.all(jnp.isfinite(v))) for v in jax.tree.leaves(out.grads))


class _Norms(nnx.Module):
  """Every supported normalisation layer, with and without scale/bias, on [B, T, C]."""

  def __init__(self, rngs):
    self.inp = nnx.Linear(3, 8, rngs=rngs)
    self.ln = nnx.LayerNorm(8, use_bias=False, rngs=rngs)
    self.rms = nnx.RMSNorm(8, rngs=rngs)
    self.gn = nnx.GroupNorm(8, num_groups=2, rngs=rngs)
    self.ln2 = nnx.LayerNorm(8, use_scale=False, rngs=rngs)
    self.head = nnx.Linear(8, 3, rngs=rngs)

  def __call__(self, x):
    h = self.ln(jnp.tanh(self.inp(x)))
    h = self.gn(jnp.sin(self.rms(h)))
    return self.head(self.ln2(h).mean(1))


@pytest.mark.parametrize('scope', ['global', 'per_leaf'])
def test_normalisation_layers_equal_vmap(scope):
  model = _Norms(nnx.Rngs(5))
  x = jax.random.normal(jax.random.PRNGKey(0), (5, 4, 3)) * jnp.array([1.0, 3.0, 0.1])
  y = jnp.arange(5) % 3
  for kw in (dict(clip_norm=0.05), dict(weights='normalize', stability=0.1)):
    want = ghost.ghost_grad_sum(_loss, model, x, y, scope=scope, method='vmap', **kw)
    got = ghost_grad_sum(_loss, model, x, y, scope=scope, method='ghost', **kw)
    _close(got.grads, want.grads)
    np.testing.assert_allclose(got.norms, want.norms, rtol=2e-5)


def test_compiled_memory_stays_close_to_the_non_private_step():
  """Normalisation layers' activations must not outlive the backward pass.

  Their per-example gradients (``[B, C]``) carry the weighted sum; keeping
  their inputs and cotangents until the global weights are known cost 1.32x
  the non-private step on this model (1.09x without).
  """
  model = models.ResNet((16, 16, 3), 10, widths=(8, 16), rngs=nnx.Rngs(0))
  graphdef, state = nnx.split(model)
  x, y = jnp.zeros((64, 16, 16, 3)), jnp.zeros(64, int)

  def memory(f):
    a = jax.jit(f).lower(state, x, y).compile().memory_analysis()
    return a.temp_size_in_bytes + a.argument_size_in_bytes + a.output_size_in_bytes

  base = memory(lambda s, x, y: nnx.grad(lambda m: _loss(m, x, y).sum())(
      nnx.merge(graphdef, s)))
  for kw in (dict(clip_norm=1.0), dict(weights='normalize', scope='per_layer')):
    ratio = memory(lambda s, x, y, kw=kw: ghost.ghost_grad_sum(
        _loss, nnx.merge(graphdef, s), x, y, method='ghost', **kw).grads) / base
    assert ratio <= 1.25, (kw, ratio)


def test_user_model_unchanged_and_jit():
  model = CASES['cnn'][0]()
  before = jax.tree.map(np.asarray, nnx.state(model))
  graph_before = nnx.graphdef(model)
  x, y = _data((8, 8, 1))
  eager = ghost.ghost_grad_sum(_loss, model, x, y, clip_norm=0.2)
  jitted = nnx.jit(lambda m, x, y: ghost.ghost_grad_sum(_loss, m, x, y, clip_norm=0.2))(
      model, x, y)
  _close(eager.grads, jitted.grads)
  _close(eager.norms, jitted.norms)
  assert nnx.graphdef(model) == graph_before
  assert type(model.conv1) is nnx.Conv  # pylint: disable=unidiomatic-typecheck
  _close(nnx.state(model), before, rtol=0, atol=0)


@pytest.mark.slow  # ~30 s of CPU
def test_layer_applied_twice_and_clipped_layers():
  class Twice(nnx.Module):
    def __init__(self):
      self.l = nnx.Linear(4, 4, rngs=nnx.Rngs(0))
      self.conv = nnx.Conv(1, 2, (3, 3), rngs=nnx.Rngs(1))
      self.head = privacy.ClippedLinear(4 + 2, 3, input_bound=1.0, grad_bound=0.5,
                                        use_bias=True, rngs=nnx.Rngs(2))

    def __call__(self, x):
      h = self.l(jnp.tanh(self.l(x.reshape(x.shape[0], -1)[:, :4])))
      c = self.conv(jnp.tanh(self.conv(x)[..., :1])).mean((1, 2))
      return self.head(jnp.concatenate([h, c], -1))

  model = Twice()
  x, y = _data((5, 5, 1))
  norms, want, _ = _reference(model, x, y, clip_norm=0.1)
  out = ghost.ghost_grad_sum(_loss, model, x, y, clip_norm=0.1, method='ghost')
  np.testing.assert_allclose(out.norms, norms, rtol=2e-5)
  _close(out.grads, want)


def _sum_with_and_without(impl, x_adv, c):
  model = nnx.Sequential(nnx.Linear(3, 4, rngs=nnx.Rngs(0)), jnp.tanh,
                         nnx.Linear(4, 2, rngs=nnx.Rngs(1)))
  x, y = _data((3,), b=4, classes=2)
  base = impl(_loss, model, x, y, clip_norm=c).grads
  xs = jnp.concatenate([x, x_adv[None]])
  ys = jnp.concatenate([y, jnp.array([1])])
  added = impl(_loss, model, xs, ys, clip_norm=c).grads
  diff = jax.tree.map(lambda a, b: a - b, added, base)
  return float(jnp.sqrt(sum(jnp.sum(d ** 2) for d in jax.tree.leaves(diff))))


def test_guarantee_adding_one_example_moves_the_sum_by_at_most_c(monkeypatch):
  c = 0.5
  # Huge input (saturated tanh: huge first-layer gradient) and tiny input
  # (the bias gradients dominate).
  adversarial = [jnp.array([1e6, -1e6, 1e6]), jnp.array([1e-30, 0.0, 0.0]),
                 jnp.array([3e30, 1.0, -2.0])]
  for x_adv in adversarial:
    assert _sum_with_and_without(ghost_grad_sum, x_adv, c) <= c * (1 + 1e-5)
  # A broken stand-in whose norms forget the bias term must fail this test.
  monkeypatch.setattr(ghost, '_bias_norm', lambda d: jnp.zeros(d.shape[0]))
  gaps = [_sum_with_and_without(ghost_grad_sum, x_adv, c) for x_adv in adversarial]
  assert max(gaps) > c * 1.5


def test_guarantee_normalized_per_layer_sensitivity():
  model = CASES['dense'][0]()
  x, y = _data((6,))
  x_adv = jnp.full((6,), 1e5)
  out = ghost_grad_sum(_loss, model, x, y, weights='normalize', scope='per_layer')
  xs, ys = jnp.concatenate([x, x_adv[None]]), jnp.concatenate([y, jnp.array([2])])
  out2 = ghost_grad_sum(_loss, model, xs, ys, weights='normalize', scope='per_layer')
  diff = jax.tree.map(lambda a, b: a - b, out2.grads, out.grads)
  gap = float(jnp.sqrt(sum(jnp.sum(d ** 2) for d in jax.tree.leaves(diff))))
  assert gap <= out.sensitivity * (1 + 1e-5)
  assert out.sensitivity == pytest.approx(np.sqrt(3))


class _WithEmbed(nnx.Module):
  def __init__(self):
    self.embed = nnx.Embed(5, 4, rngs=nnx.Rngs(0))
    self.head = nnx.Linear(4, 3, rngs=nnx.Rngs(1))

  def __call__(self, x):
    return self.head(self.embed(x).mean(1))


def test_unsupported_layer_falls_back_with_warning_or_raises():
  model = _WithEmbed()
  x = jnp.array([[0, 1], [2, 3], [4, 4]])
  y = jnp.array([0, 1, 2])
  ghost._WARNED.clear()  # pylint: disable=protected-access
  with pytest.warns(UserWarning, match='embed/embedding'):
    out = ghost.ghost_grad_sum(_loss, model, x, y, clip_norm=0.1)
  loss, want = privacy.dpsgd_grad_sum(_loss, model, x, y, clip_norm=0.1)
  _close(out.grads, want)
  with pytest.raises(ValueError, match='embed/embedding'):
    ghost.ghost_grad_sum(_loss, model, x, y, clip_norm=0.1, method='ghost')
  with pytest.raises(ValueError, match='embed/embedding'):
    ghost.ghost_norms(_loss, model, x, y, method='ghost')


def test_bad_inputs():
  model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
  x, y = jnp.ones((4, 3)), jnp.zeros(4, int)
  for kwargs, err, match in [
      (dict(clip_norm=0.0), ValueError, 'clip_norm'),
      (dict(clip_norm=-1.0), ValueError, 'clip_norm'),
      (dict(), ValueError, 'clip_norm'),
      (dict(clip_norm='1'), TypeError, 'clip_norm'),
      (dict(weights='normalize', stability=-1.0), ValueError, 'stability'),
      (dict(weights='sign'), ValueError, 'weights'),
      (dict(clip_norm=1.0, scope='per_head'), ValueError, 'scope'),
      (dict(clip_norm=1.0, method='fast'), ValueError, 'method'),
      (dict(clip_norm=1.0, nonfinite='ignore'), ValueError, 'nonfinite'),
      (dict(clip_norm=1.0, mask=jnp.ones(3)), ValueError, 'mask'),
  ]:
    with pytest.raises(err, match=match):
      ghost.ghost_grad_sum(_loss, model, x, y, **kwargs)
  with pytest.raises(ValueError, match='one loss per example'):
    ghost.ghost_grad_sum(lambda m, x, y: _loss(m, x, y).mean(), model, x, y, clip_norm=1.0)
  with pytest.raises(TypeError, match='model'):
    ghost.ghost_norms(_loss, {'w': 1}, x, y)
  with pytest.raises(TypeError, match='per_example_loss'):
    ghost.ghost_norms(None, model, x, y)
  with pytest.raises(ValueError, match='BatchNorm'):
    ghost.ghost_norms(lambda m, x, y: _loss(m, x, y),
                      nnx.Sequential(nnx.Linear(3, 3, rngs=nnx.Rngs(0)),
                                     nnx.BatchNorm(3, rngs=nnx.Rngs(0))), x, y)


def test_layer_inside_nested_transformation_is_refused():
  class Scanned(nnx.Module):
    def __init__(self):
      self.l = nnx.Linear(3, 3, rngs=nnx.Rngs(0))

    def __call__(self, x):
      return jax.vmap(lambda r: self.l(r[None])[0])(x)

  with pytest.raises(ValueError, match='nested'):
    ghost.ghost_norms(_loss, Scanned(), jnp.ones((4, 3)), jnp.zeros(4, int))
