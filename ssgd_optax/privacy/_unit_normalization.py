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

over the groups ``k`` of the scope (:data:`ssgd_optax.SCOPES`), with
``Bbar`` the *expected* batch size of Poisson sampling and sensitivity

* ``scope="global"``: one group, ``Delta = 1``;
* ``"per_layer"``/``"per_leaf"``/callable with ``G`` groups: each group has
  norm 1, so ``Delta = sqrt(G)``.

Since the noise std is ``sigma * Delta``, the accountant sees a subsampled
Gaussian with noise multiplier ``sigma`` whatever the scope: a finer scope
costs utility (more noise per unit of signal), not privacy.
:class:`DPSSGDMechanism` holds ``sigma`` and ``G``; both the transformation
(for the noise std) and the accountant (:meth:`DPSSGDMechanism.epsilon`)
read it, so they cannot disagree.

Public pieces:

* :func:`normalize_per_example`: ``N_gamma`` on every row of a batched tree.
* :func:`noisy_normalized_mean`: one batch's per-example gradients to the
  shared noisy update (a pure function; what an attacker observes).
* :func:`dp_unit_normalize`: the same as an optax transformation whose state
  holds the PRNG key.
* :func:`dp_ssgd`: ``dp_unit_normalize`` + optional momentum + learning rate.
* :func:`dp_ssgd_mechanism`: the mechanism; accounting and calibration
  through :mod:`ssgd_optax.privacy` (``dp_accounting``).

