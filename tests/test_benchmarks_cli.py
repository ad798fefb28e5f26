# Copyright 2026 The ssgd_optax Authors. Licensed under the Apache License 2.0.
"""The benchmarks and flower_deploy.py on the examples' command-line layer.

Every bad value ends with status 2 and a message naming the flag before any
work: each benchmark's work functions are replaced by one that fails, so a
test also fails if work starts before the refusal. ``--quick`` never
overrides an explicit flag, and without ``--out`` a result goes to a new
file under ``runs/benchmarks/`` (never a tracked file).
"""

import dataclasses
import functools
import json
import os
import re
import sys

import pytest
from ssgd_examples.scripts import load

from ssgd_examples import cli


def _no_work(*args, **kwargs):
  raise AssertionError('work started despite a bad flag')


def _refused(main, argv, match, capsys):
  with pytest.raises(SystemExit) as info:
    main(argv)
  assert info.value.code == 2
  err = capsys.readouterr().err
  assert 'usage:' in err and re.search(match, err), err
  return err


# script -> the functions (module attribute paths) that do the work.
WORK = {
  'benchmarks/accuracy.py': ['run_cell', 'data_lib.load_dataset'],
  'benchmarks/attack_speed.py': ['attacks.as_functional', 'models.LeNetZhu'],
  'benchmarks/audit.py': ['prepare_data', 'build_method', 'run_row', 'power_tables',
                          'data_lib.load_mnist_subset'],
  'benchmarks/dp_ssgd.py': ['_data', 'load_dataset', 'run_checks', 'run_table', 'run_cross',
                            'run_timing', 'merge'],
  'benchmarks/dp.py': ['time_steps', 'accuracy_vs_epsilon', 'data_lib.load_dataset',
                       'dp_train.train_and_evaluate'],
  'benchmarks/federated.py': ['ex.load', 'timing', 'accuracy'],
  'benchmarks/ghost.py': ['time_model', 'budget', '_model'],
  'benchmarks/flower_runtime.py': ['task_lib.build', 'scripts.load'],
  'benchmarks/leakage.py': ['load_images', 'register_dp_ssgd_defences', 'scaling_table',
                            'imprint_calibration', 'merge_scaling', 'make_model'],
  'benchmarks/parallel.py': ['benchmark'],
  'benchmarks/transform_overhead.py': ['update_benchmark', 'bound_benchmark', 'cnn_benchmark'],
  'benchmarks/secure_aggregation.py': ['measure', 'decode_cost'],
  'examples/flower_deploy.py': ['LocalDeployment'],
}


@pytest.fixture(scope='module')
def scripts():
  path = list(sys.path)
  try:
    return {p: load(p, 'cli_' + p.replace('/', '_').removesuffix('.py')) for p in WORK}
  finally:
    sys.path[:] = path  # flower_runtime.py puts examples/flower_app first


@pytest.fixture
def guarded(scripts, monkeypatch):
  def get(path):
    module = scripts[path]
    for attr in WORK[path]:
      owner, _, name = attr.rpartition('.')
      monkeypatch.setattr(getattr(module, owner) if owner else module, name, _no_work)
    return module
  return get


