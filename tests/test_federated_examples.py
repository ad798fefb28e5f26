# Copyright 2026 The ssgd_optax Authors. Licensed under the Apache License 2.0.
"""End-to-end runs of examples/federated.py and benchmarks/federated.py --quick."""


import pytest
from scripts import load as _load

pytest.importorskip('sklearn')  # the digits data set




example = _load('examples/federated.py', 'federated_example')

TINY = ['--dataset', 'digits', '--participants', '4', '--rounds', '2', '--hidden', '8',
        '--batch-size', '16']


def test_example_runs_and_learns():
  out = example.main(TINY + ['--theta-u', '0.5', '--order', 'random'])
  assert set(out) == {'dssgd', 'centralized', 'standalone'}
  # 10 classes: anything clearly above chance means training happened.
  assert out['dssgd']['accuracy'] > 0.3
  assert out['centralized']['accuracy'] > 0.3


def test_example_with_secure_aggregation_and_dropouts():
  pytest.importorskip('cryptography')
  out = example.main(TINY + ['--secure-aggregation', '--dropout', '0.25', '--no-baselines',
                             '--participants', '6'])
  assert 1 <= out['dssgd']['secure_rounds'] <= 2
  assert out['dssgd']['accuracy'] > 0.2


def test_benchmark_quick(tmp_path):
  bench = _load('benchmarks/federated.py', 'federated_benchmark')
  path = tmp_path / 'fed.md'
  text = bench.main(['--quick', '--out', str(path)])
  assert path.read_text() == text
  assert '| participants |' in text and 'loop / vmap' in text
  assert '| asynchronous |' in text and '| centralized |' in text
