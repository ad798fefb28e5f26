# Copyright 2026 The ssgd_optax Authors. Licensed under the Apache License 2.0.
"""End-to-end runs of the leakage example and the --quick benchmarks (tiny settings)."""


import numpy as np
import pytest
from ssgd_examples.scripts import load as _load




def test_leakage_demo_end_to_end(tmp_path, capsys):
  demo = _load('examples/leakage_demo.py')
  png = tmp_path / 'grid.png'
  out = demo.main(['--defences', 'none,ssgd_per_layer', '--size', '8', '--steps', '30',
                   '--png', str(png), '--quiet'])
  assert set(out) == {'none', 'ssgd_per_layer'}
  for s in out.values():
    assert np.all(np.isfinite(s.psnr)) and s.label_accuracy == 1.0
  assert png.stat().st_size > 0
  # Each row names the attack it ran (issue 17, item 9).
  rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
  assert 'attack' in rows['defence']
  assert 'IG (per-layer cosine)' in rows['none']
  assert 'adaptive DLG (per_layer)' in rows['ssgd_per_layer']
  with pytest.raises(SystemExit) as info:
    demo.main(['--defences', 'magic', '--size', '8', '--steps', '2'])
  assert info.value.code == 2
  assert "unknown defence 'magic'" in capsys.readouterr().err


@pytest.mark.slow  # a second full demo run; the end-to-end test covers the script
def test_leakage_demo_png_labels_are_not_clipped(tmp_path):
  matplotlib = pytest.importorskip('matplotlib')
  matplotlib.use('Agg')
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  demo = _load('examples/leakage_demo.py')
  png = tmp_path / 'grid.png'
  demo.main(['--defences', 'ssgd_per_layer', '--size', '8', '--steps', '2', '--png', str(png),
             '--quiet'])
  image = plt.imread(str(png))
  # bbox_inches='tight' grows the canvas to hold the longest row label
  # ("ssgd_per_layer / adaptive DLG (per_layer)"): the PNG is wider than the
  # 1-column grid's figure (3.7 in at 100 dpi) would be.
  assert image.shape[1] > 370 or image.shape[1] >= image.shape[0]
  # The leftmost column is background (white), not the cut-off edge of text.
  assert np.all(image[:, 0, :3] > 0.9)


@pytest.mark.slow  # benchmark smoke test: run with -m slow
def test_leakage_benchmark_quick(tmp_path):
  bench = _load('benchmarks/leakage.py')
  out = tmp_path / 'leakage.md'
  text = bench.main(['--quick', '--out', str(out)])
  assert '| lenet untrained | 1 | none | IG global |' in text
  assert '| analytic |' in text and 'R-GAP' in text and 'COPA index' in text
  # Formal defences are calibrated: the rows name their epsilon and sigma.
  assert '| lenet+bpclip untrained | 1 | bpclip_eps8 | IG global |' in text
  assert 'dp_ssgd_eps8: sigma = ' in text and 'bpclip_eps8: sigma = ' in text
  assert out.read_text().startswith('```\npython benchmarks/leakage.py --quick')


@pytest.mark.slow  # benchmark smoke test: run with -m slow
def test_attack_speed_quick(tmp_path):
  bench = _load('benchmarks/attack_speed.py')
  out = tmp_path / 'speed.md'
  text = bench.main(['--quick', '--out', str(out)])
  assert text in out.read_text()
  assert 'loop="scan"' in text and 'loop="python"' in text