CASES = [
  ('benchmarks/accuracy.py', ['--epochs', '0'], '--epochs must be an int >= 1; got 0'),
  ('benchmarks/accuracy.py', ['--seeds', '1'], '--seeds must be an int >= 2'),
  ('benchmarks/accuracy.py', ['--hidden', '-3'], '--hidden must be an int >= 1'),
  ('benchmarks/accuracy.py', ['--batch-sizes', '16,0'], '--batch-sizes must be an int >= 1'),
  ('benchmarks/accuracy.py', ['--batch-sizes', '16,x'], "invalid int value: '16,x'"),
  ('benchmarks/accuracy.py', ['--optimizers', 'SGD,Lion'], "invalid choice: 'Lion'"),
  ('benchmarks/accuracy.py', ['--val-fraction', '1.5'], r'--val-fraction must be in \(0, 1\)'),
  ('benchmarks/accuracy.py', ['--datasets', 'fashion_mnist'], 'needs --data-dir'),
  ('benchmarks/accuracy.py', ['--datasets', 'fashion_mnist', '--data-dir', '{tmp}'],
   '--data-dir: fashion_mnist: no file train-images-idx3-ubyte'),
  ('benchmarks/accuracy.py', ['--data-dir', '{tmp}/missing'], '--data-dir must be an existing'),
  ('benchmarks/accuracy.py', ['--out', '{tmp}/missing/a.md'], '--out must be in an existing'),
  ('benchmarks/accuracy.py', ['--plot', '{tmp}/missing/a.png'], '--plot must be in an existing'),
  ('benchmarks/accuracy.py', ['--plot', '{tmp}/a.txt'], '--plot must end in .png'),
  ('benchmarks/accuracy.py', ['--json', '{tmp}'], '--json must be a file path'),
  ('benchmarks/accuracy.py', ['--quick', '--epochs', '-1'], '--epochs must be an int >= 1'),
  ('benchmarks/attack_speed.py', ['--steps', '0'], '--steps must be an int >= 1; got 0'),
  ('benchmarks/attack_speed.py', ['--repeats', '0'], '--repeats must be an int >= 1'),
  ('benchmarks/attack_speed.py', ['--threads', '0'], '--threads must be an int >= 1'),
  ('benchmarks/attack_speed.py', ['--quick', '--steps', '-2'], '--steps must be an int >= 1'),
  ('benchmarks/attack_speed.py', ['--out', '{tmp}/missing/a.md'], '--out must be in an exist'),
  ('benchmarks/audit.py', ['--gradient-canaries', '0'], '--gradient-canaries must be an int '
   '>= 2; got 0'),
  ('benchmarks/audit.py', ['--input-canaries', '1'], '--input-canaries must be an int >= 2'),
  ('benchmarks/audit.py', ['--input-canaries', '4001'], '--input-canaries must be <= the 4000'),
  ('benchmarks/audit.py', ['--quick', '--input-canaries', '500'], 'must be <= the 400 training '
   'images of --quick'),
  ('benchmarks/audit.py', ['--epochs', '0'], '--epochs must be a finite number > 0; got 0'),
  ('benchmarks/audit.py', ['--quick', '--epochs', '-1'], '--epochs must be a finite number > 0'),
  ('benchmarks/audit.py', ['--epsilons', '8', 'inf'], '--epsilons must be a finite number > 0'),
  ('benchmarks/audit.py', ['--seed', '-1'], '--seed must be an int >= 0'),
  ('benchmarks/audit.py', ['--defences', 'none', 'dp'], "invalid choice: 'dp'"),
  ('benchmarks/audit.py', ['--lr', 'dpssgd=-1'], "--lr takes METHOD=RATE .*got 'dpssgd=-1'"),
  ('benchmarks/audit.py', ['--lr', 'adam=0.1'], "--lr takes METHOD=RATE .*got 'adam=0.1'"),
  ('benchmarks/audit.py', ['--lr', 'bp'], "--lr takes METHOD=RATE .*got 'bp'"),
  ('benchmarks/audit.py', ['--out', '{tmp}/missing/a.md'], '--out must be in an existing'),
  ('benchmarks/audit.py', ['--power', '--power-runs', '1000', '1'], '--power-runs must be an '
   'int >= 2; got 1'),
  ('benchmarks/audit.py', ['--power', '--power-seeds', '0'], '--power-seeds must be an int'),
  ('benchmarks/audit.py', ['--power', '--power-factors', '1', 'nan'], '--power-factors must be '
   'a finite number > 0'),
  ('benchmarks/audit.py', ['--power', '--power-parts', 'both'], "invalid choice: 'both'"),
  ('benchmarks/audit.py', ['--power', '--power-epochs', '0'], '--power-epochs must be a finite'),
  ('benchmarks/audit.py', ['--power', '--out', '{tmp}'], '--out must be a file path'),
  ('benchmarks/dp.py', ['--steps', '-1'], '--steps must be an int >= 1; got -1'),
  ('benchmarks/dp.py', ['--rounds', '0'], '--rounds must be an int >= 1; got 0'),
  ('benchmarks/dp.py', ['--lr', '-1'], '--lr must be a finite number > 0; got -1'),
  ('benchmarks/dp.py', ['--epochs', 'nan'], '--epochs must be a finite number > 0'),
  ('benchmarks/dp.py', ['--epsilons', '1', '0'], '--epsilons must be a finite number > 0; got 0'),
  ('benchmarks/dp.py', ['--quick', '--epsilons', '-1'], '--epsilons must be a finite number'),
  ('benchmarks/dp.py', ['--seeds', '-1'], '--seeds must be an int >= 0'),
  ('benchmarks/dp.py', ['--torch-threads', '-1'], '--torch-threads must be an int >= 0'),
  ('benchmarks/dp.py', ['--skip-timing', '--skip-accuracy'], 'leave nothing to run'),
  ('benchmarks/dp.py', ['--out', '{tmp}/missing/d.md'], '--out must be in an existing folder'),
  ('benchmarks/dp_ssgd.py', ['--seeds', '0'], '--seeds must be an int >= 1; got 0'),
  ('benchmarks/dp_ssgd.py', ['--search-seeds', '0'], '--search-seeds must be an int >= 1'),
  ('benchmarks/dp_ssgd.py', ['--epochs', '0'], '--epochs must be a finite number > 0; got 0'),
  ('benchmarks/dp_ssgd.py', ['--batch-size', '0'], '--batch-size must be an int >= 1; got 0'),
  ('benchmarks/dp_ssgd.py', ['--max-extensions', '-1'], '--max-extensions must be an int >= 0'),
  ('benchmarks/dp_ssgd.py', ['--timing-rounds', '0'], '--timing-rounds must be an int >= 1'),
  ('benchmarks/dp_ssgd.py', ['--epsilons', '3', 'nan'], '--epsilons must be a finite number'),
  ('benchmarks/dp_ssgd.py', ['--quick', '--epsilons', '-1'], '--epsilons must be a finite'),
  ('benchmarks/dp_ssgd.py', ['--width', '4', '8'], '--width: three ints .* got 2'),
  ('benchmarks/dp_ssgd.py', ['--width', '4', '0', '32'], '--width must be an int >= 1; got 0'),
  ('benchmarks/dp_ssgd.py', ['--methods', 'dp_sgd'], "invalid choice: 'dp_sgd'"),
  ('benchmarks/dp_ssgd.py', ['--cross', 'sgd@nothing'], "--cross: 'sgd@nothing' is not"),
  ('benchmarks/dp_ssgd.py', ['--chosen', 'not json'], '--chosen is not JSON'),
  ('benchmarks/dp_ssgd.py', ['--chosen', '{"dp_sgd_clip": {"lr_unit": 1}}'],
   "--chosen: \\['dp_sgd_clip'\\] need exactly the keys"),
  ('benchmarks/dp_ssgd.py', ['--chosen', '{"dp_ssgd": {"lr": -1}}'],
   '--chosen: every value must be a finite number > 0'),
  ('benchmarks/dp_ssgd.py', ['--no-table'], '--no-table leaves nothing to run'),
  ('benchmarks/dp_ssgd.py', ['--timing', '--methods', 'dp_ssgd'], '--timing needs the sgd'),
  ('benchmarks/dp_ssgd.py', ['--torch-threads', '-1'], '--torch-threads must be an int >= 0'),
  ('benchmarks/dp_ssgd.py', ['--json', '{tmp}'], '--json must be a file path'),
  ('benchmarks/dp_ssgd.py', ['--json', '{tmp}/missing/r.json'], '--json must be in an existing'),
  ('benchmarks/dp_ssgd.py', ['--combine', '{tmp}/none.json'], '--combine must be a readable '
   'results file'),
  ('benchmarks/dp_ssgd.py', ['--no-table', '--timing', '--points-from', '{tmp}/none.json'],
   '--points-from must be a readable results file'),
  ('benchmarks/dp_ssgd.py', ['--out', '{tmp}/missing/r.md'], '--out must be in an existing'),
  ('benchmarks/federated.py', ['--rounds', '-1'], '--rounds must be an int >= 1; got -1'),
  ('benchmarks/federated.py', ['--seeds', '0'], '--seeds must be an int >= 1'),
  ('benchmarks/federated.py', ['--out', '{tmp}/missing/f.md'], '--out must be in an existing'),
  ('benchmarks/flower_runtime.py', ['--rounds', '-1'], '--rounds must be an int >= 1; got -1'),
  ('benchmarks/flower_runtime.py', ['--participants', '0'], '--participants must be an int'),
  ('benchmarks/flower_runtime.py', ['--mode', 'cloud'], 'invalid choice'),
  ('benchmarks/ghost.py', ['--rounds', '0'], '--rounds must be an int >= 1; got 0'),
  ('benchmarks/ghost.py', ['--steps', '0'], '--steps must be an int >= 1; got 0'),
  ('benchmarks/ghost.py', ['--budget-gib', '0'], '--budget-gib must be a finite number > 0'),
  ('benchmarks/ghost.py', ['--budget-gib', 'inf'], '--budget-gib must be a finite number > 0'),
  ('benchmarks/ghost.py', ['--quick', '--rounds', '-3'], '--rounds must be an int >= 1'),
  ('benchmarks/ghost.py', ['--out', '{tmp}/missing/g.md'], '--out must be in an existing folder'),
  ('benchmarks/leakage.py', ['--batch-sizes', '0'], '--batch-sizes must be a comma list of ints '
   ">= 1 .*got '0'"),
  ('benchmarks/leakage.py', ['--batch-sizes', '1,x'], '--batch-sizes must be a comma list'),
  ('benchmarks/leakage.py', ['--batch-sizes', '1,64'], '--batch-sizes 64 exceed --images 32'),
  ('benchmarks/leakage.py', ['--attacks', 'nonsense'], "--attacks must be a comma list of DLG, "
   "adaptive DLG, IG global, IG per-layer, IG per-leaf or 'all' \\('nonsense' unknown\\)"),
  ('benchmarks/leakage.py', ['--dp-attacks', 'IG globl'], "--dp-attacks .*'IG globl' unknown"),
  ('benchmarks/leakage.py', ['--models', 'lenet:half'], "--models must be a comma list of "
   "MODEL:STATE .*'lenet:half' is not"),
  ('benchmarks/leakage.py', ['--defences', 'none,bogus'], "--defences must be a comma list .*"
   "'bogus' unknown"),
  ('benchmarks/leakage.py', ['--defences', 'dp_ssgd_eps2'], "'dp_ssgd_eps2' unknown.* needs e "
   'in --dp-epsilons'),
  ('benchmarks/leakage.py', ['--layer-defences', 'ssgd_globl'], '--layer-defences: unknown '
   'defence.s. ssgd_globl'),
  ('benchmarks/leakage.py', ['--scaling', '--dp-epsilons', ''], "--scaling-defences .*"
   "'dp_ssgd_eps8' unknown"),
  ('benchmarks/leakage.py', ['--dp-epsilons', '1,0'], '--dp-epsilons must be a comma list of '
   'finite numbers > 0'),
  ('benchmarks/leakage.py', ['--dp-sigmas', '8=x'], '--dp-sigmas must be a comma list of '
   'EPSILON=SIGMA'),
  ('benchmarks/leakage.py', ['--dp-epsilons', '8', '--dp-sigmas', '3=0.5'], '--dp-sigmas names '
   'epsilons not in --dp-epsilons'),
  ('benchmarks/leakage.py', ['--dp-sampling-rate', '0'], r'--dp-sampling-rate must be in \(0, 1\]'),
  ('benchmarks/leakage.py', ['--steps-ig', '0'], '--steps-ig must be an int >= 1; got 0'),
  ('benchmarks/leakage.py', ['--tv', '-1'], '--tv must be a finite number >= 0'),
  ('benchmarks/leakage.py', ['--size', '4'], '--size must be an int >= 8'),
  ('benchmarks/leakage.py', ['--quick', '--images', '0'], '--images must be an int >= 1'),
  ('benchmarks/leakage.py', ['--scaling', '--full'], '--scaling and --full are different runs'),
  ('benchmarks/leakage.py', ['--scaling-merge', '{tmp}/none.md'], '--scaling-merge must be a '
   'comma list of existing files'),
  ('benchmarks/leakage.py', ['--imprint-calibration', '--calibration-pool', '32'],
   '<= --calibration-pool 32'),
  ('benchmarks/leakage.py', ['--cifar10', '{tmp}/missing'], '--cifar10 must be an existing'),
  ('benchmarks/leakage.py', ['--cifar10', '{tmp}'], '--cifar10: cifar10'),
  ('benchmarks/leakage.py', ['--png-dir', '{tmp}/missing/figures'], '--png-dir must be a '
   'folder, existing or new in an existing writable folder'),
  ('benchmarks/leakage.py', ['--out', '{tmp}/missing/l.md'], '--out must be in an existing'),
  ('benchmarks/parallel.py', ['--devices', '0'], '--devices must be an int >= 1; got 0'),
  ('benchmarks/parallel.py', ['--devices', '64'], '--devices 64 exceeds the 8 devices'),
  ('benchmarks/parallel.py', ['--batch-size', '0'], '--batch-size must be an int >= 1; got 0'),
  ('benchmarks/parallel.py', ['--batch-size', '6'], '--batch-size 6 must be divisible'),
  ('benchmarks/parallel.py', ['--rounds', '0'], '--rounds must be an int >= 1; got 0'),
  ('benchmarks/parallel.py', ['--steps', '0'], '--steps must be an int >= 1'),
  ('benchmarks/parallel.py', ['--backends', 'xmap'], "invalid choice: 'xmap'"),
  ('benchmarks/parallel.py', ['--quick', '--devices', '0'], '--devices must be an int >= 1'),
  ('benchmarks/transform_overhead.py', ['--rounds', '0'], '--rounds must be an int >= 1'),
  ('benchmarks/transform_overhead.py', ['--inner', '0'], '--inner must be an int >= 1'),
  ('benchmarks/transform_overhead.py', ['--cnn-batch', '0'], '--cnn-batch must be an int'),
  ('benchmarks/transform_overhead.py', ['--compare-rev', 'no-such-rev'],
   "--compare-rev 'no-such-rev': git has no"),
  ('benchmarks/secure_aggregation.py', ['--participants', '2'], '--participants must be an '
   'int >= 3'),
  ('benchmarks/secure_aggregation.py', ['--entries', '0'], '--entries must be an int >= 1'),
  ('benchmarks/secure_aggregation.py', ['--reps', '0'], '--reps must be an int >= 1'),
  ('benchmarks/secure_aggregation.py', ['--compare-rev', 'no-such-rev'],
   "--compare-rev 'no-such-rev': cannot read"),
  ('examples/flower_deploy.py', ['--supernodes', '0'], '--supernodes must be an int >= 1; got 0'),
  ('examples/flower_deploy.py', ['--timeout', '-5'], '--timeout must be a finite number > 0'),
  ('examples/flower_deploy.py', ['--timeout', 'nan'], '--timeout must be a finite number > 0'),
  ('examples/flower_deploy.py', ['--summary', '{tmp}/missing/s.jsonl'],
   '--summary must be in an existing folder'),
  ('examples/flower_deploy.py', ['--run-config', 'rounds=-1x'], '--run-config must be'),
  ('examples/flower_deploy.py', ['--run-config', 'bogus=1'], "unknown key\\(s\\) bogus"),
  ('examples/flower_deploy.py', ['--run-config', 'num-participants=2'],
   'num-participants=2 must equal --supernodes 3'),
]


