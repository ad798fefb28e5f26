# Copyright 2026 The ssgd_optax Authors. Licensed under the Apache License 2.0.
r"""A privacy ledger: every release made from one data set, over all runs, kills included.

A :class:`~ssgd_optax.privacy.BudgetTracker` counts the steps of one run in
one process. The data set's owner needs more: every run that touched the
data (finished, stopped, killed, resumed) spends budget, and the total is what
an adversary who sees all their outputs learns. :class:`PrivacyLedger` keeps
that total in one file per data set, at a path the user names:

* **what**: per run, the ``dp_accounting`` event of one step
  (``mechanism.dp_event(...)``), the neighbouring relation, the sampling rate,
  the mechanism's type, the planned and the recorded number of steps, and the
  data set's name and fingerprint (once, for the whole file);
* **when**: *before* the steps are released (write-ahead). :meth:`LedgerRun.reserve`
  writes and fsyncs the new count before the caller runs the steps, so a
  kill at any point can over-count (steps recorded but never run), never
  under-count. :meth:`LedgerRun.finish` lowers the count to the steps that ran;
* **how**: each write replaces the whole file atomically (a temporary file,
  ``fsync``, ``os.replace``, ``fsync`` of the folder) under an exclusive lock
  (``<path>.lock``), so a reader never sees half a record and concurrent runs
  do not lose each other's records. The file carries a format version and a
  SHA-256 of its content: a damaged, truncated or newer-format file is refused
  with :class:`LedgerError`, never silently read;
* **the total**: ``dp_accounting`` composes the recorded events
  (:func:`~ssgd_optax.privacy.compute_epsilon`'s accountant: each run's
  one-step privacy-loss distribution self-composed over its steps, the runs
  convolved), never a sum of epsilons.

A step here is one release of the run's mechanism (its ``dp_event``): a
DP-SGD step or, in a federated run, a round in which the participant uploads
(not every round); the refusal messages count them as releases.

With ``total_epsilon``, :meth:`PrivacyLedger.start_run` refuses a run whose
planned steps would take the composed total over it, and :meth:`LedgerRun.reserve`
refuses (before writing, before the steps run) a reservation that would,
e.g. when another run on the same data set recorded steps meanwhile; both
raise :class:`TotalBudgetExceededError` stating the spent, planned and total
epsilon.

Example (two runs on one data set, composed; the second is refused once the
total would be exceeded):

>>> import os, tempfile
>>> from ssgd_optax import privacy
>>> path = os.path.join(tempfile.mkdtemp(), 'ledger.json')
>>> ledger = privacy.PrivacyLedger(path, dataset='toy', neighboring_relation='add_remove_one')
>>> m = privacy.dpsgd_mechanism(1.0, noise_multiplier=1.1)
>>> for _ in range(2):
...   run = ledger.start_run(m, sampling_rate=0.01, planned_steps=100, steps_per_write=25)
...   for t in range(100):
...     run.reserve(t + 1)         # recorded (fsync'd) before step t is released
...     pass                       # ... release step t here
...   run.finish(100)
>>> both = ledger.spent(1e-5, accountant='rdp')
>>> alone = privacy.compute_epsilon(m, sampling_rate=0.01, steps=100, delta=1e-5, accountant='rdp')
>>> alone < both < 2 * alone
True
>>> try:
...   ledger.start_run(m, sampling_rate=0.01, planned_steps=100, total_epsilon=both,
...                    delta=1e-5, accountant='rdp')
... except privacy.TotalBudgetExceededError as e:
...   print(str(e).split(': ')[-1])
refused before it ran.
"""

from __future__ import annotations

import copy
import datetime
import hashlib
import json
import os
import uuid
from collections.abc import Sequence
from typing import Any

import numpy as np

from ssgd_optax import _validation
from ssgd_optax.privacy import _accounting as accounting
from ssgd_optax.privacy import _events as events
from ssgd_optax.privacy import _mechanisms as mechanisms

try:
  import fcntl
except ImportError:  # not POSIX: no inter-process lock (one writer at a time is then yours)
  fcntl = None

__all__ = [
    'LedgerError',
    'LedgerRun',
    'PrivacyLedger',
    'TotalBudgetExceededError',
]

