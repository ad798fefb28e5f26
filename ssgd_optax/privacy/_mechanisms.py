# Copyright 2026 The ssgd_optax Authors. Licensed under the Apache License 2.0.
r"""Mechanism objects: what one DP step releases, read by the noise and the accountant.

Every DP path of the package is one **mechanism object** that states what its
guarantee rests on, through one protocol (:class:`Mechanism`):

==========================  ===================================================
``sensitivity``             L2 sensitivity of each release (a scalar or a tree)
``noise_multiplier``        ``z``: noise std of each release / its sensitivity
                            (``None`` for a mechanism with no Gaussian noise,
                            or before calibration)
``stddev``                  the noise std added (``z * sensitivity``)
``num_releases``            releases per step on the same data
``neighboring_relation``    ``"add_remove_one"`` (an example),
                            ``"replace_one"`` (a participant's contribution
                            replaced) or ``"zero_out"`` (replaced by zeros)
``sampled``                 whether a step is Poisson-sampled at a rate ``q``
``dp_event(...)``           the ``dp_accounting`` event of **one** step
==========================  ===================================================

The transform that adds the noise and the accountant that converts the
events into ``(epsilon, delta)`` read the **same** object, and the accountant
asks it (``dp_event``, ``neighboring_relation``, ``sampled``) instead of
switching on its type, so a new mechanism needs no change in the accountant::

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
``SparseVectorMechanism``         ``2 gamma`` per query  1 (pure     replace one
(``sparse_vector_mechanism``)                            eps-DP)     (participant)
================================  =====================  ==========  ===============

A Gaussian mechanism's step is ``Poisson_q(N(0, z^2)^{(x) L})``: the ``L``
releases share one batch, so they compose exactly into one Gaussian of
multiplier ``z / sqrt(L)`` (:func:`gaussian_step_event`). A factory may leave
``noise_multiplier`` as ``None`` (the structure is known, the noise is still
to be calibrated); transforms and the accountant refuse such an object except
:func:`~ssgd_optax.privacy.calibrate_noise_multiplier`, which only reads its
structure.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple, Protocol, runtime_checkable

import dp_accounting
import jax
from flax import nnx

from ssgd_optax import _validation
from ssgd_optax import _grouping as grouping_lib
from ssgd_optax.privacy import _accounting as accounting
from ssgd_optax.privacy import _layers as layers_lib
__all__ = [
    'ADD_REMOVE_ONE',
    'NEIGHBORING_RELATIONS',
    'REPLACE_ONE',
    'ZERO_OUT',
    'BackpropClipMechanism',
    'GaussianMechanism',
    'Mechanism',
    'check_mechanism',
    'gaussian_step_event',
    'DPSGDMechanism',
    'DPSSGDMechanism',
    'backprop_clip_mechanism',
    'dp_ssgd_mechanism',
    'dpsgd_mechanism',
]

# Neighbouring relations, named as dp_accounting.NeighboringRelation does.
ADD_REMOVE_ONE = 'add_remove_one'
REPLACE_ONE = 'replace_one'
# One participant's contribution replaced by zeros (dp_accounting's REPLACE_SPECIAL).
ZERO_OUT = 'zero_out'
NEIGHBORING_RELATIONS = (ADD_REMOVE_ONE, REPLACE_ONE, ZERO_OUT)


@runtime_checkable
class Mechanism(Protocol):
  """What every DP mechanism object states (see the module docstring).

  The accountant (:func:`~ssgd_optax.privacy.compute_epsilon`,
  :class:`~ssgd_optax.privacy.BudgetTracker`) and the noise transforms read
  only these members.
  """

  @property
  def sensitivity(self) -> Any: ...

  @property
  def noise_multiplier(self) -> Any: ...

  @property
  def stddev(self) -> Any: ...

  @property
  def num_releases(self) -> int: ...

  @property
  def neighboring_relation(self) -> str: ...

  @property
  def sampled(self) -> bool: ...

  def dp_event(self, *, sampling_rate: float | None = None, accountant: str = 'pld',
               num_examples: int | None = None,
               max_batch_size: int | None = None) -> dp_accounting.DpEvent: ...


def check_mechanism(mechanism: Any, who: str) -> Any:
  """``mechanism`` if it follows the :class:`Mechanism` protocol, else a ``TypeError``."""
  if not isinstance(mechanism, Mechanism):
    missing = [n for n in ('sensitivity', 'noise_multiplier', 'stddev', 'num_releases',
                           'neighboring_relation', 'sampled', 'dp_event')
               if not hasattr(mechanism, n)]
    raise TypeError(
        f'{who}: mechanism must be a mechanism object (DPSGDMechanism, DPSSGDMechanism, '
        'BackpropClipMechanism, SparseVectorMechanism, or any object with '
        f'{", ".join(missing)}); got {type(mechanism).__name__}.')
  if mechanism.neighboring_relation not in NEIGHBORING_RELATIONS:
    raise ValueError(f'{who}: mechanism.neighboring_relation must be one of '
                     f'{NEIGHBORING_RELATIONS}; got {mechanism.neighboring_relation!r}.')
  return mechanism


def gaussian_step_event(noise_multiplier: float, num_releases: int, sampling_rate: float, *,
                        accountant: str = 'pld', num_examples: int | None = None,
                        max_batch_size: int | None = None) -> dp_accounting.DpEvent:
  r"""One Poisson-sampled step of ``L`` Gaussian releases on the same batch.

  .. math:: \mathrm{Poisson}_q\big(\textstyle\bigotimes_{l=1}^{L}
     \mathcal{N}(0, z^2)\big) \equiv \mathrm{Poisson}_q\big(\mathcal{N}(0,
     (z/\sqrt{L})^2)\big)

  ``accountant="rdp"`` gets the composed form as written; ``"pld"`` the
  equivalent single Gaussian (dp_accounting's PLD accountant rejects a
  ``ComposedDpEvent`` inside a ``PoissonSampledDpEvent``); with
  ``num_examples`` and ``max_batch_size`` the truncated-Poisson event (PLD).
  Nothing released (``q = 0`` or ``z = inf``) is a ``NoOpDpEvent``; ``z = 0``
  a ``NonPrivateDpEvent``.

  Args:
    noise_multiplier: ``z >= 0`` (a concrete float).
    num_releases: ``L >= 1``.
    sampling_rate: ``q`` in ``[0, 1]``.
    accountant: ``"pld"`` or ``"rdp"``.
    num_examples: ``N`` of a truncated Poisson batch (with ``max_batch_size``).
    max_batch_size: the padded batch size.

  Returns:
    A ``dp_accounting.DpEvent``.

  Example:

  >>> e = gaussian_step_event(1.0, 4, 0.01, accountant='pld')
  >>> type(e).__name__, e.event.noise_multiplier
  ('PoissonSampledDpEvent', 0.5)
  """
  z, q, num_releases = float(noise_multiplier), float(sampling_rate), int(num_releases)
  if q == 0 or math.isinf(z):
    return dp_accounting.NoOpDpEvent()
  if z == 0:
    return dp_accounting.NonPrivateDpEvent()
  if num_examples is not None:
    return dp_accounting.TruncatedSubsampledGaussianDpEvent(
        dataset_size=num_examples, sampling_probability=q, truncated_batch_size=max_batch_size,
        noise_multiplier=z / math.sqrt(num_releases))
  if accountant == 'rdp':
    inner = (dp_accounting.GaussianDpEvent(z) if num_releases == 1 else
             dp_accounting.ComposedDpEvent([dp_accounting.GaussianDpEvent(z)] * num_releases))
    return dp_accounting.PoissonSampledDpEvent(q, inner)
  return dp_accounting.PoissonSampledDpEvent(
      q, dp_accounting.GaussianDpEvent(z / math.sqrt(num_releases)))


def _gaussian_dp_event(self: Any, *, sampling_rate: float | None = None, accountant: str = 'pld',
                       num_examples: int | None = None,
                       max_batch_size: int | None = None) -> dp_accounting.DpEvent:
  """The ``dp_accounting`` event of one Poisson-sampled step (:func:`gaussian_step_event`)."""
  if self.noise_multiplier is None:
    raise ValueError(
        f'{type(self).__name__}.noise_multiplier is None: calibrate it first, '
        'z = calibrate_noise_multiplier(target_epsilon, mechanism=m, ...), then '
        'm = m._replace(noise_multiplier=z).')
  if sampling_rate is None:
    raise ValueError(f'{type(self).__name__} is Poisson-sampled: its event needs '
                     'sampling_rate= (the rate q).')
  return gaussian_step_event(self.noise_multiplier, self.num_releases, sampling_rate,
                             accountant=accountant, num_examples=num_examples,
                             max_batch_size=max_batch_size)


def _check_noise_multiplier(noise_multiplier: Any) -> None:
  if noise_multiplier is not None:
    _validation.check_nonnegative('noise_multiplier', noise_multiplier)


def _epsilon(mechanism: Any, sampling_rate: float, steps: int, delta: float,
             accountant: str) -> float:
  return accounting.compute_epsilon(mechanism, sampling_rate=sampling_rate, steps=steps,
                                    delta=delta, accountant=accountant)


class GaussianMechanism(NamedTuple):
  r"""A Gaussian mechanism given by its numbers: ``L`` releases of noise ``z * Delta``.

  The generic member of the protocol, for a release of your own (and what
  the accountant builds from ``noise_multiplier=``/``num_releases=``
  keywords).

  Attributes:
    noise_multiplier: ``z >= 0`` (``None`` before calibration).
    num_releases: ``L >= 1`` Gaussian releases per step on the same batch.
    sensitivity: ``Delta``, the L2 sensitivity of each release.

  Guarantees:
    * Neighbouring relation: **add/remove one example**, Poisson sampling at
      rate ``q``; ``L`` releases of ``N(0, (z Delta)^2 I)`` per step, each of
      L2 sensitivity ``Delta`` (which you must enforce).

  Example:

  >>> m = GaussianMechanism(1.0, num_releases=4)
  >>> m.dp_event(sampling_rate=0.01).event.noise_multiplier
  0.5
  """

  noise_multiplier: Any
  num_releases: int = 1
  sensitivity: Any = 1.0

  @property
  def stddev(self) -> Any:
    """``z * Delta`` (``None`` before calibration)."""
    return None if self.noise_multiplier is None else self.noise_multiplier * self.sensitivity

  @property
  def neighboring_relation(self) -> str:
    return ADD_REMOVE_ONE

  @property
  def sampled(self) -> bool:
    """Poisson-sampled at a rate ``q``: the accountant needs ``sampling_rate``."""
    return True

  dp_event = _gaussian_dp_event

  def epsilon(self, *, sampling_rate: float, steps: int, delta: float,
              accountant: str = 'pld') -> float:
    """Epsilon after ``steps`` Poisson-sampled steps at ``sampling_rate``."""
    return _epsilon(self, sampling_rate, steps, delta, accountant)


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
    """``sigma * sqrt(G)``: the std of the noise added to the sum (``None`` before calibration)."""
    return None if self.noise_multiplier is None else self.noise_multiplier * self.sensitivity

  @property
  def num_releases(self) -> int:
    """One Gaussian release per step."""
    return 1

  @property
  def neighboring_relation(self) -> str:
    return ADD_REMOVE_ONE

  @property
  def sampled(self) -> bool:
    """Poisson-sampled at a rate ``q``: the accountant needs ``sampling_rate``."""
    return True

  dp_event = _gaussian_dp_event

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
    """``z C``: the std of the noise added to the clipped sum (``None`` before calibration)."""
    return None if self.noise_multiplier is None else self.noise_multiplier * self.clip_norm

  @property
  def num_releases(self) -> int:
    """One Gaussian release per step."""
    return 1

  @property
  def neighboring_relation(self) -> str:
    return ADD_REMOVE_ONE

  @property
  def sampled(self) -> bool:
    """Poisson-sampled at a rate ``q``: the accountant needs ``sampling_rate``."""
    return True

  dp_event = _gaussian_dp_event

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
  (:func:`ssgd_optax.privacy.compute_epsilon`).

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
      (see :func:`ssgd_optax.privacy.check_model` for what is checked).
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
    """The tree of noise stds ``z Delta_l`` (``None`` before calibration)."""
    if self.noise_multiplier is None:
      return None
    return jax.tree.map(lambda s: self.noise_multiplier * s, self.sensitivities)

  @property
  def neighboring_relation(self) -> str:
    return ADD_REMOVE_ONE

  @property
  def sampled(self) -> bool:
    """Poisson-sampled at a rate ``q``: the accountant needs ``sampling_rate``."""
    return True

  dp_event = _gaussian_dp_event

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
