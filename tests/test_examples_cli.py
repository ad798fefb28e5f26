# Copyright 2026 The ssgd_optax Authors. Licensed under the Apache License 2.0.
"""The examples' one command-line layer (ssgd_optax/cli.py): bad flags end with
status 2 and a message naming the flag, before any data is read.

Every case parses in-process; the example's data loader is replaced by one
that fails, so a test also fails if work starts before the refusal.
"""

import dataclasses
import re

import pytest
from ssgd_examples.scripts import load as _load

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


@pytest.fixture(scope='module')
def data_parallel():
  return _load('examples/data_parallel.py', 'cli_data_parallel')


@pytest.fixture(scope='module')
def federated():
  return _load('examples/federated.py', 'cli_federated')


@pytest.mark.parametrize('argv, match', [
  (['--devices', '0'], '--devices must be an int >= 1; got 0'),
  (['--devices', '64'], '--devices 64 exceeds the 8 devices'),
  (['--features', '0'], '--features must be an int >= 1; got 0'),
  (['--epochs', '0'], '--epochs must be an int >= 1; got 0'),
  (['--learning-rate', '-1'], '--learning-rate must be a finite number > 0; got -1.0'),
  (['--learning-rate', 'nan'], '--learning-rate must be a finite number > 0'),
  (['--train-size', '0'], r'--train-size must be in \[1, 4000\]; got 0'),
  (['--train-size', '100'], '--batch-size 128 exceeds the 100 training images'),
  (['--devices', '3'], '--batch-size 128 must be divisible by --devices 3'),
  (['--coordinator', '127.0.0.1:1234'], '--coordinator, --num-processes and --process-id'),
])
def test_data_parallel_refuses(data_parallel, monkeypatch, capsys, argv, match):
  monkeypatch.setattr(data_parallel, 'load_data', _no_work)
  _refused(data_parallel.main, argv, match, capsys)


@pytest.mark.parametrize('argv, match', [
  (['--dropout', '2'], r'--dropout must be in \[0, 1\); got 2.0'),
  (['--lr', '-1'], '--lr must be a finite number > 0; got -1.0'),
  (['--rounds', '0'], '--rounds must be an int >= 1; got 0'),
  (['--theta-u', '0'], r'--theta-u must be in \(0, 1\]; got 0.0'),
  (['--theta-d', '1.5'], r'--theta-d must be in \(0, 1\]'),
  (['--participants', '0'], '--participants must be an int >= 1'),
  (['--concurrency', '3'], '--concurrency applies to --order asynchronous only'),
  (['--order', 'asynchronous', '--concurrency', '7'], '--concurrency 7 must divide'),
  (['--max-staleness', '2'], '--max-staleness applies to --order asynchronous'),
  (['--secure-aggregation', '--order', 'round_robin'], '--secure-aggregation runs synchronous'),
  (['--secure-aggregation', '--participants', '2'], '--participants >= 3'),
  (['--clip', '0'], '--clip must be a finite number > 0'),
])
def test_federated_refuses(federated, monkeypatch, capsys, argv, match):
  monkeypatch.setattr(federated, 'load', _no_work)
  _refused(federated.main, argv, match, capsys)


def test_federated_file_dataset_names_a_flag_that_exists(federated, monkeypatch, capsys):
  monkeypatch.setattr(federated, 'load', _no_work)
  monkeypatch.delenv('SSGD_OPTAX_DATA', raising=False)
  err = _refused(federated.main, ['--dataset', 'mnist'], '--dataset mnist needs --data-dir',
                 capsys)
  assert '[--data-dir DATA_DIR]' in err  # the flag the message names exists
  _refused(federated.main, ['--dataset', 'mnist', '--data-dir', '/nonexistent'],
           "--data-dir '/nonexistent' is not a directory", capsys)


@pytest.mark.parametrize('argv, match', [
  (['--batch-size', '0'], '--batch-size must be an int >= 1; got 0'),
  (['--batch-size', '10000'], '--batch-size 10000 exceeds the 4000 training images'),
  (['--max-train', '100'], r'--batch-size 256 exceeds the 100 training images \(--max-train\)'),
  (['--epsilons', '1', '0'], '--epsilons must be a finite number > 0; got 0.0'),
  (['--delta', '1'], r'--delta must be in \(0, 1\)'),
  (['--methods', 'opacus'], 'invalid choice'),
  (['--data-dir', '/tmp'], '--data-dir is for --dataset mnist'),
])
def test_dp_train_refuses(monkeypatch, capsys, argv, match):
  dp_train = _load('examples/dp_train.py', 'cli_dp_train')
  monkeypatch.setattr(dp_train.data_lib, 'load_dataset', _no_work)
  err = _refused(dp_train.main, argv, match, capsys)
  assert 'sampling_rate' not in err


