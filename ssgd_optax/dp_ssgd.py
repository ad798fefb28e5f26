# Copyright 2026 The ssgd_optax Authors. Licensed under the Apache License 2.0.
r"""DP-SSGD: per-example unit normalisation plus Gaussian noise (provable SSGD).

Unit-normalising the *batch* gradient (:func:`ssgd_optax.ssgd`) hides one
number and guarantees nothing. Unit-normalising every *example's* gradient
bounds each example's contribution to exactly norm 1, the sensitivity that the
Gaussian mechanism needs; adding noise to the sum makes SSGD differentially
private (normalised DP-SGD, NSGD; the AUTO-S rule of Bu et al., "Automatic
Clipping", arXiv 2206.07136, with a stability constant ``gamma``):

.. math::

  \tilde g = \frac{1}{\bar B}\Big(\sum_{i \in \text{batch}} N_\gamma(g_i)
     + \sigma \Delta\, \xi\Big), \quad \xi \sim \mathcal N(0, I),
  \qquad N_\gamma(g)_k = \frac{g_k}{\lVert g_k \rVert + \gamma}

over the groups ``k`` of the scope (:mod:`ssgd_optax.grouping`), with
``Bbar`` the *expected* batch size of Poisson sampling and sensitivity

* ``scope="global"``: one group, ``Delta = 1``;
* ``"per_layer"``/``"per_leaf"``/callable with ``G`` groups: each group has
  norm 1, so ``Delta = sqrt(G)``.

Since the noise std is ``sigma * Delta``, the accountant sees a subsampled
Gaussian with noise multiplier ``sigma`` whatever the scope: a finer scope
costs utility (more noise per unit of signal), not privacy.
:class:`DpSsgdMechanism` holds ``sigma`` and ``G``; both the transformation
(for the noise std) and the accountant (:meth:`DpSsgdMechanism.epsilon`)
read it, so they cannot disagree.

Public pieces:

* :func:`normalize_per_example`: ``N_gamma`` on every row of a batched tree.
* :func:`noisy_normalized_mean`: one batch's per-example gradients to the
  shared noisy update (a pure function; what an attacker observes).
* :func:`dp_unit_normalize`: the same as an optax transformation whose state
  holds the PRNG key.
* :func:`dp_ssgd`: ``dp_unit_normalize`` + optional momentum + learning rate.
* :func:`dp_ssgd_mechanism`, :func:`calibrate_noise_multiplier`: accounting
  through :mod:`ssgd_optax.privacy` (``dp_accounting``).

Edge cases per example and group (``n`` is the group's norm):

=====================  ==================================================
per-example group      contribution
=====================  ==================================================
``n > 0``, finite      ``g / (n + gamma)``: norm 1 (``gamma = 0``) or < 1
all zeros              exact zeros (never NaN)
masked (padded) row    exact zeros, whatever its values (NaN included)
huge or tiny entries   as ``unit_normalize``: norm 1, no overflow
NaN or Inf             NaN update (``nonfinite="propagate"``, default), or
                       the whole example contributes zero
                       (``nonfinite="drop"``, which keeps the guarantee)
=====================  ==================================================

Under several devices the noise is added once in total, see
:func:`dp_unit_normalize`.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from ssgd_optax import _validation
from ssgd_optax import grouping as grouping_lib
from ssgd_optax import normalize as normalize_lib
from ssgd_optax import per_example as per_example_lib

__all__ = [
    'DpSsgdMechanism',
    'DpUnitNormalizeState',
    'dp_ssgd_mechanism',
    'calibrate_noise_multiplier',
    'normalize_per_example',
    'noisy_normalized_mean',
    'dp_unit_normalize',
    'dp_ssgd',
]

NONFINITE = ('propagate', 'drop')


class DpSsgdMechanism(NamedTuple):
  r"""The Gaussian mechanism of one DP-SSGD step.

  Attributes:
    noise_multiplier: ``sigma``, the noise std in units of the sensitivity
      (a float, or a traced scalar under ``optax.inject_hyperparams``).
    num_groups: ``G``, the number of normalisation groups per example.

  The sensitivity (L2, add/remove one example) is ``sqrt(G)``, the noise std
  on the summed update ``sigma * sqrt(G)``; the accountant uses
  ``stddev / sensitivity = sigma``.
  """

  noise_multiplier: Any
  num_groups: int

  @property
  def sensitivity(self) -> float:
    """``sqrt(G)``: every group of every example has norm at most 1."""
    return math.sqrt(self.num_groups)

  @property
  def stddev(self) -> Any:
    """``sigma * sqrt(G)``: the std of the noise added to the sum."""
    return self.noise_multiplier * self.sensitivity

  def epsilon(self, *, sampling_rate: float, steps: int, delta: float,
              accountant: str = 'pld') -> float:
    """Epsilon after ``steps`` Poisson-sampled steps at ``sampling_rate``.

    Calls :func:`ssgd_optax.privacy.compute_epsilon` with the noise multiplier
    ``stddev / sensitivity`` (one Gaussian release per step).

    >>> m = DpSsgdMechanism(1.0, num_groups=4)
    >>> round(m.epsilon(sampling_rate=0.01, steps=100, delta=1e-5,
    ...                 accountant='rdp'), 2)
    1.21
    """
    from ssgd_optax import privacy  # pylint: disable=g-import-not-at-top
    z = _validation.concrete_float(self.noise_multiplier)
    if z is None:
      raise TypeError('epsilon needs a concrete noise_multiplier, not a traced value.')
    return privacy.compute_epsilon(
        noise_multiplier=float(self.stddev) / self.sensitivity,
        sampling_rate=sampling_rate, steps=steps, delta=delta, accountant=accountant)


def _example_structure(tree: Any) -> Any:
  """The tree of one example (leading axis dropped), as shape structs."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(jnp.shape(x)[1:], jnp.result_type(x)), tree)


