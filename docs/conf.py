# Copyright 2026 The ssgd_optax Authors. Licensed under the Apache License 2.0.
"""Sphinx configuration of the API reference and guides.

    pip install -e ".[docs]" && sphinx-build -W -b html docs docs/_build/html

The guides are the Markdown files of this folder (MyST); the API pages are
written here at every build from the ``__all__`` of each public package and
module (``ssgd_optax``, ``ssgd_optax.privacy``, ...), so that every public
name appears once, at its one import path, and a new name needs no edit.
"""

import collections
import importlib
import inspect
import os
import pathlib
import re
import sys

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

project = 'ssgd_optax'
author = 'ssgd_optax developers'
copyright = '2026, ssgd_optax developers'  # pylint: disable=redefined-builtin

extensions = [
    'myst_parser',
    'sphinx.ext.autodoc',
    'sphinx.ext.autosummary',
    'sphinx.ext.napoleon',
    'sphinx.ext.mathjax',
    'sphinx.ext.viewcode',
]
source_suffix = {'.rst': 'restructuredtext', '.md': 'markdown'}
exclude_patterns = ['_build']
root_doc = 'index'

# Google-style docstrings (Args:, Returns:, Raises:).
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
# Attributes: as `.. attribute::` entries of the class (targets of :attr: references); the
# same names are excluded from autodoc's members (see attribute_names).
napoleon_use_ivar = False
autodoc_typehints = 'description'
autodoc_typehints_description_target = 'documented_params'
autodoc_member_order = 'bysource'
autodoc_default_options = {'members': True, 'undoc-members': False, 'show-inheritance': False}
autosummary_generate = False
add_module_names = False
# The page's table of contents names a member without its class (not 'BudgetTracker.delta').
toc_object_entries_show_parents = 'hide'
python_use_unqualified_type_names = True
myst_enable_extensions = ['dollarmath', 'colon_fence']
myst_heading_anchors = 3
# No network at build time (CI reaches only package registries): no
# intersphinx. References into our own packages must resolve (nitpicky);
# those into the libraries we build on are left as plain text.
nitpicky = True
nitpick_ignore_regex = [
    (r'py:.*', r'(jax|jnp|jaxlib|optax|flax|nnx|numpy|np|chex|dp_accounting|flwr|scipy|'
               r'cryptography|jax_privacy|typing|collections|types|abc|enum|dataclasses|'
               r'concurrent|pathlib|os|hashlib|secrets)(\..*)?'),
    (r'py:.*', r'(Any|Callable|Sequence|Mapping|Iterable|Iterator|NamedTuple|Optional|Union|'
               r'Literal|Hashable|PyTree|ArrayTree|Array|ArrayLike|DTypeLike|Shape|PRNGKey|'
               r'Params|Updates|OptState|Schedule|ScalarOrSchedule|Numeric|Scalar|Self|'
               r'NoReturn|TypeVar|Protocol|Generic|ClassVar|Final|Path|PathLike|'
               r'Mesh|NamedSharding|PartitionSpec|Sharding|Device|Traced|Key|KeyArray|'
               r'GradientTransformation|GradientTransformationExtraArgs|EmptyState|'
               r'MaskedNode|Module|State|Variable|Param|GraphDef|Rngs|Optimizer|'
               r'float|int|bool|str|bytes|tuple|list|dict|set|frozenset|object|type|None|'
               r'callable|optional|array|arrays|function|ndarray|Exception|ValueError|'
               r'TypeError|RuntimeError|KeyError|ImportError|OSError|NotImplementedError|'
               r'ArithmeticError|OverflowError|AssertionError|Warning|UserWarning|'
               r'RuntimeWarning)(\[.*\])?'),
    (r'py:class', r'.*\.(T|_T)$'),
    # Type aliases of signatures, private helper types, Flower's types.
    (r'py:.*', r'(AxisName|Scope|grouping_lib\..*|ClientApp|ServerApp|Grid|Message|Context)'),
    (r'py:.*', r'ssgd_optax(\.\w+)*\._\w+.*'),
]

html_theme = 'furo'
html_title = 'ssgd_optax'
html_static_path = ['_static']
html_css_files = ['custom.css']
html_theme_options = {'navigation_with_keys': True}

# ------------------------------------------------------------ API pages

