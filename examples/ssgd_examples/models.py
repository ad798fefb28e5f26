# Copyright 2026 The ssgd_optax Authors. Licensed under the Apache License 2.0.
"""Flax NNX image classifiers for the examples, tests and benchmarks.

None of them uses BatchNorm: BatchNorm mixes the examples of a batch, which
breaks per-example gradients (DP clipping, gradient-inversion attacks on one
image) and makes a client's update depend on its batch composition. The ResNet
uses GroupNorm instead.

==========  ===============================================  ==================
model       layers                                           parameters (MNIST)
==========  ===============================================  ==================
``mlp``     flatten, [Linear, act] x len(hidden), Linear     101,770 (128)
``cnn``     [Conv 3x3, act, avg-pool 2] x 2, Linear, act,    206,922 (16, 32,
            Linear (the Flax MNIST CNN without BatchNorm)    128)
``resnet``  Conv 3x3, 3 stages of basic blocks (GroupNorm),  78,042 (16, 32,
            global average pool, Linear                      64) on 32x32x3
==========  ===============================================  ==================

All take NHWC float inputs (normalised images) and return logits
``[batch, num_classes]``; all are deterministic (no dropout), so one call
signature ``model(x)`` fits every caller.

The models of the papers reproduced here: :class:`StevensCNN` (backprop
clipping, bias-free), :class:`LeNetZhu` (the sigmoid LeNet of DLG, the
standard gradient-leakage victim) and :func:`relu_cnn` (a narrow ReLU CNN
victim).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

__all__ = ['MODELS', 'MLP', 'CNN', 'LeNetZhu', 'ResNet', 'StevensCNN', 'count_params',
           'make_model', 'relu_cnn']

MODELS = ('mlp', 'cnn', 'resnet')

_ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
  'relu': jax.nn.relu,
  'gelu': jax.nn.gelu,
  'tanh': jnp.tanh,
  'sigmoid': jax.nn.sigmoid,
}


def _activation(name: str) -> Callable[[jax.Array], jax.Array]:
  if name not in _ACTIVATIONS:
    raise ValueError(f'activation must be one of '
                     f'{", ".join(map(repr, _ACTIVATIONS))}; got {name!r}.')
  return _ACTIVATIONS[name]


def _check_positive_ints(name: str, values: Sequence[int], *,
                         allow_empty: bool = False) -> tuple[int, ...]:
  if isinstance(values, (int, str)) or not isinstance(values, Sequence):
    raise TypeError(f'{name} must be a sequence of ints; got {values!r}.')
  values = tuple(values)
  if not values and not allow_empty:
    raise ValueError(f'{name} must not be empty.')
  for v in values:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
      raise ValueError(f'{name} must hold ints >= 1; got {values!r}.')
  return values


def _check_shape(input_shape: Sequence[int]) -> tuple[int, int, int]:
  shape = _check_positive_ints('input_shape', input_shape)
  if len(shape) != 3:
    raise ValueError(f'input_shape must be (height, width, channels); got '
                     f'{shape!r}.')
  return shape  # type: ignore[return-value]


def _check_classes(num_classes: int) -> None:
  if isinstance(num_classes, bool) or not isinstance(num_classes, int) \
      or num_classes < 1:
    raise ValueError(f'num_classes must be an int >= 1; got {num_classes!r}.')


class MLP(nnx.Module):
  """Multi-layer perceptron on flattened images.

  Args:
    input_shape: ``(H, W, C)`` of one image.
    num_classes: number of outputs.
    hidden: widths of the hidden layers (may be empty: logistic regression).
    activation: ``'relu'``, ``'gelu'``, ``'tanh'`` or ``'sigmoid'`` (the last
      two are twice differentiable everywhere, as gradient-matching attacks
      prefer).
    rngs: ``nnx.Rngs`` for the initialisation.

  Examples:
    >>> from flax import nnx
    >>> model = MLP((8, 8, 1), 10, hidden=(32,), rngs=nnx.Rngs(0))
    >>> model(jnp.zeros((2, 8, 8, 1))).shape
    (2, 10)
  """

  def __init__(self, input_shape: Sequence[int], num_classes: int, *,
               hidden: Sequence[int] = (128,), activation: str = 'relu',
               rngs: nnx.Rngs):
    shape = _check_shape(input_shape)
    _check_classes(num_classes)
    hidden = _check_positive_ints('hidden', hidden, allow_empty=True)
    self.act = _activation(activation)
    widths = (math.prod(shape),) + hidden
    self.hidden = nnx.List([nnx.Linear(a, b, rngs=rngs)
                            for a, b in zip(widths[:-1], widths[1:])])
    self.head = nnx.Linear(widths[-1], num_classes, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = x.reshape(x.shape[0], -1)
    for layer in self.hidden:
      x = self.act(layer(x))
    return self.head(x)


class CNN(nnx.Module):
  """Two conv/pool blocks and two dense layers; no BatchNorm, no dropout.

  The Flax MNIST example's CNN with BatchNorm and Dropout removed and smaller
  default widths (CPU friendly).

  Args:
    input_shape: ``(H, W, C)``; ``H`` and ``W`` must be divisible by 4.
    num_classes: number of outputs.
    channels: output channels of the two convolutions.
    dense: width of the hidden dense layer.
    activation: see :class:`MLP`.
    rngs: ``nnx.Rngs`` for the initialisation.

  Examples:
    >>> from flax import nnx
    >>> model = nnx.eval_shape(lambda: CNN((28, 28, 1), 10, rngs=nnx.Rngs(0)))
    >>> nnx.eval_shape(lambda m, x: m(x), model, jnp.zeros((2, 28, 28, 1))).shape
    (2, 10)
  """

  def __init__(self, input_shape: Sequence[int], num_classes: int, *,
               channels: Sequence[int] = (16, 32), dense: int = 128,
               activation: str = 'relu', rngs: nnx.Rngs):
    h, w, c = _check_shape(input_shape)
    _check_classes(num_classes)
    channels = _check_positive_ints('channels', channels)
    if len(channels) != 2:
      raise ValueError(f'channels must be two ints >= 1; got {channels!r}.')
    c1, c2 = channels
    (dense,) = _check_positive_ints('dense', (dense,))
    if h % 4 or w % 4:
      raise ValueError(f'CNN needs height and width divisible by 4 (two 2x2 '
                       f'pools); got input_shape {tuple(input_shape)!r}.')
    self.act = _activation(activation)
    self.conv1 = nnx.Conv(c, c1, kernel_size=(3, 3), rngs=rngs)
    self.conv2 = nnx.Conv(c1, c2, kernel_size=(3, 3), rngs=rngs)
    self.dense = nnx.Linear(h // 4 * w // 4 * c2, dense, rngs=rngs)
    self.head = nnx.Linear(dense, num_classes, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = nnx.avg_pool(self.act(self.conv1(x)), (2, 2), strides=(2, 2))
    x = nnx.avg_pool(self.act(self.conv2(x)), (2, 2), strides=(2, 2))
    x = x.reshape(x.shape[0], -1)
    return self.head(self.act(self.dense(x)))


def _groups(channels: int, max_groups: int) -> int:
  """The largest group count <= max_groups that divides channels."""
  return max(g for g in range(1, min(max_groups, channels) + 1)
             if channels % g == 0)


class _BasicBlock(nnx.Module):
  """Pre-activation-free ResNet basic block with GroupNorm."""

  def __init__(self, cin: int, cout: int, stride: int, groups: int, act,
               rngs: nnx.Rngs):
    self.act = act
    self.conv1 = nnx.Conv(cin, cout, (3, 3), stride, use_bias=False, rngs=rngs)
    self.norm1 = nnx.GroupNorm(cout, _groups(cout, groups), rngs=rngs)
    self.conv2 = nnx.Conv(cout, cout, (3, 3), use_bias=False, rngs=rngs)
    # Zero-initialised last scale: each block starts as the identity, the usual
    # trick that lets normalisation-free-ish small ResNets train from step 0.
    self.norm2 = nnx.GroupNorm(cout, _groups(cout, groups),
                               scale_init=nnx.initializers.zeros, rngs=rngs)
    if stride != 1 or cin != cout:
      self.shortcut = nnx.Conv(cin, cout, (1, 1), stride, use_bias=False,
                               rngs=rngs)
      self.shortcut_norm = nnx.GroupNorm(cout, _groups(cout, groups),
                                         rngs=rngs)
    else:
      self.shortcut = None
      self.shortcut_norm = None

  def __call__(self, x: jax.Array) -> jax.Array:
    y = self.act(self.norm1(self.conv1(x)))
    y = self.norm2(self.conv2(y))
    if self.shortcut is not None:
      x = self.shortcut_norm(self.shortcut(x))
    return self.act(x + y)


class ResNet(nnx.Module):
  """A small CIFAR-style ResNet with GroupNorm instead of BatchNorm.

  A 3x3 stem, then one stage per entry of ``widths`` (the first at stride 1,
  the others at stride 2) of ``blocks_per_stage`` basic blocks, global average
  pooling and a linear head. ``widths=(16, 32, 64)`` with 3 blocks per stage
  is ResNet-20's layout.

  Args:
    input_shape: ``(H, W, C)`` of one image.
    num_classes: number of outputs.
    widths: channels of each stage.
    blocks_per_stage: basic blocks in each stage.
    groups: GroupNorm groups (reduced to a divisor of the channel count).
    activation: see :class:`MLP`.
    rngs: ``nnx.Rngs`` for the initialisation.

  Examples:
    >>> from flax import nnx
    >>> # nnx.eval_shape: shapes only, nothing is computed (fast).
    >>> model = nnx.eval_shape(
    ...     lambda: ResNet((32, 32, 3), 10, widths=(8, 16), rngs=nnx.Rngs(0)))
    >>> nnx.eval_shape(lambda m, x: m(x), model, jnp.zeros((2, 32, 32, 3))).shape
    (2, 10)
  """

  def __init__(self, input_shape: Sequence[int], num_classes: int, *,
               widths: Sequence[int] = (16, 32, 64), blocks_per_stage: int = 1,
               groups: int = 8, activation: str = 'relu', rngs: nnx.Rngs):
    _, _, c = _check_shape(input_shape)
    _check_classes(num_classes)
    widths = _check_positive_ints('widths', widths)
    (blocks_per_stage,) = _check_positive_ints('blocks_per_stage',
                                               (blocks_per_stage,))
    (groups,) = _check_positive_ints('groups', (groups,))
    act = _activation(activation)
    self.act = act
    self.stem = nnx.Conv(c, widths[0], (3, 3), use_bias=False, rngs=rngs)
    self.stem_norm = nnx.GroupNorm(widths[0], _groups(widths[0], groups),
                                   rngs=rngs)
    blocks = []
    cin = widths[0]
    for i, cout in enumerate(widths):
      for j in range(blocks_per_stage):
        stride = 2 if i > 0 and j == 0 else 1
        blocks.append(_BasicBlock(cin, cout, stride, groups, act, rngs))
        cin = cout
    self.blocks = nnx.List(blocks)
    self.head = nnx.Linear(cin, num_classes, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = self.act(self.stem_norm(self.stem(x)))
    for block in self.blocks:
      x = block(x)
    return self.head(x.mean(axis=(1, 2)))


def make_model(name: str, input_shape: Sequence[int], num_classes: int, *,
               rngs: nnx.Rngs, **kwargs) -> nnx.Module:
  """Builds a model by name.

  Args:
    name: ``'mlp'``, ``'cnn'`` or ``'resnet'``.
    input_shape: ``(H, W, C)`` of one image.
    num_classes: number of outputs.
    rngs: ``nnx.Rngs`` for the initialisation.
    **kwargs: passed to the model's constructor (``hidden=``, ``channels=``,
      ``widths=``, ``activation=`` ...).

  Returns:
    The :class:`MLP`, :class:`CNN` or :class:`ResNet`.

  Examples:
    >>> from flax import nnx
    >>> m = nnx.eval_shape(lambda: make_model('mlp', (8, 8, 1), 10,
    ...                                       rngs=nnx.Rngs(0), hidden=(16,)))
    >>> count_params(m)
    1210
  """
  if name not in MODELS:
    raise ValueError(f'model must be one of {", ".join(map(repr, MODELS))}; '
                     f'got {name!r}.')
  cls = {'mlp': MLP, 'cnn': CNN, 'resnet': ResNet}[name]
  return cls(input_shape, num_classes, rngs=rngs, **kwargs)


def count_params(model: nnx.Module) -> int:
  """Number of scalar trainable parameters (``nnx.Param``) of ``model``.

  Args:
    model: an NNX module.

  Returns:
    The total size of its ``nnx.Param`` leaves.

  Examples:
    >>> from flax import nnx
    >>> count_params(nnx.Linear(3, 2, rngs=nnx.Rngs(0)))
    8
  """
  params = nnx.state(model, nnx.Param)
  return sum(int(x.size) for x in jax.tree.leaves(params))


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
    >>> model = nnx.eval_shape(lambda: StevensCNN(rngs=nnx.Rngs(0)))
    >>> nnx.eval_shape(lambda m, x: m(x), model, jnp.zeros((2, 28, 28, 1))).shape
    (2, 10)
  """

  def __init__(self, num_classes: int = 10, *, in_channels: int = 1, width: int = 1,
               image_size: int = 28, rngs: nnx.Rngs):
    for name, v in (('num_classes', num_classes), ('in_channels', in_channels),
                    ('width', width), ('image_size', image_size)):
      _check_positive_ints(name, [v])
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


