# Copyright 2026 The ssgd_optax Authors. Licensed under the Apache License 2.0.
"""Executable documentation: every command and snippet of README.md and docs/*.md runs.

Every fenced ``sh``/``bash``/``python`` block of those files carries a marker,
an HTML comment on the line(s) right above its fence (other comments, such as
``<!-- test-command -->``, may sit between the marker and the fence)::

  <!-- doc-test -->                      run as written
  <!-- doc-test: slow -->                run only with ``-m slow``
  <!-- doc-test: skip reason="..." -->   never run; the reason is required
  <!-- doc-test: quick-args="--epochs 1" -->
      append these flags to every ``python examples/*.py`` /
      ``python benchmarks/*.py`` command of the block (argparse: the last
      value wins); the block as written runs with ``-m slow``
  <!-- doc-test: quick-sub="steps=300::steps=5" -->
      replace text (``OLD::NEW``, repeatable) in the default run; the block as
      written runs with ``-m slow``
  <!-- doc-test: quick
  python examples/train.py --epochs 1
  -->                                    the body replaces the block in the
                                         default run; as written with ``-m slow``
  <!-- doc-test: setup
  x = jnp.ones((4, 3))
  -->                                    hidden code run before the block (as
                                         many ``setup`` comments as needed)
  namespace=NAME                         (Python) run in a fresh namespace NAME
                                         instead of the file's shared one

The default run (``-m "not slow"``) takes the quick variants and leaves out
``slow`` blocks; ``-m slow`` runs every block that is not skipped as written,
in reading order. A ``setup`` runs whenever its block does.

Shell blocks run in order, one ``bash -eo pipefail`` per block, in a temporary
directory holding copies of ``examples/`` and ``benchmarks/`` (so relative
paths resolve as from the repository root and nothing is written into the
repository), with the environment a reader has: the virtual-device
``XLA_FLAGS`` that ``conftest.py`` sets is removed. ``pip install -e
".[extras]"`` prefixes are not run (the package is installed) but checked: the
form must work from a checkout and every extra must exist in pyproject.toml.
Python blocks of one file share a namespace and run in reader order; all files
run in one process (separate namespaces) to pay JAX's start-up once.
"""

import dataclasses
import json
import os
import pathlib
import re
import shlex
import shutil
import subprocess
import sys
import tomllib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOC_FILES = [ROOT / 'README.md'] + sorted((ROOT / 'docs').glob('*.md'))
RUN_LANGS = {'sh', 'bash', 'shell', 'console', 'python', 'py', 'python3'}
SHELL_LANGS = {'sh', 'bash', 'shell', 'console'}
_FENCE = re.compile(r'^(\s*)(```+|~~~+)\s*([\w+-]*)\s*$')
_OPTIONS = {'slow', 'skip', 'quick', 'setup', 'reason', 'quick-args', 'quick-sub', 'namespace'}
# An unlabeled block whose line starts like this is a command a reader will run: it must be
# labelled (and so marked).
_LOOKS_LIKE_COMMAND = re.compile(r'^\s*(\$\s*)?(python3?|pip|flwr|flower-\w+|XLA_FLAGS=\S+ python)\s')
_SCRIPT = re.compile(r'(python3?\s+(?:examples|benchmarks)/[\w/]+\.py)([^#&|;\n]*)')
_PIP = re.compile(r'(?:^|(?<=[\s;&|]))(?:python3?\s+-m\s+)?pip\s+install\s+([^&|;\n]*)')


@dataclasses.dataclass
class Marker:
  options: dict
  body: str


@dataclasses.dataclass
class Block:
  path: pathlib.Path
  line: int  # 1-based line of the opening fence
  lang: str
  code: str
  markers: list  # Marker, in order
  problems: list  # marker errors, as messages

  @property
  def label(self) -> str:
    return f'{self.path.relative_to(ROOT)}:{self.line}'

  @property
  def marker(self) -> 'Marker | None':
    main = [m for m in self.markers if 'setup' not in m.options]
    return main[0] if len(main) == 1 else None

  @property
  def setup(self) -> str:
    return '\n'.join(m.body for m in self.markers if 'setup' in m.options)

  @property
  def is_shell(self) -> bool:
    return self.lang in SHELL_LANGS


