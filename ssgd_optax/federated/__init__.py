# Copyright 2026 The ssgd_optax Authors. Licensed under the Apache License 2.0.
"""Federated training: DSSGD rounds, parameter server, secure aggregation.

* the round, written once (``_rounds``): the orders (:data:`ORDERS`:
  ``round_robin``, ``random``, ``synchronous``, ``asynchronous``), the keys of
  a round, the upload check, the rules (sequential orders **add** each
  upload; a synchronous round applies the **mean** of its uploads, or of the
  survivors' secure sum), :class:`SecureAggregation` (an option of the
  synchronous order, not an order) and the :class:`RoundReport`; what the
  simulation and the Flower apps both run (:class:`RoundConfig`).
* the simulation (``make_dssgd``): ``N`` participants vectorised with
  ``vmap`` (or scanned in turn), each with a data shard, uploading through any
  optax transform (``selective_sharing``, ``unit_normalize``...); centralized
  and standalone baselines. Core dependencies only (secure aggregation needs
  the ``federated`` extra).
* the parameter server (``server_init``, ``server_apply``, ``download_mask``:
  per-parameter statistics, ``theta_d`` downloads).
* :mod:`~ssgd_optax.federated.secure_aggregation`: Bonawitz-style masking
  with X25519 key agreement, Shamir-shared seeds for dropout recovery,
  authenticated messages, verified reconstruction and a range-checked sum, and
  a persistent participant record against repeated rounds (needs the
  ``federated`` extra: ``cryptography``).
* :mod:`~ssgd_optax.federated.distributed_dp`: each participant's share of
  discrete Gaussian noise for the secure sum (Kairouz, Liu & Steinke 2021),
  accounted with ``dp_accounting`` (no ``flwr`` or ``cryptography`` needed).
* :mod:`~ssgd_optax.federated.flower`: the same rounds as a Flower
  ``ClientApp``/``ServerApp`` for Flower's simulation engine and deployment
  runtime: waits for the nodes, loud failures with per-round dropout counts,
  secure aggregation as Flower messages with clients that draw their own
  randomness and refuse a repeated model, privacy report (needs the
  ``flower`` extra: ``flwr >= 1.42``; ``examples/flower_app``).

The three last modules are imported on first access.
"""

import importlib as _importlib

from ssgd_optax.federated._server import DOWNLOAD_CRITERIA
from ssgd_optax.federated._server import ServerState
from ssgd_optax.federated._server import download_mask
from ssgd_optax.federated._server import server_apply
from ssgd_optax.federated._server import server_apply_many
from ssgd_optax.federated._server import server_init
from ssgd_optax.federated._rounds import ORDERS
from ssgd_optax.federated._rounds import RoundConfig
from ssgd_optax.federated._rounds import RoundReport
from ssgd_optax.federated._rounds import SecureAggregation
from ssgd_optax.federated._simulation import DSSGD
from ssgd_optax.federated._simulation import ClientStates
from ssgd_optax.federated._simulation import RoundInfo
from ssgd_optax.federated._simulation import SimulationState
from ssgd_optax.federated._simulation import local_sgd
from ssgd_optax.federated._simulation import make_dssgd
from ssgd_optax.federated._simulation import shard
from ssgd_optax.federated._simulation import train_centralized
from ssgd_optax.federated._simulation import train_standalone

_LAZY = ('secure_aggregation', 'distributed_dp', 'flower')

__all__ = [
    'DOWNLOAD_CRITERIA', 'ORDERS', 'ClientStates', 'DSSGD', 'RoundConfig', 'RoundInfo',
    'RoundReport', 'SecureAggregation', 'ServerState', 'SimulationState', 'download_mask',
    'local_sgd', 'make_dssgd', 'server_apply', 'server_apply_many', 'server_init', 'shard',
    'train_centralized', 'train_standalone',
]


def __getattr__(name):
  if name in _LAZY:
    return _importlib.import_module(f'ssgd_optax.federated.{name}')
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


def __dir__():
  return sorted(set(globals()) | set(_LAZY))