@pytest.mark.parametrize('path, argv, match', CASES,
                         ids=[f'{p.split("/")[1][:-3]}{" ".join(a)}' for p, a, _ in CASES])
def test_bad_values_are_refused_before_any_work(guarded, tmp_path, capsys, path, argv, match):
  module = guarded(path)
  argv = [a.replace('{tmp}', str(tmp_path)) for a in argv]
  _refused(module.main, argv, match, capsys)


def test_simulation_without_ray_is_refused(guarded, monkeypatch, capsys):
  import importlib.util
  find_spec = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, 'find_spec',
                      lambda name, *a: None if name == 'ray' else find_spec(name, *a))
  _refused(guarded('examples/flower_deploy.py').main, ['--simulation'],
           '--simulation needs Flower.s simulation engine', capsys)
  _refused(guarded('benchmarks/flower_runtime.py').main, ['--mode', 'simulation'],
           '--mode simulation needs', capsys)


def test_audit_without_its_extra_is_refused(guarded, monkeypatch, capsys):
  import importlib.util
  find_spec = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, 'find_spec',
                      lambda name, *a: None if name == 'jax_privacy' else find_spec(name, *a))
  _refused(guarded('benchmarks/audit.py').main, ['--quick'],
           "needs the 'audit' extra .*pip install -e '.\\[bench\\]'", capsys)


