# Copyright 2026 The ssgd_optax Authors. Licensed under the Apache License 2.0.
"""Training runs survive faults: kills, damaged checkpoints, repeated runs on one data set.

* Kills: each training script is SIGKILLed (a subprocess) at a random point
  of a step, of a checkpoint write or of a privacy-ledger write, resumed with
  ``--resume``, and compared with an uninterrupted run: parameters bit for bit
  (``--reproducible-noise``), step count, epsilon, and the ledger, which must
  count at least every step that ran. A ledger written after the steps instead
  of before is caught. One representative runs by default, the matrix with
  ``-m slow``.
* Checkpoints: every file of a checkpoint truncated, flipped or deleted: the
  newest intact checkpoint is used and the bad one named in one line; flipped
  bytes never load silently (shown to fail without the verification).
* Noise keys: the OS key is never written next to the model; a resumed run
  reports the steps and epsilon of an uninterrupted one.
* The budget over runs, and bad input (ledgers, ``--total-epsilon``,
  workdirs): one-line errors, exit status 2, nothing overwritten.
"""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from ssgd_examples import checkpoints
from ssgd_examples.scripts import load
from ssgd_optax import privacy
from ssgd_optax.privacy import _ledger

ROOT = pathlib.Path(__file__).resolve().parents[1]
RUNNER = ROOT / 'tests' / '_fault_runner.py'

# dp_ssgd.py on 320 images, q = 1/16: 16 steps, a checkpoint every 3 steps
# (3, 6, ..., 15, 16), the ledger written in blocks of 3 steps.
DP_SSGD = ['--epsilons', '8', '--train-size', '320', '--epochs', '1', '--batch-size', '20',
           '--hidden', '4', '--accountant', 'rdp', '--quiet', '--checkpoint-every', '3']
DP_SSGD_STEPS = 16
Q = 20 / 320


@pytest.fixture(scope='module')
def dp_ssgd():
  module = load('examples/dp_ssgd.py', 'faults_dp_ssgd')
  yield module
  sys.modules.pop('faults_dp_ssgd', None)


@pytest.fixture(scope='module')
def train():
  module = load('examples/train.py', 'faults_train')
  yield module
  sys.modules.pop('faults_train', None)


@pytest.fixture(scope='module')
def jax_cache(tmp_path_factory):
  """A compilation cache shared by this module's subprocesses (each compiles once)."""
  return str(tmp_path_factory.mktemp('jax_cache'))


@pytest.fixture(scope='module')
def uninterrupted(dp_ssgd, tmp_path_factory):
  """dp_ssgd.py run to the end with reproducible noise, and its own ledger."""
  folder = tmp_path_factory.mktemp('full')
  dp_ssgd.main(DP_SSGD + ['--reproducible-noise', '--workdir', str(folder / 'run'),
                          '--ledger', str(folder / 'ledger.json')])
  return folder


# ------------------------------------------------------------------ helpers


def _final_state(folder, step=None):
  """The arrays of checkpoint ``step`` (default: the newest) in ``folder``, as numpy."""
  with ocp.CheckpointManager(os.path.abspath(folder)) as manager:
    step = manager.latest_step() if step is None else step
    state = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore())).state
  return step, {jax.tree_util.keystr(p): np.asarray(x)
                for p, x in jax.tree_util.tree_flatten_with_path(state)[0]}


def _assert_bit_identical(a, b):
  step_a, state_a = _final_state(a)
  step_b, state_b = _final_state(b)
  assert step_a == step_b
  assert state_a.keys() == state_b.keys()
  for path in state_a:
    assert np.array_equal(state_a[path], state_b[path]), f'{path} differs'


def _run(script, args, *, cwd, jax_cache, log=None, kill_at=None, env=None):
  """Runs ``script`` in a subprocess (through the fault runner); returns it, finished."""
  full_env = dict(os.environ)
  for name in ('SSGD_EXAMPLES_KILL_AT', 'SSGD_EXAMPLES_FAULT_LOG', 'SSGD_KILL_LEDGER_WRITE',
               'SSGD_LEDGER_AFTER'):
    full_env.pop(name, None)
  full_env.update({'JAX_COMPILATION_CACHE_DIR': jax_cache,
                   'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS': '0',
                   'PYTHONPATH': os.pathsep.join([str(ROOT), full_env.get('PYTHONPATH', '')])})
  if log:
    full_env['SSGD_EXAMPLES_FAULT_LOG'] = str(log)
  if kill_at:
    full_env['SSGD_EXAMPLES_KILL_AT'] = kill_at
  full_env.update(env or {})
  return subprocess.run([sys.executable, str(RUNNER), script, *args], cwd=cwd, env=full_env,
                        capture_output=True, text=True, timeout=900, check=False)


def _steps_logged(log):
  """Steps a run dispatched before it ended (the ``step`` lines of its fault log)."""
  if not os.path.exists(log):
    return 0
  return sum(line.split()[0] == 'step' for line in open(log).read().splitlines())


def check_ledger_covers(ledger_path, steps_run):
  """Each run's ledger record counts at least the steps its process ran (write-ahead)."""
  runs = json.loads(open(ledger_path).read())['runs']
  assert len(runs) == len(steps_run), (runs, steps_run)
  for record, ran in zip(runs, steps_run):
    assert record['steps'] >= ran, (
        f'the ledger counts {record["steps"]} steps of a run that released {ran}')


def _no_traceback(text):
  assert 'Traceback' not in text, text[-3000:]


# ---------------------------------------------- kill and resume: default run


