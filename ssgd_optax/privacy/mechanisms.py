# Copyright 2026 The ssgd_optax Authors. Licensed under the Apache License 2.0.
r"""Mechanism objects: what one DP step releases, read by the noise and the accountant.

A mechanism object holds the numbers that the privacy of one training step
rests on: the noise multiplier ``z`` (noise std of each release divided by
its L2 sensitivity), the sensitivity (a scalar or a tree, one per release)
and the number ``L`` of Gaussian releases computed on the same batch. The
transform that adds the noise and the accountant that converts it into
``(epsilon, delta)`` read the **same** object, so nobody copies
``num_releases`` or a sensitivity by hand::

  mechanism = backprop_clip_mechanism(model)                 # L, Delta_l
  z = calibrate_noise_multiplier(3.0, mechanism=mechanism, sampling_rate=q,
                                 steps=T, delta=1e-5)
  mechanism = mechanism._replace(noise_multiplier=z)
  noise = add_gaussian_noise(mechanism=mechanism, expected_batch_size=q * N,
                             key=key)
  tracker = BudgetTracker(3.0, 1e-5, mechanism=mechanism, sampling_rate=q)

================================  =====================  ==========  ===============
mechanism (factory)               sensitivity            releases    relation
================================  =====================  ==========  ===============
:class:`DPSGDMechanism`           ``C``                  1           add/remove one
(:func:`dpsgd_mechanism`)
:class:`DPSSGDMechanism`          ``sqrt(G)``            1           add/remove one
(:func:`dp_ssgd_mechanism`)
:class:`BackpropClipMechanism`    ``Delta_l`` per tensor ``L``       add/remove one
(:func:`backprop_clip_mechanism`)
``SparseVectorMechanism``         ``2 gamma`` per query  ``c``       replace one
(:func:`ssgd_optax.selective.sparse_vector_mechanism`)                (participant)
================================  =====================  ==========  ===============

The three Gaussian mechanisms share one reading interface: ``noise_multiplier``,
``num_releases``, ``sensitivity``, ``stddev``, ``neighboring_relation`` and
``epsilon(sampling_rate=, steps=, delta=)``. A factory may leave
``noise_multiplier`` as ``None`` (the structure is known, the noise is still to
be calibrated); transforms and the accountant refuse such an object except
:func:`~ssgd_optax.privacy.calibrate_noise_multiplier`, which only reads its
structure.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
from flax import nnx

from ssgd_optax import _validation
from ssgd_optax import grouping as grouping_lib
from ssgd_optax.privacy import accounting
from ssgd_optax.privacy import layers as layers_lib

__all__ = [
    'ADD_REMOVE_ONE',
    'REPLACE_ONE',
    'BackpropClipMechanism',
    'DPSGDMechanism',
    'DPSSGDMechanism',
    'backprop_clip_mechanism',
    'dp_ssgd_mechanism',
    'dpsgd_mechanism',
]

# Neighbouring relations, named as dp_accounting.NeighboringRelation does.
ADD_REMOVE_ONE = 'add_remove_one'
REPLACE_ONE = 'replace_one'


def _check_noise_multiplier(noise_multiplier: Any) -> None:
  if noise_multiplier is not None:
    _validation.check_nonnegative('noise_multiplier', noise_multiplier)


def _epsilon(mechanism: Any, sampling_rate: float, steps: int, delta: float,
             accountant: str) -> float:
  return accounting.compute_epsilon(mechanism, sampling_rate=sampling_rate, steps=steps,
                                    delta=delta, accountant=accountant)


class DPSSGDMechanism(NamedTuple):
  r"""The Gaussian mechanism of one DP-SSGD step (per-example unit normalisation).

  Attributes:
    noise_multiplier: ``sigma``, the noise std in units of the sensitivity
      (a float, a traced scalar under ``optax.inject_hyperparams``, or
      ``None`` before calibration).
    num_groups: ``G``, the number of normalisation groups per example.
    scope: the normalisation scope the groups come from (read by
      :func:`ssgd_optax.privacy.dp_unit_normalize` when given ``mechanism=``).

  Guarantees:
    * Neighbouring relation: **add/remove one example** of the data set, with
      Poisson sampling at rate ``q`` (the accountant's subsampled Gaussian).
    * Sensitivity (L2, of the sum of normalised per-example gradients):
      ``sqrt(G)``: every group of every example has norm at most 1 (exactly 1
      for ``stability = 0`` and a non-zero finite group; masked, zero and
      non-finite examples contribute 0 under ``nonfinite="drop"``).
    * One Gaussian release per step with noise std ``sigma * sqrt(G)``, so the
      accountant sees noise multiplier ``sigma`` whatever the scope.
    * Holds for the noisy sum (and its post-processing); not for anything
      computed from the per-example gradients before the noise.
  """

  noise_multiplier: Any
  num_groups: int
  scope: Any = 'global'

  @property
  def sensitivity(self) -> float:
    """``sqrt(G)``: every group of every example has norm at most 1."""
    return math.sqrt(self.num_groups)

  @property
  def stddev(self) -> Any:
    """``sigma * sqrt(G)``: the std of the noise added to the sum."""
    return self.noise_multiplier * self.sensitivity

  @property
  def num_releases(self) -> int:
    """One Gaussian release per step."""
    return 1

  @property
  def neighboring_relation(self) -> str:
    return ADD_REMOVE_ONE

  def epsilon(self, *, sampling_rate: float, steps: int, delta: float,
              accountant: str = 'pld') -> float:
    """Epsilon after ``steps`` Poisson-sampled steps at ``sampling_rate``.

    :func:`ssgd_optax.privacy.compute_epsilon` given this mechanism (one
    Gaussian release per step with noise multiplier ``sigma``).

    >>> m = DPSSGDMechanism(1.0, num_groups=4)
    >>> round(m.epsilon(sampling_rate=0.01, steps=100, delta=1e-5,
    ...                 accountant='rdp'), 2)
    1.21
    """
    return _epsilon(self, sampling_rate, steps, delta, accountant)


def dp_ssgd_mechanism(params: Any,
                      noise_multiplier: Any = None,
                      scope: grouping_lib.Scope = 'global') -> DPSSGDMechanism:
  """The mechanism (sensitivity and noise std) of DP-SSGD on ``params``.

  ``G`` is the number of groups of ``params`` under ``scope``; the
  sensitivity is ``sqrt(G)`` and the noise std ``noise_multiplier *
  sqrt(G)``. :func:`ssgd_optax.privacy.dp_unit_normalize` calls this on one
  example's gradient tree, so the accountant and the noise use the same
  numbers; pass the result as its ``mechanism=``.

  Args:
    params: a tree with the structure of one example's gradient (the
      parameters, or shape structs).
    noise_multiplier: ``sigma >= 0``, or ``None`` to calibrate later.
    scope: the normalisation scope.

  Returns:
    A :class:`DPSSGDMechanism`.

  Example:

  >>> import jax.numpy as jnp
  >>> p = {'l1': {'w': jnp.ones(3), 'b': jnp.ones(1)}, 'l2': {'w': jnp.ones(2)}}
  >>> m = dp_ssgd_mechanism(p, 1.5, 'per_layer')
  >>> m.num_groups, round(m.sensitivity, 4), round(m.stddev, 4)
  (2, 1.4142, 2.1213)
  """
  grouping_lib.check_scope(scope)
  _check_noise_multiplier(noise_multiplier)
  return DPSSGDMechanism(noise_multiplier, grouping_lib.resolve_groups(params, scope).num_groups,
                         scope)


class DPSGDMechanism(NamedTuple):
  r"""The Gaussian mechanism of one per-example-clipping DP-SGD step.

  Each example's whole gradient is clipped to L2 norm ``C``
  (:func:`ssgd_optax.privacy.dpsgd_grad_sum`), the clipped gradients are
  summed and ``N(0, (z C)^2 I)`` is added
  (:func:`ssgd_optax.privacy.add_gaussian_noise` with ``mechanism=``).

  Attributes:
    noise_multiplier: ``z >= 0`` (``None`` before calibration).
    clip_norm: ``C > 0``.

  Guarantees:
    * Neighbouring relation: **add/remove one example**, Poisson sampling at
      rate ``q``.
    * Sensitivity (L2, of the clipped sum): ``C``; one Gaussian release per
      step with noise std ``z C``.
    * Holds for the noisy sum, if the gradient sum is exactly
      :func:`~ssgd_optax.privacy.dpsgd_grad_sum` with this ``clip_norm``
      (``nonfinite="drop"``).
  """

  noise_multiplier: Any
  clip_norm: Any

  @property
  def sensitivity(self) -> Any:
    """``C``."""
    return self.clip_norm

  @property
  def stddev(self) -> Any:
    """``z C``: the std of the noise added to the clipped sum."""
    return self.noise_multiplier * self.clip_norm

  @property
  def num_releases(self) -> int:
    """One Gaussian release per step."""
    return 1

  @property
  def neighboring_relation(self) -> str:
    return ADD_REMOVE_ONE

  def epsilon(self, *, sampling_rate: float, steps: int, delta: float,
              accountant: str = 'pld') -> float:
    """Epsilon after ``steps`` Poisson-sampled steps at ``sampling_rate``.

    >>> m = DPSGDMechanism(1.0, clip_norm=0.5)
    >>> round(m.epsilon(sampling_rate=0.01, steps=100, delta=1e-5,
    ...                 accountant='rdp'), 2)
    1.21
    """
    return _epsilon(self, sampling_rate, steps, delta, accountant)


def dpsgd_mechanism(clip_norm: Any, noise_multiplier: Any = None) -> DPSGDMechanism:
  """The mechanism of DP-SGD with per-example clip norm ``C``.

  Args:
    clip_norm: ``C > 0``, as passed to
      :func:`ssgd_optax.privacy.dpsgd_grad_sum`.
    noise_multiplier: ``z >= 0``, or ``None`` to calibrate later.

  Returns:
    A :class:`DPSGDMechanism`.

  Example:

  >>> m = dpsgd_mechanism(0.5, 2.0)
  >>> m.sensitivity, m.stddev, m.num_releases
  (0.5, 1.0, 1)
  """
  _validation.check_positive('clip_norm', clip_norm)
  _check_noise_multiplier(noise_multiplier)
  return DPSGDMechanism(noise_multiplier, clip_norm)


class BackpropClipMechanism(NamedTuple):
  r"""The Gaussian mechanisms of one backpropagation-clipping step.

  Every bounded parameter tensor ``l`` of a clipped model
  (:func:`ssgd_optax.privacy.clip_layers`) is its own release: the batch sum
  of its gradient has L2 sensitivity ``Delta_l`` and gets noise
  ``N(0, (z Delta_l)^2 I)``. The ``L`` releases are computed on the same
  Poisson batch and composed exactly by the accountant
  (:mod:`ssgd_optax.privacy.accounting`).

  Attributes:
    noise_multiplier: ``z >= 0`` of each release (``None`` before
      calibration).
    sensitivities: the tree of :func:`ssgd_optax.privacy.sensitivities`, a
      scalar ``Delta_l`` per trained tensor (``uses * C_in * C_out`` for a
      kernel, ``uses * C_out`` for a bias).
    num_releases: ``L``, the number of leaves of ``sensitivities``.

  Guarantees:
    * Neighbouring relation: **add/remove one example**, Poisson sampling at
      rate ``q``.
    * Sensitivity: ``Delta_l`` per tensor (L2), from the clipped layers of the
      model the mechanism was built from; ``L`` Gaussian releases per step.
    * Holds only for gradients computed by
      :func:`~ssgd_optax.privacy.backprop_clip_grad_sum` on that model
      (see :mod:`ssgd_optax.privacy.layers` for what is checked).
  """

  noise_multiplier: Any
  sensitivities: Any
  num_releases: int

  @property
  def sensitivity(self) -> Any:
    """The tree of per-tensor sensitivities ``Delta_l``."""
    return self.sensitivities

  @property
  def stddev(self) -> Any:
    """The tree of noise stds ``z Delta_l``."""
    return jax.tree.map(lambda s: self.noise_multiplier * s, self.sensitivities)

  @property
  def neighboring_relation(self) -> str:
    return ADD_REMOVE_ONE

  def epsilon(self, *, sampling_rate: float, steps: int, delta: float,
              accountant: str = 'pld') -> float:
    """Epsilon after ``steps`` Poisson-sampled steps of ``L`` releases each."""
    return _epsilon(self, sampling_rate, steps, delta, accountant)


def backprop_clip_mechanism(model: nnx.Module, noise_multiplier: Any = None, *,
                            wrt: Any = nnx.Param) -> BackpropClipMechanism:
  """The mechanism of backprop clipping on a clipped model.

  Reads :func:`ssgd_optax.privacy.sensitivities` (which refuses models it
  cannot bound) and counts its leaves, so ``num_releases`` always matches
  the noise that :func:`ssgd_optax.privacy.add_gaussian_noise` adds.

  Args:
    model: an ``nnx.Module`` whose trained layers are ``ClippedLayer``.
    noise_multiplier: ``z >= 0``, or ``None`` to calibrate later.
    wrt: the ``nnx`` filter of the trained variables.

  Returns:
    A :class:`BackpropClipMechanism`.

  Example:

  >>> from flax import nnx
  >>> from ssgd_optax.privacy import clip_layers
  >>> model = nnx.Sequential(nnx.Linear(4, 8, use_bias=False, rngs=nnx.Rngs(0)), nnx.relu,
  ...                        nnx.Linear(8, 2, rngs=nnx.Rngs(1)))
  >>> model = clip_layers(model, input_bound=3.0, grad_bound=1.0)
  >>> m = backprop_clip_mechanism(model, 1.2)
  >>> m.num_releases, m.neighboring_relation
  (3, 'add_remove_one')
  """
  if not isinstance(model, nnx.Module):
    raise TypeError(f'model must be an nnx.Module; got {type(model).__name__}.')
  _check_noise_multiplier(noise_multiplier)
  sens = layers_lib.sensitivities(model, wrt)
  return BackpropClipMechanism(noise_multiplier, sens, len(jax.tree.leaves(sens)))