# (module, title, what the page is for); each module's __all__ is its API.
API = [
    ('ssgd_optax', 'ssgd_optax', 'SSGD: unit normalisation, selective sharing, aggregation'),
    ('ssgd_optax.privacy', 'ssgd_optax.privacy',
     'Differential privacy: mechanisms, noise, accounting, clipping, DP-SSGD'),
    ('ssgd_optax.per_example', 'ssgd_optax.per_example', 'Per-example gradients'),
    ('ssgd_optax.parallel', 'ssgd_optax.parallel', 'Data-parallel training steps and meshes'),
    ('ssgd_optax.federated', 'ssgd_optax.federated', 'Federated DSSGD simulation'),
    ('ssgd_optax.federated.secure_aggregation', 'ssgd_optax.federated.secure_aggregation',
     'Secure aggregation protocol'),
    ('ssgd_optax.federated.distributed_dp', 'ssgd_optax.federated.distributed_dp',
     'Distributed discrete Gaussian noise for secure aggregation'),
    ('ssgd_optax.federated.flower', 'ssgd_optax.federated.flower',
     'Flower ClientApp and ServerApp'),
    ('ssgd_optax.attacks', 'ssgd_optax.attacks', 'Gradient-leakage attacks and metrics'),
    ('ssgd_optax.audit', 'ssgd_optax.audit', 'Empirical privacy audits'),
    ('ssgd_optax.testing', 'ssgd_optax.testing', 'Checks of compiled programs'),
]


def attribute_names(cls) -> list[str]:
  """The names the ``Attributes:`` section of ``cls``'s docstring describes.

  Napoleon turns that section into one ``.. attribute::`` entry per name
  (``napoleon_use_ivar = False``: entries that cross-references resolve to);
  autodoc would list the same names again (a NamedTuple's fields as "Alias
  for field number N", a dataclass's fields and annotated instance
  attributes without a description), so the class directive excludes them.
  """
  names, indent = [], None
  inside = False
  for line in (inspect.getdoc(cls) or '').splitlines():
    if not line.strip():
      continue
    depth = len(line) - len(line.lstrip())
    if depth == 0:
      inside, indent = line.strip() == 'Attributes:', None
      continue
    if inside:
      indent = depth if indent is None else indent
      m = re.match(r'\s*(\w+)\s*(\([^)]*\))?:', line)
      if depth == indent and m:
        names.append(m.group(1))
  return names


def _directive(module, name: str) -> str:
  obj = getattr(module, name)
  full = f'{module.__name__}.{name}'
  if inspect.isclass(obj):
    if issubclass(obj, BaseException):
      return f'.. autoexception:: {full}\n'
    exclude = attribute_names(obj)
    options = f'   :exclude-members: {", ".join(exclude)}\n' if exclude else ''
    return f'.. autoclass:: {full}\n   :members:\n{options}'
  if callable(obj):
    return f'.. autofunction:: {full}\n'
  # py:data, not autodata: a constant has no docstring of its own and autodata
  # would show its type's ("Built-in immutable sequence").
  return f'.. py:data:: {name}\n   :module: {module.__name__}\n   :value: {_short_repr(obj)}\n'


def _short_repr(obj) -> str:
  text = repr(obj)
  return text if len(text) <= 80 else text[:77] + '...'


def write_api_pages(out: pathlib.Path = HERE / 'api') -> list[str]:
  """Writes ``api/<module>.rst`` for every entry of :data:`API`; returns the page names."""
  out.mkdir(exist_ok=True)
  pages = []
  for name, title, what in API:
    module = importlib.import_module(name)
    names = list(module.__all__)
    lines = [title, '=' * len(title), '', f'.. automodule:: {name}', '   :no-members:', '',
             f'*{what}.* Import path: ``{name}``; the members below are its ``__all__``.', '',
             '.. rubric:: Contents', '', '.. autosummary::', '   :nosignatures:', '']
    # Constants have no docstring of their own (autosummary would show their
    # type's): a table of their values instead.
    constants = [n for n in names if not callable(getattr(module, n))]
    lines += [f'   {n}' for n in names if n not in constants]
    if constants:
      lines += ['', '.. list-table::', '   :header-rows: 1', '', '   * - constant',
                '     - value']
      for n in constants:
        lines += [f'   * - :data:`{n}`', f'     - ``{_short_repr(getattr(module, n))}``']
    lines += ['', '.. rubric:: Reference', '']
    for n in names:
      lines.append(_directive(module, n))
    page = out / f'{name}.rst'
    text = '\n'.join(lines) + '\n'
    if not page.exists() or page.read_text() != text:  # unchanged pages stay cached
      page.write_text(text)
    pages.append(f'api/{name}')
  index = ['API reference', '=============', '',
           'One page per public package or module; each lists its ``__all__``, every name '
           'once, at the import path you use.', '', '.. toctree::', '   :maxdepth: 1', '']
  index += [f'   {p.removeprefix("api/")}' for p in pages]
  (out / 'index.rst').write_text('\n'.join(index) + '\n')
  return pages


def _skip_namedtuple_field_alias(app, what, name, obj, skip, options):
  """Skips a NamedTuple field whose only doc is Python's "Alias for field number N".

  A field the class's ``Attributes:`` describes is excluded already (see
  :func:`attribute_names`); this drops an undescribed one's uninformative
  entry (the class signature still names it).
  """
  del app, name, skip, options
  if (what == 'class' and isinstance(obj, collections._tuplegetter)  # pylint: disable=protected-access
      and (obj.__doc__ or '').startswith('Alias for field number')):
    return True
  return None  # autodoc decides


def setup(app):
  app.connect('autodoc-skip-member', _skip_namedtuple_field_alias)


write_api_pages()
