# Copyright 2026 The ssgd_optax Authors. Licensed under the Apache License 2.0.
"""Mechanism objects: the noise and the accountant read one object, and old names warn."""

import importlib
import pkgutil
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ssgd_examples import models as models_lib
import ssgd_optax
from ssgd_optax import _grouping as grouping
from ssgd_optax import privacy
from ssgd_optax.privacy import _mechanisms as mechanisms
from ssgd_optax.privacy import _sparse_vector as sparse_vector
from ssgd_optax.privacy import _unit_normalization as unit_normalization
from ssgd_examples.scripts import load as _load

KEY = jax.random.key(0)
ACC = dict(sampling_rate=0.02, steps=50, delta=1e-5, accountant='rdp')


def _clipped_cnn():
  return privacy.clip_layers(models_lib.StevensCNN(rngs=nnx.Rngs(0)), input_bound=3.0,
                             grad_bound=0.5)


class _TinyMLP(nnx.Module):

  def __init__(self):
    self.fc1 = nnx.Linear(4, 3, rngs=nnx.Rngs(0))
    self.fc2 = nnx.Linear(3, 2, use_bias=False, rngs=nnx.Rngs(1))

  def __call__(self, x):
    return self.fc2(jax.nn.relu(self.fc1(x)))


def _clipped_mlp():
  return privacy.clip_layers(_TinyMLP(), input_bound=3.0, grad_bound=0.5)


def _params():
  return {'l1': {'w': jnp.ones((3, 2)), 'b': jnp.ones(2)}, 'l2': {'w': jnp.ones(4)}}


# ---------------------------------------------------------------------------
# Each mechanism holds what the old code computed.


def test_backprop_clip_mechanism_matches_sensitivities_and_num_releases():
  model = _clipped_cnn()
  m = privacy.backprop_clip_mechanism(model, 1.3)
  old = privacy.sensitivities(model)
  assert m.num_releases == privacy.num_releases(model) == 4
  assert jax.tree.structure(m.sensitivities) == jax.tree.structure(old)
  for got, want in zip(jax.tree.leaves(m.sensitivities), jax.tree.leaves(old)):
    assert float(got) == float(want) == 1.5
  assert [float(s) for s in jax.tree.leaves(m.stddev)] == pytest.approx([1.3 * 1.5] * 4)
  assert m.neighboring_relation == 'add_remove_one'


def test_dpsgd_mechanism():
  m = privacy.dpsgd_mechanism(0.5, 2.0)
  assert (m.sensitivity, m.stddev, m.num_releases) == (0.5, 1.0, 1)
  assert m.neighboring_relation == 'add_remove_one'


@pytest.mark.parametrize('scope', ['global', 'per_leaf', 'per_layer'])
def test_dp_ssgd_mechanism_counts_the_groups_of_the_scope(scope):
  m = privacy.dp_ssgd_mechanism(_params(), 1.5, scope)
  g = grouping.resolve_groups(_params(), scope).num_groups
  assert (m.num_groups, m.scope, m.num_releases) == (g, scope, 1)
  assert m.sensitivity == pytest.approx(np.sqrt(g))
  assert m.stddev == pytest.approx(1.5 * np.sqrt(g))


def test_sparse_vector_mechanism_matches_the_transform_scales():
  m = privacy.sparse_vector_mechanism(0.1, epsilon=0.9, clip=0.5, threshold=0.01)
  c = ssgd_optax.num_shared(1000, 0.1)
  # pylint: disable-next=protected-access
  want = sparse_vector._sparse_vector_scales(c, 0.9, 0.5)
  assert m.num_shared(1000) == c == 100
  assert tuple(m.scales(1000)) == tuple(want)
  assert m.sensitivity == 1.0
  assert m.epsilon_split == pytest.approx((0.8, 0.2))
  assert m.neighboring_relation == 'replace_one'


# ---------------------------------------------------------------------------
# The transform given the mechanism releases exactly what it released before.


