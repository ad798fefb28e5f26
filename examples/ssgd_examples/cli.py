# Copyright 2026 The ssgd_optax Authors. Licensed under the Apache License 2.0.
"""The examples' command-line layer: each configuration is written once.

An example declares its configuration as a frozen dataclass whose fields are
made with :func:`flag` (default, help, per-field check). :func:`build_parser`
turns the fields into argparse flags (``batch_size`` -> ``--batch-size``) and
:func:`parse` returns the dataclass after every check has run, before any
data is read or anything compiled. A bad value ends the program with argparse's
usage line, a message that names the flag, and exit status 2
(``parser.error``). Checks that need several fields live in the dataclass's
``validate()`` method, which raises ``ValueError`` naming the flags.

Examples, benchmarks and tests share it (``from ssgd_examples import cli``).
Every script ends with ``cli.run(main, sys.argv[1:])``, which gives all of
them the same exits: Ctrl-C prints one line and exits 130 (:func:`run`,
:func:`handle_interrupts`), third-party log noise stays hidden unless the
configuration's ``--verbose`` (:func:`set_verbose`), and a missing data file
is one line. Output flags (:func:`output_flag`) are checked with the other
flags; a benchmark without ``--out`` writes to a new file under
``runs/benchmarks/`` (:func:`write_output`). ``parse(..., quick=...)`` gives
``--quick`` its small values for the flags not given explicitly.

To move a script onto the layer: import ``cli`` before JAX (so that Ctrl-C
during the imports is one line too), write its flags as a frozen dataclass
of :func:`flag` fields with checks (``validate()`` for combinations, files
and folders included), add ``verbose: bool = cli.verbose_flag()``, parse
with ``cli.parse(Config, argv, quick=QUICK)``, write with
``cli.write_output(config.out, text, name=...)`` and end with
``cli.run(main, sys.argv[1:])``.

Example:

>>> import dataclasses
>>> @dataclasses.dataclass(frozen=True)
... class Config:
...   epochs: int = flag(3, 'passes over the data', check=at_least(1))
>>> parse(Config, ['--epochs', '5'])
Config(epochs=5)
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

__all__ = ['flag', 'at_least', 'in_range', 'finite', 'build_parser', 'parse',
           'flag_name', 'progress', 'explicit_flags', 'check_fields', 'DistributedFlags',
           'initialize_distributed', 'distributed_errors', 'writable_file', 'image_file',
           'existing_dir',
           'output_flag', 'fresh_output', 'write_output', 'run', 'handle_interrupts',
           'interrupted', 'check_interrupt', 'exit_interrupted', 'INTERRUPT_STATUS',
           'set_verbose', 'verbose_flag', 'filter_native_output', 'apply_quick']

# A check returns None when the value is fine, else what it must be
# ("must be an int >= 1"); the caller adds the flag name and the value.
Check = Callable[[Any], 'str | None']


def flag(default: Any, help: str = '', *, check: Check | None = None,  # pylint: disable=redefined-builtin
         choices: Sequence[Any] | None = None, type: Callable[[str], Any] | None = None,  # pylint: disable=redefined-builtin
         aliases: Sequence[str] = (), metavar: str | None = None,
         resume_may_differ: bool = False) -> Any:
  """A dataclass field that is also a command-line flag.

  Args:
    default: the default value; a tuple default makes a ``nargs='+'`` flag,
      a bool default ``False`` a switch (``True``: a ``--no-...`` switch).
    help: the help text.
    check: a per-value check (:func:`at_least`, :func:`in_range`, ...).
    choices: the accepted values.
    type: the parser of one value (default: the type of ``default``).
    aliases: further option strings (e.g. ``('--no-progress',)``).
    metavar: the placeholder in the usage line.
    resume_may_differ: the field may change when a run is resumed.

  Returns:
    A :func:`dataclasses.field`.
  """
  return dataclasses.field(default=default, metadata={
    'help': help, 'check': check, 'choices': choices, 'type': type, 'aliases': tuple(aliases),
    'metavar': metavar, 'resume_may_differ': resume_may_differ})


def flag_name(field_name: str) -> str:
  """``batch_size`` -> ``--batch-size``."""
  return '--' + field_name.replace('_', '-')


# ------------------------------------------------------------------ checks


def _is_int(v: Any) -> bool:
  return isinstance(v, int) and not isinstance(v, bool)


def at_least(lo: float) -> Check:
  """Accepts numbers ``>= lo`` (ints when ``lo`` is an int)."""
  def check(v):
    if _is_int(lo) and not _is_int(v):
      return f'must be an int >= {lo}'
    if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= lo):
      return f'must be {"an int" if _is_int(lo) else "a finite number"} >= {lo}'
    return None
  return check


def finite(*, positive: bool = False, nonnegative: bool = False) -> Check:
  """Accepts finite numbers, optionally ``> 0`` or ``>= 0`` (never NaN)."""
  def check(v):
    ok = isinstance(v, (int, float)) and math.isfinite(v)
    if ok and positive and not v > 0:
      ok = False
    if ok and nonnegative and not v >= 0:
      ok = False
    if not ok:
      return ('must be a finite number' + (' > 0' if positive else '')
              + (' >= 0' if nonnegative else ''))
    return None
  return check


def in_range(lo: float, hi: float, *, lo_open: bool = False, hi_open: bool = False) -> Check:
  """Accepts finite numbers in the interval (``[lo, hi]`` by default)."""
  text = f'{"(" if lo_open else "["}{lo}, {hi}{")" if hi_open else "]"}'

  def check(v):
    if not (isinstance(v, (int, float)) and math.isfinite(v)):
      return f'must be a number in {text}'
    if v < lo or v > hi or (lo_open and v == lo) or (hi_open and v == hi):
      return f'must be in {text}'
    return None
  return check


def writable_file(path: str) -> str | None:
  """Accepts a path whose folder exists and is writable (the file is not created)."""
  folder = os.path.dirname(os.path.abspath(path)) or '.'
  if os.path.isdir(path):
    return 'must be a file path, not a folder'
  if not os.path.isdir(folder):
    return f'must be in an existing folder ({folder!r} does not exist)'
  if not os.access(folder, os.W_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
    return 'must be a writable path'
  return None


# ------------------------------------------------------------------ parsing


def _fields(cls: type) -> list[dataclasses.Field]:
  fields = [f for f in dataclasses.fields(cls) if 'help' in f.metadata]
  # The shared multi-host flags come last in --help, after the example's own.
  shared = {f.name for f in dataclasses.fields(DistributedFlags)}
  return ([f for f in fields if f.name not in shared]
          + [f for f in fields if f.name in shared])


def _list_item(parse_one: Callable[[str], Any], choices: Sequence[Any] | None):
  """One token of a list flag: ``'16,64'`` -> ``[16, 64]`` (each checked against ``choices``)."""
  def parse_token(text: str) -> list[Any]:
    values = []
    for part in text.split(','):
      if not part:
        continue
      value = parse_one(part)
      if choices is not None and value not in choices:
        raise argparse.ArgumentTypeError(
            f'invalid choice: {part!r} (choose from {", ".join(map(str, choices))})')
      values.append(value)
    if not values:
      raise argparse.ArgumentTypeError(f'expected a value; got {text!r}')
    return values
  parse_token.__name__ = getattr(parse_one, '__name__', 'value')
  return parse_token


def build_parser(cls: type, description: str | None = None) -> argparse.ArgumentParser:
  """An argparse parser with one flag per :func:`flag` field of ``cls``.

  A tuple default makes a list flag: its values follow it, separated by
  spaces or commas (``--batch-sizes 16 64`` or ``--batch-sizes 16,64``).
  """
  parser = argparse.ArgumentParser(
      description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
  for f in _fields(cls):
    m = f.metadata
    names = [flag_name(f.name), *m['aliases']]
    kw: dict[str, Any] = {'dest': f.name, 'default': f.default}
    help_text = m['help']
    if isinstance(f.default, bool):
      if f.default:
        names = ['--no-' + f.name.replace('_', '-'), *m['aliases']]
      kw['action'] = 'store_false' if f.default else 'store_true'
      parser.add_argument(*names, help=help_text, **kw)
      continue
    parse_one = m['type'] or (type(f.default[0]) if isinstance(f.default, tuple) and f.default
                              else type(f.default) if f.default is not None
                              and not isinstance(f.default, tuple) else str)
    if isinstance(f.default, tuple):
      kw['type'] = _list_item(parse_one, m['choices'])
      kw['nargs'] = '+'
      if m['choices'] is not None and '(choose from' not in help_text:
        help_text = f'{help_text} (choose from {", ".join(map(str, m["choices"]))})'.strip()
    else:
      kw['type'] = parse_one
      if m['choices'] is not None:
        kw['choices'] = m['choices']
    if m['metavar']:
      kw['metavar'] = m['metavar']
    if f.default not in (None, ()) and '(default' not in help_text:
      shown = ' '.join(map(str, f.default)) if isinstance(f.default, tuple) else f.default
      help_text = f'{help_text} (default {shown})'.strip()
    parser.add_argument(*names, help=help_text, **kw)
  return parser


def check_fields(config: Any) -> None:
  """Runs every field's check; raises ``ValueError`` naming the flag."""
  for f in _fields(type(config)):
    check = f.metadata['check']
    value = getattr(config, f.name)
    if check is None or value is None:
      continue
    for v in (value if isinstance(value, tuple) else (value,)):
      problem = check(v)
      if problem:
        raise ValueError(f'{flag_name(f.name)} {problem}; got {v!r}.')


