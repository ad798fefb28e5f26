# Copyright 2026 The ssgd_optax Authors. Licensed under the Apache License 2.0.
"""Tests for ssgd_optax.federated.distributed_dp (the distributed discrete Gaussian).

The noise is drawn from the OS, so the statistical tests use fixed tolerances
far outside their sampling error (stated at each test); the protocol-level
tests (the repeated-round attack against the noise, the exact ring sum at the
limit) are in test_federated_secure_aggregation.py.
"""

import importlib.util
import math
import sys

import dp_accounting
import numpy as np
import pytest
from dp_accounting.rdp import rdp_privacy_accountant

from ssgd_optax.federated import distributed_dp as ddp

stats = pytest.importorskip('scipy.stats')


def _mechanism(**kw):
  args = dict(l2_clip=1.0, dimension=1000, noise_multiplier=1.0, num_participants=10,
              min_noise_shares=7)
  args.update(kw)
  return ddp.distributed_discrete_gaussian(args.pop('l2_clip'), args.pop('dimension'), **args)


@pytest.mark.parametrize('sigma', [0.8, 2.5])
def test_sampler_matches_the_discrete_gaussian_pmf(sigma):
  size = 50_000
  x = ddp.sample_discrete_gaussian(sigma, size)
  support = np.arange(-8 * math.ceil(sigma), 8 * math.ceil(sigma) + 1)
  pmf = np.exp(-support ** 2 / (2 * sigma ** 2))
  pmf /= pmf.sum()
  keep = pmf * size > 5  # chi-square cells with enough mass; the rest pooled
  observed = np.array([(x == k).sum() for k in support[keep]]
                      + [(~np.isin(x, support[keep])).sum()])
  expected = np.concatenate([pmf[keep], [pmf[~keep].sum()]]) * size
  assert stats.chisquare(observed, expected).pvalue > 1e-6


def test_sampler_std_and_bound_at_a_large_scale():
  sigma, size = 8.0e4, 200_000
  x = ddp.sample_discrete_gaussian(sigma, size, bound=int(3 * sigma))
  assert np.abs(x).max() <= 3 * sigma
  # Truncated at 3 sigma the std is 0.9866 sigma; its estimate has error 0.2 %.
  assert abs(x.std() / sigma - 0.9866) < 0.01
  y = ddp.sample_discrete_gaussian(sigma, size)
  assert abs(y.std() / sigma - 1) < 0.01 and abs(y.mean()) < 6 * sigma / math.sqrt(size)


def test_sampler_arguments():
  with pytest.raises(ValueError, match='stddev'):
    ddp.sample_discrete_gaussian(0.0, 3)
  with pytest.raises(ValueError, match='size'):
    ddp.sample_discrete_gaussian(1.0, -1)
  with pytest.raises(TypeError, match='stddev'):
    ddp.sample_discrete_gaussian('1', 3)
  assert ddp.sample_discrete_gaussian(5.0, 7, bound=0).tolist() == [0] * 7


def test_noisy_encode_is_unbiased_and_within_its_bounds():
  m = _mechanism(dimension=4, noise_multiplier=0.05, frac_bits=4)
  x = np.array([0.3, -0.2, 0.1, 0.0])  # not on the 2^-4 grid: rounding is random
  draws = np.stack([ddp.noisy_encode(x, m) for _ in range(4000)])
  assert np.abs(draws).max() <= m.entry_bound
  # Unbiased: mean 2^4 x within 6 standard errors.
  err = draws.std(0) / math.sqrt(len(draws))
  assert np.all(np.abs(draws.mean(0) - 16 * x) < 6 * err + 1e-9)


def test_noisy_encode_clips_to_the_l2_bound_and_never_exceeds_delta_2(monkeypatch):
  m = _mechanism(dimension=50, frac_bits=6)
  monkeypatch.setattr(ddp, 'sample_discrete_gaussian',
                      lambda stddev, size, bound: np.zeros(size, np.int64))
  x = np.random.default_rng(0).normal(size=50) * 100  # norm ~700, clipped to 1
  for _ in range(50):
    r = ddp.noisy_encode(x, m)
    assert float(np.dot(r, r)) <= m.rounded_l2_bound ** 2
  assert abs(np.linalg.norm(r) / 2 ** 6 - 1.0) < 0.2


def test_noisy_encode_refuses_wrong_dimension():
  with pytest.raises(ValueError, match='dimension=1000'):
    ddp.noisy_encode(np.zeros(999), _mechanism())
  with pytest.raises(TypeError, match='mechanism'):
    ddp.noisy_encode(np.zeros(3), {'l2_clip': 1.0})


