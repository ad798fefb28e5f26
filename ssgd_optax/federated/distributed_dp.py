# Copyright 2026 The ssgd_optax Authors. Licensed under the Apache License 2.0.
r"""Distributed discrete Gaussian noise for the secure sum (Kairouz, Liu & Steinke, ICML 2021).

Secure aggregation reveals the exact sum of the survivors' updates, and a
server that chooses the participant sets over several rounds can difference
two sums. With this mechanism every participant adds its own share of
discrete Gaussian noise in the integer ring *before* masking, so every sum the
server decodes, and every difference of sums, carries noise that no
participant removed:

.. math::

  r_u = \mathrm{round}_\beta\Big(2^{f}\, x_u \min\big(1, c / \lVert x_u\rVert_2\big)\Big),
  \qquad
  z_u = r_u + \mathcal{N}_{\mathbb{Z}}(0, \sigma^2)^d \quad(\text{each entry } |\cdot| \le B),

where ``round_beta`` is the paper's *conditional randomised rounding* (each
entry rounded up with probability its fractional part, redrawn until
``||r_u||_2 <= Delta_2``, the bound of the paper's Theorem 1 with
``beta``), ``f`` the fractional bits of the fixed-point encoding and ``c``
the L2 clip. Secure aggregation then sums the ``z_u`` exactly in
``Z_{2^bits}``: the ring has room for ``n (Delta_2 + B)`` per entry, so the sum
never wraps around (:meth:`DistributedDiscreteGaussianMechanism.validate`).

Privacy (per round, for the sum over any set that contains at least ``m`` =
``min_noise_shares`` honest participants' noise shares): the sum of ``m``
independent ``N_Z(0, sigma^2)`` is ``rho``-zCDP with

.. math::

  \rho = \tfrac12\Big(\frac{\Delta_2^2}{m\sigma^2}
         + 2\tau\frac{\Delta_1}{\sqrt m\,\sigma} + \tau^2 d\Big),\qquad
  \tau = 10\sum_{k=1}^{m-1} e^{-2\pi^2\sigma^2 k/(k+1)}

(the paper's Proposition 14 with its Theorem 1; ``Delta_1 = Delta_2
min(sqrt(d), Delta_2)`` for integer vectors; both sensitivities doubled for the
``replace_one`` relation). ``R`` rounds are the ``dp_accounting`` event
``SelfComposedDpEvent(ZCDpEvent(rho), R)``, converted to ``(epsilon, delta)``
by its RDP accountant. Truncating each noise entry at ``B`` (so that the ring
has a hard bound) changes the output with probability at most ``2 e^{-B^2 /
(2 sigma^2)}`` per entry (the discrete Gaussian is ``sigma``-sub-Gaussian);
``B`` makes that ``2^-160``, and :meth:`~DistributedDiscreteGaussianMechanism.epsilon`
charges it to ``delta``.

The noise is drawn from the operating system's CSPRNG (AES-256-CTR keyed by
``os.urandom``; ``os.urandom`` alone without the ``cryptography`` package)
and converted with float64 arithmetic, as TensorFlow Privacy's sampler does:
the acceptance probabilities of Canonne, Kamath & Steinke's (2020) sampler are
rounded to float64, not computed with exact rationals.

Importable without ``flwr`` and without ``cryptography``; it needs
``dp_accounting`` only for :meth:`~DistributedDiscreteGaussianMechanism.epsilon`.
"""

from __future__ import annotations

import math
import os
from typing import Any, NamedTuple

import numpy as np

__all__ = [
    'RELATIONS',
    'DistributedDiscreteGaussianMechanism',
    'distributed_discrete_gaussian',
    'calibrate_distributed_noise',
    'noisy_encode',
    'sample_discrete_gaussian',
]

# Neighbouring relations: the whole (clipped) update of one participant replaced by
# any other (dp_accounting's REPLACE_ONE), or by zeros (its REPLACE_SPECIAL). Who
# takes part is public: the server knows the survivor sets.
RELATIONS = ('replace_one', 'zero_out')
_TAIL_BITS = 160          # each noise entry exceeds B with probability <= 2^-160
_DELTA_SHARE = 1e-6       # fraction of delta reserved for that truncation
_MAX_ROUNDING_TRIES = 1000
_MAX_STDDEV = 2.0 ** 50   # keeps every float64 step of the sampler exact in integers


