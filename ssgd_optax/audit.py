# Copyright 2026 The ssgd_optax Authors. Licensed under the Apache License 2.0.
r"""Empirical privacy auditing: canaries in, a lower bound on epsilon out.

An accountant gives an *upper* bound on epsilon that holds only if the code
does what the analysis assumes. An audit gives a *lower* bound measured on the
code itself: insert ``m`` canaries, each independently with probability 1/2,
train once, score every canary, and test how well the scores tell the
included canaries from the others. If the audited lower bound exceeds the
accounted epsilon, the implementation is broken. The statistics come from
``jax_privacy.auditing.CanaryScoreAuditor`` (extra ``audit``); this module
supplies the canaries, the scoring (jit/vmap-compiled) and the checks.
Threat models and how to read the numbers: ``docs/auditing.md``.

**White box** (the attacker of :mod:`ssgd_optax.attacks`: it sees every
shared update ``u_t``). Gradient canaries ``c_j`` are inserted as extra
per-example gradients, each present at step ``t`` with the Poisson rate ``q``
of the real data if it is included (:func:`sample_canaries`, then
:func:`insert_canaries` for per-example mechanisms or :func:`canary_sum` for
batch-level ones). The score of canary ``j`` is the log-likelihood-ratio
statistic of a Gaussian mechanism with per-leaf sensitivity ``s_l``:

.. math::

  S_j = \sum_t \sum_l \langle u_{t,l}, c_{j,l} \rangle / s_l^2

(:func:`canary_scores` per step; ``s`` is the canary's norm, a scalar or one
per leaf; with a ``baseline`` of past updates subtracted in real training, see
:func:`canary_scores`).

**Black box** (the attacker sees only the final model): input canaries
(:func:`mislabeled_canaries`, :func:`ood_canaries`) join the training set
(:func:`with_canaries`); the score is minus the canary's loss on the final
model (:func:`loss_scores`).

**Statistics.** :func:`one_run_audit`: Steinke, Nasr & Jagielski (NeurIPS
2023; ``method="one_run"``, valid for any ``(epsilon, delta)`` claim) or its
f-DP refinement (Mahloujifar et al. 2024, ``"one_run_fdp"``: tighter, and
valid for claims whose trade-off curve is Gaussian, e.g. full-batch Gaussian
noise; for subsampled mechanisms it is an approximation). :func:`multi_run_audit`:
many runs, one canary decision each, Clopper-Pearson (or GDP) intervals
(:func:`multi_run_scores` runs them, vmapped). :func:`mechanism_scores` and
:func:`audit_mechanism` audit a gradient mechanism alone.
Every bound holds with probability ``confidence`` over the inclusion draws.

Checks: canary counts (``>= 2``, ``<=`` the coordinates for Dirac canaries),
inclusion probabilities in ``(0, 1)``, confidence in ``(0, 1)``, scores of the
wrong shape, and an audit of a mechanism without its threat-model facts
(``per_example``, ``canary_norm``, ``sampling_rate``, ``steps``) raise errors
that name the argument. Nothing here modifies its inputs: canary sets are new
arrays, and training sets with canaries are copies.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ssgd_optax import _keys
from ssgd_optax import _validation

__all__ = [
    'CANARY_KINDS',
    'ONE_RUN_METHODS',
    'MULTI_RUN_METHODS',
    'AuditResult',
    'GradientCanaries',
    'InputCanaries',
    'draw_inclusion',
    'gradient_canaries',
    'sample_canaries',
    'insert_canaries',
    'canary_sum',
    'canary_scores',
    'mislabeled_canaries',
    'ood_canaries',
    'with_canaries',
    'loss_scores',
    'one_run_audit',
    'multi_run_audit',
    'multi_run_scores',
    'mechanism_scores',
    'audit_mechanism',
]

CANARY_KINDS = ('dirac', 'random')
ONE_RUN_METHODS = ('one_run', 'one_run_fdp')
MULTI_RUN_METHODS = ('clopper_pearson', 'gdp')


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
  leaves, treedef = jax.tree.flatten(params)
  shapes = [tuple(np.shape(x)) for x in leaves]
  sizes = [int(np.prod(s, dtype=np.int64)) for s in shapes]
  total = sum(sizes)
  k_dir, k_sign = jax.random.split(key)
  if kind == 'dirac':
    if m > total:
      raise ValueError(f'num_canaries must be <= the number of parameters ({total}) for '
                       f"kind='dirac' (distinct coordinates); got {m}.")
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

  For mechanisms that consume per-example gradients (DP-SGD, DP-SSGD): the
  ``present`` canaries (:func:`sample_canaries`) become up to ``max_rows``
  extra rows, padded and masked like :func:`ssgd_optax.privacy.poisson_sample`
  batches; the mechanism clips or normalises them like any example.

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

  For mechanisms that see only the batch gradient (SSGD, selective sharing,
  backprop clipping, whose per-example bound lives inside the model): add
  this to the batch's gradient sum before the mechanism. One contraction per
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

  Sum over the steps for the audit (the canary's Gaussian log-likelihood
  ratio up to a constant). ``O(m P)``: one matrix-vector product per leaf.

  In real training the data's gradient is persistent across steps and its
  projection on a canary, summed over ``T`` steps, grows like ``T`` while a
  canary's own signal grows like ``qT``: pass as ``baseline`` a running mean
  of the *previous* updates (``b_t = beta b_{t-1} + (1 - beta) u_{t-1}``) to
  remove it. Any score computed from the released updates keeps the audit
  valid; the baseline only makes it stronger.

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


def multi_run_audit(scores: Any, included: Any, *, delta: float, confidence: float = 0.95,
                    method: str = 'clopper_pearson', fpr: float = 0.01) -> AuditResult:
  r"""Epsilon lower bound from many runs (one canary decision per run).

  With scores of independent runs, the false-positive and false-negative
  rates of every threshold get Clopper-Pearson intervals, and
  ``epsilon >= log((TPR_lo - delta) / FPR_hi)`` (Jagielski et al. 2020;
  ``"clopper_pearson"``), or a Gaussian-DP ``mu`` from the same intervals
  (``"gdp"``, Nasr et al. 2023). Needs ``confidence > 0.5``.

  Args:
    scores: ``[R]`` one score per run (or per run and canary).
    included: ``bool[R]``.
    delta: in ``(0, 1)``.
    confidence: in ``(0.5, 1)``.
    method: ``"clopper_pearson"`` or ``"gdp"``.
    fpr: false-positive rate of the reported TPR.

  Returns:
    :class:`AuditResult`.

  Example:

  >>> import numpy as np
  >>> inc = np.arange(400) % 2 == 0
  >>> r = multi_run_audit(inc * 10.0, inc, delta=1e-5)
  >>> 2 < r.epsilon < 10
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
    eps = float(auditor.epsilon_from_gdp(1 - conf, d))
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
# A mechanism alone, white box.


