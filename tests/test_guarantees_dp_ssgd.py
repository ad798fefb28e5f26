# Copyright 2026 The ssgd_optax Authors. Licensed under the Apache License 2.0.
"""Attacks on the DP-SSGD guarantees: sensitivity, noise calibration, non-finite inputs.

Each guarantee is attacked, not just exercised, and each attack is shown once
to fail on a deliberately broken stand-in:

* **Sensitivity.** Adding one example to a batch moves the pre-noise release
  ``sum_i N_gamma(g_i)`` by at most ``Delta = sqrt(G)`` (``G`` groups of the
  scope). A random and adversarial search over neighbouring batches (every
  magnitude from subnormal to ``float32`` max, the underflowing-square
  pattern, mixed extreme rows that force the batch-wide rescue, NaN/Inf rows)
  plus gradient ascent on the added example never exceeds it; a stand-in
  that claims ``Delta / 2`` and a naive normaliser are both caught.
* **Calibration.** The released noise has std ``sigma * Delta / Bbar`` per
  entry, and the accountant is fed ``sigma`` and one release per step.
* **Non-finite inputs.** With default settings an example with an Inf pixel
  or a NaN gradient contributes nothing: the release is finite and equals
  the release without that example.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from ssgd_optax.privacy import _unit_normalization as dp
from ssgd_optax import per_example

SCOPES = ('global', 'per_leaf', 'per_layer')
# One example's gradient: two layers, one of them large enough for the
# underflowing-squares attack (1001 entries whose squares flush to zero).
SHAPES = {'a': {'b': (4,), 'w': (40,)}, 'c': {'w': (1001,)}}
OTHERS = 3      # rows of the smaller batch D; D' = D plus the attacked example
TOL = 1e-5      # float32 rounding of a sum of OTHERS + 1 unit vectors
TINY = float(np.finfo(np.float32).tiny)
BIG = float(np.finfo(np.float32).max)


def _params():
  return jax.tree.map(lambda s: jnp.zeros(s, jnp.float32), SHAPES,
                      is_leaf=lambda s: isinstance(s, tuple))


def _release(batch, scope, stability):
  """The pre-noise release sum_i N(g_i) (noise 0, Bbar 1)."""
  return dp.noisy_normalized_mean(batch, jax.random.key(0), noise_multiplier=0.0,
                                  expected_batch_size=1.0, scope=scope, stability=stability)


def _naive_release(batch, scope, stability):
  """Broken stand-in: one global norm from a plain float32 sum of squares."""
  del scope, stability
  leaves = jax.tree.leaves(batch)
  sq = sum(jnp.sum(jnp.square(x).reshape(x.shape[0], -1), 1) for x in leaves)
  scale = jnp.where(sq > 0, jax.lax.rsqrt(jnp.where(sq > 0, sq, 1)), 0)
  return jax.tree.map(lambda x: jnp.tensordot(scale, x, axes=1), batch)


def _diff_fn(release, scope, stability):
  """||release(D + x) - release(D)||, vmapped over candidate pairs."""

  def diff(others, x):
    with_x = jax.tree.map(lambda o, v: jnp.concatenate([o, v[None]]), others, x)
    d = jax.tree.map(jnp.subtract, release(with_x, scope, stability),
                     release(others, scope, stability))
    return jnp.sqrt(sum(jnp.sum(jnp.square(v)) for v in jax.tree.leaves(d)))

  return jax.jit(jax.vmap(diff))


def _leaf_sample(rng, n, size, kind):
  """``n`` rows of ``size`` float32 entries of an adversarial ``kind``."""
  if kind == 'scaled':       # every magnitude, one scale per row
    scale = 10.0 ** rng.uniform(-45, 37, size=(n, 1))
    return rng.standard_normal((n, size)) * scale
  if kind == 'flushed':      # squares just below tiny, one entry just above
    x = np.full((n, size), math.sqrt(TINY) * rng.uniform(0.5, 0.99, (n, 1)))
    x[:, 0] = math.sqrt(TINY) * rng.uniform(1.0, 1.5, n)
    return x * rng.choice([-1, 1], size=(n, size))
  if kind == 'huge':         # entries near float32 max: squares overflow
    return BIG * rng.uniform(0.1, 1.0, (n, size)) * rng.choice([-1, 1], size=(n, size))
  if kind == 'spike':        # one huge entry, the rest tiny
    x = rng.standard_normal((n, size)) * 1e-30
    x[:, rng.integers(size)] = BIG / 2
    return x
  if kind == 'subnormal':
    return rng.uniform(-1, 1, (n, size)) * TINY / 4
  if kind == 'zero':
    return np.zeros((n, size))
  if kind == 'nonfinite':
    x = rng.standard_normal((n, size))
    x[:, 0] = rng.choice([np.nan, np.inf, -np.inf], n)
    return x
  raise ValueError(kind)


KINDS = ('scaled', 'flushed', 'huge', 'spike', 'subnormal', 'zero', 'nonfinite')


def _candidates(rng, n, rows):
  """``n`` batches of ``rows`` examples; every leaf draws its own kind."""
  out = {}
  for layer, leaves in SHAPES.items():
    out[layer] = {}
    for name, shape in leaves.items():
      size = math.prod(shape)
      kinds = rng.choice(KINDS, size=(n, rows), p=[.4, .15, .1, .1, .1, .1, .05])
      x = np.empty((n, rows, size))
      for k in KINDS:
        where = kinds == k
        if where.any():
          x[where] = _leaf_sample(rng, int(where.sum()), size, k)
      with np.errstate(over='ignore'):
        out[layer][name] = x.reshape((n, rows) + shape).astype(np.float32)
  return out


def _worst_ratio(release, scope, stability, claimed, *, seed=0, rounds=2, n=48,
                 ascent_steps=10):
  """The largest ||release(D') - release(D)|| / claimed found by the search."""
  diff = _diff_fn(release, scope, stability)
  rng = np.random.default_rng(seed)
  worst = 0.0
  for _ in range(rounds):
    others = _candidates(rng, n, OTHERS)
    x = jax.tree.map(lambda v: v[:, 0], _candidates(rng, n, 1))
    d = np.asarray(diff(others, x), np.float64)
    if not np.all(np.isfinite(d)):
      return math.inf
    worst = max(worst, float(d.max()) / claimed)
  # Gradient ascent on the added example, in log-magnitude (sign fixed),
  # from random starts spread over the float32 range.
  k = 8
  others = jax.tree.map(lambda v: v[:k], _candidates(rng, k, OTHERS))
  others = jax.tree.map(jnp.asarray, others)
  signs = jax.tree.map(lambda s: jnp.asarray(rng.choice([-1.0, 1.0], (k,) + s)), SHAPES,
                       is_leaf=lambda s: isinstance(s, tuple))
  theta = jax.tree.map(lambda s: jnp.asarray(rng.uniform(-80, 80, (k,) + s), jnp.float32),
                       SHAPES, is_leaf=lambda s: isinstance(s, tuple))

  # others and signs are arguments, not closed-over constants: XLA would
  # constant-fold the release with a different arithmetic (no flush of
  # subnormals, reassociated products) than the one that runs.
  def objective(t, others, signs):
    x = jax.tree.map(lambda a, b: a * jnp.exp(jnp.clip(b, -87, 88)), signs, t)
    d = diff(others, x)
    return jnp.sum(d), d

  step = jax.jit(jax.grad(objective, has_aux=True))
  opt = optax.adam(0.5)
  state = opt.init(theta)
  for _ in range(ascent_steps):
    g, d = step(theta, others, signs)
    d = np.asarray(d, np.float64)
    if not np.all(np.isfinite(d)):
      return math.inf
    worst = max(worst, float(d.max()) / claimed)
    g = jax.tree.map(lambda v: -jnp.nan_to_num(v), g)
    updates, state = opt.update(g, state)
    theta = optax.apply_updates(theta, updates)
  return worst


@pytest.mark.parametrize('stability', [0.0, 0.5])
@pytest.mark.parametrize('scope', SCOPES)
def test_no_neighbouring_batches_differ_by_more_than_the_sensitivity(scope, stability):
  mechanism = dp.dp_ssgd_mechanism(_params(), 1.0, scope)
  assert mechanism.num_groups == {'global': 1, 'per_leaf': 3, 'per_layer': 2}[scope]
  worst = _worst_ratio(_release, scope, stability, mechanism.sensitivity)
  assert worst <= 1 + TOL, (scope, stability, worst)
  # The search is not vacuous: it reaches the bound (unit-norm groups).
  if stability == 0.0:
    assert worst >= 1 - 1e-3


def test_the_search_catches_an_understated_sensitivity_and_a_naive_normaliser():
  mechanism = dp.dp_ssgd_mechanism(_params(), 1.0, 'per_layer')
  # A mechanism claiming half its sensitivity ...
  assert _worst_ratio(_release, 'per_layer', 0.0, mechanism.sensitivity / 2,
                      rounds=1, ascent_steps=0) > 1 + TOL
  # ... and a normaliser that trusts a float32 sum of squares (the squares
  # of entries below sqrt(tiny) flush to zero, the norm is underestimated).
  assert _worst_ratio(_naive_release, 'global', 0.0, 1.0, rounds=1,
                      ascent_steps=0) > 2


def test_underflowing_squares_do_not_inflate_the_norm():
  # 1000 entries whose squares flush to zero and one whose square does not:
  # a plain sum of squares sees only the last, and the row's norm was 26.
  x = np.full((1, 1001), 1.0e-19, np.float32)
  x[0, 0] = 1.2e-19
  for scope in SCOPES:
    u = jax.jit(lambda t, s=scope: dp.normalize_per_example(t, s))({'c': {'w': x}})
    np.testing.assert_allclose(np.linalg.norm(np.asarray(u['c']['w'], np.float64)), 1.0,
                               rtol=1e-6)


@pytest.mark.parametrize('scope', SCOPES)
def test_noise_std_is_sigma_times_sensitivity_over_expected_batch_size(scope, monkeypatch):
  from ssgd_optax import privacy  # pylint: disable=import-outside-toplevel
  from ssgd_optax.privacy import _accounting  # pylint: disable=import-outside-toplevel
  sigma, bbar = 0.8, 5.0
  params = {'a': {'w': jnp.zeros((300, 100)), 'b': jnp.zeros((50,))},
            'c': {'w': jnp.zeros((200, 100))}}
  zeros = jax.tree.map(lambda p: jnp.zeros((2,) + p.shape), params)
  out = jax.jit(lambda g: dp.noisy_normalized_mean(
      g, jax.random.key(11), noise_multiplier=sigma, expected_batch_size=bbar,
      scope=scope))(zeros)
  mechanism = dp.dp_ssgd_mechanism(params, sigma, scope)
  want = sigma * mechanism.sensitivity / bbar
  noise = np.concatenate([np.ravel(x) for x in jax.tree.leaves(out)]).astype(np.float64)
  # 50050 entries: the std estimate's relative s.e. is 0.3 %, the tolerance 2 %.
  assert abs(noise.mean()) < 0.02 * want
  assert noise.std() == pytest.approx(want, rel=0.02)
  for leaf in jax.tree.leaves(out):
    if leaf.size >= 10_000:
      assert float(np.std(leaf)) == pytest.approx(want, rel=0.05)
  # A stand-in that forgot the scope's sqrt(G) is off by more than the tolerance.
  if mechanism.num_groups > 1:
    assert noise.std() / mechanism.sensitivity != pytest.approx(want, rel=0.02)

  # What the accountant computes with (it reads the mechanism): the same
  # multiplier, one release per step.
  seen = {}

  def spy(step, *args):
    del args
    # One Poisson-sampled Gaussian per step: its multiplier is what is accounted.
    seen.update(noise_multiplier=step.event.noise_multiplier,
                kind=(type(step).__name__, type(step.event).__name__))
    return 1.0

  monkeypatch.setattr(_accounting, '_epsilon', spy)
  privacy.compute_epsilon(mechanism, sampling_rate=0.01, steps=10, delta=1e-5)
  assert seen, 'the accountant was not reached'
  assert seen['noise_multiplier'] == pytest.approx(sigma)
  assert seen['kind'] == ('PoissonSampledDpEvent', 'GaussianDpEvent')
  assert seen['noise_multiplier'] == pytest.approx(noise.std() * bbar / mechanism.sensitivity,
                                                   rel=0.02)


class _Net(nnx.Module):

  def __init__(self, rngs):
    self.l1 = nnx.Linear(3, 4, rngs=rngs)
    self.l2 = nnx.Linear(4, 2, rngs=rngs)

  def __call__(self, x):
    return self.l2(nnx.relu(self.l1(x)))


def _loss(model, x, y):
  return optax.softmax_cross_entropy_with_integer_labels(model(x), y).sum()


@pytest.mark.parametrize('poison', ['inf_pixel', 'nan_pixel', 'nan_gradient'])
def test_a_nonfinite_example_is_dropped_by_default(poison):
  model = _Net(nnx.Rngs(0))
  rng = np.random.default_rng(1)
  x = rng.normal(size=(5, 3)).astype(np.float32)
  y = np.array([0, 1, 1, 0, 1], np.int32)
  x[2, 0] = {'inf_pixel': np.inf, 'nan_pixel': np.nan, 'nan_gradient': 1.0}[poison]
  grads = jax.tree.map(lambda v: v, per_example.nnx_per_example_grads(_loss, model, x, y))
  if poison == 'nan_gradient':
    grads = jax.tree.map(lambda g: g.at[2].set(jnp.nan), grads)
  rows_finite = np.stack([np.isfinite(np.asarray(g).reshape(5, -1)).all(1)
                          for g in jax.tree.leaves(grads)]).all(0)
  assert list(rows_finite) == [True, True, False, True, True]   # the attack is real
  without = jax.tree.map(lambda g: jnp.delete(g, 2, axis=0), grads)
  params = nnx.state(model, nnx.Param)
  for tx in (dp.dp_unit_normalize(1.0, expected_batch_size=4, key=jax.random.key(5)),
             dp.dp_ssgd(0.1, 1.0, expected_batch_size=4, key=jax.random.key(5),
                        scope='per_layer', momentum=0.9)):
    got, _ = jax.jit(tx.update)(grads, tx.init(params), params)
    want, _ = jax.jit(tx.update)(without, tx.init(params), params)
    assert all(np.isfinite(np.asarray(v)).all() for v in jax.tree.leaves(got))
    # Neighbouring batches (with and without the example) release the same.
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
                 got, want)
  u = dp.normalize_per_example(grads)
  assert all(np.all(np.asarray(v[2]) == 0) for v in jax.tree.leaves(u))
  # The opt-in keeps the old behaviour (documented as voiding the guarantee).
  loud = dp.noisy_normalized_mean(grads, jax.random.key(0), noise_multiplier=1.0,
                                  expected_batch_size=4, nonfinite='propagate')
  assert any(np.isnan(np.asarray(v)).any() for v in jax.tree.leaves(loud))