def dp_ssgd_mechanism(params: Any,
                      noise_multiplier: Any,
                      scope: grouping_lib.Scope = 'global') -> DpSsgdMechanism:
  """The mechanism (sensitivity and noise std) of DP-SSGD on ``params``.

  ``G`` is the number of groups of ``params`` under ``scope``; the
  sensitivity is ``sqrt(G)`` and the noise std ``noise_multiplier *
  sqrt(G)``. :func:`dp_unit_normalize` calls this on one example's gradient
  tree, so the accountant and the noise use the same numbers.

  Args:
    params: a tree with the structure of one example's gradient (the
      parameters, or shape structs).
    noise_multiplier: ``sigma >= 0``.
    scope: the normalisation scope.

  Returns:
    A :class:`DpSsgdMechanism`.

  Example:

  >>> import jax.numpy as jnp
  >>> p = {'l1': {'w': jnp.ones(3), 'b': jnp.ones(1)}, 'l2': {'w': jnp.ones(2)}}
  >>> m = dp_ssgd_mechanism(p, 1.5, 'per_layer')
  >>> m.num_groups, round(m.sensitivity, 4), round(m.stddev, 4)
  (2, 1.4142, 2.1213)
  """
  grouping_lib.check_scope(scope)
  _validation.check_nonnegative('noise_multiplier', noise_multiplier)
  return DpSsgdMechanism(noise_multiplier, grouping_lib.resolve_groups(params, scope).num_groups)


def calibrate_noise_multiplier(target_epsilon: float, *, sampling_rate: float, steps: int,
                               delta: float, accountant: str = 'pld') -> float:
  """The smallest ``sigma`` reaching ``(target_epsilon, delta)`` for DP-SSGD.

  DP-SSGD releases one Gaussian per step with noise multiplier ``sigma``
  (the scope's ``sqrt(G)`` cancels), so this is
  :func:`ssgd_optax.privacy.calibrate_noise_multiplier` with one release.

  Args:
    target_epsilon: the epsilon to reach, ``> 0``.
    sampling_rate: Poisson sampling probability ``q = Bbar / N``.
    steps: number of training steps.
    delta: the target delta.
    accountant: ``"pld"`` (tightest) or ``"rdp"``.

  Returns:
    The noise multiplier ``sigma`` to pass to :func:`dp_ssgd`.

  Example:

  >>> sigma = calibrate_noise_multiplier(2.0, sampling_rate=0.01, steps=100,
  ...                                    delta=1e-5, accountant='rdp')
  >>> m = DpSsgdMechanism(sigma, num_groups=3)
  >>> m.epsilon(sampling_rate=0.01, steps=100, delta=1e-5, accountant='rdp') <= 2.0
  True
  """
  from ssgd_optax import privacy  # pylint: disable=g-import-not-at-top
  return privacy.calibrate_noise_multiplier(
      target_epsilon, sampling_rate=sampling_rate, steps=steps, delta=delta,
      num_releases=1, accountant=accountant)


