# Copyright 2026 The ssgd_optax Authors. Licensed under the Apache License 2.0.
"""ssgd_optax: optax transformations that limit what shared gradients leak.

The core (this namespace) needs only jax, optax, chex and numpy. Subpackages
with heavier dependencies are imported on first access, e.g.
``ssgd_optax.attacks`` (extra ``attacks``) or ``ssgd_optax.privacy`` (extra
``privacy``).
"""

import importlib as _importlib

from ssgd_optax.grouping import SCOPES
from ssgd_optax.normalize import group_norms
from ssgd_optax.normalize import ssgd
from ssgd_optax.normalize import unit_normalize
from ssgd_optax.parallel import aggregate
from ssgd_optax.selective import dp_selective_sharing
from ssgd_optax.selective import selective_sharing

__version__ = '0.1.0'

# Subpackages loaded lazily so that `import ssgd_optax` stays light.
_LAZY_SUBMODULES = ('attacks', 'audit', 'federated', 'grouping', 'normalize', 'parallel',
                    'per_example', 'privacy', 'selective', 'testing')

# Old names kept for one release (0.2), each warning with its replacement.
# `ssgd_optax.dp_ssgd` was a module beside the function `ssgd`; DP-SSGD now
# lives with every other DP mechanism in `ssgd_optax.privacy` (the function
# `ssgd_optax.privacy.dp_ssgd`, the module
# `ssgd_optax.privacy.unit_normalization`). No `sys.modules` entry keeps the
# old path importable: `import ssgd_optax.dp_ssgd` fails, attribute access
# warns.
_DEPRECATED_MODULES = {
    'dp_ssgd': ('ssgd_optax.privacy.unit_normalization',
                'ssgd_optax.dp_ssgd (a module) is deprecated and will be removed in 0.3: '
                'use ssgd_optax.privacy.unit_normalization, or import the function as '
                '`from ssgd_optax.privacy import dp_ssgd`.'),
}

__all__ = [
    'SCOPES',
    'aggregate',
    'dp_selective_sharing',
    'group_norms',
    'selective_sharing',
    'ssgd',
    'unit_normalize',
]


def __getattr__(name):
  if name in _LAZY_SUBMODULES:
    return _importlib.import_module(f'ssgd_optax.{name}')
  if name in _DEPRECATED_MODULES:
    import warnings  # pylint: disable=g-import-not-at-top
    target, message = _DEPRECATED_MODULES[name]
    warnings.warn(message, DeprecationWarning, stacklevel=2)
    return _importlib.import_module(target)
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


def __dir__():
  return sorted(set(globals()) | set(_LAZY_SUBMODULES))