def mechanism_scores(mechanism: Any, params: Any, *, key: jax.Array, num_canaries: int,
                     steps: int | None, sampling_rate: float | None,
                     canary_norm: Any = None, per_example: bool | None = None,
                     kind: str = 'dirac',
                     data_fn: Callable[[jax.Array, jax.Array], tuple[Any, Any]] | None = None,
                     max_rows: int | None = None) -> tuple[np.ndarray, np.ndarray]:
  r"""White-box canary scores of a gradient mechanism run alone for ``T`` steps.

  ``m`` gradient canaries, each included with probability 1/2; at every step
  each included canary joins the batch with probability ``q``; the mechanism
  releases ``u_t``; ``S_j = sum_t`` :func:`canary_scores` ``(u_t)``. One
  ``jit``-compiled ``lax.scan``. :func:`audit_mechanism` turns the scores
  into a bound.

  Threat-model facts the audit cannot guess (each a ``ValueError`` naming it
  when missing): ``per_example`` (does the mechanism take per-example rows,
  or the batch-gradient sum?), ``canary_norm`` (the norm at which the
  attacker inserts canaries: the claimed sensitivity for a DP mechanism),
  ``sampling_rate`` and ``steps`` (of the accounted run).

  Args:
    mechanism: an ``optax.GradientTransformation`` (then pass
      ``per_example``) or an :class:`ssgd_optax.attacks.Defence`. A
      per-example mechanism receives ``[B + K]`` rows and ``mask=`` (if it
      takes extra arguments; masked rows are zeros either way); a batch
      mechanism receives the masked sum of the rows.
    params: the parameter tree (the canaries' shape).
    key: a PRNG key (canaries, inclusion, sampling; the mechanism's own
      randomness is its own).
    num_canaries: ``m >= 2``.
    steps: ``T >= 1``.
    sampling_rate: ``q`` in ``(0, 1]``.
    canary_norm: scalar or per-leaf tree, see :func:`gradient_canaries`.
    per_example: see above; taken from a ``Defence`` when not given.
    kind: ``"dirac"`` or ``"random"``.
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
  >>> s, b = mechanism_scores(tx, jnp.zeros(8), key=jax.random.key(0), num_canaries=8,
  ...                         steps=1, sampling_rate=1.0, canary_norm=1.0, per_example=False)
  >>> bool((s == b).all())
  True
  """
  key = _keys.check_key(key)
  transform = mechanism
  if hasattr(mechanism, 'transform') and hasattr(mechanism, 'per_example'):
    transform = mechanism.transform
    per_example = mechanism.per_example if per_example is None else per_example
  if not isinstance(transform, optax.GradientTransformation):
    raise TypeError('mechanism must be an optax.GradientTransformation or an '
                    f'ssgd_optax.attacks.Defence; got {type(mechanism).__name__}.')
  if per_example is None:
    raise ValueError('per_example is required for a bare GradientTransformation: does the '
                     'mechanism consume per-example gradients (True: DP-SGD, DP-SSGD) or the '
                     'batch gradient sum (False)? Pass it, or pass an attacks.Defence.')
  if not isinstance(per_example, bool):
    raise TypeError(f'per_example must be a bool; got {per_example!r}.')
  if canary_norm is None:
    raise ValueError('canary_norm is required: the norm at which the attacker inserts a '
                     "canary gradient (the mechanism's claimed sensitivity: DP-SGD's clip "
                     'norm, 1 for DP-SSGD, privacy.sensitivities(model) for backprop '
                     'clipping; any norm for a heuristic defence).')
  if steps is None:
    raise ValueError('steps is required: the number of released updates of the audited run.')
  _validation.check_int('steps', steps, minimum=1)
  _check_sampling_rate(sampling_rate)
  m = _check_num_canaries(num_canaries)
  q = float(sampling_rate)
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
  extra = isinstance(transform, optax.GradientTransformationExtraArgs)

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

  @jax.jit
  def run(state, k):
    (_, scores, _), _ = jax.lax.scan(step, (state, jnp.zeros((m,), jnp.float32), k),
                                     jnp.arange(steps))
    return scores

  scores = run(transform.init(params), k_run)
  return np.asarray(scores), np.asarray(included)


