# Copyright 2026 The ssgd_optax Authors. Licensed under the Apache License 2.0.
r"""Per-example gradient norms without per-example gradients (ghost norms).

DP-SGD and DP-SSGD need, for every example ``i``, the norm of its gradient
``g_i`` and then the weighted sum ``sum_i w_i g_i``. The vmap path
(:func:`ssgd_optax.privacy.dpsgd_grad_sum`) materialises every ``g_i``:
memory ``B x parameters``. Here one batched forward and backward pass
collects, for every supported layer ``l``, its input ``a_l`` and the
cotangent ``delta_l`` of its output (row ``i`` is example ``i``'s, because the
loss is a sum of per-example losses), and

* the **norms** come from the ghost identities (Li et al. 2021; Bu et al.
  2022, *mixed ghost clipping*), per layer, with ``A_i`` the ``[P, K]``
  inputs (``P`` positions: 1 for a dense layer on ``[B, D]``, ``T`` for
  ``[B, T, D]``, the output pixels of a convolution whose ``K`` is the patch
  size) and ``D_i`` the ``[P, C]`` cotangents:

  .. math::

    \|\nabla_W \ell_i\|_F^2 = \|A_i^\top D_i\|_F^2
      = \langle A_i A_i^\top, D_i D_i^\top \rangle_F, \qquad
    \|\nabla_b \ell_i\|^2 = \big\|\textstyle\sum_p D_{i,p}\big\|^2

  (``P = 1``: ``||a_i|| ||delta_i||``). The Gram form costs ``P^2 (K + C)``
  per example, the explicit product ``A_i^T D_i`` costs ``P K C``; each layer
  uses the cheaper one, decided from the shapes at trace time;
* the **weighted sum** is each layer's own VJP with respect to its
  parameters at the cotangent ``w_{i,l} delta_{i,l}`` (the "book-keeping"
  of Bu et al.: no second backward pass through the network, and per-layer
  weights cost nothing extra).

Supported parameters: ``nnx.Linear`` (any leading shape), ``nnx.Conv`` (any
padding, stride, dilation, feature groups; no kernel ``mask``), with or
without bias, also inside a :class:`~ssgd_optax.privacy.ClippedLayer` (then
the norms are those of the backprop-clipped gradient); and the per-example
normalisation layers ``nnx.LayerNorm``, ``nnx.GroupNorm``, ``nnx.RMSNorm``,
whose few parameters get explicit per-example gradients in closed form
(``sum_p delta_{i,p} xhat_{i,p}`` and ``sum_p delta_{i,p}``); those ``[B, C]``
gradients also give the layer's weighted sum, so its activations are freed
after the backward pass (book-keeping keeps only the other layers' inputs and
cotangents until the weights are known). A layer may be applied several
times per forward pass (its positions are concatenated). Any other parameter (embeddings, attention,
custom modules, subclasses of the layers above) makes ``method="auto"`` fall
back to the vmap path with a warning naming it, and ``method="ghost"`` raise.

The capture reuses the forward-pass scope of :func:`ssgd_optax.privacy.backprop_clip_grad_sum`
(the one :func:`~ssgd_optax.privacy.backprop_clip_grad_sum` traces clipped
layers in): the same refusal of layers called inside a nested ``scan``/
``vmap``/``remat``, and the same per-layer non-finite input flags. The user's
model is never modified: the layers are tapped on a copy of its graph.
"""

from __future__ import annotations

import functools
import itertools
import math
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx
from flax.nnx.nn import linear as nnx_linear

from ssgd_optax import _batch
from ssgd_optax import _grouping as grouping_lib
from ssgd_optax import _nnx
from ssgd_optax import _numerics
from ssgd_optax import _validation
from ssgd_optax import per_example as per_example_lib
from ssgd_optax.privacy import _clipping as clipping
from ssgd_optax.privacy import _forward_pass as forward_pass
from ssgd_optax.privacy import _layers as layers
__all__ = ['GhostGradSum', 'GhostNorms', 'ghost_grad_sum', 'ghost_norms',
           'ghost_supported']

WEIGHTS = ('clip', 'normalize')
METHODS = ('auto', 'ghost', 'vmap')

_DENSE = (nnx.Linear,)
_CONV = (nnx.Conv,)
_LOCAL = (nnx.LayerNorm, nnx.GroupNorm, nnx.RMSNorm)
_SUPPORTED = _DENSE + _CONV + _LOCAL

# Fallback warnings already given, keyed by (model class, layer path).
_WARNED: set[tuple[str, str]] = set()


class GhostNorms(NamedTuple):
  """Per-example gradient norms.

  Attributes:
    norms: ``[B]`` float32, ``||g_i||`` over every trained parameter (NaN for
      an example with a non-finite gradient, 0 for a masked row).
    layer_norms: ``{layer path: [B]}``, the norm of each layer's parameters
      (kernel and bias together).
  """
  norms: jax.Array
  layer_norms: dict[str, jax.Array]


class GhostGradSum(NamedTuple):
  """Result of :func:`ghost_grad_sum`.

  Attributes:
    loss: the loss summed over kept examples (masked and dropped ones left
      out).
    grads: ``sum_i w_i g_i`` as an ``nnx.State`` shaped like ``nnx.grad``'s.
    norms: ``[B]`` global per-example gradient norms before weighting.
    sensitivity: the L2 sensitivity of ``grads`` (add/remove one example):
      the noise std is ``noise_multiplier * sensitivity``.
  """
  loss: jax.Array
  grads: Any
  norms: jax.Array
  sensitivity: Any