class _TruncationDeltaError(ValueError):
  """``delta`` cannot cover the noise truncation at this ``epsilon`` (a huge one)."""


def _random_bytes(size: int) -> bytes:
  """``size`` bytes from a CSPRNG: AES-256-CTR under a fresh ``os.urandom`` key."""
  try:
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
  except ImportError:  # pragma: no cover - depends on the install
    return os.urandom(size)
  enc = Cipher(algorithms.AES(os.urandom(32)), modes.CTR(bytes(16))).encryptor()
  return enc.update(bytes(size)) + enc.finalize()


def _random_u64(size: int) -> np.ndarray:
  # Native byte order: random bytes are random in any order.
  return np.frombuffer(_random_bytes(8 * size), dtype=np.uint64)


def _to_uniform(u: np.ndarray) -> np.ndarray:
  """float64 uniforms in ``(0, 1]`` on the grid ``2^-52`` from the top 52 bits of ``u``."""
  # The bits as the mantissa of a double in [1, 2): no integer-to-float conversion.
  bits = u >> np.uint64(12)
  bits |= np.uint64(0x3FF0000000000000)
  f = bits.view(np.float64)
  np.subtract(2.0, f, out=f)
  return f


def _uniform(size: int) -> np.ndarray:
  return _to_uniform(_random_u64(size))


def _check_int(name: str, value: Any, minimum: int) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
    raise ValueError(f'{name} must be an int >= {minimum}; got {value!r}.')
  return int(value)


def _check_real(name: str, value: Any, *, positive: bool = True) -> float:
  if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
    raise TypeError(f'{name} must be a real number; got {type(value).__name__} {value!r}.')
  v = float(value)
  if not math.isfinite(v) or (v <= 0 if positive else v < 0):
    raise ValueError(f'{name} must be a finite number {"> 0" if positive else ">= 0"}; '
                     f'got {value!r}.')
  return v


def sample_discrete_gaussian(stddev: float, size: int, *, bound: int | None = None) -> np.ndarray:
  r"""``size`` independent draws of the discrete Gaussian ``N_Z(0, stddev^2)``.

  ``P(x) \propto exp(-x^2 / (2 stddev^2))`` on the integers, by Canonne, Kamath &
  Steinke's rejection from the discrete Laplace (their Algorithm 3), vectorised,
  with OS randomness. With ``bound``, draws with ``|x| > bound`` are rejected too
  (the distribution conditioned on ``|x| <= bound``).

  Args:
    stddev: ``sigma`` in ``(0, 2^50]``.
    size: number of draws, ``>= 0``.
    bound: optional ``B >= 0``.

  Returns:
    An ``int64`` array of shape ``(size,)``.

  Example:

  >>> x = sample_discrete_gaussian(3.0, 10_000, bound=5)
  >>> x.dtype.name, int(abs(x).max()) <= 5
  ('int64', True)
  """
  sigma = _check_real('stddev', stddev)
  if sigma > _MAX_STDDEV:
    raise ValueError(f'stddev must be at most 2^50; got {stddev!r}.')
  size = _check_int('size', size, 0)
  if bound is not None:
    bound = _check_int('bound', bound, 0)
  t = math.floor(sigma) + 1
  half = (1.0 + math.exp(-1.0 / t)) / 2.0
  out = np.empty(size, np.int64)
  filled = 0
  while filled < size:
    want = size - filled
    # About 76 % of the candidates are accepted for sigma >= 1: 1.6x draws
    # usually finish in one pass.
    draw = max(1024, int(want * 1.6))
    raw = _random_u64(2 * draw).reshape(2, draw)
    u = _to_uniform(raw)
    # Discrete Laplace of scale t by inversion: P(|Y| >= k) = q^k / half for
    # k >= 1 (q = e^{-1/t}), so |Y| = floor(-t ln(half U)); the sign is the
    # lowest bit, which the uniform does not use.
    mag = np.log(u[0] * half)
    mag *= -t
    np.floor(mag, out=mag)
    z = mag - sigma * sigma / t
    z *= z
    z *= -1.0 / (2.0 * sigma * sigma)
    keep = u[1] <= np.exp(z, out=z)
    if bound is not None:
      keep &= mag <= bound
    sign = (raw[0][keep] & np.uint64(1)).astype(np.int64) * 2 - 1
    got = (mag[keep].astype(np.int64) * sign)[:want]
    out[filled:filled + got.size] = got
    filled += got.size
  return out


