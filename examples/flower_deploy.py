# Copyright 2026 The ssgd_optax Authors. Licensed under the Apache License 2.0.
"""Runs ``examples/flower_app`` in Flower's deployment mode on this machine.

Starts one ``flower-superlink --insecure`` and ``--supernodes``
``flower-supernode --insecure`` processes on 127.0.0.1 (free ports), writes a
Flower configuration with a ``local-deployment`` SuperLink connection into a
temporary ``FLWR_HOME``, submits the app with ``flwr run --stream`` and stops
every process at the end (also on error or Ctrl-C). The ServerApp appends one
JSON line per round and a summary to ``--summary``.

    python examples/flower_deploy.py --supernodes 3
    python examples/flower_deploy.py --supernodes 30 --summary /tmp/s.jsonl \\
        --run-config "num-participants=30 rounds=10 dataset='mnist_subset'"
    python examples/flower_deploy.py --supernodes 3 --secure

``--secure`` gives every SuperNode its own identity key (created in its own
folder, as ``python -m ssgd_flower_app.identity new`` does on a real node),
writes the registry of their public keys, passes each node its files with
``--node-config`` and runs with ``order='synchronous' secure-aggregation=true``.

Insecure local mode (no TLS, no node authentication): for tests and one
machine only.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

APP = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'flower_app')


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _exe(name: str) -> str:
  path = shutil.which(name) or os.path.join(os.path.dirname(sys.executable), name)
  if not os.path.exists(path):
    raise FileNotFoundError(f'{name} not found: pip install "ssgd_optax[flower]".')
  return path


class LocalDeployment:
  """A SuperLink and ``num_supernodes`` SuperNodes as child processes.

  With ``simulation=True`` the SuperLink runs Flower's simulation runtime
  (``flower-superlink --simulation``, Ray backend) with ``num_supernodes``
  virtual nodes instead, and no SuperNode process is started. With
  ``secure=True`` SuperNode ``i`` gets its own identity key, the registry and
  a participant record through ``--node-config`` (it is participant ``i``).
  ``node_env`` adds environment variables to the node processes (e.g.
  ``SSGD_FLOWER_INSECURE_REPRODUCIBLE_KEYS=1`` in tests).
  """

  def __init__(self, num_supernodes: int, *, workdir: str | None = None,
               simulation: bool = False, secure: bool = False,
               node_env: dict[str, str] | None = None):
    if not isinstance(num_supernodes, int) or num_supernodes < 1:
      raise ValueError(f'num_supernodes must be an int >= 1; got {num_supernodes!r}.')
    if secure and simulation:
      raise ValueError('secure=True needs SuperNode processes: the simulation runtime gives its '
                       'nodes no configuration of their own (identity key, record).')
    self.n = num_supernodes
    self.simulation = bool(simulation)
    self.secure = bool(secure)
    self.dir = workdir or tempfile.mkdtemp(prefix='ssgd_flower_')
    self.home = os.path.join(self.dir, 'flwr_home')
    self.port = free_port()
    self.supernodes: list[subprocess.Popen] = []
    self.superlink: subprocess.Popen | None = None
    self._logs = []
    os.makedirs(self.home, exist_ok=True)
    with open(os.path.join(self.home, 'config.toml'), 'w', encoding='utf-8') as f:
      f.write(f'[superlink]\ndefault = "local-deployment"\n\n'
              f'[superlink.local-deployment]\naddress = "127.0.0.1:{self.port}"\n'
              'insecure = true\n'
              + (f'options.num-supernodes = {num_supernodes}\n' if simulation else ''))
    # Flower 1.42 runs every message in a fresh short-lived `flwr-clientapp`
    # process, in both isolation modes (`--isolation process` only moves the
    # launcher, `flower-superexec`, out of the SuperNode; its warm pools are
    # for other task types on Kubernetes). So the cost per message is Python
    # + JAX start-up plus every XLA compile of the app. A persistent
    # compilation cache shared by all processes, with no minimum compile time
    # (JAX's default of 1 s skips the many small eager ops of the set-up),
    # takes that from ~19 s to ~5 s per message here.
    self.env = dict(os.environ, FLWR_HOME=self.home, JAX_PLATFORMS='cpu',
                    XLA_PYTHON_CLIENT_PREALLOCATE='false',
                    JAX_COMPILATION_CACHE_DIR=os.path.join(self.dir, 'jax_cache'),
                    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
                    JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES='-1', **(node_env or {}))
    self.node_configs = self._identities() if secure else [''] * num_supernodes

  def _identities(self) -> list[str]:
    """Each node's identity key in its own folder, the registry, the ``--node-config`` strings."""
    from ssgd_optax.federated import secure_aggregation as sa  # pylint: disable=import-outside-toplevel
    registry, configs = {}, []
    path = os.path.join(self.dir, 'registry.json')
    for i in range(self.n):
      folder = os.path.join(self.dir, f'node{i}')
      os.makedirs(folder, exist_ok=True)
      registry[i] = sa.write_identity(os.path.join(folder, 'node.key'))
      configs.append(f"identity-key='{folder}/node.key' registry='{path}' "
                     f"record='{folder}/secagg-record.jsonl'")
    sa.write_registry(path, registry)
    return configs

  def _spawn(self, name: str, args: list[str]) -> subprocess.Popen:
    log = open(os.path.join(self.dir, f'{name}.log'), 'w', encoding='utf-8')
    self._logs.append(log)
    # A new session per process: stopping it stops the app processes it spawned.
    return subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                            cwd=self.dir, start_new_session=True)

  def start(self) -> 'LocalDeployment':
    self.superlink = self._spawn('superlink', [
        _exe('flower-superlink'), '--insecure', '--host', '127.0.0.1', '--port',
        str(self.port), '--disable-runtime-dependency-installation']
        + (['--simulation'] if self.simulation else []))
    self._wait_listening(self.port, self.superlink)
    for i in range(0 if self.simulation else self.n):
      self.supernodes.append(self._spawn(f'supernode{i}', [
          _exe('flower-supernode'), '--insecure', '--superlink', f'127.0.0.1:{self.port}',
          '--port', str(free_port()), '--max-retries', '20']
          + (['--node-config', self.node_configs[i]] if self.node_configs[i] else [])))
    return self

  def _wait_listening(self, port: int, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
      if proc.poll() is not None:
        raise RuntimeError(f'the SuperLink exited with code {proc.returncode}; see '
                           f'{self.dir}/superlink.log')
      with socket.socket() as s:
        if s.connect_ex(('127.0.0.1', port)) == 0:
          return
      time.sleep(0.2)
    raise TimeoutError(f'the SuperLink did not listen on port {port} within {timeout:g} s.')

  def run(self, run_config: str = '', *, timeout: float = 1800.0) -> subprocess.CompletedProcess:
    """``flwr run <app> local-deployment --stream``; raises on a timeout."""
    args = [_exe('flwr'), 'run', APP, 'local-deployment', '--stream']
    if run_config:
      args += ['--run-config', run_config]
    return subprocess.run(args, env=self.env, cwd=self.dir, capture_output=True, text=True,
                          timeout=timeout, check=False)

  def kill_supernode(self, i: int) -> None:
    os.killpg(self.supernodes[i].pid, signal.SIGKILL)
    self.supernodes[i].wait()

  def stop(self) -> None:
    for p in self.supernodes + [self.superlink]:
      if p is not None and p.poll() is None:
        try:
          os.killpg(p.pid, signal.SIGTERM)
        except ProcessLookupError:
          pass
    for p in self.supernodes + [self.superlink]:
      if p is None:
        continue
      try:
        p.wait(timeout=20)
      except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
    for log in self._logs:
      log.close()

  def __enter__(self) -> 'LocalDeployment':
    return self.start()

  def __exit__(self, *exc) -> None:
    self.stop()


def read_summary(path: str) -> dict:
  """The JSON lines the ServerApp wrote: ``{'rounds': [...], 'summary'|'error': ...}``."""
  out = {'rounds': []}
  if os.path.exists(path):
    with open(path, encoding='utf-8') as f:
      for line in f:
        obj = json.loads(line)
        if 'round' in obj:
          out['rounds'].append(obj)
        else:
          out.update(obj)
  return out


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--supernodes', type=int, default=3)
  parser.add_argument('--run-config', default='', help='e.g. "rounds=5 num-participants=3"')
  parser.add_argument('--summary', default='', help='JSON-lines file for the ServerApp')
  parser.add_argument('--timeout', type=float, default=3600.0)
  parser.add_argument('--simulation', action='store_true',
                      help='flower-superlink --simulation (Ray) instead of SuperNode processes')
  parser.add_argument('--secure', action='store_true',
                      help='secure aggregation: per-node identity keys, a registry, records')
  a = parser.parse_args()
  summary = a.summary or os.path.join(tempfile.mkdtemp(), 'summary.jsonl')
  cfg = f"{a.run_config} summary-path='{summary}'".strip()
  if 'num-participants' not in cfg:
    cfg += f' num-participants={a.supernodes}'
  if a.secure and 'secure-aggregation' not in cfg:
    cfg += " order='synchronous' secure-aggregation=true"
  start = time.perf_counter()
  with LocalDeployment(a.supernodes, simulation=a.simulation, secure=a.secure) as dep:
    proc = dep.run(cfg, timeout=a.timeout)
    print(proc.stdout[-3000:], proc.stderr[-3000:], sep='\n')
    res = read_summary(summary)
    print(f'logs in {dep.dir}')
  print(json.dumps({k: v for k, v in res.get('summary', {}).items() if k != 'params'}
                   | {'error': res.get('error'), 'wall_s': time.perf_counter() - start}))


if __name__ == '__main__':
  main()