def parse(cls: type, argv: Sequence[str] | None, *, description: str | None = None,
          parser: argparse.ArgumentParser | None = None,
          prepare: Callable[[Any, set[str]], Any] | None = None,
          quick: dict[str, Any] | None = None) -> Any:
  """The validated ``cls`` instance for ``argv``; exits with status 2 on a bad flag.

  Args:
    cls: a dataclass made of :func:`flag` fields, optionally with a
      ``validate(self)`` method for combinations (raises ``ValueError``).
    argv: the arguments (``None``: ``sys.argv[1:]``).
    description: the ``--help`` description.
    parser: a parser already built with :func:`build_parser`.
    prepare: ``(config, names of the flags given explicitly) -> config``, run
      before the checks (e.g. to read a resumed run's configuration); its
      ``ValueError`` exits like a bad flag.
    quick: field values for ``--quick`` (when ``cls`` has a ``quick`` field
      and it is set), applied to the fields not given explicitly
      (:func:`apply_quick`); explicit values are checked first.

  A ``verbose`` field, when ``cls`` has one, switches the third-party log
  lines on (:func:`set_verbose`).

  Returns:
    The configuration.
  """
  parser = parser or build_parser(cls, description)
  args = parser.parse_args(argv)
  values = {}
  for f in _fields(cls):
    v = getattr(args, f.name)
    if isinstance(v, list):  # a list flag: one list per token ('16,64 256')
      v = tuple(x for token in v for x in (token if isinstance(token, list) else [token]))
    values[f.name] = v
  config = cls(**values)
  try:
    if prepare is not None or quick is not None:
      check_fields(config)
      explicit = explicit_flags(parser, argv)
      if quick is not None and getattr(config, 'quick', False):
        config = apply_quick(config, quick, explicit)
      if prepare is not None:
        config = prepare(config, explicit)
    check_fields(config)
    if hasattr(config, 'validate'):
      config.validate()
  except ValueError as e:
    parser.error(str(e))
  if hasattr(config, 'verbose'):
    set_verbose(bool(config.verbose))
  return config