LEDGER_FORMAT = 'ssgd_optax privacy ledger'
# The format version this module writes and the newest it reads.
LEDGER_VERSION = 1
_STATUSES = ('running', 'ended')


class LedgerError(ValueError):
  """A privacy ledger that cannot be used as it is: unreadable, damaged, written by a
  newer version, or recording another data set or neighbouring relation."""


class TotalBudgetExceededError(accounting.BudgetExhaustedError):
  """A run would take a data set's composed total epsilon over the limit."""


def _digest(doc: dict[str, Any]) -> str:
  body = {k: v for k, v in doc.items() if k != 'sha256'}
  text = json.dumps(body, sort_keys=True, separators=(',', ':'), allow_nan=False)
  return hashlib.sha256(text.encode()).hexdigest()


def _fsync_folder(folder: str) -> None:
  try:
    fd = os.open(folder, os.O_RDONLY)
  except OSError:  # some systems cannot open a folder; the rename is still atomic
    return
  try:
    os.fsync(fd)
  except OSError:
    pass
  finally:
    os.close(fd)


def _atomic_write(path: str, data: bytes) -> None:
  """Replaces ``path`` by ``data``: readers see the old file or the new one, never half."""
  tmp = path + '.tmp'
  fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
  try:
    view = memoryview(data)
    while view:
      view = view[os.write(fd, view):]
    os.fsync(fd)
  finally:
    os.close(fd)
  os.replace(tmp, path)
  _fsync_folder(os.path.dirname(path))


def _is_count(v: Any) -> bool:
  return isinstance(v, int) and not isinstance(v, bool) and v >= 0