def _check_common(scope, stability, nonfinite):
  grouping_lib.check_scope(scope)
  _validation.check_nonnegative('stability', stability)
  _validation.check_choice('nonfinite', nonfinite, NONFINITE)


def _check_mechanism(scope, stability, nonfinite, noise_multiplier, expected_batch_size,
                     axis_name, key):
  _check_common(scope, stability, nonfinite)
  _validation.check_nonnegative('noise_multiplier', noise_multiplier)
  _validation.check_positive('expected_batch_size', expected_batch_size)
  _validation.check_axis_name('axis_name', axis_name)
  _check_key(key)


class _Prepared(NamedTuple):
  leaves: list[jax.Array]      # float32 (float64 kept), masked rows zeroed
  treedef: Any
  group_of_leaf: tuple[int, ...]
  num_groups: int
  scales: list[jax.Array]      # per group, [B]: 1 / (n + gamma), 0 at n = 0


def _rows(x: jax.Array, op) -> jax.Array:
  return op(x.reshape(x.shape[0], -1), axis=1)


def _prepare(per_example_grads: Any, scope: grouping_lib.Scope, stability: Any,
             mask: jax.Array | None, nonfinite: str) -> _Prepared:
  """Validates, casts to float32, masks, and computes per-(row, group) scales.

  The common case costs one fused pass over the data (sum of squares and
  max |g| per row) plus the rescale. The numerics are those of
  :func:`ssgd_optax.unit_normalize` (float32 accumulation, exact zeros,
  NaN for non-finite groups); when some row's sum of squares under- or
  overflows, its power-of-two rescue is applied to the whole batch in one
  extra pass. All-zero rows (padding, dropped rows) are exact already.
  """
  _check_common(scope, stability, nonfinite)
  # pylint: disable-next=protected-access
  per_example_lib._batch_size(per_example_grads, 'per_example_grads')
  for path, leaf in jax.tree_util.tree_leaves_with_path(per_example_grads):
    if not jnp.issubdtype(jnp.result_type(leaf), jnp.floating):
      raise TypeError(
          'per-example gradients must be real floating-point arrays; leaf '
          f'{jax.tree_util.keystr(path)!r} has dtype {jnp.result_type(leaf)}.')
  grouping = grouping_lib.resolve_groups(_example_structure(per_example_grads), scope)
  leaves, treedef = jax.tree.flatten(per_example_grads)
  leaves = [jnp.asarray(x) for x in leaves]
  leaves = [x.astype(jnp.promote_types(x.dtype, jnp.float32)) for x in leaves]
  keep = None if mask is None else jnp.asarray(mask)
  if nonfinite == 'drop':
    finite = jnp.stack([_rows(jnp.isfinite(x), jnp.all) for x in leaves]).all(axis=0)
    keep = finite if keep is None else jnp.logical_and(keep.astype(bool), finite)
  if keep is not None:
    leaves = jax.tree.leaves(per_example_lib.mask_rows(leaves, keep))
  sq = [_rows(jnp.square(x), jnp.sum) for x in leaves]
  mx = [_rows(jnp.abs(x), lambda v, axis: jnp.max(v, axis=axis, initial=0)) for x in leaves]
  group_sq, group_mx = [], []
  for k in range(grouping.num_groups):
    members = [i for i, g in enumerate(grouping.group_of_leaf) if g == k]
    dtype = jnp.result_type(*[sq[i] for i in members])
    group_sq.append(sum(sq[i].astype(dtype) for i in members))
    group_mx.append(jnp.max(jnp.stack([mx[i] for i in members]), axis=0))
  members = [[i for i, g in enumerate(grouping.group_of_leaf) if g == k]
             for k in range(grouping.num_groups)]
  needs = [jnp.any(((s < jnp.finfo(s.dtype).tiny) & (m > 0)) | jnp.isinf(s))
           for s, m in zip(group_sq, group_mx)]

  def plain(_):
    out = []
    for s in group_sq:
      n = jnp.sqrt(s)
      denom = n + jnp.asarray(stability, n.dtype)
      out.append(jnp.where(n == 0, 0, 1 / jnp.where(n == 0, 1, denom)))
    return out

  def rescued(_):
    # unit_normalize's rescue, batched: recompute each row's sum of squares on
    # g * 2^-e with 2^e ~ max|g| (exact, no over/underflow), then
    # 1 / (n + gamma) = pre / (sqrt(t) + gamma * pre).
    out = []
    for k, m in enumerate(group_mx):
      limit = -jnp.finfo(m.dtype).minexp - 1
      e = jnp.clip(jnp.floor(jnp.log2(jnp.where(m == 0, 1, m))), -limit, limit)
      pre = jnp.where(jnp.isinf(m), jnp.nan, jnp.exp2(-e)).astype(m.dtype)
      t = sum(_rows(jnp.square(_scaled(leaves[i], pre.astype(leaves[i].dtype))), jnp.sum)
              .astype(m.dtype) for i in members[k])
      root = jnp.sqrt(t)
      denom = root + jnp.asarray(stability, m.dtype) * pre
      out.append(jnp.where(root == 0, 0, pre / jnp.where(root == 0, 1, denom)))
    return out

  # A batch-level cond: only one branch runs (a per-row cond under vmap, as
  # vmapping unit_normalize would give, computes both for every row; that
  # made steps 9x slower once some example's gradient underflowed).
  scales = jax.lax.cond(jnp.any(jnp.stack(needs)), rescued, plain, None)
  return _Prepared(leaves, treedef, grouping.group_of_leaf, grouping.num_groups, scales)