def apply_quick(config: Any, quick: dict[str, Any], explicit: set[str]) -> Any:
  """``config`` with ``quick``'s values for the fields not given on the command line.

  ``--quick`` sets small defaults; it never overrides a flag the user gave
  (``--quick --epochs 5`` runs 5 epochs).
  """
  unknown = set(quick) - {f.name for f in dataclasses.fields(config)}
  if unknown:
    raise TypeError(f'quick settings for unknown fields: {sorted(unknown)}')
  return dataclasses.replace(config, **{k: v for k, v in quick.items() if k not in explicit})


def explicit_flags(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> set[str]:
  """The fields whose flags ``argv`` gives explicitly (even if equal to the default)."""
  unset = object()
  namespace = argparse.Namespace(**{a.dest: unset for a in parser._actions  # pylint: disable=protected-access
                                    if a.dest != 'help'})
  args = parser.parse_args(argv, namespace=namespace)
  return {k for k, v in vars(args).items() if v is not unset}


# ----------------------------------------------------------------- progress


def progress(iterable: Iterable[Any], *, total: int | None = None, desc: str = '',
             quiet: bool = False, unit: str = 'step') -> Iterable[Any]:
  """``iterable`` with a tqdm bar on stderr (none when ``quiet``).

  Every step is a safe point for Ctrl-C (:func:`check_interrupt`).
  """
  if not quiet:
    try:
      from tqdm.auto import tqdm  # pylint: disable=import-outside-toplevel
    except ImportError:  # tqdm comes with the examples extra; without it, no bar.
      pass
    else:
      iterable = tqdm(iterable, total=total, desc=desc, unit=unit, dynamic_ncols=True,
                      leave=False, file=sys.stderr)
  return _safe_points(iterable)


def _safe_points(iterable: Iterable[Any]) -> Iterable[Any]:
  for item in iterable:
    check_interrupt()
    yield item


# -------------------------------------------------------------- multi-host


@dataclasses.dataclass(frozen=True)
class DistributedFlags:
  """Flags that start ``jax.distributed`` (a base class of an example's config)."""
  coordinator: str | None = flag(
      None, 'HOST:PORT of process 0; with --num-processes and --process-id, joins a '
      'multi-process job (jax.distributed.initialize)', metavar='HOST:PORT',
      resume_may_differ=True)
  num_processes: int | None = flag(None, 'processes in the job (with --coordinator)', type=int,
                                   check=at_least(1), resume_may_differ=True)
  process_id: int | None = flag(None, 'this process, 0 .. --num-processes - 1', type=int,
                                check=at_least(0), resume_may_differ=True)
  distributed: str = flag(
      'off', "'auto': jax.distributed.initialize() with no arguments, which reads the "
      'coordinator, process count and id from the cluster (Cloud TPU, Slurm, Open MPI, ...)',
      choices=('off', 'auto'), resume_may_differ=True)
  heartbeat_timeout: int | None = flag(
      None, 'seconds without heartbeats before the job stops because a process died (JAX '
      'default 100)', type=int, check=at_least(1), resume_may_differ=True)

  def validate_distributed(self) -> None:
    """Checks the flags together; raises ``ValueError`` naming them."""
    given = [self.coordinator is not None, self.num_processes is not None,
             self.process_id is not None]
    if any(given) and not all(given):
      raise ValueError('--coordinator, --num-processes and --process-id go together; '
                       'give all three (or --distributed auto on a cluster JAX detects).')
    if all(given):
      if self.distributed == 'auto':
        raise ValueError('--distributed auto reads the coordinator from the cluster; do not '
                         'also pass --coordinator.')
      host, _, port = self.coordinator.rpartition(':')
      if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f'--coordinator must be HOST:PORT (e.g. 127.0.0.1:12345); got '
                         f'{self.coordinator!r}.')
      if self.process_id >= self.num_processes:
        raise ValueError(f'--process-id must be in [0, --num-processes - 1 = '
                         f'{self.num_processes - 1}]; got {self.process_id}.')

  @property
  def multi_process(self) -> bool:
    return self.coordinator is not None or self.distributed == 'auto'


