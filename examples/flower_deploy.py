# Copyright 2026 The ssgd_optax Authors. Licensed under the Apache License 2.0.
"""Runs ``examples/flower_app`` in Flower's deployment mode on this machine.

Starts one ``flower-superlink --insecure`` and ``--supernodes``
``flower-supernode --insecure`` processes on 127.0.0.1 (free ports), writes a
Flower configuration with a ``local-deployment`` SuperLink connection into a
temporary ``FLWR_HOME``, submits the app with ``flwr run --stream`` and stops
every process at the end. The ServerApp appends one JSON line per round and a
summary to ``--summary``; the last line printed is the summary as JSON.

    python examples/flower_deploy.py --supernodes 3                     # ~1-2 min
    python examples/flower_deploy.py --supernodes 30 --summary /tmp/s.jsonl \\
        --run-config "num-participants=30 rounds=10 dataset='mnist_subset'"
    python examples/flower_deploy.py --supernodes 3 --secure

``--secure`` gives every SuperNode its own identity key (created in its own
folder, as ``python -m ssgd_flower_app.identity new`` does on a real node),
writes the registry of their public keys, passes each node its files with
``--node-config`` and runs with ``order='synchronous' secure-aggregation=true``.

Exit status: 0 when the ServerApp wrote its summary; 1 when the Flower run
failed (the server's error is printed: a bad ``--run-config`` value, a
crashed ServerApp, a timeout); 2 for a bad flag (before anything starts);
130 on Ctrl-C. Every process started here (SuperLink, SuperNodes, and the
SuperExec, ServerApp and ClientApp processes they start) is stopped on
every exit, also when this script is killed with SIGKILL: a watchdog process
holds a pipe to this one and, when the pipe closes, kills every process
that carries this deployment's token in its environment.

Flower's own log lines (httpx requests, DEBUG records, empty INFO lines)
are hidden unless ``--verbose``; the full logs are in the run folder.
Insecure local mode (no TLS, no node authentication): for tests and one
machine only. Needs the ``flower`` extra (``pip install -e ".[flower]"``);
``--simulation`` needs ``flower-simulation`` (Ray).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
import uuid

from ssgd_examples import cli
from ssgd_examples.cli import flag

APP = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'flower_app')
TOKEN_VARIABLE = 'SSGD_FLOWER_DEPLOYMENT'


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _exe(name: str) -> str:
  path = shutil.which(name) or os.path.join(os.path.dirname(sys.executable), name)
  if not os.path.exists(path):
    raise FileNotFoundError(f'{name} not found: pip install -e ".[flower]".')
  return path


# ---------------------------------------------------------------- watchdog

# Runs in its own process (and session, so Ctrl-C reaches only this script):
# blocks on its stdin, the read end of a pipe whose write end only this
# script holds. When the script exits in any way, SIGKILL included, the
# kernel closes the pipe and the watchdog kills every process whose
# environment carries the token (Flower's SuperLink starts its SuperExec in
# a new session, so a process group would not reach it).
_WATCHDOG = r'''
import os, signal, sys, time
token = ('%s=' % sys.argv[1]).encode() + sys.argv[2].encode() + b'\0'
signal.signal(signal.SIGINT, signal.SIG_IGN)
sys.stdin.buffer.read()
def tagged():
  for pid in os.listdir('/proc'):
    if pid.isdigit() and int(pid) != os.getpid():
      try:
        with open(f'/proc/{pid}/environ', 'rb') as f:
          if token in f.read():
            yield int(pid)
      except OSError:
        pass
for sig, pause in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 0.5), (signal.SIGKILL, 0.0)):
  pids = list(tagged())
  if not pids:
    break
  for pid in pids:
    try:
      os.kill(pid, sig)
    except OSError:
      pass
  end = time.monotonic() + pause
  while time.monotonic() < end and any(True for _ in tagged()):
    time.sleep(0.1)
'''


def tagged_processes(token: str) -> list[int]:
  """The pids whose environment holds ``SSGD_FLOWER_DEPLOYMENT=<token>`` (Linux /proc)."""
  needle = f'{TOKEN_VARIABLE}={token}\0'.encode()
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


class LocalDeployment:
  """A SuperLink and ``num_supernodes`` SuperNodes as child processes.

  With ``simulation=True`` the SuperLink runs Flower's simulation runtime
  (``flower-superlink --simulation``, Ray backend) with ``num_supernodes``
  virtual nodes instead, and no SuperNode process is started. Every process
  carries ``token`` in its environment; :meth:`stop` (and the watchdog, if
  this process dies first) stops all of them. With ``secure=True`` SuperNode
  ``i`` gets its own identity key, the registry and a participant record
  through ``--node-config`` (it is participant ``i``). ``node_env`` adds
  environment variables to the node processes (e.g.
  ``SSGD_FLOWER_INSECURE_REPRODUCIBLE_KEYS=1`` in tests).
  """

  def __init__(self, num_supernodes: int, *, workdir: str | None = None,
               simulation: bool = False, secure: bool = False,
               node_env: dict[str, str] | None = None):
    if not isinstance(num_supernodes, int) or isinstance(num_supernodes, bool) \
        or num_supernodes < 1:
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
    self.token = uuid.uuid4().hex
    self.supernodes: list[subprocess.Popen] = []
    self.superlink: subprocess.Popen | None = None
    self.watchdog: subprocess.Popen | None = None
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
                    JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES='-1',
                    FLWR_DISABLE_UPDATE_CHECK='1',
                    **{TOKEN_VARIABLE: self.token}, **(node_env or {}))
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
    # A new session per process: Ctrl-C in the terminal reaches only this
    # script, which then stops them in order.
    return subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                            cwd=self.dir, start_new_session=True)

  def start(self) -> 'LocalDeployment':
    # The watchdog first: from here on, no exit of this process leaves a survivor.
    self.watchdog = subprocess.Popen(
        [sys.executable, '-c', _WATCHDOG, TOKEN_VARIABLE, self.token], stdin=subprocess.PIPE,
        start_new_session=True)
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

  def stream(self, run_config: str = '', *, timeout: float = 1800.0,
             on_line=None) -> tuple[int, list[str]]:
    """``flwr run ... --stream``, each output line passed to ``on_line`` as it comes.

    Returns ``(exit code, every line)``; raises ``TimeoutError`` after
    ``timeout`` seconds (the run is stopped).
    """
    args = [_exe('flwr'), 'run', APP, 'local-deployment', '--stream']
    if run_config:
      args += ['--run-config', run_config]
    proc = subprocess.Popen(args, env=self.env, cwd=self.dir, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, errors='replace',
                            start_new_session=True)
    lines: list[str] = []

    def read():
      for line in proc.stdout:
        lines.append(line.rstrip('\n'))
        if on_line is not None:
          on_line(lines[-1])

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
      proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
      raise TimeoutError(f'the Flower run did not finish within --timeout {timeout:g} s; '
                         f'logs in {self.dir}') from None
    finally:
      if proc.poll() is None:
        _signal_group(proc, signal.SIGKILL)
        proc.wait()
      reader.join(timeout=10)
    return proc.returncode, lines

  def kill_supernode(self, i: int) -> None:
    os.killpg(self.supernodes[i].pid, signal.SIGKILL)
    self.supernodes[i].wait()

  def stop(self) -> None:
    """Stops every process of the deployment (SIGTERM, then SIGKILL after 20 s)."""
    started = [p for p in self.supernodes + [self.superlink] if p is not None]
    for p in started:
      if p.poll() is None:
        _signal_group(p, signal.SIGTERM)
    for p in started:
      try:
        p.wait(timeout=20)
      except subprocess.TimeoutExpired:
        _signal_group(p, signal.SIGKILL)
        p.wait()
    # What the SuperLink and SuperNodes started in sessions of their own.
    for sig, pause in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 1.0)):
      pids = tagged_processes(self.token)
      for pid in pids:
        try:
          os.kill(pid, sig)
        except OSError:
          pass
      end = time.monotonic() + pause
      while pids and time.monotonic() < end and tagged_processes(self.token):
        time.sleep(0.1)
    if self.watchdog is not None:
      self.watchdog.stdin.close()  # nothing left to stop: the watchdog exits
      self.watchdog.wait()
    for log in self._logs:
      log.close()

  def __enter__(self) -> 'LocalDeployment':
    try:
      return self.start()
    except BaseException:
      self.stop()
      raise

  def __exit__(self, *exc) -> None:
    self.stop()


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
  try:
    os.killpg(proc.pid, sig)
  except (ProcessLookupError, PermissionError):
    pass


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


# ---------------------------------------------------------------- output

_ANSI = re.compile(r'\x1b\[[0-9;]*m')
# Flower's noise in a streamed run: the ServerApp's httpx request log, DEBUG
# records, and INFO lines with nothing after the level.
_NOISE = re.compile(r'^(INFO:httpx:|INFO:httpcore|DEBUG[ :]|HTTP Request:|(INFO|DEBUG)\s*:\s*$)')
_EXIT_CODE = re.compile(r'Exit Code: (\d+)')
_EXCEPTION = re.compile(r'^([A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)): ')


# A ServerApp that configures the root logger (logging.basicConfig; ours
# configures only its own loggers) repeats every Flower record (and its
# traceback) through it as `LEVEL:flwr:...`.
_REPEAT = re.compile(r'^(DEBUG|INFO|WARNING|ERROR|CRITICAL):flwr:')


def is_noise(line: str) -> bool:
  """Whether a line of ``flwr run --stream`` is Flower's noise (hidden unless ``--verbose``)."""
  text = _ANSI.sub('', line).strip()
  return not text or bool(_NOISE.match(text))