@pytest.mark.parametrize('path', [p for p in WORK if p.startswith('benchmarks/')
                                  and p != 'benchmarks/flower_runtime.py'])
def test_quick_never_overrides_an_explicit_flag(scripts, path):
  module = scripts[path]
  quick = module.QUICK
  name, value = next(iter(quick.items()))
  default = {f.name: f.default for f in dataclasses.fields(module.Config)}
  assert quick[name] != default[name]
  config = cli.parse(module.Config, ['--quick'], quick=quick)
  assert all(getattr(config, k) == v for k, v in quick.items())
  # The explicit value of the first quick field wins (the default, given explicitly).
  shown = default[name]
  flag = cli.flag_name(name)
  argv = ['--quick', flag, *(map(str, shown) if isinstance(shown, tuple) else [str(shown)])]
  config = cli.parse(module.Config, argv, quick=quick)
  assert getattr(config, name) == default[name]
  assert all(getattr(config, k) == v for k, v in quick.items() if k != name)


@pytest.mark.parametrize('text, match', [
  ('not json', 'must be a JSON results file'),
  ('{"runs": {}}', 'must be a results file of this benchmark'),
])
def test_dp_ssgd_refuses_a_results_file_it_cannot_read(guarded, tmp_path, capsys, text, match):
  bad = tmp_path / 'r.json'
  bad.write_text(text)
  main = guarded('benchmarks/dp_ssgd.py').main
  for flag in ('--json', '--combine'):
    _refused(main, ['--quick', flag, str(bad)], f'{flag} {match}', capsys)


