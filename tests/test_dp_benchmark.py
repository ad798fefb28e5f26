# Copyright 2026 The ssgd_optax Authors. Licensed under the Apache License 2.0.
"""benchmarks/dp_ssgd.py: the grid-edge rule of its search, its report, and its anchors' checks."""

import json
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


def test_paired_differences_count_wins_and_spread(bench):
  p = bench.paired([0.80, 0.90, 0.70, 0.75], [0.70, 0.90, 0.80, 0.70])
  assert p['n'] == 4 and p['wins'] == 2 and p['ties'] == 1
  assert math.isclose(p['mean'], 0.0125)
  assert math.isclose(p['std'], math.sqrt(sum((d - 0.0125) ** 2 for d in (0.1, 0, -0.1, 0.05)) / 3))
  assert math.isclose(p['se'], p['std'] / 2)
  with pytest.raises(ValueError, match='no common seeds'):
    bench.paired([], [])


def _results(bench, **runs):
  config = dict(arch='cnn', width=[4, 8, 32], epochs=4.0, batch_size=500, accountant='pld',
                search_seeds=2, epsilons=[1.0, 3.0], n_train=4000, steps=32, quick=False,
                max_extensions=2, search={})
  search = dict(axes=dict(lr=[1.0]), best=dict(lr=1.0), score=0.5, records=[[dict(lr=1.0), 0.5]],
                notes=[], seeds=[100, 101], wall_s=1.0)
  out = {}
  for method, accs in runs.items():
    keys = ['-'] if method == 'sgd' else ['1', '3']
    out[method] = {k: dict(search=search, test=dict(seeds=list(range(len(accs))), acc=accs,
                                                  seconds=[1.0] * len(accs), sigma=1.0,
                                                  steps=32, spent=0.99)) for k in keys}
  return dict(config=config, versions={}, commands=['python benchmarks/dp_ssgd.py'], runs=out)


def test_report_pairs_every_row_with_our_clipping_and_shows_missing_anchors(bench):
  r = _results(bench, dp_sgd_clip=[0.8, 0.9], jax_privacy=[0.9, 0.9], sgd=[0.95, 0.97])
  r['runs']['opacus_hooks'] = {'1': {'error': 'not run (ImportError: no torch)'}}
  text = bench.report(r, r['commands'])
  assert '| jax_privacy (clipped_grad + gaussian_privatizer) | +5.0 ± 5.0 (7.1; 1/2) |' in text
  assert '| Opacus hooks | not run (ImportError: no torch) | not run |' in text
  # The non-private row is tuned and tested once and shown at every epsilon.
  assert text.count('96.0 ± 1.4') == 2
  # Our clipping at jax_privacy's point, paired with jax_privacy's own runs.
  r['cross'] = {'dp_sgd_clip@jax_privacy': {'3': dict(point=dict(lr=1.0), seeds=[1, 0],
                                                      acc=[0.8, 0.9], seconds=[1.0, 1.0])}}
  text = bench.report(r, r['commands'])
  assert "| dp_sgd_clip at jax_privacy's point | - | 85.0 ± 7.1 (lr=1); -5.0 ± 5.0 (0/2) |" in text


def test_cross_pairs_are_checked(bench):
  with pytest.raises(SystemExit):
    bench.main(['--quick', '--no-table', '--cross', 'dp_sgd_clip'])
  with pytest.raises(SystemExit):
    bench.main(['--quick', '--no-table', '--cross', 'dp_sgd_clip@nonsense'])


def test_merge_refuses_results_of_another_setup(bench, tmp_path):
  a, b = _results(bench, dp_sgd_clip=[0.8]), _results(bench, dp_ssgd=[0.7])
  (tmp_path / 'a.json').write_text(json.dumps(a))
  (tmp_path / 'b.json').write_text(json.dumps(b))
  merged = bench.merge([str(tmp_path / 'a.json'), str(tmp_path / 'b.json')])
  assert set(merged['runs']) == {'dp_sgd_clip', 'dp_ssgd'} and len(merged['commands']) == 2
  b['config']['epochs'] = 8.0
  (tmp_path / 'b.json').write_text(json.dumps(b))
  with pytest.raises(ValueError, match='configuration'):
    bench.merge([str(tmp_path / 'a.json'), str(tmp_path / 'b.json')])


def _small_data(bench):
  setup = bench.TableSetup('cnn', (2, 3, 4), 1.0, 8, 'rdp')
  return bench._device_data(False, 32), setup


@pytest.mark.slow  # 12-17 s on 2 shared cores: compiles the vmap, ghost and jax_privacy paths
def test_our_clipped_sum_equals_jax_privacys_and_ghost_equals_vmap(bench):
  """Our per-example clipping against an independent implementation (jax_privacy)."""
  pytest.importorskip('jax_privacy')
  data, setup = _small_data(bench)
  errors = bench.jax_checks(data, setup, examples=16)
  assert len(errors) == 3 and all(v < 1e-5 for v in errors.values()), errors


@pytest.mark.slow  # as above
def test_jax_checks_catch_a_wrong_clipping(bench, monkeypatch):
  """The check can fail: our clipping made to clip at 2C disagrees with jax_privacy."""
  pytest.importorskip('jax_privacy')
  data, setup = _small_data(bench)
  right = bench.dpsgd_lib.dpsgd_grad_sum
  monkeypatch.setattr(bench.dpsgd_lib, 'dpsgd_grad_sum',
                      lambda *a, clip_norm, **k: right(*a, clip_norm=2 * clip_norm, **k))
  errors = bench.jax_checks(data, setup, examples=16)
  assert errors['jax_privacy clipped_grad vs dpsgd_grad_sum'] > 0.1


@pytest.mark.slow  # about 12 s: torch.func, Opacus hooks and ghost clipping on a small CNN
def test_opacus_guard_passes_on_standard_layout_and_fails_on_channels_last(bench):
  """Opacus's per-sample conv gradients: right on NCHW inputs, wrong on channels-last ones."""
  pytest.importorskip('opacus')
  data, setup = _small_data(bench)
  good = bench.opacus_check(data, setup, 'standard', examples=8)
  bad = bench.opacus_check(data, setup, 'channels_last', examples=8)
  assert max(good.values()) < 1e-4, good
  assert bad['3.weight'] > 0.1 and bad['(ghost clipping norms)'] > 1e-4, bad
  assert max(v for k, v in bad.items() if k != '3.weight' and 'ghost' not in k) < 1e-4
