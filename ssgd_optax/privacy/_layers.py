# Copyright 2026 The ssgd_optax Authors. Licensed under the Apache License 2.0.
"""Flax NNX layers for backpropagation clipping, and their sensitivities.

:class:`ClippedLayer` wraps an existing ``nnx.Linear`` or ``nnx.Conv`` (sharing
its parameters): it clips the layer's input per example to ``C_in`` in the
forward pass and the cotangent of its output to ``C_out`` in the backward pass
(conv mixed norm, see :func:`ssgd_optax.privacy.clip_upstream`). Each example's
gradient of the wrapped layer is then bounded:

==========  ==================================  ==========================
parameter   per-example gradient                L2 sensitivity of the sum
==========  ==================================  ==========================
kernel      ``sum_p patch_p(x_i) g_{i,p}^T``    ``C_in * C_out``
bias        ``sum_p g_{i,p}``                   ``C_out``
==========  ==================================  ==========================

(``p`` runs over spatial positions for a conv, over the extra axes of a dense
layer applied to ``[B, ..., D]``, and is a single position for ``[B, D]``.)
Every bounded tensor is released as its own Gaussian mechanism on the same
batch, so the accountant gets ``num_releases`` = the number of such tensors
(:func:`num_releases`); biases are off by default, as in the paper.

:class:`ClippedLinear` and :class:`ClippedConv` build and wrap a new layer;
:func:`clip_layers` wraps every ``Linear``/``Conv`` of an existing model in
place; :func:`sensitivities` gives the tree of per-tensor sensitivities that
:func:`ssgd_optax.privacy.add_gaussian_noise` needs, and refuses models with
parameters it cannot bound (BatchNorm couples the examples of a batch;
LayerNorm, GroupNorm, embeddings and attention need their own analysis).

**Model structure.** The table holds for one application of the layer per
example. Three structures would break it silently, so they are refused or
accounted:

* *aliasing*: a parameter reachable from two paths (a layer stored under two
  attributes, two ``ClippedLayer`` wrapping one layer, tied weights) is
  refused by :func:`check_model`, :func:`clip_layers` and
  :func:`sensitivities` (``ValueError`` naming both paths): the second path
  may be unclipped, or the gradient may add two bounded terms;
* *reuse*: a layer applied ``k`` times per example gets up to ``k`` times the
  bounds. :class:`ClippedLayer` declares ``uses`` (default 1);
  :func:`sensitivities` multiplies its bounds by ``uses``, and
  :func:`ssgd_optax.privacy.backprop_clip_grad_sum` counts the Python calls of
  every ``ClippedLayer`` while it traces the forward pass and raises
  ``ValueError`` on the ``uses + 1``-th call. A call inside a nested JAX
  transformation of the forward pass (``lax.scan``/``fori_loop``/``cond``,
  ``vmap``, ``remat``, ``nnx.scan``), where one Python call may run many
  times, is refused for the same reason;
* *unsupported layers*: BatchNorm is refused; every other trained parameter
  must be inside a ``ClippedLayer``, or :func:`sensitivities` refuses it.

What is not checked: a model that calls the wrapped layer directly
(``wrapper.layer(x)``) or reads its kernel outside the wrapper, or mixes
examples in plain JAX code (``x - x.mean(0)``). Those are up to the model's
author; the counts above hold only for gradients computed by
:func:`~ssgd_optax.privacy.backprop_clip_grad_sum`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from ssgd_optax import _validation
from ssgd_optax.privacy import _clipping as clipping
from ssgd_optax.privacy import _forward_pass as forward_pass

__all__ = [
    'ClippedConv',
    'ClippedLayer',
    'ClippedLinear',
    'check_model',
    'clip_layers',
    'num_releases',
    'sensitivities',
]

# Padding modes that repeat input pixels inside one patch would break
# ||patch_p(x)|| <= ||x||.
_BAD_PADDING = ('CIRCULAR', 'REFLECT')


def _check_bounds(input_bound: Any, grad_bound: Any) -> tuple[float, float]:
  out = []
  for name, value in (('input_bound', input_bound), ('grad_bound', grad_bound)):
    _validation.check_positive(name, value)
    v = _validation.concrete_float(value)
    if v is None:
      raise TypeError(f'{name} must be a concrete number (it sets the sensitivity); got a tracer.')
    out.append(v)
  return out[0], out[1]


class ClippedLayer(nnx.Module):
  r"""Backprop clipping around an ``nnx.Linear`` or ``nnx.Conv``.

  .. math:: z = \mathrm{clip\_upstream}_{C_{out}}\big(\mathrm{layer}(
     \mathrm{clip}_{C_{in}}(x))\big)

  Per-example kernel gradient ``<= uses * C_in * C_out`` (Frobenius), bias
  gradient ``<= uses * C_out``; the wrapped layer's parameters are shared, not
  copied. An example whose input or cotangent has a NaN/Inf entry is zeroed
  at the clip (dropped), so it cannot make the gradient sum non-finite.

  Args:
    layer: an ``nnx.Linear`` or ``nnx.Conv`` (not ``CIRCULAR``/``REFLECT``
      padding).
    input_bound: ``C_in > 0``, the per-example L2 bound of the layer input.
    grad_bound: ``C_out > 0``, the per-example bound of the output cotangent
      (L2 over features, L1 over spatial/extra axes).
    uses: ``k >= 1``, the most times the layer is applied in one forward
      pass; the bounds are multiplied by ``k``, and
      :func:`~ssgd_optax.privacy.backprop_clip_grad_sum` refuses a ``k+1``-th
      call.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from flax import nnx
    >>> from ssgd_optax.privacy import ClippedLayer
    >>> layer = ClippedLayer(nnx.Linear(4, 2, use_bias=False, rngs=nnx.Rngs(0)),
    ...                      input_bound=1.0, grad_bound=0.5)
    >>> layer(jnp.ones((3, 4))).shape, layer.sensitivity()
    ((3, 2), {'kernel': 0.5})
  """

  def __init__(self, layer: nnx.Module, *, input_bound: float, grad_bound: float,
               uses: int = 1):
    _validation.check_int('uses', uses, minimum=1)
    if not isinstance(layer, (nnx.Linear, nnx.Conv)):
      raise TypeError(
          'ClippedLayer wraps an nnx.Linear or nnx.Conv (whose gradient backprop '
          f'clipping bounds); got {type(layer).__name__}.')
    if isinstance(layer, nnx.Conv) and isinstance(layer.padding, str) and (
        layer.padding.upper() in _BAD_PADDING):
      raise ValueError(
          f'ClippedLayer does not support padding={layer.padding!r}: it repeats '
          'input pixels inside a patch and breaks the C_in * C_out bound. Use '
          "'SAME', 'VALID', 'CAUSAL' or explicit zero padding.")
    self.layer = layer
    self.input_bound, self.grad_bound = _check_bounds(input_bound, grad_bound)
    self.uses = int(uses)

  def __call__(self, x: jax.Array) -> jax.Array:
    scope = forward_pass.current()
    nonfinite = 'drop'
    if scope is not None:
      scope.record(self, x)
      nonfinite = scope.nonfinite
    x = clipping.clip_inputs(x, self.input_bound, nonfinite)
    return clipping.clip_upstream(self.layer(x), self.grad_bound, 'conv', nonfinite)

  def sensitivity(self) -> dict[str, float]:
    """L2 sensitivity of the batch-summed gradient of each parameter."""
    out = {'kernel': self.uses * self.input_bound * self.grad_bound}
    if self.layer.use_bias:
      out['bias'] = self.uses * self.grad_bound
    return out


class ClippedLinear(ClippedLayer):
  """A new ``nnx.Linear`` (bias-free by default) wrapped in :class:`ClippedLayer`.

  Args:
    in_features: input width.
    out_features: output width.
    input_bound: ``C_in > 0``.
    grad_bound: ``C_out > 0``.
    use_bias: add a bias (sensitivity ``C_out``, one more release).
    uses: applications per forward pass (see :class:`ClippedLayer`).
    rngs: ``nnx.Rngs`` for the initialisation.
    **kwargs: passed to ``nnx.Linear``.

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from ssgd_optax.privacy import ClippedLinear
    >>> ClippedLinear(4, 2, input_bound=3.0, grad_bound=0.1,
    ...               rngs=nnx.Rngs(0))(jnp.ones((5, 4))).shape
    (5, 2)
  """

  def __init__(self, in_features: int, out_features: int, *, input_bound: float,
               grad_bound: float, use_bias: bool = False, uses: int = 1, rngs: nnx.Rngs,
               **kwargs):
    super().__init__(nnx.Linear(in_features, out_features, use_bias=use_bias, rngs=rngs,
                                **kwargs),
                     input_bound=input_bound, grad_bound=grad_bound, uses=uses)


class ClippedConv(ClippedLayer):
  """A new ``nnx.Conv`` (bias-free by default) wrapped in :class:`ClippedLayer`.

  Args:
    in_features: input channels.
    out_features: output channels.
    kernel_size: e.g. ``(3, 3)``.
    input_bound: ``C_in > 0`` (L2 over the whole input image).
    grad_bound: ``C_out > 0`` (mixed norm: L1 over positions, L2 over
      channels).
    use_bias: add a bias (sensitivity ``C_out``, one more release).
    uses: applications per forward pass (see :class:`ClippedLayer`).
    rngs: ``nnx.Rngs``.
    **kwargs: passed to ``nnx.Conv`` (``strides``, ``padding``...).

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from ssgd_optax.privacy import ClippedConv
    >>> conv = ClippedConv(1, 4, (3, 3), input_bound=3.0, grad_bound=0.1,
    ...                    rngs=nnx.Rngs(0))
    >>> conv(jnp.ones((2, 8, 8, 1))).shape
    (2, 8, 8, 4)
  """

  def __init__(self, in_features: int, out_features: int, kernel_size: int | Sequence[int], *,
               input_bound: float, grad_bound: float, use_bias: bool = False,
               uses: int = 1, rngs: nnx.Rngs, **kwargs):
    super().__init__(nnx.Conv(in_features, out_features, kernel_size, use_bias=use_bias,
                              rngs=rngs, **kwargs),
                     input_bound=input_bound, grad_bound=grad_bound, uses=uses)


def check_model(model: nnx.Module) -> None:
  """Raises if ``model`` has BatchNorm or a parameter reachable from two paths.

  BatchNorm couples the examples of a batch. A shared parameter (a layer
  stored under two attributes, two :class:`ClippedLayer` wrapping one layer,
  tied weights) gets gradient from both places: one of them may be unclipped
  and the two bounded terms add up, so the per-tensor bound would be false.
  (To apply one layer several times, call it several times from one place and
  declare ``ClippedLayer(..., uses=k)``.)

  Args:
    model: an ``nnx.Module``.

  Raises:
    TypeError: ``model`` is not an ``nnx.Module``.
    ValueError: it contains ``nnx.BatchNorm``, or a shared ``nnx.Param``,
      naming where.

  Example:
    >>> from flax import nnx
    >>> from ssgd_optax.privacy import check_model
    >>> check_model(nnx.BatchNorm(3, rngs=nnx.Rngs(0)))
    Traceback (most recent call last):
    ...
    ValueError: ...BatchNorm at 'model' mixes the examples of a batch...
  """
  if not isinstance(model, nnx.Module):
    raise TypeError(f'model must be a flax.nnx.Module; got {type(model).__name__}.')
  for path, node in nnx.iter_graph(model):
    if isinstance(node, nnx.BatchNorm):
      where = '/'.join(map(str, path)) or 'model'
      raise ValueError(
          f'Backprop clipping does not support BatchNorm: nnx.BatchNorm at {where!r} mixes '
          "the examples of a batch, so one example's contribution is not bounded. "
          'Remove it or use GroupNorm/LayerNorm (whose parameters then need their own '
          'sensitivity analysis).')
  nodes = None
  for paths in nnx.find_duplicates(model):
    if nodes is None:
      nodes = dict(nnx.iter_graph(model))
    node = nodes.get(tuple(paths[0]))
    # Shared parameter-free nodes (an Rngs stream, an activation) are harmless.
    if not (isinstance(node, nnx.Param) or (
        nnx.graph.is_graph_node(node) and jax.tree.leaves(nnx.state(node, nnx.Param)))):
      continue
    names = ', '.join(repr('/'.join(map(str, p)) or 'model') for p in paths)
    raise ValueError(
        f'A parameter is reachable from {len(paths)} paths ({names}): an aliased layer, '
        'two ClippedLayer wrapping one layer, or tied weights. Its gradient then adds '
        'the contributions of every path (one of which may be unclipped), so the '
        'per-tensor sensitivity bound does not hold. Store each layer once; to apply a '
        'layer several times, call it several times and declare ClippedLayer(..., uses=k).')


def clip_layers(model: nnx.Module, *, input_bound: float, grad_bound: float) -> nnx.Module:
  """Wraps every ``nnx.Linear`` and ``nnx.Conv`` of ``model`` in :class:`ClippedLayer`.

  The replacement is in place (attributes, ``nnx.List``/``nnx.Sequential``
  entries); parameters are shared with the original layers. Already wrapped
  layers are left alone. The model is checked with :func:`check_model` first,
  so a layer reachable from two attributes (which would be wrapped at one of
  them only) is refused with a ``ValueError``. Every wrapper gets ``uses=1``:
  a model that applies a layer twice is refused by
  :func:`~ssgd_optax.privacy.backprop_clip_grad_sum` until that wrapper's
  ``uses`` is raised.

  Args:
    model: an ``nnx.Module`` (may itself be a ``Linear``/``Conv``).
    input_bound: ``C_in > 0`` for every wrapped layer.
    grad_bound: ``C_out > 0`` for every wrapped layer.

  Returns:
    The model (or the wrapper, when ``model`` itself is a ``Linear``/``Conv``).

  Example:
    >>> from flax import nnx
    >>> from ssgd_optax.privacy import clip_layers, num_releases
    >>> model = nnx.Sequential(nnx.Linear(4, 8, use_bias=False, rngs=nnx.Rngs(0)),
    ...                        nnx.relu,
    ...                        nnx.Linear(8, 2, use_bias=False, rngs=nnx.Rngs(1)))
    >>> model = clip_layers(model, input_bound=3.0, grad_bound=0.1)
    >>> num_releases(model)
    2
  """
  check_model(model)
  _check_bounds(input_bound, grad_bound)
  if isinstance(model, (nnx.Linear, nnx.Conv)):
    return ClippedLayer(model, input_bound=input_bound, grad_bound=grad_bound)
  nodes = dict(nnx.iter_graph(model))
  inside_wrapper = {path + ('layer',) for path, node in nodes.items()
                    if isinstance(node, ClippedLayer)}
  for path, node in nodes.items():
    if not path or not isinstance(node, (nnx.Linear, nnx.Conv)) or path in inside_wrapper:
      continue
    parent, key = nodes[path[:-1]], path[-1]
    wrapped = ClippedLayer(node, input_bound=input_bound, grad_bound=grad_bound)
    if isinstance(key, int):
      parent[key] = wrapped
    else:
      setattr(parent, key, wrapped)
  return model


def sensitivities(model: nnx.Module, wrt: Any = nnx.Param) -> Any:
  """The L2 sensitivity of each parameter's batch-summed gradient, as a tree.

  Shaped like ``nnx.state(model, wrt)`` (and like ``nnx.grad``'s output),
  with a float32 scalar per leaf: ``uses * C_in * C_out`` for a kernel,
  ``uses * C_out`` for a bias. Every parameter selected by ``wrt`` must
  belong to a :class:`ClippedLayer`; exclude the others from training (and
  from ``wrt``) or wrap them. Models that fail :func:`check_model` (BatchNorm,
  shared parameters) are refused.

  Args:
    model: an ``nnx.Module`` whose trainable layers are clipped.
    wrt: the ``nnx`` filter of the trained variables (default ``nnx.Param``).

  Returns:
    An ``nnx.State`` of scalar sensitivities.

  Raises:
    ValueError: a parameter has no bound (named), the model has BatchNorm, or a
      parameter is reachable from two paths.

  Example:
    >>> from flax import nnx
    >>> from ssgd_optax.privacy import ClippedLinear, sensitivities
    >>> layer = ClippedLinear(4, 2, input_bound=3.0, grad_bound=0.5,
    ...                       use_bias=True, rngs=nnx.Rngs(0))
    >>> s = sensitivities(layer)
    >>> float(s['layer']['kernel'][...]), float(s['layer']['bias'][...])
    (1.5, 0.5)
  """
  check_model(model)
  bounds = {}
  for path, node in nnx.iter_graph(model):
    if isinstance(node, ClippedLayer):
      for name, value in node.sensitivity().items():
        bounds[tuple(path) + ('layer', name)] = value
  state = nnx.state(model, wrt)

  def leaf(path, _):
    key = forward_pass.path_keys(path)
    if key not in bounds:
      raise ValueError(
          f'Parameter {"/".join(map(str, key))!r} is not inside a ClippedLayer, so its '
          'gradient has no sensitivity bound. Wrap its layer (clip_layers / ClippedLayer), '
          'or freeze it and leave it out of `wrt`.')
    return jnp.float32(bounds[key])

  return jax.tree_util.tree_map_with_path(leaf, state)


def num_releases(model: nnx.Module, wrt: Any = nnx.Param) -> int:
  """Gaussian releases per step: one per bounded parameter tensor.

  Args:
    model: as for :func:`sensitivities`.
    wrt: the ``nnx`` filter of the trained variables.

  Returns:
    ``L``, to pass as ``num_releases`` to the accountant.

  Example:
    >>> from flax import nnx
    >>> from ssgd_optax.privacy import clip_layers, num_releases
    >>> model = nnx.Sequential(
    ...     nnx.Conv(1, 4, (3, 3), use_bias=False, rngs=nnx.Rngs(0)), nnx.relu,
    ...     lambda h: h.reshape(h.shape[0], -1),
    ...     nnx.Linear(4 * 8 * 8, 10, rngs=nnx.Rngs(1)))   # with a bias
    >>> num_releases(clip_layers(model, input_bound=3.0, grad_bound=1.0))
    3
  """
  return len(jax.tree.leaves(sensitivities(model, wrt)))
