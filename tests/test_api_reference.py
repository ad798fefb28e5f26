# Copyright 2026 The ssgd_optax Authors. Licensed under the Apache License 2.0.
"""The API reference (docs/conf.py, Sphinx) covers every public name exactly once.

The cheap test checks the pages docs/conf.py writes: one page per public
package or module, each name of its ``__all__`` documented once at its one
import path. The slow one builds the site as the README says
(``sphinx-build -W``: warnings, unresolved cross-references of our own
docstrings included, are errors) and counts each name's anchor in the HTML.
"""

import collections
import importlib
import importlib.util
import inspect
import pkgutil
import re
import subprocess
import sys
import warnings

import pytest
import ssgd_optax
from ssgd_examples import ROOT


def _public_modules() -> list[str]:
  with warnings.catch_warnings():
    warnings.simplefilter('ignore')
    names = ['ssgd_optax']
    for info in pkgutil.walk_packages(ssgd_optax.__path__, 'ssgd_optax.'):
      if not any(p.startswith('_') for p in info.name.split('.')):
        names.append(info.name)
  return names


def _expected() -> dict[str, str]:
  """``{'ssgd_optax.privacy.dp_ssgd': 'ssgd_optax.privacy', ...}`` over every public __all__."""
  out = {}
  for name in _public_modules():
    module = importlib.import_module(name)
    for n in module.__all__:
      out[f'{name}.{n}'] = name
  return out


def _conf():
  spec = importlib.util.spec_from_file_location('ssgd_docs_conf', ROOT / 'docs' / 'conf.py')
  conf = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(conf)
  return conf


def test_every_public_module_has_a_page_and_every_name_one_entry(tmp_path):
  conf = _conf()
  assert sorted(m for m, _, _ in conf.API) == sorted(_public_modules())
  pages = conf.write_api_pages(tmp_path)
  assert len(pages) == len(conf.API)
  documented = collections.Counter()
  for page in tmp_path.glob('ssgd_optax*.rst'):
    text = page.read_text()
    documented.update(re.findall(r'^\.\. auto(?:function|class|exception):: (\S+)$', text,
                                 flags=re.M))
    documented.update(f'{m}.{n}' for n, m in re.findall(
        r'^\.\. py:data:: (\S+)\n   :module: (\S+)$', text, flags=re.M))
  expected = _expected()
  assert set(documented) == set(expected)
  assert [n for n, c in documented.items() if c != 1] == []


def test_every_public_namedtuple_field_is_described_once_in_its_attributes():
  # The class's `Attributes:` section is each field's one entry (docs/conf.py
  # excludes autodoc's own "Alias for field number N" member for it).
  conf = _conf()
  gaps = {}
  for name in _public_modules():
    module = importlib.import_module(name)
    for n in module.__all__:
      obj = getattr(module, n)
      if inspect.isclass(obj) and issubclass(obj, tuple) and hasattr(obj, '_fields'):
        described = conf.attribute_names(obj)
        missing = [f for f in obj._fields if described.count(f) != 1]
        if missing:
          gaps[f'{name}.{n}'] = missing
  assert gaps == {}


@pytest.mark.slow  # builds the whole site (15-25 s on the loaded 2-core machine)
def test_the_reference_builds_with_warnings_as_errors_and_lists_each_name_once(tmp_path):
  pytest.importorskip('sphinx')
  pytest.importorskip('myst_parser')
  pytest.importorskip('furo')
  out = tmp_path / 'html'
  proc = subprocess.run([sys.executable, '-m', 'sphinx', '-W', '-b', 'html', '-q',
                         str(ROOT / 'docs'), str(out)], capture_output=True, text=True,
                        cwd=ROOT, timeout=1800)
  assert proc.returncode == 0, proc.stderr[-4000:]
  anchors = collections.Counter()
  for page in (out / 'api').glob('*.html'):
    text = page.read_text()
    anchors.update(re.findall(r'<dt class="sig sig-object py" id="([^"]+)"', text))
    assert 'Alias for field number' not in text, page.name
  expected = _expected()
  missing = sorted(set(expected) - set(anchors))
  assert not missing
  twice = sorted(n for n in expected if anchors[n] != 1)
  assert not twice
  # Private paths never appear as a documented object.
  assert not [a for a in anchors if re.search(r'\._', a)]
  assert (out / 'privacy.html').exists() and (out / 'index.html').exists()
