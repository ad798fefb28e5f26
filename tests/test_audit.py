# Copyright 2026 The ssgd_optax Authors. Licensed under the Apache License 2.0.
"""Tests of ssgd_optax.audit: canaries, scores, statistics, and the audit of broken defences.

The central claim: a white-box audit is a *lower* bound that a correct
defence never exceeds and that exposes a broken one. The catching tests use
the multi-run audit of a defence alone at the settings of the power table in
benchmarks/README.md (section 9: full batch, T = 4 steps, claimed epsilon 1
at delta 1e-5, 4,000 runs), where a 2x error (noise halved, or a clip norm
twice the claimed sensitivity) was caught in every seed; the correct defence
at the same setting stays below its claim.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ssgd_optax import audit
from ssgd_optax import privacy
from ssgd_examples.scripts import load as _load

DELTA = 1e-5
CLAIMED = 1.0  # the epsilon every defence below claims
M = 1000       # canaries of the one-run audits
T = 4          # full-batch steps
RUNS = 4000    # runs of the multi-run audits (the power table's 4,000-run column)


@pytest.fixture(scope='module')
def sigma():
  """Noise multiplier whose full-batch, T-step run the accountant calls (1, 1e-5)-DP."""
  z = privacy.calibrate_noise_multiplier(CLAIMED, sampling_rate=1.0, steps=T, delta=DELTA)
  assert privacy.compute_epsilon(noise_multiplier=z, sampling_rate=1.0, steps=T,
                                 delta=DELTA) <= CLAIMED
  return z


def _dpsgd_defence(z, clip_norm, accounted_sensitivity):
  """Per-example DP-SGD from the library's pieces; noise from the accounted sensitivity."""
  noise = privacy.add_gaussian_noise(z, accounted_sensitivity, 1.0, key=jax.random.key(2))

  def update(rows, state, params=None):
    clipped, _ = privacy.clip_global_per_example(rows, clip_norm)
    return noise.update(jax.tree.map(lambda r: jnp.sum(r, 0), clipped), state, params)

  return optax.GradientTransformation(noise.init, update)


def _multi_run(defence, claim, seed, **kw):
  kw = dict(dict(steps=T, sampling_rate=1.0, delta=DELTA, claim=claim), **kw)
  return audit.audit_defence_multi_run(defence, jnp.zeros(4), key=jax.random.key(seed),
                                       num_runs=RUNS, **kw)


def test_dp_sgd_whose_sensitivity_is_understated_2x_is_caught(sigma):
  claim = privacy.dpsgd_mechanism(1.0, sigma)
  # Canaries at 100x the claimed sensitivity (the claim's default): the correct defence
  # clips them to C = 1, the broken one to 2.
  correct = _multi_run(_dpsgd_defence(sigma, 1.0, 1.0), claim, 3, per_example=True)
  broken = _multi_run(_dpsgd_defence(sigma, 2.0, 1.0), claim, 3, per_example=True)
  assert correct.claimed_epsilon == pytest.approx(CLAIMED, abs=0.01)
  assert correct.epsilon < CLAIMED < broken.epsilon, (correct, broken)
  assert not correct.exceeds_claim and broken.exceeds_claim


def test_dp_ssgd_with_half_its_noise_is_caught(sigma):
  claim = privacy.DPSSGDMechanism(sigma, num_groups=1)

  def run(z):
    tx = privacy.dp_unit_normalize(z, expected_batch_size=1.0, key=jax.random.key(1))
    return _multi_run(tx, claim, 0, per_example=True)

  correct, broken = run(sigma), run(sigma / 2)
  assert correct.epsilon < CLAIMED < broken.epsilon, (correct, broken)


