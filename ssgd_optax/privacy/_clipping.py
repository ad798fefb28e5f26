# Copyright 2026 The ssgd_optax Authors. Licensed under the Apache License 2.0.
r"""Per-example clipping primitives of backpropagation clipping (Stevens et al.).

Backpropagation clipping bounds what one example adds to a layer's weight
gradient without computing per-example gradients: the layer's **input** is
clipped in the forward pass (:func:`clip_inputs`, ``||x_i|| <= C_in``) and the
**cotangent** of its output in the backward pass (:func:`clip_upstream`,
``||g_i|| <= C_out``). For a dense layer the per-example kernel gradient is
``x_i g_i^T`` with Frobenius norm ``||x_i|| ||g_i|| <= C_in C_out``; one batched
``jax.grad`` of a *sum-reduced* loss then equals the sum of these clipped
per-example terms (the batch axis is never mixed).

For a convolution, the kernel gradient of output channel ``c`` is
``sum_p g_{i,p,c} patch_p(x_i)`` over spatial positions ``p``. Patches overlap,
so the plain L2 norm of ``g_i`` does **not** bound it (a constant image with a
coherent gradient exceeds ``C_in C_out`` by about the number of positions a
pixel is seen from); the mixed norm

.. math:: \|g_i\|_{1,2} = \sqrt{\textstyle\sum_c \big(\sum_p |g_{i,p,c}|\big)^2}

does, because ``||patch_p(x_i)|| <= ||x_i||``. ``norm="conv"`` clips that norm
(L1 over every axis between the batch and the last, L2 over the last, channels
last as in Flax); for a 2-D ``[B, D]`` array it equals the L2 norm, and it is
also the right norm for a dense layer applied to ``[B, T, D]`` inputs.

Edge cases of the per-example scale ``min(1, C / n_i)`` (``n_i`` is the norm):

=========================  =================================================
example                    result
=========================  =================================================
``n_i <= C``               unchanged (bit for bit)
``n_i > C``, finite        rescaled to norm ``C`` (to float rounding)
all zeros                  unchanged zeros, never NaN; finite gradients
huge / tiny entries        the norm is computed on ``x / max|x|``, so no
                           overflow or underflow of the sum of squares;
                           ``C / n_i`` below float32's normal range (norms
                           beyond ``~1e38 C``) flushes to zero: such an
                           example becomes zeros, never unclipped
``C == 0``                 zeros
any NaN or +-Inf           ``nonfinite="drop"`` (default): zeros for that
                           example (its contribution is dropped, the others
                           are untouched, gradients stay finite);
                           ``nonfinite="propagate"``: NaN for that example
=========================  =================================================

Why dropping is the default: a NaN that reaches a released sum makes the whole
release NaN, which tells an observer with certainty that the offending example
was in the batch, so no (epsilon, delta) claim survives it. A dropped example
contributes zero, which is within every sensitivity bound. ``"propagate"``
exists for debugging only and **voids the privacy guarantee**.

Norms are accumulated in float32 (float64 kept); the scale is applied in the
input's dtype, so bfloat16/float16 arrays stay in their dtype.
"""

from __future__ import annotations

import functools
from typing import Any, Literal

import jax
import jax.numpy as jnp

from ssgd_optax import _batch
from ssgd_optax import _numerics
from ssgd_optax import _validation

__all__ = ['NONFINITE', 'NORMS', 'clip_inputs', 'clip_upstream', 'clip_per_example',
           'per_example_norm']

NORMS = ('l2', 'conv')
Norm = Literal['l2', 'conv']
# 'drop' keeps the DP guarantee; 'propagate' (NaN out) voids it.
NONFINITE = ('drop', 'propagate')
Nonfinite = Literal['drop', 'propagate']


def _check_array(name: str, x: Any) -> jax.Array:
  x = jnp.asarray(x)
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise TypeError(f'{name} must be a real floating-point array; got dtype {x.dtype}.')
  if x.ndim < 1:
    raise ValueError(f'{name} needs a leading batch axis; got a scalar.')
  return x


def _check_bound(name: str, bound: Any) -> None:
  _validation.check_nonnegative(name, bound)


