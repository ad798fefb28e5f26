# Copyright 2026 The ssgd_optax Authors. Licensed under the Apache License 2.0.
"""Test set-up: 8 virtual CPU devices, set before JAX is imported anywhere."""

import os

_FLAG = '--xla_force_host_platform_device_count=8'
if _FLAG not in os.environ.get('XLA_FLAGS', ''):
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') + ' ' + _FLAG).strip()
# Tests are written for the CPU backend (virtual devices, gloo collectives).
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
