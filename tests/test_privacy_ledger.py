# Copyright 2026 The ssgd_optax Authors. Licensed under the Apache License 2.0.
"""The privacy ledger: write-ahead, atomic, composed by dp_accounting, refusing bad files.

Each guarantee is attacked: kills (SIGKILL of a forked writer) at every point
of a write, a loop that records after releasing, concurrent writers, damaged,
foreign and newer-format files, and a total that a run would exceed.
"""

import json
import math
import os
import signal
import subprocess

import dp_accounting
import numpy as np
import pytest

from ssgd_optax import privacy
from ssgd_optax.privacy import _accounting
from ssgd_optax.privacy import _events
from ssgd_optax.privacy import _ledger

DELTA = 1e-5
Q = 0.01
MECH = privacy.dpsgd_mechanism(1.0, noise_multiplier=1.1)


def _ledger_at(tmp_path, **kw):
  kw.setdefault('dataset', 'toy')
  return privacy.PrivacyLedger(tmp_path / 'ledger.json', **kw)


def _recorded(path, run_id=None):
  """Steps the file itself counts (all runs, or one), read with a fresh object."""
  doc = json.loads(open(path).read())
  return sum(r['steps'] for r in doc['runs'] if run_id in (None, r['id']))


# ------------------------------------------------------------------ events


@pytest.mark.parametrize('event', [
    privacy.dpsgd_mechanism(1.0, 1.3).dp_event(sampling_rate=Q),
    privacy.GaussianMechanism(1.0, num_releases=4).dp_event(sampling_rate=Q, accountant='rdp'),
    privacy.sparse_vector_mechanism(0.1, epsilon=0.5, clip=1.0).dp_event(),
    dp_accounting.TruncatedSubsampledGaussianDpEvent(1000, 0.01, 20, 1.1),
    dp_accounting.ComposedDpEvent([dp_accounting.GaussianDpEvent(2.0),
                                   dp_accounting.LaplaceDpEvent(0.5)]),
])
def test_events_survive_json(event):
  back = _events.event_from_json(json.loads(json.dumps(_events.event_to_json(event))))
  assert back == event and type(back) is type(event)


@pytest.mark.parametrize('data, match', [
    ({'type': 'system', 'command': 'rm'}, 'unknown dp_accounting event type'),
    ({'type': 'DpEvent'}, 'unknown'),   # the abstract base has no fields to check
    ({'type': 'GaussianDpEvent'}, 'fields'),
    ({'type': 'GaussianDpEvent', 'noise_multiplier': 1.0, 'extra': 1}, 'fields'),
    ({'type': 'GaussianDpEvent', 'noise_multiplier': {'x': 1}}, 'type'),
    ([1, 2], 'must be a dict'),
])
def test_a_recorded_event_is_only_ever_a_dp_accounting_event(data, match):
  with pytest.raises(ValueError, match=match):
    _events.event_from_json(data)


# ------------------------------------------------------------- composition


def test_one_run_composes_to_compute_epsilon_exactly():
  step = MECH.dp_event(sampling_rate=Q)
  for accountant in ('pld', 'rdp'):
    got = _accounting.compose_epsilon([(step, 300)], delta=DELTA, accountant=accountant)
    assert got == privacy.compute_epsilon(MECH, sampling_rate=Q, steps=300, delta=DELTA,
                                          accountant=accountant)


