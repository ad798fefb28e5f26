# Copyright 2026 The ssgd_optax Authors. Licensed under the Apache License 2.0.
"""Differential privacy: backpropagation clipping, DP-SGD, sampling, accounting.

Needs the ``privacy`` extra (``dp-accounting``, ``scipy``, ``flax``).

* :mod:`~ssgd_optax.privacy.clipping`: ``clip_inputs``, ``clip_upstream``
  (``jax.custom_vjp``), the per-example clipping primitives on the batch axis.
* :mod:`~ssgd_optax.privacy.layers`: ``ClippedLayer``/``ClippedLinear``/
  ``ClippedConv``, ``clip_layers`` (wrap an existing model), ``sensitivities``,
  ``num_releases``, ``StevensCNN``.
* :mod:`~ssgd_optax.privacy.noise`: ``add_gaussian_noise``, the Gaussian
  mechanism as an optax transformation (key in state).
* :mod:`~ssgd_optax.privacy.dpsgd`: ``backprop_clip_grad_sum`` and the
  per-example DP-SGD baseline ``dpsgd_grad_sum``.
* :mod:`~ssgd_optax.privacy.sampling`: ``poisson_sample`` into fixed-size
  masked batches under ``jit``, ``max_batch_size_for``.
* :mod:`~ssgd_optax.privacy.accounting`: ``compute_epsilon``,
  ``calibrate_noise_multiplier``, ``BudgetTracker`` (``dp_accounting``, PLD/RDP,
  ``num_releases`` Gaussian mechanisms per Poisson-sampled step).
"""

from ssgd_optax.privacy.accounting import ACCOUNTANTS
from ssgd_optax.privacy.accounting import BudgetExhaustedError
from ssgd_optax.privacy.accounting import BudgetTracker
from ssgd_optax.privacy.accounting import calibrate_noise_multiplier
from ssgd_optax.privacy.accounting import compute_delta
from ssgd_optax.privacy.accounting import compute_epsilon
from ssgd_optax.privacy.accounting import make_dp_event
from ssgd_optax.privacy.clipping import NORMS
from ssgd_optax.privacy.clipping import clip_inputs
from ssgd_optax.privacy.clipping import clip_per_example
from ssgd_optax.privacy.clipping import clip_upstream
from ssgd_optax.privacy.clipping import per_example_norm
from ssgd_optax.privacy.dpsgd import backprop_clip_grad_sum
from ssgd_optax.privacy.dpsgd import clip_global_per_example
from ssgd_optax.privacy.dpsgd import dpsgd_grad_sum
from ssgd_optax.privacy.layers import ClippedConv
from ssgd_optax.privacy.layers import ClippedLayer
from ssgd_optax.privacy.layers import ClippedLinear
from ssgd_optax.privacy.layers import StevensCNN
from ssgd_optax.privacy.layers import check_model
from ssgd_optax.privacy.layers import clip_layers
from ssgd_optax.privacy.layers import num_releases
from ssgd_optax.privacy.layers import sensitivities
from ssgd_optax.privacy.noise import GaussianNoiseState
from ssgd_optax.privacy.noise import add_gaussian_noise
from ssgd_optax.privacy.sampling import max_batch_size_for
from ssgd_optax.privacy.sampling import overflow_probability
from ssgd_optax.privacy.sampling import poisson_sample
from ssgd_optax.privacy.sampling import truncation_delta

__all__ = [
    'ACCOUNTANTS',
    'BudgetExhaustedError',
    'BudgetTracker',
    'ClippedConv',
    'ClippedLayer',
    'ClippedLinear',
    'GaussianNoiseState',
    'NORMS',
    'StevensCNN',
    'add_gaussian_noise',
    'backprop_clip_grad_sum',
    'calibrate_noise_multiplier',
    'check_model',
    'clip_global_per_example',
    'clip_inputs',
    'clip_layers',
    'clip_per_example',
    'clip_upstream',
    'compute_delta',
    'compute_epsilon',
    'dpsgd_grad_sum',
    'make_dp_event',
    'max_batch_size_for',
    'num_releases',
    'overflow_probability',
    'per_example_norm',
    'poisson_sample',
    'sensitivities',
    'truncation_delta',
]