@pytest.mark.parametrize('argv, match', [
  (['--batch-size', '0'], '--batch-size must be an int >= 1'),
  (['--batch-size', '10000'], '--batch-size 10000 exceeds the 4000 training images'),
  (['--train-size', '50'], r'exceeds the 50 training images \(--train-size\)'),
  (['--hidden', '16', '0'], '--hidden must be an int >= 1; got 0'),
])
def test_dp_ssgd_refuses(monkeypatch, capsys, argv, match):
  dp_ssgd = _load('examples/dp_ssgd.py', 'cli_dp_ssgd')
  monkeypatch.setattr(dp_ssgd, 'train', _no_work)
  _refused(dp_ssgd.main, argv, match, capsys)


def test_leakage_demo_refuses_an_unwritable_png_before_any_attack(tmp_path, monkeypatch,
                                                                    capsys):
  demo = _load('examples/leakage_demo.py', 'cli_leakage_demo')
  monkeypatch.setattr(demo, 'load_batch', _no_work)
  monkeypatch.setattr(demo, 'attack_under', _no_work)
  _refused(demo.main, ['--png', str(tmp_path / 'missing' / 'grid.png')],
           '--png must be in an existing folder', capsys)
  _refused(demo.main, ['--png', str(tmp_path)], '--png must be a file path', capsys)
  _refused(demo.main, ['--defences', 'none,magic'], "--defences: unknown defence 'magic'",
           capsys)
  _refused(demo.main, ['--steps', '0'], '--steps must be an int >= 1', capsys)


def test_quickstart_accepts_the_whole_training_set_as_one_batch(capsys):
  quickstart = _load('examples/quickstart.py', 'cli_quickstart')
  (x_train, _), _ = quickstart.load(0)
  assert quickstart.TRAIN_SIZE == len(x_train) == 1438
  config = cli.parse(quickstart.Config, ['--batch-size', '1438'])
  assert config.batch_size == 1438
  _refused(quickstart.main, ['--batch-size', '1439'], r'--batch-size must be in \[1, 1438\]',
           capsys)


# ---------------------------------------------------------------- the layer


@dataclasses.dataclass(frozen=True)
class _Example:
  batch_size: int = cli.flag(8, 'batch', check=cli.at_least(1))
  widths: tuple[int, ...] = cli.flag((4, 2), 'widths', check=cli.at_least(1))
  rate: float | None = cli.flag(None, 'rate', type=float, check=cli.finite(positive=True))
  verbose: bool = cli.flag(False, 'talk', aliases=('--loud',))
  progress: bool = cli.flag(True, 'bar')

  def validate(self):
    if self.batch_size < sum(self.widths):
      raise ValueError(f'--batch-size {self.batch_size} must be >= sum of --widths.')


def test_flags_are_built_from_the_fields():
  c = cli.parse(_Example, [])
  assert c == _Example()
  c = cli.parse(_Example, ['--batch-size', '9', '--widths', '1', '2', '3', '--rate', '0.5',
                            '--loud', '--no-progress'])
  assert c == _Example(9, (1, 2, 3), 0.5, True, False)
  parser = cli.build_parser(_Example)
  assert cli.explicit_flags(parser, ['--batch-size', '8', '--loud']) == {'batch_size',
                                                                          'verbose'}


@pytest.mark.parametrize('argv, match', [
  (['--batch-size', '0'], '--batch-size must be an int >= 1; got 0'),
  (['--batch-size', 'x'], "argument --batch-size: invalid int value: 'x'"),
  (['--widths', '2', '-1'], '--widths must be an int >= 1; got -1'),
  (['--rate', 'inf'], '--rate must be a finite number > 0; got inf'),
  (['--batch-size', '5'], '--batch-size 5 must be >= sum of --widths'),
])
def test_bad_values_exit_2_naming_the_flag(argv, match, capsys):
  _refused(lambda a: cli.parse(_Example, a), argv, match, capsys)


def test_distributed_flags_start_nothing_by_default():
  flags = cli.DistributedFlags()
  flags.validate_distributed()
  assert not flags.multi_process
  assert cli.initialize_distributed(flags) is False
