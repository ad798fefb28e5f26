# Copyright 2026 The ssgd_optax Authors. Licensed under the Apache License 2.0.
"""Per-example gradients for DP training: vmap, microbatching, padding masks.

Differential privacy bounds what *one example* adds to an update, so the
per-example gradients ``g_i = grad_theta loss(theta, x_i)`` are needed before
they are summed. :func:`per_example_grads` turns a single-example loss into a
function returning all of them (a leading batch axis on every leaf);
:func:`nnx_per_example_grads` does the same for a Flax NNX model.

Design points:

* **Microbatching.** ``microbatch_size=m`` evaluates the batch ``m`` examples
  at a time (``jax.lax.map(..., batch_size=m)``: a vmap inside a sequential
  loop), so the activations and backward intermediates held at once scale
  with ``m``, not with the batch. The result (``B`` gradients) is the same.
* **Padding.** Poisson sampling gives batches of varying size; under ``jit``
  they are padded to a fixed size with a 0/1 ``mask``. Rows with ``mask == 0``
  come back as exact zeros (selected with ``jnp.where``, so a padded row whose
  loss is NaN or Inf cannot poison the result), and a zero gradient
  contributes exactly zero after :func:`ssgd_optax.privacy.normalize_per_example`.
* **Non-finite examples.** An example whose input, loss or gradient is NaN
  or Inf comes back as a non-finite row and never touches the other rows.
  ``vmap`` alone does not promise that (on XLA:CPU the batched kernel
  gradient of a convolution mixes rows: one NaN pixel makes every row NaN),
  so the rows are isolated first (``ssgd_optax._batch.isolated_rows``):
  rows with a NaN/Inf input and padded rows are swapped for a copy of a real
  row before the batched gradient, their output is set to NaN (resp. zeros),
  and if a real row still comes back non-finite (an overflow inside the
  model) the batch is recomputed one example at a time. The DP transforms
  drop non-finite rows by default
  (:func:`ssgd_optax.privacy.normalize_per_example`, ``nonfinite="drop"``);
  summing the raw rows yourself would let one example turn the whole update
  into NaN.
* **Multiple devices.** The functions are pure; under ``jax.jit`` with the
  batch sharded over a mesh (``NamedSharding(mesh, P('data'))``) each device
  computes the gradients of its own rows, and inside ``jax.shard_map`` each
  device calls them on its local rows. Where the noise goes is decided by
  :func:`ssgd_optax.privacy.dp_unit_normalize` (``axis_name``).
* **Models.** Anything that couples examples in the forward pass (BatchNorm,
  in-batch attention) breaks the per-example bound: use GroupNorm/LayerNorm.
  Stochastic layers (Dropout) would need a key per example; the NNX helper
  supports deterministic models only.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from ssgd_optax import _batch
from ssgd_optax import _validation

__all__ = ['per_example_grads', 'nnx_per_example_grads', 'mask_rows']


def _to_varying(x: Any, axis_name: Any) -> Any:
  """Casts ``x`` to varying over ``axis_name`` where it is not already."""
  names = axis_name if isinstance(axis_name, tuple) else (axis_name,)
  manual = getattr(jax.typeof(x), 'manual_axis_type', None)
  varying = getattr(manual, 'varying', frozenset())
  missing = tuple(n for n in names if n not in varying)
  return jax.lax.pcast(x, missing, to='varying') if missing else x


def _check_microbatch_size(microbatch_size: Any) -> None:
  if microbatch_size is not None:
    _validation.check_int('microbatch_size', microbatch_size, minimum=1)


def mask_rows(tree: Any, mask: jax.Array | None) -> Any:
  """Sets the rows of a batched tree where ``mask`` is false to exact zeros.

  ``out[i] = tree[i] if mask[i] else 0`` for every leaf, with a select rather
  than a multiplication, so ``NaN`` or ``Inf`` in a masked row do not leak
  through (``0 * NaN = NaN``).

  Args:
    tree: a pytree whose leaves share a leading batch axis of size ``B``.
    mask: ``None`` (no-op) or a ``[B]`` array, bool or 0/1.

  Returns:
    A tree like ``tree``.

  Example:

  >>> import jax.numpy as jnp
  >>> mask_rows({'w': jnp.array([[1., 2.], [jnp.nan, 3.]])}, jnp.array([1, 0]))['w']
  Array([[1., 2.],
         [0., 0.]], dtype=float32)
  """
  if mask is None:
    return tree
  mask = jnp.asarray(mask)
  if mask.ndim != 1:
    raise ValueError(f'mask must be a vector with one entry per example; got shape {mask.shape}.')
  for x in jax.tree.leaves(tree):
    if jnp.ndim(x) == 0 or jnp.shape(x)[0] != mask.shape[0]:
      raise ValueError(
          f'mask has {mask.shape[0]} entries but a leaf has leading shape '
          f'{jnp.shape(x)[:1]}; they must match.')
  return _batch.select_rows(mask.astype(bool), tree)


def per_example_grads(fun: Callable[..., Any],
                      *,
                      argnums: int = 0,
                      has_aux: bool = False,
                      microbatch_size: int | None = None,
                      batch_argnums: Sequence[int] | None = None,
                      axis_name: Hashable | tuple[Hashable, ...] | None = None
                      ) -> Callable[..., Any]:
  r"""Turns a single-example loss into a function of a batch's per-example grads.

  For a loss ``fun(params, *example)`` of one example (no batch axis), the
  returned function computes, for a batch of ``B`` examples,

  .. math::

    G[i] = m_i \, \nabla_{\text{params}}\, \text{fun}(\text{params}, x_i),
    \qquad i = 1..B,

  with ``m_i = 1`` unless a ``mask`` is given (then masked rows are exact
  zeros, whatever ``fun`` returns on them).

  Args:
    fun: ``fun(*args) -> scalar loss`` for one example; ``args[argnums]`` is
      the differentiated argument (e.g. the parameters).
    argnums: the position of the differentiated argument.
    has_aux: ``fun`` returns ``(loss, aux)``; ``aux`` is returned per example.
    microbatch_size: ``None`` (one vmap over the batch) or ``m >= 1``: process
      ``m`` examples at a time to bound peak memory (any batch size works,
      the remainder is processed in a smaller vmap).
    batch_argnums: positions of the arguments that carry a leading batch axis;
      default every argument except ``argnums``. Others are broadcast.
    axis_name: inside ``jax.shard_map``, the data axis name(s) over which the
      batch is split. The differentiated argument is cast to *varying* over
      it first: otherwise ``shard_map`` transposes the implicit broadcast of
      the replicated parameters into a ``psum``, and every device would get
      per-example gradients summed across devices. ``None`` elsewhere.

  Returns:
    ``f(*args, mask=None)`` returning the per-example gradients (a tree like
    ``args[argnums]`` with a leading axis ``B`` on every leaf), or
    ``(grads, aux)`` with ``has_aux``.

  Example:

  >>> import jax.numpy as jnp
  >>> loss = lambda w, x, y: (jnp.dot(w, x) - y) ** 2
  >>> g = per_example_grads(loss)(jnp.ones(2), jnp.eye(2), jnp.zeros(2))
  >>> g
  Array([[2., 0.],
         [0., 2.]], dtype=float32)
  """
  if not callable(fun):
    raise TypeError(f'fun must be callable; got {type(fun).__name__}.')
  _validation.check_int('argnums', argnums, minimum=0)
  if not isinstance(has_aux, bool):
    raise TypeError(f'has_aux must be a bool; got {has_aux!r}.')
  _check_microbatch_size(microbatch_size)
  if batch_argnums is not None:
    batch_argnums = tuple(batch_argnums)
    for a in batch_argnums:
      _validation.check_int('batch_argnums', a, minimum=0)
    if argnums in batch_argnums:
      raise ValueError(f'batch_argnums {batch_argnums} must not contain argnums={argnums}.')

  _validation.check_axis_name('axis_name', axis_name)
  grad_fn = jax.grad(fun, argnums=argnums, has_aux=has_aux)

  def wrapped(*args, mask=None):
    if argnums >= len(args):
      raise ValueError(f'argnums={argnums} but only {len(args)} arguments were given.')
    if axis_name is not None:
      args = list(args)
      args[argnums] = jax.tree.map(lambda x: _to_varying(x, axis_name), args[argnums])
      args = tuple(args)
    batched = (tuple(i for i in range(len(args)) if i != argnums)
               if batch_argnums is None else batch_argnums)
    if not batched:
      raise ValueError('per_example_grads needs at least one batched argument.')
    for i in batched:
      if i >= len(args):
        raise ValueError(f'batch_argnums contains {i} but only {len(args)} arguments were given.')
    batch = tuple(args[i] for i in batched)
    if mask is not None:
      mask = jnp.asarray(mask)
      if mask.ndim != 1:
        raise ValueError(
            f'mask must be a vector with one entry per example; got shape {mask.shape}.')

    def one(example):
      full = list(args)
      for i, x in zip(batched, example):
        full[i] = x
      return grad_fn(*full)

    return _batch.isolated_rows(one, batch, mask=mask, microbatch_size=microbatch_size)

  return wrapped


def nnx_per_example_grads(loss_fn: Callable[..., Any],
                          model: Any,
                          *batch: Any,
                          mask: jax.Array | None = None,
                          microbatch_size: int | None = None,
                          wrt: Any = None,
                          has_aux: bool = False,
                          axis_name: Hashable | tuple[Hashable, ...] | None = None) -> Any:
  r"""Per-example gradients of a Flax NNX model's parameters.

  ``loss_fn(model, *example_batch)`` is the usual batched loss; it is called
  once per example on a batch of size 1 (``x[i:i+1]``), so a model written
  for batches needs no change. The gradients are those of ``nnx.grad`` with
  respect to the ``wrt`` filter (default ``nnx.Param``), stacked on a leading
  batch axis:

  .. math::

    G[i] = m_i \, \nabla_\theta\, \text{loss\_fn}(\text{model}_\theta,
    x_{i:i+1}, \dots)

  The model is split once and merged inside (a pure function of its
  parameters), so this works eagerly, under ``nnx.jit``, and under plain
  ``jax.jit``/``jax.grad`` with the model captured from the enclosing scope.
  Deterministic models only (no Dropout, no BatchNorm: they couple examples
  or need a key per example); a forward pass that changes the model's state
  raises a ``ValueError`` saying so.

  Args:
    loss_fn: ``loss_fn(model, *batch) -> scalar`` (or ``(scalar, aux)``).
    model: an ``nnx.Module``.
    *batch: arrays (or trees) with a leading batch axis ``B``.
    mask: ``None`` or a ``[B]`` 0/1 mask; padded rows give exact zeros.
    microbatch_size: examples evaluated at once (``None``: all).
    wrt: an ``nnx`` filter for the differentiated variables (``nnx.Param``).
    has_aux: ``loss_fn`` returns ``(loss, aux)``; ``aux`` comes back per
      example with a leading batch axis.
    axis_name: the data axis inside ``jax.shard_map`` (see
      :func:`per_example_grads`); ``None`` elsewhere.

  Returns:
    An ``nnx.State`` like ``nnx.state(model, wrt)`` with a leading ``B`` axis
    on every leaf (and the per-example ``aux`` with ``has_aux``).

  Example:

  >>> import jax.numpy as jnp, optax
  >>> from flax import nnx
  >>> model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
  >>> loss = lambda m, x, y: optax.softmax_cross_entropy_with_integer_labels(
  ...     m(x), y).sum()
  >>> g = nnx_per_example_grads(loss, model, jnp.ones((5, 3)), jnp.zeros(5, int))
  >>> g['kernel'][...].shape
  (5, 3, 2)
  """
  from flax import nnx  # pylint: disable=g-import-not-at-top

  if not isinstance(model, nnx.Module):
    raise TypeError(f'model must be a flax.nnx.Module; got {type(model).__name__}.')
  if not callable(loss_fn):
    raise TypeError(f'loss_fn must be callable; got {type(loss_fn).__name__}.')
  if not batch:
    raise ValueError('nnx_per_example_grads needs at least one batched array (e.g. x, y).')
  wrt = nnx.Param if wrt is None else wrt
  graphdef, params, rest = nnx.split(model, wrt, ...)

  def single(p, *example):
    m = nnx.merge(graphdef, p, rest)
    one = jax.tree.map(lambda x: jnp.expand_dims(x, 0), example)
    return loss_fn(m, *one)

  fn = per_example_grads(single, argnums=0, has_aux=has_aux, microbatch_size=microbatch_size,
                         axis_name=axis_name)
  from ssgd_optax import _nnx  # pylint: disable=g-import-not-at-top
  return _nnx.clear_model_errors('nnx_per_example_grads')(fn)(params, *batch, mask=mask)