def _scaled(x: jax.Array, scale: jax.Array) -> jax.Array:
  return x * scale.reshape(scale.shape + (1,) * (x.ndim - 1))


def normalize_per_example(per_example_grads: Any,
                          scope: grouping_lib.Scope = 'global',
                          *,
                          stability: Any = 0.0,
                          mask: jax.Array | None = None,
                          nonfinite: str = 'propagate') -> Any:
  r"""Unit-normalises every example's gradient within each group.

  For every row ``i`` and group ``k``:
  ``u_{i,k} = m_i \, g_{i,k} / (\lVert g_{i,k} \rVert + \gamma)`` with the
  numerics of :func:`ssgd_optax.unit_normalize` (float32 accumulation, exact
  zeros for zero rows, overflow/underflow rescue, NaN propagation); masked
  rows give exact zeros whatever they hold.

  Args:
    per_example_grads: a tree whose leaves share a leading batch axis.
    scope: the normalisation scope (see :func:`ssgd_optax.unit_normalize`).
    stability: ``gamma >= 0`` (AUTO-S); 0 gives exact unit norm.
    mask: ``None`` or a ``[B]`` 0/1 mask of real (1) and padded (0) rows.
    nonfinite: ``"propagate"`` (a NaN/Inf example makes its groups NaN) or
      ``"drop"`` (such an example becomes zeros).

  Returns:
    The normalised per-example tree, in float32 (float64 leaves stay float64).

  Example:

  >>> import jax.numpy as jnp
  >>> g = {'w': jnp.array([[3., 4.], [0., 0.]])}
  >>> normalize_per_example(g)['w']
  Array([[0.6, 0.8],
         [0. , 0. ]], dtype=float32)
  """
  if not jax.tree.leaves(per_example_grads):
    _check_common(scope, stability, nonfinite)
    return per_example_grads
  prep = _prepare(per_example_grads, scope, stability, mask, nonfinite)

  out = [_scaled(x, prep.scales[k]) for x, k in zip(prep.leaves, prep.group_of_leaf)]
  return jax.tree.unflatten(prep.treedef, out)