def test_per_tensor_noise_with_understated_sensitivities_is_caught():
  # Backprop clipping's release: per-tensor bounds, L = 2 Gaussians per step; random
  # canaries with per-leaf norms see both releases.
  params = {'a': jnp.zeros(3), 'b': jnp.zeros(2)}
  sens = {'a': 1.0, 'b': 0.5}
  z = privacy.calibrate_noise_multiplier(CLAIMED, sampling_rate=1.0, steps=T, delta=DELTA,
                                         num_releases=2)
  claim = privacy.BackpropClipMechanism(z, sens, 2)

  def run(true_scale):
    tx = privacy.add_gaussian_noise(z, sens, 1.0, key=jax.random.key(4))
    return audit.audit_defence_multi_run(
        tx, params, key=jax.random.key(5), num_runs=RUNS, steps=T, sampling_rate=1.0,
        delta=DELTA, claim=claim, canary_norm=jax.tree.map(lambda s: s * true_scale, sens),
        per_example=False, kind='random')
  correct, broken = run(1.0), run(2.0)
  assert correct.epsilon < CLAIMED < broken.epsilon, (correct, broken)


def test_gdp_bound_is_valid_on_pure_noise_where_jax_privacys_is_not():
  # mu = 0: nothing separates the runs, so a valid 95 % bound is >= 1 in at most 5 % of
  # seeds. jax_privacy 2.0.0's epsilon_from_gdp takes |mu| over thresholds with upper
  # confidence bounds on both error rates; on these scores it reports epsilon > 1 in
  # most seeds (median about 4), so multi_run_audit does not use it.
  from jax_privacy import auditing
  rng = np.random.default_rng(0)
  ours, theirs = [], []
  for _ in range(20):
    inc = rng.random(1000) < 0.5
    scores = rng.normal(size=1000)
    ours.append(audit.multi_run_audit(scores, inc, delta=DELTA).epsilon)
    theirs.append(auditing.CanaryScoreAuditor(scores[inc], scores[~inc]).epsilon_from_gdp(
        0.05, DELTA))
  assert max(ours) < 0.5, ours
  assert np.mean(np.array(theirs) > 1) > 0.5, theirs   # the bug the check above guards


def test_gdp_bound_stays_below_the_true_epsilon():
  mu = 1.0   # one Gaussian release, sensitivity 1, std 1
  true_eps = audit.gdp_epsilon(mu, DELTA)
  np.testing.assert_allclose(true_eps, privacy.compute_epsilon(
      noise_multiplier=1 / mu, sampling_rate=1.0, steps=1, delta=DELTA), rtol=0.02)
  rng = np.random.default_rng(1)
  for _ in range(10):
    inc = rng.random(4000) < 0.5
    r = audit.multi_run_audit(rng.normal(size=4000) + mu * inc, inc, delta=DELTA)
    assert 0.5 * true_eps < r.epsilon < true_eps, (r, true_eps)


def test_runs_draw_fresh_noise_and_a_hidden_fixed_key_is_flagged():
  # The defence's noise key lives in its state: each run folds it with its index, so the
  # excluded runs' scores spread like the noise (std sigma * sqrt(T) in canary units).
  tx = privacy.add_gaussian_noise(2.0, 1.0, 1.0, key=jax.random.key(0))
  s, b = audit.defence_scores_multi_run(tx, jnp.zeros(3), key=jax.random.key(1), num_runs=2000,
                                        steps=T, sampling_rate=1.0, canary_norm=1.0,
                                        per_example=False)
  assert abs(np.std(s[~b]) / (2.0 * np.sqrt(T)) - 1) < 0.1
  # A transform that keeps its key outside the state adds the same noise in every run:
  # the runs separate perfectly and the audit says so.
  fixed = jax.random.normal(jax.random.key(9), (3,)) * 2.0
  hidden = optax.GradientTransformation(lambda p: optax.EmptyState(),
                                        lambda u, st, p=None: (u + fixed, st))
  r = audit.audit_defence_multi_run(hidden, jnp.zeros(3), key=jax.random.key(1), num_runs=2000,
                                    steps=1, sampling_rate=1.0, delta=DELTA,
                                    canary_norm=1.0, per_example=False, kind='random')
  assert r.epsilon > 3, r


