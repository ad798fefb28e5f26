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
from collections.abc import Callable, Iterable, Sequence
from typing import Any

__all__ = ['flag', 'at_least', 'in_range', 'finite', 'build_parser', 'parse', 'flag_name',
           'progress', 'explicit_flags', 'check_fields', 'DistributedFlags', 'initialize_distributed', 'distributed_errors', 'writable_file']

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


def build_parser(cls: type, description: str | None = None) -> argparse.ArgumentParser:
  """An argparse parser with one flag per :func:`flag` field of ``cls``."""
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
    parse_one = m['type'] or (type(f.default[0]) if isinstance(f.default, tuple)
                              else type(f.default) if f.default is not None else str)
    kw['type'] = parse_one
    if isinstance(f.default, tuple):
      kw['nargs'] = '+'
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
          prepare: Callable[[Any, set[str]], Any] | None = None) -> Any:
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

  Returns:
    The configuration.
  """
  parser = parser or build_parser(cls, description)
  args = parser.parse_args(argv)
  values = {}
  for f in _fields(cls):
    v = getattr(args, f.name)
    values[f.name] = tuple(v) if isinstance(v, list) else v
  config = cls(**values)
  try:
    if prepare is not None:
      check_fields(config)
      config = prepare(config, explicit_flags(parser, argv))
    check_fields(config)
    if hasattr(config, 'validate'):
      config.validate()
  except ValueError as e:
    parser.error(str(e))
  return config


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
  """``iterable`` with a tqdm bar on stderr (none when ``quiet``)."""
  if quiet:
    return iterable
  try:
    from tqdm.auto import tqdm  # pylint: disable=import-outside-toplevel
  except ImportError:  # tqdm comes with the examples extra; without it, no bar.
    return iterable
  return tqdm(iterable, total=total, desc=desc, unit=unit, dynamic_ncols=True, leave=False,
              file=sys.stderr)


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