def _check_key(key: Any) -> None:
  if isinstance(key, jax.Array) and jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
    if key.shape:
      raise ValueError(f'key must be a single PRNG key; got key array of shape {key.shape}.')
    return
  if isinstance(key, jax.Array) and key.dtype == jnp.uint32 and key.shape == (2,):
    return
  raise TypeError(
      'key must be a JAX PRNG key (jax.random.key(seed), or a raw uint32 '
      f'jax.random.PRNGKey); got {type(key).__name__} {key!r}. There is no '
      'default: a fixed or hidden seed would repeat the noise.')


def _axis_size_and_index(axis_name):
  return jax.lax.psum(1, axis_name), jax.lax.axis_index(axis_name)


def noisy_normalized_mean(per_example_grads: Any,
                          key: jax.Array,
                          *,
                          noise_multiplier: Any,
                          expected_batch_size: Any,
                          scope: grouping_lib.Scope = 'global',
                          stability: Any = 0.0,
                          mask: jax.Array | None = None,
                          nonfinite: str = 'propagate',
                          axis_name: normalize_lib.AxisName = None) -> Any:
  r"""A batch's per-example gradients to the shared DP-SSGD update.

  .. math::

    \tilde g = \Big(\sum_i m_i N_\gamma(g_i) + \sigma\sqrt{G}\,\xi\Big) / \bar B

  This is what leaves the device (and what a gradient-inversion attacker
  sees) when DP-SSGD is the defence; :func:`dp_unit_normalize` calls it with
  a fresh key every step. Use a key only once.

  Args:
    per_example_grads: a tree whose leaves share a leading batch axis.
    key: a PRNG key for the noise.
    noise_multiplier: ``sigma >= 0``.
    expected_batch_size: ``Bbar > 0``, the expected Poisson batch size
      ``q * N`` (the divisor is not the realised batch size, which would
      leak it).
    scope, stability, mask, nonfinite: see :func:`normalize_per_example`.
    axis_name: ``None``, or the data-parallel axis name inside
      ``shard_map``/``pmap``: each device holds its own examples, the sums are
      ``psum``-ed and each device adds its own noise share, see
      :func:`dp_unit_normalize`.

  Returns:
    A tree with the structure of one example's gradient, in each leaf's
    dtype.

  Example:

  >>> import jax, jax.numpy as jnp
  >>> g = {'w': jnp.array([[3., 4.], [0., 2.]])}
  >>> noisy_normalized_mean(g, jax.random.key(0), noise_multiplier=0.0,
  ...                       expected_batch_size=2)['w']
  Array([0.3, 0.9], dtype=float32)
  """
  _check_mechanism(scope, stability, nonfinite, noise_multiplier, expected_batch_size,
                   axis_name, key)
  if not jax.tree.leaves(per_example_grads):
    return per_example_grads
  prep = _prepare(per_example_grads, scope, stability, mask, nonfinite)
  # The accountant's object: the noise std below is its `stddev`.
  mechanism = dp_ssgd_mechanism(_example_structure(per_example_grads), noise_multiplier, scope)

  # sum_i s_i g_i as one contraction: the normalised rows are never stored.
  leaves = [jnp.tensordot(prep.scales[k], x, axes=1)
            for x, k in zip(prep.leaves, prep.group_of_leaf)]
  summed = jax.tree.unflatten(prep.treedef, leaves)
  stddev = mechanism.stddev
  if axis_name is not None:
    # Each device adds an independent share of variance stddev^2 / D before
    # the psum, so the total noise has variance stddev^2 exactly once.
    size, index = _axis_size_and_index(axis_name)
    key = jax.random.fold_in(key, index)
    stddev = stddev / jnp.sqrt(jnp.asarray(size, jnp.float32))
  leaves, treedef = jax.tree.flatten(summed)
  keys = jax.random.split(key, len(leaves))
  noisy = [s + jnp.asarray(stddev, s.dtype) * jax.random.normal(k, s.shape, s.dtype)
           for s, k in zip(leaves, keys)]
  if axis_name is not None:
    noisy = jax.lax.psum(noisy, axis_name)
  dtypes = [jnp.result_type(x) for x in jax.tree.leaves(per_example_grads)]
  out = [(n / jnp.asarray(expected_batch_size, n.dtype)).astype(d)
         for n, d in zip(noisy, dtypes)]
  return jax.tree.unflatten(treedef, out)