class NoiseFilter:
  """Passes the lines of ``flwr run --stream`` worth showing (see :func:`is_noise`).

  Also drops the root logger's repetition of Flower's records: a
  ``LEVEL:flwr:`` line and the lines that continue it (a traceback).
  """

  def __init__(self):
    self._repeating = False

  def __call__(self, line: str) -> bool:
    text = _ANSI.sub('', line).strip()
    if _REPEAT.match(text):
      self._repeating = True
      return False
    if self._repeating:
      if line.startswith('\x1b[') or re.match(r'^[A-Z]+:[\w.]+:', text) or text.startswith('{'):
        self._repeating = False
      else:
        return False
    return not is_noise(line)


def server_error(lines: list[str]) -> str | None:
  """The ServerApp's failure in the streamed log: ``'<exception line> (Flower exit code N)'``."""
  code = exception = None
  for line in lines:
    text = _ANSI.sub('', line).strip()
    m = _EXIT_CODE.search(text)
    if m:
      code = m.group(1)
    if _EXCEPTION.match(text):
      exception = text
  if code is None and exception is None:
    return None
  return ' '.join(filter(None, [exception or 'the ServerApp failed',
                                f'(Flower exit code {code})' if code else None]))


# ------------------------------------------------------------------ flags


def _app_config() -> dict:
  with open(os.path.join(APP, 'pyproject.toml'), 'rb') as f:
    return tomllib.load(f)['tool']['flwr']['app']['config']


