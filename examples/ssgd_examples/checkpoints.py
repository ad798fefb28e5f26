# Copyright 2026 The ssgd_optax Authors. Licensed under the Apache License 2.0.
"""Run folders, resume and verified checkpoints of the example scripts.

What ``examples/train.py``, ``examples/dp_train.py`` and ``examples/dp_ssgd.py``
share so that a run survives a kill:

* **run folders** (:func:`fresh_run_dir`, :func:`newest_run`,
  :func:`check_workdir`) and **resume** (:func:`merge_resume`): a run writes
  ``config.json`` into its ``--workdir``; ``--resume`` reads it back, takes
  from the command line only the flags marked ``resume_may_differ`` and
  refuses any other flag that contradicts the run, before any work.
* **verified checkpoints** (:class:`Checkpointer`, on orbax): orbax already
  checks its own files (JSON metadata, OCDBT manifests and their CRC-32C) and
  commits a step by renaming a temporary folder, but not the array bytes: a
  flipped bit in a parameter file loads silently. Every save therefore records
  a SHA-256 of every array (and of the record itself) in the checkpoint's JSON,
  and every restore recomputes and compares them. A damaged checkpoint (any
  file truncated, flipped or missing) is named in a one-line warning, set
  aside as ``<step>.damaged`` and the newest intact one is used; an incomplete
  one (a kill during its write) is named and removed; no traceback reaches the
  user.
* **secret keys** (:func:`keys_out`, :func:`keys_in`): the DP noise keys in
  an optimizer state come from the operating system and must not be written
  next to the model; they are saved as zeros and a resumed run draws fresh ones
  (with ``--reproducible-noise`` they derive from ``--seed``, are no secret, and
  are saved so that a resumed run is bit-identical).
* **the DP scripts' runs** (:class:`RunFlags`, :class:`DPCheckpoints`,
  :class:`TreeCheckpoints`, :func:`prepare_workdir`, :func:`read_results`,
  :func:`open_ledger`): the run, resume and ledger flags, checkpoints of model,
  optimizer and budget tracker (or of any pytree of state, e.g.
  ``examples/federated.py``'s simulation), the finished trainings of a
  command, the data set's privacy ledger.
* **fault injection** (:func:`fault_point`) for the kill tests.

Example:

>>> import tempfile, numpy as np
>>> folder = tempfile.mkdtemp()
>>> with Checkpointer(folder) as ckpt:
...   ckpt.save(1, {'w': np.arange(3.0)}, {'epoch': 1})
>>> with Checkpointer(folder) as ckpt:
...   restored = ckpt.restore({'w': np.zeros(3)})
>>> restored.step, restored.state['w'].tolist(), restored.meta
(1, [0.0, 1.0, 2.0], {'epoch': 1})
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import numpy as np

from ssgd_examples import cli

__all__ = ['check_workdir', 'Checkpointer', 'DPCheckpoints', 'exit_with_error', 'fault_point',
           'fresh_run_dir', 'holds_dp_run', 'IncompatibleCheckpoint', 'keys_in', 'keys_out',
           'latest_step', 'merge_resume', 'newest_run', 'open_ledger', 'prepare_workdir',
           'read_config', 'read_results', 'Restored', 'RunFlags', 'tree_digests',
           'TreeCheckpoints', 'write_results']

_FORMAT = 'ssgd_examples checkpoint'
_VERSION = 1
_TMP = re.compile(r'^(\d+)\.orbax-checkpoint-tmp')


def exit_with_error(message: str) -> None:
  """Ends the program with ``<prog>: error: message`` (one line) and exit status 2."""
  prog = os.path.basename(sys.argv[0]) or 'python'
  print(f'{prog}: error: {message}', file=sys.stderr, flush=True)
  raise SystemExit(2)


# ------------------------------------------------------------ fault injection

_HITS: dict[str, int] = {}


def fault_point(name: str) -> None:
  """A place where the kill tests may stop this process (``SIGKILL``, no clean-up).

  With ``SSGD_EXAMPLES_KILL_AT=name:n`` the ``n``-th call of
  ``fault_point(name)`` kills the process; with ``SSGD_EXAMPLES_FAULT_LOG=path``
  every call first appends ``"name count"`` to ``path`` (how the tests learn
  how many steps a killed run released). Without them it does nothing.
  The scripts call it after dispatching each training step (``"step"``) and
  after starting each checkpoint write (``"checkpoint"``).
  """
  log, kill = os.environ.get('SSGD_EXAMPLES_FAULT_LOG'), os.environ.get('SSGD_EXAMPLES_KILL_AT')
  if not (log or kill):
    return
  _HITS[name] = count = _HITS.get(name, 0) + 1
  if log:
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
      os.write(fd, f'{name} {count}\n'.encode())
    finally:
      os.close(fd)
  if kill and kill == f'{name}:{count}':
    os.kill(os.getpid(), signal.SIGKILL)


# ---------------------------------------------------------------- run folders


def latest_step(folder: str) -> int | None:
  """The newest checkpoint step in ``folder`` (from the folder names: no file is read)."""
  steps = [int(n) for n in (os.listdir(folder) if os.path.isdir(folder) else ()) if n.isdigit()]
  return max(steps) if steps else None


def newest_run(root: str, holds_run: Callable[[str], bool]) -> str | None:
  """The most recently modified folder under ``root`` for which ``holds_run`` is true."""
  if not os.path.isdir(root):
    return None
  runs = [os.path.join(root, n) for n in sorted(os.listdir(root))]
  runs = [r for r in runs if os.path.isdir(r) and holds_run(r)]
  return max(runs, key=os.path.getmtime) if runs else None


def fresh_run_dir(root: str) -> str:
  """``<root>/<date-time>``, never an existing folder (process 0's choice in a job)."""
  stamp = time.strftime('%Y%m%d-%H%M%S')
  path, n = os.path.join(root, stamp), 1
  while os.path.exists(path):
    n += 1
    path = os.path.join(root, f'{stamp}-{n}')
  import jax  # pylint: disable=import-outside-toplevel
  if jax.process_count() > 1:  # every process must write to the same folder
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
    # Process 0's path as fixed-size bytes (the processes' clocks and views
    # of the folder may differ; an int64 stamp would be cut to int32).
    chars = np.zeros(512, np.uint8)
    encoded = np.frombuffer(path.encode(), np.uint8)[:512]
    chars[:len(encoded)] = encoded
    chars = np.asarray(multihost_utils.broadcast_one_to_all(chars)).astype(np.uint8)
    path = chars.tobytes().rstrip(b'\0').decode()
  return path


def check_workdir(workdir: str | None) -> None:
  """Refuses a ``--workdir`` that is a file or cannot be written (``ValueError``, one line).

  Probes by creating and removing a file, which also catches folders that
  are read-only to root (an immutable flag, a read-only mount).
  """
  if not workdir:
    return
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise ValueError(f'--workdir {workdir!r} is a file; name a folder (existing or new).')
  folder = workdir
  while not os.path.exists(folder):
    parent = os.path.dirname(os.path.abspath(folder))
    if parent == os.path.abspath(folder):
      break
    folder = parent
  if not os.path.isdir(folder):
    raise ValueError(f'--workdir {workdir!r} cannot be created: {folder!r} is a file.')
  probe = os.path.join(folder, f'.ssgd-write-probe-{os.getpid()}')
  try:
    with open(probe, 'w'):
      pass
    os.remove(probe)
  except OSError as e:
    raise ValueError(f'--workdir {workdir!r} is not writable ({folder}: {e.strerror}).') from None


def read_config(workdir: str) -> dict[str, Any]:
  """The saved configuration of the run in ``workdir`` (``config.json``), or a ``ValueError``."""
  path = os.path.join(workdir, 'config.json')
  if not os.path.exists(path):
    raise ValueError(f'--resume: {path!r} does not exist (no run to continue in --workdir '
                     f'{workdir!r}).')
  try:
    with open(path, encoding='utf-8') as f:
      saved = json.load(f)
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise ValueError(f'--resume: {path!r} is unreadable or damaged ({type(e).__name__}); the '
                     'run cannot be continued: start a new one.') from None
  if not isinstance(saved, dict):
    raise ValueError(f'--resume: {path!r} holds no configuration; start a new run.')
  return saved


def merge_resume(config: Any, explicit: set[str], *, runs_dir: str) -> Any:
  """The run's saved configuration, with the flags given on the command line.

  Args:
    config: the parsed dataclass (fields ``workdir`` and those of
      :func:`ssgd_examples.cli.flag`).
    explicit: names of the fields given explicitly on the command line.
    runs_dir: where runs without ``--workdir`` live (the newest one with a
      ``config.json`` is resumed, even if it was killed before its first
      checkpoint).

  Returns:
    The merged configuration, with ``workdir`` set.

  Raises:
    ValueError: a flag contradicts the run (only fields marked
      ``resume_may_differ`` may change), or there is nothing to resume.
  """
  cls = type(config)
  workdir = config.workdir
  if workdir is None:
    workdir = newest_run(runs_dir, lambda w: os.path.exists(os.path.join(w, 'config.json')))
    if workdir is None:
      raise ValueError(f'--resume without --workdir continues the newest run under {runs_dir}; '
                       'there is none.')
  saved = read_config(workdir)
  free = {f.name for f in dataclasses.fields(cls) if f.metadata.get('resume_may_differ')}
  fields = {f.name for f in dataclasses.fields(cls)}
  conflicts = []
  for name in sorted(explicit - free):
    want, have = getattr(config, name), saved.get(name)
    if isinstance(want, tuple) and isinstance(have, list):
      have = tuple(have)
    if want != have:
      conflicts.append(f'{cli.flag_name(name)} {want!r} (the checkpoint has {have!r})')
  if conflicts:
    raise ValueError(f'cannot resume the run in {workdir!r} with different settings: '
                     + ', '.join(conflicts) + '. Leave these flags out (they are read from the '
                     'checkpoint) or start a new run.')
  merged = {k: tuple(v) if isinstance(v, list) else v for k, v in saved.items()
            if k in fields and k not in free}
  merged.update({k: getattr(config, k) for k in free})
  merged['workdir'] = workdir
  try:
    return cls(**merged)
  except TypeError as e:
    raise ValueError(f'--resume: {workdir}/config.json does not match this script ({e}).') from None


# ---------------------------------------------------------------- digests


def _leaves(tree: Any) -> list[tuple[str, Any]]:
  import jax  # pylint: disable=import-outside-toplevel
  return [(jax.tree_util.keystr(p), leaf)
          for p, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]]