def _parse_marker(text: str) -> Marker:
  """``doc-test[: options]\\nbody`` (the text between ``<!--`` and ``-->``)."""
  head, _, body = text.partition('\n')
  head = head.strip()
  rest = head[len('doc-test'):].strip()
  if rest and not rest.startswith(':'):
    raise ValueError(f'expected "doc-test" or "doc-test: options", got {head!r}')
  options = {}
  for token in shlex.split(rest[1:]) if rest else []:
    key, eq, value = token.partition('=')
    if key not in _OPTIONS:
      raise ValueError(f'unknown doc-test option {key!r}; accepted: {sorted(_OPTIONS)}')
    if key == 'quick-sub':
      if '::' not in value:
        raise ValueError(f'quick-sub needs OLD::NEW, got {value!r}')
      options.setdefault(key, []).append(tuple(value.split('::', 1)))
    else:
      options[key] = value if eq else True
  body = body.rstrip()
  if 'skip' in options and not options.get('reason'):
    raise ValueError('doc-test: skip needs reason="..."')
  if ('quick' in options or 'setup' in options) != bool(body.strip()):
    raise ValueError('a body (lines after "doc-test: ...") goes with, and only with, '
                     '"quick" or "setup"')
  if 'quick' in options and 'setup' in options:
    raise ValueError('"quick" and "setup" need separate comments')
  return Marker(options, body)


def parse(text: str, path: pathlib.Path) -> list:
  """The fenced blocks of a Markdown text, each with the doc-test markers above it."""
  lines = text.split('\n')
  blocks, pending, problems = [], [], []
  i = 0
  while i < len(lines):
    line = lines[i]
    stripped = line.strip()
    if stripped.startswith('<!--'):
      start = i
      chunk = [stripped[4:]]
      while '-->' not in chunk[-1]:
        i += 1
        if i == len(lines):
          raise ValueError(f'{path.name}:{start + 1}: unterminated HTML comment')
        chunk.append(lines[i])
      chunk[-1] = chunk[-1][:chunk[-1].index('-->')]
      comment = '\n'.join(chunk).strip()
      if comment.startswith('doc-test'):
        try:
          pending.append(_parse_marker(comment))
        except ValueError as e:
          problems.append(f'line {start + 1}: {e}')
      i += 1
      continue
    fence = _FENCE.match(line)
    if fence:
      indent, ticks, lang = fence.groups()
      body, j = [], i + 1
      while j < len(lines) and not lines[j].strip().startswith(ticks):
        body.append(lines[j][len(indent):] if lines[j].startswith(indent) else lines[j])
        j += 1
      blocks.append(Block(path, i + 1, lang.lower(), '\n'.join(body), pending, problems))
      pending, problems = [], []
      i = j + 1
      continue
    pending, problems = [], []  # a marker binds to the fence right below it
    i += 1
  return blocks


def _all_blocks() -> list:
  return [b for p in DOC_FILES for b in parse(p.read_text(), p)]


def _runnable(block: Block) -> bool:
  return block.lang in RUN_LANGS


def marker_errors(blocks: list) -> list:
  errors = []
  for b in blocks:
    if b.problems:
      errors += [f'{b.label}: {p}' for p in b.problems]
    elif _runnable(b):
      main = [m for m in b.markers if 'setup' not in m.options]
      if not main:
        errors.append(f'{b.label}: ```{b.lang} block without a <!-- doc-test ... --> marker '
                      '(see tests/test_docs.py for the forms)')
      elif len(main) > 1:
        errors.append(f'{b.label}: {len(main)} doc-test markers; one (plus setup) expected')
      elif b.is_shell and (b.setup or 'namespace' in main[0].options):
        errors.append(f'{b.label}: setup/namespace are for Python blocks')
    elif b.markers:
      errors.append(f'{b.label}: doc-test marker on a ```{b.lang or "(no language)"} block')
    elif any(_LOOKS_LIKE_COMMAND.match(l) for l in b.code.split('\n')):
      errors.append(f'{b.label}: a block with commands needs a language (```sh) and a marker')
  return errors


def code_for(block: Block, mode: str) -> 'str | None':
  """What runs in ``mode`` ('quick' = default run, 'full' = -m slow), or None."""
  m = block.marker
  o = m.options
  if 'skip' in o:
    return None
  if mode == 'quick':
    if 'slow' in o:
      return None
    if 'quick' in o:
      return m.body
    code = block.code
    for old, new in o.get('quick-sub', []):
      if old not in code:
        raise AssertionError(f'{block.label}: quick-sub text {old!r} not in the block')
      code = code.replace(old, new)
    if 'quick-args' in o:
      code = add_args(code, o['quick-args'])
    return code
  # -m slow: everything as a reader runs it (later blocks may build on earlier ones).
  return block.code


