# Copyright 2026 The ssgd_optax Authors. Licensed under the Apache License 2.0.
"""The one Gaussian noise step of the package, and the optax transform around it.

:func:`noisy_mean` is the noise step every DP path uses
(:func:`add_gaussian_noise` here, DP-SSGD's
:func:`~ssgd_optax.privacy.noisy_normalized_mean`): per leaf, add
``stddev_l * xi_l`` to the sum, divide by the expected batch size, cast back.
It handles the two multi-device layouts once: arrays on a mesh with
``Explicit`` axes get noise with the same sharding, and inside
``shard_map``/``pmap`` (``axis_name``) each device adds an independent share
of variance ``stddev^2 / D`` to its local sum before the ``psum``.

:func:`add_gaussian_noise` turns a **sum** of clipped per-example gradients
into a noisy mean: each leaf ``l`` gets independent noise of standard
deviation ``z * Delta_l`` (``Delta_l`` = the leaf's L2 sensitivity), and the
result is divided by the *expected* batch size ``q * N`` (never by the
realised Poisson batch size, which would leak it). Put it first in an
``optax.chain``, before the optimiser.

How many Gaussian mechanisms that is depends on where the sensitivity holds:

* backprop clipping bounds each tensor separately (``sensitivity`` = the tree
  of :func:`ssgd_optax.privacy.sensitivities`): ``L`` releases per step;
* DP-SGD bounds the whole gradient (a scalar ``sensitivity = C``): one release
  with noise ``z * C`` on every coordinate.

Preferred: build the mechanism object once
(:func:`ssgd_optax.privacy.backprop_clip_mechanism`,
:func:`ssgd_optax.privacy.dpsgd_mechanism`) and pass it here as
``mechanism=`` and to the accountant, which reads ``num_releases`` from it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import optax

from ssgd_optax import _keys
from ssgd_optax import _validation

__all__ = ['GaussianNoiseState', 'add_gaussian_noise', 'explicit_sharding', 'noisy_mean']


class GaussianNoiseState(NamedTuple):
  """State of :func:`add_gaussian_noise`.

  Attributes:
    key: the typed PRNG key of the next update, a copy owned by this state
      (each update splits it: one half noises that update, the other becomes
      the next state's key).
    count: number of updates noised so far (int32).
  """

  key: chex.PRNGKey
  count: chex.Array


def explicit_sharding(x: jax.Array) -> Any:
  """``x``'s sharding when it lives on a mesh with ``Explicit`` axes, else None."""
  sharding = getattr(jax.typeof(x), 'sharding', None)
  mesh = getattr(sharding, 'mesh', None)
  if mesh is None or getattr(mesh, 'empty', True):
    return None
  if not any(t == jax.sharding.AxisType.Explicit for t in mesh.axis_types):
    return None
  return sharding


def noisy_mean(sums: Sequence[jax.Array], stddevs: Sequence[Any], key: jax.Array, *,
               expected_batch_size: Any, axis_name: Any = None,
               dtypes: Sequence[Any] | None = None) -> list[jax.Array]:
  r"""``(s_l + stddev_l xi_l) / Bbar`` for every leaf ``l``: the package's Gaussian noise step.

  .. math:: u_l = \big(s_l + \sigma_l\, \xi_l\big) / \bar B, \qquad
     \xi_l \sim \mathcal N(0, I) \text{ from } \mathrm{split}(k)_l

  Noise is drawn and added in ``promote(s_l.dtype, float32)``; the result is
  cast to ``dtypes[l]`` (default: each sum's dtype). With ``axis_name``
  (inside ``shard_map``/``pmap``, each device holding a partial sum), device
  ``d`` draws from ``fold_in(k, d)`` with std ``sigma_l / sqrt(D)`` and the
  noised partial sums are ``psum``-ed: the total noise has std ``sigma_l``,
  added once, and every device returns the same mean. A leaf on a mesh with
  ``Explicit`` axes gets noise of its own sharding.

  Args:
    sums: the per-leaf sums (the release before noise).
    stddevs: per leaf, the noise std ``sigma_l >= 0`` (may be traced).
    key: the PRNG key of this step's noise, used once.
    expected_batch_size: ``Bbar > 0``, the divisor.
    axis_name: ``None`` or the data axis name(s) inside ``shard_map``/``pmap``.
    dtypes: the output dtypes (default: the sums' dtypes).

  Returns:
    The list of noisy means.

  Example:

  >>> import jax, jax.numpy as jnp
  >>> noisy_mean([jnp.ones(2)], [0.0], jax.random.key(0), expected_batch_size=4)
  [Array([0.25, 0.25], dtype=float32)]
  """
  sums = [jnp.asarray(x) for x in sums]
  dtypes = [x.dtype for x in sums] if dtypes is None else list(dtypes)
  if axis_name is not None:
    # Independent shares of variance stddev^2 / D: the psum adds them up to
    # stddev^2 exactly once.
    size = jax.lax.psum(1, axis_name)
    key = jax.random.fold_in(key, jax.lax.axis_index(axis_name))
    scale = 1 / jnp.sqrt(jnp.asarray(size, jnp.float32))
  keys = jax.random.split(key, max(len(sums), 1))
  out = []
  for s, std, k in zip(sums, stddevs, keys):
    dtype = jnp.promote_types(s.dtype, jnp.float32)
    sharding = explicit_sharding(s)
    kwargs = {} if sharding is None else {'out_sharding': sharding}
    std = jnp.asarray(std, dtype)
    if axis_name is not None:
      std = std * scale.astype(dtype)
    out.append(s.astype(dtype) + std * jax.random.normal(k, s.shape, dtype, **kwargs))
  if axis_name is not None:
    out = jax.lax.psum(out, axis_name)
  return [(n / jnp.asarray(expected_batch_size, n.dtype)).astype(d) for n, d in zip(out, dtypes)]


def _is_scalar(tree: Any) -> bool:
  return jax.tree_util.treedef_is_leaf(jax.tree.structure(tree)) and jnp.ndim(tree) == 0


def add_gaussian_noise(noise_multiplier: Any = None,
                       sensitivity: Any = None,
                       expected_batch_size: Any = None,
                       *,
                       key: chex.PRNGKey,
                       mechanism: Any = None,
                       axis_name: Any = None) -> optax.GradientTransformation:
  r"""Adds ``N(0, (z * Delta_l)^2)`` to each leaf of a gradient sum, then averages.

  .. math::

     u_l = \frac{1}{\bar B}\Big(\sum_{i \in \text{batch}} \tilde g_{i,l}
           + z\,\Delta_l\,\xi_l\Big), \qquad \xi_l \sim \mathcal N(0, I)

  with a fresh ``xi`` per leaf and per step (the state's key is split by
  ``ssgd_optax._keys.split_step`` every update, then the step's key once
  per leaf), by ``noisy_mean``: drawn and added in float32 (float64
  kept) and cast back to the leaf's dtype. ``z = 0`` gives exactly
  ``sum / Bbar``; a NaN/Inf in the sum stays NaN/Inf; ``None`` leaves and
  empty trees pass through.

  **Devices.** Under ``jax.jit`` with the batch sharded, the sum is a global
  array and its noise is drawn once. Inside ``shard_map``/``pmap``, where each
  device holds the gradient sum of its own rows, pass ``axis_name`` (and a
  replicated state): each device adds an independent noise share of
  variance ``(z Delta_l)^2 / D`` and the noised sums are ``psum``-ed, so the
  total noise is ``z Delta_l`` added once and every device ends with the
  same update; a single device's share carries ``1 / sqrt(D)`` of the noise.

  Args:
    noise_multiplier: ``z >= 0`` (may be traced, e.g. under
      ``optax.inject_hyperparams``).
    sensitivity: ``Delta``: a scalar for every leaf (DP-SGD's global clip
      norm), or a tree shaped like the updates with a scalar per leaf
      (:func:`ssgd_optax.privacy.sensitivities`), each ``>= 0``.
    expected_batch_size: ``Bbar = q * N > 0``.
    key: a PRNG key (``jax.random.key(seed)`` or a legacy ``PRNGKey``), which
      must be secret for the guarantee to hold; ``init`` stores a copy, so the
      state may be donated to ``jit`` and ``init`` called again.
    mechanism: instead of ``noise_multiplier`` and ``sensitivity``, a Gaussian
      mechanism object (``DPSGDMechanism``, ``BackpropClipMechanism``, ...)
      whose ``noise_multiplier`` and ``sensitivity`` are used; pass the same
      object to the accountant.
    axis_name: ``None``, or the data axis name(s) inside
      ``shard_map``/``pmap`` (see Devices).

  Returns:
    An ``optax.GradientTransformation`` with :class:`GaussianNoiseState`.

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> from ssgd_optax.privacy import add_gaussian_noise
    >>> tx = optax.chain(add_gaussian_noise(1.0, 0.1, 32.0, key=jax.random.key(0)),
    ...                  optax.sgd(0.1))
    >>> params = {'w': jnp.zeros(3)}
    >>> state = tx.init(params)
    >>> updates, state = tx.update({'w': jnp.ones(3)}, state)
    >>> updates['w'].shape
    (3,)
  """
  if mechanism is not None:
    given = [n for n, v in (('noise_multiplier', noise_multiplier),
                            ('sensitivity', sensitivity)) if v is not None]
    if given:
      raise ValueError(f'add_gaussian_noise got mechanism= and {" and ".join(given)}: pass '
                       'either the mechanism or the numbers, not both.')
    if not (hasattr(mechanism, 'noise_multiplier') and hasattr(mechanism, 'sensitivity')
            and hasattr(mechanism, 'num_releases')):
      raise TypeError('mechanism must be a Gaussian mechanism object (noise_multiplier, '
                      f'sensitivity, num_releases); got {type(mechanism).__name__}.')
    if mechanism.noise_multiplier is None:
      raise ValueError('mechanism.noise_multiplier is None: calibrate it first '
                       '(calibrate_noise_multiplier(..., mechanism=m)) and set it with '
                       'm._replace(noise_multiplier=z).')
    noise_multiplier, sensitivity = mechanism.noise_multiplier, mechanism.sensitivity
  if noise_multiplier is None:
    raise ValueError('add_gaussian_noise needs noise_multiplier (z >= 0) or mechanism=; '
                     'got neither.')
  if expected_batch_size is None:
    raise ValueError('add_gaussian_noise needs expected_batch_size (Bbar = q N > 0).')
  _validation.check_nonnegative('noise_multiplier', noise_multiplier)
  _validation.check_positive('expected_batch_size', expected_batch_size)
  for leaf in jax.tree.leaves(sensitivity):
    _validation.check_nonnegative('sensitivity', leaf)
  if sensitivity is None:
    raise ValueError('sensitivity must be a number or a tree of numbers; got None.')
  _validation.check_axis_name('axis_name', axis_name)
  key = _keys.check_key(key, 'key')

  def init_fn(params):
    del params
    # A fresh buffer: the caller may donate the state and call init again.
    return GaussianNoiseState(key=_keys.copy_key(key), count=jnp.zeros([], jnp.int32))

  def update_fn(updates, state, params=None):
    del params
    leaves, treedef = jax.tree.flatten(updates)
    if _is_scalar(sensitivity):
      sens = [sensitivity] * len(leaves)
    else:
      try:
        sens = treedef.flatten_up_to(sensitivity)
      except (ValueError, TypeError) as e:
        raise ValueError(
            'sensitivity must be a scalar or a tree with the structure of the updates '
            f'(one scalar per leaf); structures differ: {e}') from None
    next_key, step_key = _keys.split_step(state.key)
    dtypes = [jnp.promote_types(g.dtype, jnp.float32) for g in leaves]
    stds = [jnp.asarray(noise_multiplier, d) * jnp.asarray(s, d) for s, d in zip(sens, dtypes)]
    out = noisy_mean(leaves, stds, step_key, expected_batch_size=expected_batch_size,
                     axis_name=axis_name)
    new_state = GaussianNoiseState(key=next_key, count=optax.safe_increment(state.count))
    return jax.tree.unflatten(treedef, out), new_state

  return optax.GradientTransformation(init_fn, update_fn)
