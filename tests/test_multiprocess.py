# Copyright 2026 The ssgd_optax Authors. Licensed under the Apache License 2.0.
"""Two JAX processes on loopback: multi-host SSGD equals the one-process run.

Each process (``tests/_multiprocess_worker.py``) has 4 virtual CPU devices,
joins ``jax.distributed`` with a coordinator on 127.0.0.1 and trains with CPU
collectives over gloo. Subprocess timeouts are hang guards, not speed checks;
every process is killed in ``finally``.
"""

import os
import pathlib
import signal
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from ssgd_examples.scripts import load

pytestmark = pytest.mark.multiprocess

WORKER = pathlib.Path(__file__).resolve().parent / '_multiprocess_worker.py'
HANG_GUARD_S = 240


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _spawn(process_id, port, *extra):
  env = dict(os.environ, JAX_PLATFORMS='cpu',
             XLA_FLAGS='--xla_force_host_platform_device_count=4')
  return subprocess.Popen(
      [sys.executable, str(WORKER), '--process-id', str(process_id), '--num-processes', '2',
       '--port', str(port), *extra],
      env=env, cwd=str(WORKER.parents[1]), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
      text=True)


def _kill_all(procs):
  for p in procs:
    if p.poll() is None:
      p.kill()
    p.communicate()


def _load_worker():
  return load('tests/_multiprocess_worker.py', '_multiprocess_worker')


@pytest.mark.slow  # the train-example two-process test covers this in the default run
def test_two_processes_equal_one_process_with_eight_devices(tmp_path):
  if jax.device_count() < 8:
    pytest.skip('needs 8 devices (tests/conftest.py sets XLA_FLAGS)')
  port = _free_port()
  outs = [tmp_path / f'params{i}.npz' for i in range(2)]
  procs = [_spawn(i, port, '--steps', '3', '--out', str(outs[i])) for i in range(2)]
  try:
    logs = [p.communicate(timeout=HANG_GUARD_S) for p in procs]
  finally:
    _kill_all(procs)
  for p, (_, err) in zip(procs, logs):
    assert p.returncode == 0, err[-3000:]
  got = [dict(np.load(o)) for o in outs]
  worker = _load_worker()
  for backend in ('shard_map', 'pmap'):
    want = worker._flat(worker.train(3, backend))
    assert set(want) == {k.split('/', 1)[1] for k in got[0] if k.startswith(backend)}
    for key, value in want.items():
      a, b = got[0][f'{backend}/{key}'], got[1][f'{backend}/{key}']
      np.testing.assert_array_equal(a, b)  # every process holds the same params
      # gloo may sum in another order than the in-process all-reduce.
      np.testing.assert_allclose(a, value, rtol=1e-5, atol=1e-7)
    # Training moved the parameters (so equality is not trivial).
    start = worker._flat(worker._model()[0])
    assert any(np.max(np.abs(want[k] - start[k])) > 1e-3 for k in want)


def _kill_and_expect_clear_failure(procs, victim, *messages):
  """SIGKILLs ``procs[victim]``; the survivor must exit non-zero with one of ``messages``."""
  procs[victim].send_signal(signal.SIGKILL)
  survivor = procs[1 - victim]
  try:
    _, err = survivor.communicate(timeout=HANG_GUARD_S)
  except subprocess.TimeoutExpired:
    pytest.fail(f'process {1 - victim} still running {HANG_GUARD_S} s after its peer died')
  assert survivor.returncode != 0
  assert any(m in err for m in messages), err[-3000:]


# About 30 s of 2 CPU cores per case (two process start-ups): excluded by default.
@pytest.mark.slow
@pytest.mark.parametrize('victim', [0, 1], ids=['coordinator_killed', 'worker_killed'])
def test_killing_one_process_makes_the_other_fail_clearly(victim):
  port = _free_port()
  procs = [_spawn(i, port, '--forever', '--backend', 'shard_map') for i in range(2)]
  try:
    for p in procs:  # both have finished a step: the job is up
      line = ''
      while 'READY' not in line:
        line = p.stdout.readline()
        assert line, p.communicate(timeout=HANG_GUARD_S)[1][-3000:]
    _kill_and_expect_clear_failure(procs, victim, 'another task died',
                                   'peer process may have died', 'stopped sending heartbeats')
  finally:
    _kill_all(procs)