def _same(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_add_gaussian_noise_reads_the_mechanism():
  model = _clipped_mlp()
  m = privacy.backprop_clip_mechanism(model, 0.7)
  grads = jax.tree.map(jnp.ones_like, nnx.state(model, nnx.Param))
  by_hand = privacy.add_gaussian_noise(0.7, privacy.sensitivities(model), 32.0, key=KEY)
  given = privacy.add_gaussian_noise(mechanism=m, expected_batch_size=32.0, key=KEY)
  _same(by_hand.update(grads, by_hand.init(grads))[0], given.update(grads, given.init(grads))[0])
  g = {'w': jnp.ones(3)}
  d = privacy.dpsgd_mechanism(2.0, 0.5)
  by_hand = privacy.add_gaussian_noise(0.5, 2.0, 8.0, key=KEY)
  given = privacy.add_gaussian_noise(mechanism=d, expected_batch_size=8.0, key=KEY)
  _same(by_hand.update(g, by_hand.init(g))[0], given.update(g, given.init(g))[0])


def test_dp_unit_normalize_reads_the_mechanism():
  per_example = jax.tree.map(lambda x: jnp.stack([x, -2 * x]), _params())
  m = privacy.dp_ssgd_mechanism(_params(), 0.8, 'per_layer')
  by_hand = privacy.dp_unit_normalize(0.8, expected_batch_size=2.0, key=KEY, scope='per_layer')
  given = privacy.dp_unit_normalize(mechanism=m, expected_batch_size=2.0, key=KEY)
  _same(by_hand.update(per_example, by_hand.init(_params()))[0],
        given.update(per_example, given.init(_params()))[0])
  opt = privacy.dp_ssgd(0.1, mechanism=m, expected_batch_size=2.0, key=KEY)
  assert jax.tree.structure(opt.init(_params())[0]) == jax.tree.structure(given.init(_params()))


def test_dp_selective_sharing_reads_the_mechanism():
  g = {'w': jnp.arange(16.0) / 10}
  m = privacy.sparse_vector_mechanism(0.25, epsilon=2.0, clip=0.3, threshold=0.05)
  by_hand = privacy.dp_selective_sharing(0.25, epsilon=2.0, clip=0.3, threshold=0.05, key=KEY)
  given = privacy.dp_selective_sharing(mechanism=m, key=KEY)
  _same(by_hand.update(g, by_hand.init(g))[0], given.update(g, given.init(g))[0])


# ---------------------------------------------------------------------------
# The accountant given the mechanism gives what it gives for the numbers by hand.


def _gaussian_mechanisms():
  model = _clipped_mlp()
  return [privacy.dpsgd_mechanism(1.0, 1.1),
          privacy.dp_ssgd_mechanism(_params(), 1.1, 'per_layer'),
          privacy.backprop_clip_mechanism(model, 1.1)]


@pytest.mark.parametrize('index', [0, 1, 2])
def test_accountant_reads_the_mechanism(index):
  m = _gaussian_mechanisms()[index]
  hand = dict(noise_multiplier=1.1, num_releases=m.num_releases)
  assert privacy.compute_epsilon(m, **ACC) == privacy.compute_epsilon(**hand, **ACC)
  assert not hasattr(m, 'epsilon')  # one home for accounting: compute_epsilon
  kw = {k: v for k, v in ACC.items() if k != 'delta'}
  assert privacy.compute_delta(m, epsilon=2.0, **kw) == privacy.compute_delta(
      epsilon=2.0, **hand, **kw)
  assert privacy.make_dp_event(m, **kw) == privacy.make_dp_event(**hand, **kw)
  calib = dict(sampling_rate=0.02, steps=50, delta=1e-5, accountant='rdp')
  assert privacy.calibrate_noise_multiplier(2.0, mechanism=m, **calib) == \
      privacy.calibrate_noise_multiplier(2.0, num_releases=m.num_releases, **calib)
  t_m = privacy.BudgetTracker(2.0, 1e-5, mechanism=m, sampling_rate=0.02, accountant='rdp')
  t_h = privacy.BudgetTracker(2.0, 1e-5, **hand, sampling_rate=0.02, accountant='rdp')
  assert (t_m.max_steps, t_m.num_releases, t_m.noise_multiplier) == (
      t_h.max_steps, t_h.num_releases, t_h.noise_multiplier)


def test_backprop_accounting_depends_on_the_releases_read_from_the_model():
  m = _gaussian_mechanisms()[2]
  assert m.num_releases == 3  # fc1 kernel and bias, fc2 kernel
  # One release per step would under-report: the mechanism's L matters.
  assert privacy.compute_epsilon(m, **ACC) > privacy.compute_epsilon(noise_multiplier=1.1, **ACC)


def test_pld_accountant_reads_the_mechanism():
  m = privacy.dpsgd_mechanism(1.0, 1.1)
  kw = dict(sampling_rate=0.02, steps=20, delta=1e-5)
  assert privacy.compute_epsilon(m, **kw) == privacy.compute_epsilon(noise_multiplier=1.1, **kw)


def test_sparse_vector_accounting_is_the_exact_composition():
  m = privacy.sparse_vector_mechanism(0.1, epsilon=0.5, clip=0.1)
  want = privacy.dp_selective_sharing_privacy(0.5, 10, num_params=100, fraction=0.1,
                                                delta=1e-5)
  got = privacy.compute_epsilon(m, steps=10, delta=1e-5)
  assert got == want.total_epsilon_at_delta
  assert got <= want.total_epsilon == 5.0
  assert m.privacy(10, num_params=100, delta=1e-5) == want
  tracker = privacy.BudgetTracker(3.0, 1e-5, mechanism=m)
  assert privacy.compute_epsilon(m, steps=tracker.max_steps, delta=1e-5) <= 3.0
  assert privacy.compute_epsilon(m, steps=tracker.max_steps + 1, delta=1e-5) > 3.0


# ---------------------------------------------------------------------------
# examples/dp_train.py: no hand-passed num_releases.


def _consistent(mechanism, noise_releases, tracker):
  """What dp_train must satisfy: one L in the noise, the tracker and the mechanism."""
  assert noise_releases == mechanism.num_releases == tracker.num_releases
  assert tracker.noise_multiplier == mechanism.noise_multiplier


def test_dp_train_builds_one_mechanism_for_noise_and_accountant():
  dp_train = _load('examples/dp_train.py', 'mech_dp_train')
  model = dp_train.make_model('bp', seed=0, input_bound=3.0, grad_bound=0.1)
  m = dp_train.make_mechanism('bp', model, clip_norm=1.0)
  assert m.num_releases == privacy.num_releases(model) == 4 and m.noise_multiplier is None
  m, noise, tracker = dp_train.make_privacy(m, target_epsilon=3.0, delta=1e-5,
                                            sampling_rate=0.02, steps=50,
                                            expected_batch_size=16.0, key=KEY,
                                            accountant='rdp')
  grads = jax.tree.map(jnp.zeros_like, nnx.state(model, nnx.Param))
  noised = noise.update(grads, noise.init(grads))[0]
  # Every noised tensor is one release: its count is the mechanism's L.
  noise_releases = sum(float(jnp.std(x)) > 0 for x in jax.tree.leaves(noised))
  _consistent(m, noise_releases, tracker)
  assert dp_train.make_mechanism('dpsgd', model, clip_norm=2.0).sensitivity == 2.0
  assert dp_train.make_mechanism('nonprivate', model, clip_norm=1.0) is None

  # The check above fails on the 0.1 code path, which passed num_releases=1 by hand.
  broken = privacy.BudgetTracker(3.0, 1e-5, noise_multiplier=m.noise_multiplier,
                                 sampling_rate=0.02, num_releases=1, accountant='rdp')
  with pytest.raises(AssertionError):
    _consistent(m, noise_releases, broken)


def test_a_hand_passed_num_releases_beside_the_mechanism_is_refused():
  m = _gaussian_mechanisms()[2]
  for call in (lambda: privacy.compute_epsilon(m, num_releases=1, **ACC),
               lambda: privacy.BudgetTracker(1.0, 1e-5, mechanism=m, num_releases=1,
                                             sampling_rate=0.02),
               lambda: privacy.calibrate_noise_multiplier(1.0, mechanism=m, num_releases=1,
                                                          sampling_rate=0.02, steps=5,
                                                          delta=1e-5),
               lambda: privacy.make_dp_event(m, num_releases=2, sampling_rate=0.1, steps=1)):
    with pytest.raises(ValueError, match='num_releases'):
      call()


# ---------------------------------------------------------------------------
# Bad inputs.


def _uncalibrated():
  return privacy.dpsgd_mechanism(1.0)


@pytest.mark.parametrize('call, match', [
    (lambda: privacy.dpsgd_mechanism(0.0, 1.0), 'clip_norm'),
    (lambda: privacy.dpsgd_mechanism(1.0, -1.0), 'noise_multiplier'),
    (lambda: privacy.dp_ssgd_mechanism(_params(), float('nan')), 'noise_multiplier'),
    (lambda: privacy.dp_ssgd_mechanism(_params(), 1.0, 'per_row'), 'scope'),
    (lambda: privacy.backprop_clip_mechanism(_TinyMLP(), 1.0), 'ClippedLayer'),
    (lambda: privacy.backprop_clip_mechanism(_clipped_mlp(), -0.5), 'noise_multiplier'),
    (lambda: privacy.sparse_vector_mechanism(1.5, epsilon=1.0, clip=0.1), 'fraction'),
    (lambda: privacy.sparse_vector_mechanism(0.1, epsilon=0.0, clip=0.1), 'epsilon'),
    (lambda: privacy.sparse_vector_mechanism(0.1, epsilon=1.0, clip=None), 'clip'),
    (lambda: privacy.sparse_vector_mechanism(0.1, epsilon=1.0, clip=0.1, threshold=-1),
     'threshold'),
    (lambda: privacy.compute_epsilon(_uncalibrated(), **ACC), 'noise_multiplier'),
    (lambda: privacy.compute_epsilon(privacy.dpsgd_mechanism(1.0, 1.0), noise_multiplier=1.0,
                                     **ACC), 'noise_multiplier'),
    (lambda: privacy.compute_epsilon(steps=1, delta=1e-5, sampling_rate=0.1),
     'noise_multiplier'),
    (lambda: privacy.compute_epsilon(privacy.dpsgd_mechanism(1.0, 1.0), steps=1, delta=1e-5),
     'sampling_rate'),
    (lambda: privacy.compute_epsilon(privacy.sparse_vector_mechanism(0.1, epsilon=1.0,
                                                                       clip=0.1),
                                     sampling_rate=0.5, steps=2, delta=1e-5), 'sampling_rate'),
    (lambda: privacy.compute_epsilon(privacy.sparse_vector_mechanism(0.1, epsilon=1.0,
                                                                       clip=0.1),
                                     steps=2, delta=1e-5, accountant='zcdp'), 'accountant'),
    (lambda: privacy.add_gaussian_noise(1.0, mechanism=privacy.dpsgd_mechanism(1.0, 1.0),
                                        expected_batch_size=2.0, key=KEY), 'noise_multiplier'),
    (lambda: privacy.add_gaussian_noise(mechanism=_uncalibrated(), expected_batch_size=2.0,
                                        key=KEY), 'noise_multiplier'),
    (lambda: privacy.add_gaussian_noise(mechanism=privacy.dpsgd_mechanism(1.0, 1.0), key=KEY),
     'expected_batch_size'),
    (lambda: privacy.dp_unit_normalize(mechanism=privacy.dp_ssgd_mechanism(_params(), 1.0),
                                       scope='per_leaf', expected_batch_size=2.0, key=KEY),
     'scope'),
    (lambda: privacy.dp_unit_normalize(1.0, mechanism=privacy.dp_ssgd_mechanism(_params(), 1.0),
                                       expected_batch_size=2.0, key=KEY), 'noise_multiplier'),
    (lambda: privacy.dp_unit_normalize(expected_batch_size=2.0, key=KEY), 'noise_multiplier'),
    (lambda: privacy.dp_selective_sharing(
        mechanism=privacy.sparse_vector_mechanism(0.1, epsilon=1.0, clip=0.1), epsilon=2.0,
        key=KEY), 'epsilon'),
    (lambda: privacy.dp_selective_sharing(epsilon=1.0, clip=0.1, key=KEY), 'fraction'),
])
def test_bad_inputs_name_the_argument(call, match):
  with pytest.raises(ValueError, match=match):
    call()


def test_wrong_mechanism_types_are_refused():
  with pytest.raises(TypeError, match='no Gaussian noise multiplier'):
    privacy.calibrate_noise_multiplier(
        1.0, mechanism=privacy.sparse_vector_mechanism(0.1, epsilon=1.0, clip=0.1),
        sampling_rate=0.1, steps=2, delta=1e-5)
  with pytest.raises(TypeError, match='dp_event'):
    privacy.compute_epsilon(object(), sampling_rate=0.1, steps=2, delta=1e-5)
  with pytest.raises(TypeError, match='mechanism'):
    privacy.compute_epsilon(1.1, **ACC)
  with pytest.raises(TypeError, match='DPSSGDMechanism'):
    privacy.dp_unit_normalize(mechanism=privacy.dpsgd_mechanism(1.0, 1.0),
                              expected_batch_size=2.0, key=KEY)
  with pytest.raises(TypeError, match='SparseVectorMechanism'):
    privacy.dp_selective_sharing(mechanism=privacy.dpsgd_mechanism(1.0, 1.0), key=KEY)


# ---------------------------------------------------------------------------
# Names: no public name is both a module and a function.


def test_the_unreleased_0_1_names_are_gone():
  """0.1.0 was never released: its shims were deleted, not kept (CHANGELOG)."""
  with pytest.raises(AttributeError):
    ssgd_optax.dp_ssgd  # pylint: disable=pointless-statement
  with pytest.raises(ModuleNotFoundError):
    importlib.import_module('ssgd_optax.dp_ssgd')
  for old in ('DpSsgdMechanism', 'DpUnitNormalizeState'):
    assert not hasattr(privacy, old)


def test_new_names_do_not_warn():
  with warnings.catch_warnings():
    warnings.simplefilter('error')
    assert privacy.DPSSGDMechanism is mechanisms.DPSSGDMechanism
    assert privacy.dp_ssgd is unit_normalization.dp_ssgd


def _public_modules():
  return [ssgd_optax] + [importlib.import_module(m.name)
                         for m in pkgutil.walk_packages(ssgd_optax.__path__, 'ssgd_optax.')
                         if not m.name.rsplit('.', 1)[1].startswith('_')]


def test_no_exported_name_is_also_a_module_name():
  modules = _public_modules()
  module_names = {m.__name__.rsplit('.', 1)[1] for m in modules if '.' in m.__name__}
  exported = {(m.__name__, n) for m in modules for n in getattr(m, '__all__', ())}
  clashes = sorted((mod, n) for mod, n in exported if n in module_names)
  assert not clashes, clashes
  assert 'dp_ssgd' not in dir(ssgd_optax)


def test_every_dp_mechanism_is_listed_in_the_privacy_docstring():
  doc = privacy.__doc__
  for name in ('DPSGDMechanism', 'BackpropClipMechanism', 'DPSSGDMechanism',
               'SparseVectorMechanism', 'dpsgd_mechanism', 'backprop_clip_mechanism',
               'dp_ssgd_mechanism', 'sparse_vector_mechanism', 'add_gaussian_noise',
               'dp_unit_normalize', 'dp_selective_sharing', 'compute_epsilon'):
    assert name in doc, name
  for name in ('DPSGDMechanism', 'BackpropClipMechanism', 'DPSSGDMechanism',
               'SparseVectorMechanism'):
    assert 'Guarantees:' in getattr(privacy, name).__doc__, name
    assert 'Neighbouring relation' in getattr(privacy, name).__doc__, name