Edge cases per example and group (``n`` is the group's norm):

=====================  ==================================================
per-example group      contribution
=====================  ==================================================
``n > 0``, finite      ``g / (n + gamma)``: norm 1 (``gamma = 0``) or < 1
all zeros              exact zeros (never NaN)
masked (padded) row    exact zeros, whatever its values (NaN included)
huge or tiny entries   norm 1, no overflow, no underflow of the norm
                       (power-of-two pre-scale when needed)
all entries subnormal  exact zeros on every backend (XLA's CPU flushes
                       subnormals; a GPU need not)
NaN or Inf             the whole example contributes zero
                       (``nonfinite="drop"``, default, which keeps the
                       guarantee), or a NaN update (``"propagate"``, an
                       opt-in for debugging that voids the guarantee)
=====================  ==================================================

Under several devices the noise is added once in total, see
:func:`dp_unit_normalize`.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from ssgd_optax import _batch
from ssgd_optax import _keys
from ssgd_optax import _numerics
from ssgd_optax import _validation
from ssgd_optax import _grouping as grouping_lib
from ssgd_optax import _normalize as normalize_lib
from ssgd_optax.privacy import _clipping as clipping
from ssgd_optax.privacy import _noise as noise_lib
from ssgd_optax.privacy._mechanisms import DPSSGDMechanism
from ssgd_optax.privacy._mechanisms import dp_ssgd_mechanism

__all__ = [
    'DPUnitNormalizeState',
    'normalize_per_example',
    'noisy_normalized_mean',
    'dp_unit_normalize',
    'dp_ssgd',
]


def _example_structure(tree: Any) -> Any:
  """The tree of one example (leading axis dropped), as shape structs."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(jnp.shape(x)[1:], jnp.result_type(x)), tree)


def _check_common(scope, stability, nonfinite):
  grouping_lib.check_scope(scope)
  _validation.check_nonnegative('stability', stability)
  _validation.check_choice('nonfinite', nonfinite, clipping.NONFINITE)


def _from_mechanism(mechanism, noise_multiplier, scope, caller):
  """``(noise_multiplier, scope)`` from a :class:`DPSSGDMechanism` or the arguments."""
  if mechanism is None:
    if noise_multiplier is None:
      raise ValueError(f'{caller} needs noise_multiplier (sigma >= 0) or mechanism= '
                       '(dp_ssgd_mechanism); got neither.')
    return noise_multiplier, 'global' if scope is None else scope
  if not isinstance(mechanism, DPSSGDMechanism):
    raise TypeError(f'{caller}: mechanism must be a DPSSGDMechanism (dp_ssgd_mechanism); got '
                    f'{type(mechanism).__name__}.')
  if noise_multiplier is not None:
    raise ValueError(f'{caller} got mechanism= and noise_multiplier: pass one, not both.')
  if scope is not None and scope != mechanism.scope:
    raise ValueError(f'{caller} got scope={scope!r} but the mechanism was built for '
                     f'scope={mechanism.scope!r}: drop scope= (the mechanism sets it).')
  if mechanism.noise_multiplier is None:
    raise ValueError('mechanism.noise_multiplier is None: calibrate it first '
                     '(calibrate_noise_multiplier(..., mechanism=m)) and set it with '
                     'm._replace(noise_multiplier=z).')
  return mechanism.noise_multiplier, mechanism.scope


def _check_mechanism(scope, stability, nonfinite, noise_multiplier, expected_batch_size,
                     axis_name, key):
  _check_common(scope, stability, nonfinite)
  _validation.check_nonnegative('noise_multiplier', noise_multiplier)
  _validation.check_positive('expected_batch_size', expected_batch_size)
  _validation.check_axis_name('axis_name', axis_name)
  return _keys.check_key(key)


# How the norms are computed (see ssgd_optax._numerics.per_row); the tests set
# it to compare the CPU and accelerator forms on one host.
_METHOD = 'auto'


class _Prepared(NamedTuple):
  leaves: list[jax.Array]      # float32 (float64 kept); NOT masked
  dtypes: list[Any]            # accumulation dtype of each leaf (its group's)
  treedef: Any
  group_of_leaf: tuple[int, ...]
  num_groups: int
  members: list[list[int]]
  mask: jax.Array | None       # [B] bool: real (not padded) rows


def _finish_scales(prep: _Prepared, rs: _numerics.RowScales, nonfinite: str):
  """``(scales, keep, row_bad)``: per group the ``[B]`` coefficients, then ``[B]``
  bools: the rows whose contribution is kept, the rows holding a NaN or Inf.

  Dropped rows (masked; non-finite with ``"drop"``) get scale 0; with
  ``"propagate"`` a kept non-finite group gets NaN.
  """
  row_bad = jnp.any(jnp.stack(rs.bad), axis=0)
  keep = jnp.ones_like(row_bad) if nonfinite == 'propagate' else ~row_bad
  if prep.mask is not None:
    keep = keep & prep.mask
  out = []
  for c, bad in zip(rs.coef, rs.bad):
    c = jnp.where(keep, c, 0)
    if nonfinite == 'propagate':
      c = jnp.where(keep & bad, jnp.nan, c)
    out.append(c)
  return out, keep, row_bad


def _prepare(per_example_grads: Any, scope: grouping_lib.Scope, stability: Any,
             mask: jax.Array | None, nonfinite: str) -> _Prepared:
  """Validates, casts to float32 and resolves the groups.

  The norms are :func:`ssgd_optax._numerics.per_row`'s, the package's one
  overflow/underflow-safe norm: on CPU one sum of squares per row and leaf
  on the common path; a plain sum ``s`` is used only where it is accurate
  (``s >= 2^-50`` in float32 bounds the squares lost to underflow or to a
  flush of subnormals; without it, 1000 entries of ``1e-19``, whose squares
  flush to 0, and one of ``1.2e-19`` gave a row of norm 26) and finite.
  Any other non-zero, unmasked row sends the whole batch through the
  rescue (one batch-level ``switch``: the scaled sums ``x 2^-84``, ``x
  2^84`` and a pre-scaled copy, only then); on accelerators the three sums
  are one branch-free pass. Non-finite rows are found from the same sums
  and dropped (``nonfinite="drop"``) or made NaN.
  """
  _check_common(scope, stability, nonfinite)
  # pylint: disable-next=protected-access
  batch = _batch.batch_size(per_example_grads, 'per_example_grads')
  for path, leaf in jax.tree_util.tree_leaves_with_path(per_example_grads):
    if not jnp.issubdtype(jnp.result_type(leaf), jnp.floating):
      raise TypeError(
          'per-example gradients must be real floating-point arrays; leaf '
          f'{jax.tree_util.keystr(path)!r} has dtype {jnp.result_type(leaf)}.')
  if mask is not None:
    mask = jnp.asarray(mask)
    if mask.ndim != 1 or mask.shape[0] != batch:
      raise ValueError(f'mask has {mask.size} entries (shape {mask.shape}) but the batch has '
                       f'{batch} examples; mask must be a [B] vector.')
  grouping = grouping_lib.resolve_groups(_example_structure(per_example_grads), scope)
  leaves, treedef = jax.tree.flatten(per_example_grads)
  leaves = [jnp.asarray(x) for x in leaves]
  leaves = [x.astype(jnp.promote_types(x.dtype, jnp.float32)) for x in leaves]
  members = [[i for i, g in enumerate(grouping.group_of_leaf) if g == k]
             for k in range(grouping.num_groups)]
  group_dtypes = [jnp.result_type(*[leaves[i].dtype for i in idx]) for idx in members]
  return _Prepared(leaves, [group_dtypes[k] for k in grouping.group_of_leaf], treedef,
                   grouping.group_of_leaf, grouping.num_groups, members,
                   None if mask is None else mask.astype(bool))


def _scaled(x: jax.Array, scale: jax.Array) -> jax.Array:
  return x * scale.reshape(scale.shape + (1,) * (x.ndim - 1))


def _kept(x: jax.Array, keep: jax.Array) -> jax.Array:
  return jnp.where(keep.reshape(keep.shape + (1,) * (x.ndim - 1)), x, jnp.zeros((), x.dtype))


def _weighted_row_sum(scale: jax.Array, x: jax.Array) -> jax.Array:
  """``sum_i scale_i x_i`` as one contraction (the scaled rows are never stored).

  HIGHEST precision: a GPU's default TF32 would round the normalised rows to
  10 mantissa bits and break the unit-norm bound by up to ``2^-11``. On a
  mesh with ``Explicit`` axes the batch axis is contracted away, so the
  output sharding is the input's without its first entry (JAX refuses to
  guess it: "Contracting dimensions are sharded").
  """
  sharding = noise_lib.explicit_sharding(x)
  kwargs = {}
  if sharding is not None:
    spec = tuple(sharding.spec) + (None,) * (x.ndim - len(sharding.spec))
    kwargs['out_sharding'] = jax.sharding.NamedSharding(
        sharding.mesh, jax.sharding.PartitionSpec(*spec[1:]))
  return jnp.tensordot(scale.astype(x.dtype), x, axes=1,
                       precision=jax.lax.Precision.HIGHEST, **kwargs)


def normalize_per_example(per_example_grads: Any,
                          scope: grouping_lib.Scope = 'global',
                          *,
                          stability: Any = 0.0,
                          mask: jax.Array | None = None,
                          nonfinite: str = 'drop') -> Any:
  r"""Unit-normalises every example's gradient within each group.

  For every row ``i`` and group ``k``:
  ``u_{i,k} = m_i \, g_{i,k} / (\lVert g_{i,k} \rVert + \gamma)`` with the
  numerics of :func:`ssgd_optax.unit_normalize` (float32 accumulation, exact
  zeros for zero rows, overflow/underflow rescue); masked rows and (by
  default) rows holding a NaN or Inf give exact zeros whatever they hold.

  Args:
    per_example_grads: a tree whose leaves share a leading batch axis.
    scope: the normalisation scope (see :func:`ssgd_optax.unit_normalize`).
    stability: ``gamma >= 0`` (AUTO-S); 0 gives exact unit norm.
    mask: ``None`` or a ``[B]`` 0/1 mask of real (1) and padded (0) rows.
    nonfinite: ``"drop"`` (default): an example with a NaN or Inf anywhere
      becomes zeros, so every row has norm at most ``sqrt(G)`` and the DP
      sensitivity bound holds. ``"propagate"``: its groups become NaN; **this
      voids the differential-privacy guarantee** (a NaN release reveals that
      the example was in the batch). Use it only to debug a model.

  Returns:
    The normalised per-example tree, in float32 (float64 leaves stay float64).

  Example:

  >>> import jax.numpy as jnp
  >>> g = {'w': jnp.array([[3., 4.], [0., 0.], [jnp.inf, 1.]])}
  >>> normalize_per_example(g)['w']
  Array([[0.6, 0.8],
         [0. , 0. ],
         [0. , 0. ]], dtype=float32)
  """
  if not jax.tree.leaves(per_example_grads):
    _check_common(scope, stability, nonfinite)
    return per_example_grads
  prep = _prepare(per_example_grads, scope, stability, mask, nonfinite)

  def scale(leaves, rs):
    # `leaves` are pre-scaled in the rescue: (x pre) coef, in this order.
    scales, keep, _ = _finish_scales(prep, rs, nonfinite)
    return [_kept(_scaled(x, scales[k]), keep) for x, k in zip(leaves, prep.group_of_leaf)]

  # A batch-level decision: only one branch runs (a per-row cond under vmap
  # computes both for every row, which made steps 9x slower once some
  # example's gradient underflowed).
  out = _numerics.per_row(prep.leaves, prep.dtypes, prep.members, scale, stability=stability,
                          include=prep.mask, method=_METHOD)
  return jax.tree.unflatten(prep.treedef, out)


def noisy_normalized_mean(per_example_grads: Any,
                          key: jax.Array,
                          *,
                          noise_multiplier: Any = None,
                          expected_batch_size: Any,
                          scope: grouping_lib.Scope | None = None,
                          stability: Any = 0.0,
                          mask: jax.Array | None = None,
                          nonfinite: str = 'drop',
                          axis_name: _numerics.AxisName = None,
                          mechanism: DPSSGDMechanism | None = None) -> Any:
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
    scope, stability, mask: see :func:`normalize_per_example`.
    nonfinite: ``"drop"`` (default; keeps the guarantee) or ``"propagate"``
      (a NaN/Inf example makes the update NaN: **voids the guarantee**), see
      :func:`normalize_per_example`.
    axis_name: ``None``, or the data-parallel axis name inside
      ``shard_map``/``pmap``: each device holds its own examples, the sums are
      ``psum``-ed and each device adds its own noise share, see
      :func:`dp_unit_normalize`. Under plain ``jax.jit`` with the batch
      sharded (on an ``Auto`` or ``Explicit`` mesh such as
      :func:`ssgd_optax.parallel.data_mesh`) leave it ``None``.
    mechanism: a :class:`DPSSGDMechanism` instead of ``noise_multiplier`` and
      ``scope``; the noise std is ``sigma * sqrt(G)`` for the ``G`` groups of
      the gradients given (fewer than ``mechanism.num_groups`` under
      ``optax.masked``), so the accountant's ``sigma`` holds either way.

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
  noise_multiplier, scope = _from_mechanism(mechanism, noise_multiplier, scope,
                                            'noisy_normalized_mean')
  key = _check_mechanism(scope, stability, nonfinite, noise_multiplier, expected_batch_size,
                         axis_name, key)
  if not jax.tree.leaves(per_example_grads):
    return per_example_grads
  prep = _prepare(per_example_grads, scope, stability, mask, nonfinite)
  # The accountant's object: the noise std below is its `stddev`.
  # The groups of the gradients seen here (fewer than the mechanism's under
  # optax.masked): the noise is sigma times *their* sensitivity, so the
  # accountant's multiplier sigma holds either way.
  mechanism = dp_ssgd_mechanism(_example_structure(per_example_grads), noise_multiplier, scope)

  def contract(leaves, scales):
    return [_weighted_row_sum(scales[k], x) for x, k in zip(leaves, prep.group_of_leaf)]

  def plain(leaves, rs):
    return contract(leaves, _finish_scales(prep, rs, nonfinite)[0])

  def selected(leaves, rs):
    # A dropped row scaled by 0 contributes 0 unless it holds Inf or NaN
    # (0 * Inf = NaN): only then select, which costs a pass over the data.
    # The rescue's pre-scaled rows always go through here.
    scales, keep, _ = _finish_scales(prep, rs, nonfinite)
    return contract([_kept(x, keep) for x in leaves], scales)

  def choose(rs):
    _, keep, row_bad = _finish_scales(prep, rs, nonfinite)
    return jnp.where(jnp.any(~keep & row_bad), 1, 0)

  # One batch-level switch (plain, plain with the select, rescue); on
  # accelerators the branch-free rescue form.
  leaves = _numerics.per_row(prep.leaves, prep.dtypes, prep.members, selected,
                             plain=[plain, selected], choose=choose, stability=stability,
                             include=prep.mask, method=_METHOD)
  dtypes = [jnp.result_type(x) for x in jax.tree.leaves(per_example_grads)]
  out = noise_lib.noisy_mean(leaves, [mechanism.stddev] * len(leaves), key,
                             expected_batch_size=expected_batch_size, axis_name=axis_name,
                             dtypes=dtypes)
  return jax.tree.unflatten(prep.treedef, out)


class DPUnitNormalizeState(NamedTuple):
  """State of :func:`dp_unit_normalize`: the key of the next step's noise.

  Attributes:
    key: the PRNG key the next step's noise is drawn from.
  """
  key: jax.Array


def dp_unit_normalize(noise_multiplier: Any = None,
                      *,
                      expected_batch_size: Any,
                      key: jax.Array,
                      scope: grouping_lib.Scope | None = None,
                      stability: Any = 0.0,
                      nonfinite: str = 'drop',
                      axis_name: _numerics.AxisName = None,
                      mechanism: DPSSGDMechanism | None = None
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
  :func:`dp_ssgd_mechanism` / :func:`ssgd_optax.privacy.calibrate_noise_multiplier`.

  **Keys.** The key lives in the state and is split on every step, so no
  two steps share noise. ``init`` stores a copy of ``key`` (the state may be
  donated to ``jit``; see ``ssgd_optax._keys``). Calling ``init`` twice
  with the same factory gives the same noise sequence: build the transform
  with a fresh key per run.

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
    nonfinite: ``"drop"`` (default: a NaN/Inf example contributes zero, the
      guarantee holds) or ``"propagate"`` (the update becomes NaN, which
      **voids the guarantee**), see :func:`normalize_per_example`.
    axis_name: the data-parallel axis name(s) inside ``shard_map``/``pmap``.
    mechanism: a :class:`DPSSGDMechanism` (:func:`dp_ssgd_mechanism` on the
      parameters) instead of ``noise_multiplier`` and ``scope``; pass the same
      object to the accountant (``privacy.compute_epsilon(mechanism, ...)``,
      ``BudgetTracker(mechanism=...)``).

  Returns:
    A :class:`optax.GradientTransformationExtraArgs` with state
    :class:`DPUnitNormalizeState`.

  Example:

  >>> import jax, jax.numpy as jnp
  >>> tx = dp_unit_normalize(0.0, expected_batch_size=1, key=jax.random.key(0))
  >>> g = {'w': jnp.array([[3., 4.]])}
  >>> u, state = tx.update(g, tx.init({'w': jnp.zeros(2)}))
  >>> u['w']
  Array([0.6, 0.8], dtype=float32)
  """
  noise_multiplier, scope = _from_mechanism(mechanism, noise_multiplier, scope,
                                            'dp_unit_normalize')
  key = _check_mechanism(scope, stability, nonfinite, noise_multiplier, expected_batch_size,
                         axis_name, key)

  def init_fn(params):
    del params
    # A buffer of its own: the caller may donate the state to jit.
    return DPUnitNormalizeState(_keys.copy_key(key))

  def update_fn(updates, state, params=None, *, mask=None, **extra_args):
    del params, extra_args
    next_key, noise_key = _keys.split_step(state.key)
    out = noisy_normalized_mean(
        updates, noise_key, noise_multiplier=noise_multiplier,
        expected_batch_size=expected_batch_size, scope=scope, stability=stability,
        mask=mask, nonfinite=nonfinite, axis_name=axis_name)
    return out, DPUnitNormalizeState(next_key)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def dp_ssgd(learning_rate: optax.ScalarOrSchedule,
            noise_multiplier: Any = None,
            *,
            expected_batch_size: Any,
            key: jax.Array,
            scope: grouping_lib.Scope | None = None,
            stability: Any = 0.0,
            momentum: Any = None,
            nesterov: bool = False,
            nonfinite: str = 'drop',
            axis_name: _numerics.AxisName = None,
            mechanism: DPSSGDMechanism | None = None) -> optax.GradientTransformationExtraArgs:
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
      :func:`ssgd_optax.privacy.calibrate_noise_multiplier`.
    expected_batch_size: ``Bbar = q N``.
    key: PRNG key of the noise.
    scope: the normalisation scope.
    stability: ``gamma >= 0`` (AUTO-S); 0 is exact unit normalisation.
    momentum: ``None`` or a decay rate ``>= 0``.
    nesterov: Nesterov momentum (requires ``momentum``).
    nonfinite: ``"drop"`` (default, keeps the guarantee) or ``"propagate"``
      (a NaN/Inf example makes the update NaN; **voids the guarantee**).
    axis_name: data-parallel axis inside ``shard_map``/``pmap``.
    mechanism: a :class:`DPSSGDMechanism` instead of ``noise_multiplier`` and
      ``scope``, see :func:`dp_unit_normalize`.

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
                             axis_name=axis_name, mechanism=mechanism), *tail]
  return optax.chain(*parts)