def _sha256(a: Any) -> str:
  a = np.ascontiguousarray(np.asarray(a))
  h = hashlib.sha256(f'{a.dtype.str}{a.shape};'.encode())
  h.update(memoryview(a).cast('B') if a.size else b'')
  return h.hexdigest()


def _shapes(tree: Any) -> dict[str, str]:
  return {path: f'{np.dtype(leaf.dtype).str}{tuple(np.shape(leaf))}'
          for path, leaf in _leaves(tree)}


def tree_digests(tree: Any) -> dict[str, str]:
  """``{leaf path: SHA-256 of its dtype, shape and bytes}``."""
  return {path: _sha256(leaf) for path, leaf in _leaves(tree)}


def _record_digest(record: dict[str, Any]) -> str:
  body = {k: v for k, v in record.items() if k != 'sha256'}
  return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(',', ':')).encode()
                        ).hexdigest()


# --------------------------------------------------------------- secret keys


def _is_key(x: Any) -> bool:
  import jax  # pylint: disable=import-outside-toplevel
  dtype = getattr(x, 'dtype', None)
  return dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)


def keys_out(tree: Any, *, keep: bool) -> Any:
  """``tree`` with each PRNG key replaced by its ``uint32`` data (``keep``) or by zeros.

  >>> import jax
  >>> keys_out({'k': jax.random.key(1), 'w': np.ones(2)}, keep=False)['k'].tolist()
  [0, 0]
  """
  import jax  # pylint: disable=import-outside-toplevel

  def out(x):
    if not _is_key(x):
      return x
    data = jax.random.key_data(x)
    return data if keep else jax.numpy.zeros_like(data)
  return jax.tree.map(out, tree)


