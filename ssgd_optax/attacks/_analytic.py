# Copyright 2026 The ssgd_optax Authors. Licensed under the Apache License 2.0.
r"""Closed-form recovery of a single input from a fully connected layer with bias.

For ``z = x W + b`` (Flax ``Dense``: kernel ``W[in, out]``) and one example,
``dL/dW[:, j] = x * dL/db[j]`` for every output unit ``j``, so every unit with
``dL/db[j] != 0`` reveals ``x`` exactly. Combining all units in least squares,

.. math:: \hat x = \frac{\sum_j (\partial L/\partial W)_{:, j}\,
                         (\partial L/\partial b)_j}{\sum_j (\partial L/\partial b)_j^2}.

If ``W`` and ``b`` were rescaled by different positive factors (SSGD with
``scope="per_leaf"``), ``x_hat`` is ``c x`` for an unknown ``c > 0``;
``rescale="max"`` fixes ``c`` by assuming the brightest input entry equals the
upper bound (true for most images). With ``B > 1`` examples the result is a
``dL/db``-weighted mixture of the inputs.
"""

from __future__ import annotations

from typing import Any, Optional

import jax
import jax.numpy as jnp

from ssgd_optax.attacks import _engine
from ssgd_optax.attacks import _threat as threat

__all__ = ['ANALYTIC_RESCALES', 'invert_dense', 'analytic_attack']

# The ``rescale`` choices of :func:`analytic_attack` (``attacks.IMPRINT_RESCALES`` are the
# imprint attack's).
ANALYTIC_RESCALES = ('none', 'max')


def invert_dense(weight_grad: jax.Array, bias_grad: jax.Array) -> jax.Array:
  """The layer input ``x`` from ``dL/dW[in, out]`` and ``dL/db[out]``.

  Args:
    weight_grad: ``[in, out]`` kernel gradient.
    bias_grad: ``[out]`` bias gradient.

  Returns:
    ``float32[in]``; zeros if the bias gradient is all zero (nothing to
    divide by), never NaN.

  Example:

  >>> import jax.numpy as jnp
  >>> x = jnp.array([0.5, 2.0]); db = jnp.array([0.3, -1.0, 0.0])
  >>> invert_dense(jnp.outer(x, db), db)
  Array([0.5, 2. ], dtype=float32)
  """
  w = jnp.asarray(weight_grad, jnp.float32)
  b = jnp.asarray(bias_grad, jnp.float32)
  if w.ndim != 2 or b.shape != (w.shape[1],):
    raise ValueError(f'expected weight_grad [in, out] and bias_grad [out]; got '
                     f'{w.shape} and {b.shape}.')
  denom = jnp.sum(b * b)
  return jnp.where(denom > 0, (w @ b) / jnp.where(denom > 0, denom, 1), 0.0)


def _leaf(update: Any, path: str) -> jax.Array:
  flat = jax.tree_util.tree_flatten_with_path(update)[0]
  for p, x in flat:
    if jax.tree_util.keystr(p) == path:
      return jnp.asarray(x)
  raise ValueError(f'path {path!r} names no leaf; leaves are '
                   f'{[jax.tree_util.keystr(p) for p, _ in flat]}.')


def analytic_attack(apply_fn: threat.ApplyFn,
                    observation: threat.Observation,
                    *,
                    weight_path: str,
                    bias_path: str,
                    rescale: str = 'none',
                    label_path: Optional[str] = None) -> threat.AttackResult:
  """Reconstructs the input of a model whose first layer is ``Dense`` with bias.

  Args:
    apply_fn: ``(params, x) -> logits``; its first layer maps the flattened
      input through the kernel at ``weight_path``.
    observation: the attacker's observation (one example for exact
      recovery).
    weight_path: ``jax.tree_util.keystr`` of the first kernel leaf.
    bias_path: ``jax.tree_util.keystr`` of its bias leaf.
    rescale: ``"none"`` or ``"max"`` (scale so the largest entry equals the
      upper bound; undoes an unknown positive factor).
    label_path: the classifier leaf for label recovery.

  Returns:
    An :class:`~ssgd_optax.attacks.AttackResult` (one reconstruction,
    repeated ``B`` times, clipped to ``bounds``; labels by iDLG/count).

  Example:

  >>> import jax, jax.numpy as jnp
  >>> from ssgd_optax import attacks
  >>> f = lambda p, x: jax.nn.relu(x.reshape(len(x), -1) @ p['w'] + p['b']) @ p['v']
  >>> p = {'w': jax.random.normal(jax.random.key(0), (4, 6)), 'b': jnp.ones(6),
  ...      'v': jax.random.normal(jax.random.key(1), (6, 3))}
  >>> x = jnp.array([[[0.1, 0.2], [0.3, 0.4]]])
  >>> obs = attacks.observe(f, p, x, jnp.array([0]))
  >>> r = attacks.analytic_attack(f, obs, weight_path="['w']", bias_path="['b']")
  >>> bool(jnp.allclose(r.inputs, x, atol=1e-5))
  True
  """
  from ssgd_optax.attacks import _labels as labels_lib
  _engine.check_observation(apply_fn, observation, 'analytic_attack')
  if rescale not in ANALYTIC_RESCALES:
    raise ValueError(f'rescale must be one of {", ".join(map(repr, ANALYTIC_RESCALES))}; '
                     f'got {rescale!r}.')
  obs = observation
  x = invert_dense(_leaf(obs.update, weight_path), _leaf(obs.update, bias_path))
  size = 1
  for d in obs.input_shape:
    size *= d
  if x.shape != (size,):
    raise ValueError(f'the layer at {weight_path!r} has {x.shape[0]} inputs but one '
                     f'example has {size} entries ({obs.input_shape}).')
  low, high = obs.bounds
  if rescale == 'max':
    m = jnp.max(x)
    x = jnp.where(m > 0, x * (high / jnp.where(m > 0, m, 1)), x)
  x = jnp.clip(x.reshape(obs.input_shape), low, high)
  inputs = jnp.broadcast_to(x, (obs.num_examples, *obs.input_shape))
  labels = obs.labels
  if labels is None:
    labels = labels_lib.recover_labels(obs.update, _engine.num_classes_of(apply_fn, obs),
                                       obs.num_examples, path=label_path)
  return threat.AttackResult(inputs, jnp.asarray(labels, jnp.int32),
                             jnp.zeros((0,), jnp.float32), jnp.zeros((), jnp.float32))
