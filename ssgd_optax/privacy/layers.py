# Copyright 2026 The ssgd_optax Authors. Licensed under the Apache License 2.0.
"""Flax NNX layers for backpropagation clipping, and their sensitivities.

:class:`ClippedLayer` wraps an existing ``nnx.Linear`` or ``nnx.Conv`` (sharing
its parameters): it clips the layer's input per example to ``C_in`` in the
forward pass and the cotangent of its output to ``C_out`` in the backward pass
(conv mixed norm, see :mod:`ssgd_optax.privacy.clipping`). Each example's
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
LayerNorm, GroupNorm and embeddings need their own analysis).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from ssgd_optax import _validation
from ssgd_optax.privacy import clipping

__all__ = [
    'ClippedConv',
    'ClippedLayer',
    'ClippedLinear',
    'StevensCNN',
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

  Per-example kernel gradient ``<= C_in * C_out`` (Frobenius), bias gradient
  ``<= C_out``; the wrapped layer's parameters are shared, not copied.

  Args:
    layer: an ``nnx.Linear`` or ``nnx.Conv`` (not ``CIRCULAR``/``REFLECT``
      padding).
    input_bound: ``C_in > 0``, the per-example L2 bound of the layer input.
    grad_bound: ``C_out > 0``, the per-example bound of the output cotangent
      (L2 over features, L1 over spatial/extra axes).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from flax import nnx
    >>> from ssgd_optax.privacy import ClippedLayer
    >>> layer = ClippedLayer(nnx.Linear(4, 2, use_bias=False, rngs=nnx.Rngs(0)),
    ...                      input_bound=1.0, grad_bound=0.5)
    >>> layer(jnp.ones((3, 4))).shape, layer.sensitivity()
    ((3, 2), {'kernel': 0.5})
  """

  def __init__(self, layer: nnx.Module, *, input_bound: float, grad_bound: float):
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

  def __call__(self, x: jax.Array) -> jax.Array:
    x = clipping.clip_inputs(x, self.input_bound)
    return clipping.clip_upstream(self.layer(x), self.grad_bound, 'conv')

  def sensitivity(self) -> dict[str, float]:
    """L2 sensitivity of the batch-summed gradient of each parameter."""
    out = {'kernel': self.input_bound * self.grad_bound}
    if self.layer.use_bias:
      out['bias'] = self.grad_bound
    return out


class ClippedLinear(ClippedLayer):
  """A new ``nnx.Linear`` (bias-free by default) wrapped in :class:`ClippedLayer`.

  Args:
    in_features: input width.
    out_features: output width.
    input_bound: ``C_in > 0``.
    grad_bound: ``C_out > 0``.
    use_bias: add a bias (sensitivity ``C_out``, one more release).
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
               grad_bound: float, use_bias: bool = False, rngs: nnx.Rngs, **kwargs):
    super().__init__(nnx.Linear(in_features, out_features, use_bias=use_bias, rngs=rngs,
                                **kwargs),
                     input_bound=input_bound, grad_bound=grad_bound)


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
               rngs: nnx.Rngs, **kwargs):
    super().__init__(nnx.Conv(in_features, out_features, kernel_size, use_bias=use_bias,
                              rngs=rngs, **kwargs),
                     input_bound=input_bound, grad_bound=grad_bound)


def check_model(model: nnx.Module) -> None:
  """Raises if ``model`` couples the examples of a batch (BatchNorm).

  Args:
    model: an ``nnx.Module``.

  Raises:
    TypeError: ``model`` is not an ``nnx.Module``.
    ValueError: it contains ``nnx.BatchNorm``, naming where.

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