def test_one_run_audit_of_correct_subsampled_dp_ssgd_stays_below_its_claim():
  q, steps = 0.2, 10
  z = privacy.calibrate_noise_multiplier(2.0, sampling_rate=q, steps=steps, delta=DELTA)
  tx = privacy.dp_unit_normalize(z, expected_batch_size=q * M, key=jax.random.key(6))
  r = audit.audit_defence(tx, jnp.zeros(M), key=jax.random.key(7), num_canaries=M,
                          steps=steps, sampling_rate=q, delta=DELTA,
                          claim=privacy.DPSSGDMechanism(z, 1), per_example=True)
  assert 0 <= r.epsilon < 2.0 and r.claimed_epsilon == pytest.approx(2.0, abs=0.02)
  assert r.num_canaries == M and 400 < r.num_included < 600 and not r.exceeds_claim


def test_data_baseline_leaves_exactly_the_canaries():
  # The training-loop recipe: the white-box auditor removes the data's noise-free part
  # of the update (it knows the data); with the noise off, what is left on each Dirac
  # canary is exactly its own clipped contribution (1 if present, else 0).
  params = {'w': jnp.zeros((6, 5))}
  rows = {'w': jax.random.normal(jax.random.key(0), (7, 6, 5)) * 3}
  c = audit.gradient_canaries(jax.random.key(1), params, 8, kind='dirac', norm=1.0)
  present = jnp.arange(8) % 3 == 0

  @jax.jit   # one compilation instead of an op-by-op dispatch of each step
  def scores(rows, c, present):
    both, mask = audit.insert_canaries(rows, None, c, present, 8)
    clipped, _ = privacy.clip_global_per_example(both, 1.0)
    update = jax.tree.map(lambda r: jnp.sum(jnp.where(mask[:, None, None], r, 0), 0), clipped)
    data_only, _ = privacy.clip_global_per_example(rows, 1.0)
    baseline = jax.tree.map(lambda r: jnp.sum(r, 0), data_only)
    return audit.canary_scores(update, c, baseline), audit.canary_scores(update, c)

  with_base, without = scores(rows, c, present)
  np.testing.assert_allclose(with_base, present, atol=1e-5)
  # Without the baseline the data's projection swamps the signal.
  assert np.max(np.abs(without - present)) > 0.1


def test_subsampled_gaussian_llr_is_the_likelihood_ratio():
  q, sigma = 0.1, 0.8
  x = jnp.linspace(-3, 3, 7)
  pdf = lambda v, m: jnp.exp(-(v - m) ** 2 / (2 * sigma ** 2))
  ref = jnp.log(((1 - q) * pdf(x, 0.0) + q * pdf(x, 1.0)) / pdf(x, 0.0))
  np.testing.assert_allclose(audit.subsampled_gaussian_llr(x, sampling_rate=q, noise_std=sigma),
                             ref, rtol=1e-5, atol=1e-6)
  full = audit.subsampled_gaussian_llr(x, sampling_rate=1.0, noise_std=sigma)
  np.testing.assert_allclose(full, (x - 0.5) / sigma ** 2, rtol=1e-5, atol=1e-6)
  # noise_std=None: the noise std estimated across the canaries (most are absent).
  many = jax.random.normal(jax.random.key(0), (20000,)) * sigma
  np.testing.assert_allclose(audit.subsampled_gaussian_llr(many, sampling_rate=q),
                             audit.subsampled_gaussian_llr(many, sampling_rate=q,
                                                           noise_std=sigma), rtol=0.03, atol=0.02)


# ---------------------------------------------------------------- canaries