class DistributedDiscreteGaussianMechanism(NamedTuple):
  r"""Each participant's share of discrete Gaussian noise for the secure sum.

  Attributes:
    l2_clip: ``c > 0``, the L2 bound each participant's update is clipped to
      (in the update's units).
    dimension: ``d``, the number of entries of an update.
    noise_multiplier: ``z > 0``: the noise of a sum of ``m`` shares has std
      ``z`` times the clipped update's sensitivity (``2c`` for
      ``replace_one``, ``c`` for ``zero_out``); ``None`` before calibration.
    num_participants: ``n``, how many participants may add a share to one sum
      (sets the ring's headroom and the truncation's share of ``delta``).
    min_noise_shares: ``m``, the number of honest participants' noise shares
      every released sum is guaranteed to contain (``threshold - n_C`` for
      ``n_C`` colluding participants: the server decodes sums over at least
      ``threshold`` survivors).
    frac_bits: ``f``, the fixed-point scale ``2^f`` of the ring encoding.
    bits: the ring ``Z_{2^bits}``, 32 or 64.
    beta: ``beta`` in ``[0, 1)`` of the conditional randomised rounding.
    relation: ``"replace_one"`` or ``"zero_out"`` (see :data:`RELATIONS`).

  Guarantees:
    * Neighbouring relation: **one participant's update for the round**
      replaced by any other (``replace_one``), or by zeros (``zero_out``);
      participation itself is public (the server knows every survivor set).
      This is participant-level DP of the update, not example-level.
    * Sensitivity (integer units): ``Delta_2`` (:attr:`rounded_l2_bound`),
      enforced by the conditional rounding; doubled for ``replace_one``.
    * Each released sum with at least ``m`` honest noise shares is
      ``rho``-zCDP (:attr:`rho`); ``R`` rounds compose to ``R rho``.
    * Holds for any adaptive choice of models and participant sets by the
      server, as long as every sum it decodes holds ``m`` honest shares; it
      does not cover who took part.
  """

  l2_clip: float
  dimension: int
  noise_multiplier: Any
  num_participants: int
  min_noise_shares: int
  frac_bits: int = 16
  bits: int = 32
  beta: float = math.exp(-0.5)
  relation: str = 'replace_one'

  @property
  def scale(self) -> float:
    """``2^f``: integer units per unit of the update."""
    return 2.0 ** self.frac_bits

  @property
  def rounded_l2_bound(self) -> float:
    r"""``Delta_2``: the L2 norm every rounded update is held to (integer units).

    ``min(c 2^f + sqrt(d), sqrt((c 2^f)^2 + d/4 + sqrt(2 ln(1/beta)) (c 2^f +
    sqrt(d)/2)))``, the paper's bound (the second term only for ``beta > 0``).
    """
    cs, d = self.l2_clip * self.scale, self.dimension
    bound = cs + math.sqrt(d)
    if self.beta > 0:
      bound = min(bound, math.sqrt(cs * cs + d / 4.0 + math.sqrt(2.0 * math.log(1.0 / self.beta))
                                   * (cs + math.sqrt(d) / 2.0)))
    return bound

  @property
  def rounded_l1_bound(self) -> float:
    """``Delta_1 = Delta_2 min(sqrt(d), Delta_2)`` (``|v| <= v^2`` for integers)."""
    d2 = self.rounded_l2_bound
    return d2 * min(math.sqrt(self.dimension), d2)

  @property
  def neighboring_relation(self) -> str:
    return self.relation

  @property
  def sensitivity(self) -> float:
    """The L2 sensitivity of the sum in integer units, ``Delta_2`` (x2 for ``replace_one``)."""
    return self.rounded_l2_bound * (2.0 if self.relation == 'replace_one' else 1.0)

  @property
  def l1_sensitivity(self) -> float:
    """The L1 sensitivity of the sum in integer units, ``Delta_1`` (x2 for ``replace_one``)."""
    return self.rounded_l1_bound * (2.0 if self.relation == 'replace_one' else 1.0)

  @property
  def local_stddev(self) -> float:
    """``sigma``: each participant's noise share, in integer units."""
    factor = 2.0 if self.relation == 'replace_one' else 1.0
    return (self.noise_multiplier * factor * self.l2_clip * self.scale
            / math.sqrt(self.min_noise_shares))

  @property
  def stddev(self) -> float:
    """Std of the noise of a sum of ``m`` shares, in the update's units (``z`` x sensitivity)."""
    return self.sum_stddev(self.min_noise_shares)

  def sum_stddev(self, num_shares: int) -> float:
    """Std of the noise of a sum of ``num_shares`` shares, in the update's units."""
    _check_int('num_shares', num_shares, 1)
    return math.sqrt(num_shares) * self.local_stddev / self.scale

  @property
  def noise_bound(self) -> int:
    """``B``: every noise entry is at most this in absolute value (integer units)."""
    return math.ceil(self.local_stddev * math.sqrt(2.0 * math.log(2.0) * (_TAIL_BITS + 1)))

  @property
  def entry_bound(self) -> int:
    """The largest ``|entry|`` of one participant's noisy encoding: ``floor(Delta_2) + B``."""
    return math.floor(self.rounded_l2_bound) + self.noise_bound

  @property
  def tau(self) -> float:
    """The paper's ``tau``: how far a sum of ``m`` discrete Gaussians is from one."""
    s2 = self.local_stddev ** 2
    return 10.0 * sum(math.exp(-2.0 * math.pi ** 2 * s2 * k / (k + 1))
                      for k in range(1, self.min_noise_shares))

  @property
  def rho(self) -> float:
    """zCDP ``rho`` of one released sum (Proposition 14 of the paper, its second form)."""
    total = math.sqrt(self.min_noise_shares) * self.local_stddev
    l2, l1, tau = self.sensitivity / total, self.l1_sensitivity / total, self.tau
    return 0.5 * (l2 * l2 + 2.0 * l1 * tau + tau * tau * self.dimension)

  @property
  def num_releases(self) -> int:
    """One released sum per round."""
    return 1

  @property
  def sampled(self) -> bool:
    """``False``, not sampled; every round releases a sum (participation is public)."""
    return False

  def dp_event(self, *, sampling_rate: float | None = None, accountant: str = 'rdp',
               num_examples: int | None = None, max_batch_size: int | None = None) -> Any:
    """The ``dp_accounting`` event of one released sum: ``rho``-zCDP (RDP accountant).

    The :class:`ssgd_optax.privacy.Mechanism` protocol: compose rounds with
    ``ssgd_optax.privacy.compute_epsilon(m, steps=R, delta=d, accountant='rdp')``.
    """
    import dp_accounting  # pylint: disable=g-import-not-at-top (the privacy extra)
    del accountant
    if sampling_rate not in (None, 1, 1.0) or num_examples is not None or (
        max_batch_size is not None):
      raise ValueError('A distributed-DP sum is not sampled: sampling_rate must be None and '
                       'num_examples/max_batch_size unset.')
    return dp_accounting.ZCDpEvent(self.rho)

  def epsilon(self, *, rounds: int = 1, delta: float) -> float:
    """``epsilon`` at ``delta`` after ``rounds`` released sums (RDP accountant).

    ``epsilon`` is computed at ``delta (1 - 10^-6)``; the noise truncation takes
    the remaining ``10^-6 delta``, checked.

    >>> m = distributed_discrete_gaussian(1.0, 1000, noise_multiplier=2.0,
    ...                                   num_participants=10, min_noise_shares=7)
    >>> round(m.epsilon(delta=1e-5), 3), round(m.epsilon(rounds=10, delta=1e-5), 3)
    (2.166, 8.079)
    """
    self.validate(ring=False)
    rounds = _check_int('rounds', rounds, 1)
    delta = _check_real('delta', delta)
    if not delta < 1:
      raise ValueError(f'delta must be in (0, 1); got {delta!r}.')
    from ssgd_optax import privacy  # pylint: disable=g-import-not-at-top (the privacy extra)
    eps = privacy.compute_epsilon(self, steps=rounds, delta=delta * (1.0 - _DELTA_SHARE),
                                  accountant='rdp')
    # Probability that any noise entry of any share of any round was truncated.
    log2_trunc = (1 - _TAIL_BITS + math.log2(rounds) + math.log2(self.num_participants)
                  + math.log2(self.dimension))
    if eps < 1e3 and math.log2(1.0 + math.exp(eps)) + log2_trunc > math.log2(
        _DELTA_SHARE * delta):
      raise _TruncationDeltaError(f'delta={delta!r} is too small for the noise truncation at B '
                                  f'(its share is 2^{log2_trunc:.0f}); use a larger delta.')
    return eps

  def validate(self, *, ring: bool = True) -> 'DistributedDiscreteGaussianMechanism':
    """Checks every field (and, with ``ring``, that ``n`` encodings sum without wrap-around).

    Returns:
      ``self``; raises ``ValueError``/``TypeError`` naming the field otherwise.
    """
    _check_real('l2_clip', self.l2_clip)
    _check_int('dimension', self.dimension, 1)
    if self.noise_multiplier is None:
      raise ValueError('noise_multiplier is None: calibrate it first, z = '
                       'calibrate_distributed_noise(epsilon, mechanism=m, rounds=R, delta=d), '
                       'then m = m._replace(noise_multiplier=z).')
    _check_real('noise_multiplier', self.noise_multiplier)
    n = _check_int('num_participants', self.num_participants, 1)
    m = _check_int('min_noise_shares', self.min_noise_shares, 1)
    if m > n:
      raise ValueError(f'min_noise_shares must be in [1, num_participants={n}]; got {m}.')
    if self.bits not in (32, 64) or isinstance(self.bits, bool):
      raise ValueError(f'bits must be 32 or 64; got {self.bits!r}.')
    if (isinstance(self.frac_bits, bool) or not isinstance(self.frac_bits, int)
        or not 0 <= self.frac_bits <= self.bits - 2):
      raise ValueError(f'frac_bits must be an int in [0, {self.bits - 2}]; got '
                       f'{self.frac_bits!r}.')
    beta = _check_real('beta', self.beta, positive=False)
    if not beta < 1:
      raise ValueError(f'beta must be in [0, 1); got {self.beta!r}.')
    if self.relation not in RELATIONS:
      raise ValueError(f'relation must be one of {RELATIONS}; got {self.relation!r}.')
    if self.local_stddev > _MAX_STDDEV:
      raise ValueError(f'the noise share std is {self.local_stddev:.3g} integer units, above '
                       f'2^50; lower frac_bits={self.frac_bits} or noise_multiplier.')
    if ring:
      room = (2 ** (self.bits - 1) - 1) // 2  # one guard bit for the server's range check
      need = n * self.entry_bound
      if need > room:
        raise ValueError(
            f'the {self.bits}-bit ring cannot hold the sum of num_participants={n} noisy '
            f'encodings: each entry needs up to {self.entry_bound} (floor(Delta_2) = '
            f'{math.floor(self.rounded_l2_bound)} plus noise bound B = {self.noise_bound}), '
            f'{need} in all, and the ring holds {room} with one guard bit. Lower '
            f'frac_bits={self.frac_bits} (each bit halves the need), or use bits=64.')
    return self