def test_runs_are_composed_by_dp_accounting_not_added():
  # The case: two complete runs on one data set spend compute_epsilon over
  # all their steps, far less than twice one run's epsilon and far more than once.
  step = MECH.dp_event(sampling_rate=Q)
  one = privacy.compute_epsilon(MECH, sampling_rate=Q, steps=200, delta=DELTA)
  both = privacy.compute_epsilon(MECH, sampling_rate=Q, steps=400, delta=DELTA)
  got = _accounting.compose_epsilon([(step, 200), (step, 200)], delta=DELTA)
  assert got == pytest.approx(both, rel=1e-3)
  assert one * 1.2 < got < 2 * one
  # Different mechanisms compose too (PLD against dp_accounting's own RDP composition).
  other = privacy.GaussianMechanism(4.0, num_releases=4).dp_event(sampling_rate=0.02)
  pld = _accounting.compose_epsilon([(step, 200), (other, 50)], delta=DELTA)
  rdp = _accounting.compose_epsilon([(step, 200), (other, 50)], delta=DELTA, accountant='rdp')
  acc = dp_accounting.rdp.RdpAccountant()
  acc.compose(dp_accounting.ComposedDpEvent([dp_accounting.SelfComposedDpEvent(step, 200),
                                             dp_accounting.SelfComposedDpEvent(other, 50)]))
  assert rdp == pytest.approx(acc.get_epsilon(DELTA), rel=1e-9)
  assert pld <= rdp
  assert _accounting.compose_epsilon([], delta=DELTA) == 0.0
  with pytest.raises(TypeError, match='each part must be'):
    _accounting.compose_epsilon([step], delta=DELTA)
  with pytest.raises(TypeError, match='DpEvent'):
    _accounting.compose_epsilon([(1.0, 3)], delta=DELTA)
  with pytest.raises(ValueError, match='neighboring_relation'):
    _accounting.compose_epsilon([(step, 1)], delta=DELTA, neighboring_relation='any')
  with pytest.raises(ValueError, match='steps'):
    _accounting.compose_epsilon([(step, -1)], delta=DELTA)
  assert _accounting.compose_epsilon([(step, 0)], delta=DELTA) == 0.0
  assert math.isinf(_accounting.compose_epsilon([(dp_accounting.NonPrivateDpEvent(), 1)],
                                                delta=DELTA))


def test_sparse_vector_rounds_of_several_runs_compose_per_participant(tmp_path):
  # One participant's ledger: two federated runs of sparse-vector uploads.
  svt = privacy.sparse_vector_mechanism(0.1, epsilon=0.2, clip=1.0)
  ledger = _ledger_at(tmp_path, dataset='participant 3', neighboring_relation='replace_one')
  for rounds in (30, 20):
    run = ledger.start_run(svt, planned_steps=rounds)
    for r in range(rounds):
      run.reserve(r + 1)        # before the round's upload leaves the participant
    run.finish(rounds)
  total = ledger.spent(DELTA)
  assert total == pytest.approx(privacy.compute_epsilon(svt, steps=50, delta=DELTA), rel=1e-3)
  assert total < 50 * 0.2  # tighter than the pure-DP sum at delta > 0
  # A second epsilon per round: the total is between the larger run and the sum.
  run = ledger.start_run(svt._replace(epsilon=0.5), planned_steps=10)
  run.reserve(10)
  run.finish(10)
  three = ledger.spent(DELTA)
  assert max(total, privacy.compute_epsilon(svt._replace(epsilon=0.5), steps=10,
                                            delta=DELTA)) < three < 50 * 0.2 + 10 * 0.5
  # The sparse vector states replace-one: an add/remove ledger refuses it.
  (tmp_path / 'x').mkdir()
  with pytest.raises(privacy.LedgerError, match='replace_one'):
    _ledger_at(tmp_path / 'x').start_run(svt, planned_steps=1)


# ------------------------------------------------------------- write-ahead


def _check_write_ahead(loop, path):
  """Runs ``loop(release)`` and checks the file counts every step of the run before its release."""
  seen = []

  def release(t, run):
    recorded = _recorded(path, run.id)
    seen.append(recorded)
    assert recorded >= t + 1, f'step {t} released with only {recorded} steps recorded'
  loop(release)
  return seen


def test_every_step_is_recorded_before_it_is_released(tmp_path):
  ledger = _ledger_at(tmp_path)

  def ahead(release):
    run = ledger.start_run(MECH, sampling_rate=Q, planned_steps=10, steps_per_write=4)
    for t in range(10):
      run.reserve(t + 1)
      release(t, run)
    run.finish(10)

  seen = _check_write_ahead(ahead, ledger.path)
  assert seen == [4, 4, 4, 4, 8, 8, 8, 8, 10, 10]   # blocks of 4, capped at the plan
  assert _recorded(ledger.path) == 10               # finish() lowers to what ran

  # The broken loop, recording each step after releasing it, is caught.
  def behind(release):
    run = ledger.start_run(MECH, sampling_rate=Q, planned_steps=3)
    for t in range(3):
      release(t, run)
      run.reserve(t + 1)

  with pytest.raises(AssertionError, match='released with only'):
    _check_write_ahead(behind, ledger.path)


def test_finish_refuses_steps_that_were_never_reserved(tmp_path):
  run = _ledger_at(tmp_path).start_run(MECH, sampling_rate=Q, planned_steps=5)
  run.reserve(2)
  with pytest.raises(ValueError, match='only 2 steps were reserved'):
    run.finish(3)