def _kill_and_resume(script, args, workdir_flags, *, tmp_path, jax_cache, kill_at=None,
                     env=None):
  """Kills ``script`` once, resumes it; returns the two processes and their step logs."""
  logs = [tmp_path / 'killed.log', tmp_path / 'resumed.log']
  killed = _run(script, args + workdir_flags, cwd=tmp_path, jax_cache=jax_cache, log=logs[0],
                kill_at=kill_at, env=env)
  assert killed.returncode == -9, (killed.returncode, killed.stderr[-3000:])
  resumed = _run(script, workdir_flags + ['--resume'], cwd=tmp_path, jax_cache=jax_cache,
                 log=logs[1])
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  _no_traceback(resumed.stderr)
  return killed, resumed, [_steps_logged(log) for log in logs]


def _check_dp_ssgd_resumed(full, tmp_path, ran):
  key = 'checkpoints/eps8'
  _assert_bit_identical(full / 'run' / key, tmp_path / 'run' / key)
  a = json.loads((full / 'run' / 'results.json').read_text())['eps8']
  b = json.loads((tmp_path / 'run' / 'results.json').read_text())['eps8']
  assert (a['steps'], a['epsilon'], a['accuracy']) == (b['steps'], b['epsilon'], b['accuracy'])
  assert a['steps'] == DP_SSGD_STEPS
  check_ledger_covers(tmp_path / 'ledger.json', ran)
  total = privacy.PrivacyLedger(tmp_path / 'ledger.json', dataset='mnist_subset',
                                fingerprint=_ledger_fingerprint(full)).spent(1e-5)
  alone = privacy.PrivacyLedger(full / 'ledger.json', dataset='mnist_subset',
                                fingerprint=_ledger_fingerprint(full)).spent(1e-5)
  assert total >= alone


def _ledger_fingerprint(folder):
  return json.loads((folder / 'ledger.json').read_text())['dataset']['fingerprint']


def test_a_killed_dp_run_resumes_bit_identically_and_its_ledger_counts_every_step(
    dp_ssgd, uninterrupted, tmp_path, jax_cache, monkeypatch, capsys):
  """The default representative: SIGKILL after step 8 (between checkpoints 6 and 9) of a
  subprocess; resumed in this process (the slow matrix resumes in subprocesses)."""
  flags = ['--workdir', 'run', '--ledger', 'ledger.json']
  logs = [tmp_path / 'killed.log', tmp_path / 'resumed.log']
  killed = _run('examples/dp_ssgd.py', DP_SSGD + ['--reproducible-noise'] + flags,
                cwd=tmp_path, jax_cache=jax_cache, log=logs[0], kill_at='step:8')
  assert killed.returncode == -9, (killed.returncode, killed.stderr[-3000:])
  monkeypatch.chdir(tmp_path)
  monkeypatch.setenv('SSGD_EXAMPLES_FAULT_LOG', str(logs[1]))
  dp_ssgd.main(['--workdir', 'run', '--resume'])
  out, err = capsys.readouterr()
  _no_traceback(err)
  ran = [_steps_logged(log) for log in logs]
  # Checkpoint 6 was being written while steps 7 and 8 ran: the resumed run
  # continues from 6, or from 3 when the kill came before orbax committed 6.
  first = DP_SSGD_STEPS - ran[1]
  assert ran[0] == 8 and first in (3, 6), ran
  _check_dp_ssgd_resumed(uninterrupted, tmp_path, ran)
  records = json.loads((tmp_path / 'ledger.json').read_text())['runs']
  # Killed: its block of steps 7-9 was written before step 7 ran; resumed: exact.
  assert [r['steps'] for r in records] == [9, ran[1]]
  assert [r['status'] for r in records] == ['running', 'ended']
  assert 'composed eps' in out


# ------------------------------------------------- kill and resume: the matrix

DP_TRAIN = ['--methods', 'dpsgd', '--epsilons', '4', '--epochs', '1', '--max-train', '512',
            '--batch-size', '32', '--accountant', 'rdp', '--quiet', '--checkpoint-every', '3',
            '--reproducible-noise']
DP_TRAIN_STEPS = 16
TRAIN = ['--dataset', 'digits', '--model', 'mlp', '--batch-size', '64', '--epochs', '3',
         '--quiet']
