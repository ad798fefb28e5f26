# Copyright 2026 The ssgd_optax Authors. Licensed under the Apache License 2.0.
"""End-to-end tests of examples/train.py on tiny settings."""

import json
import re
import pathlib
import sys

import jax
import numpy as np
import pytest
from flax import nnx

from ssgd_examples.scripts import load

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope='module')
def train():
  module = load('examples/train.py', 'examples_train')
  yield module
  sys.modules.pop('examples_train', None)


# Digits + a small MLP: ~22 steps per epoch, a second or two per run.
TINY = ['--dataset', 'digits', '--model', 'mlp', '--batch-size', '64',
        '--no-progress']


def test_main_writes_metrics_plot_checkpoints_and_summary(train, tmp_path,
                                                          capsys):
  workdir = tmp_path / 'run'
  flags = ['--dataset', 'digits', '--model', 'mlp', '--batch-size', '64',
           '--epochs', '3', '--workdir', str(workdir)]
  result = train.main(flags)
  captured = capsys.readouterr()
  assert 'digits mlp ssgd(global, momentum 0.9)' in captured.out
  assert 'test accuracy' in captured.out
  # Per-epoch lines and the tqdm bar (which writes to stderr).
  assert 'epoch 3/3: train loss' in captured.out + captured.err
  assert 'step' in captured.err
  assert 'already finished' not in captured.out
  assert result['final']['test_accuracy'] > 0.85
  metrics = json.loads((workdir / 'metrics.json').read_text())
  assert [h['epoch'] for h in metrics['history']] == [1, 2, 3]
  assert metrics['final']['steps'] == 3 * (1438 // 64)
  assert metrics['config']['learning_rate'] == train.DEFAULT_LEARNING_RATES[
      'ssgd']
  png = (workdir / 'learning_curves.png').read_bytes()
  assert png[:8] == b'\x89PNG\r\n\x1a\n'
  assert sorted(p.name for p in (workdir / 'checkpoints').iterdir()) == [
      '2', '3']
  # Resuming a finished run trains nothing and evaluates the restored model.
  again = train.main(flags + ['--resume', '--no-progress'])
  assert again['final']['test_accuracy'] == pytest.approx(
      result['final']['test_accuracy'])
  assert again['final']['steps'] == result['final']['steps']


@pytest.mark.parametrize('optimizer, flags', [
  ('ssgd', ['--scope', 'per_layer', '--momentum', '0']),
  ('sgd', []),
  ('sgd_momentum', ['--momentum', '0.8']),
  ('adam', ['--schedule', 'warmup_cosine', '--warmup-epochs', '1']),
  ('normalize_by_update_norm', ['--schedule', 'constant']),
])
def test_every_optimizer_learns(train, optimizer, flags):
  config = train.parse_args(TINY + ['--optimizer', optimizer, '--epochs', '2',
                                    '--workdir', ''] + flags)
  result = train.train_and_evaluate(config)
  # Chance is 0.1; two epochs of any tuned optimizer reach far above it.
  assert result['final']['test_accuracy'] > 0.7, result['final']


def _params(model):
  return jax.tree.map(np.asarray, nnx.state(model, nnx.Param))


def test_resume_reaches_the_uninterrupted_result(train, tmp_path):
  base = TINY + ['--epochs', '2', '--learning-rate', '0.05']
  full = train.main(base + ['--workdir', str(tmp_path / 'full')])
  first = train.main(base + ['--workdir', str(tmp_path / 'cut'),
                             '--stop-after-epochs', '1'])
  assert [h['epoch'] for h in first['history']] == [1]
  resumed = train.main(base + ['--workdir', str(tmp_path / 'cut'),
                               '--resume'])
  # Same metrics epoch by epoch (timings aside) ...
  for a, b in zip(full['history'], resumed['history'], strict=True):
    for key in ('step', 'train_loss', 'train_accuracy', 'test_loss',
                'test_accuracy'):
      assert a[key] == pytest.approx(b[key], rel=1e-6, abs=1e-7), key
  # ... and the same parameters and optimizer state.
  m_full, o_full, meta_full = train.load_checkpoint(str(tmp_path / 'full'))
  m_cut, o_cut, meta_cut = train.load_checkpoint(str(tmp_path / 'cut'))
  assert meta_full['epoch'] == meta_cut['epoch'] == 2
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6,
                                                       atol=1e-7),
               _params(m_full), _params(m_cut))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6,
                                                       atol=1e-7),
               jax.tree.map(np.asarray, nnx.state(o_full)),
               jax.tree.map(np.asarray, nnx.state(o_cut)))