def clip_layers(model: nnx.Module, *, input_bound: float, grad_bound: float) -> nnx.Module:
  """Wraps every ``nnx.Linear`` and ``nnx.Conv`` of ``model`` in :class:`ClippedLayer`.

  The replacement is in place (attributes, ``nnx.List``/``nnx.Sequential``
  entries); parameters are shared with the original layers. Already wrapped
  layers are left alone. The model is checked with :func:`check_model` first.
  A layer reachable from two attributes would be wrapped at the first one
  only: :func:`sensitivities` then refuses the model.

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


def _keys(path: Sequence[Any]) -> tuple[Any, ...]:
  out = []
  for k in path:
    if isinstance(k, jax.tree_util.DictKey):
      out.append(k.key)
    elif isinstance(k, jax.tree_util.SequenceKey):
      out.append(k.idx)
    elif isinstance(k, jax.tree_util.GetAttrKey):
      if k.name != 'value':
        out.append(k.name)
    else:
      out.append(str(k))
  return tuple(out)


def sensitivities(model: nnx.Module, wrt: Any = nnx.Param) -> Any:
  """The L2 sensitivity of each parameter's batch-summed gradient, as a tree.

  Shaped like ``nnx.state(model, wrt)`` (and like ``nnx.grad``'s output),
  with a float32 scalar per leaf: ``C_in * C_out`` for a kernel, ``C_out``
  for a bias. Every parameter selected by ``wrt`` must belong to a
  :class:`ClippedLayer`; exclude the others from training (and from ``wrt``)
  or wrap them.

  Args:
    model: an ``nnx.Module`` whose trainable layers are clipped.
    wrt: the ``nnx`` filter of the trained variables (default ``nnx.Param``).

  Returns:
    An ``nnx.State`` of scalar sensitivities.

  Raises:
    ValueError: a parameter has no bound (named), or the model has BatchNorm.

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
    key = _keys(path)
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
    >>> from ssgd_optax.privacy import StevensCNN, clip_layers, num_releases
    >>> model = clip_layers(StevensCNN(rngs=nnx.Rngs(0)), input_bound=3.0,
    ...                     grad_bound=1.0)
    >>> num_releases(model)
    4
  """
  return len(jax.tree.leaves(sensitivities(model, wrt)))


class StevensCNN(nnx.Module):
  """The bias-free MNIST CNN of the backprop-clipping paper (authors' code).

  ``Conv(c->16, 8x8, stride 2, VALID)``, ReLU, ``MaxPool(2, stride 1)``,
  ``Conv(16->32, 4x4, stride 2, VALID)``, ReLU, ``MaxPool(2, stride 1)``,
  ``Dense(288->32)``, ReLU, ``Dense(32->classes)``; no biases, no
  normalisation layers, so it works plain, with :func:`clip_layers` and with
  per-example DP-SGD. 28x28 inputs give the 3x3x32 = 288 features.

  Args:
    num_classes: outputs.
    in_channels: input channels.
    width: multiplies the channel widths (16, 32) and the hidden width 32.
    rngs: ``nnx.Rngs``.

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from ssgd_optax.privacy import StevensCNN
    >>> model = nnx.eval_shape(lambda: StevensCNN(rngs=nnx.Rngs(0)))
    >>> nnx.eval_shape(lambda m, x: m(x), model, jnp.zeros((2, 28, 28, 1))).shape
    (2, 10)
  """

  def __init__(self, num_classes: int = 10, *, in_channels: int = 1, width: int = 1,
               image_size: int = 28, rngs: nnx.Rngs):
    for name, v in (('num_classes', num_classes), ('in_channels', in_channels),
                    ('width', width), ('image_size', image_size)):
      _validation.check_int(name, v, minimum=1)
    s = (image_size - 8) // 2 + 1 - 1  # conv1 VALID stride 2, pool 2 stride 1
    s = (s - 4) // 2 + 1 - 1
    if s < 1:
      raise ValueError(f'image_size must be >= 22 for StevensCNN; got {image_size}.')
    self.conv1 = nnx.Conv(in_channels, 16 * width, (8, 8), strides=2, padding='VALID',
                          use_bias=False, rngs=rngs)
    self.conv2 = nnx.Conv(16 * width, 32 * width, (4, 4), strides=2, padding='VALID',
                          use_bias=False, rngs=rngs)
    self.fc1 = nnx.Linear(s * s * 32 * width, 32 * width, use_bias=False, rngs=rngs)
    self.fc2 = nnx.Linear(32 * width, num_classes, use_bias=False, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = nnx.max_pool(jax.nn.relu(self.conv1(x)), (2, 2), strides=(1, 1))
    x = nnx.max_pool(jax.nn.relu(self.conv2(x)), (2, 2), strides=(1, 1))
    x = jax.nn.relu(self.fc1(x.reshape(x.shape[0], -1)))
    return self.fc2(x)
