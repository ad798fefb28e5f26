# Copyright 2026 The ssgd_optax Authors. Licensed under the Apache License 2.0.
"""Two JAX processes on loopback: multi-host SSGD equals the one-process run.

Each process (``tests/_multiprocess_worker.py``) has 4 virtual CPU devices,
joins ``jax.distributed`` with a coordinator on 127.0.0.1 and trains with CPU
collectives over gloo. Subprocess timeouts are hang guards, not speed checks;
every process is killed in ``finally``.
"""

import importlib.util
import os
import pathlib
import signal
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

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
  spec = importlib.util.spec_from_file_location('_multiprocess_worker', WORKER)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


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
    procs[victim].send_signal(signal.SIGKILL)
    survivor = procs[1 - victim]
    try:
      _, err = survivor.communicate(timeout=HANG_GUARD_S)
    except subprocess.TimeoutExpired:
      pytest.fail(f'process {1 - victim} still running {HANG_GUARD_S} s after its peer died')
    assert survivor.returncode != 0
    assert ('another task died' in err or 'peer process may have died' in err
            or 'stopped sending heartbeats' in err), err[-3000:]
  finally:
    _kill_all(procs)