def test_canary_norms_scalar_per_leaf_and_dirac():
  params = {'a': jnp.zeros((3, 5)), 'b': jnp.zeros(7)}
  c = audit.gradient_canaries(jax.random.key(0), params, 6, kind='random', norm=2.0)
  whole = np.sqrt(sum(np.sum(np.asarray(x).reshape(6, -1) ** 2, 1)
                      for x in jax.tree.leaves(c.directions)))
  np.testing.assert_allclose(whole, 2.0, rtol=1e-5)
  c = audit.gradient_canaries(jax.random.key(0), params, 6, kind='random',
                              norm={'a': 1.0, 'b': 3.0})
  np.testing.assert_allclose(np.linalg.norm(np.asarray(c.directions['a']).reshape(6, -1), axis=1),
                             1.0, rtol=1e-5)
  np.testing.assert_allclose(np.linalg.norm(np.asarray(c.directions['b']), axis=1), 3.0,
                             rtol=1e-5)
  d = audit.gradient_canaries(jax.random.key(1), params, 22, kind='dirac')
  flat = np.concatenate([np.asarray(x).reshape(22, -1) for x in jax.tree.leaves(d.directions)], 1)
  assert np.all((flat != 0).sum(1) == 1)                 # one coordinate each
  assert len(set(np.argmax(np.abs(flat), 1))) == 22      # all distinct (22 = every coordinate)
  np.testing.assert_array_equal(np.abs(flat).sum(1), 1.0)


def test_scores_match_a_float64_reference():
  params = {'a': jnp.zeros((4, 3)), 'b': jnp.zeros(5)}
  norms = {'a': 0.5, 'b': 2.0}
  c = audit.gradient_canaries(jax.random.key(0), params, 9, kind='random', norm=norms)
  u = {'a': jax.random.normal(jax.random.key(1), (4, 3)), 'b': jnp.arange(5.0)}
  ref = sum(np.asarray(c.directions[k], np.float64).reshape(9, -1)
            @ np.asarray(u[k], np.float64).ravel() / norms[k] ** 2 for k in params)
  np.testing.assert_allclose(audit.canary_scores(u, c), ref, rtol=1e-5)
  np.testing.assert_allclose(jax.jit(audit.canary_scores)(u, c), ref, rtol=1e-5)


