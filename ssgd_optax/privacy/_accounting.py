# Copyright 2026 The ssgd_optax Authors. Licensed under the Apache License 2.0.
"""Privacy accounting for Poisson-sampled Gaussian training, via ``dp_accounting``.

One training step samples a batch by Poisson sampling (each of the ``N``
examples independently with probability ``q``) and then releases
``num_releases = L`` Gaussian mechanisms computed **on that same batch**, each
with sensitivity ``Delta_l`` and noise ``z * Delta_l`` (e.g. one per layer in
backprop clipping, ``L = 1`` for DP-SGD). The correct event of one step is::

  PoissonSampledDpEvent(q, ComposedDpEvent([GaussianDpEvent(z)] * L))

and the L Gaussians compose exactly into one Gaussian of noise multiplier
``z / sqrt(L)`` (the privacy-loss random variables add: ``mu = sqrt(L) / z``).
The whole run is that step self-composed ``T`` times.

* ``accountant="rdp"`` composes the event above as written (Renyi DP,
  Mironov et al.); it is fast and a little loose.
* ``accountant="pld"`` (default, tightest) uses the privacy-loss distribution
  accountant with the equivalent ``GaussianDpEvent(z / sqrt(L))``: its
  ``PoissonSampledDpEvent`` does not accept a ``ComposedDpEvent``.

Treating the L releases as independently subsampled (``L * T`` separate
subsampled Gaussians, as the backprop-clipping authors' code does) is **wrong**
and under-reports epsilon badly at low noise (their "epsilon = 3" is about 24;
see ``docs/privacy.md``). The GDP central-limit approximation is not offered:
it is not an upper bound.

Padded fixed-size batches (:func:`ssgd_optax.privacy.poisson_sample`) change
nothing unless the Poisson batch overflows the padding; pass ``num_examples``
and ``max_batch_size`` to account for that truncation exactly (PLD only), or
see :func:`ssgd_optax.privacy.overflow_probability`.

Every function here takes either a **mechanism object** as its first argument
(any object of the :class:`~ssgd_optax.privacy.Mechanism` protocol:
``DPSGDMechanism``, ``DPSSGDMechanism``, ``BackpropClipMechanism``,
``SparseVectorMechanism``...) or the numbers of a Gaussian mechanism as
keywords (``noise_multiplier``, ``num_releases``), never both: the preferred
form builds the mechanism once and passes it to the noise transform and to the
accountant, so the two cannot disagree. The accountant never looks at the
mechanism's type: it asks for the ``dp_event`` of one step, composes
``steps`` of them with ``dp_accounting`` under the mechanism's
``neighboring_relation``, and needs a ``sampling_rate`` only when the
mechanism is ``sampled``.

dp_accounting 0.6.0's PLD accountant ignores the count of a
``SelfComposedDpEvent`` of a ``RandomizedResponseDpEvent`` (it reports one
step's epsilon for any count); steps are therefore self-composed here, on the
one-step privacy-loss distribution, for every event (which is also what makes
repeated evaluations over ``steps`` cheap).

Everything here runs on the host (Python floats), never under ``jit``.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Any, Literal

import dp_accounting
from scipy import optimize
from dp_accounting import pld as _pld
from dp_accounting import rdp as _rdp
from dp_accounting.pld import privacy_loss_distribution as _pld_lib

from ssgd_optax import _validation
from ssgd_optax.privacy import _events as events
from ssgd_optax.privacy import _mechanisms as mechanisms

__all__ = [
    'ACCOUNTANTS',
    'BudgetExhaustedError',
    'BudgetTracker',
    'calibrate_noise_multiplier',
    'compose_epsilon',
    'compute_delta',
    'compute_epsilon',
    'make_dp_event',
]

ACCOUNTANTS = ('pld', 'rdp')
Accountant = Literal['pld', 'rdp']
_ON_EXHAUSTED = ('raise', 'warn', 'stop')
_STATE_FORMAT = 'ssgd_optax.privacy.BudgetTracker'
_STATE_VERSION = 1


class BudgetExhaustedError(RuntimeError):
  """Raised by :class:`BudgetTracker` when a step would exceed the budget."""


# ----------------------------------------------------------------------------
# Argument checks.


def _concrete(name: str, value: Any) -> float:
  """A Python float from a concrete scalar; accounting never runs traced."""
  if isinstance(value, bool):
    raise TypeError(f'{name} must be a real number; got bool {value!r}.')
  v = _validation.concrete_float(value)
  if v is None:
    raise TypeError(
        f'{name} must be a concrete real number (a Python float or a concrete '
        f'scalar array), not {type(value).__name__}: privacy accounting runs '
        'on the host, outside jit.')
  return v


def _check_common(noise_multiplier: Any, sampling_rate: Any, steps: Any,
                  num_releases: Any, accountant: Any) -> tuple[float, float]:
  _validation.check_choice('accountant', accountant, ACCOUNTANTS)
  z = _concrete('noise_multiplier', noise_multiplier)
  if math.isnan(z) or z < 0:
    raise ValueError(f'noise_multiplier must be a number >= 0 (inf allowed); got {z!r}.')
  q = _concrete('sampling_rate', sampling_rate)
  _validation.check_probability('sampling_rate', q)
  _validation.check_int('steps', steps, minimum=0)
  _validation.check_int('num_releases', num_releases, minimum=1)
  return z, q


def _check_delta(delta: Any) -> float:
  d = _concrete('delta', delta)
  if not 0 < d < 1:
    raise ValueError(f'delta must be in (0, 1); got {d!r}.')
  return d


def _check_truncation(num_examples: Any, max_batch_size: Any, accountant: str) -> bool:
  if num_examples is None and max_batch_size is None:
    return False
  if num_examples is None or max_batch_size is None:
    raise ValueError(
        'num_examples and max_batch_size go together (both give the truncated '
        f'Poisson analysis); got num_examples={num_examples!r}, '
        f'max_batch_size={max_batch_size!r}.')
  _validation.check_int('num_examples', num_examples, minimum=1)
  _validation.check_int('max_batch_size', max_batch_size, minimum=1)
  if accountant != 'pld':
    raise ValueError(
        'Accounting for truncated Poisson batches (num_examples and '
        "max_batch_size) needs accountant='pld'; dp_accounting's RDP accountant "
        f'does not support it. Got accountant={accountant!r}.')
  return True


def _resolve(mechanism: Any, noise_multiplier: Any, num_releases: Any, caller: str, *,
             need_noise: bool = True) -> Any:
  """The mechanism object given, or a Gaussian one built from the keywords."""
  if mechanism is None:
    if need_noise and noise_multiplier is None:
      raise ValueError(f'{caller} needs noise_multiplier= (or a mechanism object as its first '
                       'argument, e.g. privacy.dpsgd_mechanism(...)); got neither.')
    if num_releases is not None:
      _validation.check_int('num_releases', num_releases, minimum=1)
    return mechanisms.GaussianMechanism(noise_multiplier,
                                        1 if num_releases is None else num_releases)
  given = [n for n, v in (('noise_multiplier', noise_multiplier),
                          ('num_releases', num_releases)) if v is not None]
  if given:
    raise ValueError(
        f'{caller} got a mechanism and {" and ".join(given)}: the mechanism fixes them; pass '
        'one or the other, not both (a hand-passed num_releases can disagree with the noise).')
  mechanisms.check_mechanism(mechanism, caller)
  if need_noise and mechanism.sampled and mechanism.noise_multiplier is None:
    raise ValueError(
        f'mechanism.noise_multiplier is None ({type(mechanism).__name__}): calibrate it first, '
        'z = calibrate_noise_multiplier(target_epsilon, mechanism=m, ...), then '
        'm = m._replace(noise_multiplier=z).')
  return mechanism


def _check_mechanism_numbers(m: Any, sampling_rate: Any, steps: Any, accountant: Any,
                             num_examples: Any, max_batch_size: Any) -> float | None:
  """Validates the numbers the accountant needs for ``m``; the sampling rate (or None)."""
  _validation.check_choice('accountant', accountant, ACCOUNTANTS)
  _validation.check_int('steps', steps, minimum=0)
  if not m.sampled:
    if sampling_rate is not None and _concrete('sampling_rate', sampling_rate) != 1:
      raise ValueError(
          f'{type(m).__name__} is not Poisson-sampled (every step releases; '
          f'relation {m.neighboring_relation!r}): sampling_rate must be None or 1, got '
          f'{sampling_rate!r}.')
    if num_examples is not None or max_batch_size is not None:
      raise ValueError('num_examples and max_batch_size (truncated Poisson batches) do not apply '
                       f'to {type(m).__name__}, which is not Poisson-sampled.')
    return None
  if sampling_rate is None:
    raise ValueError(f'{type(m).__name__} is Poisson-sampled: pass sampling_rate= (the '
                     'Poisson rate q).')
  z = m.noise_multiplier
  if z is not None:
    _check_common(z, sampling_rate, steps, m.num_releases, accountant)
  q = _concrete('sampling_rate', sampling_rate)
  _validation.check_probability('sampling_rate', q)
  _check_truncation(num_examples, max_batch_size, accountant)
  return q


def _step_event(m: Any, q: float | None, accountant: str, num_examples: Any,
                max_batch_size: Any) -> dp_accounting.DpEvent:
  return m.dp_event(sampling_rate=q, accountant=accountant, num_examples=num_examples,
                    max_batch_size=max_batch_size)


# ----------------------------------------------------------------------------
# Events.


def make_dp_event(mechanism: Any = None,
                  *,
                  noise_multiplier: float | None = None,
                  sampling_rate: float | None = None,
                  steps: int,
                  num_releases: int | None = None,
                  accountant: Accountant = 'pld',
                  num_examples: int | None = None,
                  max_batch_size: int | None = None) -> dp_accounting.DpEvent:
  r"""The ``dp_accounting`` event of ``steps`` steps of a mechanism.

  .. math:: \text{run} = \text{step}^{\otimes T}, \qquad \text{step} =
     \texttt{mechanism.dp\_event(...)}

  For a Gaussian mechanism the step is
  ``Poisson_q(N(0, z^2)^{(x) L}) = Poisson_q(N(0, (z/sqrt(L))^2))``
  (:func:`ssgd_optax.privacy.gaussian_step_event`).

  Args:
    mechanism: a mechanism object; or ``None`` and pass ``noise_multiplier``
      (and ``num_releases``) of a Gaussian mechanism.
    noise_multiplier: ``z``, the noise std of each release divided by its
      sensitivity, ``> 0``.
    sampling_rate: Poisson sampling probability ``q`` (expected batch / N);
      ``None`` for a mechanism that is not sampled.
    steps: number of steps ``T >= 0``.
    num_releases: ``L``, Gaussian mechanisms released per step on the same
      batch (layers with their own sensitivity), ``>= 1``.
    accountant: ``"rdp"`` builds the composed event, ``"pld"`` the equivalent
      single Gaussian with ``z / sqrt(L)`` (the PLD accountant rejects the
      composed form).
    num_examples: with ``max_batch_size``, the truncated-Poisson event
      (``TruncatedSubsampledGaussianDpEvent``, PLD only).
    max_batch_size: size the Poisson batch is truncated to.

  Returns:
    A ``dp_accounting.DpEvent``.

  Example:
    >>> from ssgd_optax.privacy import make_dp_event
    >>> event = make_dp_event(noise_multiplier=1.0, sampling_rate=0.01,
    ...                       steps=10, num_releases=4, accountant='rdp')
    >>> type(event).__name__, event.count
    ('SelfComposedDpEvent', 10)
  """
  m = _resolve(mechanism, noise_multiplier, num_releases, 'make_dp_event')
  q = _check_mechanism_numbers(m, sampling_rate, steps, accountant, num_examples, max_batch_size)
  step = _step_event(m, q, accountant, num_examples, max_batch_size)
  if isinstance(step, dp_accounting.NonPrivateDpEvent):
    raise ValueError('make_dp_event needs noise_multiplier > 0; noise 0 is not private.')
  if isinstance(step, dp_accounting.RandomizedResponseDpEvent):
    # dp_accounting 0.6.0's PLD accountant ignores the count of a
    # SelfComposedDpEvent of randomized response (see the module docstring):
    # spelled out, the event is composed correctly by any accountant.
    return dp_accounting.ComposedDpEvent([step] * steps)
  return dp_accounting.SelfComposedDpEvent(step, steps)


def _relation(name: str) -> dp_accounting.NeighboringRelation:
  return {mechanisms.ADD_REMOVE_ONE: dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE,
          mechanisms.REPLACE_ONE: dp_accounting.NeighboringRelation.REPLACE_ONE,
          mechanisms.ZERO_OUT: dp_accounting.NeighboringRelation.REPLACE_SPECIAL}[name]


def _fresh_accountant(accountant: str, relation: str) -> dp_accounting.PrivacyAccountant:
  rel = _relation(relation)
  if accountant == 'pld':
    return _pld.PLDAccountant(neighboring_relation=rel)
  return _rdp.RdpAccountant(neighboring_relation=rel)


# One-step privacy-loss distributions and epsilons, keyed by the event's repr
# (events holding lists are unhashable): BudgetTracker and calibration
# re-evaluate the same settings, and one PLD can take a second to build.
_PLD_CACHE: dict[tuple[str, str], Any] = {}
_EPS_CACHE: dict[tuple, float] = {}
_CACHE_SIZE = 4096


def _one_step_pld(step: dp_accounting.DpEvent, relation: str) -> Any:
  key = (repr(step), relation)
  if key not in _PLD_CACHE:
    if len(_PLD_CACHE) >= 64:
      _PLD_CACHE.clear()
    acc = _pld.PLDAccountant(neighboring_relation=_relation(relation))
    interval = acc._value_discretization_interval  # pylint: disable=protected-access
    if (isinstance(step, dp_accounting.PoissonSampledDpEvent)
        and isinstance(step.event, dp_accounting.GaussianDpEvent)):
      pld = _pld_lib.from_gaussian_mechanism(
          standard_deviation=step.event.noise_multiplier,
          value_discretization_interval=interval, sampling_prob=step.sampling_probability,
          neighboring_relation=_relation(relation))
    elif isinstance(step, dp_accounting.RandomizedResponseDpEvent):
      pld = _pld_lib.from_randomized_response(
          noise_parameter=step.noise_parameter, num_buckets=step.num_buckets,
          value_discretization_interval=interval, neighboring_relation=_relation(relation))
    else:
      pld = None  # composed by dp_accounting itself (see _epsilon)
    _PLD_CACHE[key] = pld
  return _PLD_CACHE[key]


def _epsilon(step: dp_accounting.DpEvent, steps: int, delta: float, accountant: str,
             relation: str) -> float:
  key = (repr(step), steps, delta, accountant, relation)
  if key in _EPS_CACHE:
    return _EPS_CACHE[key]
  pld = _one_step_pld(step, relation) if accountant == 'pld' else None
  if pld is not None:
    eps = float(pld.self_compose(steps).get_epsilon_for_delta(delta))
  else:
    acc = _fresh_accountant(accountant, relation)
    event = dp_accounting.SelfComposedDpEvent(step, steps)
    if not acc.supports(event):
      other = 'rdp' if accountant == 'pld' else 'pld'
      raise ValueError(
          f'accountant={accountant!r} cannot compose {type(step).__name__} under the '
          f'{relation!r} relation (dp_accounting); use accountant={other!r}.')
    eps = float(acc.compose(event).get_epsilon(delta))
  if len(_EPS_CACHE) >= _CACHE_SIZE:
    _EPS_CACHE.clear()
  _EPS_CACHE[key] = eps
  return eps


def compute_epsilon(mechanism: Any = None,
                    *,
                    noise_multiplier: float | None = None,
                    sampling_rate: float | None = None,
                    steps: int,
                    delta: float,
                    num_releases: int | None = None,
                    accountant: Accountant = 'pld',
                    num_examples: int | None = None,
                    max_batch_size: int | None = None) -> float:
  r"""Epsilon spent by ``steps`` Poisson-sampled steps of ``L`` Gaussian releases.

  The smallest ``epsilon`` such that the run is ``(epsilon, delta)``-DP under
  add/remove-one adjacency, for the event of :func:`make_dp_event`:
  ``T`` self-compositions of ``Poisson_q(N(0, (z / sqrt(L))^2))``.

  Edge cases: ``steps == 0``, ``sampling_rate == 0`` or ``noise_multiplier ==
  inf`` give ``0.0``; ``noise_multiplier == 0`` (otherwise) gives ``inf``.

  Given a :class:`~ssgd_optax.privacy.SparseVectorMechanism`, ``steps`` is
  the number of rounds, ``sampling_rate`` must be ``None`` (or 1) and the
  result is the exact ``(epsilon, delta)`` of ``steps`` pure
  ``mechanism.epsilon``-DP rounds (replace-one participant).

  Args:
    mechanism: a mechanism object (see the module docstring), or ``None`` and
      pass ``noise_multiplier`` (and ``num_releases``).
    noise_multiplier: ``z = sigma / sensitivity`` of each release, ``>= 0``.
    sampling_rate: Poisson sampling probability ``q`` in ``[0, 1]``.
    steps: number of training steps ``T >= 0``.
    delta: target delta in ``(0, 1)``.
    num_releases: ``L >= 1``, Gaussian mechanisms per step on the same batch
      (e.g. the number of clipped layers, plus one per accounted bias).
    accountant: ``"pld"`` (tightest, default) or ``"rdp"`` (fast, looser).
    num_examples: optional, with ``max_batch_size``: account for batches
      truncated to ``max_batch_size`` when Poisson sampling overflows (PLD).
    max_batch_size: the padded batch size of :func:`poisson_sample`.

  Returns:
    epsilon, a Python float (``inf`` if not private).

  Example:
    >>> from ssgd_optax.privacy import compute_epsilon
    >>> eps = compute_epsilon(noise_multiplier=1.1, sampling_rate=0.01,
    ...                       steps=100, delta=1e-5, accountant='rdp')
    >>> 0.5 < eps < 1.5
    True
    >>> from ssgd_optax.privacy import dpsgd_mechanism
    >>> eps == compute_epsilon(dpsgd_mechanism(1.0, 1.1), sampling_rate=0.01,
    ...                        steps=100, delta=1e-5, accountant='rdp')
    True
  """
  m = _resolve(mechanism, noise_multiplier, num_releases, 'compute_epsilon')
  q = _check_mechanism_numbers(m, sampling_rate, steps, accountant, num_examples, max_batch_size)
  d = _check_delta(delta)
  if steps == 0:
    return 0.0
  step = _step_event(m, q, accountant, num_examples, max_batch_size)
  if isinstance(step, dp_accounting.NoOpDpEvent):
    return 0.0
  if isinstance(step, dp_accounting.NonPrivateDpEvent):
    return math.inf
  return _epsilon(step, steps, d, accountant, m.neighboring_relation)


def _run_event(step: dp_accounting.DpEvent, steps: int) -> dp_accounting.DpEvent:
  if isinstance(step, dp_accounting.RandomizedResponseDpEvent):
    # Spelled out: dp_accounting 0.6.0's PLD accountant ignores the count of a
    # self-composed randomized response (see the module docstring).
    return dp_accounting.ComposedDpEvent([step] * steps)
  return dp_accounting.SelfComposedDpEvent(step, steps)


_COMPOSED_CACHE: dict[tuple, float] = {}


def compose_epsilon(parts: Any, *, delta: float, accountant: Accountant = 'pld',
                    neighboring_relation: str = mechanisms.ADD_REMOVE_ONE) -> float:
  r"""Epsilon of several runs together: ``step_1^{(x) T_1} (x) step_2^{(x) T_2} (x) ...``.

  Each part is ``(event, steps)``: the ``dp_accounting`` event of one step of
  a run (``mechanism.dp_event(...)``) and the number of its steps. The runs
  are composed by ``dp_accounting`` (PLD: the one-step privacy-loss
  distributions self-composed and convolved; RDP: the composed event), never by
  adding epsilons. One part gives exactly :func:`compute_epsilon`'s value.

  Args:
    parts: a sequence of ``(dp_accounting.DpEvent, steps >= 0)``.
    delta: in ``(0, 1)``.
    accountant: ``"pld"`` or ``"rdp"``.
    neighboring_relation: the relation every part is stated under.

  Returns:
    epsilon, a Python float (``0.0`` with nothing released, ``inf`` when a part
    is not private).
  """
  _validation.check_choice('accountant', accountant, ACCOUNTANTS)
  _validation.check_choice('neighboring_relation', neighboring_relation,
                           mechanisms.NEIGHBORING_RELATIONS)
  d = _check_delta(delta)
  kept = []
  for part in parts:
    if not (isinstance(part, tuple) and len(part) == 2):
      raise TypeError(f'compose_epsilon: each part must be (dp_event, steps); got {part!r}.')
    step, steps = part
    if not isinstance(step, dp_accounting.DpEvent):
      raise TypeError('compose_epsilon: the event of each part must be a '
                      f'dp_accounting.DpEvent; got {type(step).__name__}.')
    _validation.check_int('steps', steps, minimum=0)
    if steps == 0 or isinstance(step, dp_accounting.NoOpDpEvent):
      continue
    if isinstance(step, dp_accounting.NonPrivateDpEvent):
      return math.inf
    kept.append((step, int(steps)))
  if not kept:
    return 0.0
  if len(kept) == 1:
    return _epsilon(kept[0][0], kept[0][1], d, accountant, neighboring_relation)
  key = (tuple((repr(e), n) for e, n in kept), d, accountant, neighboring_relation)
  if key in _COMPOSED_CACHE:
    return _COMPOSED_CACHE[key]
  plds = ([_one_step_pld(e, neighboring_relation) for e, _ in kept] if accountant == 'pld'
          else [None])
  if all(p is not None for p in plds):
    total = None
    for pld, (_, n) in zip(plds, kept):
      run = pld.self_compose(n)
      total = run if total is None else total.compose(run)
    eps = float(total.get_epsilon_for_delta(d))
  else:
    acc = _fresh_accountant(accountant, neighboring_relation)
    event = dp_accounting.ComposedDpEvent([_run_event(e, n) for e, n in kept])
    if not acc.supports(event):
      other = 'rdp' if accountant == 'pld' else 'pld'
      raise ValueError(f'accountant={accountant!r} cannot compose these events under the '
                       f'{neighboring_relation!r} relation (dp_accounting); use '
                       f'accountant={other!r}.')
    eps = float(acc.compose(event).get_epsilon(d))
  if len(_COMPOSED_CACHE) >= _CACHE_SIZE:
    _COMPOSED_CACHE.clear()
  _COMPOSED_CACHE[key] = eps
  return eps


def compute_delta(mechanism: Any = None,
                  *,
                  noise_multiplier: float | None = None,
                  sampling_rate: float | None = None,
                  steps: int,
                  epsilon: float,
                  num_releases: int | None = None,
                  accountant: Accountant = 'pld') -> float:
  r"""Delta at a given epsilon, for the same event as :func:`compute_epsilon`.

  The smallest ``delta`` with the run ``(epsilon, delta)``-DP; ``0.0`` when
  nothing is released, ``1.0`` without noise.

  Args:
    mechanism: a Gaussian mechanism object, or ``None`` and pass the numbers.
    noise_multiplier: ``z >= 0``.
    sampling_rate: ``q`` in ``[0, 1]``.
    steps: ``T >= 0``.
    epsilon: ``>= 0``.
    num_releases: ``L >= 1``.
    accountant: ``"pld"`` or ``"rdp"``.

  Returns:
    delta, a Python float in ``[0, 1]``.

  Example:
    >>> from ssgd_optax.privacy import compute_delta
    >>> d = compute_delta(noise_multiplier=1.1, sampling_rate=0.01, steps=100,
    ...                   epsilon=1.0, accountant='rdp')
    >>> 0 < d < 1e-4
    True
  """
  m = _resolve(mechanism, noise_multiplier, num_releases, 'compute_delta')
  q = _check_mechanism_numbers(m, sampling_rate, steps, accountant, None, None)
  eps = _concrete('epsilon', epsilon)
  if math.isnan(eps) or eps < 0:
    raise ValueError(f'epsilon must be a number >= 0; got {eps!r}.')
  if steps == 0:
    return 0.0
  step = _step_event(m, q, accountant, None, None)
  if isinstance(step, dp_accounting.NoOpDpEvent):
    return 0.0
  if isinstance(step, dp_accounting.NonPrivateDpEvent):
    return 1.0
  pld = _one_step_pld(step, m.neighboring_relation) if accountant == 'pld' else None
  if pld is not None:
    return float(min(1.0, pld.self_compose(steps).get_delta_for_epsilon(eps)))
  acc = _fresh_accountant(accountant, m.neighboring_relation)
  return float(min(1.0, acc.compose(dp_accounting.SelfComposedDpEvent(step, steps)).get_delta(eps)))


def calibrate_noise_multiplier(target_epsilon: float,
                               *,
                               mechanism: Any = None,
                               sampling_rate: float,
                               steps: int,
                               delta: float,
                               num_releases: int | None = None,
                               accountant: Accountant = 'pld',
                               tol: float = 1e-3,
                               max_noise_multiplier: float = 1e3) -> float:
  r"""The smallest noise multiplier whose run spends at most ``target_epsilon``.

  Returns ``z`` with ``compute_epsilon(z, ...) <= target_epsilon`` and
  ``compute_epsilon(z - tol, ...) > target_epsilon`` (epsilon decreases in
  ``z``), found by Brent's method (as ``dp_accounting.calibrate_dp_mechanism``
  does, on cached evaluations) on a bracket located with the fast RDP
  accountant. ``num_releases`` is
  included, so ``z`` is the multiplier of *each* of the ``L`` releases.

  This is the one calibration function of the package (the 0.1
  ``ssgd_optax.dp_ssgd.calibrate_noise_multiplier`` was this with
  ``num_releases=1``; DP-SSGD's ``sqrt(G)`` cancels). Given ``mechanism=``,
  only its structure (``num_releases``) is read, its ``noise_multiplier`` may
  be ``None``; set the result with ``mechanism._replace(noise_multiplier=z)``.

  Args:
    target_epsilon: epsilon to meet, ``> 0``.
    mechanism: a Gaussian mechanism object (``DPSGDMechanism``,
      ``DPSSGDMechanism``, ``BackpropClipMechanism``), instead of
      ``num_releases``.
    sampling_rate: ``q`` in ``(0, 1]``.
    steps: ``T >= 1``.
    delta: in ``(0, 1)``.
    num_releases: ``L >= 1``.
    accountant: ``"pld"`` (default) or ``"rdp"``.
    tol: absolute tolerance on ``z``, ``> 0``.
    max_noise_multiplier: the search gives up above this ``z``.

  Returns:
    The noise multiplier ``z``, a Python float.

  Raises:
    ValueError: on bad arguments, or when even ``max_noise_multiplier`` does not
      meet the target (infeasible).

  Example:
    >>> from ssgd_optax.privacy import calibrate_noise_multiplier, compute_epsilon
    >>> z = calibrate_noise_multiplier(1.0, sampling_rate=0.01, steps=100,
    ...                                delta=1e-5, accountant='rdp')
    >>> compute_epsilon(noise_multiplier=z, sampling_rate=0.01, steps=100,
    ...                 delta=1e-5, accountant='rdp') <= 1.0
    True
  """
  m = _resolve(mechanism, None, num_releases, 'calibrate_noise_multiplier', need_noise=False)
  if not (m.sampled and 'noise_multiplier' in getattr(m, '_fields', ())):
    raise TypeError(
        f'calibrate_noise_multiplier: {type(m).__name__} has no Gaussian noise multiplier to '
        'calibrate (a pure-DP mechanism such as SparseVectorMechanism sets its epsilon '
        'directly).')
  num_releases = m.num_releases
  eps = _concrete('target_epsilon', target_epsilon)
  if not (eps > 0 and math.isfinite(eps)):
    raise ValueError(f'target_epsilon must be a finite number > 0; got {eps!r}.')
  _, q = _check_common(1.0, sampling_rate, steps, num_releases, accountant)
  d = _check_delta(delta)
  if q == 0 or steps == 0:
    raise ValueError(
        'calibrate_noise_multiplier needs sampling_rate > 0 and steps >= 1: '
        f'nothing is released otherwise (got sampling_rate={q!r}, steps={steps!r}).')
  _validation.check_positive('tol', tol)
  _validation.check_positive('max_noise_multiplier', max_noise_multiplier)
  zmax = float(max_noise_multiplier)

  def eps_of(z: float, acc: str = accountant) -> float:
    step = m._replace(noise_multiplier=float(z)).dp_event(sampling_rate=q, accountant=acc)
    return _epsilon(step, steps, d, acc, m.neighboring_relation)

  if eps_of(zmax) > eps:
    raise ValueError(
        f'target_epsilon={eps!r} is infeasible at delta={d!r} with '
        f'sampling_rate={q!r}, steps={steps}, num_releases={num_releases}: even '
        f'noise_multiplier={zmax!r} (max_noise_multiplier) spends '
        f'{eps_of(zmax):.4g}. Raise target_epsilon or delta, sample less, '
        'train fewer steps, or raise max_noise_multiplier.')

  def solve(acc: str, lo: float, hi: float) -> float:
    """Smallest z (to tol) meeting the target under `acc`, from a guess bracket."""
    while eps_of(hi, acc) > eps:  # zmax is feasible, so this stops.
      lo, hi = hi, min(2 * hi, zmax)
    while eps_of(lo, acc) <= eps:
      if lo < 1e-6:
        return lo  # Even a negligible multiplier meets the target.
      hi, lo = lo, lo / 2
    # Brent's method, as dp_accounting.calibrate_dp_mechanism uses, on the
    # cached epsilon so that no setting is accounted twice (one PLD
    # evaluation costs about a second).
    root = optimize.brentq(lambda z: eps_of(z, acc) - eps, lo, hi, xtol=tol / 4)
    # root is within tol/4 of the exact z*, so z = root + tol/4 >= z* meets
    # the target and z - tol < z* misses it (epsilon decreases in z). Checked,
    # since PLD discretisation makes epsilon very slightly non-monotone.
    z = min(root + tol / 4, hi)
    while eps_of(z, acc) > eps and z < hi:
      z = min(hi, z + tol / 4)
    return z

  # RDP is cheap and a little loose: its answer is an upper guess for PLD's.
  z_rdp = solve('rdp', 0.5, 1.0)
  if accountant == 'rdp':
    return float(z_rdp)
  return float(solve('pld', 0.75 * z_rdp, z_rdp))


# ----------------------------------------------------------------------------
# Budget tracking.


@dataclasses.dataclass
class BudgetTracker:
  r"""Counts training steps against an ``(epsilon, delta)`` budget.

  On construction it finds ``max_steps``, the largest ``T`` whose accounted
  epsilon (:func:`compute_epsilon`, same arguments) is ``<= target_epsilon``
  (a bisection over ``T``; epsilon grows with ``T``). Call :meth:`step`
  **before** releasing each update: it charges the step and returns ``True``,
  or, when the step would exceed the budget, acts on ``on_exhausted``:

  * ``"raise"``: raise :class:`BudgetExhaustedError` (the step is not charged);
  * ``"stop"``: return ``False`` (not charged): break out of the loop;
  * ``"warn"``: warn, charge the step anyway and return ``False``; then
    :meth:`spent` exceeds the target and says so.

  Give it the mechanism object that the noise transform reads
  (``mechanism=``; preferred) or ``noise_multiplier`` and ``num_releases``,
  not both. With a :class:`~ssgd_optax.privacy.SparseVectorMechanism` a
  step is one round and ``sampling_rate`` stays ``None``.

  A tracker starts at zero steps in every process: save :meth:`state_dict`
  with each checkpoint and give it to :meth:`load_state_dict` of the
  resumed run's tracker (as Opacus' accountants offer), which refuses a state
  recorded for other settings. The steps of *all* runs on a data set, killed
  ones included, are the job of :class:`~ssgd_optax.privacy.PrivacyLedger`.

  Attributes:
    target_epsilon: the budget's epsilon, ``> 0``.
    delta: the budget's delta in ``(0, 1)``.
    mechanism: a mechanism object, or ``None``.
    noise_multiplier: ``z`` of each release, ``> 0`` (read from
      ``mechanism`` when given).
    sampling_rate: Poisson ``q`` in ``(0, 1]``.
    num_releases: ``L``, releases per step on the same batch (read from
      ``mechanism`` when given).
    accountant: ``"pld"`` or ``"rdp"``.
    on_exhausted: ``"raise"``, ``"warn"`` or ``"stop"``.
    max_steps: the number of steps the budget allows (computed).
    steps: steps charged so far.

  Example:
    >>> from ssgd_optax.privacy import BudgetTracker
    >>> tracker = BudgetTracker(1.0, 1e-5, noise_multiplier=1.0,
    ...                         sampling_rate=0.01, accountant='rdp',
    ...                         on_exhausted='stop')
    >>> while tracker.step():
    ...   pass  # train one step here
    >>> tracker.steps == tracker.max_steps, tracker.spent() <= 1.0
    (True, True)
  """

  target_epsilon: float
  delta: float
  mechanism: Any = dataclasses.field(default=None, kw_only=True)
  noise_multiplier: float | None = dataclasses.field(default=None, kw_only=True)
  sampling_rate: float | None = dataclasses.field(default=None, kw_only=True)
  num_releases: int | None = dataclasses.field(default=None, kw_only=True)
  accountant: Accountant = dataclasses.field(default='pld', kw_only=True)
  on_exhausted: Literal['raise', 'warn', 'stop'] = dataclasses.field(
      default='raise', kw_only=True)
  max_steps_limit: int = dataclasses.field(default=10**7, kw_only=True)
  max_steps: int = dataclasses.field(init=False)
  steps: int = dataclasses.field(init=False, default=0)

  def __post_init__(self):
    eps = _concrete('target_epsilon', self.target_epsilon)
    if not (eps > 0 and math.isfinite(eps)):
      raise ValueError(f'target_epsilon must be a finite number > 0; got {eps!r}.')
    m = _resolve(self.mechanism, self.noise_multiplier, self.num_releases, 'BudgetTracker')
    _validation.check_choice('on_exhausted', self.on_exhausted, _ON_EXHAUSTED)
    _validation.check_int('max_steps_limit', self.max_steps_limit, minimum=1)
    q = _check_mechanism_numbers(m, self.sampling_rate, 0, self.accountant, None, None)
    if m.sampled:
      if m.noise_multiplier is None or _concrete('noise_multiplier', m.noise_multiplier) == 0:
        raise ValueError('noise_multiplier must be > 0 for a finite budget; got '
                         f'{m.noise_multiplier!r}.')
      if q == 0:
        raise ValueError('sampling_rate must be in (0, 1]; got 0.')
      self.noise_multiplier = _concrete('noise_multiplier', m.noise_multiplier)
    self.num_releases = m.num_releases
    self._mechanism = m
    self.target_epsilon, self.sampling_rate = eps, q
    self.delta = _check_delta(self.delta)
    self.max_steps = self._find_max_steps()

  def _epsilon_at(self, steps: int, accountant: str | None = None) -> float:
    """Epsilon after ``steps`` steps under this tracker's settings."""
    return compute_epsilon(self._mechanism, sampling_rate=self.sampling_rate, steps=steps,
                           delta=self.delta, accountant=accountant or self.accountant)

  def _find_max_steps(self) -> int:
    eps = self.target_epsilon
    limit = self.max_steps_limit

    def fits(steps: int, accountant: str) -> bool:
      return self._epsilon_at(steps, accountant) <= eps

    def largest(accountant: str, lo: int) -> int:
      """Largest T <= limit with fits(T); `lo` is a guess that may not fit."""
      while lo > 0 and not fits(lo, accountant):
        lo //= 2
      if lo == 0:
        return 0
      hi = max(lo + 1, int(lo * 1.5))  # fits(lo); grow hi until it fails.
      while hi <= limit and fits(hi, accountant):
        lo, hi = hi, max(hi + 1, int(hi * 1.5))
      if hi > limit:
        if fits(limit, accountant):
          return limit
        hi = limit
      while hi - lo > 1:
        mid = (lo + hi) // 2
        if fits(mid, accountant):
          lo = mid
        else:
          hi = mid
      return lo

    # The cheap RDP answer is a good first guess for the (tighter) PLD one.
    steps_rdp = largest('rdp', 1)
    if self.accountant == 'rdp':
      return steps_rdp
    return largest('pld', max(steps_rdp, 1))

  @property
  def remaining(self) -> int:
    """Steps left before the budget is spent (``0`` when exhausted)."""
    return max(0, self.max_steps - self.steps)

  @property
  def exhausted(self) -> bool:
    """Whether one more step would exceed the budget."""
    return self.remaining == 0

  def spent(self) -> float:
    """Epsilon spent by the steps charged so far (at ``delta``)."""
    return self._epsilon_at(self.steps)

  def step(self, num_steps: int = 1) -> bool:
    """Charges ``num_steps`` steps; ``False`` (or raises) when over budget.

    Args:
      num_steps: steps to charge, ``>= 1``.

    Returns:
      ``True`` if the steps fit in the budget and were charged, else ``False``
      (``on_exhausted="stop"``: not charged; ``"warn"``: charged).

    Raises:
      BudgetExhaustedError: with ``on_exhausted="raise"`` when over budget.
    """
    _validation.check_int('num_steps', num_steps, minimum=1)
    if self.steps + num_steps <= self.max_steps:
      self.steps += num_steps
      return True
    message = (
        f'Privacy budget exhausted: {self.steps} steps taken, {num_steps} more '
        f'would exceed epsilon={self.target_epsilon} at delta={self.delta} '
        f'(the budget allows {self.max_steps} steps at '
        + (f'noise_multiplier={self.noise_multiplier}, sampling_rate={self.sampling_rate}, '
           f'num_releases={self.num_releases}' if self._mechanism.sampled else
           f'{self._mechanism!r}')
        + f', accountant={self.accountant!r}).')
    if self.on_exhausted == 'raise':
      raise BudgetExhaustedError(message)
    if self.on_exhausted == 'warn':
      self.steps += num_steps
      warnings.warn(message + f' Continuing: epsilon is now {self.spent():.4g}.',
                    RuntimeWarning, stacklevel=2)
    return False

  def _settings(self) -> dict[str, Any]:
    step = self._mechanism.dp_event(sampling_rate=self.sampling_rate, accountant=self.accountant)
    return {'target_epsilon': self.target_epsilon, 'delta': self.delta,
            'sampling_rate': self.sampling_rate, 'accountant': self.accountant,
            'neighboring_relation': self._mechanism.neighboring_relation,
            'event': events.event_to_json(step)}

  def state_dict(self) -> dict[str, Any]:
    """The tracker's state as JSON values: the steps charged and what they were charged for.

    ``event`` is the ``dp_accounting`` event of one step, so the state says
    what was spent, not only how often.

    Returns:
      ``{'format', 'version', 'steps', 'target_epsilon', 'delta',
      'sampling_rate', 'accountant', 'neighboring_relation', 'event'}``.

    Example:
      >>> from ssgd_optax.privacy import BudgetTracker
      >>> kw = dict(noise_multiplier=1.0, sampling_rate=0.01, accountant='rdp')
      >>> tracker = BudgetTracker(3.0, 1e-5, **kw)
      >>> tracker.step(5)
      True
      >>> resumed = BudgetTracker(3.0, 1e-5, **kw)
      >>> resumed.load_state_dict(tracker.state_dict())
      >>> resumed.steps
      5
    """
    return {'format': _STATE_FORMAT, 'version': _STATE_VERSION, 'steps': self.steps,
            **self._settings()}

  def load_state_dict(self, state: dict[str, Any]) -> None:
    """Continues from ``state`` (a :meth:`state_dict`): sets the steps charged.

    Args:
      state: the dict :meth:`state_dict` returned (e.g. read back from a
        checkpoint's JSON).

    Raises:
      ValueError: ``state`` is not a tracker state, was written by a newer
        version, or was recorded for other settings (budget, delta, sampling
        rate, accountant, relation or the mechanism's event), named with both
        values: a resumed run must not be charged as if it spent less.
    """
    if not isinstance(state, dict) or state.get('format') != _STATE_FORMAT:
      raise ValueError('load_state_dict: state must be a dict from BudgetTracker.state_dict(); '
                       f'got {type(state).__name__}.')
    version = state.get('version')
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
      raise ValueError(f'load_state_dict: state has no valid version ({version!r}).')
    if version > _STATE_VERSION:
      raise ValueError(f'load_state_dict: the state has format version {version}, newer than '
                       f'this ssgd_optax reads ({_STATE_VERSION}); upgrade ssgd_optax.')
    steps = state.get('steps')
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 0:
      raise ValueError(f'load_state_dict: state["steps"] must be an int >= 0; got {steps!r}.')
    mine = self._settings()
    differ = [f'{k} ({state.get(k)!r} in the state, {v!r} here)' for k, v in mine.items()
              if state.get(k) != v]
    if differ:
      raise ValueError('load_state_dict: the state was recorded for other settings: '
                       + '; '.join(differ) + '.')
    self.steps = steps
