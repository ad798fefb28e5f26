# Copyright 2026 The ssgd_optax Authors. Licensed under the Apache License 2.0.
"""Correctness anchors of the attacks on tiny problems (8x8 digits, untrained LeNet).

Guaranteed bounds (deterministic seeds, CPU): with no defence, Inverting
Gradients (tv=0, signed Adam 0.1, 300 steps) and DLG (L-BFGS, 100 steps)
reconstruct a single 8x8 digit through the untrained sigmoid LeNet to PSNR
> 40 dB; adaptive DLG does the same through SSGD per_layer (on a tiny sigmoid MLP); the analytic
attack is exact (> 60 dB); R-GAP is exact (> 60 dB) on a fully determined
CNN.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import ssgd_optax
from ssgd_optax import attacks
from ssgd_examples import data
from ssgd_examples import models


@pytest.fixture(scope='module')
def digits():
  ds = data.load_dataset('digits')
  return jnp.asarray(ds.x_train[:8]), jnp.asarray(ds.y_train[:8])


@pytest.fixture(scope='module')
def lenet():
  return attacks.as_functional(models.LeNetZhu((8, 8, 1), 10, rngs=nnx.Rngs(0)))


def test_inverting_gradients_recovers_single_image(digits, lenet):
  f, p = lenet
  x, y = digits[0][:1], digits[1][:1]
  obs = attacks.observe(f, p, x, y)
  res = attacks.inverting_gradients(f, obs, key=jax.random.key(0), steps=300, tv=0.0,
                                    loop='python')
  s = attacks.score(x, res.inputs, true_labels=y, rec_labels=res.labels)
  assert s.psnr[0] > 40.0, s
  assert s.label_accuracy == 1.0
  assert res.trace.shape == (300,) and res.trace[-1] < res.trace[0]
  assert float(res.inputs.min()) >= 0.0 and float(res.inputs.max()) <= 1.0  # boxed


def test_dlg_recovers_single_image_and_label(digits, lenet):
  f, p = lenet
  x, y = digits[0][1:2], digits[1][1:2]
  obs = attacks.observe(f, p, x, y)
  res = attacks.dlg(f, obs, key=jax.random.key(0), steps=100)
  s = attacks.score(x, res.inputs, true_labels=y, rec_labels=res.labels)
  assert s.psnr[0] > 40.0, s
  assert s.label_accuracy == 1.0


def _tiny(key):
  """A sigmoid MLP on 4x4 images: compiles fast, same code paths."""
  k = jax.random.split(key, 2)
  params = {'fc1': {'kernel': jax.random.normal(k[0], (16, 24)), 'bias': jnp.zeros(24)},
            'fc2': {'kernel': jax.random.normal(k[1], (24, 4)), 'bias': jnp.zeros(4)}}

  def apply_fn(p, x):
    h = jax.nn.sigmoid(x.reshape(len(x), -1) @ p['fc1']['kernel'] + p['fc1']['bias'])
    return h @ p['fc2']['kernel'] + p['fc2']['bias']
  return apply_fn, params


def test_ssgd_is_transparent_to_adaptive_dlg_and_cosine():
  f, p = _tiny(jax.random.key(0))
  x = jax.random.uniform(jax.random.key(1), (1, 4, 4, 1))
  y = jnp.array([3])
  obs = attacks.observe(f, p, x, y, ssgd_optax.unit_normalize('per_layer'))
  # The attacker reads the label from the signs (scale-free), then matches
  # its own normalised dummy gradient.
  label = attacks.recover_labels(obs.update, 4, 1)
  assert label.tolist() == [3]
  res = attacks.adaptive_dlg(f, obs, key=jax.random.key(0), scope='per_layer', steps=100,
                             labels=label)
  assert attacks.score(x, res.inputs).psnr[0] > 40.0
  # The per-layer cosine objective is the same with and without SSGD.
  raw = attacks.observe(f, p, x, y)
  g = attacks.batch_gradient(f, p, jnp.full_like(x, 0.5), y)
  np.testing.assert_allclose(attacks.cosine_distance(g, obs.update, 'per_layer'),
                             attacks.cosine_distance(g, raw.update, 'per_layer'), rtol=1e-5)


def test_scan_and_python_loops_agree():
  f, p = _tiny(jax.random.key(2))
  x = jax.random.uniform(jax.random.key(3), (2, 4, 4, 1))
  obs = attacks.observe(f, p, x, jnp.array([0, 2]))
  runs = [attacks.inverting_gradients(f, obs, key=jax.random.key(3), steps=20, loop=loop,
                                      restarts=2) for loop in ('scan', 'python')]
  np.testing.assert_allclose(runs[0].trace, runs[1].trace, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(runs[0].inputs, runs[1].inputs, atol=1e-4)
  assert runs[0].labels.tolist() == runs[1].labels.tolist()


@pytest.mark.parametrize('loop', ['scan', 'python'])
def test_restarts_pick_the_lowest_finite_objective(loop):
  from ssgd_optax.attacks import _engine
  target = jnp.array([1.0, -2.0])
  # Restart 1 starts at NaN (diverged) and must not win; restart 2 is closest.
  z0 = {'x': jnp.array([[5.0, 5.0], [jnp.nan, 0.0], [1.1, -2.0]])}
  z, trace, loss = _engine.run(lambda z, t: jnp.sum((z['x'] - t) ** 2), z0, target,
                               lambda: optax.sgd(0.1), 3, lambda z: z, loop)
  assert trace.shape == (3,)
  np.testing.assert_allclose(z['x'], target + 0.1 * (0.8 ** 3) * jnp.array([1.0, 0.0]),
                             rtol=1e-5)
  assert float(loss) < 1e-2


def _mlp(key):
  k = jax.random.split(key, 2)
  params = {'fc1': {'kernel': jax.random.normal(k[0], (64, 32)) * 0.1, 'bias': jnp.zeros(32)},
            'fc2': {'kernel': jax.random.normal(k[1], (32, 10)) * 0.1, 'bias': jnp.zeros(10)}}

  def apply_fn(p, x):
    h = jax.nn.relu(x.reshape(len(x), -1) @ p['fc1']['kernel'] + p['fc1']['bias'])
    return h @ p['fc2']['kernel'] + p['fc2']['bias']
  return apply_fn, params


def test_analytic_attack_is_exact(digits):
  f, p = _mlp(jax.random.key(0))
  for i in range(3):
    x, y = digits[0][i:i + 1], digits[1][i:i + 1]
    x = x / x.max()  # rescale="max" assumes the brightest pixel is 1
    obs = attacks.observe(f, p, x, y)
    res = attacks.analytic_attack(f, obs, weight_path="['fc1']['kernel']",
                                  bias_path="['fc1']['bias']")
    assert attacks.score(x, res.inputs).psnr[0] > 60.0
    # SSGD per_leaf rescales kernel and bias differently: the image survives
    # up to a factor, which rescale="max" removes for images whose maximum is 1.
    obs = attacks.observe(f, p, x, y, ssgd_optax.unit_normalize('per_leaf'))
    res = attacks.analytic_attack(f, obs, weight_path="['fc1']['kernel']",
                                  bias_path="['fc1']['bias']", rescale='max')
    assert attacks.score(x, res.inputs).psnr[0] > 60.0


def test_rgap_exact_and_copa_index():
  x = jax.random.uniform(jax.random.key(1), (1, 8, 8, 1))
  determined = attacks.LayeredCNN((attacks.ConvSpec(4, 3, 1, 1), attacks.ConvSpec(4, 3, 1, 1)),
                                  5, (8, 8, 1))
  p = determined.init(jax.random.key(0))
  ranks = attacks.rank_analysis(determined, p, x[0], 2)
  assert [r.deficiency for r in ranks] == [0, 0]
  assert attacks.copa_index(ranks) == 0
  res = attacks.rgap(determined, attacks.observe(determined.apply, p, x, jnp.array([2])))
  assert attacks.score(x, res.inputs).psnr[0] > 60.0

  under = attacks.LayeredCNN((attacks.ConvSpec(1, 3, 2, 1),), 5, (8, 8, 1))
  p = under.init(jax.random.key(0))
  ranks = attacks.rank_analysis(under, p, x[0], 2)
  assert ranks[0].unknowns == 64 and ranks[0].rank <= 16 + 9
  assert attacks.copa_index(ranks) < 0
  res = attacks.rgap(under, attacks.observe(under.apply, p, x, jnp.array([2])))
  assert attacks.score(x, res.inputs).psnr[0] < 30.0


def test_attacks_reject_mismatched_inputs():
  f, p = _tiny(jax.random.key(0))
  x, y = jnp.zeros((1, 4, 4, 1)), jnp.array([1])
  obs = attacks.observe(f, p, x, y)
  bad_tree = obs._replace(update={'w': jnp.ones(3)})
  bad_shape = obs._replace(update=jax.tree_util.tree_map(
      lambda u: jnp.ones(u.shape + (1,)), obs.update))
  for attack in (attacks.dlg, attacks.inverting_gradients, attacks.idlg):
    with pytest.raises(ValueError, match='does not match the parameters'):
      attack(f, bad_tree, key=jax.random.key(0), steps=1)
    with pytest.raises(ValueError, match='does not match the parameters'):
      attack(f, bad_shape, key=jax.random.key(0), steps=1)
  with pytest.raises(ValueError, match='logits'):
    attacks.dlg(f, obs._replace(input_shape=(3, 3, 1)), key=jax.random.key(0), steps=1)
  with pytest.raises(ValueError, match='labels must be int'):
    attacks.inverting_gradients(f, obs, key=jax.random.key(0), steps=1, labels=jnp.array([1, 2]))
  with pytest.raises(TypeError, match='Observation'):
    attacks.dlg(f, obs.update, key=jax.random.key(0))
  with pytest.raises(ValueError, match='loop must be one of'):
    attacks.inverting_gradients(f, obs, key=jax.random.key(0), steps=1, loop='while')
  with pytest.raises(ValueError, match='optimizer must be one of'):
    attacks.dlg(f, obs, key=jax.random.key(0), steps=1, optimizer='sgd')
  with pytest.raises(TypeError, match='int'):
    attacks.dlg(f, obs, key=jax.random.key(0), steps=1.5)
  with pytest.raises(TypeError, match='PRNG key'):
    attacks.dlg(f, obs, key=0, steps=1)
  with pytest.raises(ValueError, match='single example'):
    m = attacks.LayeredCNN((attacks.ConvSpec(2, 3, 1, 1),), 3, (4, 4, 1))
    pm = m.init(jax.random.key(0))
    attacks.rgap(m, attacks.observe(m.apply, pm, jnp.zeros((2, 4, 4, 1)), jnp.array([0, 1])))
  with pytest.raises(ValueError, match='labels must be integers'):
    attacks.observe(f, p, x, jnp.array([0.5]))
