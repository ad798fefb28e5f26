# Copyright 2026 The ssgd_optax Authors. Licensed under the Apache License 2.0.
"""Loads the repository's example and benchmark scripts as modules, by path.

By path, not ``import examples...``: a top-level ``examples`` package that
another project installs (Opacus ships one) would shadow the folder. The one
loader of the repository: benchmarks and tests use it.

Example:

>>> train = load('examples/quickstart.py')
>>> callable(train.main)
True
"""

from __future__ import annotations

import importlib.util
import sys
import types

from ssgd_examples import ROOT

__all__ = ['ROOT', 'load']


def load(relpath: str, name: str | None = None) -> types.ModuleType:
  """Executes ``ROOT / relpath`` as a fresh module named ``name`` (default: ``script_<stem>``).

  Args:
    relpath: the script's path relative to the repository root.
    name: the module name (give distinct names to load one script twice).

  Returns:
    The module, executed (its ``if __name__ == '__main__'`` block is not run)
    and registered in ``sys.modules`` under ``name`` (dataclasses and pickle
    look modules up there).
  """
  path = ROOT / relpath
  if not path.is_file():
    raise FileNotFoundError(f'no script at {path}.')
  spec = importlib.util.spec_from_file_location(name or f'script_{path.stem}', path)
  module = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = module
  try:
    spec.loader.exec_module(module)
  except BaseException:
    sys.modules.pop(spec.name, None)
    raise
  return module