def per_example_norm(x: jax.Array, norm: Norm = 'l2') -> jax.Array:
  r"""Per-example norm over all non-batch axes: L2 or the conv mixed norm.

  ``"l2"``: :math:`n_i = \|x_i\|_2`; ``"conv"``: :math:`n_i = \sqrt{\sum_c
  (\sum_p |x_{i,p,c}|)^2}` with ``p`` every axis between the first and the
  last. Computed in float32 without overflow or underflow (``"l2"``: scaled
  sums of squares, ``ssgd_optax._numerics``; ``"conv"``: on
  ``x_i / max|x_i|``); zeros give ``0``, NaN give NaN, Inf give NaN
  (``"l2"``) or Inf (``"conv"``), and a norm beyond float range gives inf.

  Args:
    x: array ``[B, ...]`` (for ``"conv"``, ``[B, ..., C]``).
    norm: ``"l2"`` or ``"conv"``.

  Returns:
    float32 (or float64) array ``[B]`` of norms.

  Example:
    >>> import jax.numpy as jnp
    >>> from ssgd_optax.privacy import per_example_norm
    >>> x = jnp.ones((2, 3, 3, 2))   # two 3x3 images with 2 channels
    >>> per_example_norm(x, 'l2')[0], per_example_norm(x, 'conv')[0]
    (Array(4.2426405, dtype=float32), Array(12.727922, dtype=float32))
  """
  _validation.check_choice('norm', norm, NORMS)
  x = _check_array('x', x)
  acc = jnp.promote_types(x.dtype, jnp.float32)
  x = x.astype(acc)
  axes = tuple(range(1, x.ndim))
  if not axes:
    return jnp.abs(x)
  if norm == 'l2':
    # The package's safe norm (ssgd_optax._numerics): one pass, no max|x|.
    [pre], [root] = _numerics.group_scales([x], [acc], per_example=True)
    return root / pre
  m = jnp.max(jnp.abs(x), axis=axes, keepdims=True)
  # Dividing by max|x| keeps the sum of squares finite and away from the
  # subnormals; NaN/Inf fall through to a NaN/Inf norm.
  safe = jnp.where((m > 0) & jnp.isfinite(m), m, 1)
  y = divide_by_scale(x, safe)
  if norm == 'conv' and x.ndim > 2:
    y = jnp.sum(jnp.abs(y), axis=tuple(range(1, x.ndim - 1)))
  sq = jnp.sum(y * y, axis=tuple(range(1, y.ndim)))
  # sqrt with a finite (zero) gradient at 0, so all-zero examples stay NaN-free.
  n = jnp.where(sq > 0, jnp.sqrt(jnp.where(sq > 0, sq, 1)), sq)
  return n * safe.reshape(-1)


def divide_by_scale(x: jax.Array, m: jax.Array) -> jax.Array:
  """``x / m`` for ``m`` up to float max, without a subnormal reciprocal.

  XLA turns ``x / m`` into ``x * (1 / m)``, and ``1 / m`` is subnormal, so
  flushed to zero, for ``m > 2**126``: a huge example would get norm 0 and
  pass unclipped. Two divisions by ``sqrt(m)`` keep every factor normal.
  """
  root = jnp.sqrt(m)
  return (x / root) / root


def _scale(n: jax.Array, bound: Any, dtype: Any, bad: Any = jnp.nan) -> jax.Array:
  """min(1, C / n) with 1 at n == 0 and ``bad`` for a non-finite n."""
  bound = jnp.asarray(bound, n.dtype)
  scale = jnp.where(n > bound, bound / jnp.where(n > 0, n, 1), 1.0)
  scale = jnp.where(jnp.isfinite(n), scale, bad)
  return scale.astype(dtype)


def _rows(v: jax.Array, ndim: int) -> jax.Array:
  return v.reshape((-1,) + (1,) * (ndim - 1))


def clip_per_example(x: jax.Array, bound: Any, norm: Norm = 'l2',
                     nonfinite: Nonfinite = 'drop') -> jax.Array:
  r"""Rescales each example ``x_i`` to norm at most ``bound`` (plain function).

  .. math:: x_i \leftarrow x_i \cdot \min\big(1, C / \|x_i\|\big)

  Differentiable like any JAX function (the gradient flows through the
  scale); see the module docstring for the edge cases. An example with a
  NaN/Inf entry becomes zeros (``nonfinite="drop"``, the default) and gets a
  zero, finite gradient.

  Args:
    x: array with a leading batch axis.
    bound: ``C >= 0`` (may be traced).
    norm: ``"l2"`` or ``"conv"`` (see :func:`per_example_norm`).
    nonfinite: ``"drop"`` (default: a non-finite example becomes zeros) or
      ``"propagate"`` (it becomes NaN; **voids any DP guarantee** built on
      this clip, for debugging only).

  Returns:
    The clipped array, same shape and dtype.

  Example:
    >>> import jax.numpy as jnp
    >>> from ssgd_optax.privacy import clip_per_example
    >>> clip_per_example(jnp.array([[3.0, 4.0], [0.3, 0.4]]), 1.0)
    Array([[0.6, 0.8],
           [0.3, 0.4]], dtype=float32)
  """
  _check_bound('bound', bound)
  _validation.check_choice('nonfinite', nonfinite, NONFINITE)
  x = _check_array('x', x)
  if nonfinite == 'propagate':
    n = per_example_norm(x, norm)
    # NaN only for examples with a NaN/Inf entry; a finite example whose norm
    # overflows float32 gets scale C / inf = 0.
    bad = jnp.where(_batch.finite_examples(x), 0.0, jnp.nan)
    return x * _rows(_scale(n, bound, x.dtype, bad), x.ndim)
  ok = _rows(_batch.finite_examples(x), x.ndim)
  # Two wheres: the inner one keeps NaN/Inf out of the differentiated branch,
  # otherwise its zero cotangent times an infinite partial is NaN again.
  safe = jnp.where(ok, x, 0)
  # Finite entries near float max can still give an infinite norm: scale 0.
  clipped = safe * _rows(_scale(per_example_norm(safe, norm), bound, x.dtype, 0.0), x.ndim)
  return jnp.where(ok, clipped, 0)