def keys_in(restored: Any, like: Any, *, keep: bool) -> Any:
  """Puts keys back into ``restored`` (from :func:`keys_out`): the saved ones (``keep``)
  or ``like``'s (the fresh keys of the resumed run)."""
  import jax  # pylint: disable=import-outside-toplevel

  def back(r, fresh):
    if not _is_key(fresh):
      return r
    return jax.random.wrap_key_data(r, impl=jax.random.key_impl(fresh)) if keep else fresh
  return jax.tree.map(back, restored, like)


# --------------------------------------------------------------- checkpoints


class Restored(NamedTuple):
  """What :meth:`Checkpointer.restore` returns."""
  step: int
  state: Any
  meta: dict[str, Any]


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
  """Keeps a damaged file's noise (orbax's logged errors, tensorstore coroutines that
  die with an exception) off the user's terminal: the caller reports it in one line."""
  loggers = [logging.getLogger(n) for n in ('absl', 'orbax', 'jax')]
  levels = [lg.level for lg in loggers]
  hook = sys.unraisablehook
  for lg in loggers:
    lg.setLevel(logging.CRITICAL)
  sys.unraisablehook = lambda unraisable: None
  failed = False
  try:
    yield
  except BaseException:
    failed = True
    raise
  finally:
    if failed:
      gc.collect()  # finalises the failed reads' coroutines while their noise is muted
    sys.unraisablehook = hook
    for lg, level in zip(loggers, levels):
      lg.setLevel(level)