def _killed_child(work):
  """Runs ``work()`` in a forked child; returns its wait status (no JAX in the child)."""
  pid = os.fork()
  if pid == 0:  # pragma: no cover - the child
    try:
      work()
    finally:
      os._exit(0)
  _, status = os.waitpid(pid, 0)
  return status


@pytest.mark.parametrize('where', ['mid_write', 'before_fsync', 'before_replace',
                                   'after_replace'])
def test_a_kill_during_a_ledger_write_never_under_counts(tmp_path, monkeypatch, where):
  ledger = _ledger_at(tmp_path)
  run = ledger.start_run(MECH, sampling_rate=Q, planned_steps=10)
  run.reserve(3)
  before = open(ledger.path, 'rb').read()
  real = {'write': os.write, 'fsync': os.fsync, 'replace': os.replace}

  def kill():
    os.kill(os.getpid(), signal.SIGKILL)

  def work():
    if where == 'mid_write':
      monkeypatch.setattr(_ledger.os, 'write', lambda fd, b: (real['write'](fd, b[:len(b) // 2]),
                                                              kill()))
    elif where == 'before_fsync':
      monkeypatch.setattr(_ledger.os, 'fsync', lambda fd: kill())
    elif where == 'before_replace':
      monkeypatch.setattr(_ledger.os, 'replace', lambda a, b: kill())
    else:
      monkeypatch.setattr(_ledger.os, 'replace', lambda a, b: (real['replace'](a, b), kill()))
    run.reserve(4)   # step 3 would run after this returns: it never does

  status = _killed_child(work)
  assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
  # The file is whole (the old or the new version), and counts the 3 steps that ran.
  again = privacy.PrivacyLedger(ledger.path, dataset='toy')
  assert (open(ledger.path, 'rb').read() == before) == (where != 'after_replace')
  assert _recorded(ledger.path) == (4 if where == 'after_replace' else 3)
  run2 = again.start_run(MECH, sampling_rate=Q, planned_steps=1)  # still writable
  run2.reserve(1)
  assert len(again.runs()) == 2


def test_the_kill_check_catches_a_ledger_written_in_place(tmp_path, monkeypatch):
  # The broken writer: the ledger rewritten in place (truncate, write) instead of
  # replaced atomically. A kill mid-write leaves a file the next run cannot read.
  ledger = _ledger_at(tmp_path)
  run = ledger.start_run(MECH, sampling_rate=Q, planned_steps=10)
  run.reserve(3)

  def in_place(path, data):
    with open(path, 'wb') as f:
      f.write(data[:len(data) // 2])
      f.flush()
      os.kill(os.getpid(), signal.SIGKILL)

  def work():
    monkeypatch.setattr(_ledger, '_atomic_write', in_place)
    run.reserve(4)

  assert os.WTERMSIG(_killed_child(work)) == signal.SIGKILL
  with pytest.raises(privacy.LedgerError, match='damaged'):
    privacy.PrivacyLedger(ledger.path, dataset='toy')


def test_concurrent_writers_lose_no_record(tmp_path):
  path = tmp_path / 'ledger.json'
  privacy.PrivacyLedger(path, dataset='toy').start_run(MECH, sampling_rate=Q, planned_steps=0)

  def writer():
    run = privacy.PrivacyLedger(path, dataset='toy').start_run(MECH, sampling_rate=Q,
                                                               planned_steps=30)
    for t in range(30):
      run.reserve(t + 1)

  pids = []
  for _ in range(2):
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the children
      try:
        writer()
        os._exit(0)
      except BaseException:  # pylint: disable=broad-except
        os._exit(1)
    pids.append(pid)
  for pid in pids:
    assert os.waitpid(pid, 0)[1] == 0
  runs = privacy.PrivacyLedger(path, dataset='toy').runs()
  assert sorted(r['steps'] for r in runs) == [0, 30, 30]


# ---------------------------------------------------------------- the total


def test_a_run_over_the_total_is_refused_before_it_runs_and_nothing_is_written(tmp_path):
  ledger = _ledger_at(tmp_path)
  run = ledger.start_run(MECH, sampling_rate=Q, planned_steps=400)
  run.reserve(400)
  run.finish(400)
  spent = ledger.spent(DELTA)
  both = privacy.compute_epsilon(MECH, sampling_rate=Q, steps=800, delta=DELTA)
  before = open(ledger.path, 'rb').read()
  total = (spent + both) / 2
  with pytest.raises(privacy.TotalBudgetExceededError) as info:
    ledger.start_run(MECH, sampling_rate=Q, planned_steps=400, total_epsilon=total,
                     delta=DELTA)
  msg = str(info.value)
  one = privacy.compute_epsilon(MECH, sampling_rate=Q, steps=400, delta=DELTA)
  for number in (f'spent epsilon {spent:.4g}', f'planned {one:.4g}', f'compose to {both:.4g}',
                 f'total epsilon {total:g}', '(1 run(s), 400 releases)', '(400 releases)'):
    assert number in msg, (number, msg)
  assert open(ledger.path, 'rb').read() == before
  assert isinstance(info.value, privacy.BudgetExhaustedError)
  # Within the total: accepted, and check_total reports the composed total.
  assert ledger.check_total(both * 1.01, DELTA, planned=[(MECH, Q, 400)]) == pytest.approx(
      both, rel=1e-3)
  ledger.start_run(MECH, sampling_rate=Q, planned_steps=400, total_epsilon=both * 1.01,
                   delta=DELTA)


def test_a_run_stops_before_a_step_that_another_run_made_too_expensive(tmp_path):
  ledger = _ledger_at(tmp_path)
  limit = privacy.compute_epsilon(MECH, sampling_rate=Q, steps=300, delta=DELTA)
  a = ledger.start_run(MECH, sampling_rate=Q, planned_steps=200, total_epsilon=limit,
                       delta=DELTA)
  a.reserve(100)
  # Meanwhile another process records 150 steps on the same data set.
  b = privacy.PrivacyLedger(ledger.path, dataset='toy').start_run(MECH, sampling_rate=Q,
                                                                  planned_steps=150)
  b.reserve(150)
  before = open(ledger.path, 'rb').read()
  with pytest.raises(privacy.TotalBudgetExceededError, match='stopped before its release 101'):
    a.reserve(200)     # 200 + 150 > 300 steps' worth
  assert open(ledger.path, 'rb').read() == before
  assert a.recorded_steps == 100


@pytest.mark.parametrize('value, err', [(0, ValueError), (-1.0, ValueError),
                                        (math.nan, ValueError), (math.inf, ValueError),
                                        (True, TypeError), ('1', TypeError)])
def test_total_epsilon_must_be_a_positive_number(tmp_path, value, err):
  ledger = _ledger_at(tmp_path)
  with pytest.raises(err, match='total_epsilon'):
    ledger.start_run(MECH, sampling_rate=Q, planned_steps=1, total_epsilon=value, delta=DELTA)
  with pytest.raises(err, match='total_epsilon'):
    ledger.check_total(value, DELTA)
  assert not os.path.exists(ledger.path)


# --------------------------------------------------------------- bad files


def _write_one_run(tmp_path):
  ledger = _ledger_at(tmp_path, fingerprint='sha256:aa')
  ledger.start_run(MECH, sampling_rate=Q, planned_steps=5).reserve(5)
  return ledger.path


def _rewrite(path, change, fix_digest=True):
  doc = json.loads(open(path).read())
  change(doc)
  if fix_digest:
    doc['sha256'] = _ledger._digest(doc)
  open(path, 'w').write(json.dumps(doc))


@pytest.mark.parametrize('damage, kw, match', [
    (None, {'dataset': 'other'}, "records data set 'toy'"),
    (None, {'fingerprint': 'sha256:bb'}, 'fingerprint sha256:aa'),
    (None, {'neighboring_relation': 'replace_one'}, "'add_remove_one' relation"),
    (lambda p: _rewrite(p, lambda d: d.update(version=2)), {}, 'format version 2, newer'),
    (lambda p: open(p, 'r+b').truncate(os.path.getsize(p) // 2), {}, 'damaged .*truncated'),
    (lambda p: open(p, 'wb').close(), {}, 'damaged .*empty'),
    (lambda p: open(p, 'wb').write(b'\xff\xfe junk'), {}, 'damaged'),
    (lambda p: _rewrite(p, lambda d: d['runs'][0].update(steps=1), fix_digest=False), {},
     'does not match its SHA-256'),
    (lambda p: _rewrite(p, lambda d: d['runs'][0].update(steps=-1)), {},
     'run 0 is not a valid record'),
    (lambda p: _rewrite(p, lambda d: d['runs'][0]['event'].update(type='os')), {},
     'run 0 is not a valid record'),
    (lambda p: open(p, 'w').write('{"a": 1}'), {}, 'is not a privacy ledger'),
])
def test_a_bad_ledger_file_is_refused_and_left_unchanged(tmp_path, damage, kw, match):
  path = _write_one_run(tmp_path)
  if damage:
    damage(path)
  before = open(path, 'rb').read()
  kw = {'dataset': 'toy', 'fingerprint': 'sha256:aa', **kw}
  with pytest.raises(privacy.LedgerError, match=match) as info:
    privacy.PrivacyLedger(path, **kw)
  assert '\n' not in str(info.value)
  assert open(path, 'rb').read() == before


def test_bad_paths_are_refused(tmp_path):
  with pytest.raises(privacy.LedgerError, match='is a folder'):
    privacy.PrivacyLedger(tmp_path, dataset='toy')
  with pytest.raises(privacy.LedgerError, match='does not exist'):
    privacy.PrivacyLedger(tmp_path / 'missing' / 'l.json', dataset='toy')
  with pytest.raises(TypeError, match='dataset'):
    privacy.PrivacyLedger(tmp_path / 'l.json', dataset='')
  with pytest.raises(ValueError, match='neighboring_relation'):
    privacy.PrivacyLedger(tmp_path / 'l.json', dataset='toy', neighboring_relation='any')


def test_a_read_only_folder_is_refused_when_a_run_starts(tmp_path):
  folder = tmp_path / 'ro'
  folder.mkdir()
  ledger = privacy.PrivacyLedger(folder / 'l.json', dataset='toy')
  os.chmod(folder, 0o555)
  immutable = False
  try:
    if os.access(folder, os.W_OK):  # root: permissions do not bind, the immutable flag does
      immutable = subprocess.run(['chattr', '+i', str(folder)], capture_output=True,
                                 check=False).returncode == 0
      if not immutable:
        pytest.skip('cannot make a read-only folder here (root without chattr)')
    with pytest.raises(privacy.LedgerError, match='cannot write privacy ledger'):
      ledger.start_run(MECH, sampling_rate=Q, planned_steps=1)
  finally:
    if immutable:
      subprocess.run(['chattr', '-i', str(folder)], check=False)
    os.chmod(folder, 0o755)
  assert not (folder / 'l.json').exists()


def test_fingerprint_tells_data_sets_apart_but_not_orders():
  rng = np.random.default_rng(0)
  x = rng.integers(0, 255, (50, 4, 4), dtype=np.uint8)
  y = rng.integers(0, 10, 50).astype(np.int32)
  fp = privacy.PrivacyLedger.fingerprint
  perm = rng.permutation(50)
  assert fp(x, y) == fp(x[perm], y[perm]) == fp(x.copy(), y.copy())
  y2 = y.copy()
  y2[7] = (y2[7] + 1) % 10
  x2 = x.copy()
  x2[3, 1, 1] ^= 1
  others = {fp(x, y2), fp(x2, y), fp(x[1:], y[1:]), fp(x, y.astype(np.int64)), fp(x),
            fp(x.reshape(50, 16), y)}
  assert fp(x, y) not in others and len(others) == 6
  with pytest.raises(ValueError, match='aligned'):
    fp(x, y[:3])


# -------------------------------------------------------- tracker state


def test_budget_tracker_state_dict_round_trips_and_refuses_other_settings():
  # max_steps_limit keeps each tracker's search for its step budget short.
  kw = dict(mechanism=MECH, sampling_rate=Q, accountant='rdp', max_steps_limit=64)
  tracker = privacy.BudgetTracker(2.0, DELTA, **kw)
  tracker.step(37)
  state = json.loads(json.dumps(tracker.state_dict()))  # as written into a checkpoint
  resumed = privacy.BudgetTracker(2.0, DELTA, **kw)
  resumed.load_state_dict(state)
  assert resumed.steps == 37 and resumed.spent() == tracker.spent()
  for other, name in ((privacy.BudgetTracker(2.0, DELTA, **{**kw, 'sampling_rate': 0.02}),
                       'sampling_rate'),
                      (privacy.BudgetTracker(2.0, DELTA, **{**kw, 'mechanism': MECH._replace(
                          noise_multiplier=1.2)}), 'event'),
                      (privacy.BudgetTracker(3.0, DELTA, **kw), 'target_epsilon')):
    with pytest.raises(ValueError, match=f'other settings: {name}'):
      other.load_state_dict(state)
    assert other.steps == 0
  with pytest.raises(ValueError, match='newer'):
    resumed.load_state_dict({**state, 'version': 2})
  with pytest.raises(ValueError, match='steps'):
    resumed.load_state_dict({**state, 'steps': -1})
  with pytest.raises(ValueError, match='BudgetTracker.state_dict'):
    resumed.load_state_dict({'steps': 3})
