# Copyright 2026 The ssgd_optax Authors. Licensed under the Apache License 2.0.
"""examples/flower_deploy.py exits honestly and leaves no process behind.

The flag checks are in test_benchmarks_cli.py (cheap, no process started).
These start Flower's SuperLink and SuperNodes (each message a fresh
ClientApp process importing JAX): slow.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
from ssgd_examples import ROOT
from ssgd_examples.scripts import load

SCRIPT = str(ROOT / 'examples' / 'flower_deploy.py')


def _env():
  return dict(os.environ, PYTHONPATH=os.pathsep.join(
      [str(ROOT)] + [p for p in os.environ.get('PYTHONPATH', '').split(os.pathsep) if p]))


def _processes_with(needle: bytes) -> list[int]:
  pids = []
  for pid in os.listdir('/proc'):
    if pid.isdigit() and int(pid) != os.getpid():
      try:
        with open(f'/proc/{pid}/environ', 'rb') as f:
          if needle in f.read():
            pids.append(int(pid))
      except OSError:
        pass
  return pids


def _is_projects(line: str) -> bool:
  """A line the project wrote: its loggers, the script's own lines, the JSON summary."""
  return ('ssgd_optax' in line or 'ssgd_flower_app' in line or line.startswith('{')
          or line.startswith('[flower_deploy]') or line.startswith('flower_deploy.py'))


def test_noise_filter_keeps_the_projects_lines_and_flowers_errors():
  deploy = load('examples/flower_deploy.py', 'noise_flower_deploy')
  keep = deploy.NoiseFilter()
  lines = [
      'INFO:httpx:HTTP Request: POST http://127.0.0.1:1/v1/runtime/push-logs "HTTP/1.1 200 OK"',
      'DEBUG:flwr:ServerApp finished running.',
      '\x1b[92mINFO \x1b[0m:      ',
      'INFO:ssgd_optax.federated.flower:round 0: 3 accepted, 0 dropped [].',
      '\x1b[91mERROR \x1b[0m:     ServerApp raised an exception',
      'Traceback (most recent call last):',
      'ValueError: rounds must be an int >= 1; got -1.',
      'ERROR:flwr:ServerApp raised an exception',          # the root logger's repetition
      'Traceback (most recent call last):',
      'ValueError: rounds must be an int >= 1; got -1.',
      '\x1b[91mERROR \x1b[0m:     Exit Code: 201',
  ]
  kept = [l for l in lines if keep(l)]
  assert kept == [lines[3], lines[4], lines[5], lines[6], lines[10]]
  assert deploy.server_error(lines) == ('ValueError: rounds must be an int >= 1; got -1. '
                                        '(Flower exit code 201)')
  assert deploy.server_error(lines[:4]) is None


@pytest.mark.slow  # a Flower deployment: SuperLink, 3 SuperNodes, ~1-2 min
def test_default_run_succeeds_and_prints_under_50_lines_not_the_projects(tmp_path):
  proc = subprocess.run([sys.executable, SCRIPT, '--run-config', 'rounds=1'],
                        capture_output=True, text=True, env=_env(), cwd=tmp_path, timeout=1800)
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = (proc.stdout + proc.stderr).splitlines()
  others = [l for l in lines if not _is_projects(l)]
  assert len(others) < 50, '\n'.join(others)
  assert 'httpx' not in proc.stdout + proc.stderr
  summary = json.loads(proc.stdout.strip().splitlines()[-1])
  assert summary['error'] is None and summary['dropouts_per_round'] == [0]


@pytest.mark.slow  # a Flower deployment whose ServerApp fails at once (~1 min)
def test_a_failed_run_exits_1_with_the_servers_error(tmp_path):
  proc = subprocess.run([sys.executable, SCRIPT, '--supernodes', '2', '--run-config',
                         'rounds=-1'], capture_output=True, text=True, env=_env(), cwd=tmp_path,
                        timeout=1800)
  assert proc.returncode == 1, (proc.stdout[-2000:], proc.stderr[-2000:])
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith('flower_deploy.py: the Flower run failed: ValueError: rounds must be '
                         'an int >= 1; got -1. (Flower exit code 201)'), last
  assert '"error": null' not in proc.stdout


@pytest.mark.slow  # starts a deployment and kills the script with SIGKILL (~30 s)
def test_sigkill_of_the_script_leaves_no_flower_process(tmp_path):
  proc = subprocess.Popen([sys.executable, SCRIPT, '--supernodes', '2', '--run-config',
                           'rounds=3'], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True, env=_env(), cwd=tmp_path)
  try:
    line = proc.stderr.readline()
    workdir = re.search(r'logs in (\S+)', line).group(1)
    needle = f'FLWR_HOME={workdir}/flwr_home'.encode()
    # Wait until the SuperLink, SuperNodes and the run's processes are up.
    deadline = time.monotonic() + 300
    while len(_processes_with(needle)) < 5 and time.monotonic() < deadline:
      time.sleep(0.5)
    assert len(_processes_with(needle)) >= 5
  finally:
    proc.kill()
    proc.wait()
  deadline = time.monotonic() + 60
  while _processes_with(needle) and time.monotonic() < deadline:
    time.sleep(0.5)
  survivors = _processes_with(needle)
  for pid in survivors:  # leave the machine clean even when the test fails
    try:
      os.kill(pid, signal.SIGKILL)
    except OSError:
      pass
  assert not survivors
