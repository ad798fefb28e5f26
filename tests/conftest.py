# Copyright 2026 The ssgd_optax Authors. Licensed under the Apache License 2.0.
"""Test set-up: virtual CPU devices (set before JAX is imported anywhere) and
the device-count guards of multi-device tests.

The number of virtual CPU devices is, in order: an
``--xla_force_host_platform_device_count=K`` already in ``XLA_FLAGS``, else
``SSGD_TEST_DEVICES`` (default 8). ``SSGD_TEST_DEVICES=1`` runs the suite as
on a single accelerator, where every multi-device test must skip with its
reason. ``JAX_PLATFORMS`` defaults to ``cpu``; set it to ``cuda`` (or ``tpu``)
to run the suite on an accelerator, where the device count is the hardware's.

Multi-device tests say what they need with ``@pytest.mark.devices(n)`` or by
calling the ``require_devices`` fixture (``require_devices(n)``).
"""

import os
import re

import pytest

_ENV = 'SSGD_TEST_DEVICES'
_FLAG = '--xla_force_host_platform_device_count'


def _devices_from_env() -> int:
  raw = os.environ.get(_ENV, '8')
  try:
    n = int(raw)
  except ValueError:
    n = 0
  if n < 1:
    raise pytest.UsageError(f'{_ENV} must be an int >= 1 (virtual CPU devices); got {raw!r}.')
  return n


if not re.search(_FLAG + r'=\d+', os.environ.get('XLA_FLAGS', '')):
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                             f' {_FLAG}={_devices_from_env()}').strip()
# Tests are written for the CPU backend (virtual devices, gloo collectives).
os.environ.setdefault('JAX_PLATFORMS', 'cpu')


def skip_unless_devices(n: int) -> None:
  """Skips the calling test when fewer than ``n`` JAX devices are visible."""
  import jax  # pylint: disable=import-outside-toplevel
  have = jax.device_count()
  if have < n:
    pytest.skip(f'needs {n} devices, {have} visible ({jax.default_backend()}); on CPU '
                f'run with {_ENV}={n} or more (tests/conftest.py)')


def pytest_configure(config):
  config.addinivalue_line(
      'markers', 'devices(n): needs at least n JAX devices; skipped with the reason otherwise')


def pytest_runtest_setup(item):
  marker = item.get_closest_marker('devices')
  if marker is not None:
    skip_unless_devices(int(marker.args[0]))


@pytest.fixture
def require_devices():
  """``require_devices(n)`` skips the test when fewer than ``n`` devices are visible."""
  return skip_unless_devices
