# Copyright 2026 The ssgd_optax Authors. Licensed under the Apache License 2.0.
r"""The imprint attack of a malicious server ("Robbing the Fed", Fowl et al., ICLR 2022).

Threat model: the server may choose the model it sends. It inserts an
*imprint module* in front of the model: a linear layer of ``width`` units, of
which ``bins`` are live, each row the same measurement vector ``w`` (a linear
statistic ``s(x) = <w, x>``, e.g. mean brightness) and biases
``b_i = -t_i`` at ascending thresholds ``t_1 < ... < t_k`` (quantiles of the
statistic's distribution), then a ReLU:

.. math:: h_i(x) = \mathrm{ReLU}(s(x) - t_i),\qquad
          x' = x + \gamma\, \tfrac{1}{k}\textstyle\sum_i h_i(x)\, v,

and the original model runs on ``x'`` (``v`` a fixed unit vector, ``gamma``
the gain). Every unit sees the same cotangent ``c_n`` of example ``n``, so
the batch gradient of row ``i`` is a sum over the examples whose statistic
exceeds ``t_i``:

.. math:: \frac{\partial L}{\partial W_i} = \sum_{n: s(x_n) > t_i} c_n x_n,
          \qquad \frac{\partial L}{\partial b_i} = \sum_{n: s(x_n) > t_i} c_n,

and consecutive differences isolate bin ``i = (t_i, t_{i+1}]``: an input
alone in its bin is read off exactly as

.. math:: \hat x = \frac{\partial L/\partial W_i - \partial L/\partial W_{i+1}}
                        {\partial L/\partial b_i - \partial L/\partial b_{i+1}}.

Defences that rescale a layer's weight and bias gradients by one factor
(SSGD ``"global"`` and ``"per_layer"``; per-example unit normalisation)
leave the ratio exact. Per-leaf SSGD multiplies it by one unknown positive
scalar, which ``rescale="max"`` removes from the data range (the brightest
recovered entry is the upper bound) and ``rescale="statistic"`` from the bins
(the factor that puts the most recovered statistics inside their own bins). Through secure aggregation the server
sees the sum of the participants' updates: the bins spread over the union
of their batches and still isolate inputs (``rescale="max_each"`` when each
participant's per-leaf factor differs). Noise calibrated for DP drowns the
differences.

For uniform binning (each input lands in each bin with probability
``1/k``) the expected number of inputs alone in their bin is
``B (1 - 1/k)^(B-1)`` (:func:`expected_recovered`). Thresholds estimated from
a finite public sample bin the victims' data less evenly, so fewer are alone:
measured on 16x16 digits and photo crops (1,024 bins, 512 public images) the
uniform value is an upper bound, above the measured fraction by 0.02-0.06 at
``B = 64`` and 0.12-0.14 at ``B = 256``;
``expected_recovered(..., reference_bins=imprint_bins(model, held_out))``,
from a second public sample, came within 0.05 (``benchmarks/README.md``,
section 5b). Every isolated input was read off as an exact copy.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from ssgd_optax import _keys
from ssgd_optax import _validation
from ssgd_optax.attacks import _engine
from ssgd_optax.attacks import _threat as threat

__all__ = ['STATISTICS', 'IMPRINT_RESCALES', 'ImprintedModel', 'measurement_vector',
           'imprint_thresholds', 'imprint_model', 'imprint_readout', 'imprint_attack',
           'imprint_bins', 'expected_recovered', 'secure_aggregate']

STATISTICS = ('mean', 'axis_mean', 'random')
# The ``rescale`` choices of :func:`imprint_attack` (``attacks.ANALYTIC_RESCALES`` are the
# analytic attack's).
IMPRINT_RESCALES = ('none', 'max', 'max_each', 'statistic', 'statistic_each')
# A dead unit (width > bins) never fires: zero row, bias -1.
_DEAD_BIAS = -1.0


class ImprintedModel(NamedTuple):
  """The model a malicious server sends.

  Attributes:
    apply_fn: ``(params, x) -> logits``: the imprint module, then the original
      model.
    params: ``{'imprint': {'kernel': [d, width], 'bias': [width]}, 'model':
      original params}``.
    bins: the number of live units ``k`` (the first ``k`` columns).
    measurement: ``[*input_shape]`` the measurement vector ``w``.
    thresholds: ``float32[k]`` ascending thresholds ``t_i``.
  """
  apply_fn: threat.ApplyFn
  params: Any
  bins: int
  measurement: jax.Array
  thresholds: jax.Array


def _check_shape(input_shape: Any) -> tuple[int, ...]:
  if (not isinstance(input_shape, (tuple, list)) or not input_shape or
      not all(isinstance(d, (int, np.integer)) and not isinstance(d, bool) and d > 0
              for d in input_shape)):
    raise ValueError(f'input_shape must be a non-empty tuple of positive ints; got '
                     f'{input_shape!r}.')
  return tuple(int(d) for d in input_shape)


def measurement_vector(statistic: Any, input_shape: Sequence[int], *, axis: int = -1,
                       index: int = 0, key: Optional[jax.Array] = None) -> jax.Array:
  """The measurement vector ``w`` of a linear statistic ``s(x) = <w, x>``.

  Args:
    statistic: ``"mean"`` (mean of all entries: brightness), ``"axis_mean"``
      (mean of the entries at ``index`` along ``axis``, e.g. the red channel
      with ``axis=-1, index=0``), ``"random"`` (a random unit direction from
      ``key``), or an array of shape ``input_shape``.
    input_shape: the shape of one example, e.g. ``(32, 32, 3)``.
    axis: the axis of ``"axis_mean"``.
    index: the slice of ``"axis_mean"``.
    key: the key of ``"random"``.

  Returns:
    ``float32[*input_shape]``.

  Example:

  >>> measurement_vector('axis_mean', (2, 2, 3), index=1)[..., 1]
  Array([[0.25, 0.25],
         [0.25, 0.25]], dtype=float32)
  """
  shape = _check_shape(input_shape)
  if not isinstance(statistic, str):
    w = jnp.asarray(statistic, jnp.float32)
    if w.shape != shape:
      raise ValueError(
          f'statistic: a measurement array must have the shape of one example '
          f'{shape}; got {w.shape} (wrong axis order, e.g. channels first?).')
    if not bool(jnp.all(jnp.isfinite(w))) or not bool(jnp.any(w != 0)):
      raise ValueError('statistic: a measurement array must be finite and not all zero.')
    return w
  _validation.check_choice('statistic', statistic, STATISTICS)
  if statistic == 'mean':
    return jnp.full(shape, 1.0 / float(np.prod(shape)), jnp.float32)
  if statistic == 'random':
    k = _keys.check_key(key, 'key')
    w = jax.random.normal(k, shape, jnp.float32)
    return w / jnp.linalg.norm(w)
  _validation.check_int('axis', axis)
  if not -len(shape) <= axis < len(shape):
    raise ValueError(f'axis must index one of the {len(shape)} axes of input_shape '
                     f'{shape}; got {axis}.')
  _validation.check_int('index', index, minimum=0)
  if index >= shape[axis]:
    raise ValueError(f'index must be < {shape[axis]} (the size of axis {axis} of '
                     f'{shape}); got {index}.')
  sel = (jnp.arange(shape[axis]) == index).astype(jnp.float32)
  sel = sel.reshape([shape[axis] if a == axis % len(shape) else 1 for a in range(len(shape))])
  w = jnp.broadcast_to(sel, shape)
  return w / jnp.sum(w)


def imprint_thresholds(measurement: jax.Array, bins: int, *, reference: Any = None,
                       loc: Optional[float] = None, scale: Optional[float] = None,
                       bounds: tuple[float, float] = (0.0, 1.0)) -> jax.Array:
  r"""``bins`` ascending thresholds at equal-probability quantiles of the statistic.

  ``t_i = Q((i - 1) / k)`` for ``i = 1..k`` with ``Q`` the quantile function
  of ``s(x)`` (empirical on ``reference``, or Gaussian ``N(loc, scale^2)``);
  ``t_1`` is the smallest value ``s`` takes on the box ``bounds`` minus a
  margin, so every input fires unit 1 and falls in exactly one bin.

  Args:
    measurement: the measurement vector ``w`` (:func:`measurement_vector`).
    bins: ``k >= 1``.
    reference: ``[N, *w.shape]`` inputs the attacker has (public data); the
      empirical quantiles of their statistic.
    loc, scale: a Gaussian model of the statistic (if no ``reference``).
    bounds: the input range.

  Returns:
    ``float32[k]``.

  Example:

  >>> import jax.numpy as jnp
  >>> w = measurement_vector('mean', (2,))
  >>> ref = jnp.stack([jnp.full(2, v) for v in (0.1, 0.3, 0.5, 0.7)])
  >>> imprint_thresholds(w, 2, reference=ref)[1:]
  Array([0.4], dtype=float32)
  """
  _validation.check_int('bins', bins, minimum=1)
  w = np.asarray(measurement, np.float64)
  low, high = (float(b) for b in bounds)
  if not low < high:
    raise ValueError(f'bounds must be (low, high) with low < high; got {bounds!r}.')
  s_min = float(np.sum(np.minimum(w * low, w * high)))
  s_max = float(np.sum(np.maximum(w * low, w * high)))
  probs = np.arange(1, bins) / bins
  if reference is not None:
    ref = np.asarray(reference, np.float64)
    if ref.ndim != w.ndim + 1 or ref.shape[1:] != w.shape or ref.shape[0] < 1:
      raise ValueError(f'reference must be inputs [N, *{w.shape}] with N >= 1; got '
                       f'{ref.shape} (statistic on the wrong axis?).')
    stats = ref.reshape(len(ref), -1) @ w.reshape(-1)
    inner = np.quantile(stats, probs) if bins > 1 else np.zeros(0)
  elif loc is not None and scale is not None:
    _validation.check_positive('scale', scale)
    from scipy.special import ndtri
    inner = float(loc) + float(scale) * ndtri(probs)
  else:
    raise ValueError('imprint_thresholds needs the statistic\'s distribution: pass '
                     'reference= (inputs the attacker has) or loc= and scale= (Gaussian).')
  margin = 1e-3 * max(s_max - s_min, 1e-12)
  t = np.concatenate([[s_min - margin], np.clip(inner, s_min - margin / 2, None)])
  return jnp.asarray(np.maximum.accumulate(t), jnp.float32)


def imprint_model(apply_fn: threat.ApplyFn, params: Any, input_shape: Sequence[int], *,
                  bins: int, width: Optional[int] = None, statistic: Any = 'mean',
                  axis: int = -1, index: int = 0, reference: Any = None,
                  loc: Optional[float] = None, scale: Optional[float] = None,
                  gain: float = 1.0, bounds: tuple[float, float] = (0.0, 1.0),
                  key: jax.Array) -> ImprintedModel:
  """The model a malicious server sends: an imprint module in front of ``apply_fn``.

  Args:
    apply_fn: the original ``(params, x) -> logits``.
    params: its parameters.
    input_shape: one example's shape.
    bins: the number of bins ``k`` (live units); ``1 <= k <= width``.
    width: the imprint layer's width (default ``bins``); units beyond ``bins``
      are dead.
    statistic, axis, index: see :func:`measurement_vector`.
    reference, loc, scale: the statistic's distribution, see
      :func:`imprint_thresholds`.
    gain: ``gamma``, how strongly the module feeds into the model (the
      imprint gradients scale with it).
    bounds: the input range.
    key: seeds the direction ``v`` (and ``"random"`` statistics).

  Returns:
    An :class:`ImprintedModel`; the client computes its update on
    ``(apply_fn, params)`` and the server observes it with
    ``threat_model="malicious_server"``.

  Example:

  >>> import jax, jax.numpy as jnp
  >>> f = lambda p, x: x.reshape(len(x), -1) @ p
  >>> m = imprint_model(f, jnp.ones((4, 3)), (4,), bins=2, loc=2.0, scale=1.0,
  ...                   key=jax.random.key(0))
  >>> m.params['imprint']['kernel'].shape, m.apply_fn(m.params, jnp.ones((5, 4))).shape
  ((4, 2), (5, 3))
  """
  shape = _check_shape(input_shape)
  _validation.check_int('bins', bins, minimum=1)
  width = bins if width is None else width
  _validation.check_int('width', width, minimum=1)
  if bins > width:
    raise ValueError(f'bins must be <= width (the imprint layer has {width} units); got '
                     f'bins={bins}.')
  _validation.check_positive('gain', gain)
  if not callable(apply_fn):
    raise TypeError(f'apply_fn must be callable (params, x) -> logits; got '
                    f'{type(apply_fn).__name__}.')
  key = _keys.check_key(key, 'key')
  k_stat, k_dir = jax.random.split(key)
  w = measurement_vector(statistic, shape, axis=axis, index=index, key=k_stat)
  t = imprint_thresholds(w, bins, reference=reference, loc=loc, scale=scale, bounds=bounds)
  d = int(np.prod(shape))
  kernel = jnp.zeros((d, width), jnp.float32).at[:, :bins].set(w.reshape(d, 1))
  bias = jnp.full((width,), _DEAD_BIAS, jnp.float32).at[:bins].set(-t)
  v = jax.random.normal(k_dir, (d,), jnp.float32)
  v = v / jnp.linalg.norm(v)
  coef = float(gain) / bins

  def malicious_apply(p, x):
    flat = x.reshape(x.shape[0], -1)
    h = jax.nn.relu(flat @ p['imprint']['kernel'] + p['imprint']['bias'])
    x2 = flat + coef * jnp.sum(h, axis=-1, keepdims=True) * v
    return apply_fn(p['model'], x2.reshape(x.shape))

  try:
    jax.eval_shape(lambda: malicious_apply(
        {'imprint': {'kernel': kernel, 'bias': bias}, 'model': params},
        jnp.zeros((1, *shape), jnp.float32)))
  except (TypeError, ValueError) as e:
    raise ValueError(f'apply_fn cannot take inputs of input_shape {shape}: {e}') from e
  return ImprintedModel(malicious_apply,
                        {'imprint': {'kernel': kernel, 'bias': bias}, 'model': params},
                        bins, w, t)


def _imprint_leaves(update: Any, who: str) -> tuple[jax.Array, jax.Array]:
  imp = update.get('imprint') if isinstance(update, dict) else None
  if not isinstance(imp, dict) or 'kernel' not in imp or 'bias' not in imp:
    raise ValueError(f'{who}: the update has no imprint module (update["imprint"]["kernel"] '
                     'and ["bias"]); observe a model built by imprint_model.')
  w = jnp.asarray(imp['kernel'], jnp.float32)
  b = jnp.asarray(imp['bias'], jnp.float32)
  if w.ndim != 2 or b.shape != (w.shape[1],):
    raise ValueError(f'{who}: the imprint kernel must be [d, width] and its bias [width]; '
                     f'got {w.shape} and {b.shape}.')
  return w, b


def imprint_readout(update: Any, bins: int) -> tuple[jax.Array, jax.Array]:
  """Every bin's ratio and weight from an imprint module's gradients.

  ``x_i = dW_i - dW_{i+1}`` over ``db_i - db_{i+1}`` (the last bin: its own
  row), and the weight ``|db_i - db_{i+1}|`` (zero for an empty bin).

  Args:
    update: the shared update of an :class:`ImprintedModel`'s parameters.
    bins: the number of live units ``k``.

  Returns:
    ``(ratios float32[k, d], weights float32[k])``; the ratio of a bin with
    zero weight is 0 (never NaN).

  Example:

  >>> import jax.numpy as jnp
  >>> x = jnp.array([[1., 2.], [3., 4.]]); c = jnp.array([0.5, -2.])
  >>> fires = jnp.array([[1., 0.], [1., 1.]])  # input 0 in bin 0, input 1 in bin 1
  >>> u = {'imprint': {'kernel': x.T @ (c[:, None] * fires), 'bias': c @ fires}}
  >>> imprint_readout(u, 2)[0]
  Array([[1., 2.],
         [3., 4.]], dtype=float32)
  """
  w, b = _imprint_leaves(update, 'imprint_readout')
  _validation.check_int('bins', bins, minimum=1)
  if bins > w.shape[1]:
    raise ValueError(f'bins must be <= the imprint layer width {w.shape[1]}; got {bins}.')
  w = w[:, :bins].T
  b = b[:bins]
  dw = w - jnp.concatenate([w[1:], jnp.zeros_like(w[:1])])
  db = b - jnp.concatenate([b[1:], jnp.zeros_like(b[:1])])
  ok = db != 0
  ratios = jnp.where(ok[:, None], dw / jnp.where(ok, db, 1.0)[:, None], 0.0)
  return ratios, jnp.abs(db)


def imprint_attack(apply_fn: threat.ApplyFn, observation: threat.Observation, *,
                   bins: Optional[int] = None, rescale: str = 'none',
                   rtol: float = 1e-6, label_path: Optional[str] = None
                   ) -> threat.AttackResult:
  """Reads the batch's inputs off an imprint module's gradients.

  Takes the ``B`` bins with the largest ``|db_i - db_{i+1}|`` (ignoring
  bins below ``rtol`` times the largest: empty) and returns their ratios
  (:func:`imprint_readout`); an input alone in its bin is recovered exactly,
  a bin of several inputs gives a mixture. Slots left over (collisions) are
  filled with the middle of ``bounds``.

  Args:
    apply_fn: the :class:`ImprintedModel`'s apply function.
    observation: an observation of the imprinted model with
      ``threat_model="malicious_server"``.
    bins: the number of live units (default: the columns of the imprint
      kernel that are not all zero).
    rescale: undoes one unknown positive factor per leaf ratio (per-leaf
      SSGD): ``"none"``; ``"max"``: the factor that maps the typical
      (median over bins) brightest entry of a recovered input to the upper
      bound (exact when the inputs reach it); ``"statistic"``: the factor
      that puts the most recovered statistics inside their own bins (for
      any measurement vector, signs included; accurate to the narrowest
      bins' width); ``"max_each"`` / ``"statistic_each"``: one factor per
      recovered input (per-leaf SSGD through secure aggregation, one factor
      per participant; ``"statistic_each"`` moves the pooled factor into
      each input's own bin).
    rtol: bins whose weight is below ``rtol`` times the largest count as
      empty.
    label_path: the classifier leaf inside ``update['model']`` for label
      recovery (default: found by shape).

  Returns:
    An :class:`~ssgd_optax.attacks.AttackResult`: ``B`` inputs clipped to
    ``bounds``, labels by :func:`~ssgd_optax.attacks.recover_labels`
    (``"count"``) on the original model's last layer.

  Example:

  >>> import jax, jax.numpy as jnp
  >>> from ssgd_optax import attacks
  >>> f = lambda p, x: x.reshape(len(x), -1) @ p
  >>> x = jnp.array([[0.1, 0.2, 0.3], [0.9, 0.8, 0.7]])
  >>> p = jax.random.normal(jax.random.key(1), (3, 2))
  >>> m = attacks.imprint_model(f, p, (3,), bins=4, reference=x, key=jax.random.key(0))
  >>> obs = attacks.observe(m.apply_fn, m.params, x, jnp.array([0, 1]),
  ...                       threat_model='malicious_server')
  >>> r = attacks.imprint_attack(m.apply_fn, obs)
  >>> bool(jnp.allclose(jnp.sort(r.inputs, 0), jnp.sort(x, 0), atol=1e-5))
  True
  """
  from ssgd_optax.attacks import _labels as labels_lib
  if not isinstance(observation, threat.Observation):
    raise TypeError(f'imprint_attack: observation must be an ssgd_optax.attacks.Observation; '
                    f'got {type(observation).__name__}.')
  obs = observation
  if obs.threat_model != 'malicious_server':
    raise ValueError(
        f'imprint_attack: observation.threat_model must be "malicious_server" (the server '
        f'chose the parameters it sent); got {obs.threat_model!r}. Observe the model from '
        'imprint_model with observe(..., threat_model="malicious_server").')
  _imprint_leaves(obs.params, 'imprint_attack: observation.params')
  _engine.check_observation(apply_fn, obs, 'imprint_attack')
  _validation.check_choice('rescale', rescale, IMPRINT_RESCALES)
  _validation.check_nonnegative('rtol', rtol)
  kernel, _ = _imprint_leaves(obs.params, 'imprint_attack')
  d = int(np.prod(obs.input_shape))
  if kernel.shape[0] != d:
    raise ValueError(f'imprint_attack: the imprint kernel has {kernel.shape[0]} inputs but one '
                     f'example has {d} entries {obs.input_shape}.')
  if bins is None:
    bins = int(np.sum(np.any(np.asarray(kernel) != 0, axis=0)))
  _validation.check_int('bins', bins, minimum=1)
  if bins > kernel.shape[1]:
    raise ValueError(f'bins must be <= the imprint layer width {kernel.shape[1]}; got {bins}.')
  B = obs.num_examples
  if B > bins:
    raise ValueError(
        f'imprint_attack: observation.num_examples = {B} exceeds the capacity of the imprint '
        f'module ({bins} bins: at most one input per bin is read off); send a module with '
        f'bins >= {B} (expected_recovered(bins, B) inputs are isolated on average).')
  ratios, weights = imprint_readout(obs.update, bins)
  if not bool(jnp.all(jnp.isfinite(weights))):
    raise ValueError('imprint_attack: the imprint gradients contain NaN or Inf.')
  order = jnp.argsort(-weights)[:B]
  top = ratios[order]
  live = weights[order] > rtol * jnp.max(weights)
  low, high = obs.bounds
  if rescale != 'none':
    scale = _scales(top, order, live, obs.params, bins, rescale, obs.bounds)
    top = top / scale[:, None]
  top = jnp.where(live[:, None], top, 0.5 * (low + high))
  inputs = jnp.clip(top, low, high).reshape(B, *obs.input_shape)
  labels = obs.labels
  if labels is None:
    model_update = obs.update['model']
    labels = labels_lib.recover_labels(model_update, _engine.num_classes_of(apply_fn, obs), B,
                                       path=label_path)
  return threat.AttackResult(inputs, jnp.asarray(labels, jnp.int32),
                             jnp.zeros((0,), jnp.float32), jnp.zeros((), jnp.float32))


def _scales(top, order, live, params, bins, rescale, bounds):
  """Per-row factors ``a`` with ``top = a x`` (one unknown positive factor
  per leaf ratio: per-leaf SSGD), estimated robustly over the live bins."""
  low, high = bounds
  if rescale.startswith('max'):
    # A median over the bins: mixtures of several inputs give outliers.
    est = jnp.max(top, axis=1) / high
    ok = live & jnp.isfinite(est) & (est > 0)
    pooled = jnp.nanmedian(jnp.where(ok, est, jnp.nan))
    pooled = jnp.where(jnp.isfinite(pooled), pooled, 1.0)
    return jnp.where(ok, est, pooled) if rescale.endswith('_each') else jnp.broadcast_to(
        pooled, est.shape)
  # Bin i holds the inputs whose statistic lies in (t_i, t_{i+1}], so its
  # recovered statistic s_hat = a s gives an interval of u = 1/a: lo < s_hat u <= hi
  # (any sign of s or of the measurement). u is the point inside the most
  # intervals (an isolated input's interval always holds the true u; a mixture of
  # inputs of one bin too, when their cotangents share a sign).
  kernel, bias = _imprint_leaves(params, 'imprint_attack')
  w = np.asarray(kernel[:, 0], np.float64)
  t = -np.asarray(bias[:bins], np.float64)
  s_max = float(np.sum(np.maximum(w * low, w * high)))
  edges = np.concatenate([t, [max(s_max, t[-1])]])
  idx = np.asarray(order)
  lo, hi = edges[idx], edges[idx + 1]
  s_hat = np.asarray(top, np.float64) @ w
  with np.errstate(divide='ignore', invalid='ignore'):
    a, b = lo / s_hat, hi / s_hat
  u_lo = np.where(s_hat > 0, a, b)
  u_hi = np.where(s_hat > 0, b, a)
  u_lo = np.maximum(u_lo, 0.0)
  valid = np.asarray(live) & (s_hat != 0) & np.isfinite(u_lo) & (u_hi > u_lo)
  u = _most_covered_point(u_lo[valid], u_hi[valid])
  if rescale.endswith('_each'):
    # One factor per input (participants with different factors): the pooled u
    # where it fits the row's bin, else the one that puts the statistic at the bin's
    # midpoint (the last bin, unbounded above: at its lower end).
    with np.errstate(divide='ignore', invalid='ignore'):
      mid_u = np.where(np.isfinite(hi), 0.5 * (lo + hi), lo) / s_hat
    inside = (u > u_lo) & (u <= u_hi)
    ok_mid = np.isfinite(mid_u) & (mid_u > 0)
    u_each = np.where(valid & ~inside & ok_mid, mid_u, u)
    return jnp.asarray(1.0 / u_each, jnp.float32)
  return jnp.full((len(idx),), 1.0 / u, jnp.float32)


def _most_covered_point(lo: np.ndarray, hi: np.ndarray) -> float:
  """A point of (0, inf) inside the most intervals ``(lo_j, hi_j]`` (1.0 if none).

  Ties between segments go to the first (smallest ``u``); inside the chosen
  segment the geometric mean of its ends (the arithmetic mean when it starts
  at 0; ``2 lo`` when it is unbounded).
  """
  if lo.size == 0:
    return 1.0
  points = np.concatenate([lo, hi])
  delta = np.concatenate([np.ones_like(lo), -np.ones_like(hi)])
  # At equal coordinates, close (hi) before open (lo): intervals touching at a point
  # share no interior.
  order = np.lexsort((delta, points))
  points, delta = points[order], delta[order]
  cover = np.cumsum(delta)
  best = int(np.argmax(cover))
  left = points[best]
  right = points[best + 1] if best + 1 < len(points) else np.inf
  if not np.isfinite(right):
    return float(2 * left) if left > 0 else 1.0
  if left <= 0:
    return float(0.5 * right)
  return float(np.sqrt(left * right))


def imprint_bins(model: ImprintedModel, inputs: Any) -> np.ndarray:
  """The bin of each input: ``i`` with ``t_i < s(x) <= t_{i+1}`` (``t_{k+1} = inf``).

  Inputs below ``t_1`` (outside ``bounds``) get ``-1``. With the bins of a
  held-out public sample, :func:`expected_recovered` predicts how many of a
  batch the attack isolates.

  Args:
    model: the :class:`ImprintedModel`.
    inputs: ``[N, *input_shape]``.

  Returns:
    ``int64[N]``.

  Example:

  >>> import jax, jax.numpy as jnp
  >>> f = lambda p, x: x @ p
  >>> m = imprint_model(f, jnp.ones((2, 3)), (2,), bins=2, reference=jnp.array(
  ...     [[0.1, 0.1], [0.3, 0.3], [0.5, 0.5], [0.7, 0.7]]), key=jax.random.key(0))
  >>> imprint_bins(m, jnp.array([[0.2, 0.2], [0.9, 0.9]])).tolist()
  [0, 1]
  """
  if not isinstance(model, ImprintedModel):
    raise TypeError(f'model must be an ImprintedModel (imprint_model(...)); got '
                    f'{type(model).__name__}.')
  w = np.asarray(model.measurement, np.float64).reshape(-1)
  x = np.asarray(inputs, np.float64)
  if x.ndim < 1 or x.shape[1:] != tuple(model.measurement.shape):
    raise ValueError(f'inputs must be [N, *{tuple(model.measurement.shape)}]; got {x.shape}.')
  stats = x.reshape(len(x), -1) @ w
  return np.searchsorted(np.asarray(model.thresholds, np.float64), stats, side='left') - 1


def expected_recovered(bins: int, batch_size: int, *, reference_bins: Any = None) -> float:
  r"""Expected number of a batch's inputs alone in their bin (read off exactly).

  Uniform bins (default): each of ``B`` inputs lands independently in one of
  ``k`` equally likely bins, so ``E = B (1 - 1/k)^(B-1)``. Thresholds set at
  quantiles of a finite public sample bin other data less evenly, and
  uneven bins isolate fewer inputs: measured on 16x16 digits and photo crops
  (``benchmarks/README.md``, section 5b; 1,024 bins from 512 public images)
  the uniform value is an upper bound, above the measured fraction by
  0.03 at ``B = 16``, 0.02-0.06 at ``B = 64`` and 0.12-0.14 at ``B = 256``.

  With ``reference_bins`` (:func:`imprint_bins` of ``M`` held-out inputs of
  the victims' kind, not those the thresholds came from) the estimate is the
  leave-one-out mean (measured within 0.05 of the truth in the same runs)

  .. math:: E = \frac{B}{M} \sum_{j=1}^{M}
     \Big(1 - \frac{c_{b_j} - 1}{M - 1}\Big)^{B-1}

  with ``c_b`` the held-out count of bin ``b``: the chance that one input is
  alone when the other ``B - 1`` fall like the held-out sample. (The plug-in
  ``B sum_i p_i (1 - p_i)^(B-1)`` with ``p`` the held-out frequencies is
  biased low: 0.85-0.87 where 0.89-0.90 were alone at ``B = 64`` in a
  resampling check on the same pools.)

  Args:
    bins: ``k >= 1``.
    batch_size: ``B >= 1``.
    reference_bins: ``None`` (uniform bins) or int bins of ``M >= 2``
      held-out inputs.

  Returns:
    The expected count (divide by ``B`` for the fraction).

  Example:

  >>> round(expected_recovered(64, 64), 2), expected_recovered(1, 1)
  (23.73, 1.0)
  >>> expected_recovered(4, 2, reference_bins=[0, 0, 1, 2])   # bin 0 twice in 4
  1.6666...
  """
  _validation.check_int('bins', bins, minimum=1)
  _validation.check_int('batch_size', batch_size, minimum=1)
  if reference_bins is None:
    return float(batch_size * (1.0 - 1.0 / bins) ** (batch_size - 1))
  ref = np.asarray(reference_bins)
  if ref.ndim != 1 or ref.size < 2 or not np.issubdtype(ref.dtype, np.integer):
    raise ValueError(f'reference_bins must be int bins of M >= 2 held-out inputs '
                     f'(imprint_bins(model, x)); got {ref.dtype} {ref.shape}.')
  if ref.min() < -1 or ref.max() >= bins:
    raise ValueError(f'reference_bins must lie in [-1, {bins - 1}] (-1: below the first '
                     f'threshold); got [{ref.min()}, {ref.max()}].')
  counts = np.bincount(ref + 1, minlength=bins + 1)[ref + 1]
  m = ref.size
  return float(batch_size * np.mean((1.0 - (counts - 1) / (m - 1)) ** (batch_size - 1)))


def secure_aggregate(observations: Sequence[threat.Observation], *,
                     frac_bits: Optional[int] = None) -> threat.Observation:
  """What the server sees through secure aggregation: the sum of the updates.

  All participants received the same model; the result is one observation
  of the union of their batches (``num_examples`` summed, labels
  concatenated if every observation has them). With ``frac_bits`` each
  update is first fixed-point quantised as
  :mod:`ssgd_optax.federated.secure_aggregation` does (the protocol returns
  the exact sum of the quantised updates).

  Args:
    observations: one :class:`~ssgd_optax.attacks.Observation` per
      participant.
    frac_bits: the fixed-point resolution ``2^-frac_bits``, or ``None`` for
      the float sum.

  Returns:
    An :class:`~ssgd_optax.attacks.Observation`.

  Example:

  >>> import jax.numpy as jnp
  >>> from ssgd_optax import attacks
  >>> f = lambda p, x: x @ p
  >>> o = [attacks.observe(f, jnp.ones((2, 3)), jnp.ones((1, 2)), jnp.array([i])) for i in (0, 1)]
  >>> secure_aggregate(o).num_examples
  2
  """
  obs = list(observations) if not isinstance(observations, threat.Observation) else None
  if not obs or not all(isinstance(o, threat.Observation) for o in obs):
    raise TypeError('observations must be a non-empty sequence of Observation, one per '
                    'participant.')
  first = obs[0]
  for i, o in enumerate(obs):
    threat.check_update_matches(o.update, first.params, f'secure_aggregate: observations[{i}]')
    if (o.input_shape, o.bounds, o.threat_model) != (
        first.input_shape, first.bounds, first.threat_model):
      raise ValueError(f'observations[{i}] differs from observations[0] in input_shape, bounds '
                       'or threat_model: the participants must have received the same model.')
  if frac_bits is None:
    total = jax.tree.map(lambda *u: sum(jnp.asarray(x, jnp.float32) for x in u),
                         *[o.update for o in obs])
  else:
    from ssgd_optax.federated import secure_aggregation as sa
    n = len(obs)
    # The widest range the ring allows for n, even below +-1 (a large frac_bits
    # is the point here): the protocol needs that clip passed explicitly.
    clip = sa.clip_limit(n, frac_bits=0) / 2.0 ** frac_bits

    def qsum(*u):
      q = sum(sa.quantize(np.asarray(x), frac_bits=frac_bits, num_participants=n, clip=clip)
              for x in u)
      return jnp.asarray(sa.dequantize(q, frac_bits=frac_bits), jnp.float32)

    total = jax.tree.map(qsum, *[o.update for o in obs])
  labels = (None if any(o.labels is None for o in obs)
            else jnp.concatenate([jnp.asarray(o.labels) for o in obs]))
  return first._replace(update=total, num_examples=sum(o.num_examples for o in obs),
                        labels=labels)
