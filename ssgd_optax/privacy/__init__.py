# Copyright 2026 The ssgd_optax Authors. Licensed under the Apache License 2.0.
"""Differential privacy: every DP mechanism of the package, its noise and its accounting.

Needs the ``privacy`` extra (``dp-accounting``, ``scipy``, ``flax``).

Every DP path has a **mechanism object** holding what its guarantee rests on
(noise multiplier, sensitivity, releases per step, neighbouring relation, the
``dp_accounting`` event of one step: the :class:`Mechanism` protocol). Build
it once; pass it to the transform that adds the noise and to the accountant
(``compute_epsilon(mechanism, ...)``, ``BudgetTracker(mechanism=...)``,
``calibrate_noise_multiplier(..., mechanism=...)``), so they cannot disagree;
the accountant asks the object for its event and never switches on its type
(:class:`GaussianMechanism` covers a Gaussian release of your own).

=========  ======================  =======================  ==========  ===========
mechanism  noise / gradients       object, factory          L2 sens.    relation
=========  ======================  =======================  ==========  ===========
DP-SGD     dpsgd_grad_sum          DPSGDMechanism           C;          add/remove
           + add_gaussian_noise    dpsgd_mechanism          1 release   one example
backprop   backprop_clip_grad_sum  BackpropClipMechanism    Delta_l     add/remove
           + add_gaussian_noise    backprop_clip_mechanism  per         one example
                                                            tensor;
                                                            L releases
DP-SSGD    dp_unit_normalize,      DPSSGDMechanism          sqrt(G);    add/remove
           dp_ssgd                 dp_ssgd_mechanism        1 release   one example
DSSGD SVT  dp_selective_sharing    SparseVectorMechanism    2 gamma;    replace one
                                   sparse_vector_mechanism  c values    participant
                                                                        per round
=========  ======================  =======================  ==========  ===========

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

What lives where (implementation modules are private; import from here):

* mechanism objects (``DPSGDMechanism``...), their factories;
* per-example clipping primitives on the batch axis (``clip_inputs``,
  ``clip_upstream`` as ``jax.custom_vjp``, ``clip_per_example``,
  ``per_example_norm``);
* backprop-clipping layers (``ClippedLayer``/``ClippedLinear``/
  ``ClippedConv``, ``clip_layers``, ``sensitivities``, ``num_releases``,
  ``check_model``);
* the Gaussian noise step (``add_gaussian_noise``, key in state);
* gradient sums (``backprop_clip_grad_sum``, ``dpsgd_grad_sum``,
  ``ghost_grad_sum``/``ghost_norms``);
* DP-SSGD (``dp_ssgd``, ``dp_unit_normalize``, ``normalize_per_example``,
  ``noisy_normalized_mean``);
* Poisson sampling (``poisson_sample``, ``max_batch_size_for``...);
* accounting (``compute_epsilon``, ``calibrate_noise_multiplier``,
  ``BudgetTracker``; ``dp_accounting``, PLD/RDP);
* the privacy ledger of a data set over all its runs (``PrivacyLedger``,
  ``LedgerRun``, ``LedgerError``, ``TotalBudgetExceededError``): write-ahead,
  composed by ``dp_accounting``, with a total-epsilon limit.
"""