def _path_str(path: Sequence[Any]) -> str:
  return '/'.join(map(str, path)) or 'model'


def _param_paths(model: nnx.Module, wrt: Any) -> list[tuple[Any, ...]]:
  state = nnx.state(model, wrt)
  return [forward_pass.path_keys(p) for p, _ in jax.tree_util.tree_flatten_with_path(state)[0]]


def ghost_supported(model: nnx.Module, wrt: Any = nnx.Param) -> list[str]:
  """The paths of trained parameters the ghost path cannot handle (empty: all).

  A parameter is supported when its owner is exactly an ``nnx.Linear``,
  ``nnx.Conv`` (without kernel ``mask``), ``nnx.LayerNorm``,
  ``nnx.GroupNorm`` or ``nnx.RMSNorm`` (subclasses may change ``__call__``,
  so they are not).

  Args:
    model: an ``nnx.Module``.
    wrt: the ``nnx`` filter of the trained variables.

  Returns:
    A list of ``'a/b/kernel'`` paths.

  Example:
    >>> from flax import nnx
    >>> m = nnx.Sequential(nnx.Linear(2, 3, rngs=nnx.Rngs(0)),
    ...                    nnx.Embed(4, 3, rngs=nnx.Rngs(0)))
    >>> ghost_supported(m)
    ['layers/1/embedding']
  """
  nodes = dict(nnx.iter_graph(model))
  bad = []
  for path in _param_paths(model, wrt):
    owner = nodes.get(path[:-1])
    if type(owner) not in _SUPPORTED or (  # pylint: disable=unidiomatic-typecheck
        type(owner) is nnx.Conv and owner.mask is not None):
      bad.append(_path_str(path))
  return bad


class _Tap(nnx.Module):
  """Stands in for a supported layer on the copy of the model's graph."""

  def __init__(self, layer: nnx.Module, path: str):
    self.layer = layer
    self.path = path
    # Repeated applications are supported (positions are concatenated), so
    # the scope's use counter must never refuse one.
    self.uses = sys.maxsize

  def __call__(self, x, *args, **kwargs):
    scope = forward_pass.current()
    tapper = getattr(scope, 'ghost_tapper', None)
    if tapper is None:
      return self.layer(x, *args, **kwargs)
    if args or any(v is not None for v in kwargs.values()):
      raise ValueError(
          f'Layer {self.path!r} is called with extra arguments ({len(args)} positional, '
          f'{sorted(kwargs)}); the ghost path records only the input. Use method="vmap".')
    scope.record(self, x)
    return tapper.tap(self, x)


class _Tapper:
  """Records layer inputs and adds the zero probes whose gradient is ``delta``."""

  def __init__(self, probes: list[jax.Array] | None):
    self.probes = probes
    self.paths: list[str] = []
    self.inputs: list[jax.Array] = []
    self.shapes: list[jax.ShapeDtypeStruct] = []

  def tap(self, tap: _Tap, x: jax.Array) -> jax.Array:
    y = tap.layer(x)
    k = len(self.paths)
    self.paths.append(tap.path)
    self.inputs.append(x)
    self.shapes.append(jax.ShapeDtypeStruct(y.shape, y.dtype))
    if self.probes is None:
      return y
    if k >= len(self.probes) or self.probes[k].shape != y.shape:
      raise ValueError(
          'The forward pass applied the layers in a different order or with different '
          'shapes when traced twice; the ghost path needs a deterministic structure.')
    return y + self.probes[k].astype(y.dtype)


def _tapped_copy(graphdef: Any, state: Any) -> nnx.Module:
  clone = nnx.merge(graphdef, state)
  if type(clone) in _SUPPORTED:  # pylint: disable=unidiomatic-typecheck
    return _Tap(clone, 'model')
  nodes = dict(nnx.iter_graph(clone))
  for path, node in nodes.items():
    if not path or type(node) not in _SUPPORTED:  # pylint: disable=unidiomatic-typecheck
      continue
    parent, key = nodes[path[:-1]], path[-1]
    tap = _Tap(node, _path_str(path))
    if isinstance(key, int):
      parent[key] = tap
    else:
      setattr(parent, key, tap)
  return clone


class _Capture(NamedTuple):
  losses: jax.Array
  paths: list[str]
  inputs: list[jax.Array]
  deltas: list[jax.Array]
  bad: jax.Array          # [B] bool: a non-finite loss, batch entry or layer input


def _capture(per_example_loss, model, batch) -> _Capture:
  """One forward + one backward pass (w.r.t. the probes only)."""
  graphdef, state = nnx.split(model)
  meta: dict[str, Any] = {}

  def run(state, probes):
    clone = _tapped_copy(graphdef, state)
    tapper = _Tapper(probes)
    with forward_pass.scope(clone, 'drop') as scope:
      scope.ghost_tapper = tapper
      losses = _batch.per_example_losses(per_example_loss(clone, *batch), batch)
    flags = []
    for layer, bad in scope.flags:
      if bad.shape != losses.shape:
        raise ValueError(
            f'Layer {scope.where(layer)!r} got an input with leading axis {bad.shape[0]}, '
            f'but the batch has {losses.shape[0]} examples. Per-example norms need each '
            'example to be one row of the leading axis.')
      flags.append(bad)
    meta['paths'], meta['shapes'] = tapper.paths, tapper.shapes
    return losses, (tapper.inputs, flags)

  jax.eval_shape(lambda s: run(s, None), state)
  probes = [jnp.zeros(s.shape, s.dtype) for s in meta['shapes']]
  losses, vjp, (inputs, flags) = jax.vjp(lambda p: run(state, p), probes, has_aux=True)
  if not jnp.issubdtype(losses.dtype, jnp.floating):
    raise TypeError(f'per_example_loss must return floating losses; got {losses.dtype}.')
  (deltas,) = vjp(jnp.ones_like(losses))
  bad = jnp.zeros(losses.shape, bool)
  for f in flags:
    bad = bad | f
  return _Capture(losses, meta['paths'], inputs, list(deltas), bad)