def join_continuations(code: str) -> str:
  return re.sub(r'[ \t]*\\\n\s*', ' ', code)


def add_args(code: str, args: str) -> str:
  code = join_continuations(code)
  new, n = _SCRIPT.subn(lambda m: f'{m.group(1)}{m.group(2).rstrip()} {args} ', code)
  if not n:
    raise AssertionError(f'quick-args {args!r} but no "python examples|benchmarks/x.py" command')
  return new


# The one package a doc may install by name: PyTorch, whose PyPI wheel is the CUDA build.
_THIRD_PARTY = re.compile(r'torch(==[\w.+]+)?')


def pip_problems(code: str, extras: set) -> list:
  problems = []
  for m in _PIP.finditer(join_continuations(code)):
    args = shlex.split(m.group(1))
    specs = [a for a in args if not a.startswith('-') and not a.startswith('http')]
    if specs and all(_THIRD_PARTY.fullmatch(s) for s in specs):
      continue  # PyTorch's CPU build, installed before the `torch` extra
    if '-e' not in args or any(not re.fullmatch(r'\.(\[[\w,-]+\])?', s) for s in specs):
      problems.append(f'"pip install {m.group(1).strip()}": from a checkout install the '
                      'package itself: pip install -e ".[extra]"')
      continue
    for s in specs:
      for extra in re.findall(r'[\w-]+', s[1:]):
        if extra not in extras:
          problems.append(f'pip extra {extra!r} is not in pyproject.toml ({sorted(extras)})')
  return problems


def strip_pip(code: str) -> str:
  """Removes ``pip install ...`` commands (the package is installed); keeps the rest."""
  code = join_continuations(code)
  code = re.sub(r'(?:python3?\s+-m\s+)?pip\s+install\s+[^&|;\n]*(&&\s*|;\s*)?', '', code)
  return code


def _reader_env(tmp: pathlib.Path) -> dict:
  env = dict(os.environ)
  # conftest.py adds virtual devices for the suite; a reader's shell has none.
  flags = re.sub(r'--xla_force_host_platform_device_count=\d+', '',
                 env.pop('XLA_FLAGS', '')).strip()
  if flags:
    env['XLA_FLAGS'] = flags
  env.setdefault('JAX_PLATFORMS', 'cpu')
  env['MPLBACKEND'] = 'Agg'
  env['PYTHONDONTWRITEBYTECODE'] = '1'
  env.pop('PYTEST_XDIST_WORKER', None)
  env['PATH'] = f'{_python_shims(tmp / ".bin")}{os.pathsep}{env.get("PATH", "")}'
  return env


def _python_shims(bin_dir: pathlib.Path) -> pathlib.Path:
  """A folder whose ``python``/``python3`` run this interpreter, environment included.

  A wrapper that execs ``sys.executable``, not a symlink to it: Python finds
  its virtual environment from the path it was started by (``pyvenv.cfg``
  beside or above it), so a symlink in another folder starts the *base*
  interpreter, without the project's dependencies.
  """
  bin_dir.mkdir(exist_ok=True)
  for name in ('python', 'python3'):
    shim = bin_dir / name
    if not shim.exists():
      shim.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} "$@"\n')
      shim.chmod(0o755)
  return bin_dir


def _workdir(tmp: pathlib.Path) -> pathlib.Path:
  for name in ('examples', 'benchmarks'):
    shutil.copytree(ROOT / name, tmp / name,
                    ignore=shutil.ignore_patterns('__pycache__', '*.pyc', 'runs'))
  return tmp


_DRIVER = '''
import json, sys, time, traceback
namespaces = {}
start = time.process_time()
for label, filename, offset, namespace, code in json.load(open(sys.argv[1])):
  print(f'--- doc-test {label}', flush=True)
  ns = namespaces.setdefault(namespace, {'__name__': '__main__'})
  try:
    # Padding makes traceback line numbers those of the Markdown file.
    exec(compile('\\n' * offset + code, filename, 'exec'), ns)
  except BaseException:
    traceback.print_exc()
    print(f'DOC-TEST FAILED: {label}', flush=True)
    sys.exit(1)
  print(f'    cpu {time.process_time() - start:.1f} s so far', flush=True)
'''