def test_epsilon_equals_the_gaussian_mechanism_when_tau_vanishes():
  # Large noise shares (tau underflows to 0) and a large scale (the rounding
  # inflation is negligible): rho-zCDP with rho = 1 / (2 z_eff^2) is exactly
  # the Gaussian mechanism of noise multiplier z_eff.
  m = _mechanism(noise_multiplier=1.3)
  assert m.tau == 0.0
  z_eff = math.sqrt(m.min_noise_shares) * m.local_stddev / m.sensitivity
  for rounds in (1, 20):
    accountant = rdp_privacy_accountant.RdpAccountant(
        neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE)
    accountant.compose(dp_accounting.GaussianDpEvent(z_eff), rounds)
    want = accountant.get_epsilon(1e-5 * (1 - 1e-6))
    assert m.epsilon(rounds=rounds, delta=1e-5) == pytest.approx(want, rel=1e-9)
  assert z_eff == pytest.approx(1.3, rel=1e-4)  # 2c vs the rounded 2 Delta_2


def test_epsilon_grows_with_rounds_and_shrinks_with_noise_and_shares():
  m = _mechanism()
  assert m.epsilon(rounds=1, delta=1e-5) < m.epsilon(rounds=10, delta=1e-5)
  assert m.epsilon(delta=1e-5) > _mechanism(noise_multiplier=2.0).epsilon(delta=1e-5)
  # zero_out halves the sensitivity and the noise share with it: same epsilon.
  assert _mechanism(relation='zero_out').epsilon(delta=1e-5) == pytest.approx(
      m.epsilon(delta=1e-5), rel=1e-3)
  # Small shares: tau is no longer negligible and costs epsilon.
  small = _mechanism(l2_clip=1.0, frac_bits=0, noise_multiplier=0.3, dimension=10)
  assert small.tau > 0
  assert small.rho > 0.5 * (small.sensitivity / (math.sqrt(7) * small.local_stddev)) ** 2
  assert isinstance(m.dp_event(), dp_accounting.ZCDpEvent)
  from ssgd_optax import privacy  # pylint: disable=import-outside-toplevel
  assert isinstance(m, privacy.Mechanism)
  event = privacy.make_dp_event(m, steps=5, accountant='rdp')
  assert isinstance(event, dp_accounting.SelfComposedDpEvent) and event.count == 5
  with pytest.raises(ValueError, match="accountant='rdp'"):
    privacy.compute_epsilon(m, steps=5, delta=1e-5, accountant='pld')


def test_calibration_reaches_the_target_from_below():
  m = _mechanism(noise_multiplier=None)
  for eps in (1.0, 3.0, 8.0):
    z = ddp.calibrate_distributed_noise(eps, mechanism=m, rounds=50, delta=1e-5)
    got = m._replace(noise_multiplier=z).epsilon(rounds=50, delta=1e-5)
    assert eps * 0.995 < got <= eps


def test_calibration_survives_noise_levels_whose_truncation_exceeds_delta():
  # The search visits noise multipliers so small that epsilon is in the
  # hundreds; there the truncation's share no longer fits in delta, which
  # stopped the calibration with "delta is too small" (few rounds, few entries).
  m = ddp.distributed_discrete_gaussian(1.0, 610, num_participants=6, min_noise_shares=4)
  z = ddp.calibrate_distributed_noise(8.0, mechanism=m, rounds=2, delta=1e-5)
  assert 8.0 * 0.995 < m._replace(noise_multiplier=z).epsilon(rounds=2, delta=1e-5) <= 8.0


def test_mechanism_validation_names_the_field():
  with pytest.raises(ValueError, match='ring cannot hold .* frac_bits=24'):
    _mechanism(frac_bits=24)
  _mechanism(frac_bits=24, bits=64)
  with pytest.raises(ValueError, match='min_noise_shares'):
    _mechanism(min_noise_shares=11)
  with pytest.raises(ValueError, match='relation'):
    _mechanism(relation='add_remove_one')
  with pytest.raises(ValueError, match='beta'):
    _mechanism(beta=1.0)
  with pytest.raises(ValueError, match='l2_clip'):
    _mechanism(l2_clip=float('nan'))
  with pytest.raises(ValueError, match='noise_multiplier is None'):
    _mechanism(noise_multiplier=None).epsilon(delta=1e-5)
  with pytest.raises(ValueError, match='delta'):
    _mechanism().epsilon(delta=1.5)
  with pytest.raises(ValueError, match='rounds'):
    _mechanism().epsilon(rounds=0, delta=1e-5)


def test_importable_without_flwr_or_cryptography(monkeypatch):
  for name in ('flwr', 'cryptography'):
    monkeypatch.setitem(sys.modules, name, None)
  spec = importlib.util.spec_from_file_location('_ddp_alone', ddp.__file__)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  m = module.distributed_discrete_gaussian(1.0, 8, noise_multiplier=1.0, num_participants=3,
                                           min_noise_shares=2)
  assert module.noisy_encode(np.zeros(8), m).shape == (8,)  # os.urandom without cryptography
