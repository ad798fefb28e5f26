# Copyright 2026 The ssgd_optax Authors. Licensed under the Apache License 2.0.
r"""Empirical privacy auditing: canaries in, a lower bound on epsilon out.

An accountant gives an *upper* bound on epsilon that holds only if the code
does what the analysis assumes. An audit gives a *lower* bound measured on the
code itself: insert canaries, each independently with probability 1/2, run,
score every canary, and test how well the scores tell the included canaries
from the others. If the audited lower bound exceeds the claimed epsilon, the
implementation is broken. The statistics build on
``jax_privacy.auditing.CanaryScoreAuditor`` (extra ``audit``); this module
supplies the canaries, the scoring (jit/vmap-compiled), the multi-run
Gaussian-DP bound and the checks. Threat models, measured power and how to
read the numbers: ``docs/auditing.md``.

Vocabulary: the **defence** is the transform under audit (an
``optax.GradientTransformation`` or an :class:`ssgd_optax.attacks.Defence`:
DP-SGD's noise, DP-SSGD, SSGD, selective sharing, ...); the **claim** is the
privacy mechanism object of :mod:`ssgd_optax.privacy` that states what it
guarantees (``DPSGDMechanism``, ``DPSSGDMechanism``,
``BackpropClipMechanism``), from which the claimed epsilon and the canary norm
are read.

**White box** (the attacker of :func:`ssgd_optax.attacks.observe`: it sees every
shared update ``u_t``). Gradient canaries ``c_j`` are inserted as extra
per-example gradients, each present at step ``t`` with the Poisson rate ``q``
of the real data if it is included (:func:`sample_canaries`, then
:func:`insert_canaries` for per-example defences or :func:`canary_sum` for
batch-level ones). The score of canary ``j`` is the log-likelihood-ratio
statistic of a Gaussian mechanism with per-leaf sensitivity ``s_l``:

.. math::

  S_j = \sum_t \sum_l \langle u_{t,l} - b_{t,l}, c_{j,l} \rangle / s_l^2

(:func:`canary_scores` per step; ``b_t`` the data's own noise-free part of
the update, which the white-box auditor can compute; with ``q < 1``,
:func:`subsampled_gaussian_llr` per step instead of the linear sum).

**A defence alone** (no model, no data): :func:`audit_defence_multi_run`
runs it thousands of times, one worst-case gradient canary per run (Nasr et
al., USENIX Security 2023), and bounds the Gaussian-DP ``mu``: the audit to
catch a wrong noise scale or sensitivity. :func:`audit_defence` is the
one-run form (``m`` canaries, one run; far less powerful).

**Black box** (the attacker sees only the final model): input canaries
(:func:`mislabeled_canaries`, :func:`ood_canaries`) join the training set
(:func:`with_canaries`); the score is minus the canary's loss on the final
model (:func:`loss_scores`).

**Statistics.** :func:`one_run_audit`: Steinke, Nasr & Jagielski (NeurIPS
2023; ``method="one_run"``, valid for any ``(epsilon, delta)`` claim) or its
f-DP refinement (Mahloujifar et al. 2024, ``"one_run_fdp"``: tighter, and
valid for claims whose trade-off curve is Gaussian, e.g. full-batch Gaussian
noise; for subsampled mechanisms it is an approximation). :func:`multi_run_audit`:
many runs, one canary decision each: ``"gdp"`` (simultaneous DKW bands on
both error rates, a lower bound on ``mu``, :func:`gdp_epsilon`) or
``"clopper_pearson"`` (any claim). Every bound holds with probability
``confidence`` over the inclusion draws (and, multi-run, the runs).

Checks: canary counts (``>= 2``, ``<=`` the coordinates for Dirac canaries),
inclusion probabilities in ``(0, 1)``, confidence in ``(0, 1)``, scores of the
wrong shape, a claim that is not a Gaussian mechanism object, and an audit of
a defence without its threat-model facts (``per_example``, ``canary_norm`` or
``claim``, ``sampling_rate``, ``steps``) raise errors that name the argument.
Nothing here modifies its inputs: canary sets are new arrays, and training
sets with canaries are copies.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ssgd_optax import _keys
from ssgd_optax import _validation
from ssgd_optax import privacy

__all__ = [
    'CANARY_KINDS',
    'ONE_RUN_METHODS',
    'MULTI_RUN_METHODS',
    'PER_EXAMPLE_CANARY_SCALE',
    'AuditResult',
    'GradientCanaries',
    'InputCanaries',
    'draw_inclusion',
    'gradient_canaries',
    'sample_canaries',
    'insert_canaries',
    'canary_sum',
    'canary_scores',
    'subsampled_gaussian_llr',
    'mislabeled_canaries',
    'ood_canaries',
    'with_canaries',
    'loss_scores',
    'one_run_audit',
    'multi_run_audit',
    'gdp_epsilon',
    'multi_run_scores',
    'defence_scores',
    'defence_scores_multi_run',
    'audit_defence',
    'audit_defence_multi_run',
]

CANARY_KINDS = ('dirac', 'random')
# With a claim, a per-example defence gets canaries at this multiple of the claimed
# sensitivity (see defence_scores).
PER_EXAMPLE_CANARY_SCALE = 100.0
ONE_RUN_METHODS = ('one_run', 'one_run_fdp')
MULTI_RUN_METHODS = ('gdp', 'clopper_pearson')


# ----------------------------------------------------------------------------
# Checks.


def _check_num_canaries(num_canaries: Any, name: str = 'num_canaries') -> int:
  _validation.check_int(name, num_canaries, minimum=2)
  return int(num_canaries)


def _check_open_unit(name: str, value: Any) -> float:
  v = _validation.concrete_float(value)
  if v is None or isinstance(value, bool):
    raise TypeError(f'{name} must be a concrete real number in (0, 1); got '
                    f'{type(value).__name__} {value!r}.')
  if not 0 < v < 1:
    raise ValueError(f'{name} must be in the open interval (0, 1); got {v!r}.')
  return v


def _check_sampling_rate(sampling_rate: Any) -> None:
  if sampling_rate is None:
    raise ValueError('sampling_rate is required: the Poisson rate q at which the real data '
                     '(and so every included canary) is sampled per step.')
  _validation.check_probability('sampling_rate', sampling_rate, open_left=True)


def _jax_privacy_auditing():
  try:
    from jax_privacy import auditing  # pylint: disable=g-import-not-at-top
  except ImportError as e:  # pragma: no cover - the extra is part of `test`
    raise ImportError(
        'ssgd_optax.audit needs jax-privacy for its statistics: pip install '
        "'ssgd_optax[audit]' (jax-privacy==2.0.0).") from e
  return auditing


# ----------------------------------------------------------------------------
# Canaries in gradient space.


class GradientCanaries(NamedTuple):
  """``m`` canary gradients for a white-box audit.

  Attributes:
    directions: a tree shaped like the parameters with a leading axis ``m``
      on every leaf: canary ``j`` is ``directions[j]``, already at its norm.
    norm: a tree shaped like one canary with a float32 scalar per leaf: the
      scale ``s_l`` of leaf ``l`` (the whole canary's norm repeated, or each
      leaf's own norm, e.g. the per-tensor sensitivities of backprop
      clipping). Scores weight leaf ``l`` by ``1 / s_l^2``.

  A pytree of arrays only, so it can be passed through ``jit``.
  """
  directions: Any
  norm: Any

  @property
  def num_canaries(self) -> int:
    return int(jax.tree.leaves(self.directions)[0].shape[0])


def draw_inclusion(key: jax.Array, num_canaries: int, probability: float = 0.5) -> jax.Array:
  """Independent inclusion decisions ``b_j ~ Bernoulli(p)``, one per canary.

  Args:
    key: a PRNG key.
    num_canaries: ``m >= 2``.
    probability: ``p`` in ``(0, 1)``; the one-run audit's analysis assumes
      ``1/2``.

  Returns:
    ``bool[m]``.

  Example:

  >>> import jax
  >>> b = draw_inclusion(jax.random.key(0), 1000)
  >>> b.shape, 400 < int(b.sum()) < 600
  ((1000,), True)
  """
  key = _keys.check_key(key)
  m = _check_num_canaries(num_canaries)
  p = _check_open_unit('probability', probability)
  return jax.random.bernoulli(key, p, (m,))


def _per_leaf_norms(params: Any, norm: Any) -> tuple[list[float], bool]:
  """``norm`` as one float per leaf of ``params``; True if it was a scalar."""
  leaves = jax.tree.leaves(params)
  if not leaves:
    raise ValueError('params must have at least one leaf (array) to place canaries in.')
  scalar = jax.tree_util.treedef_is_leaf(jax.tree.structure(norm)) and np.ndim(norm) == 0
  if scalar:
    _validation.check_positive('norm', norm)
    v = _validation.concrete_float(norm)
    if v is None:
      raise TypeError('norm must be a concrete number, not a traced value.')
    return [v] * len(leaves), True
  try:
    norms = jax.tree.structure(params).flatten_up_to(norm)
  except (ValueError, TypeError) as e:
    raise ValueError('norm must be a positive number or a tree with the structure of params '
                     f'(one number per leaf); structures differ: {e}') from None
  out = []
  for n in norms:
    _validation.check_positive('norm', n)
    out.append(float(np.asarray(n)))
  return out, False


def gradient_canaries(key: jax.Array, params: Any, num_canaries: int, *,
                      kind: str = 'random', norm: Any = 1.0) -> GradientCanaries:
  r"""Draws ``m`` canary gradients shaped like ``params``.

  * ``"random"``: ``c_j`` a Gaussian direction; with a scalar ``norm`` the
    whole gradient is scaled to ``||c_j|| = norm``, with a per-leaf ``norm``
    every leaf to ``||c_{j,l}|| = norm_l``. Directions of different canaries
    are nearly orthogonal (inner products ``~ 1/sqrt(P)``).
  * ``"dirac"``: ``c_j = \pm norm_l e_{k_j}`` at ``m`` distinct coordinates
    ``k_j`` drawn uniformly among the ``P`` parameters (Nasr et al. 2023);
    needs ``m <= P``. A Dirac canary touches one tensor, so under per-tensor
    noise (backprop clipping) it sees one of the ``L`` releases: use
    ``"random"`` with per-leaf norms there.

  Args:
    key: a PRNG key.
    params: the parameter tree (arrays or shape structs).
    num_canaries: ``m >= 2``.
    kind: ``"random"`` or ``"dirac"``.
    norm: ``> 0``, a scalar or a tree of per-leaf scalars (e.g. the DP
      mechanism's sensitivity: DP-SGD's clip norm, DP-SSGD's 1,
      :func:`ssgd_optax.privacy.sensitivities` for backprop clipping).

  Returns:
    :class:`GradientCanaries` (``m`` dense float32 copies of the tree).

  Example:

  >>> import jax, jax.numpy as jnp
  >>> c = gradient_canaries(jax.random.key(0), {'w': jnp.zeros((3, 4))}, 5, kind='dirac')
  >>> c.directions['w'].shape, float(jnp.abs(c.directions['w']).sum())
  ((5, 3, 4), 5.0)
  """
  key = _keys.check_key(key)
  m = _check_num_canaries(num_canaries)
  _validation.check_choice('kind', kind, CANARY_KINDS)
  norms, scalar = _per_leaf_norms(params, norm)
  total = sum(int(np.prod(np.shape(x), dtype=np.int64)) for x in jax.tree.leaves(params))
  if kind == 'dirac' and m > total:
    raise ValueError(f'num_canaries must be <= the number of parameters ({total}) for '
                     f"kind='dirac' (distinct coordinates); got {m}.")
  return _draw_canaries(key, params, m, kind, norms, scalar)


def _draw_canaries(key: jax.Array, params: Any, m: int, kind: str, norms: list[float],
                   scalar: bool) -> GradientCanaries:
  """:func:`gradient_canaries` without the checks (``m >= 1``; traceable in ``key``)."""
  leaves, treedef = jax.tree.flatten(params)
  shapes = [tuple(np.shape(x)) for x in leaves]
  sizes = [int(np.prod(s, dtype=np.int64)) for s in shapes]
  total = sum(sizes)
  k_dir, k_sign = jax.random.split(key)
  if kind == 'dirac':
    coords = jax.random.choice(k_dir, total, (m,), replace=False)
    signs = jnp.where(jax.random.bernoulli(k_sign, 0.5, (m,)), 1.0, -1.0)
    flat = jnp.zeros((m, total), jnp.float32).at[jnp.arange(m), coords].set(signs)
    offsets = np.cumsum([0] + sizes)
    out = [flat[:, offsets[i]:offsets[i + 1]].reshape((m,) + shapes[i]) * norms[i]
           for i in range(len(leaves))]
  else:
    keys = jax.random.split(k_dir, len(leaves))
    raw = [jax.random.normal(k, (m,) + s, jnp.float32) for k, s in zip(keys, shapes)]
    sq = [jnp.sum(r.reshape(m, -1) ** 2, axis=1) for r in raw]
    if scalar:
      whole = jnp.sqrt(sum(sq))
      out = [r * (norms[0] / whole).reshape((m,) + (1,) * len(s)) for r, s in zip(raw, shapes)]
    else:
      out = [r * (n / jnp.sqrt(q)).reshape((m,) + (1,) * len(s))
             for r, q, n, s in zip(raw, sq, norms, shapes)]
  norm_tree = jax.tree.unflatten(treedef, [jnp.float32(n) for n in norms])
  return GradientCanaries(jax.tree.unflatten(treedef, out), norm_tree)


def sample_canaries(key: jax.Array, included: jax.Array, sampling_rate: Any) -> jax.Array:
  """Which canaries are in this step's batch: ``b_j`` and ``Bernoulli(q)``.

  Every included canary is Poisson-sampled at the real data's rate ``q``,
  independently per step; excluded canaries never appear. Jittable
  (``sampling_rate`` may be traced).

  Args:
    key: a PRNG key, used once.
    included: ``bool[m]`` from :func:`draw_inclusion`.
    sampling_rate: ``q`` in ``(0, 1]``.

  Returns:
    ``bool[m]``.

  Example:

  >>> import jax, jax.numpy as jnp
  >>> sample_canaries(jax.random.key(0), jnp.array([True, False]), 1.0)
  Array([ True, False], dtype=bool)
  """
  _check_sampling_rate(sampling_rate)
  included = jnp.asarray(included)
  if included.ndim != 1 or included.dtype != jnp.bool_:
    raise ValueError(f'included must be a bool vector [m]; got {included.dtype} {included.shape}.')
  return jnp.logical_and(included, jax.random.bernoulli(key, sampling_rate, included.shape))


def _check_canaries(canaries: Any) -> GradientCanaries:
  if not isinstance(canaries, GradientCanaries):
    raise TypeError(f'canaries must be GradientCanaries (gradient_canaries(...)); got '
                    f'{type(canaries).__name__}.')
  return canaries


def _check_included(included: Any, m: int, name: str = 'included') -> jax.Array:
  shape = np.shape(included)
  if shape != (m,):
    raise ValueError(f'{name} must have shape ({m},), one decision per canary; got {shape}.')
  return jnp.asarray(included).astype(bool)


def insert_canaries(rows: Any, mask: jax.Array | None, canaries: GradientCanaries,
                    present: jax.Array, max_rows: int) -> tuple[Any, jax.Array]:
  """Appends this step's canary gradients to a batch of per-example gradients.

  For defences that consume per-example gradients (DP-SGD, DP-SSGD): the
  ``present`` canaries (:func:`sample_canaries`) become up to ``max_rows``
  extra rows, padded and masked like :func:`ssgd_optax.privacy.poisson_sample`
  batches; the defence clips or normalises them like any example.

  Args:
    rows: per-example gradients, a tree with a leading batch axis ``B``.
    mask: ``[B]`` mask of real rows, or ``None`` (all real).
    canaries: :class:`GradientCanaries` with the structure of one row.
    present: ``bool[m]``, the canaries in this step.
    max_rows: static padded number of canary rows ``K``; present canaries
      beyond ``K`` are dropped (pick ``K`` from
      :func:`ssgd_optax.privacy.max_batch_size_for`\\ ``(m, q)``).

  Returns:
    ``(rows', mask')`` with ``B + K`` rows.

  Example:

  >>> import jax, jax.numpy as jnp
  >>> c = gradient_canaries(jax.random.key(0), jnp.zeros(4), 3, kind='dirac')
  >>> r, m = insert_canaries(jnp.ones((2, 4)), None, c, jnp.array([True, False, True]), 2)
  >>> r.shape, m.tolist()
  ((4, 4), [True, True, True, True])
  """
  canaries = _check_canaries(canaries)
  present = _check_included(present, canaries.num_canaries, 'present')
  _validation.check_int('max_rows', max_rows, minimum=1)
  leaves = jax.tree.leaves(rows)
  if not leaves:
    raise ValueError('rows must be a non-empty tree of per-example gradients.')
  batch = leaves[0].shape[0]
  (idx,) = jnp.nonzero(present, size=max_rows, fill_value=0)
  extra_mask = jnp.arange(max_rows) < jnp.sum(present)
  try:
    out = jax.tree.map(
        lambda r, c: jnp.concatenate([r, c[idx].astype(r.dtype)], axis=0), rows,
        canaries.directions)
  except (ValueError, TypeError) as e:
    raise ValueError('rows must have the structure of the canaries (one gradient per row); '
                     f'got {e}') from None
  base = jnp.ones((batch,), bool) if mask is None else jnp.asarray(mask).astype(bool)
  return out, jnp.concatenate([base, extra_mask])


def canary_sum(canaries: GradientCanaries, present: jax.Array) -> Any:
  """``sum_j present_j c_j``: the canaries' part of a batch-gradient sum.

  For defences that see only the batch gradient (SSGD, selective sharing,
  backprop clipping, whose per-example bound lives inside the model): add
  this to the batch's gradient sum before the defence. One contraction per
  leaf.

  Example:

  >>> import jax, jax.numpy as jnp
  >>> c = gradient_canaries(jax.random.key(0), jnp.zeros(4), 2, kind='dirac')
  >>> float(jnp.abs(canary_sum(c, jnp.array([True, True]))).sum())
  2.0
  """
  canaries = _check_canaries(canaries)
  present = _check_included(present, canaries.num_canaries, 'present')
  w = present.astype(jnp.float32)
  return jax.tree.map(lambda c: jnp.tensordot(w, c, axes=1), canaries.directions)


def canary_scores(update: Any, canaries: GradientCanaries, baseline: Any = None) -> jax.Array:
  r"""One step's white-box scores ``sum_l <u_l - b_l, c_{j,l}> / s_l^2``, ``float32[m]``.

  Sum over the steps for the audit: for a Gaussian mechanism without
  subsampling that sum is the canary's log-likelihood-ratio statistic up to
  a constant (with Poisson sampling at rate ``q < 1`` see
  :func:`subsampled_gaussian_llr`). ``O(m P)``: one matrix-vector product
  per leaf.

  **Baseline.** In real training the data's own gradient lies in every
  update; its projection on canary ``j`` does not depend on whether ``j`` was
  included, but it is noise to the audit, and summed over ``T`` steps it
  grows like ``T`` while a canary's signal grows like ``qT``. The white-box
  auditor of a DP claim knows every other example (the DP threat model), so
  it can compute that part exactly: pass as ``baseline`` the update the
  defence would release on the real rows alone *without its noise* (for
  DP-SGD the clipped sum of the data rows over the expected batch size; for
  DP-SSGD their normalised sum over it). What remains is the noise plus the
  canaries. Any baseline computed without the inclusion decisions keeps the
  audit valid. A running mean of past updates does not do this job: summed
  over the steps, ``u_t - b_t`` with ``b_t = beta b_{t-1} + (1 - beta)
  u_{t-1}`` weights update ``s`` by ``beta^(T-1-s)``, so only the last
  ``~1/(1 - beta)`` updates count and the canaries' accumulated signal is
  thrown away with the data's (about 3x less signal-to-noise at ``T = 200``,
  ``beta = 0.9``).

  Args:
    update: the shared update, a tree shaped like one canary.
    canaries: :class:`GradientCanaries`.
    baseline: ``None`` or a tree like ``update`` subtracted from it.

  Returns:
    ``float32[m]``.

  Example:

  >>> import jax, jax.numpy as jnp
  >>> c = gradient_canaries(jax.random.key(0), jnp.zeros(4), 2, kind='dirac')
  >>> canary_scores(c.directions[0], c).tolist()
  [1.0, 0.0]
  """
  canaries = _check_canaries(canaries)
  m = canaries.num_canaries
  if jax.tree.structure(update) != jax.tree.structure(canaries.directions):
    raise ValueError('update must have the structure of the canaries (the parameters); got '
                     f'{jax.tree.structure(update)} vs {jax.tree.structure(canaries.directions)}.')
  leaves = jax.tree.leaves(canaries.directions)
  norms = jax.tree.leaves(canaries.norm)
  total = jnp.zeros((m,), jnp.float32)
  if baseline is not None:
    update = jax.tree.map(lambda u, b: u - b, update, baseline)
  for u, c, n in zip(jax.tree.leaves(update), leaves, norms):
    if np.shape(u) != c.shape[1:]:
      raise ValueError(f'update leaf of shape {np.shape(u)} does not match the canaries\' '
                       f'{c.shape[1:]}.')
    total = total + (c.reshape(m, -1) @ jnp.ravel(u).astype(jnp.float32)) / jnp.square(n)
  return total


def subsampled_gaussian_llr(step_scores: jax.Array, *, sampling_rate: Any,
                            noise_std: Any = None, signal: Any = 1.0) -> jax.Array:
  r"""Per-step log-likelihood ratio of canary presence under a Poisson-subsampled Gaussian.

  .. math:: \lambda_t = \log\big(1 - q + q\, e^{\mu z_t - \mu^2/2}\big),
     \qquad z_t = x_t / \sigma,\ \mu = s / \sigma

  for a step score ``x_t`` (:func:`canary_scores`, with the data's part
  removed by ``baseline``) that is ``N(0, sigma^2)`` without the canary and
  ``N(s, sigma^2)`` when it is in the batch, which happens with probability
  ``q``. ``sum_t lambda_t`` is the most powerful score against that
  alternative (Neyman-Pearson); for ``q = 1`` it is the linear sum up to a
  constant. With ``q < 1`` it weighs one large excursion (a step where the
  canary was sampled) above many small ones, which the linear sum does not.

  ``noise_std=None`` estimates ``sigma`` from the step's scores themselves:
  ``1.4826`` times their median absolute deviation across the canaries
  (most canaries are absent from any one step, so it is the noise's). The
  score then adapts to the noise actually released, which is what a broken
  defence gets wrong; computed from the release alone, it keeps the audit
  valid. Passing the *claimed* noise instead tests against the claim, which
  is weaker against a defence with less noise than it claims
  (``benchmarks/README.md``, section 9).

  Scores in units of one present canary: for
  :func:`ssgd_optax.privacy.add_gaussian_noise` with canaries at the claimed
  sensitivity, ``x_t = Bbar *`` canary score, ``signal = 1``, and the claimed
  noise std is the noise multiplier. Jittable; any argument may be traced.

  Args:
    step_scores: ``float[m]`` one step's canary scores (``m >= 2`` to
      estimate the noise).
    sampling_rate: ``q`` in ``(0, 1]``.
    noise_std: ``sigma > 0``, the std of a step score without the canary, or
      ``None`` (estimated, see above).
    signal: ``s > 0``, the mean step score of a present canary.

  Returns:
    ``float32[m]``: add over the steps.

  Example:

  >>> import jax.numpy as jnp
  >>> subsampled_gaussian_llr(jnp.array([0.0, 3.0]), sampling_rate=0.1, noise_std=1.0).round(2)
  Array([-0.04,  0.75], dtype=float32)
  """
  _validation.check_probability('sampling_rate', sampling_rate, open_left=True)
  _validation.check_positive('signal', signal)
  x = jnp.asarray(step_scores, jnp.float32)
  if noise_std is None:
    if x.ndim != 1 or x.shape[0] < 2:
      raise ValueError('noise_std=None estimates the noise across the canaries: step_scores '
                       f'must be a vector of m >= 2 scores; got shape {x.shape}.')
    sigma = 1.4826 * jnp.median(jnp.abs(x - jnp.median(x)))
    sigma = jnp.maximum(sigma, jnp.finfo(jnp.float32).tiny)
  else:
    _validation.check_positive('noise_std', noise_std)
    sigma = jnp.asarray(noise_std, jnp.float32)
  q = jnp.asarray(sampling_rate, jnp.float32)
  mu = jnp.asarray(signal, jnp.float32) / sigma
  z = x / sigma
  return jnp.logaddexp(jnp.log1p(-q), jnp.log(q) + mu * z - 0.5 * mu * mu)


# ----------------------------------------------------------------------------
# Canaries in input space.


class InputCanaries(NamedTuple):
  """``m`` canary examples for a black-box audit.

  Attributes:
    x: ``[m, ...]`` inputs.
    y: ``int32[m]`` labels (wrong ones for mislabeled canaries).
    source_index: ``int[m]`` rows of the training set they were taken from
      (removed from it by :func:`with_canaries`), or ``None``.
  """
  x: np.ndarray
  y: np.ndarray
  source_index: np.ndarray | None


def mislabeled_canaries(key: jax.Array, x: Any, y: Any, num_canaries: int, *,
                        num_classes: int) -> InputCanaries:
  """``m`` training examples relabelled to a uniformly random *other* class.

  A mislabeled example is learned only if it is trained on, so its loss on
  the final model separates members from non-members (the canaries of
  Steinke et al.'s black-box experiments). The arrays are copies.

  Args:
    key: a PRNG key.
    x: training inputs ``[N, ...]`` (not modified).
    y: integer labels ``[N]`` (not modified).
    num_canaries: ``2 <= m <= N``.
    num_classes: ``>= 2``.

  Returns:
    :class:`InputCanaries` with ``source_index``.

  Example:

  >>> import jax, numpy as np
  >>> c = mislabeled_canaries(jax.random.key(0), np.zeros((10, 2)), np.arange(10) % 3, 4,
  ...                         num_classes=3)
  >>> bool(np.all(c.y != (c.source_index % 3)))
  True
  """
  key = _keys.check_key(key)
  m = _check_num_canaries(num_canaries)
  _validation.check_int('num_classes', num_classes, minimum=2)
  x, y = np.asarray(x), np.asarray(y)
  if y.ndim != 1 or len(y) != len(x) or not np.issubdtype(y.dtype, np.integer):
    raise ValueError(f'y must be integer labels of shape ({len(x)},); got {y.dtype} {y.shape}.')
  if m > len(x):
    raise ValueError(f'num_canaries must be <= the number of examples ({len(x)}); got {m}.')
  k1, k2 = jax.random.split(key)
  idx = np.asarray(jax.random.choice(k1, len(x), (m,), replace=False))
  shift = np.asarray(jax.random.randint(k2, (m,), 1, num_classes))
  return InputCanaries(np.array(x[idx]), ((y[idx] + shift) % num_classes).astype(np.int32), idx)


def ood_canaries(key: jax.Array, num_canaries: int, input_shape: tuple[int, ...], *,
                 num_classes: int, low: float = 0.0, high: float = 1.0) -> InputCanaries:
  """``m`` out-of-distribution canaries: uniform noise images, random labels.

  Example:

  >>> import jax
  >>> c = ood_canaries(jax.random.key(0), 3, (2, 2, 1), num_classes=10)
  >>> c.x.shape, c.y.shape, c.source_index is None
  ((3, 2, 2, 1), (3,), True)
  """
  key = _keys.check_key(key)
  m = _check_num_canaries(num_canaries)
  _validation.check_int('num_classes', num_classes, minimum=2)
  if not low < high:
    raise ValueError(f'low must be < high; got {low!r}, {high!r}.')
  k1, k2 = jax.random.split(key)
  x = jax.random.uniform(k1, (m,) + tuple(input_shape), jnp.float32, low, high)
  y = jax.random.randint(k2, (m,), 0, num_classes)
  return InputCanaries(np.asarray(x), np.asarray(y, np.int32), None)


def with_canaries(x: Any, y: Any, canaries: InputCanaries,
                  included: Any) -> tuple[np.ndarray, np.ndarray]:
  """A new training set: ``x, y`` without the canaries' sources, plus the included canaries.

  Args:
    x, y: the training set (not modified).
    canaries: :class:`InputCanaries`.
    included: ``bool[m]``.

  Returns:
    ``(x', y')``, new arrays: the non-canary examples, then the included
    canaries.

  Example:

  >>> import jax, numpy as np
  >>> x, y = np.arange(6.)[:, None], np.arange(6) % 2
  >>> c = mislabeled_canaries(jax.random.key(1), x, y, 2, num_classes=2)
  >>> x2, y2 = with_canaries(x, y, c, np.array([True, False]))
  >>> len(x2), len(x)
  (5, 6)
  """
  if not isinstance(canaries, InputCanaries):
    raise TypeError(f'canaries must be InputCanaries; got {type(canaries).__name__}.')
  x, y = np.asarray(x), np.asarray(y)
  inc = np.asarray(_check_included(included, len(canaries.y)))
  keep = np.ones(len(x), bool)
  if canaries.source_index is not None:
    keep[np.asarray(canaries.source_index)] = False
  if canaries.x.shape[1:] != x.shape[1:]:
    raise ValueError(f'canary inputs {canaries.x.shape[1:]} do not match x {x.shape[1:]}.')
  return (np.concatenate([x[keep], canaries.x[inc].astype(x.dtype)]),
          np.concatenate([y[keep], canaries.y[inc].astype(y.dtype)]))


def loss_scores(apply_fn: Callable[[jax.Array], jax.Array], canaries: InputCanaries, *,
                batch_size: int = 1000) -> np.ndarray:
  """Black-box scores: minus each canary's cross-entropy on the final model.

  Args:
    apply_fn: ``x[B, ...] -> logits[B, C]`` of the trained model (e.g.
      ``nnx.jit(lambda x: model(x))``).
    canaries: :class:`InputCanaries`.
    batch_size: examples per call.

  Returns:
    ``float32[m]``; higher means "more likely trained on".

  Example:

  >>> import jax, jax.numpy as jnp
  >>> c = ood_canaries(jax.random.key(0), 2, (3,), num_classes=2)
  >>> loss_scores(lambda x: jnp.zeros((x.shape[0], 2)), c).round(4).tolist()
  [-0.6931, -0.6931]
  """
  if not callable(apply_fn):
    raise TypeError(f'apply_fn must be callable x -> logits; got {type(apply_fn).__name__}.')
  _validation.check_int('batch_size', batch_size, minimum=1)
  out = []
  for s in range(0, len(canaries.y), batch_size):
    logits = apply_fn(jnp.asarray(canaries.x[s:s + batch_size]))
    out.append(np.asarray(-optax.softmax_cross_entropy_with_integer_labels(
        logits, jnp.asarray(canaries.y[s:s + batch_size]))))
  return np.concatenate(out).astype(np.float32)


# ----------------------------------------------------------------------------
# Statistics.


class AuditResult(NamedTuple):
  """What an audit measured.

  Attributes:
    epsilon: the lower bound on epsilon; it holds with probability
      ``confidence`` (over the inclusion draws) if the mechanism is
      ``(epsilon, delta)``-DP for no smaller epsilon.
    confidence: ``1 - significance``.
    delta: the delta of the tested claim.
    method: ``"one_run"``, ``"one_run_fdp"``, ``"clopper_pearson"`` or ``"gdp"``.
    num_canaries: scores audited (``m``, or runs for multi-run audits).
    num_included: how many of them were included.
    auroc: area under the ROC curve of the scores (0.5 = chance).
    tpr_at_fpr: the largest true-positive rate at false-positive rate ``fpr``.
    fpr: that false-positive rate.
    claimed_epsilon: the epsilon the audited claim states for this run
      (``privacy.compute_epsilon(claim, ...)`` of :func:`audit_defence` /
      :func:`audit_defence_multi_run`), or ``None`` when no claim was given.
  """
  epsilon: float
  confidence: float
  delta: float
  method: str
  num_canaries: int
  num_included: int
  auroc: float
  tpr_at_fpr: float
  fpr: float
  claimed_epsilon: float | None = None

  @property
  def exceeds_claim(self) -> bool | None:
    """``epsilon > claimed_epsilon``: the claim is refuted at ``confidence`` (None: no claim)."""
    return None if self.claimed_epsilon is None else self.epsilon > self.claimed_epsilon


def _split_scores(scores: Any, included: Any) -> tuple[np.ndarray, np.ndarray]:
  s = np.asarray(scores, dtype=np.float64)
  if s.ndim != 1 or s.size < 2:
    raise ValueError(f'scores must be a vector [m] with m >= 2 (one score per canary); got '
                     f'shape {s.shape}.')
  inc = np.asarray(included)
  if inc.shape != s.shape:
    raise ValueError(f'included must have the shape of scores {s.shape}; got {inc.shape}.')
  if inc.dtype != np.bool_:
    if not np.all(np.isin(inc, (0, 1))):
      raise ValueError('included must be booleans (or 0/1); got other values.')
    inc = inc.astype(bool)
  if not np.all(np.isfinite(s)):
    raise ValueError(f'scores must be finite; {int((~np.isfinite(s)).sum())} are NaN or Inf '
                     '(a diverged run cannot be audited).')
  if inc.all() or not inc.any():
    raise ValueError('included must contain both included and excluded canaries; got '
                     f'{int(inc.sum())} of {inc.size} included.')
  return s[inc], s[~inc]


def _check_delta(delta: Any) -> float:
  d = _validation.concrete_float(delta)
  if d is None or not 0 < d < 1:
    raise ValueError(f'delta must be a number in (0, 1); got {delta!r}.')
  return d


def _summary(auditor: Any, fpr: float) -> tuple[float, float]:
  return float(auditor.attack_auroc()), float(auditor.tpr_at_given_fpr(fpr))


def one_run_audit(scores: Any, included: Any, *, delta: float, confidence: float = 0.95,
                  method: str = 'one_run', fpr: float = 0.01,
                  threshold_strategy: Any = None) -> AuditResult:
  r"""Epsilon lower bound from one training run's canary scores.

  Steinke, Nasr & Jagielski (2023): with ``m`` canaries included
  independently with probability 1/2, guess "in" for the canaries scoring
  above a threshold; if ``r`` of ``v`` guesses are right, an
  ``(epsilon, delta)``-DP run makes that unlikely above epsilon (``r`` is
  stochastically dominated by ``Binomial(v, e^epsilon / (1 + e^epsilon))``
  plus a delta term). The bound is the largest epsilon rejected at level
  ``1 - confidence``, over all thresholds (Bonferroni-corrected by default).
  Statistics by ``jax_privacy.auditing.CanaryScoreAuditor``.

  Args:
    scores: ``[m]`` scores; higher means "included".
    included: ``bool[m]`` inclusion decisions.
    delta: the delta of the claim, in ``(0, 1)``.
    confidence: in ``(0, 1)``, e.g. 0.95.
    method: ``"one_run"`` (any DP claim) or ``"one_run_fdp"`` (f-DP,
      Mahloujifar et al. 2024; tighter, assumes a Gaussian trade-off curve).
    fpr: the false-positive rate of the reported TPR, in ``[0, 1]``.
    threshold_strategy: a ``jax_privacy.auditing`` strategy (``Bonferroni()``
      by default, ``Split``, ``MultiSplit``, ``Explicit``).

  Returns:
    :class:`AuditResult`.

  Example:

  >>> import numpy as np
  >>> inc = np.arange(200) % 2 == 0
  >>> r = one_run_audit(inc * 10.0 + np.arange(200) * 1e-3, inc, delta=1e-5)
  >>> r.epsilon > 1, r.auroc, r.num_included
  (True, 1.0, 100)
  """
  _validation.check_choice('method', method, ONE_RUN_METHODS)
  conf = _check_open_unit('confidence', confidence)
  d = _check_delta(delta)
  _validation.check_probability('fpr', fpr)
  ins, outs = _split_scores(scores, included)
  auditing = _jax_privacy_auditing()
  auditor = auditing.CanaryScoreAuditor(ins, outs)
  strategy = auditing.Bonferroni() if threshold_strategy is None else threshold_strategy
  fn = auditor.epsilon_one_run if method == 'one_run' else auditor.epsilon_one_run_fdp
  eps = float(fn(1 - conf, d, threshold_strategy=strategy))
  auroc, tpr = _summary(auditor, fpr)
  return AuditResult(eps, conf, d, method, ins.size + outs.size, ins.size, auroc, tpr,
                     float(fpr))


def _gdp_mu_lower_bound(ins: np.ndarray, outs: np.ndarray, significance: float) -> float:
  """Lower confidence bound on the Gaussian-DP ``mu`` from held-in / held-out scores.

  Simultaneous one-sided bands on the two score distributions (Massart's
  DKW inequality, ``significance / 2`` each): with probability ``1 -
  significance``, at *every* threshold ``t`` the false-negative rate is at
  most ``FNR_hat(t) + e_in`` and the false-positive rate at most
  ``FPR_hat(t) + e_out``, ``e = sqrt(log(2 / significance) / (2 n))``. A
  ``mu``-GDP mechanism has ``FNR >= Phi(Phi^-1(1 - FPR) - mu)`` at every
  threshold, so ``mu >= Phi^-1(1 - FPR_ub) - Phi^-1(FNR_ub)``; the bound is
  the largest over the thresholds (valid for all of them at once, so no
  correction for the choice).
  """
  from scipy import stats  # pylint: disable=g-import-not-at-top
  ins, outs = np.sort(ins), np.sort(outs)
  e_in = np.sqrt(np.log(2 / significance) / (2 * ins.size))
  e_out = np.sqrt(np.log(2 / significance) / (2 * outs.size))
  t = np.concatenate([np.union1d(ins, outs), [np.inf]])
  fnr_ub = np.searchsorted(ins, t, side='left') / ins.size + e_in
  fpr_ub = 1 - np.searchsorted(outs, t, side='left') / outs.size + e_out
  ok = (fnr_ub < 1) & (fpr_ub < 1)
  if not ok.any():
    return 0.0
  mu = stats.norm.isf(fpr_ub[ok]) - stats.norm.ppf(fnr_ub[ok])
  return max(0.0, float(np.max(mu)))


def gdp_epsilon(mu: float, delta: float) -> float:
  r"""The epsilon of a ``mu``-GDP mechanism at ``delta`` (Dong, Roth & Su 2022, Cor. 2.13).

  The smallest ``epsilon >= 0`` with
  ``Phi(-epsilon/mu + mu/2) - e^epsilon Phi(-epsilon/mu - mu/2) <= delta``:
  exact for the Gaussian mechanism with sensitivity ``mu`` and unit noise.

  Example:

  >>> round(gdp_epsilon(0.268, 1e-5), 2), gdp_epsilon(0.0, 1e-5)
  (1.0, 0.0)
  """
  from scipy import optimize, stats  # pylint: disable=g-import-not-at-top
  _validation.check_nonnegative('mu', mu)
  d = _check_delta(delta)
  mu = float(mu)
  if mu == 0:
    return 0.0

  def log_gap(eps):
    a = stats.norm.logcdf(-eps / mu + mu / 2)
    b = eps + stats.norm.logcdf(-eps / mu - mu / 2)
    return a + np.log1p(-np.exp(min(b - a, 0.0))) - np.log(d) if b < a else -np.inf

  if log_gap(0.0) <= 0:
    return 0.0
  hi = mu * mu / 2 + 40 * mu + 1.0
  return float(optimize.brentq(log_gap, 0.0, hi, xtol=1e-9))


def multi_run_audit(scores: Any, included: Any, *, delta: float, confidence: float = 0.95,
                    method: str = 'gdp', fpr: float = 0.01) -> AuditResult:
  r"""Epsilon lower bound from many independent runs (one canary decision per run).

  * ``"gdp"`` (default; Nasr et al. 2023's Gaussian-DP audit): a lower
    confidence bound on ``mu`` from simultaneous (DKW) bands on the false-
    negative and false-positive rates of every threshold,
    ``mu >= Phi^-1(1 - FPR_ub) - Phi^-1(FNR_ub)``, converted with
    :func:`gdp_epsilon`. It refutes claims whose trade-off curve is
    Gaussian: exact for Gaussian noise without subsampling (``q = 1``, any
    number of steps), an approximation for subsampled runs. About 2,000
    runs catch a defence whose noise is half the claimed one at
    ``epsilon = 1`` with probability 0.9 or more (``benchmarks/README.md``,
    section 9). (``jax_privacy.auditing``'s ``epsilon_from_gdp`` is not used:
    it takes ``|mu|`` over thresholds with *upper* bounds on both rates, which
    on pure noise reported ``epsilon ~ 4``.)
  * ``"clopper_pearson"`` (Jagielski et al. 2020): Clopper-Pearson bounds
    on the rates of every threshold (Bonferroni-corrected) and
    ``epsilon >= log((TPR_lo - delta) / FPR_hi)``, by
    ``jax_privacy.auditing.CanaryScoreAuditor``: valid for any
    ``(epsilon, delta)`` claim, but it needs very low FPRs and so many more
    runs.

  Args:
    scores: ``[R]`` one score per run.
    included: ``bool[R]``.
    delta: in ``(0, 1)``.
    confidence: in ``(0.5, 1)``.
    method: ``"gdp"`` or ``"clopper_pearson"``.
    fpr: false-positive rate of the reported TPR.

  Returns:
    :class:`AuditResult`.

  Example:

  >>> import numpy as np
  >>> inc = np.arange(400) % 2 == 0
  >>> r = multi_run_audit(inc * 10.0, inc, delta=1e-5)
  >>> 2 < r.epsilon < 20
  True
  """
  _validation.check_choice('method', method, MULTI_RUN_METHODS)
  conf = _check_open_unit('confidence', confidence)
  if conf <= 0.5:
    raise ValueError(f'confidence must be in (0.5, 1) for multi-run audits; got {conf!r}.')
  d = _check_delta(delta)
  _validation.check_probability('fpr', fpr)
  ins, outs = _split_scores(scores, included)
  auditor = _jax_privacy_auditing().CanaryScoreAuditor(ins, outs)
  if method == 'clopper_pearson':
    eps = float(auditor.epsilon_clopper_pearson(1 - conf, d))
  else:
    eps = gdp_epsilon(_gdp_mu_lower_bound(ins, outs, 1 - conf), d)
  auroc, tpr = _summary(auditor, fpr)
  return AuditResult(eps, conf, d, method, ins.size + outs.size, ins.size, auroc, tpr,
                     float(fpr))


def multi_run_scores(run_fn: Callable[[jax.Array, jax.Array], jax.Array], key: jax.Array,
                     num_runs: int, *, probability: float = 0.5,
                     vectorize: bool = True) -> tuple[np.ndarray, np.ndarray]:
  """Runs ``run_fn(key_r, included_r) -> score_r`` for ``R`` independent runs.

  Each run draws its own canary decision ``b_r ~ Bernoulli(p)``; with
  ``vectorize`` the runs are one ``jit(vmap(run_fn))`` (small models: many
  trainings in one compiled program), else a Python loop.

  Returns:
    ``(scores float64[R], included bool[R])`` for :func:`multi_run_audit`.

  Example:

  >>> import jax
  >>> s, b = multi_run_scores(lambda k, b: b * 1.0 + jax.random.normal(k), jax.random.key(0), 8)
  >>> s.shape, b.dtype
  ((8,), dtype('bool'))
  """
  if not callable(run_fn):
    raise TypeError(f'run_fn must be callable (key, included) -> score; got {run_fn!r}.')
  key = _keys.check_key(key)
  r = _check_num_canaries(num_runs, 'num_runs')
  k_inc, k_run = jax.random.split(key)
  included = draw_inclusion(k_inc, r, probability)
  keys = jax.random.split(k_run, r)
  if vectorize:
    scores = jax.jit(jax.vmap(run_fn))(keys, included)
  else:
    scores = jnp.stack([jnp.asarray(run_fn(k, b)) for k, b in zip(keys, included)])
  scores = np.asarray(scores, np.float64)
  if scores.shape != (r,):
    raise ValueError(f'run_fn must return one scalar score per run; got shape {scores.shape[1:]}.')
  return scores, np.asarray(included)


# ----------------------------------------------------------------------------
# A defence alone, white box.


def _resolve_defence(defence: Any, per_example: bool | None
                     ) -> tuple[optax.GradientTransformation, bool]:
  transform = defence
  if hasattr(defence, 'transform') and hasattr(defence, 'per_example'):
    transform = defence.transform
    per_example = defence.per_example if per_example is None else per_example
  if not isinstance(transform, optax.GradientTransformation):
    raise TypeError('defence must be an optax.GradientTransformation or an '
                    f'ssgd_optax.attacks.Defence; got {type(defence).__name__}.')
  if per_example is None:
    raise ValueError('per_example is required for a bare GradientTransformation: does the '
                     'defence consume per-example gradients (True: DP-SGD, DP-SSGD) or the '
                     'batch gradient sum (False)? Pass it, or pass an attacks.Defence.')
  if not isinstance(per_example, bool):
    raise TypeError(f'per_example must be a bool; got {per_example!r}.')
  return transform, per_example


def _check_claim(claim: Any) -> Any:
  if claim is None:
    return None
  if not isinstance(claim, privacy.Mechanism):
    raise TypeError('claim must be a mechanism object of ssgd_optax.privacy (DPSGDMechanism, '
                    'DPSSGDMechanism, BackpropClipMechanism, or any privacy.Mechanism); got '
                    f'{type(claim).__name__}.')
  if claim.noise_multiplier is None:
    raise ValueError('claim.noise_multiplier is None: the claim states no noise yet '
                     '(calibrate it and set it with claim._replace(noise_multiplier=z)).')
  return claim


def _resolve_canary_norm(canary_norm: Any, claim: Any, per_example: bool) -> Any:
  if canary_norm is not None:
    return canary_norm
  if claim is not None:
    if per_example:
      # Far above the claimed bound: a defence that enforces the bound clips or
      # normalises it down to it; one that enforces a looser bound (up to 100x) lets
      # the excess through.
      return jax.tree.map(lambda v: PER_EXAMPLE_CANARY_SCALE * float(v), claim.sensitivity)
    return claim.sensitivity
  raise ValueError('canary_norm is required (or claim=): the norm at which the attacker '
                   "inserts a canary gradient (the defence's claimed sensitivity: DP-SGD's clip "
                   'norm, 1 for DP-SSGD, privacy.sensitivities(model) for backprop clipping; '
                   'any norm for a heuristic defence).')


def _check_run(steps: Any, sampling_rate: Any) -> float:
  if steps is None:
    raise ValueError('steps is required: the number of released updates of the audited run.')
  _validation.check_int('steps', steps, minimum=1)
  _check_sampling_rate(sampling_rate)
  return float(sampling_rate)


def _claimed_epsilon(claim: Any, q: float, steps: int, delta: float) -> float | None:
  if claim is None:
    return None
  return float(privacy.compute_epsilon(claim, sampling_rate=q, steps=steps, delta=delta))


def _run_defence(params: Any, canaries: GradientCanaries, included: jax.Array, state: Any,
                 key: jax.Array, *, transform: optax.GradientTransformation,
                 per_example: bool, q: float, steps: int, data_fn: Any,
                 max_rows: int) -> jax.Array:
  """``sum_t canary_scores(u_t)`` of one run of ``T`` steps (a ``lax.scan``; pure)."""
  extra = isinstance(transform, optax.GradientTransformationExtraArgs)
  m = canaries.num_canaries

  def step(carry, t):
    state, scores, k = carry
    k, k_s, k_d = jax.random.split(k, 3)
    present = sample_canaries(k_s, included, q)
    if data_fn is None:
      rows = jax.tree.map(lambda c: jnp.zeros((0,) + c.shape[1:], c.dtype), canaries.directions)
      mask = jnp.zeros((0,), bool)
    else:
      rows, mask = data_fn(t, k_d)
    rows, mask = insert_canaries(rows, mask, canaries, present, max_rows)
    rows = jax.tree.map(
        lambda r: jnp.where(mask.reshape((-1,) + (1,) * (r.ndim - 1)), r, 0), rows)
    if per_example:
      if extra:
        update, state = transform.update(rows, state, params, mask=mask)
      else:
        update, state = transform.update(rows, state, params)
    else:
      update, state = transform.update(jax.tree.map(lambda r: jnp.sum(r, 0), rows), state,
                                       params)
    return (state, scores + canary_scores(update, canaries), k), None

  (_, scores, _), _ = jax.lax.scan(step, (state, jnp.zeros((m,), jnp.float32), key),
                                   jnp.arange(steps))
  return scores


# Compiled once per (defence object, shapes, run facts): repeated audits of one defence
# (seeds, run counts) reuse the program.
_STATIC = ('transform', 'per_example', 'q', 'steps', 'data_fn', 'max_rows')
_run_defence_jit = jax.jit(_run_defence, static_argnames=_STATIC)


@functools.partial(jax.jit, static_argnames=_STATIC + ('chunk',))
def _run_defence_many(params: Any, canary: GradientCanaries, included: jax.Array, state0: Any,
                      keys: jax.Array, *, chunk: int, **static: Any) -> jax.Array:
  """One :func:`_run_defence` per run (its own inclusion bit, key and re-keyed state)."""

  def one(args):
    index, key, inc = args
    return _run_defence(params, canary, inc[None], _rekey(state0, index), key, **static)[0]

  return jax.lax.map(one, (jnp.arange(keys.shape[0]), keys, included), batch_size=chunk)


def _rekey(state: Any, run: jax.Array) -> Any:
  """Every typed PRNG key in ``state`` folded with ``run``: independent runs."""

  def fold(x):
    if isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
      if x.ndim == 0:
        return jax.random.fold_in(x, run)
      return jax.vmap(lambda k: jax.random.fold_in(k, run))(x.reshape(-1)).reshape(x.shape)
    return x

  return jax.tree.map(fold, state)


def defence_scores(defence: Any, params: Any, *, key: jax.Array, num_canaries: int,
                   steps: int | None, sampling_rate: float | None,
                   canary_norm: Any = None, per_example: bool | None = None,
                   kind: str = 'dirac', claim: Any = None,
                   data_fn: Callable[[jax.Array, jax.Array], tuple[Any, Any]] | None = None,
                   max_rows: int | None = None) -> tuple[np.ndarray, np.ndarray]:
  r"""White-box canary scores of one run of a defence alone, ``T`` steps, ``m`` canaries.

  ``m`` gradient canaries, each included with probability 1/2; at every step
  each included canary joins the batch with probability ``q``; the defence
  releases ``u_t``; ``S_j = sum_t`` :func:`canary_scores` ``(u_t)``. One
  ``jit``-compiled ``lax.scan``. :func:`audit_defence` turns the scores
  into a one-run bound; :func:`defence_scores_multi_run` is the stronger
  many-run form.

  Threat-model facts the audit cannot guess (each a ``ValueError`` naming it
  when missing): ``per_example`` (does the defence take per-example rows,
  or the batch-gradient sum?), ``canary_norm`` (the norm at which the
  attacker inserts canaries; taken from ``claim`` when given),
  ``sampling_rate`` and ``steps`` (of the audited run).

  Args:
    defence: the transform under audit: an ``optax.GradientTransformation``
      (then pass ``per_example``) or an :class:`ssgd_optax.attacks.Defence`.
      A per-example defence receives ``[B + K]`` rows and ``mask=`` (if it
      takes extra arguments; masked rows are zeros either way); a batch-level
      defence receives the masked sum of the rows.
    params: the parameter tree (the canaries' shape).
    key: a PRNG key (canaries, inclusion, sampling; the defence's own
      randomness is its own).
    num_canaries: ``m >= 2``.
    steps: ``T >= 1``.
    sampling_rate: ``q`` in ``(0, 1]``.
    canary_norm: scalar or per-leaf tree, see :func:`gradient_canaries`.
      Default with ``claim``: its sensitivity for a batch-level defence,
      ``PER_EXAMPLE_CANARY_SCALE`` (100) times it for a per-example one (a
      correct defence clips or normalises the canary down to the bound; one
      that enforces a looser bound lets the excess through).
    per_example: see above; taken from a ``Defence`` when not given.
    kind: ``"dirac"`` or ``"random"``.
    claim: a Gaussian mechanism object of :mod:`ssgd_optax.privacy`
      (``DPSGDMechanism``, ``DPSSGDMechanism``, ``BackpropClipMechanism``):
      what the defence claims; supplies the canary norm.
    data_fn: optional ``(step, key) -> (rows, mask)``: real per-example
      gradients mixed into every step (``None``: canaries alone, the
      strongest and cheapest white-box audit).
    max_rows: padded canary rows per step (default: all ``m`` when ``q = 1``,
      else :func:`ssgd_optax.privacy.max_batch_size_for`).

  Returns:
    ``(scores float32[m], included bool[m])``.

  Example:

  >>> import jax, jax.numpy as jnp
  >>> tx = optax.scale(1.0)  # no defence at all
  >>> s, b = defence_scores(tx, jnp.zeros(8), key=jax.random.key(0), num_canaries=8,
  ...                       steps=1, sampling_rate=1.0, canary_norm=1.0, per_example=False)
  >>> bool((s == b).all())
  True
  """
  key = _keys.check_key(key)
  transform, per_example = _resolve_defence(defence, per_example)
  claim = _check_claim(claim)
  canary_norm = _resolve_canary_norm(canary_norm, claim, per_example)
  q = _check_run(steps, sampling_rate)
  m = _check_num_canaries(num_canaries)
  if max_rows is None:
    if q == 1.0:
      max_rows = m
    else:
      from ssgd_optax import privacy  # pylint: disable=g-import-not-at-top
      max_rows = privacy.max_batch_size_for(m, q, steps=steps)
  _validation.check_int('max_rows', max_rows, minimum=1)

  k_can, k_inc, k_run = jax.random.split(key, 3)
  canaries = gradient_canaries(k_can, params, m, kind=kind, norm=canary_norm)
  included = draw_inclusion(k_inc, m)
  scores = _run_defence_jit(params, canaries, included, transform.init(params), k_run,
                            transform=transform, per_example=per_example, q=q, steps=steps,
                            data_fn=data_fn, max_rows=max_rows)
  return np.asarray(scores), np.asarray(included)


def defence_scores_multi_run(defence: Any, params: Any, *, key: jax.Array, num_runs: int,
                             steps: int | None, sampling_rate: float | None,
                             canary_norm: Any = None, per_example: bool | None = None,
                             kind: str = 'dirac', claim: Any = None,
                             data_fn: Callable[[jax.Array, jax.Array], tuple[Any, Any]] | None
                             = None) -> tuple[np.ndarray, np.ndarray]:
  r"""White-box scores of ``R`` independent runs of a defence alone, with or without a canary.

  One canary ``c`` (a Dirac or random gradient at ``canary_norm``, drawn
  once) and ``R`` runs: run ``r`` includes it with probability 1/2 and runs
  the defence for ``T`` steps (the canary in each step's batch with
  probability ``q``); its score is ``sum_t <u_t, c> / s^2``, the Gaussian
  log-likelihood ratio for ``q = 1``. This is the multi-run white-box audit
  of Nasr et al. (USENIX Security 2023) with a worst-case gradient canary:
  one fixed neighbouring pair, tested directly; no model is trained, so
  thousands of runs cost seconds (``jit`` of ``lax.map`` over ``vmap``-ed
  chunks of runs). :func:`audit_defence_multi_run` turns the scores into a
  bound.

  **Independent runs.** Every typed PRNG key in the defence's state (every
  ``ssgd_optax`` transform keeps its noise key there) is folded with the run
  index, so each run draws fresh noise, as a fresh key per training run
  would. A defence whose randomness does not come from typed keys in its
  state draws the same noise in every run and audits as broken.

  Args: as :func:`defence_scores`, with ``num_runs`` (``R >= 2``) instead of
  ``num_canaries``; ``data_fn`` is called inside every run.

  Returns:
    ``(scores float64[R], included bool[R])`` for :func:`multi_run_audit`.

  Example:

  >>> import jax, jax.numpy as jnp
  >>> from ssgd_optax import privacy
  >>> tx = privacy.add_gaussian_noise(1.0, 1.0, 1.0, key=jax.random.key(1))
  >>> s, b = defence_scores_multi_run(tx, jnp.zeros(4), key=jax.random.key(0), num_runs=2000,
  ...                                 steps=1, sampling_rate=1.0, canary_norm=1.0,
  ...                                 per_example=False)
  >>> round(float(s[b].mean() - s[~b].mean()), 1), round(float(s[~b].std()), 1)
  (1.0, 1.0)
  """
  key = _keys.check_key(key)
  transform, per_example = _resolve_defence(defence, per_example)
  claim = _check_claim(claim)
  canary_norm = _resolve_canary_norm(canary_norm, claim, per_example)
  q = _check_run(steps, sampling_rate)
  r = _check_num_canaries(num_runs, 'num_runs')
  _validation.check_choice('kind', kind, CANARY_KINDS)
  norms, scalar = _per_leaf_norms(params, canary_norm)
  size = sum(int(np.prod(np.shape(x), dtype=np.int64)) for x in jax.tree.leaves(params))
  k_can, k_inc, k_run = jax.random.split(key, 3)
  included = draw_inclusion(k_inc, r)
  state0 = transform.init(params)

  canary = _draw_canaries(k_can, params, 1, kind, norms, scalar)
  # Runs are vmapped in chunks that keep about 2^20 parameters' worth of each array live.
  chunk = int(max(1, min(r, (1 << 20) // max(size, 1))))
  scores = _run_defence_many(params, canary, included, state0, jax.random.split(k_run, r),
                             chunk=chunk, transform=transform, per_example=per_example, q=q,
                             steps=steps, data_fn=data_fn, max_rows=1)
  return np.asarray(scores, np.float64), np.asarray(included)


def audit_defence(defence: Any, params: Any, *, key: jax.Array, num_canaries: int,
                  steps: int | None, sampling_rate: float | None, delta: float,
                  claim: Any = None, canary_norm: Any = None, per_example: bool | None = None,
                  kind: str = 'dirac', confidence: float = 0.95, method: str = 'one_run',
                  data_fn: Callable[[jax.Array, jax.Array], tuple[Any, Any]] | None = None,
                  max_rows: int | None = None) -> AuditResult:
  r"""One-run white-box audit of a defence (the attacker sees every update).

  :func:`defence_scores` then :func:`one_run_audit`; the arguments are
  theirs. The bound is on the defence over ``steps`` steps at
  ``sampling_rate``; with ``claim`` the result carries the claim's epsilon
  for that run (``claimed_epsilon``, ``exceeds_claim``). One run certifies
  little (1,000 canaries: at most 4.75 at 95 %), so its power against a
  small bug is low: a 2x under-stated sensitivity at a claimed epsilon of 1
  was caught in half of the seeds by the f-DP bound with 5,000 canaries and
  in none by Steinke et al.'s (``benchmarks/README.md``, section 9); for
  that, :func:`audit_defence_multi_run`.

  Returns:
    :class:`AuditResult`.

  Example:

  >>> import jax, jax.numpy as jnp
  >>> from ssgd_optax import privacy
  >>> tx = privacy.dp_unit_normalize(8.0, expected_batch_size=1, key=jax.random.key(1))
  >>> r = audit_defence(tx, jnp.zeros(500), key=jax.random.key(0), num_canaries=500,
  ...                   steps=2, sampling_rate=1.0, delta=1e-5, canary_norm=1.0,
  ...                   per_example=True)
  >>> r.epsilon < 1.0
  True
  """
  _validation.check_choice('method', method, ONE_RUN_METHODS)
  _check_open_unit('confidence', confidence)
  d = _check_delta(delta)
  claim = _check_claim(claim)
  scores, included = defence_scores(
      defence, params, key=key, num_canaries=num_canaries, steps=steps,
      sampling_rate=sampling_rate, canary_norm=canary_norm, per_example=per_example, kind=kind,
      claim=claim, data_fn=data_fn, max_rows=max_rows)
  r = one_run_audit(scores, included, delta=delta, confidence=confidence, method=method)
  return r._replace(claimed_epsilon=_claimed_epsilon(claim, float(sampling_rate), steps, d))


def audit_defence_multi_run(defence: Any, params: Any, *, key: jax.Array, num_runs: int,
                            steps: int | None, sampling_rate: float | None, delta: float,
                            claim: Any = None, canary_norm: Any = None,
                            per_example: bool | None = None, kind: str = 'dirac',
                            confidence: float = 0.95, method: str = 'gdp',
                            data_fn: Callable[[jax.Array, jax.Array], tuple[Any, Any]] | None
                            = None) -> AuditResult:
  r"""Many-run white-box audit of a defence alone: the tight one for Gaussian noise.

  :func:`defence_scores_multi_run` then :func:`multi_run_audit` (``"gdp"``
  by default). Audit at ``sampling_rate=1`` (full batch) to test the
  implementation of the noise and the sensitivity: there the claim's
  trade-off curve is exactly Gaussian, the ``"gdp"`` bound is valid, and
  the score is the likelihood ratio. With 2,000 runs it caught a 2x
  under-stated sensitivity (or a noise halved) at a claimed epsilon of 1
  (``delta = 1e-5``) in 97-99 % of seeds, with 4,000 in all, and flagged
  the correct defence in at most 1 of 100 (``benchmarks/README.md``,
  section 9). With ``q < 1`` use ``method="clopper_pearson"`` (valid for any
  claim, much less powerful).

  Returns:
    :class:`AuditResult` (``num_canaries`` is the number of runs).

  Example:

  >>> import jax, jax.numpy as jnp
  >>> from ssgd_optax import privacy
  >>> z = privacy.calibrate_noise_multiplier(1.0, sampling_rate=1.0, steps=1, delta=1e-5)
  >>> claim = privacy.dpsgd_mechanism(1.0, z)
  >>> half = privacy.add_gaussian_noise(z / 2, 1.0, 1.0, key=jax.random.key(1))  # the bug
  >>> r = audit_defence_multi_run(half, jnp.zeros(4), key=jax.random.key(0), num_runs=4000,
  ...                             steps=1, sampling_rate=1.0, delta=1e-5, claim=claim,
  ...                             per_example=False)
  >>> round(r.claimed_epsilon, 2), r.exceeds_claim
  (1.0, True)
  """
  _validation.check_choice('method', method, MULTI_RUN_METHODS)
  conf = _check_open_unit('confidence', confidence)
  if conf <= 0.5:
    raise ValueError(f'confidence must be in (0.5, 1) for multi-run audits; got {conf!r}.')
  d = _check_delta(delta)
  claim = _check_claim(claim)
  scores, included = defence_scores_multi_run(
      defence, params, key=key, num_runs=num_runs, steps=steps, sampling_rate=sampling_rate,
      canary_norm=canary_norm, per_example=per_example, kind=kind, claim=claim, data_fn=data_fn)
  r = multi_run_audit(scores, included, delta=delta, confidence=confidence, method=method)
  return r._replace(claimed_epsilon=_claimed_epsilon(claim, float(sampling_rate), steps, d))
