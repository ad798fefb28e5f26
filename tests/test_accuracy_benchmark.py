# Copyright 2026 The ssgd_optax Authors. Licensed under the Apache License 2.0.
"""Smoke test of benchmarks/accuracy.py (--quick) and its pieces."""

import json
import pathlib
import sys

import numpy as np
import pytest

from ssgd_examples.scripts import load

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope='module')
def accuracy():
  module = load('benchmarks/accuracy.py', 'benchmarks_accuracy')
  yield module
  sys.modules.pop('benchmarks_accuracy', None)


@pytest.mark.slow  # benchmark smoke test: run with -m slow
def test_quick_mode_writes_table_plot_and_json(accuracy, tmp_path, capsys):
  out, png, raw = tmp_path / 'a.md', tmp_path / 'a.png', tmp_path / 'a.json'
  text = accuracy.main(['--quick', '--out', str(out), '--plot', str(png),
                        '--json', str(raw)])
  assert out.read_text().strip() == text.strip()
  assert '### digits: test accuracy (%), mean ± std over 3 seeds' in text
  assert '| 32 | 40 |' in text  # 1,295 training images // 32 = 40 steps
  assert png.read_bytes()[:4] == b'\x89PNG'
  results = json.loads(raw.read_text())['results']['digits']
  assert {(r['optimizer'], r['batch_size']) for r in results} == {
      ('SGD', 32), ('SGD', 256), ('SSGD global', 32), ('SSGD global', 256)}
  for r in results:
    # The chosen rate maximises mean validation accuracy over the seeds ...
    val = np.asarray(r['val_accuracy'])
    assert r['lr'] == r['grid'][int(np.argmax(val.mean(1)))]
    # ... and the reported numbers are that rate's test accuracies.
    test = np.asarray(r['test_accuracy_all'])[r['grid'].index(r['lr'])]
    np.testing.assert_allclose(r['test_accuracy'], test)
    assert r['mean'] == pytest.approx(test.mean())
    assert len(r['test_accuracy']) == 3
  # Forty steps of SGD learn digits well beyond chance (0.1).
  sgd32 = next(r for r in results
               if (r['optimizer'], r['batch_size']) == ('SGD', 32))
  assert sgd32['mean'] > 0.5


def test_batch_orders_cover_each_epoch_and_cap_at_full_batch(accuracy):
  orders, per_epoch = accuracy.batch_orders(10, 4, 2, [0, 1])
  assert orders.shape == (2, 4, 4) and per_epoch == 2
  assert len(set(orders[0, :2].ravel())) == 8  # no repeats within an epoch
  assert not np.array_equal(orders[0], orders[1])
  full, per_epoch = accuracy.batch_orders(10, 4096, 3, [0])
  assert full.shape == (1, 3, 10) and per_epoch == 1


def test_grids_are_half_decade_ladders(accuracy):
  assert accuracy._grid(0.003, 4) == [0.003, 0.01, 0.03, 0.1]
  for _, _, grid in accuracy.OPTIMIZERS.values():
    ratios = np.asarray(grid[1:]) / np.asarray(grid[:-1])
    assert np.all((np.isclose(ratios, 3) | np.isclose(ratios, 10 / 3)))


@pytest.mark.parametrize('flags, match', [
  (['--seeds', '1'], '--seeds must be an int >= 2'),
  (['--batch-sizes', '16,x'], "invalid int value: '16,x'"),
  (['--optimizers', 'SGD,Lion'], "invalid choice: 'Lion'"),
  (['--datasets', 'fashion_mnist'], 'needs --data-dir'),
  (['--val-fraction', '1.5'], '--val-fraction'),
])
def test_bad_flags(accuracy, flags, match, capsys):
  with pytest.raises(SystemExit):
    accuracy.main(flags)
  assert match in capsys.readouterr().err
