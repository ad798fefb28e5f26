# Copyright 2026 The ssgd_optax Authors. Licensed under the Apache License 2.0.
"""Loads the repository's example and benchmark scripts as modules, by path.

By path, not ``import examples...``: a top-level ``examples`` package that
another project installs (Opacus ships one) would shadow the folder.
"""

import importlib.util
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def load(relpath: str, name: str | None = None):
  """Executes ``ROOT / relpath`` as a fresh module named ``name`` (default: file stem)."""
  path = ROOT / relpath
  spec = importlib.util.spec_from_file_location(name or f'script_{path.stem}', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module