def initialize_distributed(config: DistributedFlags) -> bool:
  """Joins the ``jax.distributed`` job the flags describe; ``False`` if none.

  Must run before JAX touches a device. On CPU the collectives go over gloo.
  """
  if not config.multi_process:
    return False
  import jax  # pylint: disable=import-outside-toplevel
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  kw: dict[str, Any] = {}
  if config.heartbeat_timeout is not None:
    kw['heartbeat_timeout_seconds'] = config.heartbeat_timeout
  if config.coordinator is not None:
    kw.update(coordinator_address=config.coordinator, num_processes=config.num_processes,
              process_id=config.process_id)
  if not _Verbosity.verbose:
    filter_native_output(1)  # gloo reports every connection on stdout
  jax.distributed.initialize(**kw)
  return True


@contextlib.contextmanager
def distributed_errors(config: DistributedFlags):
  """In a multi-process job, turns a failure into one clear line and exit status 3.

  When a peer dies mid-collective the survivors see a runtime error from the
  collective (or JAX's coordination service ends them); either way the user
  should learn which process stopped and the likely cause, not read a
  traceback from inside XLA.
  """
  if not config.multi_process:
    yield
    return
  try:
    yield
  except Exception as err:  # pylint: disable=broad-except
    import jax  # pylint: disable=import-outside-toplevel
    print(f'process {jax.process_index()} of {jax.process_count()} stopped: '
          f'{type(err).__name__}: {err}\n(in a multi-process job this usually means that '
          'another process died or cannot be reached; restart the whole job, with --resume '
          'where the example has it)', file=sys.stderr, flush=True)
    raise SystemExit(3) from err