# ------------------------------------------------------------------ norms ---

def _f32(x):
  return x.astype(_numerics.accumulation_dtype(x.dtype))


def _unit_rows(x: jax.Array) -> tuple[jax.Array, jax.Array]:
  """``(x_i / s_i, s_i)`` with ``s_i = ||x_i||`` (overflow-safe; 1 where 0)."""
  x = _f32(x)
  s = _numerics.row_norms(x)
  safe = jnp.where(s > 0, s, 1).reshape((-1,) + (1,) * (x.ndim - 1))
  return x / safe, s


def _use_gram(positions: int, k: int, c: int) -> bool:
  """Gram form ``P^2 (K + C)`` cheaper than the explicit ``P K C``."""
  return positions > 1 and positions * (k + c) <= k * c


def _pair_norm(a: jax.Array, d: jax.Array, positions: int, k: int, c: int) -> jax.Array:
  """``||A_i^T D_i||_F`` per example for ``a: [B, P, G, K]``, ``d: [B, P, G, C]``.

  ``P = 1``: ``||a_i|| ||d_i||``. Gram form: both are scaled to unit
  Frobenius norm first (the fourth powers would overflow), so the inner
  product is in ``[0, 1]``. Explicit form: the per-example gradient itself,
  with the same products as the vmap path, then the overflow-safe norm.
  """
  hp = jax.lax.Precision.HIGHEST
  if positions == 1:
    return (_numerics.row_norms(_f32(a)) * _numerics.row_norms(_f32(d)))
  if _use_gram(positions, k, c):
    an, sa = _unit_rows(a)
    dn, sd = _unit_rows(d)
    ga = jnp.einsum('bpgk,bqgk->bgpq', an, an, precision=hp)
    gd = jnp.einsum('bpgc,bqgc->bgpq', dn, dn, precision=hp)
    r = jnp.sum(ga * gd, axis=(1, 2, 3))
    return sa * sd * jnp.sqrt(jnp.maximum(r, 0))
  g = jnp.einsum('bpgk,bpgc->bgkc', a, d, precision=hp,
                 preferred_element_type=_numerics.accumulation_dtype(a.dtype))
  return _numerics.row_norms(g)