class DpUnitNormalizeState(NamedTuple):
  """State of :func:`dp_unit_normalize`: the key of the next step's noise."""
  key: jax.Array


def dp_unit_normalize(noise_multiplier: Any,
                      *,
                      expected_batch_size: Any,
                      key: jax.Array,
                      scope: grouping_lib.Scope = 'global',
                      stability: Any = 0.0,
                      nonfinite: str = 'propagate',
                      axis_name: normalize_lib.AxisName = None
                      ) -> optax.GradientTransformationExtraArgs:
  r"""Per-example unit normalisation + Gaussian noise, as an optax transform.

  ``update`` takes **per-example** gradients (a leading batch axis on every
  leaf, e.g. from :func:`ssgd_optax.per_example.per_example_grads`) and
  returns the noisy normalised mean of :func:`noisy_normalized_mean`:

  .. math::

    \tilde g_t = \Big(\sum_i m_i\, N_\gamma(g_{t,i})
      + \sigma \sqrt{G}\, \xi_t\Big) / \bar B,
    \qquad (k_{t+1}, k'_t) = \text{split}(k_t),\ \xi_t \sim \mathcal N(0, I)
    \text{ from } k'_t

  Sensitivity: ``1`` for ``scope="global"``, ``sqrt(G)`` for ``G`` groups
  (``per_layer``, ``per_leaf``, callable); the noise std is
  ``noise_multiplier * sensitivity``, so the step is a Gaussian mechanism
  with noise multiplier ``noise_multiplier``: account it with
  :func:`dp_ssgd_mechanism` / :func:`calibrate_noise_multiplier`.

  **Keys.** The key lives in the state and is split on every step, so no
  two steps share noise. Calling ``init`` twice with the same factory gives
  the same noise sequence: build the transform with a fresh key per run.

  **Devices.** Under ``jax.jit`` with sharded per-example gradients
  (``axis_name=None``), the sum and the noise are global arrays: the noise
  is drawn once. Inside ``shard_map``/``pmap`` pass ``axis_name`` (the data
  axis) and a replicated state: each device draws its own noise from
  ``fold_in(key_t, axis_index)`` with std ``sigma sqrt(G) / sqrt(D)``, adds
  it to its local sum, and the sums are ``psum``-ed; the total noise has std
  ``sigma sqrt(G)`` (added once), every device ends with the same update,
  and what each device contributes to the ``psum`` is already partly
  noised. The guarantee holds for the aggregate only: a single device's
  share carries ``1 / sqrt(D)`` of the noise.

  Padded rows: pass ``mask=`` (a ``[B]`` 0/1 array) as an extra argument to
  ``update`` (``nnx.Optimizer.update(model, grads, mask=mask)`` forwards
  it); masked rows contribute exact zeros.

  Args:
    noise_multiplier: ``sigma >= 0`` (may be traced).
    expected_batch_size: ``Bbar = q N > 0``, the divisor (may be traced).
    key: the PRNG key of the noise (``jax.random.key(seed)``); required.
    scope: ``"global"``, ``"per_leaf"``, ``"per_layer"`` or a callable.
    stability: ``gamma >= 0``, the AUTO-S constant in ``g / (||g|| + gamma)``.
    nonfinite: ``"propagate"`` or ``"drop"``, see :func:`normalize_per_example`.
    axis_name: the data-parallel axis name(s) inside ``shard_map``/``pmap``.

  Returns:
    A :class:`optax.GradientTransformationExtraArgs` with state
    :class:`DpUnitNormalizeState`.

  Example:

  >>> import jax, jax.numpy as jnp
  >>> tx = dp_unit_normalize(0.0, expected_batch_size=1, key=jax.random.key(0))
  >>> g = {'w': jnp.array([[3., 4.]])}
  >>> u, state = tx.update(g, tx.init({'w': jnp.zeros(2)}))
  >>> u['w']
  Array([0.6, 0.8], dtype=float32)
  """
  _check_mechanism(scope, stability, nonfinite, noise_multiplier, expected_batch_size,
                   axis_name, key)

  def init_fn(params):
    del params
    return DpUnitNormalizeState(key)

  def update_fn(updates, state, params=None, *, mask=None, **extra_args):
    del params, extra_args
    next_key, noise_key = jax.random.split(state.key)
    out = noisy_normalized_mean(
        updates, noise_key, noise_multiplier=noise_multiplier,
        expected_batch_size=expected_batch_size, scope=scope, stability=stability,
        mask=mask, nonfinite=nonfinite, axis_name=axis_name)
    return out, DpUnitNormalizeState(next_key)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def dp_ssgd(learning_rate: optax.ScalarOrSchedule,
            noise_multiplier: Any,
            *,
            expected_batch_size: Any,
            key: jax.Array,
            scope: grouping_lib.Scope = 'global',
            stability: Any = 0.0,
            momentum: Any = None,
            nesterov: bool = False,
            nonfinite: str = 'propagate',
            axis_name: normalize_lib.AxisName = None) -> optax.GradientTransformationExtraArgs:
  r"""Differentially private SSGD: normalise each example, add noise, SGD.

  .. math::

    \tilde g_t = \tfrac{1}{\bar B}\Big(\sum_i N_\gamma(g_{t,i})
      + \sigma\sqrt{G}\,\xi_t\Big), \quad m_t = \mu m_{t-1} + \tilde g_t,
    \quad \theta_{t+1} = \theta_t - \eta_t m_t

  i.e. ``optax.chain(dp_unit_normalize(...), optax.trace(momentum),
  optax.scale_by_learning_rate(learning_rate))``. Momentum and the learning
  rate are post-processing and cost no privacy. Sensitivity ``1`` (global)
  or ``sqrt(G)`` (``G`` groups); noise std ``noise_multiplier *
  sensitivity``. For another optimiser, chain :func:`dp_unit_normalize`
  with it (e.g. ``optax.adam``).

  Args:
    learning_rate: a float or an optax schedule.
    noise_multiplier: ``sigma >= 0``, e.g. from
      :func:`calibrate_noise_multiplier`.
    expected_batch_size: ``Bbar = q N``.
    key: PRNG key of the noise.
    scope: the normalisation scope.
    stability: ``gamma >= 0`` (AUTO-S); 0 is exact unit normalisation.
    momentum: ``None`` or a decay rate ``>= 0``.
    nesterov: Nesterov momentum (requires ``momentum``).
    nonfinite: ``"propagate"`` or ``"drop"``.
    axis_name: data-parallel axis inside ``shard_map``/``pmap``.

  Returns:
    A :class:`optax.GradientTransformationExtraArgs` whose ``update`` takes
    per-example gradients (and an optional ``mask=``).

  Example:

  >>> import jax, jax.numpy as jnp
  >>> from ssgd_optax.per_example import per_example_grads
  >>> loss = lambda w, x: jnp.sum((w - x) ** 2)
  >>> w, xs = jnp.zeros(2), jnp.array([[1., 0.], [0., 2.]])
  >>> opt = dp_ssgd(0.5, 1.0, expected_batch_size=2, key=jax.random.key(0))
  >>> g = per_example_grads(loss)(w, xs)
  >>> u, state = opt.update(g, opt.init(w), w)
  >>> u.shape
  (2,)
  """
  tail = normalize_lib.momentum_and_learning_rate(learning_rate, momentum, nesterov)
  parts = [dp_unit_normalize(noise_multiplier, expected_batch_size=expected_batch_size, key=key,
                             scope=scope, stability=stability, nonfinite=nonfinite,
                             axis_name=axis_name), *tail]
  return optax.chain(*parts)