class PrivacyLedger:
  """The ledger file of one data set: every run's mechanism and steps, composed by dp_accounting.

  Opening reads and checks an existing file (nothing is written until a run
  starts); a missing file is an empty ledger, created by the first
  :meth:`start_run`. Beside it live ``<path>.lock`` (the writers' lock) and,
  briefly, ``<path>.tmp``.

  Args:
    path: the ledger file (its folder must exist).
    dataset: the data set's name, e.g. ``"mnist"``.
    fingerprint: what identifies the data set's content, e.g.
      :meth:`fingerprint` of its arrays (``None``: the name alone).
    neighboring_relation: the relation every run's guarantee is stated under
      (``"add_remove_one"``, ``"replace_one"``, ``"zero_out"``).

  Raises:
    LedgerError: the file exists but is unreadable, damaged, truncated, of a
      newer format version, or records another data set or relation.
  """

  def __init__(self, path: str | os.PathLike, *, dataset: str, fingerprint: str | None = None,
               neighboring_relation: str = mechanisms.ADD_REMOVE_ONE):
    if not isinstance(path, (str, os.PathLike)) or not os.fspath(path):
      raise TypeError(f'path must be a non-empty file path; got {path!r}.')
    if not isinstance(dataset, str) or not dataset:
      raise TypeError(f'dataset must be a non-empty str (the data set\'s name); got {dataset!r}.')
    if fingerprint is not None and (not isinstance(fingerprint, str) or not fingerprint):
      raise TypeError(f'fingerprint must be None or a non-empty str; got {fingerprint!r}.')
    _validation.check_choice('neighboring_relation', neighboring_relation,
                             mechanisms.NEIGHBORING_RELATIONS)
    self.path = os.path.abspath(os.fspath(path))
    self.dataset = dataset
    self.data_fingerprint = fingerprint
    self.neighboring_relation = neighboring_relation
    folder = os.path.dirname(self.path)
    if os.path.isdir(self.path):
      raise LedgerError(f'privacy ledger {self.path!r} is a folder; name a file.')
    if not os.path.isdir(folder):
      raise LedgerError(f'privacy ledger {self.path!r}: its folder {folder!r} does not exist.')
    self._load()  # refuse a bad file now, before the caller does any work

  def __repr__(self) -> str:
    return (f'PrivacyLedger({self.path!r}, dataset={self.dataset!r}, '
            f'neighboring_relation={self.neighboring_relation!r})')

  @staticmethod
  def fingerprint(*arrays: Any) -> str:
    """``"sha256:<hex>"`` identifying a data set given as arrays aligned on axis 0.

    Example ``i`` is ``(arrays[0][i], arrays[1][i], ...)`` (e.g. an image and
    its label); the fingerprint hashes the sorted per-example SHA-256s, so the
    same examples in any order give the same fingerprint, and any changed,
    added or removed example gives another.

    >>> import numpy as np
    >>> x, y = np.arange(6.0).reshape(3, 2), np.array([0, 1, 1])
    >>> a = PrivacyLedger.fingerprint(x, y)
    >>> a == PrivacyLedger.fingerprint(x[::-1], y[::-1]), a.startswith('sha256:')
    (True, True)
    >>> a == PrivacyLedger.fingerprint(x, np.array([0, 1, 0]))
    False
    """
    if not arrays:
      raise ValueError('fingerprint needs at least one array (the data set).')
    arrays = tuple(np.ascontiguousarray(np.asarray(a)) for a in arrays)
    if any(a.ndim == 0 for a in arrays) or len({len(a) for a in arrays}) != 1:
      raise ValueError('fingerprint: the arrays must be aligned on axis 0 (one row per example); '
                       f'got shapes {[a.shape for a in arrays]}.')
    head = ';'.join(f'{a.dtype.str}{a.shape[1:]}' for a in arrays)
    rows = sorted(hashlib.sha256(b''.join(a[i].tobytes() for a in arrays)).digest()
                  for i in range(len(arrays[0])))
    h = hashlib.sha256(f'{head};{len(rows)};'.encode())
    h.update(b''.join(rows))
    return 'sha256:' + h.hexdigest()

  # ------------------------------------------------------------------ reading

  def _new_doc(self) -> dict[str, Any]:
    return {'format': LEDGER_FORMAT, 'version': LEDGER_VERSION,
            'dataset': {'name': self.dataset, 'fingerprint': self.data_fingerprint},
            'neighboring_relation': self.neighboring_relation, 'runs': []}

  def _damaged(self, why: str) -> LedgerError:
    return LedgerError(f'privacy ledger {self.path!r} is damaged ({why}); it was not changed. '
                       'Restore it from a backup: a ledger cannot be rebuilt from the runs.')

  def _load(self) -> dict[str, Any]:
    """The ledger's content, checked; an empty ledger if the file does not exist."""
    try:
      with open(self.path, 'rb') as f:
        raw = f.read()
    except FileNotFoundError:
      return self._new_doc()
    except OSError as e:
      raise LedgerError(f'cannot read privacy ledger {self.path!r}: {e.strerror}.') from None
    try:
      doc = json.loads(raw.decode('utf-8'))
    except (UnicodeDecodeError, json.JSONDecodeError):
      raise self._damaged('not valid JSON: truncated or overwritten' if raw else
                          'empty file') from None
    if not isinstance(doc, dict) or doc.get('format') != LEDGER_FORMAT:
      raise LedgerError(f'{self.path!r} is not a privacy ledger (no "format": '
                        f'"{LEDGER_FORMAT}"); name another file.')
    version = doc.get('version')
    if not _is_count(version) or version < 1:
      raise self._damaged(f'format version {version!r}')
    if version > LEDGER_VERSION:
      raise LedgerError(f'privacy ledger {self.path!r} has format version {version}, newer than '
                        f'this ssgd_optax reads ({LEDGER_VERSION}); upgrade ssgd_optax.')
    if doc.get('sha256') != _digest(doc):
      raise self._damaged('its content does not match its SHA-256')
    self._check_structure(doc)
    have = doc['dataset']
    if (have['name'], have['fingerprint']) != (self.dataset, self.data_fingerprint):
      raise LedgerError(
          f'privacy ledger {self.path!r} records data set {have["name"]!r} (fingerprint '
          f'{have["fingerprint"]}); this run uses {self.dataset!r} (fingerprint '
          f'{self.data_fingerprint}). One ledger per data set: name another file.')
    if doc['neighboring_relation'] != self.neighboring_relation:
      raise LedgerError(
          f'privacy ledger {self.path!r} records guarantees under the '
          f'{doc["neighboring_relation"]!r} relation; this run states '
          f'{self.neighboring_relation!r}. Runs under different relations do not compose: use '
          'one ledger per relation.')
    return doc

  def _check_structure(self, doc: dict[str, Any]) -> None:
    dataset, runs = doc.get('dataset'), doc.get('runs')
    if not (isinstance(dataset, dict) and isinstance(dataset.get('name'), str)
            and (dataset.get('fingerprint') is None or isinstance(dataset['fingerprint'], str))):
      raise self._damaged('no valid "dataset"')
    if doc.get('neighboring_relation') not in mechanisms.NEIGHBORING_RELATIONS:
      raise self._damaged(f'unknown relation {doc.get("neighboring_relation")!r}')
    if not isinstance(runs, list):
      raise self._damaged('no list of runs')
    for i, r in enumerate(runs):
      ok = (isinstance(r, dict) and isinstance(r.get('id'), str) and _is_count(r.get('steps'))
            and _is_count(r.get('planned_steps')) and r.get('status') in _STATUSES)
      if ok:
        try:
          events.event_from_json(r.get('event'))
        except ValueError:
          ok = False
      if not ok:
        raise self._damaged(f'run {i} is not a valid record')

  def runs(self) -> list[dict[str, Any]]:
    """The recorded runs (a copy), oldest first: ``id``, ``label``, ``started``,
    ``mechanism``, ``sampling_rate``, ``event``, ``planned_steps``, ``steps``,
    ``status``."""
    return copy.deepcopy(self._load()['runs'])

  @staticmethod
  def _parts(runs: Sequence[dict[str, Any]]) -> list[tuple[Any, int]]:
    return [(events.event_from_json(r['event']), r['steps']) for r in runs]

  def _compose(self, parts: list[tuple[Any, int]], delta: float, accountant: str) -> float:
    return accounting.compose_epsilon(parts, delta=delta, accountant=accountant,
                                      neighboring_relation=self.neighboring_relation)

  def spent(self, delta: float, *, accountant: accounting.Accountant = 'pld') -> float:
    """Epsilon at ``delta`` of every recorded step of every run, composed by dp_accounting.

    Args:
      delta: in ``(0, 1)``.
      accountant: ``"pld"`` (tightest) or ``"rdp"``.

    Returns:
      epsilon, a Python float (``0.0`` for an empty ledger).
    """
    return self._compose(self._parts(self._load()['runs']), delta, accountant)

  # ----------------------------------------------------------------- budget

  def _planned_part(self, mechanism: Any, sampling_rate: Any, steps: Any,
                    who: str) -> tuple[Any, int]:
    mechanisms.check_mechanism(mechanism, who)
    if mechanism.neighboring_relation != self.neighboring_relation:
      raise LedgerError(
          f'{who}: the mechanism states the {mechanism.neighboring_relation!r} relation; privacy '
          f'ledger {self.path!r} records {self.neighboring_relation!r}. Runs under different '
          'relations do not compose: use one ledger per relation.')
    _validation.check_int('planned_steps', steps, minimum=0)
    one = accounting.make_dp_event(mechanism, sampling_rate=sampling_rate, steps=1)
    step = one.events[0] if hasattr(one, 'events') else one.event
    events.event_to_json(step)  # refuse now an event the file could not record
    return step, int(steps)

  def _exceeded(self, spent_parts, planned_parts, total: float, delta: float,
                accountant: str, refused: str = 'refused before it ran') -> str | None:
    together = self._compose(spent_parts + planned_parts, delta, accountant)
    if together <= total:
      return None
    spent = self._compose(spent_parts, delta, accountant)
    planned = self._compose(planned_parts, delta, accountant)
    n_spent, n_planned = sum(n for _, n in spent_parts), sum(n for _, n in planned_parts)
    # "Releases", not steps or rounds: one count is one application of a run's
    # mechanism (a DP-SGD step; in a federated run, a participant's upload), and one
    # ledger may hold runs of both kinds.
    return (f'privacy ledger {self.path}: spent epsilon {spent:.4g} ({len(spent_parts)} '
            f'run(s), {n_spent:,} releases) and planned {planned:.4g} ({n_planned:,} '
            f'releases) compose to {together:.4g} > total epsilon {total:g} (delta {delta:g}): '
            f'this run would exceed the total: {refused}.')

  def check_total(self, total_epsilon: float, delta: float, *,
                  planned: Sequence[tuple[Any, float | None, int]] = (),
                  accountant: accounting.Accountant = 'pld') -> float:
    """The composed epsilon of the recorded runs and ``planned``; raises if over the total.

    Args:
      total_epsilon: the data set's limit, ``> 0``.
      delta: in ``(0, 1)``.
      planned: runs about to start, as ``(mechanism, sampling_rate, steps)``.
      accountant: ``"pld"`` or ``"rdp"``.

    Returns:
      The composed epsilon of the recorded and the planned steps.

    Raises:
      TotalBudgetExceededError: it exceeds ``total_epsilon`` (the message
        states spent, planned and total).
    """
    total = self._check_total_epsilon(total_epsilon)
    parts = [self._planned_part(m, q, n, 'check_total') for m, q, n in planned]
    spent_parts = self._parts(self._load()['runs'])
    problem = self._exceeded(spent_parts, parts, total, delta, accountant)
    if problem:
      raise TotalBudgetExceededError(problem)
    return self._compose(spent_parts + parts, delta, accountant)

  @staticmethod
  def _check_total_epsilon(total_epsilon: Any) -> float:
    if isinstance(total_epsilon, bool) or not isinstance(total_epsilon, (int, float)):
      raise TypeError(f'total_epsilon must be a number > 0; got {total_epsilon!r}.')
    if not (total_epsilon > 0 and np.isfinite(total_epsilon)):
      raise ValueError(f'total_epsilon must be a finite number > 0; got {total_epsilon!r}.')
    return float(total_epsilon)

  # ----------------------------------------------------------------- writing

  def _update(self, change) -> dict[str, Any]:
    """Reads, changes and atomically rewrites the file under the writers' lock."""
    lock_path = self.path + '.lock'
    try:
      lock = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
      raise LedgerError(f'cannot write privacy ledger {self.path!r}: {e.strerror} '
                        f'({lock_path}).') from None
    try:
      if fcntl is not None:
        fcntl.flock(lock, fcntl.LOCK_EX)
      doc = self._load()
      change(doc)
      doc['sha256'] = _digest(doc)
      data = json.dumps(doc, indent=1, sort_keys=True, allow_nan=False).encode() + b'\n'
      try:
        _atomic_write(self.path, data)
      except OSError as e:
        raise LedgerError(f'cannot write privacy ledger {self.path!r}: {e.strerror}.') from None
      return doc
    finally:
      os.close(lock)  # releases the lock

  def start_run(self, mechanism: Any, *, sampling_rate: float | None = None,
                planned_steps: int, total_epsilon: float | None = None,
                delta: float | None = None, accountant: accounting.Accountant = 'pld',
                label: str = '', steps_per_write: int = 1) -> 'LedgerRun':
    """Records a new run (zero steps yet) and returns its handle; refuses one over the total.

    Args:
      mechanism: the run's mechanism object (its ``dp_event`` is recorded).
      sampling_rate: Poisson ``q`` (``None`` for a mechanism that is not sampled).
      planned_steps: the steps the run intends to take, ``>= 0``.
      total_epsilon: optional limit for the data set: the run is refused if
        the recorded runs and ``planned_steps`` of this one compose to more.
      delta: the delta of ``total_epsilon`` (required with it).
      accountant: ``"pld"`` or ``"rdp"``, for the total.
      label: free text recorded with the run (e.g. the command and workdir).
      steps_per_write: steps each write reserves ahead (fewer fsyncs;
        a kill may then count up to ``steps_per_write - 1`` steps that never
        ran), ``>= 1``.

    Returns:
      A :class:`LedgerRun`: call its :meth:`~LedgerRun.reserve` before each
      release and :meth:`~LedgerRun.finish` at the end.

    Raises:
      TotalBudgetExceededError: the planned steps would exceed ``total_epsilon``;
        nothing is written.
      LedgerError: the mechanism's relation differs from the ledger's, or the
        file cannot be read or written.
    """
    step, planned = self._planned_part(mechanism, sampling_rate, planned_steps, 'start_run')
    _validation.check_int('steps_per_write', steps_per_write, minimum=1)
    if not isinstance(label, str):
      raise TypeError(f'label must be a str; got {type(label).__name__}.')
    total = None
    if total_epsilon is not None:
      total = self._check_total_epsilon(total_epsilon)
      if delta is None:
        raise ValueError('start_run: total_epsilon needs delta= (the delta of the total).')
      _validation.check_choice('accountant', accountant, accounting.ACCOUNTANTS)
    record = {
        'id': uuid.uuid4().hex, 'label': label,
        'started': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
        'mechanism': type(mechanism).__name__,
        'sampling_rate': None if sampling_rate is None else float(sampling_rate),
        'event': events.event_to_json(step), 'planned_steps': planned, 'steps': 0,
        'status': 'running',
    }
    run = LedgerRun(self, record, step, total=total, delta=delta, accountant=accountant,
                    steps_per_write=steps_per_write)

    def add(doc):
      run._check_budget(doc['runs'], planned, 'refused before it ran')
      doc['runs'].append(record)
    self._update(add)
    return run