def distributed_discrete_gaussian(l2_clip: float, dimension: int, *, num_participants: int,
                                  min_noise_shares: int, noise_multiplier: float | None = None,
                                  frac_bits: int = 16, bits: int = 32,
                                  beta: float = math.exp(-0.5),
                                  relation: str = 'replace_one'
                                  ) -> DistributedDiscreteGaussianMechanism:
  """The distributed discrete Gaussian mechanism (validated, ring headroom checked).

  Args:
    l2_clip: ``c > 0``.
    dimension: ``d >= 1``, entries per update.
    num_participants: ``n``, the protocol's participant count.
    min_noise_shares: ``m``, honest noise shares guaranteed in every sum
      (at most the protocol's ``threshold``).
    noise_multiplier: ``z > 0``, or ``None`` to calibrate later
      (:func:`calibrate_distributed_noise`; the ring is then checked when the
      protocol is built).
    frac_bits: fixed-point fractional bits of the ring encoding.
    bits: 32 or 64.
    beta: conditional-rounding parameter in ``[0, 1)`` (the paper's default
      ``e^-0.5``).
    relation: ``"replace_one"`` (default) or ``"zero_out"``.

  Returns:
    A :class:`DistributedDiscreteGaussianMechanism`, to pass as ``dp=`` to
    :class:`~ssgd_optax.federated.secure_aggregation.Participant` and
    :class:`~ssgd_optax.federated.secure_aggregation.Server`.

  Example:

  >>> m = distributed_discrete_gaussian(1.0, 1000, noise_multiplier=1.0,
  ...                                   num_participants=10, min_noise_shares=7)
  >>> round(m.stddev, 6), m.entry_bound < 2 ** 30 // 10
  (2.0, True)
  """
  m = DistributedDiscreteGaussianMechanism(l2_clip, dimension, noise_multiplier,
                                           num_participants, min_noise_shares, frac_bits, bits,
                                           beta, relation)
  if noise_multiplier is None:
    m._replace(noise_multiplier=1.0).validate(ring=False)
    return m
  return m.validate()


