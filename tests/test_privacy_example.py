# Copyright 2026 The ssgd_optax Authors. Licensed under the Apache License 2.0.
"""End-to-end tests of examples/dp_train.py and the benchmarks/dp.py quick mode."""

import math

import pytest
from scripts import load as _load




def test_dp_train_example_tiny(capsys):
  dp_train = _load('examples/dp_train.py')
  rows = dp_train.main(['--methods', 'bp', 'dpsgd', '--epsilons', '2', '--epochs', '1',
                        '--max-train', '512', '--accountant', 'rdp'])
  out = capsys.readouterr().out
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
  from ssgd_optax import data  # pylint: disable=g-import-not-at-top
  ds = data.load_dataset('mnist_subset')
  ds = ds._replace(x_train=ds.x_train[:256], y_train=ds.y_train[:256], x_test=ds.x_test[:100],
                   y_test=ds.y_test[:100])
  r = dp_train.train_and_evaluate('nonprivate', ds, target_epsilon=None, epochs=1)
  assert math.isinf(r['epsilon']) and r['steps'] == 1
  with pytest.raises(ValueError, match='method'):
    dp_train.train_and_evaluate('opacus', ds, target_epsilon=1.0)


def test_dp_benchmark_quick(tmp_path):
  bench = _load('benchmarks/dp.py')
  out = tmp_path / 'dp.md'
  text = bench.main(['--quick', '--out', str(out)])
  assert out.read_text() == text
  for name in ('| nonprivate |', '| bp |', '| dpsgd |', 'x non-private', 'accuracy', '| bp | 3 |'):
    assert name in text