TRAIN_STEPS = 3 * (1438 // 64)
# (script, kill kind, seed): each seed draws where in that kind of event the kill lands.
MATRIX = [(script, kind, seed)
          for script in ('examples/dp_ssgd.py', 'examples/dp_train.py', 'examples/train.py')
          for kind, seed in (('step', 0), ('checkpoint', 1), ('ledger', 2), ('checkpoint', 3))
          if not (script == 'examples/train.py' and kind == 'ledger')]
_KILL_TESTS_RUNS = {'uninterrupted': 3, 'killed + resumed': 2 * len(MATRIX), 'ledger after': 2}


def _where(script, kind, seed):
  """The kill point drawn by ``seed``: ``(SSGD_EXAMPLES_KILL_AT or None, runner env)``."""
  rng = np.random.default_rng(seed)
  steps, saves = {'examples/dp_ssgd.py': (DP_SSGD_STEPS, 6), 'examples/dp_train.py':
                  (DP_TRAIN_STEPS, 6), 'examples/train.py': (TRAIN_STEPS, 3)}[script]
  if kind == 'step':
    return f'step:{rng.integers(1, steps)}', {}
  if kind == 'checkpoint':  # seed 3: the first write, which used to break --resume
    return f'checkpoint:{1 if seed == 3 else rng.integers(1, saves)}', {}
  # The run's ledger writes: its record, then one per block of 3 steps.
  return None, {'SSGD_KILL_LEDGER_WRITE': str(rng.integers(1, 2 + steps // 3))}


@pytest.fixture(scope='module')
def uninterrupted_runs(tmp_path_factory, jax_cache):
  """Each script run to the end once, in a subprocess (as the killed runs are)."""
  folder = tmp_path_factory.mktemp('uninterrupted')
  for script, args in (('examples/dp_ssgd.py', DP_SSGD + ['--reproducible-noise']),
                       ('examples/dp_train.py', DP_TRAIN), ('examples/train.py', TRAIN)):
    name = pathlib.Path(script).stem
    ledger = [] if name == 'train' else ['--ledger', f'{name}.ledger']
    done = _run(script, args + ['--workdir', name] + ledger, cwd=folder, jax_cache=jax_cache)
    assert done.returncode == 0, done.stderr[-3000:]
  return folder


@pytest.mark.slow
@pytest.mark.parametrize('script, kind, seed', MATRIX)
def test_every_script_killed_anywhere_resumes_to_the_uninterrupted_result(
    uninterrupted_runs, tmp_path, jax_cache, script, kind, seed):
  name = pathlib.Path(script).stem
  args = {'dp_ssgd': DP_SSGD + ['--reproducible-noise'], 'dp_train': DP_TRAIN,
          'train': TRAIN}[name]
  ledger = [] if name == 'train' else ['--ledger', f'{name}.ledger']
  kill_at, env = _where(script, kind, seed)
  _, resumed, ran = _kill_and_resume(script, args, ['--workdir', name] + ledger,
                                     tmp_path=tmp_path, jax_cache=jax_cache, kill_at=kill_at,
                                     env=env)
  full = uninterrupted_runs / name
  if name == 'train':
    _assert_bit_identical(full / 'checkpoints', tmp_path / name / 'checkpoints')
    a = json.loads((full / 'metrics.json').read_text())['final']
    b = json.loads((tmp_path / name / 'metrics.json').read_text())['final']
    assert (a['steps'], a['test_accuracy']) == (b['steps'], b['test_accuracy']) == (
        TRAIN_STEPS, a['test_accuracy'])
    return
  key = 'eps8' if name == 'dp_ssgd' else 'dpsgd-eps4'
  _assert_bit_identical(full / 'checkpoints' / key, tmp_path / name / 'checkpoints' / key)
  a = json.loads((full / 'results.json').read_text())[key]
  b = json.loads((tmp_path / name / 'results.json').read_text())[key]
  assert (a['steps'], a['epsilon']) == (b['steps'], b['epsilon'])
  assert a['accuracy'] == b['accuracy']
  runs = json.loads((tmp_path / f'{name}.ledger').read_text())['runs']
  if len(runs) == 1:  # killed while writing its first record: the run never started
    ran = ran[1:]
  check_ledger_covers(tmp_path / f'{name}.ledger', ran)
  assert sum(r['steps'] for r in runs) >= a['steps']
  full_ledger = uninterrupted_runs / f'{name}.ledger'
  fingerprint = json.loads(full_ledger.read_text())['dataset']['fingerprint']
  dataset = 'mnist_subset'
  total = privacy.PrivacyLedger(tmp_path / f'{name}.ledger', dataset=dataset,
                                fingerprint=fingerprint).spent(1e-5)
  alone = privacy.PrivacyLedger(full_ledger, dataset=dataset,
                                fingerprint=fingerprint).spent(1e-5)
  assert total >= alone


@pytest.mark.slow
def test_the_kill_test_catches_a_ledger_written_after_the_steps(uninterrupted, tmp_path,
                                                                 jax_cache):
  flags = ['--workdir', 'run', '--ledger', 'ledger.json']
  _, _, ran = _kill_and_resume('examples/dp_ssgd.py', DP_SSGD + ['--reproducible-noise'],
                               flags, tmp_path=tmp_path, jax_cache=jax_cache, kill_at='step:8',
                               env={'SSGD_LEDGER_AFTER': '1'})
  with pytest.raises(AssertionError, match='counts 7 steps of a run that released 8'):
    check_ledger_covers(tmp_path / 'ledger.json', ran)


# --------------------------------------------------------- noise keys, resume


def test_runs_compose_in_the_ledger_the_os_key_is_never_saved_and_a_resumed_run_matches(
    dp_ssgd, uninterrupted, tmp_path, monkeypatch, capsys):
  """A second run (secret noise, stopped after 5 steps and resumed) on the data set of
  the uninterrupted one: the ledger composes both, the noise key never reaches a
  checkpoint, the resumed run draws a fresh OS key and reports the steps and epsilon
  of an uninterrupted run; a third run over --total-epsilon is refused before work."""
  ledger = tmp_path / 'ledger.json'
  shutil.copy(uninterrupted / 'ledger.json', ledger)  # the uninterrupted run, recorded
  secret_keys, saved_states = [], []
  real_seed, real_save = privacy.os_seed, checkpoints.Checkpointer.save

  def spy_seed():
    secret_keys.append(real_seed())
    return secret_keys[-1]

  def spy_save(self, step, state, meta):
    saved_states.append(jax.tree.map(np.asarray, state))
    return real_save(self, step, state, meta)
  monkeypatch.setattr(privacy, 'os_seed', spy_seed)
  monkeypatch.setattr(checkpoints.Checkpointer, 'save', spy_save)
  run = ['--workdir', str(tmp_path / 'run')]
  first = dp_ssgd.main(DP_SSGD + run + ['--ledger', str(ledger), '--stop-after-steps', '5'])
  capsys.readouterr()
  resumed = dp_ssgd.main(run + ['--resume'])
  out = capsys.readouterr().out
  assert not first[0].completed and first[0].steps == 5
  assert len(secret_keys) == 2 and secret_keys[0] != secret_keys[1]  # a fresh OS key
  full = json.loads((uninterrupted / 'run' / 'results.json').read_text())['eps8']
  assert (resumed[0].steps, resumed[0].epsilon) == (full['steps'], full['epsilon'])
  # The noise keys: zeros in every checkpoint written, and in the files.
  assert len(saved_states) == 3 and _keys_are_zero(saved_states)  # steps 3, 5 and 16
  _, state = _final_state(tmp_path / 'run' / 'checkpoints' / 'eps8')
  keys = [v for p, v in state.items() if "['key']" in p]
  assert keys and not any(v.any() for v in keys)
  broken = [checkpoints.keys_out({'key': jax.random.key(secret_keys[0])}, keep=True)]
  assert not _keys_are_zero(broken)  # the check catches a save that keeps the key
  # The ledger composes the three records (16 + 5 + 11 steps), not their epsilons.
  doc = json.loads(ledger.read_text())
  assert [r['steps'] for r in doc['runs']] == [16, 5, 11]
  z = doc['runs'][0]['event']['event']['noise_multiplier']

  def eps(steps):
    return privacy.compute_epsilon(noise_multiplier=z, sampling_rate=Q, steps=steps,
                                   delta=1e-5, accountant='rdp')
  assert f'3 run(s) on this data set, composed eps {eps(32):.3f}' in out
  assert eps(32) < 2 * eps(16)
  # Over the total: refused before any work, nothing written.
  before = ledger.read_bytes()
  total = (eps(32) + eps(48)) / 2
  workdir = tmp_path / 'third'
  with pytest.raises(SystemExit) as info:
    dp_ssgd.main(DP_SSGD + ['--ledger', str(ledger), '--total-epsilon', f'{total}',
                            '--workdir', str(workdir)])
  assert info.value.code == 2
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1
  assert f'spent epsilon {eps(32):.4g}' in err and f'planned {eps(16):.4g}' in err
  assert f'total epsilon {total:g}' in err and 'refused before it ran' in err
  assert ledger.read_bytes() == before and not workdir.exists()


def _keys_are_zero(states):
  for state in states:
    for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
      if "'key'" in jax.tree_util.keystr(path) and np.asarray(leaf).any():
        return False
  return True


# ------------------------------------------------------ damaged checkpoints


def _tree():
  return {'w': np.arange(20000, dtype=np.float32).reshape(200, 100) / 7,
          'b': np.linspace(-1, 1, 10, dtype=np.float32), 'n': np.array(5, np.int32)}


def _damage(path, mode):
  data = path.read_bytes()
  if mode == 'truncate':
    path.write_bytes(data[:len(data) // 2])
  elif mode == 'flip':
    b = bytearray(data)
    mid = len(b) // 2
    for j in range(mid, min(mid + 64, len(b))):
      b[j] ^= 0xFF
    path.write_bytes(bytes(b))
  else:
    path.unlink()


def _checkpoint_files(tmp_path):
  """Two checkpoints (1: the tree, 2: the tree + 1) and the files of checkpoint 2."""
  base = tmp_path / 'base'
  tree = _tree()
  with checkpoints.Checkpointer(base) as ckpt:
    ckpt.save(1, tree, {'step': 1})
    ckpt.save(2, jax.tree.map(lambda x: x + 1, tree), {'step': 2})
  return base, sorted(p.relative_to(base) for p in (base / '2').rglob('*') if p.is_file())


def _restore_damaged(base, rel, mode, tmp_path, capsys):
  work = tmp_path / 'work'
  shutil.rmtree(work, ignore_errors=True)
  shutil.copytree(base, work)
  _damage(work / rel, mode)
  capsys.readouterr()
  with checkpoints.Checkpointer(work) as ckpt:
    restored = ckpt.restore(_tree())
  return restored, capsys.readouterr().err


def check_restored(restored, err, rel, mode):
  """Checkpoint 2 with exactly its data, or checkpoint 1 with checkpoint 2 named."""
  assert restored is not None
  _no_traceback(err)
  want = _tree() if restored.step == 1 else jax.tree.map(lambda x: x + 1, _tree())
  for k in want:
    assert np.array_equal(np.asarray(restored.state[k]), want[k]), (
        f'{rel} {mode}: {k} of checkpoint {restored.step} loaded with other data')
  if restored.step == 1:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and 'checkpoint 2 in' in lines[0] and 'damaged' in lines[0], err
    assert 'using checkpoint 1' in lines[0]
  return restored.step


def _damage_cases(tmp_path, capsys, files, base):
  used = {}
  for rel in files:
    for mode in ('truncate', 'flip', 'delete'):
      restored, err = _restore_damaged(base, rel, mode, tmp_path, capsys)
      used[(str(rel), mode)] = check_restored(restored, err, rel, mode)
  return used


def _data_file(base, files):
  return max(files, key=lambda rel: (base / rel).stat().st_size)


def test_damaged_array_data_and_records_are_caught_and_the_newest_intact_checkpoint_used(
    tmp_path, capsys, monkeypatch):
  base, files = _checkpoint_files(tmp_path)
  data_file = _data_file(base, files)
  # The array data (the largest file) and the record never pass damaged.
  used = _damage_cases(tmp_path, capsys, [data_file, pathlib.Path('2/meta/metadata')], base)
  assert set(used.values()) == {1}, used
  # Without the SHA-256 check, flipped parameter bytes load silently: the check fails.
  monkeypatch.setattr(checkpoints.Checkpointer, '_verify', staticmethod(lambda *a: None))
  restored, err = _restore_damaged(base, data_file, 'flip', tmp_path, capsys)
  with pytest.raises(AssertionError, match='loaded with other data'):
    check_restored(restored, err, data_file, 'flip')


@pytest.mark.slow
def test_every_damaged_file_of_a_checkpoint_is_caught_and_the_newest_intact_one_used(
    tmp_path, capsys):
  base, files = _checkpoint_files(tmp_path)
  assert len(files) >= 10
  used = _damage_cases(tmp_path, capsys, files, base)
  # Some of orbax's files are not needed to restore (commit markers, sharding
  # notes): then checkpoint 2 loads, with exactly its data (check_restored).
  assert {k for k, step in used.items() if step == 1} >= {
      (str(_data_file(base, files)), m) for m in ('truncate', 'flip', 'delete')}


def test_a_checkpoint_of_another_model_is_refused_and_not_set_aside(tmp_path):
  base, _ = _checkpoint_files(tmp_path)
  other = {**_tree(), 'w': np.zeros((100, 200), np.float32)}
  with checkpoints.Checkpointer(base) as ckpt:
    with pytest.raises(checkpoints.IncompatibleCheckpoint, match=r"checkpoint 2 .*\['w'\]"):
      ckpt.restore(other)
  assert sorted(p.name for p in base.iterdir()) == ['1', '2']


def test_no_intact_checkpoint_and_an_incomplete_one_are_each_said_in_one_line(tmp_path, capsys):
  base, _ = _checkpoint_files(tmp_path)
  for step in ('1', '2'):
    _damage(base / step / 'meta' / 'metadata', 'truncate')
  (base / '3.orbax-checkpoint-tmp-1234' / 'state').mkdir(parents=True)
  capsys.readouterr()
  with checkpoints.Checkpointer(base) as ckpt:
    assert ckpt.restore(_tree()) is None
  lines = capsys.readouterr().err.strip().splitlines()
  assert len(lines) == 3, lines
  assert 'checkpoint 3' in lines[0] and 'incomplete' in lines[0]
  assert all('no intact checkpoint is left' in line for line in lines[1:])
  assert sorted(p.name for p in base.iterdir()) == ['1.damaged', '2.damaged']


@pytest.mark.slow  # the Checkpointer tests above cover it in the default run
def test_train_py_resumes_from_the_newest_intact_checkpoint_or_restarts_in_one_line(
    train, tmp_path, capsys):
  flags = ['--dataset', 'digits', '--model', 'mlp', '--batch-size', '64', '--epochs', '2',
           '--quiet']
  full = train.main(flags + ['--workdir', str(tmp_path / 'full')])
  # Flipped bytes in the newest checkpoint's largest (array data) file.
  damaged = tmp_path / 'damaged'
  shutil.copytree(tmp_path / 'full', damaged)
  data = max((p for p in (damaged / 'checkpoints' / '2').rglob('*') if p.is_file()),
             key=lambda p: p.stat().st_size)
  _damage(data, 'flip')
  # What a SIGKILL during the first checkpoint write leaves (the slow matrix does it
  # for real): config.json and orbax's temporary folder.
  first_write = tmp_path / 'first_write'
  shutil.copytree(tmp_path / 'full', first_write)
  shutil.rmtree(first_write / 'checkpoints' / '2')
  shutil.move(first_write / 'checkpoints' / '1',
              first_write / 'checkpoints' / '1.orbax-checkpoint-tmp-9')
  for workdir, lines, said in (
      (damaged, 1, ['checkpoint 2 in', 'damaged', 'using checkpoint 1']),
      (first_write, 2, ['checkpoint 1 in', 'incomplete', 'no intact checkpoint',
                        'training from epoch 0'])):
    capsys.readouterr()
    resumed = train.main(['--workdir', str(workdir), '--resume', '--quiet'])
    err = capsys.readouterr().err
    _no_traceback(err)
    assert all(text in err for text in said), err
    assert len(err.strip().splitlines()) == lines, err
    assert resumed['final']['test_accuracy'] == full['final']['test_accuracy']
    _assert_bit_identical(tmp_path / 'full' / 'checkpoints', workdir / 'checkpoints')


@pytest.mark.slow
def test_a_run_stopped_by_the_total_mid_way_keeps_its_steps_and_says_so(dp_ssgd, tmp_path,
                                                                       capsys, monkeypatch):
  """Another run made the next block too expensive (the library test builds that race):
  the script saves what it did, says why in one line, exits with status 2."""
  real = _ledger.LedgerRun.reserve

  def reserve(self, steps):
    if steps > 4:
      raise privacy.TotalBudgetExceededError('privacy ledger x: ... stopped before its release 5.')
    real(self, steps)
  monkeypatch.setattr(_ledger.LedgerRun, 'reserve', reserve)
  workdir = tmp_path / 'run'
  with pytest.raises(SystemExit) as info:
    dp_ssgd.main(DP_SSGD + ['--ledger', str(tmp_path / 'l.json'), '--workdir', str(workdir)])
  assert info.value.code == 2
  err = capsys.readouterr().err.strip()
  assert err.endswith('stopped before its release 5.') and len(err.splitlines()) == 1
  assert checkpoints.latest_step(workdir / 'checkpoints' / 'eps8') == 4
  assert json.loads((tmp_path / 'l.json').read_text())['runs'][0]['steps'] == 6  # block 4-6


# -------------------------------------------------------------- bad input


def _refused(main, argv, capsys, *, match):
  capsys.readouterr()
  with pytest.raises(SystemExit) as info:
    main(argv)
  assert info.value.code == 2
  err = capsys.readouterr().err.strip()
  assert match in err, err
  assert len([line for line in err.splitlines() if 'error' in line]) == 1, err
  _no_traceback(err)
  return err


def test_a_bad_ledger_stops_the_script_before_any_work(dp_ssgd, tmp_path, capsys, monkeypatch):
  x, y, *_ = dp_ssgd.training_data(0, 320)
  fingerprint = privacy.PrivacyLedger.fingerprint(x, y)
  good = privacy.PrivacyLedger(tmp_path / 'good.json', dataset='mnist_subset',
                               fingerprint=fingerprint)
  good.start_run(privacy.GaussianMechanism(1.0), sampling_rate=Q, planned_steps=2).reserve(2)
  monkeypatch.setattr(dp_ssgd, 'train', _no_work)

  def rewrite(doc, **change):
    doc = {**doc, **change}
    doc['sha256'] = _ledger._digest(doc)  # pylint: disable=protected-access
    return json.dumps(doc).encode()

  raw = open(good.path, 'rb').read()
  doc = json.loads(raw)
  cases = [
      ('other data', raw, ['--train-size', '100'], "records data set 'mnist_subset' (fingerprint"),
      ('relation', rewrite(doc, neighboring_relation='replace_one'), [], "'replace_one' relation"),
      ('newer', rewrite(doc, version=9), [], 'format version 9, newer than this ssgd_optax reads'),
      ('truncated', raw[:100], [], 'is damaged (not valid JSON'),
      ('flipped', raw.replace(b'"steps": 2', b'"steps": 1'), [], 'does not match its SHA-256'),
  ]
  for name, content, args, match in cases:
    path = tmp_path / f'{name}.json'
    path.write_bytes(content)
    workdir = tmp_path / 'run'
    _refused(dp_ssgd.main, DP_SSGD + args + ['--ledger', str(path), '--workdir', str(workdir)],
             capsys, match=match)
    assert path.read_bytes() == content and not workdir.exists(), name


def _no_work(*args, **kwargs):
  raise AssertionError('work started despite bad input')


def test_bad_workdirs_and_totals_are_refused_before_any_work(dp_ssgd, train, tmp_path, capsys,
                                                             monkeypatch):
  monkeypatch.setattr(dp_ssgd, 'train', _no_work)
  monkeypatch.setattr(train, 'train_and_evaluate', _no_work)
  a_file = tmp_path / 'file'
  a_file.write_text('keep me')
  for main in (dp_ssgd.main, train.main):
    _refused(main, ['--workdir', str(a_file)], capsys, match='is a file')
  assert a_file.read_text() == 'keep me'
  for value in ('0', '-1', 'nan'):
    _refused(dp_ssgd.main, ['--total-epsilon', value, '--ledger', str(tmp_path / 'l.json')],
             capsys, match='--total-epsilon must be a finite number > 0')
  _refused(dp_ssgd.main, ['--total-epsilon', '1'], capsys, match='--total-epsilon needs --ledger')
  _refused(dp_ssgd.main, ['--ledger', str(tmp_path)], capsys, match='is a folder')
  dp_train = load('examples/dp_train.py', 'faults_dp_train_cli')
  monkeypatch.setattr(dp_train.data_lib, 'load_dataset', _no_work)
  _refused(dp_train.main, ['--methods', 'nonprivate', '--ledger', str(tmp_path / 'l.json')],
           capsys, match='cannot be recorded in a privacy ledger')
  # A read-only workdir (root ignores permissions; the immutable flag binds it too).
  folder = tmp_path / 'ro'
  folder.mkdir()
  (folder / 'config.json').write_text('{}')
  os.chmod(folder, 0o555)
  immutable = False
  try:
    if os.access(folder, os.W_OK):
      immutable = subprocess.run(['chattr', '+i', str(folder)], capture_output=True,
                                 check=False).returncode == 0
      if not immutable:
        pytest.skip('cannot make a read-only folder here (root without chattr)')
    for main in (dp_ssgd.main, train.main):
      _refused(main, ['--workdir', str(folder)], capsys, match='is not writable')
  finally:
    if immutable:
      subprocess.run(['chattr', '-i', str(folder)], check=False)
    os.chmod(folder, 0o755)
  assert (folder / 'config.json').read_text() == '{}'


def test_resume_refuses_conflicts_and_a_damaged_config_before_any_work(dp_ssgd, tmp_path,
                                                                      capsys, monkeypatch):
  workdir = tmp_path / 'run'
  workdir.mkdir()
  (workdir / 'config.json').write_text(json.dumps({'epsilons': [8.0], 'hidden': [4]}))
  monkeypatch.setattr(dp_ssgd, 'train', _no_work)
  _refused(dp_ssgd.main, ['--workdir', str(workdir), '--resume', '--hidden', '8'], capsys,
           match="--hidden (8,) (the checkpoint has (4,))")
  (workdir / 'config.json').write_text('{"epsilons": [8')
  _refused(dp_ssgd.main, ['--workdir', str(workdir), '--resume'], capsys,
           match='config.json\' is unreadable or damaged')
  _refused(dp_ssgd.main, ['--workdir', str(tmp_path / 'none'), '--resume'], capsys,
           match='does not exist')


# ------------------------------------------------ federated.py: per participant

# 3 participants on the digits data set, 6 rounds of DP selective sharing (the
# sparse vector, epsilon 0.5 per participant per round), a checkpoint every 2
# rounds; each participant's ledger written in blocks of 2 rounds.
FED = ['--dataset', 'digits', '--participants', '3', '--rounds', '6', '--max-train', '300',
       '--hidden', '8', '--dp-epsilon', '0.5', '--clip', '0.01', '--no-baselines', '--quiet',
       '--checkpoint-every', '2']
FED_ROUNDS, FED_N = 6, 3


@pytest.fixture(scope='module')
def federated():
  pytest.importorskip('sklearn')  # the digits data set
  module = load('examples/federated.py', 'faults_federated')
  yield module
  sys.modules.pop('faults_federated', None)


@pytest.fixture(scope='module')
def fed_uninterrupted(federated, tmp_path_factory):
  """federated.py run to the end with reproducible noise, and its own ledgers."""
  folder = tmp_path_factory.mktemp('fed_full')
  federated.main(FED + ['--reproducible-noise', '--workdir', str(folder / 'run'),
                        '--ledger', str(folder / 'ledgers')])
  return folder


def _fed_ledgers(folder):
  return [folder / 'ledgers' / f'participant-{i}.json' for i in range(FED_N)]


def _fed_spent(folder, fingerprints):
  return [privacy.PrivacyLedger(path, dataset=f'digits participant {i} of {FED_N}',
                                fingerprint=fingerprints[i],
                                neighboring_relation='replace_one').spent(1e-5)
          for i, path in enumerate(_fed_ledgers(folder))]


def check_fed_resumed(full, tmp_path, ran):
  """Bit for bit the uninterrupted run; every participant's ledger counts every round
  each process released, and composes to at least the uninterrupted run's epsilon."""
  _assert_bit_identical(full / 'run' / 'checkpoints' / 'dssgd',
                        tmp_path / 'run' / 'checkpoints' / 'dssgd')
  a = json.loads((full / 'run' / 'results.json').read_text())['dssgd']
  b = json.loads((tmp_path / 'run' / 'results.json').read_text())['dssgd']
  assert a['rounds'] == b['rounds'] == FED_ROUNDS
  assert (a['accuracy'], a['epsilon'], a['releases']) == (b['accuracy'], b['epsilon'],
                                                          b['releases'])
  for path in _fed_ledgers(tmp_path):  # every participant uploads in every round (no dropout)
    runs = json.loads(path.read_text())['runs']
    check_ledger_covers(path, ran[-len(runs):])  # a kill in the first record: one run
    assert sum(r['steps'] for r in runs) >= FED_ROUNDS
  prints = [json.loads(p.read_text())['dataset']['fingerprint'] for p in _fed_ledgers(full)]
  alone = _fed_spent(full, prints)
  assert alone == pytest.approx([FED_ROUNDS * 0.5] * FED_N, rel=1e-3)
  assert all(t >= s for t, s in zip(_fed_spent(tmp_path, prints), alone))


@pytest.mark.slow  # ~10 s; the dp_ssgd.py representative covers the shared machinery by default
def test_a_killed_federated_run_resumes_bit_identically_and_each_participants_ledger_counts(
    federated, fed_uninterrupted, tmp_path, jax_cache, monkeypatch, capsys):
  """SIGKILL after round 5 of a subprocess; resumed here (the slow matrix: in subprocesses)."""
  flags = ['--workdir', 'run', '--ledger', 'ledgers']
  logs = [tmp_path / 'killed.log', tmp_path / 'resumed.log']
  killed = _run('examples/federated.py', FED + ['--reproducible-noise'] + flags, cwd=tmp_path,
                jax_cache=jax_cache, log=logs[0], kill_at='step:5')
  assert killed.returncode == -9, (killed.returncode, killed.stderr[-3000:])
  monkeypatch.chdir(tmp_path)
  monkeypatch.setenv('SSGD_EXAMPLES_FAULT_LOG', str(logs[1]))
  federated.main(['--workdir', 'run', '--resume'])
  out, err = capsys.readouterr()
  _no_traceback(err)
  ran = [_steps_logged(log) for log in logs]
  # Checkpoint 4 was being written (in the background) while round 5 ran: the
  # resumed run continues from 4, or from an earlier one orbax had committed.
  assert ran[0] == 5 and FED_ROUNDS - ran[1] in (0, 2, 4), ran
  check_fed_resumed(fed_uninterrupted, tmp_path, ran)
  for path in _fed_ledgers(tmp_path):
    records = json.loads(path.read_text())['runs']
    # Killed: its block of rounds 5-6 was written before round 5 ran; resumed: exact.
    assert [(r['steps'], r['status']) for r in records] == [(6, 'running'), (ran[1], 'ended')]
  assert 'composed epsilon' in out


FED_MATRIX = [('step', 0), ('checkpoint', 1), ('ledger', 2), ('ledger', 3), ('step', 4)]
_KILL_TESTS_RUNS['federated killed + resumed'] = 2 * len(FED_MATRIX)


@pytest.mark.slow
@pytest.mark.parametrize('kind, seed', FED_MATRIX)
def test_federated_killed_anywhere_resumes_to_the_uninterrupted_result(
    fed_uninterrupted, tmp_path, jax_cache, kind, seed):
  rng = np.random.default_rng(seed)
  kill_at, env = None, {}
  if kind == 'step':
    kill_at = f'step:{rng.integers(1, FED_ROUNDS)}'
  elif kind == 'checkpoint':
    kill_at = f'checkpoint:{rng.integers(1, FED_ROUNDS // 2)}'
  else:  # each participant's record, then one write per participant per block of 2 rounds
    env = {'SSGD_KILL_LEDGER_WRITE': str(rng.integers(1, FED_N * (1 + FED_ROUNDS // 2)))}
  _, _, ran = _kill_and_resume('examples/federated.py', FED + ['--reproducible-noise'],
                               ['--workdir', 'run', '--ledger', 'ledgers'], tmp_path=tmp_path,
                               jax_cache=jax_cache, kill_at=kill_at, env=env)
  check_fed_resumed(fed_uninterrupted, tmp_path, ran)


@pytest.mark.slow
def test_the_federated_kill_test_catches_a_ledger_written_after_the_round(
    fed_uninterrupted, tmp_path, jax_cache):
  _, _, ran = _kill_and_resume('examples/federated.py', FED + ['--reproducible-noise'],
                               ['--workdir', 'run', '--ledger', 'ledgers'], tmp_path=tmp_path,
                               jax_cache=jax_cache, kill_at='step:3',
                               env={'SSGD_LEDGER_AFTER': '1'})
  with pytest.raises(AssertionError, match='counts 2 steps of a run that released 3'):
    check_fed_resumed(fed_uninterrupted, tmp_path, ran)


def test_federated_never_saves_the_os_noise_key_and_a_resumed_run_counts_every_round(
    federated, fed_uninterrupted, tmp_path, monkeypatch, capsys):
  """Secret noise, stopped after 2 rounds and resumed: the upload's keys are saved as
  zeros, the resumed run draws fresh ones (other parameters) and reports the rounds and
  epsilon of an uninterrupted run; a second run's total is refused before any work."""
  monkeypatch.chdir(tmp_path)
  federated.main(FED + ['--workdir', 'run', '--ledger', 'ledgers', '--stop-after-steps', '2'])
  _, state = _final_state(tmp_path / 'run' / 'checkpoints' / 'dssgd')
  keys = [v for k, v in state.items() if 'upload_state' in k and k.endswith("['key']")]
  assert len(keys) == 1 and keys[0].shape[0] == FED_N and not keys[0].any()
  assert state["['key']"].any()  # the simulation's key (from --seed, no secret) is kept
  federated.main(['--workdir', 'run', '--resume'])
  b = json.loads((tmp_path / 'run' / 'results.json').read_text())['dssgd']
  a = json.loads((fed_uninterrupted / 'run' / 'results.json').read_text())['dssgd']
  assert (a['rounds'], a['epsilon'], a['releases']) == (b['rounds'], b['epsilon'], b['releases'])
  _, mine = _final_state(tmp_path / 'run' / 'checkpoints' / 'dssgd')
  _, theirs = _final_state(fed_uninterrupted / 'run' / 'checkpoints' / 'dssgd')
  assert not np.array_equal(mine["['server']['params']"], theirs["['server']['params']"])
  for path in _fed_ledgers(tmp_path):
    assert [r['steps'] for r in json.loads(path.read_text())['runs']] == [2, 4]
  capsys.readouterr()
  # Spent 3 epsilon per participant; 6 more rounds would take it to 6 > 5.
  before = {p: p.read_bytes() for p in _fed_ledgers(tmp_path)}
  err = _refused(federated.main, FED + ['--workdir', 'run2', '--ledger', 'ledgers',
                                        '--total-epsilon', '5'], capsys,
                 match='would exceed the total: refused before it ran')
  assert 'spent epsilon 3' in err and 'total epsilon 5' in err
  assert not (tmp_path / 'run2').exists()
  assert {p: p.read_bytes() for p in _fed_ledgers(tmp_path)} == before


def test_federated_bad_ledgers_workdirs_and_totals_are_refused_before_any_work(
    federated, tmp_path, capsys, monkeypatch):
  monkeypatch.setattr(federated, 'run_dssgd', _no_work)
  # A ledger folder of another split (--seed 1: other shards) or another relation.
  x, y, *_ = federated.load('digits', seed=1, max_train=300)
  xs, ys = federated.federated.shard(x, y, FED_N, seed=1)
  other = tmp_path / 'other'
  other.mkdir()
  ledger = privacy.PrivacyLedger(other / 'participant-0.json', dataset=f'digits participant 0 '
                                 f'of {FED_N}', fingerprint=privacy.PrivacyLedger.fingerprint(
                                     xs[0], ys[0]), neighboring_relation='replace_one')
  ledger.start_run(privacy.sparse_vector_mechanism(0.1, epsilon=1.0, clip=0.01),
                   planned_steps=1).reserve(1)
  content = ledger.path and open(ledger.path, 'rb').read()
  _refused(federated.main, FED + ['--ledger', str(other), '--workdir', str(tmp_path / 'r')],
           capsys, match='records data set')
  x, y, *_ = federated.load('digits', seed=0, max_train=300)
  xs, ys = federated.federated.shard(x, y, FED_N, seed=0)
  relation = tmp_path / 'relation'
  relation.mkdir()
  privacy.PrivacyLedger(relation / 'participant-0.json', dataset=f'digits participant 0 of '
                        f'{FED_N}', fingerprint=privacy.PrivacyLedger.fingerprint(xs[0], ys[0])
                        ).start_run(privacy.GaussianMechanism(1.0), sampling_rate=0.1,
                                    planned_steps=1)
  _refused(federated.main, FED + ['--ledger', str(relation), '--workdir', str(tmp_path / 'r')],
           capsys, match="'add_remove_one' relation")
  assert open(ledger.path, 'rb').read() == content and not (tmp_path / 'r').exists()
  for value in ('0', '-1', 'nan'):
    _refused(federated.main, FED + ['--total-epsilon', value, '--ledger', str(tmp_path / 'l')],
             capsys, match='--total-epsilon must be a finite number > 0')
  _refused(federated.main, FED + ['--total-epsilon', '1'], capsys,
           match='--total-epsilon needs --ledger')
  a_file = tmp_path / 'file'
  a_file.write_text('keep me')
  _refused(federated.main, FED + ['--ledger', str(a_file)], capsys, match='is a file; name a '
           'folder')
  _refused(federated.main, FED + ['--workdir', str(a_file)], capsys, match='is a file')
  assert a_file.read_text() == 'keep me'
  _refused(federated.main, ['--ledger', str(tmp_path / 'l')], capsys,
           match='--ledger records DP releases; this run makes none')
  _refused(federated.main, ['--dp-epsilon', '1'], capsys, match='--dp-epsilon needs --clip')
  folder = tmp_path / 'ro'
  folder.mkdir()
  os.chmod(folder, 0o555)
  immutable = False
  try:
    if os.access(folder, os.W_OK):
      immutable = subprocess.run(['chattr', '+i', str(folder)], capture_output=True,
                                 check=False).returncode == 0
      if not immutable:
        pytest.skip('cannot make a read-only folder here (root without chattr)')
    _refused(federated.main, FED + ['--workdir', str(folder)], capsys, match='is not writable')
  finally:
    if immutable:
      subprocess.run(['chattr', '-i', str(folder)], check=False)
    os.chmod(folder, 0o755)
  # Resume: a conflicting flag is refused before any work.
  run = tmp_path / 'run'
  run.mkdir()
  (run / 'config.json').write_text(json.dumps({'rounds': 6, 'hidden': 8}))
  _refused(federated.main, ['--workdir', str(run), '--resume', '--hidden', '16'], capsys,
           match='--hidden 16 (the checkpoint has 8)')