def test_resume_reads_the_configuration_and_refuses_conflicts_before_work(
    train, tmp_path, capsys, monkeypatch):
  # The README's pair of commands: a run with explicit flags, then
  # `--workdir runs/a --resume` with none of them.
  workdir = str(tmp_path / 'a')
  first = train.main(TINY + ['--optimizer', 'ssgd', '--scope', 'per_layer',
                             '--momentum', '0.5', '--epochs', '2',
                             '--workdir', workdir, '--stop-after-epochs', '1'])
  assert [h['epoch'] for h in first['history']] == [1]
  capsys.readouterr()

  def no_work(*args, **kwargs):
    raise AssertionError('work started despite conflicting flags')
  with monkeypatch.context() as m:
    m.setattr(train.data_lib, 'load_dataset', no_work)
    m.setattr(train, 'train_and_evaluate', no_work)
    for flags, name in ((['--learning-rate', '0.5'], '--learning-rate 0.5'),
                        (['--scope', 'global'], "--scope 'global'"),
                        (['--epochs', '3'], '--epochs 3')):
      with pytest.raises(SystemExit) as info:
        train.main(['--workdir', workdir, '--resume'] + flags)
      assert info.value.code == 2
      err = capsys.readouterr().err
      assert 'cannot resume' in err and name in err, err
    # Flags equal to the checkpoint's are no conflict.
    config = train.parse_args(['--workdir', workdir, '--resume', '--scope',
                               'per_layer', '--quiet'])
    assert (config.scope, config.momentum, config.epochs) == ('per_layer',
                                                              0.5, 2)
  resumed = train.main(['--workdir', workdir, '--resume', '--quiet'])
  assert resumed['config']['scope'] == 'per_layer'
  assert resumed['config']['dataset'] == 'digits'
  assert [h['epoch'] for h in resumed['history']] == [1, 2]
  # Resuming the finished run says so and trains nothing.
  capsys.readouterr()
  again = train.main(['--workdir', workdir, '--resume', '--quiet'])
  assert 'already finished 2 of 2 epochs' in capsys.readouterr().out
  assert again['final']['steps'] == resumed['final']['steps']


def test_the_main_command_twice_gets_two_run_folders(train, tmp_path,
                                                     monkeypatch):
  monkeypatch.chdir(tmp_path)
  runs = [train.main(TINY + ['--epochs', '1'])['config']['workdir']
          for _ in range(2)]
  assert runs[0] != runs[1]
  for run in runs:
    assert run.startswith(train.RUNS_DIR)
    assert (tmp_path / run / 'checkpoints' / '1').is_dir()
  # --resume without --workdir continues the newest run (finished here).
  config = train.parse_args(['--resume', '--quiet'])
  assert config.workdir == runs[1]


def test_resume_without_a_run_is_refused(train, tmp_path, capsys,
                                         monkeypatch):
  monkeypatch.chdir(tmp_path)
  for flags in (['--resume'], ['--resume', '--workdir', 'nowhere']):
    with pytest.raises(SystemExit) as info:
      train.main(flags)
    assert info.value.code == 2
    assert '--resume' in capsys.readouterr().err


