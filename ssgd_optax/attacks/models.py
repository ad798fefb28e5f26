# Copyright 2026 The ssgd_optax Authors. Licensed under the Apache License 2.0.
"""Victim models of the gradient-leakage literature (Flax NNX), as pure functions.

* :class:`LeNetZhu`: the sigmoid LeNet of DLG (Zhu et al.): three 5x5
  convolutions (stride 2, 2, 1; 12 channels), sigmoid, one dense layer; all
  weights and biases ``U(-0.5, 0.5)``. The standard victim: smooth and
  untrained, it leaks almost perfectly.
* :func:`relu_cnn`: a small ReLU CNN (:class:`ssgd_optax.models.CNN` with
  narrow layers), closer to what is trained in practice.

Attacks take ``apply_fn(params, x)`` and a parameter pytree;
:func:`as_functional` turns any NNX module into that pair (parameters as a
plain nested dict, so leaf paths read ``"['head']['kernel']"``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import nnx

from ssgd_optax import _validation

__all__ = ['LeNetZhu', 'relu_cnn', 'as_functional']


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
    _validation.check_int('num_classes', num_classes, minimum=2)
    _validation.check_positive('init_scale', init_scale)
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
  """A small ReLU CNN: :class:`ssgd_optax.models.CNN` with channels (8, 16), dense 32.

  Example:

  >>> from flax import nnx
  >>> import jax.numpy as jnp
  >>> relu_cnn((16, 16, 1), 10, rngs=nnx.Rngs(0))(jnp.zeros((1, 16, 16, 1))).shape
  (1, 10)
  """
  from ssgd_optax import models
  return models.CNN(input_shape, num_classes, channels=(8, 16), dense=32,
                    activation='relu', rngs=rngs)


def as_functional(model: nnx.Module) -> tuple[Callable[[Any, jax.Array], jax.Array], Any]:
  """``(apply_fn, params)`` for an NNX module: ``apply_fn(params, x) == model(x)``.

  ``params`` is the module's ``nnx.Param`` state as a plain nested dict;
  other state (e.g. batch statistics) is frozen into ``apply_fn``.

  Example:

  >>> from flax import nnx
  >>> import jax.numpy as jnp
  >>> f, p = as_functional(nnx.Linear(3, 2, rngs=nnx.Rngs(0)))
  >>> sorted(p), f(p, jnp.ones((1, 3))).shape
  (['bias', 'kernel'], (1, 2))
  """
  if not isinstance(model, nnx.Module):
    raise TypeError(f'model must be a flax.nnx.Module; got {type(model).__name__}.')
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  pure = nnx.to_pure_dict(params)

  def apply_fn(p: Any, x: jax.Array) -> jax.Array:
    state = jax.tree_util.tree_map(lambda v: v, params)
    nnx.replace_by_pure_dict(state, p)
    return nnx.merge(graphdef, state, rest)(x)

  return apply_fn, pure
