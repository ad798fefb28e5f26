# Copyright 2026 The ssgd_optax Authors. Licensed under the Apache License 2.0.
"""Gradient-leakage attacks: what can an observer of the shared update reconstruct?

The JAX counterpart of breaching. The threat model (:class:`Observation`): the
attacker knows ``apply_fn`` and the parameters, the input shape and range,
the batch size and optionally the labels, and sees the **shared update**
(after the client's defence). "Attack X against defence Y" is::

    obs = attacks.observe(apply_fn, params, x, y, defence=Y)
    result = attacks.X(apply_fn, obs, key=key)
    scores = attacks.score(x, result.inputs, true_labels=y, rec_labels=result.labels)

Attacks: :func:`dlg`, :func:`idlg`, :func:`adaptive_dlg`,
:func:`inverting_gradients`, :func:`analytic_attack`, :func:`rgap`; the
malicious-server imprint attack :func:`imprint_model` / :func:`imprint_attack`
(with :func:`expected_recovered`, :func:`secure_aggregate`); label
recovery :func:`recover_labels`; architecture analysis :func:`rank_analysis`
and :func:`copa_index`; metrics :func:`score` (MSE, PSNR, SSIM, labels);
defences registry :func:`make_defence`.

Needs the ``attacks`` extra (dm-pix, scipy via scikit-image), and ``flax`` for
:func:`as_functional`. The victim models of the literature (DLG's sigmoid
LeNet...) live with the examples (``examples/ssgd_examples/models.py``).
"""

from ssgd_optax.attacks._analytic import ANALYTIC_RESCALES
from ssgd_optax.attacks._analytic import analytic_attack
from ssgd_optax.attacks._analytic import invert_dense
from ssgd_optax.attacks._defences import available_defences
from ssgd_optax.attacks._defences import gaussian_noise
from ssgd_optax.attacks._defences import make_defence
from ssgd_optax.attacks._defences import prune
from ssgd_optax.attacks._defences import register_defence
from ssgd_optax.attacks._defences import unregister_defence
from ssgd_optax.attacks._deep_leakage import adaptive_dlg
from ssgd_optax.attacks._deep_leakage import dlg
from ssgd_optax.attacks._deep_leakage import idlg
from ssgd_optax.attacks._imprint import IMPRINT_RESCALES
from ssgd_optax.attacks._imprint import expected_recovered
from ssgd_optax.attacks._imprint import imprint_attack
from ssgd_optax.attacks._imprint import imprint_bins
from ssgd_optax.attacks._imprint import imprint_model
from ssgd_optax.attacks._imprint import imprint_readout
from ssgd_optax.attacks._imprint import imprint_thresholds
from ssgd_optax.attacks._imprint import ImprintedModel
from ssgd_optax.attacks._imprint import measurement_vector
from ssgd_optax.attacks._imprint import secure_aggregate
from ssgd_optax.attacks._inverting import inverting_gradients
from ssgd_optax.attacks._labels import find_last_layer
from ssgd_optax.attacks._labels import idlg_label
from ssgd_optax.attacks._labels import recover_labels
from ssgd_optax.attacks._metrics import label_accuracy
from ssgd_optax.attacks._metrics import match_batch
from ssgd_optax.attacks._metrics import mse
from ssgd_optax.attacks._metrics import psnr
from ssgd_optax.attacks._metrics import score
from ssgd_optax.attacks._metrics import Scores
from ssgd_optax.attacks._metrics import ssim
from ssgd_optax.attacks._objectives import cosine_distance
from ssgd_optax.attacks._objectives import gradient_distance
from ssgd_optax.attacks._objectives import l2_distance
from ssgd_optax.attacks._objectives import total_variation
from ssgd_optax.attacks._recursive import ConvSpec
from ssgd_optax.attacks._recursive import copa_index
from ssgd_optax.attacks._recursive import LayeredCNN
from ssgd_optax.attacks._recursive import LayerRank
from ssgd_optax.attacks._recursive import rank_analysis
from ssgd_optax.attacks._recursive import rgap
from ssgd_optax.attacks._threat import AttackResult
from ssgd_optax.attacks._threat import as_functional
from ssgd_optax.attacks._threat import batch_gradient
from ssgd_optax.attacks._threat import Defence
from ssgd_optax.attacks._threat import Observation
from ssgd_optax.attacks._threat import observe
from ssgd_optax.attacks._threat import shared_update
from ssgd_optax.attacks._threat import THREAT_MODELS

__all__ = [
    'adaptive_dlg',
    'analytic_attack',
    'ANALYTIC_RESCALES',
    'as_functional',
    'AttackResult',
    'available_defences',
    'batch_gradient',
    'ConvSpec',
    'copa_index',
    'cosine_distance',
    'Defence',
    'dlg',
    'expected_recovered',
    'find_last_layer',
    'gaussian_noise',
    'gradient_distance',
    'idlg',
    'idlg_label',
    'imprint_attack',
    'imprint_bins',
    'imprint_model',
    'imprint_readout',
    'IMPRINT_RESCALES',
    'imprint_thresholds',
    'ImprintedModel',
    'invert_dense',
    'inverting_gradients',
    'l2_distance',
    'label_accuracy',
    'LayeredCNN',
    'LayerRank',
    'make_defence',
    'match_batch',
    'measurement_vector',
    'mse',
    'Observation',
    'observe',
    'prune',
    'psnr',
    'rank_analysis',
    'recover_labels',
    'register_defence',
    'rgap',
    'score',
    'Scores',
    'secure_aggregate',
    'shared_update',
    'ssim',
    'THREAT_MODELS',
    'total_variation',
    'unregister_defence',
]