# ------------------------------------------------------------------ outputs


def existing_dir(path: str) -> str | None:
  """Accepts the path of an existing folder."""
  if not os.path.isdir(os.path.expanduser(path)):
    return f'must be an existing folder ({path!r} is not one)'
  return None


def image_file(path: str) -> str | None:
  """Accepts a writable ``.png`` path (:func:`writable_file`); matplotlib picks the format
  from the extension, so another one would fail only when the figure is saved."""
  problem = writable_file(path)
  if problem is None and not path.lower().endswith('.png'):
    problem = 'must end in .png'
  return problem


def output_flag(help: str, *, suffix: str = '.md') -> Any:  # pylint: disable=redefined-builtin
  """A ``--out``-like flag: ``None`` by default, else a file path checked before any work.

  The check (:func:`writable_file`; :func:`image_file` for ``suffix='.png'``)
  runs with the other flags, so a path in a missing folder ends the program
  at once, not after the run.
  """
  check = image_file if suffix == '.png' else writable_file
  return flag(None, help, type=str, check=check, metavar=f'FILE{suffix.upper()}')


RESULTS_DIR = os.path.join('runs', 'benchmarks')


def fresh_output(name: str, suffix: str = '.md', root: str = RESULTS_DIR) -> str:
  """A new path ``runs/benchmarks/<name>-<date-time><suffix>`` (never an existing file).

  Where a benchmark writes its table when ``--out`` is not given: ``runs/``
  is ignored by git, so a documented command never overwrites the tables
  committed under ``benchmarks/results/``.
  """
  stamp = time.strftime('%Y%m%d-%H%M%S')
  path, n = os.path.join(root, f'{name}-{stamp}{suffix}'), 1
  while os.path.exists(path):
    n += 1
    path = os.path.join(root, f'{name}-{stamp}-{n}{suffix}')
  return path