def audit_mechanism(mechanism: Any, params: Any, *, key: jax.Array, num_canaries: int,
                    steps: int | None, sampling_rate: float | None, delta: float,
                    canary_norm: Any = None, per_example: bool | None = None,
                    kind: str = 'dirac', confidence: float = 0.95, method: str = 'one_run',
                    data_fn: Callable[[jax.Array, jax.Array], tuple[Any, Any]] | None = None,
                    max_rows: int | None = None) -> AuditResult:
  r"""One-run white-box audit of a gradient mechanism (the attacker sees every update).

  :func:`mechanism_scores` then :func:`one_run_audit`; the arguments are
  theirs. The bound is on the mechanism over ``steps`` steps at
  ``sampling_rate``: compare it with the accountant's epsilon for that run.

  Returns:
    :class:`AuditResult`.

  Example:

  >>> import jax, jax.numpy as jnp
  >>> from ssgd_optax import privacy
  >>> tx = privacy.dp_unit_normalize(8.0, expected_batch_size=1, key=jax.random.key(1))
  >>> r = audit_mechanism(tx, jnp.zeros(500), key=jax.random.key(0), num_canaries=500,
  ...                     steps=2, sampling_rate=1.0, delta=1e-5, canary_norm=1.0,
  ...                     per_example=True)
  >>> r.epsilon < 1.0
  True
  """
  _validation.check_choice('method', method, ONE_RUN_METHODS)
  _check_open_unit('confidence', confidence)
  _check_delta(delta)
  scores, included = mechanism_scores(
      mechanism, params, key=key, num_canaries=num_canaries, steps=steps,
      sampling_rate=sampling_rate, canary_norm=canary_norm, per_example=per_example, kind=kind,
      data_fn=data_fn, max_rows=max_rows)
  return one_run_audit(scores, included, delta=delta, confidence=confidence, method=method)
