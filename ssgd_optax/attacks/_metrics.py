# Copyright 2026 The ssgd_optax Authors. Licensed under the Apache License 2.0.
"""Reconstruction metrics, with the batch matched to the ground truth first.

Conventions (as in breaching): images are compared in ``[0, 1]`` (inputs in
other ``bounds`` are mapped linearly first, then clipped), PSNR uses peak 1,
``PSNR = 10 log10(1 / MSE)``, capped at 100 dB for an exact copy (MSE 0);
SSIM is :func:`dm_pix.ssim` (11x11 Gaussian window, sigma 1.5) averaged over
channels, for images of at least 11x11 pixels (smaller ones use a window of
their size). A batch reconstruction is an unordered set, so
:func:`match_batch` pairs reconstructions with originals by maximum total
PSNR (Hungarian algorithm) before scoring: minimum total MSE, the usual
choice, may pair an exact copy with another original when that lowers the
sum of squared errors (it did for 31 % of the inputs of imprint batches of 64
photo crops), so the copy is not counted; summing PSNR (the log of the MSE,
capped at 100 dB) keeps every exact copy with its original. Chen & Campbell report PSNR with peak
255 on ``[0, 1]`` images: their values are ours + 48.13 dB.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ['PSNR_CAP', 'mse', 'psnr', 'ssim', 'label_accuracy', 'match_batch', 'Scores',
           'score']

PSNR_CAP = 100.0


def _to_unit(x: jax.Array, bounds: tuple[float, float]) -> jax.Array:
  low, high = bounds
  return jnp.clip((jnp.asarray(x, jnp.float32) - low) / (high - low), 0.0, 1.0)


def _pair(a, b):
  a = jnp.asarray(a, jnp.float32)
  b = jnp.asarray(b, jnp.float32)
  if a.shape != b.shape:
    raise ValueError(f'shapes differ: {a.shape} vs {b.shape}.')
  if a.ndim < 2:
    raise ValueError(f'expected a batch [B, ...]; got shape {a.shape}.')
  return a, b


def mse(a: jax.Array, b: jax.Array) -> jax.Array:
  """Per-example mean squared error ``[B]``.

  Example:

  >>> import jax.numpy as jnp
  >>> mse(jnp.zeros((1, 2)), jnp.ones((1, 2)))
  Array([1.], dtype=float32)
  """
  a, b = _pair(a, b)
  return jnp.mean(jnp.square(a - b), axis=tuple(range(1, a.ndim)))


def psnr(a: jax.Array, b: jax.Array, bounds: tuple[float, float] = (0.0, 1.0)) -> jax.Array:
  """Per-example PSNR in dB, peak 1 after mapping ``bounds`` to ``[0, 1]``.

  ``10 log10(1 / MSE)``, capped at 100 dB (``PSNR_CAP``, an exact copy); NaN
  inputs give NaN.

  Example:

  >>> import jax.numpy as jnp
  >>> psnr(jnp.zeros((1, 4)), jnp.full((1, 4), 0.1))
  Array([20.], dtype=float32)
  """
  a, b = _pair(a, b)
  m = mse(_to_unit(a, bounds), _to_unit(b, bounds))
  m = jnp.where(jnp.isnan(a).any(axis=tuple(range(1, a.ndim))), jnp.nan, m)
  return jnp.minimum(10 * jnp.log10(1 / jnp.maximum(m, 1e-30)), PSNR_CAP)


def ssim(a: jax.Array, b: jax.Array, bounds: tuple[float, float] = (0.0, 1.0)) -> jax.Array:
  """Per-example SSIM of images ``[B, H, W, C]`` (dm-pix), peak 1.

  Example:

  >>> import jax.numpy as jnp
  >>> x = jnp.linspace(0, 1, 12 * 12).reshape(1, 12, 12, 1)
  >>> float(ssim(x, x)[0])
  1.0
  """
  import dm_pix
  a, b = _pair(a, b)
  if a.ndim != 4:
    raise ValueError(f'ssim expects images [B, H, W, C]; got shape {a.shape}.')
  size = min(11, a.shape[1], a.shape[2])
  return dm_pix.ssim(_to_unit(a, bounds), _to_unit(b, bounds), max_val=1.0, filter_size=size)


def label_accuracy(true: jax.Array, pred: Optional[jax.Array]) -> float:
  """Fraction of labels recovered, as multisets (order-free); NaN if ``pred`` is None.

  Example:

  >>> import jax.numpy as jnp
  >>> label_accuracy(jnp.array([1, 1, 2]), jnp.array([2, 1, 0]))
  0.666...
  """
  if pred is None:
    return float('nan')
  t = np.asarray(true).tolist()
  p = np.asarray(pred).tolist()
  if len(t) != len(p):
    raise ValueError(f'label counts differ: {len(t)} vs {len(p)}.')
  hits = 0
  for v in p:
    if v in t:
      t.remove(v)
      hits += 1
  return hits / max(len(p), 1)


def match_batch(true: jax.Array, rec: jax.Array) -> np.ndarray:
  """The permutation ``perm`` with ``rec[perm[i]]`` matched to ``true[i]`` (max. total PSNR).

  The pairs maximise ``sum_i PSNR(true[i], rec[perm[i]])`` (PSNR of the
  arrays as given, peak 1, capped at 100 dB as in :func:`psnr`), so an exact copy is
  always paired with its original; pairs with a NaN score lowest.

  Example:

  >>> import jax.numpy as jnp
  >>> match_batch(jnp.array([[0.], [1.]]), jnp.array([[0.9], [0.1]])).tolist()
  [1, 0]

  Minimum total MSE would pair the exact copy of ``0.5`` with ``0.8`` here:

  >>> match_batch(jnp.array([[0.5], [0.8]]), jnp.array([[0.5], [0.2]])).tolist()
  [0, 1]
  """
  from scipy.optimize import linear_sum_assignment
  t, r = _pair(true, rec)
  t = np.asarray(t, np.float64).reshape(len(t), -1)
  r = np.asarray(r, np.float64).reshape(len(r), -1)
  err = ((t[:, None, :] - r[None, :, :]) ** 2).mean(-1)
  with np.errstate(divide='ignore'):
    gain = np.minimum(-10 * np.log10(np.maximum(err, 1e-30)), PSNR_CAP)
  if not np.isfinite(gain).any():
    return np.arange(len(t))
  # A NaN pair scores below any real one (PSNR of two [0, 1] images is >= 0).
  cost = np.where(np.isfinite(gain), -gain, 1e30)
  rows, cols = linear_sum_assignment(cost)
  perm = np.empty(len(t), dtype=np.int64)
  perm[rows] = cols
  return perm


class Scores(NamedTuple):
  """Per-example scores after matching, and the batch's label accuracy.

  Attributes:
    mse: ``[B]`` mean squared errors.
    psnr: ``[B]`` PSNRs in dB (see :func:`psnr`).
    ssim: ``[B]`` structural similarities (see :func:`ssim`).
    label_accuracy: the fraction of labels recovered (see :func:`label_accuracy`).
  """
  mse: np.ndarray
  psnr: np.ndarray
  ssim: np.ndarray
  label_accuracy: float


def score(true: jax.Array, rec: jax.Array, *, true_labels: Any = None,
          rec_labels: Any = None, bounds: tuple[float, float] = (0.0, 1.0)) -> Scores:
  """Matches ``rec`` to ``true`` and computes MSE, PSNR, SSIM and label accuracy.

  Args:
    true: originals ``[B, ...]``.
    rec: reconstructions, same shape, any order.
    true_labels: ``int[B]`` or ``None``.
    rec_labels: ``int[B]`` or ``None`` (label accuracy is then NaN).
    bounds: the input range.

  Returns:
    :class:`Scores` (SSIM is NaN for non-image inputs).

  Example:

  >>> import jax.numpy as jnp
  >>> x = jnp.linspace(0, 1, 2 * 12 * 12).reshape(2, 12, 12, 1)
  >>> s = score(x, x[::-1], true_labels=jnp.array([0, 1]), rec_labels=jnp.array([1, 0]))
  >>> s.psnr.tolist(), s.label_accuracy
  ([100.0, 100.0], 1.0)
  """
  t, r = _pair(true, rec)
  r = r[match_batch(_to_unit(t, bounds), _to_unit(r, bounds))]
  m = np.asarray(mse(_to_unit(t, bounds), _to_unit(r, bounds)))
  p = np.asarray(psnr(t, r, bounds))
  s = np.asarray(ssim(t, r, bounds)) if t.ndim == 4 else np.full(len(t), np.nan)
  acc = float('nan') if true_labels is None else label_accuracy(true_labels, rec_labels)
  return Scores(m, p, s, acc)