def _why(err: BaseException) -> str:
  text = ' '.join(str(err).split())
  if isinstance(err, (json.JSONDecodeError, UnicodeDecodeError)):
    return f'unreadable JSON metadata ({type(err).__name__})'
  if isinstance(err, FileNotFoundError):
    return 'a file is missing'
  for code in ('DATA_LOSS', 'OUT_OF_RANGE', 'NOT_FOUND', 'INVALID_ARGUMENT', 'FAILED_PRECONDITION'):
    if code in text:
      return f'orbax/tensorstore: {code}'
  return f'{type(err).__name__}: {text[:80]}'


class Checkpointer:
  """Verified orbax checkpoints in one folder (see the module docstring).

  Args:
    folder: the checkpoints' folder (created).
    max_to_keep: checkpoints kept (the older ones are deleted by orbax).
    primary: whether this process writes (in a multi-process job only process
      0 does; every process reads for itself).
    process_local: a multi-process job: each process writes/reads alone,
      never waiting on another's file I/O.
  """

  def __init__(self, folder: str, *, max_to_keep: int = 2, primary: bool = True,
               process_local: bool = False):
    import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
    self.folder = os.path.abspath(folder)
    self.primary = primary
    self._process_local = process_local
    self._report_incomplete()
    kw: dict[str, Any] = {'create': primary and not process_local,
                          'cleanup_tmp_directories': primary}
    if process_local:
      import jax  # pylint: disable=import-outside-toplevel
      pid = jax.process_index()
      kw.update(create=False, multiprocessing_options=ocp.options.MultiprocessingOptions(
          primary_host=pid, active_processes={pid}))
      os.makedirs(self.folder, exist_ok=True)
    try:
      with _quiet():  # orbax logs each unreadable step's metadata file; restore() reports them
        self._manager = ocp.CheckpointManager(
            self.folder, options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, **kw))
    except Exception as e:  # pylint: disable=broad-except
      raise ValueError(f'cannot open the checkpoints in {self.folder!r}: {_why(e)}.') from None

  def __enter__(self) -> 'Checkpointer':
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  def _report_incomplete(self) -> None:
    if not (self.primary and os.path.isdir(self.folder)):
      return
    for name in sorted(os.listdir(self.folder)):
      m = _TMP.match(name)
      if m:
        print(f'warning: checkpoint {m.group(1)} in {self.folder} is incomplete (the run stopped '
              'while writing it): removed', file=sys.stderr, flush=True)
        shutil.rmtree(os.path.join(self.folder, name), ignore_errors=True)

  def steps(self) -> list[int]:
    """The committed checkpoint steps, oldest first."""
    with _quiet():
      return sorted(self._manager.all_steps())

  def save(self, step: int, state: Any, meta: dict[str, Any]) -> None:
    """Starts writing ``state`` (arrays) and ``meta`` (JSON values) as checkpoint ``step``.

    The SHA-256 of every array is recorded with ``meta``. The write finishes
    in the background (orbax); :meth:`wait` or :meth:`close` waits for it.
    """
    import jax  # pylint: disable=import-outside-toplevel
    import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
    if self._process_local:
      state = jax.tree.map(np.asarray, state)
    record = {'format': _FORMAT, 'version': _VERSION, 'meta': meta,
              'arrays': _shapes(state), 'digests': tree_digests(state)}
    record['sha256'] = _record_digest(record)
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(record)))
    fault_point('checkpoint')

  def _meta(self, step: int) -> dict[str, Any]:
    """Checkpoint ``step``'s record, checked; raises on a damaged one."""
    import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
    return self._check_record(self._manager.restore(step, args=ocp.args.Composite(
        meta=ocp.args.JsonRestore())).meta)

  @staticmethod
  def _check_record(record: Any) -> dict[str, Any]:
    if not isinstance(record, dict) or record.get('format') != _FORMAT:
      raise _Damaged('no checkpoint record (written by another program?)')
    if not isinstance(record.get('version'), int) or record['version'] > _VERSION:
      raise _Damaged(f'record format version {record.get("version")!r}, newer than this script '
                     f'reads ({_VERSION})')
    if record.get('sha256') != _record_digest(record):
      raise _Damaged('its record does not match its SHA-256')
    return record

  def latest_meta(self) -> tuple[int, dict[str, Any]] | None:
    """``(step, meta)`` of the newest checkpoint whose record is intact (arrays not read)."""
    for step in reversed(self.steps()):
      try:
        with _quiet():
          return step, self._meta(step)['meta']
      except Exception:  # pylint: disable=broad-except
        continue
    return None

  def restore(self, like: Any) -> Restored | None:
    """The newest intact checkpoint, verified, restored with ``like``'s shapes and dtypes.

    Each damaged checkpoint on the way is named in a one-line warning (on
    stderr) and, on the primary process, renamed ``<step>.damaged``.

    Args:
      like: a tree with the structure, shapes, dtypes (and shardings) to restore.

    Returns:
      :class:`Restored`, or ``None`` when there is no intact checkpoint.
    """
    import jax  # pylint: disable=import-outside-toplevel
    import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
    damaged = []
    found = None
    for step in reversed(self.steps()):
      try:
        with _quiet():
          restored = self._manager.restore(step, args=ocp.args.Composite(
              state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
          record = self._check_record(restored.meta)
          self._check_arrays(step, record, like)
          state = restored.state
          self._verify(state, record['digests'])
      except IncompatibleCheckpoint:
        raise
      except Exception as e:  # pylint: disable=broad-except
        self._refuse_incompatible(step, like)
        damaged.append((step, e.args[0] if isinstance(e, _Damaged) else _why(e)))
        continue
      found = Restored(step, state, record['meta'])
      break
    for step, why in damaged:
      aside = self._set_aside(step)
      print(f'warning: checkpoint {step} in {self.folder} is damaged ({why})'
            + (f', set aside as {os.path.basename(aside)}' if aside else '')
            + (f'; using checkpoint {found.step}, the newest intact one' if found else
               '; no intact checkpoint is left'), file=sys.stderr, flush=True)
    return found

  def _refuse_incompatible(self, step: int, like: Any) -> None:
    """Raises :class:`IncompatibleCheckpoint` if ``step``'s intact record holds other arrays
    than ``like`` (another model or optimizer: not damage, so nothing is set aside)."""
    try:
      with _quiet():
        record = self._meta(step)
    except Exception:  # pylint: disable=broad-except
      return  # a damaged record: the caller reports it
    self._check_arrays(step, record, like)

  def _check_arrays(self, step: int, record: dict[str, Any], like: Any) -> None:
    want, have = _shapes(like), record.get('arrays')
    if isinstance(have, dict) and have != want:
      differ = sorted(set(want) ^ set(have)) or [p for p in want if want[p] != have[p]]
      raise IncompatibleCheckpoint(
          f'checkpoint {step} in {self.folder} holds other arrays than this run builds (first: '
          f'{differ[0]}): it was written by another model, optimizer or version of the script; '
          'start a new run or restore it with the code that wrote it.')

  @staticmethod
  def _verify(state: Any, digests: Any) -> None:
    got = tree_digests(state)
    if not isinstance(digests, dict) or set(got) != set(digests):
      raise _Damaged('its arrays do not match the recorded ones')
    for path, digest in got.items():
      if digests[path] != digest:
        raise _Damaged(f'the data of {path} does not match its SHA-256')

  def _set_aside(self, step: int) -> str | None:
    if not self.primary:
      return None
    src = os.path.join(self.folder, str(step))
    dst, n = src + '.damaged', 1
    while os.path.exists(dst):
      n += 1
      dst = f'{src}.damaged-{n}'
    try:
      os.rename(src, dst)
    except OSError:
      return None
    self._manager.reload()
    return dst

  def wait(self) -> None:
    """Waits until the checkpoint being written is committed."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    """Waits for the write in flight and releases orbax's resources."""
    self._manager.wait_until_finished()
    self._manager.close()


class _Damaged(Exception):
  """A checkpoint that fails verification (the message says how)."""


class IncompatibleCheckpoint(ValueError):
  """An intact checkpoint of other arrays than the run restores into (never set aside)."""


# ------------------------------------------------------------- DP training


class DPCheckpoints:
  """The checkpoints of one DP training loop: model, optimizer and budget tracker.

  The optimizer's PRNG keys (the noise keys) are saved as zeros unless
  ``keep_keys`` (``--reproducible-noise``: keys derived from ``--seed``, no
  secret); a resumed run then keeps the fresh keys its optimizer was built
  with. The tracker's :meth:`~ssgd_optax.privacy.BudgetTracker.state_dict` is
  saved, so a resumed run reports the steps and epsilon of an uninterrupted one.

  Args:
    folder: the checkpoints' folder, or ``None`` (no checkpoints).
    keep_keys: save the noise keys (only when they are not secret).
    every: steps between checkpoints.
  """

  def __init__(self, folder: str | None, *, keep_keys: bool, every: int):
    self.folder = folder
    self.keep_keys = keep_keys
    self.every = every
    self._ckpt = Checkpointer(folder) if folder else None

  def restore(self, model: Any, optimizer: Any, tracker: Any) -> int:
    """Restores the newest intact checkpoint in place; returns its step (0 if none)."""
    if self._ckpt is None:
      return 0
    from flax import nnx  # pylint: disable=import-outside-toplevel
    had = bool(self._ckpt.steps())
    fresh = nnx.state(optimizer)
    restored = self._ckpt.restore({'model': nnx.state(model),
                                   'optimizer': keys_out(fresh, keep=True)})
    if restored is None:
      if had:
        print(f'no intact checkpoint in {self.folder}: training from step 0', file=sys.stderr,
              flush=True)
      return 0
    meta = restored.meta
    keep = self.keep_keys and meta.get('noise_keys') == 'saved'
    nnx.update(model, restored.state['model'])
    nnx.update(optimizer, keys_in(restored.state['optimizer'], fresh, keep=keep))
    if tracker is not None:
      try:
        tracker.load_state_dict(meta['tracker'])
      except (ValueError, TypeError) as e:
        raise IncompatibleCheckpoint(f'checkpoint {restored.step} in {self.folder}: the budget '
                                     f'tracker cannot continue from it: {e}') from None
    return int(meta['step'])

  def save(self, step: int, model: Any, optimizer: Any, tracker: Any, *,
           force: bool = False) -> None:
    """Saves checkpoint ``step`` if it is due (every ``every`` steps) or ``force``."""
    if self._ckpt is None or not (force or step % self.every == 0):
      return
    from flax import nnx  # pylint: disable=import-outside-toplevel
    if step in self._ckpt.steps():
      return
    state = {'model': nnx.state(model),
             'optimizer': keys_out(nnx.state(optimizer), keep=self.keep_keys)}
    self._ckpt.save(step, state, {
        'step': step, 'tracker': None if tracker is None else tracker.state_dict(),
        'noise_keys': 'saved' if self.keep_keys else 'omitted (secret)'})

  def close(self) -> None:
    if self._ckpt is not None:
      self._ckpt.close()


class TreeCheckpoints:
  """The checkpoints of a loop whose state is one pytree (arrays and PRNG keys) plus JSON.

  What :class:`DPCheckpoints` does for an NNX model and optimizer, for any
  pytree (``examples/federated.py``: the simulation's server, participants
  and keys): the PRNG keys in it are saved as zeros unless ``keep_keys``, and a
  restore puts back the keys of the tree it is given (the fresh ones of the
  resumed run) or, with ``keep_keys``, the saved ones.

  Args:
    folder: the checkpoints' folder, or ``None`` (no checkpoints).
    keep_keys: save the PRNG keys (only when they are not secret).
    every: steps (rounds) between checkpoints.
  """

  def __init__(self, folder: str | None, *, keep_keys: bool, every: int):
    self.folder = folder
    self.keep_keys = keep_keys
    self.every = every
    self._ckpt = Checkpointer(folder) if folder else None

  def restore(self, like: Any) -> Restored | None:
    """The newest intact checkpoint as ``like``'s tree (its keys where none were saved)."""
    if self._ckpt is None:
      return None
    had = bool(self._ckpt.steps())
    restored = self._ckpt.restore(keys_out(like, keep=True))
    if restored is None:
      if had:
        print(f'no intact checkpoint in {self.folder}: starting from the beginning',
              file=sys.stderr, flush=True)
      return None
    keep = self.keep_keys and restored.meta.get('noise_keys') == 'saved'
    return restored._replace(state=keys_in(restored.state, like, keep=keep))

  def save(self, step: int, state: Any, meta: dict[str, Any], *, force: bool = False) -> None:
    """Saves checkpoint ``step`` if it is due (every ``every`` steps) or ``force``."""
    if self._ckpt is None or not (force or step % self.every == 0):
      return
    if step in self._ckpt.steps():
      return
    self._ckpt.save(step, keys_out(state, keep=self.keep_keys), {
        **meta, 'noise_keys': 'saved' if self.keep_keys else 'omitted (secret)'})

  def close(self) -> None:
    if self._ckpt is not None:
      self._ckpt.close()


# ------------------------------------------------------ the DP scripts' runs


@dataclasses.dataclass(frozen=True)
class RunFlags:
  """The run-folder, resume and privacy-ledger flags of the DP scripts (a base class).

  A subclass may redefine a field (its help text) and set ``LEDGER_IS_FOLDER``
  (``--ledger`` then names a folder of ledgers, e.g. one per participant).
  """
  LEDGER_IS_FOLDER = False
  workdir: str | None = cli.flag(
      None, "config.json, results.json and checkpoints/ (default: a fresh "
      "runs/<script>/<date-time> per run; '' = write nothing)", resume_may_differ=True)
  resume: bool = cli.flag(False, 'continue the run in --workdir (default: the newest run of this '
                          'script) from its newest intact checkpoints, with its configuration',
                          resume_may_differ=True)
  overwrite: bool = cli.flag(False, 'delete the checkpoints and results already in --workdir',
                             resume_may_differ=True)
  checkpoint_every: int | None = cli.flag(None, 'steps between checkpoints (default: one epoch)',
                                          type=int, check=cli.at_least(1),
                                          resume_may_differ=True)
  stop_after_steps: int | None = cli.flag(
      None, 'stop a training after this many steps, as if preempted; then --resume', type=int,
      check=cli.at_least(1), resume_may_differ=True)
  ledger: str | None = cli.flag(
      None, "the data set's privacy ledger: a file recording every run on it, written before "
      'each step is released (created if missing; see docs/privacy.md)')
  total_epsilon: float | None = cli.flag(
      None, "refuse a run that would take the ledger's composed epsilon (at --delta) over this "
      'total; needs --ledger', type=float, check=cli.finite(positive=True),
      resume_may_differ=True)

  def __post_init__(self):
    # The ledger is a file outside the run: kept as an absolute path, so that a
    # run resumed from another folder records into the same ledger.
    if self.ledger:
      object.__setattr__(self, 'ledger', os.path.abspath(self.ledger))

  def validate_run(self) -> None:
    """Checks the run flags together; raises ``ValueError`` naming them."""
    if self.workdir == '' and (self.resume or self.overwrite or self.stop_after_steps):
      raise ValueError("--resume, --overwrite and --stop-after-steps need --workdir (where "
                       "checkpoints live); got --workdir ''.")
    if self.resume and self.overwrite:
      raise ValueError('--resume and --overwrite exclude each other.')
    check_workdir(self.workdir)
    if self.workdir and not (self.resume or self.overwrite) and holds_dp_run(self.workdir):
      raise ValueError(f'--workdir {self.workdir!r} already holds a run: pass --resume to '
                       'continue it, --overwrite to start it afresh, or leave out --workdir to '
                       'get a fresh folder.')
    if self.total_epsilon is not None and self.ledger is None:
      raise ValueError('--total-epsilon needs --ledger (the file that records every run on the '
                       'data set, whose composed total it limits).')
    if self.ledger is not None:
      if self.LEDGER_IS_FOLDER:
        if os.path.exists(self.ledger) and not os.path.isdir(self.ledger):
          raise ValueError(f'--ledger {self.ledger!r} is a file; name a folder (one ledger '
                           'file per participant in it; created if missing).')
      elif os.path.isdir(self.ledger):
        raise ValueError(f'--ledger {self.ledger!r} is a folder; name a file.')
      folder = os.path.dirname(os.path.abspath(self.ledger))
      if not os.path.isdir(folder):
        raise ValueError(f'--ledger {self.ledger!r}: the folder {folder!r} does not exist.')


def holds_dp_run(workdir: str) -> bool:
  """Whether ``workdir`` holds a DP script's run (results or checkpoints)."""
  if os.path.exists(os.path.join(workdir, 'results.json')):
    return True
  root = os.path.join(workdir, 'checkpoints')
  return os.path.isdir(root) and any(latest_step(os.path.join(root, n)) is not None
                                     for n in os.listdir(root))


def prepare_workdir(config: Any, runs_dir: str) -> str:
  """The run's folder (``''``: none), made ready: created, cleared by ``--overwrite``,
  ``config.json`` written for a new run."""
  workdir = config.workdir if config.workdir is not None else fresh_run_dir(runs_dir)
  if not workdir:
    return ''
  os.makedirs(workdir, exist_ok=True)
  if config.overwrite:
    shutil.rmtree(os.path.join(workdir, 'checkpoints'), ignore_errors=True)
    with contextlib.suppress(FileNotFoundError):
      os.remove(os.path.join(workdir, 'results.json'))
  if not config.resume:
    saved = dataclasses.asdict(dataclasses.replace(config, workdir=workdir))
    _write_json(os.path.join(workdir, 'config.json'), saved)
  return workdir


def _write_json(path: str, value: Any) -> None:
  tmp = path + '.tmp'
  with open(tmp, 'w', encoding='utf-8') as f:
    json.dump(value, f, indent=2)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def read_results(workdir: str) -> dict[str, Any]:
  """The finished trainings of the run in ``workdir`` (``results.json``; ``{}`` if none)."""
  path = os.path.join(workdir, 'results.json') if workdir else ''
  if not path or not os.path.exists(path):
    return {}
  try:
    with open(path, encoding='utf-8') as f:
      results = json.load(f)
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    print(f'warning: {path} is unreadable ({type(e).__name__}); its trainings are resumed from '
          'their checkpoints', file=sys.stderr, flush=True)
    return {}
  return results if isinstance(results, dict) else {}


def write_results(workdir: str, results: dict[str, Any]) -> None:
  """Records the finished trainings (atomically: a kill leaves the old file or the new)."""
  if workdir:
    _write_json(os.path.join(workdir, 'results.json'), results)


def open_ledger(path: str | None, *, dataset: str, arrays: tuple[Any, ...],
                neighboring_relation: str = 'add_remove_one') -> Any:
  """The data set's :class:`~ssgd_optax.privacy.PrivacyLedger` (``None`` without ``path``);
  a bad ledger ends the program with one line and exit status 2, before any work."""
  if path is None:
    return None
  from ssgd_optax import privacy  # pylint: disable=import-outside-toplevel
  try:
    return privacy.PrivacyLedger(path, dataset=dataset,
                                 fingerprint=privacy.PrivacyLedger.fingerprint(*arrays),
                                 neighboring_relation=neighboring_relation)
  except privacy.LedgerError as e:
    exit_with_error(str(e))