def calibrate_distributed_noise(epsilon: float, *,
                                mechanism: DistributedDiscreteGaussianMechanism, rounds: int,
                                delta: float) -> float:
  """The smallest ``noise_multiplier`` whose ``rounds`` sums cost at most ``epsilon``.

  Args:
    epsilon: target ``epsilon > 0`` after ``rounds`` releases.
    mechanism: the structure (its ``noise_multiplier`` is ignored).
    rounds: ``R >= 1``, rounds each participant takes part in.
    delta: target ``delta``.

  Returns:
    ``z`` with ``mechanism._replace(noise_multiplier=z).epsilon(rounds=R,
    delta=delta) <= epsilon`` (within ``10^-3`` relative of equality).

  Example:

  >>> m = distributed_discrete_gaussian(1.0, 1000, num_participants=10,
  ...                                   min_noise_shares=7)
  >>> z = calibrate_distributed_noise(3.0, mechanism=m, rounds=10, delta=1e-5)
  >>> eps = m._replace(noise_multiplier=z).epsilon(rounds=10, delta=1e-5)
  >>> round(z, 2), eps <= 3.0
  (4.72, True)
  """
  from scipy import optimize
  target = _check_real('epsilon', epsilon)
  if not isinstance(mechanism, DistributedDiscreteGaussianMechanism):
    raise TypeError('mechanism must be a DistributedDiscreteGaussianMechanism; got '
                    f'{type(mechanism).__name__}.')

  def excess(log_z):
    m = mechanism._replace(noise_multiplier=math.exp(log_z))
    try:
      return m.epsilon(rounds=rounds, delta=delta) - target
    except _TruncationDeltaError:
      # So little noise that epsilon is in the hundreds, where the truncation
      # no longer fits in delta: far above any target (the search goes on).
      return 1e6

  lo, hi = math.log(1e-3), math.log(1e4)
  if excess(hi) > 0:
    raise ValueError(f'epsilon={epsilon!r} is out of reach for rounds={rounds}, '
                     f'delta={delta!r} (noise multipliers up to 1e4 tried).')
  if excess(lo) <= 0:
    return 1e-3
  log_z = optimize.brentq(excess, lo, hi, xtol=1e-4)
  z = math.exp(log_z) * 1.0005  # round up: never above the target
  while excess(math.log(z)) > 0:
    z *= 1.001
  return z