# ------------------------------------------ examples/train.py as a 2-process job

ROOT = WORKER.parents[1]
# The README's main example on the smallest setting (digits, MLP, one epoch).
TRAIN_FLAGS = ['--dataset', 'digits', '--model', 'mlp', '--batch-size', '64', '--epochs', '1',
               '--quiet']


def _spawn_example(script, process_id, port, *flags):
  env = dict(os.environ, JAX_PLATFORMS='cpu',
             XLA_FLAGS='--xla_force_host_platform_device_count=4')
  return subprocess.Popen(
      [sys.executable, str(ROOT / script), '--coordinator', f'127.0.0.1:{port}',
       '--num-processes', '2', '--process-id', str(process_id), *flags],
      env=env, cwd=str(ROOT), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _load_train():
  module = load('examples/train.py', 'mp_examples_train')
  sys.modules.pop('mp_examples_train', None)
  return module


def test_train_example_two_processes_equal_one_process_with_eight_devices(tmp_path):
  if jax.device_count() < 8:
    pytest.skip('needs 8 devices (tests/conftest.py sets XLA_FLAGS)')
  port = _free_port()
  multi = tmp_path / 'multi'
  procs = [_spawn_example('examples/train.py', i, port, *TRAIN_FLAGS, '--workdir', str(multi))
           for i in range(2)]
  try:
    logs = [p.communicate(timeout=HANG_GUARD_S) for p in procs]
  finally:
    _kill_all(procs)
  for p, (out, err) in zip(procs, logs):
    assert p.returncode == 0, err[-3000:]
    assert '[Gloo]' not in out + err  # gloo's connection lines: only with --verbose
  # Process 0 alone prints the summary and writes the outputs, once.
  assert 'on 8 cpu device(s) in 2 processes' in logs[0][0]
  assert 'test accuracy' not in logs[1][0]
  assert sorted(p.name for p in (multi / 'checkpoints').iterdir()) == ['1']
  assert (multi / 'metrics.json').exists()

  train = _load_train()
  single = tmp_path / 'single'
  one = train.main(TRAIN_FLAGS + ['--devices', '8', '--workdir', str(single)])
  m_multi, _, meta_multi = train.load_checkpoint(str(multi))
  m_one, _, meta_one = train.load_checkpoint(str(single))
  assert meta_multi['epoch'] == meta_one['epoch'] == 1
  assert meta_multi['config']['devices'] == meta_one['config']['devices'] == 8
  flat = lambda m: worker_flat(jax.tree.map(np.asarray, train.nnx.state(m, train.nnx.Param)))
  got, want = flat(m_multi), flat(m_one)
  assert set(got) == set(want)
  start = flat(train.build(train.validate_config(train.parse_args(TRAIN_FLAGS + ['--workdir',
                                                                                 ''])),
                           (8, 8, 1), 10, 22)[0])
  for key in want:
    # gloo may sum in another order than the in-process all-reduce.
    np.testing.assert_allclose(got[key], want[key], rtol=1e-4, atol=1e-6, err_msg=key)
  # Training moved the parameters (so equality is not trivial).
  assert any(np.max(np.abs(want[k] - start[k])) > 1e-3 for k in want)
  assert one['history'][0]['step'] == 22


def worker_flat(tree):
  return {jax.tree_util.keystr(p): np.asarray(x)
          for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


# Two process start-ups and a wait for the survivor: excluded by default.
@pytest.mark.slow
@pytest.mark.parametrize('victim', [0, 1], ids=['coordinator_killed', 'worker_killed'])
def test_train_example_fails_clearly_when_a_process_dies(tmp_path, victim):
  port = _free_port()
  flags = ['--dataset', 'digits', '--model', 'mlp', '--batch-size', '64', '--epochs', '10',
           '--heartbeat-timeout', '5', '--workdir', str(tmp_path / 'run')]
  procs = [_spawn_example('examples/train.py', i, port, *flags) for i in range(2)]
  try:
    line = ''  # process 0 prints a line per epoch: the job is up
    while 'epoch 1/10: train loss' not in line:
      line = procs[0].stdout.readline()
      assert line, procs[0].communicate(timeout=HANG_GUARD_S)[1][-3000:]
    _kill_and_expect_clear_failure(procs, victim, 'another process died', 'another task died',
                                   'stopped sending heartbeats')
  finally:
    _kill_all(procs)