# The configuration that benchmarks/dp_ssgd.py stored (main at 4fce27a, before the move onto
# the command-line layer) in the --json file of `--quick --json X`: the files of an ongoing run
# must still be accepted by a rerun with the same flags.
_DP_SSGD_QUICK_CONFIG = dict(
  arch='cnn', width=[4, 8, 32], epochs=1.0, batch_size=32, accountant='rdp', search_seeds=1,
  epsilons=[3.0], n_train=128, steps=4, quick=True, max_extensions=2, search={
    'sgd': {'lr_unit': [1.0], 'clip': [0.31622776601683794]},
    'dp_sgd_clip': {'lr_unit': [1.0], 'clip': [0.31622776601683794]},
    'jax_privacy': {'lr_unit': [1.0], 'clip': [0.31622776601683794]},
    'opacus_hooks': {'lr_unit': [1.0], 'clip': [0.31622776601683794]},
    'opacus_ghost': {'lr_unit': [1.0], 'clip': [0.31622776601683794]},
    'dp_ssgd': {'lr': [1.0]},
    'dp_ssgd_per_layer': {'lr': [1.0]},
    'dp_ssgd_auto_s': {'lr': [1.0], 'stability': [0.1]},
    'dp_ssgd_auto_s_per_layer': {'lr': [1.0], 'stability': [0.1]},
    'backprop_clip': {'lr_unit': [1.0], 'c_in': [10.0], 'c_out': [0.1]}})


