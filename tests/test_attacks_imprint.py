# Copyright 2026 The ssgd_optax Authors. Licensed under the Apache License 2.0.
"""The malicious-server imprint attack (Fowl et al., "Robbing the Fed")."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ssgd_optax import attacks
from ssgd_optax import privacy

SHAPE = (8, 8, 3)
D = 8 * 8 * 3
BINS = 256
# One defence object per setting: the client step is compiled once per object.
_NONE = attacks.Defence(optax.identity(), name='none')


def _model():
  k1, k2 = jax.random.split(jax.random.key(3))
  params = {'fc1': {'kernel': jax.random.normal(k1, (D, 16)) / np.sqrt(D), 'bias': jnp.zeros(16)},
            'fc2': {'kernel': jax.random.normal(k2, (16, 10)), 'bias': jnp.zeros(10)}}

  def apply_fn(p, x):
    h = jnp.tanh(x.reshape(len(x), -1) @ p['fc1']['kernel'] + p['fc1']['bias'])
    return h @ p['fc2']['kernel'] + p['fc2']['bias']
  return apply_fn, params


def _images(n, seed):
  """Random images in [0, 1], each with one pixel at the upper bound."""
  rng = np.random.default_rng(seed)
  x = rng.uniform(0, 1, (n, *SHAPE)).astype(np.float32) ** rng.uniform(0.5, 2, (n, 1, 1, 1))
  x = x.astype(np.float32)
  x.reshape(n, -1)[np.arange(n), rng.integers(0, D, n)] = 1.0
  return jnp.asarray(x), jnp.asarray(rng.integers(0, 10, n), jnp.int32)


@pytest.fixture(scope='module')
def imprinted():
  f, p = _model()
  ref, _ = _images(8192, seed=1)
  return attacks.imprint_model(f, p, SHAPE, bins=BINS, reference=ref, key=jax.random.key(0))


def _alone(m, x):
  """Indices of the inputs alone in their bin (bin i = (t_i, t_{i+1}])."""
  s = np.asarray(x).reshape(len(x), -1) @ np.asarray(m.measurement).reshape(-1)
  b = np.searchsorted(np.asarray(m.thresholds), s, side='left') - 1
  counts = np.bincount(b, minlength=m.bins)
  return np.flatnonzero(counts[b] == 1)


def _psnr_of_alone(m, x, y, defence=_NONE, rescale='none', batches=None):
  if batches is None:
    obs = attacks.observe(m.apply_fn, m.params, x, y, defence, threat_model='malicious_server')
  else:
    obs = attacks.secure_aggregate([
        attacks.observe(m.apply_fn, m.params, x[i:j], y[i:j], d,
                        threat_model='malicious_server') for (i, j), d in zip(batches, defence)])
  r = attacks.imprint_attack(m.apply_fn, obs, rescale=rescale)
  s = attacks.score(x, r.inputs)
  return s.psnr, _alone(m, x), r


@pytest.mark.parametrize('defence', ['none', 'ssgd_global', 'ssgd_per_layer'])
def test_isolated_inputs_recovered_exactly(imprinted, defence):
  x, y = _images(16, seed=2)
  d = attacks.make_defence(defence, jax.random.key(0), 16)
  psnr, alone, r = _psnr_of_alone(imprinted, x, y, d)
  assert len(alone) >= 10  # 16 inputs in 256 bins: most are alone
  # Scores are matched by MSE, so an isolated input scores against its own copy.
  assert np.all(psnr[alone] > 60), psnr[alone]
  assert np.sum(psnr > 60) >= len(alone)
  assert r.inputs.shape == x.shape and r.labels.shape == (16,)


def test_per_leaf_ssgd_needs_and_gets_the_rescale(imprinted):
  x, y = _images(16, seed=2)
  d = attacks.make_defence('ssgd_per_leaf', jax.random.key(0), 16)
  psnr, alone, _ = _psnr_of_alone(imprinted, x, y, d, rescale='none')
  # Per-leaf scaling multiplies every ratio by one factor: unscaled it fails.
  assert np.median(psnr[alone]) < 30
  psnr, alone, _ = _psnr_of_alone(imprinted, x, y, d, rescale='max')
  assert np.all(psnr[alone] > 60), psnr[alone]  # every image reaches the bound
  psnr, alone, _ = _psnr_of_alone(imprinted, x, y, d, rescale='statistic')
  assert np.all(psnr[alone] > 35), psnr[alone]  # within half a bin width


def test_secure_aggregation_does_not_stop_it(imprinted):
  x, y = _images(16, seed=4)
  batches = [(0, 4), (4, 8), (8, 12), (12, 16)]
  for name, rescale, floor in (('none', 'none', 60), ('ssgd_global', 'none', 60),
                               ('ssgd_per_leaf', 'max_each', 60)):
    ds = [attacks.make_defence(name, jax.random.key(0), 4)] * 4  # stateless
    psnr, alone, _ = _psnr_of_alone(imprinted, x, y, ds, rescale, batches=batches)
    assert len(alone) >= 10 and np.all(psnr[alone] > floor), (name, psnr[alone])
  # Quantised as the secure-aggregation protocol does (16 fractional bits): the
  # imprint gradients are ~1e-6 at gain 1, below the resolution 2^-16 ...
  ds = [attacks.make_defence('ssgd_global', jax.random.key(0), 4)] * 4
  obs = [attacks.observe(imprinted.apply_fn, imprinted.params, x[i:j], y[i:j], d,
                         threat_model='malicious_server') for (i, j), d in zip(batches, ds)]
  q = attacks.imprint_attack(imprinted.apply_fn, attacks.secure_aggregate(obs, frac_bits=16))
  # ... unless the server scales them up: 30 fractional bits keep them.
  q30 = attacks.imprint_attack(imprinted.apply_fn, attacks.secure_aggregate(obs, frac_bits=30))
  alone = _alone(imprinted, x)
  assert np.all(attacks.score(x, q30.inputs).psnr[alone] > 40)
  assert np.median(attacks.score(x, q.inputs).psnr) < np.median(
      attacks.score(x, q30.inputs).psnr)


@pytest.mark.parametrize('sigma', [0.908, 3.779])  # DP-SSGD at epsilon 8 and 1 (benchmark run)
def test_dp_ssgd_leaves_nothing_recognisable(imprinted, sigma):
  x, y = _images(16, seed=2)
  d = attacks.Defence(privacy.dp_unit_normalize(sigma, expected_batch_size=16,
                                                key=jax.random.key(5)), per_example=True)
  psnr, _, _ = _psnr_of_alone(imprinted, x, y, d)
  assert np.max(psnr) < 15, psnr  # a constant grey guess scores ~10 dB here


def test_dp_test_fails_on_a_noiseless_stand_in(imprinted):
  # The assertion above can fail: with the noise switched off (per-example
  # normalisation alone) the same attack recovers the isolated inputs exactly.
  x, y = _images(16, seed=2)
  d = attacks.Defence(privacy.dp_unit_normalize(0.0, expected_batch_size=16,
                                                key=jax.random.key(5)), per_example=True)
  psnr, alone, _ = _psnr_of_alone(imprinted, x, y, d)
  assert np.all(psnr[alone] > 60) and not np.max(psnr) < 15


@pytest.mark.slow  # one compilation per defence
def test_every_registered_defence_runs(imprinted):
  x, y = _images(4, seed=6)
  for name in attacks.available_defences():
    d = attacks.make_defence(name, jax.random.key(0), 4)
    obs = attacks.observe(imprinted.apply_fn, imprinted.params, x, y, d,
                          threat_model='malicious_server')
    r = attacks.imprint_attack(imprinted.apply_fn, obs, rescale='statistic')
    assert r.inputs.shape == x.shape and bool(jnp.all(jnp.isfinite(r.inputs))), name


def test_expected_recovered_matches_simulation_and_attack(imprinted):
  rng = np.random.default_rng(0)
  for k, b in ((16, 8), (256, 64), (64, 64)):
    bins = rng.integers(0, k, (4000, b))
    counts = np.apply_along_axis(lambda r: np.bincount(r, minlength=k), 1, bins)
    sim = np.mean(np.take_along_axis(counts, bins, 1) == 1) * b
    assert abs(sim - attacks.expected_recovered(k, b)) < 0.03 * b
  assert attacks.expected_recovered(1, 1) == 1.0 and attacks.expected_recovered(1, 2) == 0.0
  # Inputs from the reference distribution fill the quantile bins uniformly:
  # the number alone in their bin is the expected one ...
  alone = [len(_alone(imprinted, _images(64, seed=100 + s)[0])) for s in range(100)]
  assert abs(np.mean(alone) - attacks.expected_recovered(BINS, 64)) < 2.5, np.mean(alone)
  # ... and the attack recovers exactly those.
  x, y = _images(64, seed=100)
  psnr, idx, _ = _psnr_of_alone(imprinted, x, y)
  assert np.sum(psnr > 60) == len(idx) == alone[0] and np.all(psnr[idx] > 60)


@pytest.mark.parametrize('statistic', ['mean', 'random'])
def test_statistic_rescale_recovers_per_leaf_ssgd_for_any_measurement(statistic):
  # A random measurement vector has entries of both signs: statistics (and bin
  # midpoints) lie on both sides of 0 and near it. The old estimate (statistic over
  # its bin's midpoint, positive midpoints only, a median) failed there: here the
  # worst isolated input came back at 4.3 dB in the first trial, and on 16x16 digits
  # and crops the median fell below 36 dB in 4 of 12 trials. Every isolated input
  # must come back above 35 dB.
  f, p = _model()
  ref, _ = _images(2048, seed=1)
  d = attacks.make_defence('ssgd_per_leaf', jax.random.key(0), 16)
  worst, apply_fn = [], None
  for trial in range(3):
    m = attacks.imprint_model(f, p, SHAPE, bins=BINS, statistic=statistic, reference=ref,
                              key=jax.random.key(10 + trial))
    # One compiled client step: the direction v (in apply_fn) plays no part in the read-out.
    apply_fn = m.apply_fn if apply_fn is None else apply_fn
    m = m._replace(apply_fn=apply_fn)
    x, y = _images(16, seed=20 + trial)
    obs = attacks.observe(m.apply_fn, m.params, x, y, d, threat_model='malicious_server')
    r = attacks.imprint_attack(m.apply_fn, obs, rescale='statistic')
    psnr = attacks.score(x, r.inputs).psnr
    alone = _alone(m, x)
    assert len(alone) >= 12
    worst.append(float(np.min(psnr[alone])))
  assert min(worst) > 35, worst


def test_expected_recovered_from_held_out_bins_tracks_uneven_bins():
  # Thresholds from 256 reference inputs for 256 bins are uneven for other data of
  # the same kind: fewer inputs are alone than the uniform formula says, and the
  # held-out estimate (imprint_bins of other public inputs) predicts the count.
  f, p = _model()
  ref, _ = _images(256, seed=1)
  m = attacks.imprint_model(f, p, SHAPE, bins=BINS, reference=ref, key=jax.random.key(0))
  held, _ = _images(2000, seed=2)
  pool, _ = _images(4000, seed=3)
  pool_bins = attacks.imprint_bins(m, pool)
  rng = np.random.default_rng(0)
  alone = []
  for _ in range(400):
    b = pool_bins[rng.choice(len(pool), 64, replace=False)]
    alone.append(np.sum(np.bincount(b + 1, minlength=BINS + 1)[b + 1] == 1))
  measured = np.mean(alone)
  uniform = attacks.expected_recovered(BINS, 64)
  predicted = attacks.expected_recovered(BINS, 64, reference_bins=attacks.imprint_bins(m, held))
  assert uniform - measured > 1.0, (uniform, measured)      # uniform bins: optimistic
  assert abs(predicted - measured) < 0.5, (predicted, measured)
  # imprint_bins agrees with the attack's own binning (the helper the tests use).
  x, _ = _images(64, seed=100)
  b = attacks.imprint_bins(m, x)
  np.testing.assert_array_equal(np.flatnonzero(np.bincount(b, minlength=BINS)[b] == 1),
                                _alone(m, x))


def test_measurement_statistics(imprinted):
  w = attacks.measurement_vector('axis_mean', SHAPE, axis=-1, index=2)
  assert float(w.sum()) == pytest.approx(1.0) and float(w[..., :2].sum()) == 0
  w = attacks.measurement_vector('axis_mean', SHAPE, axis=0, index=7)
  assert float(w[7].sum()) == pytest.approx(1.0)
  r = attacks.measurement_vector('random', SHAPE, key=jax.random.key(0))
  assert float(jnp.linalg.norm(r)) == pytest.approx(1.0)
  # Binning by the red channel isolates inputs as well. (Same architecture,
  # other parameters: the fixture's compiled client step serves both.)
  f, p = _model()
  ref, _ = _images(512, seed=1)
  m = attacks.imprint_model(f, p, SHAPE, bins=BINS, statistic='axis_mean', index=0,
                            reference=ref, key=jax.random.key(0))
  m = m._replace(apply_fn=imprinted.apply_fn)
  x, y = _images(16, seed=9)
  psnr, alone, _ = _psnr_of_alone(m, x, y)
  assert len(alone) >= 10 and np.all(psnr[alone] > 60)
  t = attacks.imprint_thresholds(attacks.measurement_vector('mean', (4,)), 8, loc=0.5, scale=0.1)
  assert t.shape == (8,) and bool(jnp.all(jnp.diff(t) > 0))


def test_bad_input(imprinted):
  f, p = _model()
  key = jax.random.key(0)
  ref, _ = _images(32, seed=1)
  with pytest.raises(ValueError, match='bins'):
    attacks.imprint_model(f, p, SHAPE, bins=0, reference=ref, key=key)
  with pytest.raises(ValueError, match='bins must be <= width'):
    attacks.imprint_model(f, p, SHAPE, bins=65, width=64, reference=ref, key=key)
  with pytest.raises(ValueError, match='statistic.*wrong axis'):
    attacks.imprint_model(f, p, SHAPE, bins=8, statistic=jnp.ones((3, 8, 8)), reference=ref,
                          key=key)
  with pytest.raises(ValueError, match='axis must'):
    attacks.imprint_model(f, p, SHAPE, bins=8, statistic='axis_mean', axis=3, reference=ref,
                          key=key)
  with pytest.raises(ValueError, match='index must be < 3'):
    attacks.imprint_model(f, p, SHAPE, bins=8, statistic='axis_mean', index=3, reference=ref,
                          key=key)
  with pytest.raises(ValueError, match='statistic'):
    attacks.imprint_model(f, p, SHAPE, bins=8, statistic='median', reference=ref, key=key)
  with pytest.raises(ValueError, match='reference must be'):
    attacks.imprint_model(f, p, SHAPE, bins=8, reference=jnp.moveaxis(ref, -1, 1), key=key)
  with pytest.raises(ValueError, match='reference= .* loc= and scale='):
    attacks.imprint_model(f, p, SHAPE, bins=8, key=key)
  with pytest.raises(ValueError, match='gain'):
    attacks.imprint_model(f, p, SHAPE, bins=8, reference=ref, gain=0.0, key=key)
  with pytest.raises(ValueError, match='batch_size'):
    attacks.expected_recovered(4, 0)
  with pytest.raises(ValueError, match='reference_bins'):
    attacks.expected_recovered(4, 2, reference_bins=[0])
  with pytest.raises(ValueError, match='reference_bins'):
    attacks.expected_recovered(4, 2, reference_bins=[0.5, 1.5])
  with pytest.raises(ValueError, match=r'reference_bins must lie in \[-1, 3\]'):
    attacks.expected_recovered(4, 2, reference_bins=[0, 4])
  with pytest.raises(TypeError, match='ImprintedModel'):
    attacks.imprint_bins(f, ref)
  with pytest.raises(ValueError, match='inputs must be'):
    attacks.imprint_bins(imprinted, ref[:, :4])
  m = attacks.imprint_model(f, p, SHAPE, bins=4, width=8, reference=ref, key=key)
  x, y = _images(6, seed=3)
  obs = attacks.observe(m.apply_fn, m.params, x, y, _NONE, threat_model='malicious_server')
  with pytest.raises(ValueError, match='num_examples = 6 exceeds the capacity.*4 bins'):
    attacks.imprint_attack(m.apply_fn, obs)
  with pytest.raises(ValueError, match='bins must be <= the imprint layer width 8'):
    attacks.imprint_attack(m.apply_fn, obs, bins=9)
  with pytest.raises(ValueError, match='rescale'):
    attacks.imprint_attack(imprinted.apply_fn, obs._replace(num_examples=4), rescale='min')
  # Observations that lack what the attack needs.
  x, y = _images(2, seed=3)
  honest = attacks.observe(imprinted.apply_fn, imprinted.params, x, y, _NONE)
  with pytest.raises(ValueError, match='threat_model must be "malicious_server"'):
    attacks.imprint_attack(imprinted.apply_fn, honest)
  plain = attacks.observe(f, p, x, y, _NONE, threat_model='malicious_server')
  with pytest.raises(ValueError, match='no imprint module'):
    attacks.imprint_attack(f, plain)
  bad = honest._replace(threat_model='malicious_server', update={'model': p})
  with pytest.raises(ValueError, match='does not match the parameters'):
    attacks.imprint_attack(imprinted.apply_fn, bad)
  with pytest.raises(TypeError, match='Observation'):
    attacks.imprint_attack(imprinted.apply_fn, {'update': None})
  with pytest.raises(ValueError, match='threat_model must be one of'):
    attacks.observe(f, p, x, y, threat_model='evil')
  with pytest.raises(TypeError, match='non-empty sequence'):
    attacks.secure_aggregate([])
  with pytest.raises(ValueError, match='same model'):
    attacks.secure_aggregate([honest, honest._replace(bounds=(0.0, 2.0))])


def test_bad_observations_and_bins():
  # The bad input beyond test_bad_input: bins of the read-out and of
  # expected_recovered, statistics that cannot bin, observations lacking a
  # field the attack needs or carrying non-finite gradients.
  f, p = _model()
  key = jax.random.key(0)
  ref, _ = _images(32, seed=1)
  m = attacks.imprint_model(f, p, SHAPE, bins=8, width=8, reference=ref, key=key)
  x, y = _images(4, seed=3)
  obs = attacks.observe(m.apply_fn, m.params, x, y, _NONE, threat_model='malicious_server')
  for bins, err in ((0, ValueError), (-1, ValueError), (2.5, TypeError), (True, TypeError)):
    with pytest.raises(err, match='bins must be an int'):
      attacks.imprint_attack(m.apply_fn, obs, bins=bins)
  with pytest.raises(ValueError, match='bins must be an int >= 1'):
    attacks.imprint_readout(obs.update, 0)
  with pytest.raises(ValueError, match='bins must be an int >= 1'):
    attacks.expected_recovered(0, 4)
  with pytest.raises(ValueError, match='width must be an int >= 1'):
    attacks.imprint_model(f, p, SHAPE, bins=8, width=0, reference=ref, key=key)
  with pytest.raises(ValueError, match='bins must be an int >= 1'):
    attacks.imprint_model(f, p, SHAPE, bins=-3, reference=ref, key=key)
  with pytest.raises(ValueError, match='not all zero'):
    attacks.measurement_vector(jnp.zeros(SHAPE), SHAPE)
  with pytest.raises(ValueError, match='wrong axis order'):
    attacks.measurement_vector(jnp.ones((D,)), SHAPE)  # flattened: no axes to bin along
  with pytest.raises(ValueError, match='rtol'):
    attacks.imprint_attack(m.apply_fn, obs, rtol=-1.0)
  bad = {
      'num_examples must be an int >= 1': obs._replace(num_examples=0),
      'observation.params: the update has no imprint module': obs._replace(params=None),
      'shared update does not match the parameters': obs._replace(update=None),
      'does not match the parameters': obs._replace(update={'model': obs.update['model']}),
      'cannot map inputs': obs._replace(input_shape=(4, 4, 3)),
      'NaN or Inf': obs._replace(update=jax.tree.map(lambda a: a * jnp.nan, obs.update)),
  }
  for msg, o in bad.items():
    with pytest.raises(ValueError, match=msg):
      attacks.imprint_attack(m.apply_fn, o)
  with pytest.raises(TypeError, match='num_examples must be an int'):
    attacks.imprint_attack(m.apply_fn, obs._replace(num_examples=None))
  assert attacks.imprint_attack(m.apply_fn, obs).inputs.shape == x.shape  # the good one runs


@pytest.mark.slow  # benchmark smoke test: run with -m slow
def test_leakage_benchmark_scaling_quick(tmp_path):
  from ssgd_examples.scripts import load
  bench = load('benchmarks/leakage.py')
  out = tmp_path / 'batch.md'
  text = bench.main(['--quick', '--scaling', '--out', str(out), '--png-dir', str(tmp_path)])
  assert '| imprint | ssgd_per_leaf | 1 | 4 | 1.00 | 1.00 |' in text
  assert '| imprint SecAgg x2 | dp_ssgd_eps8 | 2 |' in text and '| IG global | ' in text
  assert 'load average' in text and (tmp_path / 'leakage_batch.png').stat().st_size > 0
  assert out.read_text().startswith('```\npython benchmarks/leakage.py --quick --scaling')