def parse_run_config(text: str) -> dict:
  """``"rounds=3 order='secure'"`` -> ``{'rounds': 3, 'order': 'secure'}`` (TOML values)."""
  try:
    # Flower splits on spaces outside quotes; each pair is a TOML assignment.
    pairs = re.findall(r'''(?:[^\s'"]+|'[^']*'|"[^"]*")+''', text)
    values = tomllib.loads('\n'.join(pairs))
  except tomllib.TOMLDecodeError as e:
    raise ValueError(f'--run-config must be "key=value ..." pairs with TOML values '
                     f'(strings quoted); got {text!r} ({e}).') from None
  unknown = sorted(set(values) - set(_app_config()))
  if unknown:
    raise ValueError(f'--run-config: unknown key(s) {", ".join(unknown)}; the app has '
                     f'{", ".join(_app_config())}.')
  return values


@dataclasses.dataclass(frozen=True)
class Config:
  """The deployment's flags."""
  supernodes: int = flag(3, 'SuperNode processes (one participant each)', check=cli.at_least(1))
  run_config: str = flag('', 'the app\'s run configuration, e.g. "rounds=5 order=\'secure\'" '
                         '(keys of [tool.flwr.app.config] in examples/flower_app/pyproject.toml; '
                         'num-participants defaults to --supernodes)')
  summary: str | None = cli.output_flag('JSON-lines file the ServerApp writes (default: in the '
                                        'run folder)', suffix='.jsonl')
  timeout: float = flag(3600.0, 'seconds before the run is stopped and counted as failed',
                        check=cli.finite(positive=True))
  simulation: bool = flag(False, 'flower-superlink --simulation (Ray) instead of SuperNode '
                          'processes (needs the flower-simulation extra)')
  secure: bool = flag(False, 'secure aggregation: per-node identity keys, a registry, records '
                      '(SuperNode processes only)')
  verbose: bool = cli.verbose_flag()

  def validate(self) -> None:
    values = parse_run_config(self.run_config)
    n = values.get('num-participants', self.supernodes)
    if not self.simulation and n != self.supernodes:
      raise ValueError(f'--run-config num-participants={n} must equal --supernodes '
                       f'{self.supernodes} (one participant per SuperNode).')
    if self.secure and self.simulation:
      raise ValueError('--secure needs SuperNode processes: the simulation runtime gives its '
                       'nodes no configuration of their own (identity key, record).')
    if self.simulation and importlib.util.find_spec('ray') is None:
      raise ValueError('--simulation needs Flower\'s simulation engine (Ray): '
                       'pip install -e ".[flower-simulation]".')
    for name in ('flower-superlink', 'flower-supernode', 'flwr'):
      try:
        _exe(name)
      except FileNotFoundError as e:
        raise ValueError(str(e)) from None


