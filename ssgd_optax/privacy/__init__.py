# Copyright 2026 The ssgd_optax Authors. Licensed under the Apache License 2.0.
"""Differential privacy: every DP mechanism of the package, its noise and its accounting.

Needs the ``privacy`` extra (``dp-accounting``, ``scipy``, ``flax``).

Every DP path has a **mechanism object** holding what its guarantee rests on
(noise multiplier, sensitivity, releases per step, neighbouring relation).
Build it once; pass it to the transform that adds the noise and to the
accountant (``compute_epsilon(mechanism, ...)``, ``BudgetTracker(mechanism=...)``,
``calibrate_noise_multiplier(..., mechanism=...)``), so they cannot disagree.

=========  ======================  =======================  ==========  ===========  ===============
mechanism  noise / gradients       object, factory          L2 sens.    relation     accountant
=========  ======================  =======================  ==========  ===========  ===============
DP-SGD     dpsgd_grad_sum          DPSGDMechanism           C;          add/remove   compute_epsilon
           + add_gaussian_noise    dpsgd_mechanism          1 release   one example
backprop   backprop_clip_grad_sum  BackpropClipMechanism    Delta_l     add/remove   compute_epsilon
           + add_gaussian_noise    backprop_clip_mechanism  per         one example
                                                            tensor;
                                                            L releases
DP-SSGD    dp_unit_normalize,      DPSSGDMechanism          sqrt(G);    add/remove   compute_epsilon
           dp_ssgd                 dp_ssgd_mechanism        1 release   one example
DSSGD SVT  dp_selective_sharing    SparseVectorMechanism    2 gamma;    replace one  compute_epsilon
           (ssgd_optax core)       sparse_vector_mechanism  c values    participant  (steps=rounds)
                                                                        per round
=========  ======================  =======================  ==========  ===========  ===============

(backprop: backpropagation clipping, Stevens et al.; DSSGD SVT: the sparse
vector release of Shokri & Shmatikov's DSSGD, NumericSparse.) Accountant
calls, the same for every row: ``compute_epsilon(m, sampling_rate=q,
steps=T, delta=d)``, ``BudgetTracker(epsilon, delta, mechanism=m,
sampling_rate=q)`` and (Gaussian rows) ``calibrate_noise_multiplier(epsilon,
mechanism=m, sampling_rate=q, steps=T, delta=d)``; the sparse vector counts
rounds as steps and takes no ``sampling_rate``. The transforms take the same
object as ``mechanism=m``.

The Gaussian mechanisms assume Poisson sampling at rate ``q``
(:func:`poisson_sample`) and divide by the expected batch size; the sparse
vector has no sampling and guarantees epsilon per participant per round.
Each mechanism class states its guarantee in a "Guarantees" section.

Modules:

* :mod:`~ssgd_optax.privacy.mechanisms`: the mechanism objects above.
* :mod:`~ssgd_optax.privacy.clipping`: ``clip_inputs``, ``clip_upstream``
  (``jax.custom_vjp``), the per-example clipping primitives on the batch axis.
* :mod:`~ssgd_optax.privacy.layers`: ``ClippedLayer``/``ClippedLinear``/
  ``ClippedConv``, ``clip_layers`` (wrap an existing model), ``sensitivities``,
  ``num_releases``.
* :mod:`~ssgd_optax.privacy.noise`: ``add_gaussian_noise``, the Gaussian
  mechanism as an optax transformation (key in state).
* :mod:`~ssgd_optax.privacy.dpsgd`: ``backprop_clip_grad_sum`` and the
  per-example DP-SGD baseline ``dpsgd_grad_sum``.
* :mod:`~ssgd_optax.privacy.unit_normalization`: DP-SSGD, per-example unit
  normalisation plus Gaussian noise (``dp_ssgd``, ``dp_unit_normalize``,
  ``normalize_per_example``, ``noisy_normalized_mean``).
* :mod:`~ssgd_optax.privacy.sampling`: ``poisson_sample`` into fixed-size
  masked batches under ``jit``, ``max_batch_size_for``.
* :mod:`~ssgd_optax.privacy.accounting`: ``compute_epsilon``,
  ``calibrate_noise_multiplier`` (the only one), ``BudgetTracker``
  (``dp_accounting``, PLD/RDP).
* :func:`ssgd_optax.selective.dp_selective_sharing` lives in the core package
  (no extra needed); its mechanism object is re-exported here.
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
from ssgd_optax.privacy.layers import check_model
from ssgd_optax.privacy.layers import clip_layers
from ssgd_optax.privacy.layers import num_releases
from ssgd_optax.privacy.layers import sensitivities
from ssgd_optax.privacy.ghost import GhostGradSum
from ssgd_optax.privacy.ghost import GhostNorms
from ssgd_optax.privacy.ghost import ghost_grad_sum
from ssgd_optax.privacy.ghost import ghost_norms
from ssgd_optax.privacy.ghost import ghost_supported
from ssgd_optax.privacy.mechanisms import BackpropClipMechanism
from ssgd_optax.privacy.mechanisms import DPSGDMechanism
from ssgd_optax.privacy.mechanisms import backprop_clip_mechanism
from ssgd_optax.privacy.mechanisms import dpsgd_mechanism
from ssgd_optax.privacy.noise import GaussianNoiseState
from ssgd_optax.privacy.noise import add_gaussian_noise
from ssgd_optax.privacy.sampling import max_batch_size_for
from ssgd_optax.privacy.sampling import overflow_probability
from ssgd_optax.privacy.sampling import poisson_sample
from ssgd_optax.privacy.sampling import truncation_delta
from ssgd_optax.privacy.mechanisms import DPSSGDMechanism
from ssgd_optax.privacy.unit_normalization import DPUnitNormalizeState
from ssgd_optax.privacy.unit_normalization import dp_ssgd
from ssgd_optax.privacy.mechanisms import dp_ssgd_mechanism
from ssgd_optax.privacy.unit_normalization import dp_unit_normalize
from ssgd_optax.privacy.unit_normalization import noisy_normalized_mean
from ssgd_optax.privacy.unit_normalization import normalize_per_example
from ssgd_optax.selective import SparseVectorMechanism
from ssgd_optax.selective import sparse_vector_mechanism

__all__ = [
    'ACCOUNTANTS',
    'BackpropClipMechanism',
    'BudgetExhaustedError',
    'BudgetTracker',
    'ClippedConv',
    'ClippedLayer',
    'ClippedLinear',
    'DPSGDMechanism',
    'DPSSGDMechanism',
    'DPUnitNormalizeState',
    'GaussianNoiseState',
    'NORMS',
    'SparseVectorMechanism',
    'add_gaussian_noise',
    'backprop_clip_grad_sum',
    'backprop_clip_mechanism',
    'calibrate_noise_multiplier',
    'check_model',
    'clip_global_per_example',
    'clip_inputs',
    'clip_layers',
    'clip_per_example',
    'clip_upstream',
    'compute_delta',
    'compute_epsilon',
    'dp_ssgd',
    'dp_ssgd_mechanism',
    'dp_unit_normalize',
    'dpsgd_grad_sum',
    'GhostGradSum',
    'GhostNorms',
    'ghost_grad_sum',
    'ghost_norms',
    'ghost_supported',
    'dpsgd_mechanism',
    'make_dp_event',
    'max_batch_size_for',
    'noisy_normalized_mean',
    'normalize_per_example',
    'num_releases',
    'overflow_probability',
    'per_example_norm',
    'poisson_sample',
    'sensitivities',
    'sparse_vector_mechanism',
    'truncation_delta',
]