def test_sampling_follows_inclusion_and_rate():
  m, q = 20000, 0.3
  included = jnp.arange(m) % 2 == 0
  present = np.asarray(audit.sample_canaries(jax.random.key(0), included, q))
  assert not present[1::2].any()                         # excluded never appear
  rate = present[::2].mean()
  assert abs(rate - q) < 5 * np.sqrt(q * (1 - q) / (m // 2))


def test_insert_canaries_appends_present_rows_masked():
  c = audit.gradient_canaries(jax.random.key(0), {'w': jnp.zeros(6)}, 4, kind='dirac')
  rows = {'w': jnp.ones((2, 6))}
  present = jnp.array([False, True, False, True])
  out, mask = audit.insert_canaries(rows, jnp.array([True, False]), c, present, 3)
  assert out['w'].shape == (5, 6)
  np.testing.assert_array_equal(mask, [True, False, True, True, False])
  np.testing.assert_array_equal(out['w'][2], c.directions['w'][1])
  np.testing.assert_array_equal(out['w'][3], c.directions['w'][3])
  summed = audit.canary_sum(c, present)['w']
  np.testing.assert_allclose(summed, c.directions['w'][1] + c.directions['w'][3])


# ---------------------------------------------------------------- statistics


def test_chance_scores_give_no_epsilon_and_half_auroc():
  rng = np.random.default_rng(0)
  inc = rng.random(4000) < 0.5
  r = audit.one_run_audit(rng.normal(size=4000), inc, delta=DELTA)
  assert r.epsilon < 0.2 and abs(r.auroc - 0.5) < 0.05
  assert r.method == 'one_run' and r.confidence == pytest.approx(0.95)


def test_multi_run_on_vectorised_gaussian_runs():
  mu = 2.0  # one Gaussian release, sensitivity 1, std 1/mu
  true_eps = privacy.compute_epsilon(noise_multiplier=1 / mu, sampling_rate=1.0, steps=1,
                                     delta=DELTA)

  def run(key, included):
    # The whole "training run": one noisy sum, with or without the canary.
    return included * 1.0 + jax.random.normal(key) / mu

  scores, inc = audit.multi_run_scores(run, jax.random.key(0), 4000)
  for method in audit.MULTI_RUN_METHODS:
    r = audit.multi_run_audit(scores, inc, delta=DELTA, method=method)
    assert 0.5 < r.epsilon < true_eps, (method, r, true_eps)


def test_black_box_loss_audit_detects_memorisation():
  from ssgd_examples import data
  ds = data.load_digits()
  x, y = ds.x_train.reshape(len(ds.x_train), -1), ds.y_train
  x0, y0 = x.copy(), y.copy()
  canaries = audit.mislabeled_canaries(jax.random.key(0), x, y, 200, num_classes=10)
  inc = np.asarray(audit.draw_inclusion(jax.random.key(1), 200))
  xt, yt = audit.with_canaries(x, y, canaries, inc)
  np.testing.assert_array_equal(x, x0)                   # the data set is untouched
  np.testing.assert_array_equal(y, y0)
  assert len(xt) == len(x) - 200 + inc.sum()
  k1, k2 = jax.random.split(jax.random.key(2))
  params = {'w1': jax.random.normal(k1, (64, 256)) / 8, 'w2': jax.random.normal(k2, (256, 10)) / 16}

  def apply(p, xb):
    return jax.nn.relu(xb @ p['w1']) @ p['w2']

  opt = optax.adam(3e-3)

  @jax.jit
  def train(p):
    def body(carry, _):
      p, s = carry
      g = jax.grad(lambda pp: optax.softmax_cross_entropy_with_integer_labels(
          apply(pp, xt), yt).mean())(p)
      u, s = opt.update(g, s, p)
      return (optax.apply_updates(p, u), s), None
    return jax.lax.scan(body, (p, opt.init(p)), None, length=400)[0][0]

  trained = train(params)
  scores = audit.loss_scores(lambda xb: apply(trained, xb), canaries)
  r = audit.one_run_audit(scores, inc, delta=DELTA)
  assert r.auroc > 0.9 and r.epsilon > 0.5, r


# ---------------------------------------------------------------- bad input


def _untouched(call, *arrays):
  """Runs ``call()`` and asserts every array (NumPy, writable) still holds its values."""
  before = [np.array(a, copy=True) for a in arrays]
  call()
  for a, b in zip(arrays, before):
    np.testing.assert_array_equal(a, b)


def _user_data():
  x = np.random.default_rng(0).random((30, 2, 2, 1)).astype(np.float32)
  return x, np.arange(30) % 3


def test_audit_leaves_model_and_data_untouched():
  # NumPy (writable) parameters and data: an in-place write would show.
  params = {'w': np.arange(40.0, dtype=np.float32), 'v': np.ones((2, 3), np.float32)}
  tx = privacy.dp_unit_normalize(1.0, expected_batch_size=1.0, key=jax.random.key(0))
  _untouched(lambda: audit.audit_defence(
      tx, params, key=jax.random.key(1), num_canaries=20, steps=2, sampling_rate=1.0,
      delta=DELTA, canary_norm=1.0, per_example=True), params['w'], params['v'])
  assert sorted(params) == ['v', 'w']                    # the tree itself is not changed
  norms = {'w': np.float32(1.0), 'v': np.float32(2.0)}
  _untouched(lambda: audit.gradient_canaries(jax.random.key(0), params, 4, norm=norms),
             params['w'], params['v'], norms['w'], norms['v'])
  rows = {'w': np.ones((3, 40), np.float32), 'v': np.ones((3, 2, 3), np.float32)}
  mask = np.array([True, False, True])
  c = audit.gradient_canaries(jax.random.key(0), params, 4)
  _untouched(lambda: audit.insert_canaries(rows, mask, c, jnp.ones(4, bool), 4),
             rows['w'], rows['v'], mask)
  x, y = _user_data()
  _untouched(lambda: audit.mislabeled_canaries(jax.random.key(2), x, y, 10, num_classes=3), x, y)
  c = audit.mislabeled_canaries(jax.random.key(2), x, y, 10, num_classes=3)
  c.x[:] = -1.0                                          # canaries are copies
  inc = np.ones(10, bool)
  _untouched(lambda: audit.with_canaries(x, y, c, inc), x, y, inc, c.x, c.y)
  _untouched(lambda: audit.loss_scores(lambda xb: jnp.zeros((len(xb), 3)), c), c.x, c.y)
  scores, included = np.linspace(0, 1, 10), np.arange(10) % 2 == 0
  _untouched(lambda: audit.one_run_audit(scores, included, delta=DELTA), scores, included)


def test_untouched_check_catches_an_in_place_canary_insertion():
  """The check above can fail: a with_canaries that writes the canaries into x in place."""
  def broken_with_canaries(x, y, canaries, included):
    x[canaries.source_index[included]] = canaries.x[included]   # the bug: in place
    return x, y

  x, y = _user_data()
  c = audit.mislabeled_canaries(jax.random.key(2), x, y, 10, num_classes=3)
  c = c._replace(x=c.x + 1.0)
  with pytest.raises(AssertionError):
    _untouched(lambda: broken_with_canaries(x, y, c, np.ones(10, bool)), x, y)


def _mech_kwargs(**over):
  kw = dict(key=jax.random.key(0), num_canaries=10, steps=2, sampling_rate=1.0, delta=DELTA,
            canary_norm=1.0, per_example=True)
  kw.update(over)
  return kw


def _run_kwargs(**over):
  kw = _mech_kwargs(**over)
  del kw['num_canaries']
  return kw


@pytest.mark.parametrize('call, name', [
    (lambda: audit.draw_inclusion(jax.random.key(0), 1), 'num_canaries'),
    (lambda: audit.draw_inclusion(jax.random.key(0), 10, 0.0), 'probability'),
    (lambda: audit.draw_inclusion(jax.random.key(0), 10, 1.0), 'probability'),
    (lambda: audit.gradient_canaries(jax.random.key(0), jnp.zeros(3), 4, kind='dirac'),
     'num_canaries'),
    (lambda: audit.gradient_canaries(jax.random.key(0), jnp.zeros(3), 2, kind='spike'), 'kind'),
    (lambda: audit.gradient_canaries(jax.random.key(0), jnp.zeros(3), 2, norm=0.0), 'norm'),
    (lambda: audit.one_run_audit(np.zeros(4), np.array([1, 0, 1, 0], bool), delta=DELTA,
                                 confidence=1.0), 'confidence'),
    (lambda: audit.one_run_audit(np.zeros(4), np.array([1, 0, 1, 0], bool), delta=DELTA,
                                 confidence=0.0), 'confidence'),
    (lambda: audit.one_run_audit(np.zeros((2, 2)), np.ones((2, 2), bool), delta=DELTA), 'scores'),
    (lambda: audit.one_run_audit(np.zeros(4), np.ones(3, bool), delta=DELTA), 'included'),
    (lambda: audit.one_run_audit(np.zeros(4), np.ones(4, bool), delta=DELTA), 'included'),
    (lambda: audit.one_run_audit(np.array([0., np.nan, 1., 2.]), np.array([1, 0, 1, 0], bool),
                                 delta=DELTA), 'scores'),
    (lambda: audit.one_run_audit(np.zeros(4), np.array([1, 0, 1, 0], bool), delta=0.0), 'delta'),
    (lambda: audit.one_run_audit(np.zeros(4), np.array([1, 0, 1, 0], bool), delta=DELTA,
                                 method='gdp'), 'method'),
    (lambda: audit.multi_run_audit(np.zeros(4), np.array([1, 0, 1, 0], bool), delta=DELTA,
                                   confidence=0.4), 'confidence'),
    (lambda: audit.sample_canaries(jax.random.key(0), jnp.ones(3, bool), 0.0), 'sampling_rate'),
    (lambda: audit.canary_scores(jnp.zeros(4), audit.gradient_canaries(
        jax.random.key(0), jnp.zeros(3), 2)), 'update'),
    (lambda: audit.audit_defence(optax.identity(), jnp.zeros(10),
                                   **_mech_kwargs(per_example=None)), 'per_example'),
    (lambda: audit.audit_defence(optax.identity(), jnp.zeros(10),
                                   **_mech_kwargs(canary_norm=None)), 'canary_norm'),
    (lambda: audit.audit_defence(optax.identity(), jnp.zeros(10),
                                   **_mech_kwargs(sampling_rate=None)), 'sampling_rate'),
    (lambda: audit.audit_defence(optax.identity(), jnp.zeros(10),
                                   **_mech_kwargs(steps=None)), 'steps'),
    # Canary counts: too few, not an int, more than the examples / runs allow.
    (lambda: audit.draw_inclusion(jax.random.key(0), 2.5), 'num_canaries'),
    (lambda: audit.gradient_canaries(jax.random.key(0), jnp.zeros(3), 1), 'num_canaries'),
    (lambda: audit.mislabeled_canaries(jax.random.key(0), np.zeros((3, 2)), np.arange(3), 4,
                                       num_classes=3), 'num_canaries'),
    (lambda: audit.audit_defence(optax.identity(), jnp.zeros(10),
                                   **_mech_kwargs(num_canaries=1)), 'num_canaries'),
    (lambda: audit.multi_run_scores(lambda k, b: b * 1.0, jax.random.key(0), 1), 'num_runs'),
    # Inclusion and sampling probabilities outside (0, 1) / (0, 1].
    (lambda: audit.draw_inclusion(jax.random.key(0), 10, 1.5), 'probability'),
    (lambda: audit.draw_inclusion(jax.random.key(0), 10, -0.1), 'probability'),
    (lambda: audit.multi_run_scores(lambda k, b: b * 1.0, jax.random.key(0), 8,
                                    probability=1.0), 'probability'),
    (lambda: audit.sample_canaries(jax.random.key(0), jnp.ones(3, bool), 1.5), 'sampling_rate'),
    (lambda: audit.audit_defence(optax.identity(), jnp.zeros(10),
                                   **_mech_kwargs(sampling_rate=0.0)), 'sampling_rate'),
    # Confidence outside (0, 1), on every entry point.
    (lambda: audit.one_run_audit(np.zeros(4), np.array([1, 0, 1, 0], bool), delta=DELTA,
                                 confidence=1.5), 'confidence'),
    (lambda: audit.multi_run_audit(np.zeros(4), np.array([1, 0, 1, 0], bool), delta=DELTA,
                                   confidence=1.0), 'confidence'),
    (lambda: audit.audit_defence(optax.identity(), jnp.zeros(10),
                                   **_mech_kwargs(confidence=0.0)), 'confidence'),
    # Scores and decisions of the wrong shape or kind.
    (lambda: audit.one_run_audit(np.zeros(1), np.ones(1, bool), delta=DELTA), 'scores'),
    (lambda: audit.one_run_audit(np.zeros(4), np.array([2, 0, 1, 0]), delta=DELTA), 'included'),
    (lambda: audit.multi_run_audit(np.zeros((4, 2)), np.ones((4, 2), bool), delta=DELTA),
     'scores'),
    (lambda: audit.multi_run_audit(np.zeros(4), np.ones(5, bool), delta=DELTA), 'included'),
    (lambda: audit.multi_run_scores(lambda k, b: jnp.zeros(3) + b, jax.random.key(0), 4),
     'run_fn'),
    (lambda: audit.sample_canaries(jax.random.key(0), jnp.ones((2, 2), bool), 0.5), 'included'),
    (lambda: audit.insert_canaries(jnp.zeros((2, 3)), None, audit.gradient_canaries(
        jax.random.key(0), jnp.zeros(3), 2), jnp.ones(3, bool), 2), 'present'),
    (lambda: audit.with_canaries(np.zeros((5, 2)), np.zeros(5, int), audit.mislabeled_canaries(
        jax.random.key(0), np.zeros((5, 2)), np.arange(5), 2, num_classes=5),
        np.ones(3, bool)), 'included'),
    # A defence that is not one, or a canary set that is not one.
    (lambda: audit.audit_defence(lambda g: g, jnp.zeros(10), **_mech_kwargs()), 'defence'),
    (lambda: audit.audit_defence_multi_run(lambda g: g, jnp.zeros(10), num_runs=10,
                                           **_run_kwargs()), 'defence'),
    # A claim that is not a Gaussian mechanism object, or one with no noise yet.
    (lambda: audit.audit_defence(optax.identity(), jnp.zeros(10),
                                 **_mech_kwargs(canary_norm=None, claim=0.5)), 'claim'),
    (lambda: audit.audit_defence(optax.identity(), jnp.zeros(10), **_mech_kwargs(
        canary_norm=None, claim=privacy.dpsgd_mechanism(1.0))), 'noise_multiplier'),
    (lambda: audit.audit_defence_multi_run(optax.identity(), jnp.zeros(10), num_runs=1,
                                           **_run_kwargs()), 'num_runs'),
    (lambda: audit.audit_defence_multi_run(optax.identity(), jnp.zeros(10), num_runs=10,
                                           **_run_kwargs(method='one_run')), 'method'),
    (lambda: audit.audit_defence_multi_run(optax.identity(), jnp.zeros(10), num_runs=10,
                                           **_run_kwargs(confidence=0.5)), 'confidence'),
    (lambda: audit.audit_defence_multi_run(optax.identity(), jnp.zeros(10), num_runs=10,
                                           **_run_kwargs(canary_norm=None)), 'canary_norm'),
    (lambda: audit.subsampled_gaussian_llr(jnp.zeros(2), sampling_rate=0.0, noise_std=1.0),
     'sampling_rate'),
    (lambda: audit.subsampled_gaussian_llr(jnp.zeros(2), sampling_rate=0.5, noise_std=0.0),
     'noise_std'),
    (lambda: audit.gdp_epsilon(-1.0, DELTA), 'mu'),
    (lambda: audit.subsampled_gaussian_llr(jnp.zeros(1), sampling_rate=0.5), 'step_scores'),
    (lambda: audit.canary_scores(jnp.zeros(3), jnp.zeros((2, 3))), 'canaries'),
])
def test_bad_input_names_the_argument(call, name):
  with pytest.raises((ValueError, TypeError), match=name):
    call()


def test_a_defence_carries_its_per_example_flag():
  from ssgd_optax import attacks
  d = attacks.make_defence('ssgd_global', jax.random.key(0))
  r = audit.audit_defence(d, jnp.zeros(50), **_mech_kwargs(per_example=None, num_canaries=50))
  # Unit normalisation hides only the scale: canaries are found (no noise).
  assert r.auroc > 0.9


@pytest.mark.slow  # ~24 s of CPU (23.1 s user, load 10): imports, data, two compiles
def test_benchmark_quick_mode(tmp_path):
  bench = _load('benchmarks/audit.py', 'benchmarks_audit')
  out = tmp_path / 'audit.md'
  text = bench.main(['--quick', '--defences', 'none', 'dpssgd', '--out', str(out)])
  assert out.read_text() == text
  assert '| none | — | — |' in text and '| DP-SSGD | 8.00 |' in text