def main(argv: list[str] | None = None) -> dict:
  """Runs the deployment; returns the summary. Exit 1 (SystemExit) when the run failed."""
  a = cli.parse(Config, argv, description=__doc__.split('\n\n')[0])
  workdir = tempfile.mkdtemp(prefix='ssgd_flower_')
  summary = a.summary or os.path.join(workdir, 'summary.jsonl')
  if os.path.exists(summary):
    os.remove(summary)  # the ServerApp appends; a previous run's lines would be read as ours
  values = parse_run_config(a.run_config)
  cfg = f"{a.run_config} summary-path='{summary}'".strip()
  if 'num-participants' not in values:
    cfg += f' num-participants={a.supernodes}'
  if a.secure and 'secure-aggregation' not in cfg:
    cfg += " order='synchronous' secure-aggregation=true"

  keep = NoiseFilter()

  def show(line: str) -> None:
    if keep(line) or a.verbose:
      print(line, flush=True)

  start = time.perf_counter()
  print(f'[flower_deploy] starting a SuperLink and {a.supernodes} '
        f'{"virtual nodes (Ray)" if a.simulation else "SuperNodes"}; logs in {workdir}',
        file=sys.stderr, flush=True)
  error = None
  with LocalDeployment(a.supernodes, workdir=workdir, simulation=a.simulation,
                       secure=a.secure) as dep:
    try:
      code, lines = dep.stream(cfg, timeout=a.timeout, on_line=show)
    except TimeoutError as e:
      code, lines, error = None, [], str(e)
  res = read_summary(summary)
  if error is None:
    error = res.get('error') or server_error(lines)
  if error is None and code:
    error = f'flwr run exited with code {code}'
  if error is None and 'summary' not in res:
    error = 'the ServerApp ended without writing its summary'
  out = {k: v for k, v in res.get('summary', {}).items() if k != 'params'}
  print(json.dumps(out | {'error': error, 'wall_s': round(time.perf_counter() - start, 1),
                          'logs': workdir}))
  if error is not None:
    print(f'flower_deploy.py: the Flower run failed: {error} (logs in {workdir})',
          file=sys.stderr, flush=True)
    raise SystemExit(1)
  return out


if __name__ == '__main__':
  cli.run(main, sys.argv[1:])
