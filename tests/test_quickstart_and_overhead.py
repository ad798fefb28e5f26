# Copyright 2026 The ssgd_optax Authors. Licensed under the Apache License 2.0.
"""End-to-end runs of the quickstart example and the overhead benchmark."""


import pytest
from ssgd_examples.scripts import load as _load




def test_quickstart_learns_digits(capsys):
  quickstart = _load('examples/quickstart.py')
  acc = quickstart.main(['--epochs', '3', '--scope', 'global'])
  assert acc > 0.85
  assert 'test accuracy' in capsys.readouterr().out


@pytest.mark.parametrize('flags,match', [
    (['--epochs', '0'], '--epochs'),
    (['--batch-size', '0'], '--batch-size'),
    (['--momentum', '1.5'], '--momentum'),
    (['--scope', 'per_block'], 'invalid choice'),
])
def test_quickstart_rejects_bad_flags(flags, match, capsys):
  quickstart = _load('examples/quickstart.py')
  with pytest.raises(SystemExit):
    quickstart.main(flags)
  assert match in capsys.readouterr().err


@pytest.mark.slow  # benchmark smoke test: run with -m slow
def test_overhead_benchmark_quick(tmp_path):
  bench = _load('benchmarks/transform_overhead.py')
  out = tmp_path / 'overhead.md'
  text = bench.main(['--quick', '--out', str(out)])
  assert out.read_text().strip() == text.strip()
  for name in ('optax.sgd', 'ssgd global', 'ssgd per_leaf', 'ssgd per_layer',
               'normalize_by_update_norm + sgd', 'bfloat16', 'full train step'):
    assert name in text
  shapes = bench.resnet50_shapes()
  assert len(shapes) == 159
  assert 23e6 < sum(__import__('math').prod(s) for s in shapes) < 24e6