def _validated_update(update: Any, dimension: int) -> np.ndarray:
  if update is None:
    raise TypeError('update is None; pass the update as a real array.')
  x = np.asarray(update)
  if x.dtype == object or not (np.issubdtype(x.dtype, np.floating)
                               or np.issubdtype(x.dtype, np.integer)):
    raise TypeError(f'update must be a real (float or int) array; got dtype {x.dtype}.')
  x = x.astype(np.float64).ravel()
  if x.size != dimension:
    raise ValueError(f'update has {x.size} entries; the mechanism is for dimension='
                     f'{dimension}.')
  if np.isnan(x).any():
    raise ValueError(f'update contains NaN (first at entry {int(np.flatnonzero(np.isnan(x))[0])});'
                     ' refusing to encode it.')
  if np.isinf(x).any():
    raise ValueError(f'update contains +-Inf (first at entry '
                     f'{int(np.flatnonzero(np.isinf(x))[0])}); refusing to encode it.')
  return x


def _sum_of_squares(x: np.ndarray) -> float:
  # Not np.dot: BLAS threads cost 10x more than the sum on a loaded CPU.
  return float(np.square(x).sum())


def _l2_norm(x: np.ndarray) -> float:
  sq = _sum_of_squares(x)
  if math.isfinite(sq) and sq > 1e-280:
    return math.sqrt(sq)
  # Overflow or underflow of the squares: rescale by the largest entry.
  top = float(np.max(np.abs(x))) if x.size else 0.0
  return 0.0 if top == 0.0 else top * math.sqrt(_sum_of_squares(x / top))