class LedgerRun:
  """One run's record in a :class:`PrivacyLedger` (made by :meth:`PrivacyLedger.start_run`).

  Attributes:
    ledger: the ledger.
    id: the run's id in the file.
    planned_steps: the steps it planned.
    recorded_steps: the steps the file counts for it now (every released
      step, and possibly some reserved ones that never ran).
  """

  def __init__(self, ledger: PrivacyLedger, record: dict[str, Any], step: Any, *,
               total: float | None, delta: float | None, accountant: str,
               steps_per_write: int):
    self.ledger = ledger
    self.id = record['id']
    self.planned_steps = record['planned_steps']
    self.recorded_steps = 0
    self._step = step
    self._total, self._delta, self._accountant = total, delta, accountant
    self._per_write = steps_per_write
    self._checked = None  # (others as recorded, steps) last found within the total

  def __repr__(self) -> str:
    return f'LedgerRun(id={self.id!r}, recorded_steps={self.recorded_steps})'

  def _check_budget(self, runs: list[dict[str, Any]], steps: int, refused: str) -> None:
    """Raises :class:`TotalBudgetExceededError` if ``runs`` (the others) and ``steps`` of
    this run exceed the total (no-op without a total)."""
    if self._total is None:
      return
    others = [r for r in runs if r['id'] != self.id]
    seen = [(r['id'], r['steps'], r['event']) for r in others]
    if self._checked is not None and self._checked[0] == seen and steps <= self._checked[1]:
      return
    problem = self.ledger._exceeded(PrivacyLedger._parts(others), [(self._step, steps)],
                                    self._total, self._delta, self._accountant, refused)
    if problem:
      raise TotalBudgetExceededError(problem)
    self._checked = (seen, steps)

  def _write(self, steps: int, status: str) -> None:
    def change(doc):
      mine = [r for r in doc['runs'] if r['id'] == self.id]
      if len(mine) != 1:
        raise self.ledger._damaged(f'run {self.id} is missing')
      if steps > self.recorded_steps:
        self._check_budget(doc['runs'], steps,
                           f'stopped before its release {self.recorded_steps + 1}')
      mine[0]['steps'] = steps
      mine[0]['status'] = status
    self.ledger._update(change)
    self.recorded_steps = steps

  def reserve(self, steps: int) -> None:
    """Makes the file count at least ``steps`` steps of this run, before they are released.

    Call it with the number of steps that will have run once the next step
    is done (``t + 1`` before step ``t``); it writes (and fsyncs) only
    when that exceeds ``recorded_steps``, then reserving
    ``steps_per_write`` steps (at most up to ``planned_steps``) at once.

    Raises:
      TotalBudgetExceededError: the reservation would take the data set over
        its total (nothing written: do not release the step).
    """
    _validation.check_int('steps', steps, minimum=0)
    if steps <= self.recorded_steps:
      return
    ahead = max(steps, min(steps + self._per_write - 1, self.planned_steps))
    try:
      self._write(ahead, 'running')
    except TotalBudgetExceededError:
      if ahead == steps:
        raise
      self._write(steps, 'running')  # the block does not fit; the next step may

  def finish(self, steps: int) -> None:
    """Records that the run ended after ``steps`` released steps (``<=`` those recorded).

    Raises:
      ValueError: ``steps`` exceeds the recorded steps: steps were released
        without :meth:`reserve`, and the ledger under-counted them.
    """
    _validation.check_int('steps', steps, minimum=0)
    if steps > self.recorded_steps:
      raise ValueError(f'finish({steps}): only {self.recorded_steps} steps were reserved; '
                       'call reserve() before releasing each step.')
    self._write(steps, 'ended')