def test_dp_ssgd_resumes_a_file_of_the_previous_version_and_refuses_another_configuration(
    scripts, tmp_path, monkeypatch, capsys):
  module = scripts['benchmarks/dp_ssgd.py']
  for name in ('run_checks', 'run_table', 'run_cross', 'run_timing'):
    monkeypatch.setattr(module, name, lambda *a, **k: None)
  monkeypatch.setattr(module, 'report', lambda results, commands: 'report')
  monkeypatch.setattr(module, 'load_dataset', functools.lru_cache(module.load_dataset))
  path = tmp_path / 'r.json'
  path.write_text(json.dumps(dict(config=_DP_SSGD_QUICK_CONFIG, versions={}, runs={},
                                  commands=['python benchmarks/dp_ssgd.py --quick --json r.json'])))
  argv = ['--quick', '--json', str(path), '--out', str(tmp_path / 'r.md')]
  module.main(argv)
  # The same configuration with flags given explicitly at the values --quick gives them.
  module.main(argv + ['--epochs', '1', '--batch-size', '32', '--epsilons', '3'])
  stored = json.loads(path.read_text())
  assert stored['config'] == _DP_SSGD_QUICK_CONFIG and len(stored['commands']) == 3
  capsys.readouterr()
  _refused(module.main, argv + ['--epochs', '2'], 'holds results of another configuration',
           capsys)


