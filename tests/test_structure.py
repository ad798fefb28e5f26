# Copyright 2026 The ssgd_optax Authors. Licensed under the Apache License 2.0.
"""The package's structure: one home per concept, one import path and one meaning per name.

* no module imports a private name (``_x``) that another module defines:
  what modules share lives in named internal modules (``_batch``, ``_keys``,
  ``_numerics``, ``_validation``...) and is imported by its public name;
* every public name is listed in exactly one ``__all__`` of a public module
  (implementation modules are private, ``_x.py``, and list only what they
  define);
* a public name is one object wherever it is importable;
* the installed package holds no harness (command line, example data and
  models live in ``examples/ssgd_examples``).

Each check is run once on a deliberately broken source to show it can fail.
"""

import ast
import importlib
import pathlib
import pkgutil
import warnings

import ssgd_optax

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / 'ssgd_optax'
# Code outside the package that must also keep off the library's private names.
OUTSIDE = [ROOT / 'examples', ROOT / 'benchmarks']


def _module_name(path: pathlib.Path) -> str:
  rel = path.relative_to(ROOT).with_suffix('')
  parts = list(rel.parts)
  if parts[-1] == '__init__':
    parts = parts[:-1]
  return '.'.join(parts)


def _defined_names(tree: ast.Module) -> set:
  names = set()
  for node in tree.body:
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
      names.add(node.name)
    elif isinstance(node, (ast.Assign, ast.AnnAssign)):
      for t in (node.targets if isinstance(node, ast.Assign) else [node.target]):
        for n in ast.walk(t):
          if isinstance(n, ast.Name):
            names.add(n.id)
  return names


def private_imports(source: str, module: str) -> list:
  """``from M import _x`` / ``M._x`` where ``_x`` is a private name of another module.

  Private *modules* (``ssgd_optax._batch``) may be imported, and their public
  names used: that is the named internal interface. Private functions,
  classes and constants (``_helper``) never cross a module boundary.
  """
  tree = ast.parse(source)
  aliases = {}   # local name -> module it refers to
  found = []
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      for a in node.names:
        aliases[a.asname or a.name.split('.')[0]] = a.name if a.asname else a.name.split('.')[0]
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      for a in node.names:
        target = f'{node.module}.{a.name}'
        is_module = importlib.util.find_spec(target.split('.')[0]) is not None and _is_module(
            target)
        if a.name.startswith('_') and not a.name.startswith('__') and not is_module:
          if node.module != module:
            found.append(f'{module}: from {node.module} import {a.name}')
        aliases[a.asname or a.name] = target if is_module else None
  for node in ast.walk(tree):
    if (isinstance(node, ast.Attribute) and node.attr.startswith('_')
        and not node.attr.startswith('__') and isinstance(node.value, ast.Name)):
      target = aliases.get(node.value.id)
      if target and target.startswith(('ssgd_optax', 'ssgd_examples')) and target != module:
        if not _is_module(f'{target}.{node.attr}'):
          found.append(f'{module}: {node.value.id}.{node.attr} (a private name of {target})')
  return found


def _is_module(dotted: str) -> bool:
  try:
    return importlib.util.find_spec(dotted) is not None
  except (ImportError, ValueError, AttributeError):
    return False


def _sources():
  for path in sorted(PACKAGE.rglob('*.py')):
    yield path, _module_name(path)
  for folder in OUTSIDE:
    for path in sorted(folder.rglob('*.py')):
      yield path, _module_name(path)


def test_no_module_imports_another_modules_private_names():
  found = []
  for path, module in _sources():
    found += private_imports(path.read_text(), module)
  assert not found, 'private names used across modules:\n' + '\n'.join(found)


def test_the_private_import_check_can_fail():
  broken = ('from ssgd_optax._batch import finite_rows\n'        # allowed: public name
            'from ssgd_optax.privacy import _layers as layers\n'  # allowed: private module
            'from ssgd_optax.privacy._layers import _keys\n'      # not allowed
            'x = layers._forward_pass\n')                         # not allowed
  found = private_imports(broken, 'ssgd_optax.privacy._ghost')
  assert len(found) == 2, found