def _conv_norms(layer, xs, ds) -> tuple[jax.Array, jax.Array]:
  """Kernel and bias norms of a conv, over chunks of examples.

  The patches are ``prod(kernel_size)`` times larger than the input; chunks
  of ``m`` examples keep them no larger than the layer's (already live)
  input activations.
  """
  b = xs[0].shape[0]

  def norms(xs, ds):
    pairs = [_conv_rows(layer, x, d) for x, d in zip(xs, ds)]
    a = jnp.concatenate([p[0] for p in pairs], axis=1)
    d = jnp.concatenate([p[1] for p in pairs], axis=1)
    return (_pair_norm(a, d, a.shape[1], a.shape[-1], d.shape[-1]),
            _bias_norm(d.reshape(d.shape[0], d.shape[1], -1)))

  patch = sum(math.prod(d.shape[1:-1]) for d in ds) * math.prod(layer.kernel_size) * (
      layer.in_features)
  given = sum(math.prod(x.shape[1:]) for x in xs)
  m = max(1, min(b, b * given // max(patch, 1)))
  if m >= b:
    return norms(xs, ds)

  def one(example):
    xs, ds = example
    k, bias = norms([x[None] for x in xs], [d[None] for d in ds])
    return k[0], bias[0]

  return jax.lax.map(one, (list(xs), list(ds)), batch_size=m)


def _conv_grads(layer, names, xs, ds) -> tuple[dict[str, jax.Array], dict[str, jax.Array]] | None:
  """Per-example kernel and bias gradients of a conv and their norms, when worth keeping.

  Where the norm takes the explicit form (``P K C`` flops, the Gram form
  would cost more), the per-example kernel gradient ``G_i = A_i^T D_i`` is
  formed anyway; the weighted sum ``sum_i w_i G_i`` from it costs ``B K C``
  instead of the ``B P K C`` of a second pass over the layer's patches (the
  largest term of a ResNet's first stages). Kept only when ``G``
  (``[B, K, C]``) is no larger than the layer's input, which the weighted
  sum would otherwise hold, so memory does not grow; then the layer's
  activations are freed after the backward pass. ``None``: not worth it
  (the norms come from :func:`_conv_norms`).
  """
  if layer.feature_group_count != 1 or 'kernel' not in names:
    return None
  in_dil = _broadcast(layer.input_dilation, len(layer.kernel_size))
  padding = nnx_linear.canonicalize_padding(layer.padding, len(layer.kernel_size))
  if any(d != 1 for d in in_dil) or (
      not isinstance(padding, str) and any(p < 0 for pair in padding for p in pair)):
    return None  # channel-major patches: another layout than the kernel's
  b = xs[0].shape[0]
  positions = sum(math.prod(d.shape[1:-1]) for d in ds)
  k = math.prod(layer.kernel_size) * layer.in_features
  c = layer.out_features
  given = sum(math.prod(x.shape[1:]) for x in xs)
  if positions <= 1 or _use_gram(positions, k, c) or k * c > given:
    return None
  hp = jax.lax.Precision.HIGHEST

  def grads_of(xs, ds):
    pairs = [_conv_rows(layer, x, d) for x, d in zip(xs, ds)]
    a = jnp.concatenate([p[0] for p in pairs], axis=1)
    d = jnp.concatenate([p[1] for p in pairs], axis=1)
    g = jnp.einsum('bpgk,bpgc->bgkc', a, d, precision=hp,
                   preferred_element_type=_numerics.accumulation_dtype(a.dtype))
    return g, jnp.sum(_f32(d), axis=1)

  # The same chunks of examples as _conv_norms: the patches stay no larger
  # than the layer's input.
  m = max(1, min(b, b * given // max(positions * k, 1)))
  if m >= b:
    g, bias = grads_of(xs, ds)
  else:
    def one(example):
      xs, ds = example
      g, bias = grads_of([x[None] for x in xs], [d[None] for d in ds])
      return g[0], bias[0]
    g, bias = jax.lax.map(one, (list(xs), list(ds)), batch_size=m)
  grads = {'kernel': g.reshape((b,) + tuple(layer.kernel.shape))}
  norms = {'kernel': _numerics.row_norms(g)}
  if 'bias' in names:
    grads['bias'] = bias.reshape(b, -1)
    norms['bias'] = _numerics.row_norms(grads['bias'])
  return norms, grads


def _bias_norm(d: jax.Array) -> jax.Array:
  return _numerics.row_norms(jnp.sum(_f32(d), axis=1))


def _dense_rows(layer, x, delta):
  b = x.shape[0]
  return (x.reshape(b, -1, 1, x.shape[-1]), delta.reshape(b, -1, 1, delta.shape[-1]))


def _broadcast(v, n):
  if v is None:
    v = 1
  return (v,) * n if isinstance(v, int) else tuple(v)


def _conv_rows(layer, x, delta):
  """``[B, P, G, K]`` patches and ``[B, P, G, C]`` cotangents of a conv."""
  ks = tuple(layer.kernel_size)
  nd = len(ks)
  b = x.shape[0]
  x = x.reshape((-1,) + x.shape[x.ndim - nd - 1:])
  strides = _broadcast(layer.strides, nd)
  in_dil = _broadcast(layer.input_dilation, nd)
  k_dil = _broadcast(layer.kernel_dilation, nd)
  padding = nnx_linear.canonicalize_padding(layer.padding, nd)
  # The same input padding as nnx.Conv.__call__ for the non-lax modes.
  if padding in ('CIRCULAR', 'REFLECT'):
    dil = [(k - 1) * d + 1 for k, d in zip(ks, k_dil)]
    pads = [(0, 0)] + [((k - 1) // 2, k // 2) for k in dil] + [(0, 0)]
    x = jnp.pad(x, pads, mode={'CIRCULAR': 'wrap', 'REFLECT': 'reflect'}[padding])
    padding = 'VALID'
  elif padding == 'CAUSAL':
    x = jnp.pad(x, [(0, 0), (k_dil[0] * (ks[0] - 1), 0), (0, 0)])
    padding = 'VALID'
  g = layer.feature_group_count
  if any(d != 1 for d in in_dil) or (
      not isinstance(padding, str) and any(p < 0 for pair in padding for p in pair)):
    dn = nnx_linear._conv_dimension_numbers(x.shape)
    patches = jax.lax.conv_general_dilated_patches(
        x, ks, strides, padding, lhs_dilation=in_dil, rhs_dilation=k_dil,
        dimension_numbers=dn, precision=jax.lax.Precision.HIGHEST)
    # Channel-major features; groups are contiguous channel blocks.
    a = patches.reshape(b, -1, g, patches.shape[-1] // g)
  else:
    a = _slice_patches(x, ks, strides, padding, k_dil)   # [N, out..., K_off, Cin]
    a = a.reshape(a.shape[:-1] + (g, a.shape[-1] // g))
    a = jnp.moveaxis(a, -2, -3)                          # [N, out..., g, K_off, Cin/g]
    a = a.reshape(b, -1, g, a.shape[-2] * a.shape[-1])
  return a, delta.reshape(b, -1, g, delta.shape[-1] // g)


def _slice_patches(x, ks, strides, padding, k_dil):
  """``[N, out..., prod(ks), C]`` conv patches by strided slicing (no flops)."""
  nd = len(ks)
  spatial = x.shape[1:1 + nd]
  dilated = [(k - 1) * d + 1 for k, d in zip(ks, k_dil)]
  if isinstance(padding, str):
    pads = jax.lax.padtype_to_pads(spatial, dilated, strides, padding)
  else:
    pads = [tuple(p) for p in padding]
  x = jnp.pad(x, [(0, 0)] + [tuple(p) for p in pads] + [(0, 0)])
  out = [(s + lo + hi - dk) // st + 1 for s, (lo, hi), dk, st in zip(spatial, pads, dilated, strides)]
  slices = []
  for offset in itertools.product(*[range(k) for k in ks]):
    start = [0] + [o * d for o, d in zip(offset, k_dil)] + [0]
    limit = [x.shape[0]] + [st0 + (n - 1) * st + 1 for st0, n, st in
                            zip(start[1:-1], out, strides)] + [x.shape[-1]]
    slices.append(jax.lax.slice(x, start, limit, [1] + list(strides) + [1]))
  return jnp.stack(slices, axis=-2)


def _feature_axes(layer, ndim: int) -> tuple[int, ...]:
  axes = (layer.feature_axis,) if isinstance(layer, nnx.GroupNorm) else layer.feature_axes
  axes = (axes,) if isinstance(axes, int) else tuple(axes)
  return tuple(sorted(a % ndim for a in axes))


def _local_grads(layer, xs, ds, wrt):
  r"""Per-example ``scale``/``bias`` gradients of an affine normalisation layer.

  flax's LayerNorm, GroupNorm and RMSNorm compute ``y = \hat x s + b`` with
  ``\hat x`` the normalised input, so per example ``i``
  ``\nabla_s = \sum_p \delta_{i,p} \hat x_{i,p}`` and
  ``\nabla_b = \sum_p \delta_{i,p}`` over the non-feature positions ``p``;
  ``\hat x`` is the layer itself with ``s = 1, b = 0``. One batched pass and
  one activation-sized temporary (a ``vmap`` of the layer's VJP keeps
  several).
  """
  _, params, _ = nnx.split(layer, wrt, ...)
  names = {forward_pass.path_keys(p)[-1] for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]}
  full_gd, full = nnx.split(layer)

  def unit(p, v):
    name = forward_pass.path_keys(p)[-1]
    if name == 'scale':
      return jnp.ones_like(v)
    return jnp.zeros_like(v) if name == 'bias' else v

  normalised = nnx.merge(full_gd, jax.tree_util.tree_map_with_path(unit, full))
  total: dict[str, jax.Array] = {}
  for x, d in zip(xs, ds):
    axes = _feature_axes(layer, x.ndim)
    if 0 in axes:
      raise ValueError(f'{type(layer).__name__} normalises features on the batch axis; '
                       'per-example gradients are not defined. Use method="vmap".')
    reduce = tuple(i for i in range(1, x.ndim) if i not in axes)
    d32 = _f32(d)
    got = {'bias': jnp.sum(d32, axis=reduce)}
    if 'scale' in names:
      got['scale'] = jnp.sum(d32 * _f32(normalised(x)), axis=reduce)
    for k, v in got.items():
      total[k] = v if k not in total else total[k] + v

  def leaf(p, v):
    name = forward_pass.path_keys(p)[-1]
    return total[name].reshape((-1,) + jnp.shape(v))

  return jax.tree_util.tree_map_with_path(leaf, params)


def _combine(norms: Sequence[jax.Array]) -> jax.Array:
  """``sqrt(sum_k n_k^2)`` without overflow of the squares."""
  if not norms:
    raise ValueError('no parameters to take the norm of.')
  n = jnp.stack(norms)
  top = jnp.max(jnp.where(jnp.isnan(n), jnp.inf, n), axis=0)
  safe = jnp.where((top > 0) & jnp.isfinite(top), top, 1)
  out = safe * jnp.sqrt(jnp.sum(jnp.square(n / safe), axis=0))
  return jnp.where(jnp.isinf(top) & ~jnp.any(jnp.isnan(n), axis=0), jnp.inf, out)


class _Layer(NamedTuple):
  path: str
  module: Any
  names: tuple[str, ...]            # trained parameter names of the layer
  xs: list[jax.Array]
  ds: list[jax.Array]
  param_norms: dict[str, jax.Array]  # name -> [B]
  finite: Any = True                # [B]: every cotangent of the example finite
  per_example: Any = None           # explicit per-example gradients, if formed


def _module_norms(module, names, xs, ds, wrt) -> tuple[dict[str, jax.Array], Any]:
  """``{parameter name: [B] norms}`` of one layer, and its per-example gradients if formed.

  Normalisation layers get explicit per-example gradients (``[B, C]``, far
  smaller than their input and cotangent), which the weighted sum then uses,
  so the layer's activations need not outlive the backward pass.
  """
  norms = {}
  grads = None
  if isinstance(module, _CONV):
    kept = _conv_grads(module, names, xs, ds)
    if kept is not None:
      norms, grads = kept
    else:
      kernel, bias = _conv_norms(module, xs, ds)
      norms.update(kernel=kernel, bias=bias)
  elif isinstance(module, _DENSE):
    pairs = [_dense_rows(module, x, d) for x, d in zip(xs, ds)]
    a = jnp.concatenate([p[0] for p in pairs], axis=1)
    d = jnp.concatenate([p[1] for p in pairs], axis=1)
    if 'kernel' in names:
      norms['kernel'] = _pair_norm(a, d, a.shape[1], a.shape[-1], d.shape[-1])
    if 'bias' in names:
      norms['bias'] = _bias_norm(d.reshape(d.shape[0], d.shape[1], -1))
  else:
    grads = _local_grads(module, xs, ds, wrt)
    for p, g in jax.tree_util.tree_flatten_with_path(grads)[0]:
      norms[forward_pass.path_keys(p)[-1]] = _numerics.row_norms(g)
  return {n: norms[n] for n in names}, grads


def _layer_norms(model, cap: _Capture, wrt) -> list[_Layer]:
  nodes = dict(nnx.iter_graph(model))
  trained: dict[tuple[Any, ...], list[str]] = {}
  for p in _param_paths(model, wrt):
    trained.setdefault(p[:-1], []).append(p[-1])
  by_path: dict[str, list[int]] = {}
  for k, p in enumerate(cap.paths):
    by_path.setdefault(p, []).append(k)
  out = []
  for path, names in trained.items():
    key = _path_str(path)
    module = nodes[path]
    uses = by_path.get(key, [])
    xs = [cap.inputs[k] for k in uses]
    ds = [cap.deltas[k] for k in uses]
    if not uses:  # never applied: zero gradient
      b = cap.losses.shape[0]
      out.append(_Layer(key, module, tuple(names), xs, ds,
                        {n: jnp.zeros((b,), jnp.float32) for n in names}))
      continue
    norms, grads = _module_norms(module, names, xs, ds, wrt)
    finite = functools.reduce(jnp.logical_and, [_batch.finite_examples(d) for d in ds])
    if grads is not None:  # the sum comes from these; the activations can go
      xs, ds = [], []
    out.append(_Layer(key, module, tuple(names), xs, ds, norms, finite, grads))
  return out


# --------------------------------------------------------------- fallback ---

def _vmap_layers(per_example_loss, model, batch, mask, wrt):
  """Per-example gradients (vmap path) and their per-parameter norms."""

  def single(m, *example):
    loss = per_example_loss(m, *example)
    return jnp.sum(loss), loss

  grads, losses = per_example_lib.nnx_per_example_grads(
      single, model, *batch, mask=mask, wrt=wrt, has_aux=True)
  losses = losses.reshape(losses.shape[0], -1).sum(-1)
  norms: dict[str, dict[str, jax.Array]] = {}
  for p, g in jax.tree_util.tree_flatten_with_path(grads)[0]:
    key = forward_pass.path_keys(p)
    norms.setdefault(_path_str(key[:-1]), {})[key[-1]] = _numerics.row_norms(g)
  return grads, losses, norms


def _choose(model, wrt, method, what) -> str:
  bad = ghost_supported(model, wrt)
  dup = None
  try:
    layers.check_model(model)
  except ValueError as e:
    if 'BatchNorm' in str(e):
      raise
    dup = str(e)
  if method == 'vmap':
    return 'vmap'
  if not bad and dup is None:
    return 'ghost'
  reason = (f'parameters {bad} are not in a supported layer (nnx.Linear, nnx.Conv, '
            'nnx.LayerNorm, nnx.GroupNorm, nnx.RMSNorm)' if bad else dup)
  if method == 'ghost':
    raise ValueError(f'{what}(method="ghost"): {reason}. Use method="auto" (falls back to '
                     'per-example gradients with vmap) or method="vmap".')
  key = (type(model).__name__, str(bad) if bad else 'aliasing')
  if key not in _WARNED:
    _WARNED.add(key)
    warnings.warn(f'{what}: {reason}; falling back to per-example gradients (vmap), whose '
                  'memory grows with batch x parameters.', stacklevel=3)
  return 'vmap'


def _check_common(per_example_loss, model, batch, method):
  if not callable(per_example_loss):
    raise TypeError(f'per_example_loss must be callable; got {type(per_example_loss).__name__}.')
  if not isinstance(model, nnx.Module):
    raise TypeError(f'model must be a flax.nnx.Module; got {type(model).__name__}.')
  if not batch:
    raise ValueError('at least one batched array (e.g. x, y) is needed.')
  _validation.check_choice('method', method, METHODS)


# ------------------------------------------------------------------ public ---

@_nnx.clear_model_errors('ghost_norms')
def ghost_norms(per_example_loss: Callable[..., jax.Array], model: nnx.Module, *batch: Any,
                mask: jax.Array | None = None, wrt: Any = nnx.Param,
                method: str = 'auto') -> GhostNorms:
  r"""Per-example gradient norms ``||g_i||`` without per-example gradients.

  .. math:: \|g_i\|^2 = \sum_l \|A_{i,l}^\top D_{i,l}\|_F^2
     + \big\|\textstyle\sum_p D_{i,l,p}\big\|^2

  (see the module docstring), from one batched forward and backward pass.

  Args:
    per_example_loss: ``per_example_loss(model, *batch) -> [B]`` losses (not
      averaged).
    model: an ``nnx.Module`` (not modified; split and merged inside, so it
      may be captured from an enclosing ``jax.jit``/``jax.grad``;
      deterministic: a forward pass that changes its state raises a
      ``ValueError``).
    *batch: arrays with leading axis ``B``.
    mask: ``[B]`` 0/1 (or bool) mask of real rows; masked rows get norm 0.
    wrt: ``nnx`` filter of the trained variables.
    method: ``"auto"`` (ghost norms, or the vmap path with a warning when a
      parameter is not supported), ``"ghost"`` (raise instead) or ``"vmap"``.

  Returns:
    :class:`GhostNorms` ``(norms [B], {layer path: [B]})``.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> from flax import nnx
    >>> model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
    >>> loss = lambda m, x, y: optax.softmax_cross_entropy_with_integer_labels(m(x), y)
    >>> n = ghost_norms(loss, model, jnp.ones((4, 3)), jnp.zeros(4, int))
    >>> n.norms.shape, list(n.layer_norms)
    ((4,), ['model'])
  """
  _check_common(per_example_loss, model, batch, method)
  if _choose(model, wrt, method, 'ghost_norms') == 'vmap':
    _, _, norms = _vmap_layers(per_example_loss, model, batch, mask, wrt)
    layer_norms = {k: _combine(list(v.values())) for k, v in norms.items()}
  else:
    cap = _capture(per_example_loss, model, batch)
    layer_norms = {l.path: _combine(list(l.param_norms.values()))
                   for l in _layer_norms(model, cap, wrt)}
  norms = _combine(list(layer_norms.values()))
  if mask is not None:
    keep = _batch.check_mask(mask, norms.shape[0])
    norms = jnp.where(keep, norms, 0)
    layer_norms = {k: jnp.where(keep, v, 0) for k, v in layer_norms.items()}
  return GhostNorms(norms, layer_norms)


def _weight(n: jax.Array, weights: str, clip_norm: Any, stability: Any) -> jax.Array:
  if weights == 'clip':
    c = jnp.asarray(clip_norm, n.dtype)
    return jnp.where(n > c, c / jnp.where(n > 0, n, 1), 1.0)
  # N_gamma(g) = g / (||g|| + gamma); an all-zero group stays zero, never 0/0.
  denom = n + jnp.asarray(stability, n.dtype)
  return jnp.where(denom > 0, 1 / jnp.where(denom > 0, denom, 1), 0.0)


@_nnx.clear_model_errors('ghost_grad_sum')
def ghost_grad_sum(per_example_loss: Callable[..., jax.Array], model: nnx.Module, *batch: Any,
                   mask: jax.Array | None = None, weights: str = 'clip',
                   clip_norm: Any = None, scope: str = 'global', stability: Any = 0.0,
                   wrt: Any = nnx.Param, method: str = 'auto',
                   nonfinite: str = 'drop') -> GhostGradSum:
  r"""``sum_i w_i g_i`` for DP-SGD (clipping) or DP-SSGD (normalisation), ghost style.

  .. math::

    G = \sum_i m_i f_i \sum_k w_{i,k}\, g_{i,k}, \qquad
    w_{i,k} = \begin{cases} \min(1, C / \|g_{i,k}\|) & \text{clip} \\
      1 / (\|g_{i,k}\| + \gamma) & \text{normalize (0 if } g_{i,k} = 0)
    \end{cases}

  over the groups ``k`` of ``scope`` (``"global"``: all parameters;
  ``"per_layer"``: a layer's kernel and bias, as in
  :data:`ssgd_optax.SCOPES`; ``"per_leaf"``: each tensor); ``m_i`` is the
  mask and ``f_i = 0`` drops an example with a NaN/Inf batch entry, loss,
  layer input, cotangent or norm. Norms come from :func:`ghost_norms`, the
  sum from each layer's VJP at the weighted cotangents (no per-example
  gradients, no second backward pass). The result equals
  :func:`~ssgd_optax.privacy.dpsgd_grad_sum` (clip, global) and the sum of
  :func:`~ssgd_optax.privacy.normalize_per_example` rows to float
  tolerance.

  Guarantees:
    Neighbouring relation: add/remove one example (one row of the Poisson
    batch; padded rows contribute exactly zero). Every kept example's
    weighted gradient has norm at most ``C`` per group (clip; ``C sqrt(G)``
    over ``G`` groups) or at most 1 per group (normalize; ``sqrt(G)``), and a
    dropped example contributes exactly zero, so the L2 sensitivity of
    ``grads`` is ``sensitivity`` = ``C`` (clip, global), ``C sqrt(G)``
    (clip, per-layer/leaf), ``1`` (normalize, global), ``sqrt(G)``
    (normalize, per-layer/leaf); add ``N(0, (sigma sensitivity)^2 I)``
    noise (:func:`~ssgd_optax.privacy.add_gaussian_noise` with that
    sensitivity) for one Gaussian release per step. Holds for models whose
    examples do not interact in the forward pass (no BatchNorm, refused) and
    whose parameters are all in supported layers (else the vmap path is
    used). A finite gradient whose norm exceeds the float32 range gets weight
    0 (dropped) rather than being rescaled, which only lowers its
    contribution.

  Args:
    per_example_loss: ``per_example_loss(model, *batch) -> [B]`` losses.
    model: an ``nnx.Module`` (not modified; split and merged inside, so it
      may be captured from an enclosing ``jax.jit``/``jax.grad``;
      deterministic: a forward pass that changes its state raises a
      ``ValueError``).
    *batch: arrays with leading axis ``B``.
    mask: ``[B]`` mask of real rows, ``None`` = all.
    weights: ``"clip"`` (DP-SGD) or ``"normalize"`` (DP-SSGD, AUTO-S with
      ``stability``).
    clip_norm: ``C > 0`` (required for ``"clip"``, unused otherwise).
    scope: ``"global"``, ``"per_layer"`` or ``"per_leaf"``.
    stability: ``gamma >= 0`` for ``"normalize"``.
    wrt: ``nnx`` filter of the trained variables.
    method: ``"auto"``, ``"ghost"`` or ``"vmap"`` (see :func:`ghost_norms`).
    nonfinite: ``"drop"`` (default) or ``"propagate"`` (NaN reaches the sum;
      **voids the guarantee**, debugging only).

  Returns:
    :class:`GhostGradSum` ``(loss, grads, norms, sensitivity)``.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> from flax import nnx
    >>> model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
    >>> loss = lambda m, x, y: optax.softmax_cross_entropy_with_integer_labels(m(x), y)
    >>> out = ghost_grad_sum(loss, model, jnp.ones((4, 3)), jnp.zeros(4, int),
    ...                      clip_norm=0.1)
    >>> out.grads['kernel'][...].shape, out.sensitivity
    ((3, 2), 0.1)
  """
  _check_common(per_example_loss, model, batch, method)
  _validation.check_choice('weights', weights, WEIGHTS)
  _validation.check_choice('scope', scope, grouping_lib.SCOPES)
  _validation.check_choice('nonfinite', nonfinite, clipping.NONFINITE)
  if weights == 'clip':
    if clip_norm is None:
      raise ValueError('clip_norm is required with weights="clip" (the per-example bound C).')
    _validation.check_positive('clip_norm', clip_norm)
  _validation.check_nonnegative('stability', stability)
  if jnp.ndim(stability) or (clip_norm is not None and jnp.ndim(clip_norm)):
    raise ValueError('clip_norm and stability must be scalars.')

  path = _choose(model, wrt, method, 'ghost_grad_sum')
  if path == 'vmap':
    grads, losses, norms = _vmap_layers(per_example_loss, model, batch, mask, wrt)
    groups = [(k, n) for k, v in norms.items() for n in v]
    param_norms = {(k, n): v[n] for k, v in norms.items() for n in v}
    ok = jnp.isfinite(losses) & _batch.finite_rows(batch, losses.shape[0])
    cap = layer_list = None
  else:
    cap = _capture(per_example_loss, model, batch)
    losses = cap.losses
    layer_list = _layer_norms(model, cap, wrt)
    groups = [(l.path, n) for l in layer_list for n in l.names]
    param_norms = {(l.path, n): l.param_norms[n] for l in layer_list for n in l.names}
    ok = (jnp.isfinite(losses) & _batch.finite_rows(batch, losses.shape[0])
          & ~cap.bad)
    for l in layer_list:
      ok = ok & l.finite
  if not groups:
    raise ValueError('model has no trained parameters (wrt selects nothing).')
  total = _combine(list(param_norms.values()))
  ok = ok & jnp.isfinite(total)

  if scope == 'global':
    group_of = {g: 'all' for g in groups}
  elif scope == 'per_layer':
    group_of = {g: g[0] for g in groups}
  else:
    group_of = {g: g for g in groups}
  members: dict[Any, list[Any]] = {}
  for g in groups:
    members.setdefault(group_of[g], []).append(g)
  group_norm = {k: _combine([param_norms[g] for g in v]) for k, v in members.items()}
  num_groups = len(members)
  keep = ok if nonfinite == 'drop' else jnp.ones_like(ok)
  if mask is not None:
    keep = keep & _batch.check_mask(mask, losses.shape[0])
  w = {g: jnp.where(keep, _weight(group_norm[group_of[g]], weights, clip_norm, stability), 0)
       for g in groups}

  if path == 'vmap':
    def wsum(p, x):
      key = forward_pass.path_keys(p)
      ww = w[(_path_str(key[:-1]), key[-1])]
      rows = keep.reshape((-1,) + (1,) * (x.ndim - 1))
      x = jnp.where(rows, x, 0)
      return jnp.tensordot(ww.astype(x.dtype), x, axes=1)
    summed = jax.tree_util.tree_map_with_path(wsum, grads)
  else:
    summed = _weighted_sum(model, layer_list, w, keep, wrt, nonfinite)
  loss = _batch.masked_sum(losses, keep)
  base = 1.0 if weights == 'normalize' else clip_norm
  c = _validation.concrete_float(base)
  root = math.sqrt(num_groups)
  sensitivity = c * root if c is not None else jnp.asarray(base, jnp.float32) * root
  norms = jnp.where(mask is None or _batch.check_mask(mask, losses.shape[0]), total, 0)
  return GhostGradSum(loss, summed, norms, sensitivity)


def _rows(v, a):
  return v.reshape((-1,) + (1,) * (a.ndim - 1))


def _weighted_sum(model, layer_list, w, keep, wrt, nonfinite):
  """Each layer's VJP w.r.t. its parameters at cotangent ``w_i delta_i``."""
  sums: dict[tuple[str, str], jax.Array] = {}
  for l in layer_list:
    gd, params, rest = nnx.split(l.module, wrt, ...)
    if l.per_example is not None:
      for p, g in jax.tree_util.tree_flatten_with_path(l.per_example)[0]:
        name = forward_pass.path_keys(p)[-1]
        ww = w[(l.path, name)]
        if nonfinite == 'drop':
          g = jnp.where(_rows(keep, g), g, 0)
        sums[(l.path, name)] = jnp.tensordot(ww.astype(g.dtype), g, axes=1)
      continue
    if not l.xs:
      for p, v in jax.tree_util.tree_flatten_with_path(params)[0]:
        sums[(l.path, forward_pass.path_keys(p)[-1])] = jnp.zeros_like(v)
      continue
    # Parameters sharing one weight vector share one VJP.
    distinct: dict[int, list[str]] = {}
    vecs = {}
    for n in l.names:
      distinct.setdefault(id(w[(l.path, n)]), []).append(n)
      vecs[id(w[(l.path, n)])] = w[(l.path, n)]
    for wid, names in distinct.items():
      ww = vecs[wid]
      acc = None
      for x, d in zip(l.xs, l.ds):
        if nonfinite == 'drop':
          x = jnp.where(_rows(keep, x), x, 0)
          d = jnp.where(_rows(keep, d), d, 0)
        ct = d * _rows(ww, d).astype(d.dtype)
        _, vjp = jax.vjp(lambda p, x=x: nnx.merge(gd, p, rest)(x), params)
        (g,) = vjp(ct)
        acc = g if acc is None else jax.tree.map(jnp.add, acc, g)
      for p, v in jax.tree_util.tree_flatten_with_path(acc)[0]:
        name = forward_pass.path_keys(p)[-1]
        if name in names:
          sums[(l.path, name)] = v
  state = nnx.state(model, wrt)

  def leaf(p, v):
    key = forward_pass.path_keys(p)
    return sums[(_path_str(key[:-1]), key[-1])].astype(jnp.asarray(v).dtype)

  return jax.tree_util.tree_map_with_path(leaf, state)