def clip_inputs(x: jax.Array, bound: Any, nonfinite: Nonfinite = 'drop') -> jax.Array:
  r"""Forward per-example L2 clip of a layer's input: ``||x_i||_2 <= C_in``.

  .. math:: \tilde x_i = x_i \cdot \min\big(1, C_{in} / \|x_i\|_2\big)

  Part of the graph (differentiable), so the gradients of earlier layers are
  those of the clipped network.

  Args:
    x: the layer input ``[B, ...]``.
    bound: ``C_in >= 0``.
    nonfinite: ``"drop"`` (default: an example with a NaN/Inf entry becomes
      zeros) or ``"propagate"`` (NaN; voids the guarantee).

  Returns:
    The clipped input.

  Example:
    >>> import jax.numpy as jnp
    >>> from ssgd_optax.privacy import clip_inputs
    >>> float(jnp.linalg.norm(clip_inputs(jnp.full((1, 4, 4, 1), 9.0), 3.0)))
    3.0
  """
  return clip_per_example(x, bound, 'l2', nonfinite)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _clip_upstream(z: jax.Array, bound: jax.Array, norm: str, nonfinite: str) -> jax.Array:
  del bound, norm, nonfinite
  return z


def _clip_upstream_fwd(z, bound, norm, nonfinite):
  del norm, nonfinite
  return z, bound


def _clip_upstream_bwd(norm, nonfinite, bound, g):
  # The bound gets no gradient: it is a hyper-parameter, not a model input.
  return clip_per_example(g, bound, norm, nonfinite), jnp.zeros_like(bound)


_clip_upstream.defvjp(_clip_upstream_fwd, _clip_upstream_bwd)


def clip_upstream(z: jax.Array, bound: Any, norm: Norm = 'l2',
                  nonfinite: Nonfinite = 'drop') -> jax.Array:
  r"""Identity forward; clips the cotangent of ``z`` per example backward.

  With :math:`g_i = \partial L / \partial z_i`, the backward pass returns

  .. math:: \tilde g_i = g_i \cdot \min\big(1, C_{out} / \|g_i\|\big)

  with ``||.||`` the L2 norm (``norm="l2"``) or the conv mixed norm
  (``norm="conv"``: L1 over spatial axes, L2 over channels), which is what
  bounds a convolution kernel's gradient by ``C_in C_out``. Apply it to a
  layer's pre-activation output; the clipped cotangent keeps propagating to
  earlier layers. Use a **sum**-reduced loss (masked for padded rows). A
  cotangent example with a NaN/Inf entry is replaced by zeros (``"drop"``),
  so one bad example cannot turn the gradient sum into NaN.

  Args:
    z: the layer output ``[B, ...]`` (channels last for ``"conv"``).
    bound: ``C_out >= 0`` (may be traced).
    norm: ``"l2"`` or ``"conv"``.
    nonfinite: ``"drop"`` (default) or ``"propagate"`` (voids the guarantee).

  Returns:
    ``z`` unchanged.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from ssgd_optax.privacy import clip_upstream
    >>> f = lambda z: jnp.sum(clip_upstream(z, 1.0) * jnp.array([[3.0, 4.0]]))
    >>> jax.grad(f)(jnp.zeros((1, 2)))
    Array([[0.6, 0.8]], dtype=float32)
  """
  _validation.check_choice('norm', norm, NORMS)
  _validation.check_choice('nonfinite', nonfinite, NONFINITE)
  _check_bound('bound', bound)
  z = _check_array('z', z)
  return _clip_upstream(z, jnp.asarray(bound, jnp.promote_types(z.dtype, jnp.float32)), norm,
                        nonfinite)