def write_output(path: str | None, text: str, *, name: str, suffix: str = '.md') -> str:
  """Writes ``text`` to ``path`` (or to :func:`fresh_output`), says where on stderr; the path."""
  if path is None:
    path = fresh_output(name, suffix)
    os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'w', encoding='utf-8') as f:
    f.write(text if text.endswith('\n') else text + '\n')
  print(f'[{name}] written to {path}', file=sys.stderr, flush=True)
  return path


# ------------------------------------------------------------- interrupts

INTERRUPT_STATUS = 130  # 128 + SIGINT, what a shell reports for a job stopped by Ctrl-C


class _Interrupts:
  installed = False
  in_main = False      # run() has started the script's main (imports are done)
  count = 0            # SIGINTs received
  redeliver = False    # a KeyboardInterrupt was swallowed (gc callback): raise it again


def interrupted() -> bool:
  """Whether Ctrl-C (SIGINT) was pressed since :func:`handle_interrupts`."""
  return _Interrupts.count > 0


def check_interrupt() -> None:
  """A safe point: raises ``KeyboardInterrupt`` if Ctrl-C was pressed and swallowed.

  :func:`progress` calls it at every step, so an interrupt that a library
  swallowed still stops the loop at the next step.
  """
  if _Interrupts.count:
    raise KeyboardInterrupt


def exit_interrupted() -> None:
  """Prints one line and ends the process with status 130, without interpreter teardown.

  ``os._exit`` after the stack has unwound (``finally`` blocks and context
  managers have run, so child processes are stopped and files closed): a
  normal interpreter exit right after an interrupted XLA compile or
  dispatch tears JAX's runtime down while its threads still run, which
  ended in a segmentation fault in about a third of the interruptions.
  """
  try:
    sys.stdout.flush()
  except Exception:  # pylint: disable=broad-except
    pass
  prog = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else 'python'
  clear = '\r\x1b[K' if getattr(sys.stderr, 'isatty', lambda: False)() else ''
  try:
    sys.stderr.write(f'{clear}{prog}: interrupted (Ctrl-C); stopped.\n')
    sys.stderr.flush()
  except Exception:  # pylint: disable=broad-except
    pass
  import logging  # pylint: disable=import-outside-toplevel
  logging.shutdown()
  _drain_native_filters()
  os._exit(INTERRUPT_STATUS)  # pylint: disable=protected-access


def _on_sigint(signum, frame) -> None:  # pylint: disable=unused-argument
  if not _Interrupts.in_main:
    exit_interrupted()  # still importing: nothing to clean up, and an import may swallow it
  if _Interrupts.count and not _Interrupts.redeliver:
    exit_interrupted()  # a second Ctrl-C while the first unwinds: stop now
  _Interrupts.count += 1
  _Interrupts.redeliver = False
  if _in_callback(frame):
    _redeliver_soon()
    return
  raise KeyboardInterrupt


# Python drops an exception raised in a gc callback or a __del__ (JAX runs one
# at every collection: `_xla_gc_callback`): raised there, the
# KeyboardInterrupt would be lost and the run would go on.
_CALLBACKS = {'_xla_gc_callback', '__del__', '_unraisablehook'}


def _in_callback(frame) -> bool:
  for _ in range(4):
    if frame is None:
      return False
    if frame.f_code.co_name in _CALLBACKS:
      return True
    frame = frame.f_back
  return False


def _redeliver_soon() -> None:
  """SIGINT again in 10 ms, from another thread (then the callback has returned)."""
  import _thread  # pylint: disable=import-outside-toplevel
  import threading  # pylint: disable=import-outside-toplevel
  _Interrupts.redeliver = True
  threading.Timer(0.01, _thread.interrupt_main).start()


def _excepthook(exc_type, exc, tb) -> None:
  if issubclass(exc_type, KeyboardInterrupt):
    exit_interrupted()
  _excepthook.previous(exc_type, exc, tb)


