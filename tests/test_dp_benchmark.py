# Copyright 2026 The ssgd_optax Authors. Licensed under the Apache License 2.0.
"""The grid-edge rule of benchmarks/dp_ssgd.py's hyper-parameter search."""

import math

import pytest
from ssgd_examples.scripts import load as _load


@pytest.fixture(scope='module')
def bench():
  return _load('benchmarks/dp_ssgd.py')


def _bowl(**peak):
  """Validation 'accuracy' peaked at ``peak`` (in log10 units), and a call log."""
  calls = []

  def evaluate(point):
    calls.append(point)
    return -sum((math.log10(point[k]) - v) ** 2 for k, v in peak.items())

  return evaluate, calls


def test_interior_best_needs_no_extension(bench):
  evaluate, calls = _bowl(lr=0.0, clip=-1.0)
  res = bench.grid_search(evaluate, dict(lr=(0.1, 1.0, 10.0), clip=(0.01, 0.1, 1.0)))
  assert res.best == dict(lr=1.0, clip=0.1)
  assert res.notes == [] and len(calls) == 9 == len(res.records)


def test_best_on_the_upper_edge_is_extended_until_interior(bench):
  evaluate, _ = _bowl(lr=1.1)
  res = bench.grid_search(evaluate, dict(lr=bench._log_grid(-2, 0)), max_extensions=3)
  assert math.isclose(res.best['lr'], 10.0)
  # 1 -> 3.16 -> 10 -> 31.6: three extensions, the last one shows 10 is interior.
  assert sum('extended' in n for n in res.notes) == 3
  assert not any('still' in n for n in res.notes)


def test_lower_edge_extends_downwards_with_a_neighbourhood_only(bench):
  evaluate, calls = _bowl(lr=0.0, stability=-3.0)
  res = bench.grid_search(evaluate, dict(lr=(0.1, 1.0, 10.0), stability=(0.01, 0.1, 1.0)),
                          max_extensions=2)
  assert res.best == pytest.approx(dict(lr=1.0, stability=0.001))
  assert 'stability=0.01 on the lower edge' in res.notes[0]
  # New stability values are tried with lr in {0.1, 1, 10} (the best's neighbourhood) only.
  # 0.01 -> 0.001 (best, on the edge) -> 0.0001 (0.001 now interior): no edge left.
  assert len(calls) == 9 + 3 + 3
  assert not any('still' in n for n in res.notes)


def test_an_edge_left_by_the_cap_is_reported(bench):
  # The guard against a silently edge-bound search: with no extensions allowed
  # the best is on the edge, and the notes must say so.
  evaluate, _ = _bowl(lr=3.0)
  res = bench.grid_search(evaluate, dict(lr=(0.1, 1.0)), max_extensions=0)
  assert res.best == dict(lr=1.0)
  assert res.notes == ['lr=1 is still on the upper edge after 0 extensions']


def test_single_value_axes_are_fixed_and_bad_axes_refused(bench):
  evaluate, calls = _bowl(lr=5.0)
  res = bench.grid_search(evaluate, dict(lr=(1.0,)))
  assert res.best == dict(lr=1.0) and res.notes == [] and len(calls) == 1
  with pytest.raises(ValueError, match='axes'):
    bench.grid_search(evaluate, dict(lr=()))


def test_chosen_settings_must_name_every_search_axis(bench):
  with pytest.raises(SystemExit):
    bench.main(['--quick', '--methods', 'dp_sgd_clip', '--chosen', '{"dp_sgd_clip": {"lr_unit": 1}}'])
  with pytest.raises(SystemExit):
    bench.main(['--quick', '--chosen', 'not json'])