def _tail(text: str, n: int = 6000) -> str:
  return text if len(text) <= n else '...' + text[-n:]


def run_python(blocks: list, mode: str, tmp: pathlib.Path) -> int:
  items = []
  for b in blocks:
    code = code_for(b, mode)
    if code is None:
      continue
    ns = f'{b.path.name}:{b.marker.options.get("namespace", "")}'
    filename = str(b.path.relative_to(ROOT))
    if b.setup:
      items.append((f'{b.label} (hidden setup)', f'{filename} (setup above line {b.line})', 0,
                     ns, b.setup))
    items.append((b.label, filename, b.line, ns, code))
  if not items:
    return 0
  (tmp / 'blocks.json').write_text(json.dumps(items))
  (tmp / 'driver.py').write_text(_DRIVER)
  proc = subprocess.run([sys.executable, 'driver.py', 'blocks.json'], cwd=tmp,
                        env=_reader_env(tmp), capture_output=True, text=True, check=False)
  assert proc.returncode == 0, (
      f'a documented Python snippet failed (exit {proc.returncode}):\n'
      f'{_tail(proc.stdout)}\n{_tail(proc.stderr)}')
  print(proc.stdout)
  return len(items)


def run_shell(blocks: list, mode: str, tmp: pathlib.Path) -> int:
  env = _reader_env(tmp)
  ran = 0
  for b in blocks:
    code = code_for(b, mode)
    if code is None:
      continue
    script = strip_pip(code)
    proc = subprocess.run(['bash', '-eo', 'pipefail', '-c', script], cwd=tmp, env=env,
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, (
        f'{b.label}: the documented command failed (exit {proc.returncode}):\n{script}\n'
        f'--- stdout\n{_tail(proc.stdout)}\n--- stderr\n{_tail(proc.stderr)}')
    ran += 1
  return ran


# ---------------------------------------------------------------------------
# Static checks: every block marked, markers valid, pip lines work from a checkout.


def test_every_runnable_block_carries_a_valid_marker():
  blocks = _all_blocks()
  assert any(_runnable(b) for b in blocks)
  errors = marker_errors(blocks)
  assert not errors, 'unmarked or badly marked doc blocks:\n' + '\n'.join(errors)


def test_the_marker_check_catches_what_it_must():
  """The checks above on deliberately broken documents: each must complain."""
  path = ROOT / 'README.md'
  broken = {
      'unmarked': '```sh\npython examples/train.py\n```\n',
      'marker not adjacent': '<!-- doc-test -->\n\n```python\nprint(1)\n```\n',
      'skip without reason': '<!-- doc-test: skip -->\n```sh\nls\n```\n',
      'unknown option': '<!-- doc-test: fast -->\n```sh\nls\n```\n',
      'quick without body': '<!-- doc-test: quick -->\n```sh\nls\n```\n',
      'unlabelled command': '```\npython examples/train.py --epochs 1\n```\n',
      'two markers': '<!-- doc-test -->\n<!-- doc-test: slow -->\n```sh\nls\n```\n',
  }
  for name, text in broken.items():
    assert marker_errors(parse(text, path)), name
  fine = ('<!-- doc-test: skip reason="multi-host" -->\n<!-- test-command -->\n'
          '```sh\nls\n```\n<!-- doc-test: setup\nx = 1\n-->\n<!-- doc-test -->\n'
          '```python\nprint(x)\n```\n```\nplain text\n```\n')
  assert not marker_errors(parse(fine, path))


def test_quick_variants_and_pip_handling():
  path = ROOT / 'README.md'
  [b] = parse('<!-- doc-test: quick-args="--epochs 1" -->\n```sh\n'
              'python examples/train.py --epochs 10 \\\n    --workdir runs/a   # comment\n'
              'python examples/train.py --resume &\n```\n', path)
  quick = code_for(b, 'quick')
  assert 'python examples/train.py --epochs 10 --workdir runs/a --epochs 1 ' in quick
  assert 'python examples/train.py --resume --epochs 1 &' in quick
  assert code_for(b, 'full') == b.code
  assert strip_pip('pip install -e ".[examples]" && python x.py') == 'python x.py'
  extras = {'examples', 'privacy'}
  assert not pip_problems('pip install -e ".[privacy]"', extras)
  assert pip_problems('pip install ssgd_optax[privacy]', extras)  # not on PyPI: item 8
  assert pip_problems('pip install -e ".[nope]"', extras)


def test_pip_commands_work_from_a_checkout():
  extras = set(tomllib.loads((ROOT / 'pyproject.toml').read_text())['project']
               ['optional-dependencies'])
  problems = []
  for b in _all_blocks():
    if b.is_shell:
      problems += [f'{b.label}: {p}' for p in pip_problems(b.code, extras)]
  for path in DOC_FILES:  # inline `pip install ...` in prose too
    for n, line in enumerate(path.read_text().split('\n'), 1):
      for inline in re.findall(r'`((?:python3? -m )?pip install [^`]+)`', line):
        problems += [f'{path.name}:{n}: {p}' for p in pip_problems(inline, extras)]
  assert not problems, '\n'.join(problems)


# ---------------------------------------------------------------------------
# Running the blocks.


def _plans():
  blocks = _all_blocks()
  if marker_errors(blocks):
    return []  # reported by test_every_runnable_block_carries_a_valid_marker
  plans = []
  for path in DOC_FILES:
    shell = [b for b in blocks if b.path == path and b.is_shell]
    for mode in ('quick', 'full'):
      if any(code_for(b, mode) is not None for b in shell):
        marks = [pytest.mark.slow] if mode == 'full' else []
        plans.append(pytest.param(path.name, mode, id=f'{path.name}-{mode}', marks=marks))
  return plans


@pytest.mark.parametrize('name,mode', _plans())
def test_shell_commands_run_as_written(name, mode, tmp_path):
  blocks = [b for b in _all_blocks()
            if b.path.name == name and b.is_shell]
  assert run_shell(blocks, mode, _workdir(tmp_path)) > 0


@pytest.mark.parametrize('mode', ['quick', pytest.param('full', marks=pytest.mark.slow)])
def test_python_snippets_run_as_written(mode, tmp_path):
  blocks = [b for b in _all_blocks() if _runnable(b) and not b.is_shell]
  if marker_errors(blocks):
    pytest.skip('markers invalid: see test_every_runnable_block_carries_a_valid_marker')
  assert run_python(blocks, mode, _workdir(tmp_path)) > 0


def test_a_broken_snippet_fails_and_names_its_line(tmp_path):
  """The runners on a deliberately broken document: they must fail, naming the block."""
  path = ROOT / 'README.md'
  snippets = parse('<!-- doc-test -->\n```python\nimport os\n```\n'
                   '<!-- doc-test -->\n```python\nos.getcwd()\nundefined_name\n```\n', path)
  with pytest.raises(AssertionError, match=r'(?s)README\.md", line 8.*NameError'):
    run_python(snippets, 'quick', tmp_path)
  commands = parse('<!-- doc-test -->\n```sh\npython examples/nope.py --flag\n```\n', path)
  tmp = tmp_path / 'sh'
  tmp.mkdir()
  with pytest.raises(AssertionError, match=r'README\.md:2: the documented command failed'):
    run_shell(commands, 'quick', tmp)


def test_documented_commands_run_on_the_test_interpreter_not_a_bare_one(tmp_path, monkeypatch):
  """A ``python`` without the project's dependencies first on PATH (as on a fresh CI machine,
  whose base interpreter has no jax) must not be the one a documented command runs on."""
  bare = tmp_path / 'bare'
  subprocess.run([getattr(sys, '_base_executable', sys.executable), '-m', 'venv',
                  '--without-pip', str(bare)], check=True)
  probe = 'import importlib.util as u, sys; print(sys.prefix, bool(u.find_spec("jax")))'
  bare_out = subprocess.run([str(bare / 'bin' / 'python'), '-c', probe], capture_output=True,
                            text=True, check=True).stdout.split()
  assert bare_out[1] == 'False', 'the bare interpreter must lack jax for this test to mean much'
  monkeypatch.setenv('PATH', f'{bare / "bin"}{os.pathsep}{os.environ["PATH"]}')
  work = tmp_path / 'work'
  work.mkdir()
  for python in ('python', 'python3'):
    proc = subprocess.run(['bash', '-c', f'{python} -c {shlex.quote(probe)}'], cwd=work,
                          env=_reader_env(work), capture_output=True, text=True, check=True)
    prefix, has_jax = proc.stdout.split()
    assert (prefix, has_jax) == (sys.prefix, 'True'), (python, proc.stdout, proc.stderr)