def _public_modules():
  with warnings.catch_warnings():
    warnings.simplefilter('ignore')
    mods = [ssgd_optax]
    for info in pkgutil.walk_packages(ssgd_optax.__path__, 'ssgd_optax.'):
      if not any(p.startswith('_') for p in info.name.split('.')):
        mods.append(importlib.import_module(info.name))
    return mods


def exports(modules) -> dict:
  """``{name: [module, ...]}`` over the ``__all__`` of ``modules``."""
  out = {}
  for m in modules:
    for n in getattr(m, '__all__', ()):
      out.setdefault(n, []).append(m.__name__)
  return out


def test_every_public_name_is_in_exactly_one_all():
  twice = {n: ms for n, ms in exports(_public_modules()).items() if len(ms) > 1}
  assert not twice, f'names listed in several __all__: {twice}'


def test_the_one_all_check_can_fail():
  class Fake:
    def __init__(self, name, names):
      self.__name__, self.__all__ = name, names
  got = exports([Fake('a', ['x', 'y']), Fake('b', ['y'])])
  assert {n: ms for n, ms in got.items() if len(ms) > 1} == {'y': ['a', 'b']}


def test_a_public_name_is_one_object_everywhere_it_is_importable():
  modules = _public_modules()
  owner = {}
  for m in modules:
    for n in getattr(m, '__all__', ()):
      owner[n] = getattr(m, n)
  clashes = []
  for m in modules:
    for n, obj in owner.items():
      if n in vars(m) and vars(m)[n] is not obj and not isinstance(vars(m)[n], type(ssgd_optax)):
        clashes.append(f'{m.__name__}.{n}')
  assert not clashes, f'a public name bound to another object: {clashes}'


def test_private_modules_list_only_what_they_define():
  found = []
  for path, module in _sources():
    if not path.is_relative_to(PACKAGE) or path.name == '__init__.py':
      continue
    tree = ast.parse(path.read_text())
    listed = next((ast.literal_eval(n.value) for n in tree.body
                   if isinstance(n, ast.Assign) and any(
                       isinstance(t, ast.Name) and t.id == '__all__' for t in n.targets)), [])
    extra = set(listed) - _defined_names(tree)
    if extra:
      found.append(f'{module}: {sorted(extra)}')
  assert not found, 'modules re-listing names they do not define:\n' + '\n'.join(found)


def test_the_installed_package_holds_no_harness():
  for gone in ('ssgd_optax._cli', 'ssgd_optax.data', 'ssgd_optax.models',
               'ssgd_optax.attacks.models'):
    assert importlib.util.find_spec(gone) is None, gone
  import ssgd_optax.privacy as privacy  # pylint: disable=import-outside-toplevel
  assert not hasattr(privacy, 'StevensCNN')


def import_graph(sources) -> dict:
  """``{module: {module it imports}}`` over the package (imports inside functions included).

  ``from P import X`` is an edge to ``P.X`` when that is a module, else to ``P``.
  """
  modules = {name for _, name in sources}
  graph = {}
  for path, module in sources:
    edges = set()
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.Import):
        targets = [a.name for a in node.names]
      elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        targets = [f'{node.module}.{a.name}' if f'{node.module}.{a.name}' in modules
                   else node.module for a in node.names]
      else:
        continue
      edges |= {t for t in targets if t in modules and t != module}
    graph[module] = edges
  return graph


def cycles(graph: dict) -> list:
  """The strongly connected components with more than one module (Tarjan)."""
  index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

  def visit(v):
    index[v] = low[v] = counter[0]
    counter[0] += 1
    stack.append(v)
    on.add(v)
    for w in graph.get(v, ()):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      comp = []
      while True:
        w = stack.pop()
        on.discard(w)
        comp.append(w)
        if w == v:
          break
      if len(comp) > 1:
        out.append(sorted(comp))

  for v in graph:
    if v not in index:
      visit(v)
  return out


def test_no_import_cycles_in_the_package():
  sources = [(p, m) for p, m in _sources() if p.is_relative_to(PACKAGE)]
  found = cycles(import_graph(sources))
  assert not found, f'import cycles: {found}'


def test_the_cycle_check_can_fail():
  assert cycles({'a': {'b'}, 'b': {'c'}, 'c': {'a'}, 'd': {'a'}}) == [['a', 'b', 'c']]
  assert not cycles({'a': {'b'}, 'b': set()})