from ssgd_optax.privacy._accounting import ACCOUNTANTS
from ssgd_optax.privacy._accounting import BudgetExhaustedError
from ssgd_optax.privacy._accounting import BudgetTracker
from ssgd_optax.privacy._accounting import calibrate_noise_multiplier
from ssgd_optax.privacy._accounting import compute_delta
from ssgd_optax.privacy._accounting import compute_epsilon
from ssgd_optax.privacy._accounting import make_dp_event
from ssgd_optax.privacy._clipping import NONFINITE
from ssgd_optax.privacy._clipping import NORMS
from ssgd_optax.privacy._clipping import clip_inputs
from ssgd_optax.privacy._clipping import clip_per_example
from ssgd_optax.privacy._clipping import clip_upstream
from ssgd_optax.privacy._clipping import per_example_norm
from ssgd_optax.privacy._dpsgd import backprop_clip_grad_sum
from ssgd_optax.privacy._dpsgd import clip_global_per_example
from ssgd_optax.privacy._dpsgd import dpsgd_grad_sum
from ssgd_optax.privacy._ledger import LedgerError
from ssgd_optax.privacy._ledger import LedgerRun
from ssgd_optax.privacy._ledger import PrivacyLedger
from ssgd_optax.privacy._ledger import TotalBudgetExceededError
from ssgd_optax.privacy._layers import ClippedConv
from ssgd_optax.privacy._layers import ClippedLayer
from ssgd_optax.privacy._layers import ClippedLinear
from ssgd_optax.privacy._layers import check_model
from ssgd_optax.privacy._layers import clip_layers
from ssgd_optax.privacy._layers import num_releases
from ssgd_optax.privacy._layers import sensitivities
from ssgd_optax.privacy._ghost import GhostGradSum
from ssgd_optax.privacy._ghost import GhostNorms
from ssgd_optax.privacy._ghost import ghost_grad_sum
from ssgd_optax.privacy._ghost import ghost_norms
from ssgd_optax.privacy._ghost import ghost_supported
from ssgd_optax.privacy._mechanisms import BackpropClipMechanism
from ssgd_optax.privacy._mechanisms import DPSGDMechanism
from ssgd_optax.privacy._mechanisms import backprop_clip_mechanism
from ssgd_optax.privacy._mechanisms import dpsgd_mechanism
from ssgd_optax.privacy._noise import GaussianNoiseState
from ssgd_optax.privacy._noise import add_gaussian_noise
from ssgd_optax.privacy._sampling import max_batch_size_for
from ssgd_optax.privacy._sampling import overflow_probability
from ssgd_optax.privacy._sampling import poisson_sample
from ssgd_optax.privacy._sampling import truncation_delta
from ssgd_optax.privacy._mechanisms import DPSSGDMechanism
from ssgd_optax.privacy._unit_normalization import DPUnitNormalizeState
from ssgd_optax.privacy._unit_normalization import dp_ssgd
from ssgd_optax.privacy._mechanisms import dp_ssgd_mechanism
from ssgd_optax.privacy._unit_normalization import dp_unit_normalize
from ssgd_optax.privacy._unit_normalization import noisy_normalized_mean
from ssgd_optax.privacy._unit_normalization import normalize_per_example
from ssgd_optax._keys import os_seed
from ssgd_optax.privacy._mechanisms import ADD_REMOVE_ONE
from ssgd_optax.privacy._mechanisms import GaussianMechanism
from ssgd_optax.privacy._mechanisms import Mechanism
from ssgd_optax.privacy._mechanisms import NEIGHBORING_RELATIONS
from ssgd_optax.privacy._mechanisms import REPLACE_ONE
from ssgd_optax.privacy._mechanisms import gaussian_step_event
from ssgd_optax.privacy._sparse_vector import DPSelectiveSharingState
from ssgd_optax.privacy._sparse_vector import DPSparseVectorPrivacy
from ssgd_optax.privacy._sparse_vector import SparseVectorMechanism
from ssgd_optax.privacy._sparse_vector import dp_selective_sharing
from ssgd_optax.privacy._sparse_vector import dp_selective_sharing_privacy
from ssgd_optax.privacy._sparse_vector import epsilon_from_per_parameter
from ssgd_optax.privacy._sparse_vector import sparse_vector_mechanism

__all__ = [
    'ACCOUNTANTS',
    'add_gaussian_noise',
    'ADD_REMOVE_ONE',
    'backprop_clip_grad_sum',
    'backprop_clip_mechanism',
    'BackpropClipMechanism',
    'BudgetExhaustedError',
    'BudgetTracker',
    'calibrate_noise_multiplier',
    'check_model',
    'clip_global_per_example',
    'clip_inputs',
    'clip_layers',
    'clip_per_example',
    'clip_upstream',
    'ClippedConv',
    'ClippedLayer',
    'ClippedLinear',
    'compute_delta',
    'compute_epsilon',
    'dp_selective_sharing',
    'dp_selective_sharing_privacy',
    'dp_ssgd',
    'dp_ssgd_mechanism',
    'dp_unit_normalize',
    'DPSelectiveSharingState',
    'dpsgd_grad_sum',
    'dpsgd_mechanism',
    'DPSGDMechanism',
    'DPSparseVectorPrivacy',
    'DPSSGDMechanism',
    'DPUnitNormalizeState',
    'epsilon_from_per_parameter',
    'gaussian_step_event',
    'GaussianMechanism',
    'GaussianNoiseState',
    'ghost_grad_sum',
    'ghost_norms',
    'ghost_supported',
    'GhostGradSum',
    'GhostNorms',
    'LedgerError',
    'LedgerRun',
    'make_dp_event',
    'max_batch_size_for',
    'Mechanism',
    'NEIGHBORING_RELATIONS',
    'noisy_normalized_mean',
    'NONFINITE',
    'normalize_per_example',
    'NORMS',
    'num_releases',
    'os_seed',
    'overflow_probability',
    'per_example_norm',
    'poisson_sample',
    'PrivacyLedger',
    'REPLACE_ONE',
    'sensitivities',
    'sparse_vector_mechanism',
    'SparseVectorMechanism',
    'TotalBudgetExceededError',
    'truncation_delta',
]