def _unraisablehook(unraisable) -> None:
  # The fallback for a callback that _in_callback does not know yet: learn
  # its name, so that the interrupt delivered again is not raised there too.
  if unraisable.exc_type is not None and issubclass(unraisable.exc_type, KeyboardInterrupt):
    code = getattr(unraisable.object, '__code__', None)
    if code is not None:
      _CALLBACKS.add(code.co_name)
    _redeliver_soon()
    return
  _unraisablehook.previous(unraisable)


def handle_interrupts() -> None:
  """Makes Ctrl-C end the program with one line and status 130 (idempotent).

  Installs a SIGINT handler (unless SIGINT is ignored, as for a job started
  with ``&`` by a non-interactive shell), a ``sys.excepthook`` that turns an
  uncaught ``KeyboardInterrupt`` into :func:`exit_interrupted`, and a
  ``sys.unraisablehook`` that re-delivers an interrupt Python would have
  swallowed. Before :func:`run` starts ``main`` (while the script imports
  JAX), Ctrl-C exits at once: an extension module's import turns the
  ``KeyboardInterrupt`` into an ``ImportError`` that an optional import
  then ignores. In ``main`` it raises ``KeyboardInterrupt`` (so ``finally``
  blocks stop child processes), except inside a gc callback, where Python
  would drop it: there it is delivered again 10 ms later. A second Ctrl-C
  stops at once.
  """
  if _Interrupts.installed:
    return
  import signal  # pylint: disable=import-outside-toplevel
  import threading  # pylint: disable=import-outside-toplevel
  if threading.current_thread() is not threading.main_thread():
    return
  if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
    signal.signal(signal.SIGINT, _on_sigint)
  _excepthook.previous = sys.excepthook
  sys.excepthook = _excepthook
  _unraisablehook.previous = sys.unraisablehook
  sys.unraisablehook = _unraisablehook
  _Interrupts.installed = True