def noisy_encode(update: Any, mechanism: DistributedDiscreteGaussianMechanism) -> np.ndarray:
  """One participant's noisy integer encoding: clip, scale, round, add its noise share.

  Args:
    update: a real array of ``mechanism.dimension`` entries (any shape);
      ``None``, NaN, ``+-Inf`` and complex values raise.
    mechanism: a validated :class:`DistributedDiscreteGaussianMechanism`.

  Returns:
    ``int64`` of shape ``(d,)``, every entry at most ``mechanism.entry_bound``
    in absolute value; reduce it modulo ``2^bits`` for the ring.

  Example:

  >>> m = distributed_discrete_gaussian(1.0, 3, noise_multiplier=1.0,
  ...                                   num_participants=4, min_noise_shares=3)
  >>> z = noisy_encode([0.5, 0.25, 0.0], m)
  >>> z.dtype.name, bool((abs(z) <= m.entry_bound).all())
  ('int64', True)
  """
  if not isinstance(mechanism, DistributedDiscreteGaussianMechanism):
    raise TypeError('mechanism must be a DistributedDiscreteGaussianMechanism; got '
                    f'{type(mechanism).__name__}.')
  mechanism.validate()
  x = _validated_update(update, mechanism.dimension)
  norm = _l2_norm(x)
  if norm > mechanism.l2_clip:
    x = x * (mechanism.l2_clip / norm)
  y = x * mechanism.scale
  low = np.floor(y)
  frac = y - low
  del y
  # Accept only norms a little below Delta_2: the float64 sum of squares is
  # then certainly within the bound the accountant uses.
  limit = mechanism.rounded_l2_bound ** 2 * (1.0 - 1e-9)
  for _ in range(_MAX_ROUNDING_TRIES):
    r = low + (_uniform(low.size) <= frac)
    if _sum_of_squares(r) <= limit:
      break
  else:
    raise RuntimeError(f'conditional rounding failed {_MAX_ROUNDING_TRIES} times (probability '
                       f'below beta^{_MAX_ROUNDING_TRIES}); beta={mechanism.beta} is too small '
                       'for this update.')
  noise = sample_discrete_gaussian(mechanism.local_stddev, low.size, bound=mechanism.noise_bound)
  noise += r.astype(np.int64)
  return noise