def test_leakage_full_sets_only_the_flags_not_given(scripts):
  module = scripts['benchmarks/leakage.py']

  def parse(argv):
    return cli.parse(module.Config, argv, prepare=module._full, quick=module.QUICK)

  config = parse(['--full', '--size', '16', '--defences', 'none'])
  assert (config.size, config.defences, config.steps_ig, config.images) == (16, 'none', 4800, 16)
  assert config.dp_epsilons == ''  # no DP defence: no DP rows
  config = parse(['--full', '--full-steps', '10'])
  assert config.steps_ig == 10 and 'dp_ssgd_eps8' in config.defences
  assert config.dp_epsilons == '8'
  assert parse([]).size == 32 and parse([]).defences == 'all'


def test_results_go_to_a_new_untracked_file_unless_out_names_one(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  first = cli.write_output(None, 'a', name='bench')
  second = cli.write_output(None, 'b', name='bench')
  assert first != second and first.startswith(os.path.join('runs', 'benchmarks', 'bench-'))
  assert open(first).read() == 'a\n' and open(second).read() == 'b\n'
  out = tmp_path / 'mine.md'
  assert cli.write_output(str(out), 'c', name='bench') == str(out)
  assert out.read_text() == 'c\n'
  # runs/ is ignored by git at the repository root: a default result is never tracked.
  ignore = open(os.path.join(os.path.dirname(__file__), '..', '.gitignore')).read().split()
  assert '/runs/' in ignore


# Benchmarks whose flags are not yet on ssgd_examples.cli (issue 28 follow-up).
_NOT_TESTED_HERE_YET = {'checkpoints.py', 'federated_rounds.py', 'opacus_channels_last.py'}


def test_every_benchmark_is_on_the_layer_and_tested_here():
  root = os.path.join(os.path.dirname(__file__), '..', 'benchmarks')
  scripts = {f for f in os.listdir(root) if f.endswith('.py')}
  tested = {p.split('/')[1] for p in WORK if p.startswith('benchmarks/')}
  assert scripts - tested == _NOT_TESTED_HERE_YET
  for name in tested:
    assert 'cli.run(main, sys.argv[1:])' in open(os.path.join(root, name)).read(), name


def test_documented_benchmark_commands_do_not_overwrite_tracked_results():
  root = os.path.join(os.path.dirname(__file__), '..')
  tracked = set(os.listdir(os.path.join(root, 'benchmarks', 'results')))
  docs = ['README.md', 'benchmarks/README.md'] + [f'docs/{f}' for f in
                                                   os.listdir(os.path.join(root, 'docs'))
                                                   if f.endswith('.md')]
  docs += [f'benchmarks/{f}' for f in os.listdir(os.path.join(root, 'benchmarks'))
           if f.endswith('.py')]
  offenders = []
  for doc in docs:
    text = open(os.path.join(root, doc), encoding='utf-8').read()
    for m in re.finditer(r'python benchmarks/\S+\.py[^\n`]*?--(?:out|plot|json|png)[ =]'
                         r'benchmarks/results/([\w.-]+)', text):
      if m.group(1).rstrip('.') in tracked:
        offenders.append(f'{doc}: {m.group(0)}')
    # A folder flag (leakage.py's --png-dir) writes its tracked figures there.
    for m in re.finditer(r'python benchmarks/\S+\.py[^\n`]*?--png-dir[ =]benchmarks/results/?'
                         r'(?![\w.-])', text):
      offenders.append(f'{doc}: {m.group(0)}')
  assert not offenders, offenders


@pytest.mark.slow  # one secure-aggregation round per variant (n = 4, 10^4 entries)
def test_secure_aggregation_quick_writes_its_table(scripts, tmp_path):
  out = tmp_path / 'sa.md'
  text = scripts['benchmarks/secure_aggregation.py'].main(['--quick', '--out', str(out)])
  assert out.read_text() == text and '| 4 | 10,000 | verified+dp |' in text