def run(main: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
  """Runs a script's ``main``: Ctrl-C prints one line and exits 130; quiet third-party logs.

  Every example and benchmark ends with ``cli.run(main, sys.argv[1:])``.
  Until the configuration says ``--verbose`` (:func:`parse`), the known
  noise of the libraries below is dropped (:func:`set_verbose`).
  """
  handle_interrupts()
  set_verbose(_Verbosity.verbose)
  _Interrupts.in_main = True
  try:
    result = main(*args, **kwargs)
  except KeyboardInterrupt:
    exit_interrupted()
  except Exception as e:  # pylint: disable=broad-except
    from ssgd_examples import data  # pylint: disable=import-outside-toplevel
    if not isinstance(e, data.DatasetError):
      raise
    # A data file went missing or is malformed: the message names the file.
    print(f'{os.path.basename(sys.argv[0])}: {e}', file=sys.stderr, flush=True)
    raise SystemExit(1) from None
  if interrupted():  # a library swallowed the interrupt and the run went on
    exit_interrupted()
  return result


def _started_as_script() -> bool:
  """Whether ``__main__`` is a script of this repository's examples/ or benchmarks/."""
  main_file = getattr(sys.modules.get('__main__'), '__file__', None)
  if not main_file:
    return False
  here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  folder = os.path.dirname(os.path.abspath(main_file))
  return folder in (here, os.path.join(os.path.dirname(here), 'benchmarks'))


# ------------------------------------------------------------------ noise

# Lines that libraries print by default and that say nothing to the user of
# an example: dp_accounting's RDP series warnings (one per order and step
# count tried; the accountant falls back to the orders that converge),
# httpx's request log under Flower, JAX's os.fork() warning under Ray, and
# gloo's connection report in multi-process jobs. `--verbose` shows them.
_NOISY_MESSAGES = ('failed to converge',)
_NOISY_LOGGERS = ('httpx', 'httpcore')
_NOISY_WARNINGS = ('os.fork() was called',)
NATIVE_NOISE = (b'[Gloo] ',)


class _Verbosity:
  verbose = False
  installed = False


def _log_filter(record) -> bool:
  if _Verbosity.verbose:
    return True
  if record.name.split('.')[0] in _NOISY_LOGGERS and record.levelno < 30:
    return False
  return not (record.name == 'absl' and any(m in str(record.msg) for m in _NOISY_MESSAGES))


def _showwarning(message, category, filename, lineno, file=None, line=None):
  if not _Verbosity.verbose and any(m in str(message) for m in _NOISY_WARNINGS):
    return
  _showwarning.previous(message, category, filename, lineno, file, line)


def set_verbose(verbose: bool) -> None:
  """``False``: drop the known third-party noise (absl convergence warnings,
  httpx INFO lines, JAX's ``os.fork()`` warning, gloo lines); ``True``: show all."""
  import logging  # pylint: disable=import-outside-toplevel
  import warnings  # pylint: disable=import-outside-toplevel
  _Verbosity.verbose = bool(verbose)
  if _Verbosity.installed:
    return
  _Verbosity.installed = True
  # Filters on the loggers themselves (records are created there); handlers
  # may be added later by the libraries, so a handler filter would miss some.
  for name in ('absl', *_NOISY_LOGGERS):
    logging.getLogger(name).addFilter(_log_filter)
  _showwarning.previous = warnings.showwarning
  warnings.showwarning = _showwarning


def verbose_flag() -> Any:
  """The ``--verbose`` field of a configuration (see :func:`set_verbose`)."""
  return flag(False, 'also show third-party log lines (absl convergence warnings, httpx, '
              'gloo, os.fork warnings) that are hidden by default', resume_may_differ=True)


# Native (C++) output cannot be filtered by logging: gloo writes to the file
# descriptor. filter_native_output puts a pipe and a thread between the
# descriptor and the terminal, dropping the matching lines.
_NATIVE_FILTERS: list[Callable[[], None]] = []


def filter_native_output(fd: int = 1, prefixes: Sequence[bytes] = NATIVE_NOISE) -> None:
  """Drops the lines that start with one of ``prefixes`` from file descriptor ``fd``.

  For output that C++ code writes directly (gloo's ``[Gloo] Rank 0 is
  connected to 1 peer ranks`` in a multi-process JAX job). Everything else
  written to ``fd`` (Python's ``print`` included) passes through in order;
  the pipe is drained at exit.
  """
  import atexit  # pylint: disable=import-outside-toplevel
  import threading  # pylint: disable=import-outside-toplevel
  stream = {1: sys.stdout, 2: sys.stderr}.get(fd)
  if stream is not None:
    stream.flush()
  target = os.dup(fd)
  read_end, write_end = os.pipe()
  os.dup2(write_end, fd)
  os.close(write_end)

  def pump():
    pending = b''
    with os.fdopen(read_end, 'rb', buffering=0) as pipe:
      while chunk := pipe.read(65536):
        pending += chunk
        *lines, pending = pending.split(b'\n')
        out = b''.join(l + b'\n' for l in lines if not l.lstrip(b'\r').startswith(tuple(prefixes)))
        if out:
          os.write(target, out)
    if pending and not pending.startswith(tuple(prefixes)):
      os.write(target, pending)

  thread = threading.Thread(target=pump, name=f'filter-fd{fd}', daemon=True)
  thread.start()

  def drain():
    if stream is not None:
      try:
        stream.flush()
      except Exception:  # pylint: disable=broad-except
        pass
    os.dup2(target, fd)  # closes the pipe's last write end: the pump reads EOF
    thread.join(timeout=5)

  _NATIVE_FILTERS.append(drain)
  atexit.register(drain)


def _drain_native_filters() -> None:
  while _NATIVE_FILTERS:
    _NATIVE_FILTERS.pop()()


if _started_as_script():
  handle_interrupts()
