# Copyright 2026 The ssgd_optax Authors. Licensed under the Apache License 2.0.
"""Poisson sampling into fixed-size, masked batches that ``jit`` can compile once.

The privacy analysis of the accountant (:func:`ssgd_optax.privacy.compute_epsilon`) assumes Poisson
sampling: each of the ``N`` examples joins a step's batch independently with
probability ``q``, so the batch size is ``Binomial(N, q)`` and varies from step
to step. A jitted step needs a fixed shape, so :func:`poisson_sample` returns
``max_batch_size`` indices and a 0/1 ``mask``; rows with ``mask == 0`` are
padding and must contribute **exactly zero** (multiply each example's loss by
the mask, never average over the padded size; divide the noisy sum by the
*expected* batch size ``q * N``).

Overflow policy
---------------
If the Poisson batch has more than ``max_batch_size`` examples, a **uniformly
random subset** of ``max_batch_size`` of them is kept (never the first ones by
index). This is truncated Poisson sampling, which changes the analysis; there
are two sound ways to account for it:

1. exactly: pass ``num_examples`` and ``max_batch_size`` to
   :func:`~ssgd_optax.privacy.compute_epsilon` (``dp_accounting``'s
   ``TruncatedSubsampledGaussianDpEvent``, PLD accountant);
2. choose ``max_batch_size = max_batch_size_for(N, q, steps=T)``, so that the
   probability that *any* of the ``T`` steps overflows, ``p``, is below
   ``overflow_prob`` (default ``1e-12``); the released transcript is then within
   total variation ``p`` of the untruncated one, so an ``(eps, delta)`` guarantee
   of untruncated Poisson sampling becomes ``(eps, delta + (1 + e^eps) p)``
   (:func:`truncation_delta`). At the default this is far below any delta in use.

Use ``return_size=True`` to get the untruncated Poisson size and count
overflows in the training loop.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from scipy import stats

from ssgd_optax import _validation

__all__ = [
    'max_batch_size_for',
    'overflow_probability',
    'poisson_sample',
    'truncation_delta',
]


def _check_n_q(num_examples: Any, sampling_rate: Any) -> float:
  _validation.check_int('num_examples', num_examples, minimum=1)
  _validation.check_probability('sampling_rate', sampling_rate)
  q = _validation.concrete_float(sampling_rate)
  if q is None:
    raise TypeError('sampling_rate must be a concrete number here, not a traced value.')
  return q


def overflow_probability(num_examples: int, sampling_rate: float,
                         max_batch_size: int, *, steps: int = 1) -> float:
  r"""Probability that a Poisson batch overflows ``max_batch_size`` in ``steps`` steps.

  .. math:: p = 1 - \big(1 - P[\mathrm{Binomial}(N, q) > B_{max}]\big)^T

  Args:
    num_examples: dataset size ``N >= 1``.
    sampling_rate: ``q`` in ``[0, 1]``.
    max_batch_size: padded batch size ``B_max >= 0``.
    steps: number of steps ``T >= 1``.

  Returns:
    ``p`` as a Python float.

  Example:
    >>> from ssgd_optax.privacy import overflow_probability
    >>> overflow_probability(60000, 256 / 60000, 256) > 0.4
    True
    >>> overflow_probability(60000, 256 / 60000, 400) < 1e-12
    True
  """
  q = _check_n_q(num_examples, sampling_rate)
  _validation.check_int('max_batch_size', max_batch_size, minimum=0)
  _validation.check_int('steps', steps, minimum=1)
  per_step = float(stats.binom.sf(max_batch_size, num_examples, q))
  return float(-math.expm1(steps * math.log1p(-per_step))) if per_step < 1 else 1.0


def max_batch_size_for(num_examples: int, sampling_rate: float, *,
                       steps: int = 1, overflow_prob: float = 1e-12) -> int:
  r"""Smallest padded batch size whose overflow probability is ``<= overflow_prob``.

  The smallest ``B_max`` with :func:`overflow_probability` ``(N, q, B_max,
  steps=T) <= overflow_prob``: a high quantile of ``Binomial(N, q)`` (about
  ``qN + 8.5 sqrt(qN)`` for ``T ~ 1000`` at the defaults), never more than ``N``.

  Args:
    num_examples: dataset size ``N >= 1``.
    sampling_rate: ``q`` in ``[0, 1]``.
    steps: number of steps ``T >= 1`` over which overflow must stay unlikely.
    overflow_prob: allowed probability that any step overflows, in ``(0, 1)``.

  Returns:
    ``B_max``, a Python int (``>= 1``).

  Example:
    >>> from ssgd_optax.privacy import max_batch_size_for
    >>> max_batch_size_for(60000, 256 / 60000, steps=1170)
    393
  """
  q = _check_n_q(num_examples, sampling_rate)
  _validation.check_int('steps', steps, minimum=1)
  p = _validation.concrete_float(overflow_prob)
  if p is None or not 0 < p < 1:
    raise ValueError(f'overflow_prob must be a number in (0, 1); got {overflow_prob!r}.')
  # Per-step level with (1 - p_step)^T >= 1 - p; the union bound p / T would do too.
  p_step = -math.expm1(math.log1p(-p) / steps)
  b = int(stats.binom.isf(p_step, num_examples, q))
  # isf is a float routine: step to the exact smallest integer meeting the bound.
  while b > 0 and stats.binom.sf(b - 1, num_examples, q) <= p_step:
    b -= 1
  while b < num_examples and stats.binom.sf(b, num_examples, q) > p_step:
    b += 1
  return max(1, min(b, num_examples))


def truncation_delta(epsilon: float, overflow_prob: float) -> float:
  r"""Extra delta paid for truncating Poisson batches that overflow.

  If the whole run overflows with probability at most ``p`` (see
  :func:`overflow_probability` with ``steps=T``), the truncated mechanism is
  within total variation ``p`` of the untruncated one on every dataset, so its
  guarantee is ``(eps, delta + (1 + e^eps) p)``.

  Args:
    epsilon: the untruncated epsilon, ``>= 0``.
    overflow_prob: ``p`` in ``[0, 1]``.

  Returns:
    ``(1 + e^eps) p``, to add to delta.

  Example:
    >>> from ssgd_optax.privacy import truncation_delta
    >>> truncation_delta(1.0, 1e-12) < 1e-11
    True
  """
  _validation.check_nonnegative('epsilon', epsilon)
  _validation.check_probability('overflow_prob', overflow_prob)
  return float((1.0 + math.exp(float(epsilon))) * float(overflow_prob))


def poisson_sample(key: jax.Array, num_examples: int, sampling_rate: Any,
                   max_batch_size: int, *, return_size: bool = False
                   ) -> tuple[jax.Array, jax.Array] | tuple[jax.Array, jax.Array, jax.Array]:
  r"""One Poisson-sampled batch as fixed-size ``(indices, mask)``; jittable.

  Draws 32 random bits ``u_i`` for every example ``i < N``; example ``i`` is in
  the batch iff ``u_i < floor(q 2^32)`` (Poisson sampling with rate ``q``,
  rounded down by at most ``2^-32``; ``2^-24`` for a traced ``q``, so the real
  rate never exceeds the accounted one). If at most ``max_batch_size`` examples
  are selected, all of them are returned, in index order, then padding (cost
  ``O(N)``); otherwise (overflow) the ``max_batch_size`` selected examples with
  the smallest ``u_i``, a uniformly random subset of the selection (given the
  selection their ``u_i`` are i.i.d. uniform; ``O(N log B_max)`` with
  ``lax.top_k``, only on that rare branch).

  Padding rows carry the valid index ``0`` with ``mask == 0``, so gathers never
  go out of bounds; their rows must be zeroed by the mask.

  Args:
    key: a PRNG key, used once.
    num_examples: ``N >= 1`` (static).
    sampling_rate: ``q`` in ``[0, 1]``; may be traced.
    max_batch_size: padded size ``1 <= B_max <= N`` (static); see
      :func:`max_batch_size_for`.
    return_size: also return the untruncated Poisson batch size.

  Returns:
    ``indices`` (int32, ``[B_max]``) and ``mask`` (bool, ``[B_max]``), plus the
    untruncated size (int32 scalar) if ``return_size``.

  Example:
    >>> import jax
    >>> from ssgd_optax.privacy import poisson_sample
    >>> idx, mask = jax.jit(poisson_sample, static_argnums=(1, 3))(
    ...     jax.random.key(0), 1000, 0.05, 100)
    >>> idx.shape, mask.dtype, 20 < int(mask.sum()) < 80
    ((100,), dtype('bool'), True)
  """
  _validation.check_int('num_examples', num_examples, minimum=1)
  _validation.check_int('max_batch_size', max_batch_size, minimum=1)
  if max_batch_size > num_examples:
    raise ValueError(f'max_batch_size must be <= num_examples={num_examples}; '
                     f'got {max_batch_size}.')
  _validation.check_probability('sampling_rate', sampling_rate)
  bits = jax.random.bits(key, (num_examples,), dtype=jnp.uint32)
  q = _validation.concrete_float(sampling_rate)
  if q is not None:
    # Exact threshold, rounded down: P(selected) = floor(q 2^32) / 2^32 <= q,
    # so the accounted rate q is never smaller than the real one.
    threshold = math.floor(q * 2.0**32)
    if threshold == 0:
      selected = jnp.zeros((num_examples,), bool)
    else:
      selected = bits <= jnp.uint32(threshold - 1)
  else:
    # Traced rate: 24-bit draws are exact in float32; P = floor(q 2^24) / 2^24 <= q.
    selected = (bits >> 8).astype(jnp.float32) < jnp.floor(
        jnp.asarray(sampling_rate, jnp.float32) * 2.0**24)
  size = jnp.sum(selected, dtype=jnp.int32)

  def all_selected(_):
    # O(N); padding rows point at example 0 with mask 0.
    (idx,) = jnp.nonzero(selected, size=max_batch_size, fill_value=0)
    return idx.astype(jnp.int32), jnp.arange(max_batch_size) < size

  def random_subset(_):
    # Overflow (rare, O(N log B_max)): the B_max smallest draws, all selected,
    # are a uniform subset of the selection (their draws are i.i.d. uniform).
    _, idx = jax.lax.top_k(~bits, max_batch_size)
    return idx.astype(jnp.int32), selected[idx]

  indices, mask = jax.lax.cond(size > max_batch_size, random_subset, all_selected, None)
  if return_size:
    return indices, mask, size
  return indices, mask
