# Copyright 2026 The ssgd_optax Authors. Licensed under the Apache License 2.0.
"""ssgd_optax: optax transformations that limit what shared gradients leak.

The core (this namespace) needs only jax, optax, chex and numpy:
:func:`unit_normalize` / :func:`ssgd` (SSGD), :func:`aggregate` (the
all-reduce as a transformation), :func:`selective_sharing` (DSSGD's upload
selection). The rest is imported on first access, one public module or
package per concern:

=====================  ====================================================
``parallel``           data-parallel steps, meshes, multi-host batches
``per_example``        per-example gradients (vmap, microbatches, masks)
``privacy``            every DP mechanism, its noise and its accounting
``federated``          DSSGD rounds, the parameter server, secure
                       aggregation, Flower apps
``attacks``            gradient-leakage attacks and their metrics
``audit``              empirical privacy audits
``testing``            checks of compiled programs for your own tests
=====================  ====================================================

Implementation modules are private (``_normalize.py``...): every public name
has one import path, the one listed in an ``__all__``.
"""

import importlib as _importlib

from ssgd_optax._grouping import SCOPES
from ssgd_optax._normalize import group_norms
from ssgd_optax._normalize import ssgd
from ssgd_optax._normalize import unit_normalize
from ssgd_optax._selective import SELECTION_STRATEGIES
from ssgd_optax._selective import SelectiveSharingState
from ssgd_optax._selective import num_shared
from ssgd_optax._selective import selective_sharing
from ssgd_optax.parallel import REDUCTIONS
from ssgd_optax.parallel import aggregate

__version__ = '0.1.0'

# Subpackages loaded lazily so that `import ssgd_optax` stays light.
_LAZY_SUBMODULES = ('attacks', 'audit', 'federated', 'parallel', 'per_example', 'privacy',
                    'testing')

__all__ = [
    'REDUCTIONS',
    'SCOPES',
    'SELECTION_STRATEGIES',
    'SelectiveSharingState',
    'aggregate',
    'group_norms',
    'num_shared',
    'selective_sharing',
    'ssgd',
    'unit_normalize',
]


def __getattr__(name):
  if name in _LAZY_SUBMODULES:
    return _importlib.import_module(f'ssgd_optax.{name}')
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


def __dir__():
  return sorted(set(globals()) | set(_LAZY_SUBMODULES))
