# Copyright 2026 The ssgd_optax Authors. Licensed under the Apache License 2.0.
"""End-to-end tests of examples/dp_train.py and the benchmarks/dp.py quick mode."""

import math

import pytest
from ssgd_examples.scripts import load as _load




@pytest.mark.slow  # test_guarantees_privacy runs dp_train end to end in the default run
def test_dp_train_example_tiny(capsys):
  dp_train = _load('examples/dp_train.py')
  rows = dp_train.main(['--methods', 'bp', 'dpsgd', '--epsilons', '2', '--epochs', '1',
                        '--max-train', '512', '--accountant', 'rdp', '--quiet', '--workdir', ''])
  out = capsys.readouterr().out
  assert 'noise and sampling keys: drawn from the operating system' in out
  assert '| bp | 2.0 |' in out and '| dpsgd | 2.0 |' in out
  by_method = {r['method']: r for r in rows}
  assert by_method['bp']['num_releases'] == 4 and by_method['dpsgd']['num_releases'] == 1
  for r in rows:
    assert r['steps'] == 2  # q = 256 / 512, one epoch.
    assert 0.0 <= r['accuracy'] <= 1.0
    # The accounted epsilon meets the target; PLD is tighter than RDP.
    assert r['epsilon_rdp'] <= 2.0 + 1e-9
    assert r['epsilon'] <= r['epsilon_rdp']
  # Backprop clipping needs twice DP-SGD's noise per release (L = 4 -> sqrt(4)).
  assert by_method['bp']['noise_multiplier'] == pytest.approx(
      2 * by_method['dpsgd']['noise_multiplier'], rel=1e-2)


@pytest.mark.slow
def test_dp_train_nonprivate_and_bad_method():
  dp_train = _load('examples/dp_train.py')
  from ssgd_examples import data  # pylint: disable=g-import-not-at-top
  ds = data.load_dataset('mnist_subset')
  ds = ds._replace(x_train=ds.x_train[:256], y_train=ds.y_train[:256], x_test=ds.x_test[:100],
                   y_test=ds.y_test[:100])
  r = dp_train.train_and_evaluate('nonprivate', ds, target_epsilon=None, epochs=1)
  assert math.isinf(r['epsilon']) and r['steps'] == 1
  with pytest.raises(ValueError, match='method'):
    dp_train.train_and_evaluate('opacus', ds, target_epsilon=1.0)


@pytest.mark.slow  # benchmark smoke test: run with -m slow
def test_dp_benchmark_quick(tmp_path):
  bench = _load('benchmarks/dp.py')
  out = tmp_path / 'dp.md'
  text = bench.main(['--quick', '--out', str(out)])
  assert out.read_text() == text
  for name in ('| nonprivate |', '| bp |', '| dpsgd |', 'x non-private', 'accuracy', '| bp | 3 |'):
    assert name in text


# ------------------------------------------------- noise keys (issue 11, defect 7)
# A DP guarantee assumes noise nobody can regenerate. The attack: knowing the
# public --seed (default 0), rebuild the noise and sampling keys. It must fail
# by default; --reproducible-noise makes it succeed, and says so.


def _key_data(key):
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  return np.asarray(jax.random.key_data(key))


def _assert_secret(run_a, run_b, public):
  """Keys of two runs with the same --seed vs the keys the seed alone gives."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  for name in public:
    assert not np.array_equal(run_a[name], public[name]), f'{name} key derived from --seed'
    assert not np.array_equal(run_a[name], run_b[name]), f'{name} key repeats across runs'


class _Captured(Exception):
  """Raised by the spies at the first step: the keys are known, no need to train."""


def _dp_train_keys(monkeypatch, **kwargs):
  dp_train = _load('examples/dp_train.py', 'keys_dp_train')
  from ssgd_examples import data  # pylint: disable=g-import-not-at-top
  seen = {}
  noise = dp_train.privacy.add_gaussian_noise

  def spy_noise(*args, key, **kw):
    seen['noise'] = _key_data(key)
    return noise(*args, key=key, **kw)

  def spy_make_step(*args, **kw):
    def spied(model, optimizer, x, y, key):
      seen['sampling'] = _key_data(key)
      raise _Captured
    return spied

  ds = data.load_dataset('mnist_subset')
  ds = ds._replace(x_train=ds.x_train[:64], y_train=ds.y_train[:64], x_test=ds.x_test[:10],
                   y_test=ds.y_test[:10])
  with monkeypatch.context() as m:
    m.setattr(dp_train.privacy, 'add_gaussian_noise', spy_noise)
    m.setattr(dp_train, 'make_train_step', spy_make_step)
    with pytest.raises(_Captured):
      dp_train.train_and_evaluate('dpsgd', ds, target_epsilon=8.0, epochs=0.5, batch_size=32,
                                  seed=0, accountant='rdp', **kwargs)
  return seen


def test_dp_train_noise_keys_are_secret_by_default(monkeypatch):
  public = _dp_train_keys(monkeypatch, noise_seed=0)
  assert public.keys() == {'noise', 'sampling'}
  _assert_secret(_dp_train_keys(monkeypatch), _dp_train_keys(monkeypatch), public)
  # The broken stand-in: keys from the public seed (--reproducible-noise) fail the check.
  with pytest.raises(AssertionError, match='derived from --seed'):
    _assert_secret(public, public, public)


def _dp_ssgd_keys(monkeypatch, **kwargs):
  example = _load('examples/dp_ssgd.py', 'keys_dp_ssgd')
  seen = {}

  def spy_step(model, optimizer, key, *args, **kw):
    seen['sampling'] = _key_data(key)
    raise _Captured

  def aggregator(noise_multiplier, key, expected_batch_size):
    seen['noise'] = _key_data(key)
    return example.dp_ssgd_aggregator()(noise_multiplier, key, expected_batch_size)

  monkeypatch.setattr(example, 'train_step', spy_step)
  with pytest.raises(_Captured):
    example.train(target_epsilon=8.0, epochs=1, expected_batch_size=50, train_size=100,
                  hidden=(4,), accountant='rdp', verbose=False, aggregator=aggregator, seed=0,
                  **kwargs)
  return seen


def test_dp_ssgd_noise_keys_are_secret_by_default(monkeypatch):
  public = _dp_ssgd_keys(monkeypatch, noise_seed=0)
  assert public.keys() == {'noise', 'sampling'}
  _assert_secret(_dp_ssgd_keys(monkeypatch), _dp_ssgd_keys(monkeypatch), public)
  with pytest.raises(AssertionError, match='derived from --seed'):
    _assert_secret(public, public, public)


def test_the_examples_say_where_the_noise_keys_came_from(capsys):
  dp_train = _load('examples/dp_train.py', 'keys_dp_train_cli')
  help_text = ' '.join(dp_train.cli.build_parser(dp_train.Config).format_help().split())
  assert '--reproducible-noise' in help_text and 'VOIDS THE PRIVACY GUARANTEE' in help_text
  assert 'operating system' in dp_train.noise_line(False, 0)
  assert 'NO privacy guarantee' in dp_train.noise_line(True, 0)
  example = _load('examples/dp_ssgd.py', 'keys_dp_ssgd_cli')
  example.main(['--epsilons', '8', '--train-size', '100', '--epochs', '1', '--batch-size', '50',
                '--hidden', '4', '--accountant', 'rdp', '--quiet', '--reproducible-noise',
                '--workdir', ''])
  assert 'derived from --seed 0 (--reproducible-noise): NO privacy guarantee' in (
      capsys.readouterr().out)