@pytest.mark.devices(4)
def test_data_parallel_matches_one_device(train):
  results = {}
  for devices in (1, 4):
    config = train.parse_args(TINY + ['--epochs', '1', '--workdir', '',
                                      '--devices', str(devices)])
    results[devices] = train.train_and_evaluate(config)['history'][0]
  # Same global-batch gradient, only the reduction order differs.
  for key in ('train_loss', 'test_loss', 'test_accuracy'):
    assert results[1][key] == pytest.approx(results[4][key], rel=1e-3, abs=2e-3)


@pytest.mark.parametrize('flags, match', [
  (['--epochs', '0'], '--epochs must be an int >= 1'),
  (['--batch-size', '2000'], 'exceeds the 1438 training images'),
  (['--optimizer', 'adam', '--scope', 'per_leaf'], '--scope applies to'),
  (['--optimizer', 'sgd', '--momentum', '0.9'], '--momentum applies to'),
  (['--momentum', '1.0'], r'--momentum must be in \[0, 1\)'),
  (['--learning-rate', '-1'], '--learning-rate must be a finite number > 0'),
  (['--learning-rate', 'nan'], '--learning-rate must be a finite number > 0'),
  (['--warmup-epochs', '1'], '--warmup-epochs needs --schedule warmup_cosine'),
  (['--schedule', 'warmup_cosine'], 'needs 0 < --warmup-epochs'),
  (['--devices', '64'], 'xla_force_host_platform_device_count=64'),
  (['--devices', '3'], 'must be divisible by --devices 3'),
  (['--data-dir', '/tmp'], '--data-dir is for the file-based'),
  (['--resume', '--workdir', ''], '--resume, --overwrite and '
                                   '--stop-after-epochs need --workdir'),
  (['--stop-after-epochs', '5', '--epochs', '2'], '--stop-after-epochs must be'),
  (['--optimizer', 'lamb'], 'invalid choice'),
  (['--seed', '-1'], '--seed must be an int >= 0'),
  (['--coordinator', '127.0.0.1:1234'], '--coordinator, --num-processes and '
                                        '--process-id go together'),
  (['--coordinator', 'nohost', '--num-processes', '2', '--process-id', '0'],
   '--coordinator must be HOST:PORT'),
  (['--coordinator', '127.0.0.1:1', '--num-processes', '2', '--process-id',
    '2'], r'--process-id must be in \[0, --num-processes - 1 = 1\]'),
  (['--distributed', 'auto', '--coordinator', '127.0.0.1:1',
    '--num-processes', '2', '--process-id', '0'], '--distributed auto reads'),
  (['--num-processes', '0'], '--num-processes must be an int >= 1'),
  (['--scope', 'per_block'], 'invalid choice'),
])
def test_cli_rejects_bad_flags_before_any_work(train, flags, match, capsys,
                                               monkeypatch):
  def no_work(config):
    raise AssertionError('training started despite bad flags')
  monkeypatch.setattr(train, 'train_and_evaluate', no_work)
  with pytest.raises(SystemExit) as info:
    train.main(TINY + flags)
  assert info.value.code == 2
  err = capsys.readouterr().err
  assert re.search(match, err), err


def test_cli_rejects_file_dataset_without_data(train, capsys, monkeypatch):
  monkeypatch.delenv('SSGD_OPTAX_DATA', raising=False)
  with pytest.raises(SystemExit):
    train.main(['--dataset', 'fashion_mnist', '--workdir', ''])
  assert '--dataset fashion_mnist needs --data-dir' in capsys.readouterr().err


def test_cli_refuses_to_clobber_checkpoints(train, tmp_path, capsys):
  workdir = tmp_path / 'run'
  (workdir / 'checkpoints' / '1').mkdir(parents=True)
  with pytest.raises(SystemExit):
    train.main(TINY + ['--epochs', '1', '--workdir', str(workdir)])
  assert 'already holds checkpoints' in capsys.readouterr().err
  # --overwrite starts afresh.
  result = train.main(TINY + ['--epochs', '1', '--workdir', str(workdir),
                              '--overwrite'])
  assert [h['epoch'] for h in result['history']] == [1]
  assert sorted(p.name for p in (workdir / 'checkpoints').iterdir()) == ['1']