def _uniform(scale: float):
  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -scale, scale)
  return init


class LeNetZhu(nnx.Module):
  """The sigmoid LeNet of DLG, for ``H x W x C`` inputs with ``H, W`` divisible by 4.

  ``Conv(C->12, 5, s2) -> Conv(12->12, 5, s2) -> Conv(12->12, 5, s1)`` (SAME
  padding, sigmoid after each), flatten, ``Linear(12 H W / 16 -> classes)``.
  Flax's SAME padding of the stride-2 convolutions is (1, 2) rather than the
  symmetric 2 of DLG's PyTorch model; the shapes are the same.

  Args:
    input_shape: ``(H, W, C)``, e.g. ``(32, 32, 3)`` (768 features).
    num_classes: outputs.
    init_scale: weights and biases are ``U(-init_scale, init_scale)``.
    rngs: ``nnx.Rngs``.

  Example:

  >>> from flax import nnx
  >>> import jax.numpy as jnp
  >>> m = LeNetZhu((16, 16, 1), 10, rngs=nnx.Rngs(0))
  >>> m(jnp.zeros((2, 16, 16, 1))).shape
  (2, 10)
  """

  def __init__(self, input_shape: Sequence[int], num_classes: int, *,
               init_scale: float = 0.5, rngs: nnx.Rngs):
    if len(input_shape) != 3 or any(int(d) < 1 for d in input_shape):
      raise ValueError(f'input_shape must be (H, W, C) positive ints; got {input_shape!r}.')
    h, w, c = (int(d) for d in input_shape)
    if h % 4 or w % 4:
      raise ValueError(f'LeNetZhu needs H and W divisible by 4; got {input_shape!r}.')
    _check_classes(num_classes)
    if not isinstance(init_scale, (int, float)) or not 0 < init_scale < math.inf:
      raise ValueError(f'init_scale must be a finite number > 0; got {init_scale!r}.')
    kw = dict(kernel_init=_uniform(init_scale), bias_init=_uniform(init_scale), rngs=rngs)
    self.conv1 = nnx.Conv(c, 12, (5, 5), strides=2, padding='SAME', **kw)
    self.conv2 = nnx.Conv(12, 12, (5, 5), strides=2, padding='SAME', **kw)
    self.conv3 = nnx.Conv(12, 12, (5, 5), strides=1, padding='SAME', **kw)
    self.head = nnx.Linear(12 * (h // 4) * (w // 4), num_classes, **kw)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = jax.nn.sigmoid(self.conv1(x))
    x = jax.nn.sigmoid(self.conv2(x))
    x = jax.nn.sigmoid(self.conv3(x))
    return self.head(x.reshape(x.shape[0], -1))


def relu_cnn(input_shape: Sequence[int], num_classes: int, *, rngs: nnx.Rngs) -> nnx.Module:
  """A small ReLU CNN: :class:`CNN` with channels (8, 16), dense 32.

  Example:

  >>> from flax import nnx
  >>> import jax.numpy as jnp
  >>> relu_cnn((16, 16, 1), 10, rngs=nnx.Rngs(0))(jnp.zeros((1, 16, 16, 1))).shape
  (1, 10)
  """
  return CNN(input_shape, num_classes, channels=(8, 16), dense=32,
                    activation='relu', rngs=rngs)
