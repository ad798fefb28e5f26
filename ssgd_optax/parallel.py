# Copyright 2026 The ssgd_optax Authors. Licensed under the Apache License 2.0.
"""Multi-device SSGD: where to normalise relative to the all-reduce.

:func:`ssgd_optax.aggregate` is the all-reduce as an optax transformation, so the order
of "normalise" and "share" is the order of the chain:

==========================================  =================================
chain                                       what a device shares
==========================================  =================================
``unit_normalize() -> aggregate -> sgd``    its *unit-norm* local gradient:
                                            the norm never leaves the device
                                            (privacy mode, as in the paper)
``aggregate -> unit_normalize() -> sgd``    its raw local gradient; the
                                            average is normalised after the
                                            all-reduce (optimisation mode,
                                            large-batch SSGD)
``aggregate -> sgd``                        its raw gradient (plain
                                            data-parallel SGD)
==========================================  =================================

::

    device 0:  g_0 --unit_normalize--> u_0 --+
    device 1:  g_1 --unit_normalize--> u_1 --+-- pmean --> (u_0+...+u_n)/n --> sgd
    ...                                      |
    device n:  g_n --unit_normalize--> u_n --+            (privacy mode)

Both modes cost the same communication: one all-reduce of the update tree
(plus the loss). The norms of privacy mode are local, and those of
optimisation mode are taken on the already replicated average, so neither
adds a collective (``tests/test_parallel.py`` checks the compiled HLO with
:func:`ssgd_optax.testing.count_all_reduces`).

The rest are thin helpers around the JAX APIs, which stay visible:
:func:`pmap_train_step` and :func:`shard_map_train_step` build a
data-parallel step from ``loss_fn(params, batch)`` and a transformation;
:func:`replicate`/:func:`unreplicate`/:func:`split_for_pmap` lay trees out for
``jax.pmap`` (with ``jax.device_put`` and shardings: ``device_put_replicated``
is gone from JAX 0.10); :func:`data_mesh`, :func:`replicate_on_mesh` and
:func:`shard_batch` do it for ``jax.shard_map`` and ``jax.jit`` and assemble a
global batch from per-process slices under ``jax.distributed`` (multi-host).
Under plain ``jax.jit`` with ``NamedSharding`` no helper is needed: the
gradient of the global batch is already the aggregate (so this is
optimisation mode), and :func:`ssgd_optax.unit_normalize` keeps the shardings
of its inputs on ``Explicit`` mesh axes.

Inside your own ``jax.shard_map``, mind that with the default
``check_vma=True`` ``jax.grad`` of a replicated input comes back already
``psum``-med over the devices, so nothing per-device is left to normalise:
use ``check_vma=False`` as :func:`shard_map_train_step` does.

For model parallelism inside ``shard_map``, ``unit_normalize(axis_name=...)``
``psum``-s each leaf's squared norm over the model axis. Every leaf of the
normalised tree must then be *sharded* over that axis: a leaf replicated over
it would be counted once per device.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from ssgd_optax import _validation
from ssgd_optax._numerics import AxisName

__all__ = [
  'data_mesh',
  'pmap_train_step',
  'replicate',
  'replicate_on_mesh',
  'shard_batch',
  'shard_map_train_step',
  'split_for_pmap',
  'unreplicate',
]

REDUCTIONS = ('mean', 'sum')

StepLoss = Callable[..., Any]


def _axis_names(axis_name: AxisName) -> tuple[Any, ...]:
  return axis_name if isinstance(axis_name, tuple) else (axis_name,)


def _check_required_axis_name(name: str, axis_name: Any) -> None:
  if axis_name is None:
    raise ValueError(f'{name} must name the mapped axis to all-reduce over (a str such as '
                     f"'data', or a tuple of them); got None.")
  _validation.check_axis_name(name, axis_name)


def _check_axis_bound(axis_name: AxisName, who: str) -> None:
  """Raises a NameError that says how to fix an unbound axis name."""
  for name in _axis_names(axis_name):
    try:
      jax.lax.axis_size(name)
    except NameError as err:
      raise NameError(
          f'{who}: axis name {name!r} is not bound here. {who} all-reduces over a mapped '
          f'axis, so it must run inside jax.pmap(..., axis_name={name!r}), '
          f'jax.shard_map(..., mesh=mesh) over a mesh with an axis {name!r}, or '
          f'jax.vmap(..., axis_name={name!r}) (see ssgd_optax.parallel.pmap_train_step and '
          f'shard_map_train_step). Under plain jax.jit with NamedSharding the gradient of '
          f'the global batch is already aggregated: leave aggregate out of the chain.'
      ) from err


def aggregate(axis_name: AxisName,
              *,
              reduction: str = 'mean') -> optax.GradientTransformationExtraArgs:
  r"""All-reduces updates over a mapped axis (the point where they are shared).

  With ``D`` devices along ``axis_name`` holding updates ``u_d``:

  .. math::

    \text{mean: } \bar u = \frac{1}{D} \sum_{d=1}^{D} u_d, \qquad
    \text{sum: } \bar u = \sum_{d=1}^{D} u_d

  on every device (``jax.lax.pmean`` / ``jax.lax.psum``, one all-reduce of the
  tree). Whatever precedes ``aggregate`` in an ``optax.chain`` runs on each
  device's own update before it is shared: put
  :func:`ssgd_optax.unit_normalize` before it to share only unit-norm updates
  (privacy mode), after it to normalise the average (optimisation mode).

  Args:
    axis_name: the mapped axis name (or tuple of names) of ``jax.pmap``,
      ``jax.shard_map`` or ``jax.vmap`` to reduce over.
    reduction: ``"mean"`` (``pmean``, the data-parallel average) or ``"sum"``.

  Returns:
    A :class:`optax.GradientTransformationExtraArgs` with an empty state.
    Its ``update`` raises ``NameError`` (with a message naming the axis and
    where to bind it) when called where ``axis_name`` is not bound.

  In ``jax.shard_map`` with ``check_vma=True`` (the default), gradients of
  replicated params arrive already summed, so ``unit_normalize`` before
  ``aggregate`` would normalise the sum; use ``check_vma=False``.

  Example:

  >>> import jax, jax.numpy as jnp, optax
  >>> import ssgd_optax
  >>> from ssgd_optax import parallel
  >>> tx = optax.chain(ssgd_optax.unit_normalize(), parallel.aggregate('data'))
  >>> g = jnp.array([[3., 4.], [0., 2.]])  # two devices' gradients
  >>> u = jax.vmap(lambda x: tx.update(x, tx.init(x))[0], axis_name='data')(g)
  >>> print(u[0])
  [0.3 0.9]
  """
  _check_required_axis_name('axis_name', axis_name)
  _validation.check_choice('reduction', reduction, REDUCTIONS)
  collective = jax.lax.pmean if reduction == 'mean' else jax.lax.psum

  def update_fn(updates, state, params=None, **extra_args):
    del params, extra_args
    _check_axis_bound(axis_name, f'aggregate({axis_name!r})')
    return collective(updates, axis_name), state

  return optax.GradientTransformationExtraArgs(optax.init_empty_state, update_fn)


# --------------------------------------------------------------------------
# Train steps.


def _check_loss_fn(loss_fn: Any, tx: Any) -> None:
  if not callable(loss_fn):
    raise TypeError(f'loss_fn must be a callable (params, batch) -> loss; got '
                    f'{type(loss_fn).__name__} {loss_fn!r}.')
  if not isinstance(tx, optax.GradientTransformation):
    raise TypeError('tx must be an optax.GradientTransformation (e.g. optax.chain('
                    "ssgd_optax.unit_normalize(), aggregate('data'), optax.sgd(0.1))); got "
                    f'{type(tx).__name__} {tx!r}.')


def _check_bool(name: str, value: Any) -> None:
  if not isinstance(value, bool):
    raise TypeError(f'{name} must be a bool; got {type(value).__name__} {value!r}.')


def _mean_metrics(metrics: Any, axis_name: AxisName) -> Any:
  def reduce(path, x):
    if not jnp.issubdtype(jnp.result_type(x), jnp.inexact):
      raise TypeError(
          f'the loss and aux outputs of loss_fn are averaged over devices, so they must be '
          f'floating point; {jax.tree_util.keystr(path) or "loss"} has dtype '
          f'{jnp.result_type(x)}. Return counts as floats.')
    return jax.lax.pmean(x, axis_name)
  return jax.tree_util.tree_map_with_path(reduce, metrics)


def _step_body(loss_fn: StepLoss, tx: optax.GradientTransformation,
               axis_name: AxisName, has_aux: bool):
  """One device's step: its gradient, then ``tx`` (which must all-reduce)."""

  def body(params, opt_state, batch):
    out, grads = jax.value_and_grad(loss_fn, has_aux=has_aux)(params, batch)
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    return params, opt_state, _mean_metrics(out, axis_name)

  return body


def pmap_train_step(loss_fn: StepLoss,
                    tx: optax.GradientTransformation,
                    *,
                    axis_name: str = 'batch',
                    has_aux: bool = False,
                    donate: bool = False) -> Callable[..., Any]:
  """A ``jax.pmap`` data-parallel train step.

  On device ``d`` with its batch shard ``b_d``:
  ``g_d = grad(loss_fn)(params, b_d)``, ``(u, s) = tx.update(g_d, s, params)``,
  ``params + u``. ``tx`` must contain ``aggregate(axis_name)``; otherwise
  every device applies its own update and the replicas drift apart (pmap does
  not check this; ``shard_map_train_step`` does).

  Args:
    loss_fn: ``loss_fn(params, batch) -> loss`` (or ``(loss, aux)`` with
      ``has_aux``) on one device's batch.
    tx: the transformation, e.g. ``optax.chain(unit_normalize(),
      aggregate(axis_name), optax.sgd(lr))``.
    axis_name: the pmap axis name that ``tx`` aggregates over.
    has_aux: whether ``loss_fn`` returns ``(loss, aux)``.
    donate: donate the incoming params and optimizer state buffers.

  Returns:
    ``step(params, opt_state, batch) -> (params, opt_state, metrics)``: the
    pmapped function. ``params``/``opt_state`` carry a leading device axis
    (:func:`replicate`), ``batch`` leaves have shape ``(devices, per_device,
    ...)`` (:func:`split_for_pmap`); ``metrics`` (the loss, or ``(loss,
    aux)``) is averaged over devices and replicated.

  Example:

  >>> import jax, jax.numpy as jnp, optax
  >>> import ssgd_optax
  >>> from ssgd_optax import parallel
  >>> tx = optax.chain(ssgd_optax.unit_normalize(), parallel.aggregate('batch'),
  ...                  optax.sgd(0.1))
  >>> loss = lambda w, b: jnp.mean((b['x'] @ w - b['y']) ** 2)
  >>> step = parallel.pmap_train_step(loss, tx)
  >>> devices = jax.local_devices()[:1]
  >>> w = parallel.replicate(jnp.zeros(3), devices)
  >>> s = parallel.replicate(tx.init(jnp.zeros(3)), devices)
  >>> b = parallel.split_for_pmap({'x': jnp.ones((4, 3)), 'y': jnp.ones(4)}, devices)
  >>> w, s, l = step(w, s, b)
  >>> float(jnp.linalg.norm(parallel.unreplicate(w)))
  0.1
  """
  _check_loss_fn(loss_fn, tx)
  _check_required_axis_name('axis_name', axis_name)
  _check_bool('has_aux', has_aux)
  _check_bool('donate', donate)
  body = _step_body(loss_fn, tx, axis_name, has_aux)
  return jax.pmap(body, axis_name=axis_name, donate_argnums=(0, 1) if donate else ())


def _is_explicit(mesh: jax.sharding.Mesh, axis_name: AxisName) -> bool:
  types = dict(zip(mesh.axis_names, mesh.axis_types))
  return any(types.get(n) == jax.sharding.AxisType.Explicit for n in _axis_names(axis_name))


def shard_map_train_step(loss_fn: StepLoss,
                         tx: optax.GradientTransformation,
                         mesh: jax.sharding.Mesh,
                         *,
                         axis_name: AxisName = 'data',
                         has_aux: bool = False,
                         donate: bool = False) -> Callable[..., Any]:
  """A ``jax.shard_map`` data-parallel train step, jitted.

  The same per-device step as :func:`pmap_train_step`, run by
  ``jax.shard_map`` on ``mesh`` with params and optimizer state replicated
  (``P()``) and the batch split along ``axis_name`` (``P(axis_name)``).
  ``shard_map`` runs with ``check_vma=False``: with its default
  ``check_vma=True``, ``jax.grad`` of replicated params returns the gradient
  already summed over devices (the transpose of the implicit broadcast is a
  ``psum``), so a ``unit_normalize`` placed before ``aggregate`` would
  normalise the sum, not each device's gradient. The price is that
  ``shard_map`` no longer checks that ``tx`` aggregates: without
  ``aggregate`` the replicas silently drift apart, as under ``pmap``.

  Args:
    loss_fn: ``loss_fn(params, batch) -> loss`` (or ``(loss, aux)``) on one
      device's batch shard.
    tx: the transformation; it must contain ``aggregate(axis_name)``.
    mesh: a ``jax.sharding.Mesh`` with the axis (or axes) ``axis_name``;
      other mesh axes see replicated params and batch.
    axis_name: the mesh axis name (or tuple of names) the batch is split over.
    has_aux: whether ``loss_fn`` returns ``(loss, aux)``.
    donate: donate the incoming params and optimizer state buffers.

  Returns:
    ``step(params, opt_state, batch) -> (params, opt_state, metrics)``, a
    ``jax.jit``-ed function of global arrays: ``params``/``opt_state``
    replicated over ``mesh`` (:func:`replicate_on_mesh`), ``batch`` the global
    batch (:func:`shard_batch`); on an ``Explicit`` mesh the inputs are
    ``jax.reshard``-ed to those layouts. Works unchanged across processes
    under ``jax.distributed``.

  Example:

  >>> import jax, jax.numpy as jnp, optax
  >>> import ssgd_optax
  >>> from ssgd_optax import parallel
  >>> mesh = parallel.data_mesh(1)
  >>> tx = optax.chain(ssgd_optax.unit_normalize(), parallel.aggregate('data'),
  ...                  optax.sgd(0.1))
  >>> loss = lambda w, b: jnp.mean((b['x'] @ w - b['y']) ** 2)
  >>> step = parallel.shard_map_train_step(loss, tx, mesh)
  >>> w = parallel.replicate_on_mesh(jnp.zeros(3), mesh)
  >>> b = parallel.shard_batch({'x': jnp.ones((4, 3)), 'y': jnp.ones(4)}, mesh)
  >>> w, s, l = step(w, tx.init(w), b)
  >>> float(jnp.linalg.norm(w))
  0.1
  """
  _check_loss_fn(loss_fn, tx)
  if not isinstance(mesh, jax.sharding.Mesh):
    raise TypeError(f'mesh must be a jax.sharding.Mesh (e.g. jax.make_mesh((8,), '
                    f"('data',)) or data_mesh()); got {type(mesh).__name__} {mesh!r}.")
  _check_required_axis_name('axis_name', axis_name)
  missing = [n for n in _axis_names(axis_name) if n not in mesh.axis_names]
  if missing:
    raise ValueError(f'axis_name {axis_name!r} must name axes of the mesh; {missing} not in '
                     f'mesh.axis_names={mesh.axis_names}.')
  _check_bool('has_aux', has_aux)
  _check_bool('donate', donate)
  body = _step_body(loss_fn, tx, axis_name, has_aux)
  # check_vma=False: with it on, autodiff psums the gradient of replicated
  # params over the devices, so each device's own gradient (the thing privacy
  # mode normalises before sharing) would never exist.
  mapped = jax.shard_map(body, mesh=mesh, in_specs=(P(), P(), P(axis_name)),
                         out_specs=(P(), P(), P()), check_vma=False)
  explicit = _is_explicit(mesh, axis_name)

  def step(params, opt_state, batch):
    if explicit:
      # Explicit axes make shard_map insist that inputs already have its
      # in_specs; resharding here is free when they do.
      replicated = NamedSharding(mesh, P())
      params = jax.reshard(params, replicated)
      opt_state = jax.reshard(opt_state, replicated)
      batch = jax.reshard(batch, NamedSharding(mesh, P(axis_name)))
    return mapped(params, opt_state, batch)

  return jax.jit(step, donate_argnums=(0, 1) if donate else ())


# --------------------------------------------------------------------------
# Layouts.


def _device_list(devices: Sequence[Any] | None) -> list[Any]:
  if devices is None:
    return list(jax.local_devices())
  devices = list(devices)
  if not devices or not all(isinstance(d, jax.Device) for d in devices):
    raise TypeError(f'devices must be a non-empty sequence of jax.Device (e.g. '
                    f'jax.local_devices()[:4]); got {devices!r}.')
  return devices


def _stack_on_devices(slices: Callable[[int], Any], shape: tuple[int, ...],
                      devices: list[Any]) -> jax.Array:
  # One device_put per device (no host copy of the stacked array), assembled
  # into one global array sharded along the leading axis, which is the layout
  # jax.pmap reads and writes.
  mesh = jax.sharding.Mesh(np.array(devices), ('devices',))
  sharding = NamedSharding(mesh, P('devices'))
  shards = [jax.device_put(slices(i), d) for i, d in enumerate(devices)]
  return jax.make_array_from_single_device_arrays(shape, sharding, shards)


def replicate(tree: Any, devices: Sequence[Any] | None = None) -> Any:
  """Copies every leaf onto each device along a new leading axis (for pmap).

  ``x -> stack([x] * D)`` with copy ``d`` on ``devices[d]``: a global array
  with ``NamedSharding(Mesh(devices), P('devices'))``, built with
  ``jax.device_put`` (the replacement for the removed
  ``jax.device_put_replicated``).

  Args:
    tree: a pytree of arrays or scalars.
    devices: the devices (default ``jax.local_devices()``, this process's).

  Returns:
    The tree with leaves of shape ``(D, *x.shape)``.

  Example:

  >>> import jax, jax.numpy as jnp
  >>> from ssgd_optax import parallel
  >>> parallel.replicate({'w': jnp.ones(3)}, jax.local_devices()[:1])['w'].shape
  (1, 3)
  """
  devices = _device_list(devices)

  def rep(x):
    x = jnp.asarray(x)[None]
    return _stack_on_devices(lambda i: x, (len(devices),) + x.shape[1:], devices)

  return jax.tree.map(rep, tree)


def unreplicate(tree: Any) -> Any:
  """The first replica of every leaf: the inverse of :func:`replicate`.

  ``x -> x[0]``, read from this process's first shard, so it also works on
  pmap outputs that span several processes.

  Args:
    tree: a pytree of arrays with a leading device axis.

  Returns:
    The tree with that axis removed (leaves on this process's first device).

  Example:

  >>> import jax, jax.numpy as jnp
  >>> from ssgd_optax import parallel
  >>> r = parallel.replicate(jnp.arange(3.), jax.local_devices()[:1])
  >>> print(parallel.unreplicate(r))
  [0. 1. 2.]
  """
  def first(x):
    if isinstance(x, jax.Array):
      if x.ndim == 0:
        raise ValueError('unreplicate expects leaves with a leading device axis; got a scalar.')
      return x.addressable_shards[0].data[0]
    return np.asarray(x)[0]
  return jax.tree.map(first, tree)


def _leading_size(tree: Any, name: str) -> int:
  path_leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  if not path_leaves:
    raise ValueError(f'{name} has no array leaves.')
  sizes = {jax.tree_util.keystr(p): (np.shape(x)[0] if np.ndim(x) else None)
           for p, x in path_leaves}
  if None in sizes.values() or len(set(sizes.values())) != 1:
    raise ValueError(f'every leaf of {name} needs the same leading (batch) dimension; got '
                     f'leading sizes {sizes}.')
  return next(iter(sizes.values()))


def split_for_pmap(batch: Any, devices: Sequence[Any] | None = None) -> Any:
  """Splits a batch over devices for ``jax.pmap``: ``(B, ...) -> (D, B/D, ...)``.

  Shard ``d`` is ``batch[d*B/D:(d+1)*B/D]``, placed on ``devices[d]``.

  Args:
    batch: a pytree of arrays sharing a leading batch size ``B`` divisible by
      the number of devices ``D``.
    devices: the devices (default ``jax.local_devices()``).

  Returns:
    The tree with leaves of shape ``(D, B // D, ...)``, sharded over devices.

  Example:

  >>> import jax, jax.numpy as jnp
  >>> from ssgd_optax import parallel
  >>> parallel.split_for_pmap(jnp.ones((6, 2)), jax.local_devices()[:1]).shape
  (1, 6, 2)
  """
  devices = _device_list(devices)
  size = _leading_size(batch, 'batch')
  n = len(devices)
  if size % n:
    raise ValueError(f'the batch size {size} must be divisible by the number of devices {n}.')
  per = size // n

  def split(x):
    x = np.asarray(x) if not isinstance(x, jax.Array) else x
    return _stack_on_devices(lambda i: x[i * per:(i + 1) * per][None],
                             (n, per) + tuple(x.shape[1:]), devices)

  return jax.tree.map(split, batch)


def data_mesh(num_devices: int | None = None,
              axis_name: str = 'data',
              *,
              devices: Sequence[Any] | None = None) -> jax.sharding.Mesh:
  """A 1-D mesh for data parallelism: ``jax.make_mesh((D,), (axis_name,))``.

  Args:
    num_devices: ``D``; default all devices (of every process under
      ``jax.distributed``). With a number, the first ``D`` of ``devices``.
    axis_name: the mesh axis name.
    devices: the devices to choose from (default ``jax.devices()``).

  Returns:
    A :class:`jax.sharding.Mesh` with one axis.

  Example:

  >>> from ssgd_optax import parallel
  >>> dict(parallel.data_mesh(1).shape)
  {'data': 1}
  """
  devices = list(jax.devices()) if devices is None else _device_list(devices)
  if num_devices is None:
    num_devices = len(devices)
  _validation.check_int('num_devices', num_devices, minimum=1)
  if num_devices > len(devices):
    raise ValueError(f'num_devices={num_devices} exceeds the {len(devices)} devices available '
                     '(on CPU, set XLA_FLAGS=--xla_force_host_platform_device_count=N before '
                     'JAX starts).')
  if not isinstance(axis_name, str):
    raise TypeError(f'axis_name must be a str; got {type(axis_name).__name__} {axis_name!r}.')
  return jax.make_mesh((num_devices,), (axis_name,), devices=devices[:num_devices])


def replicate_on_mesh(tree: Any, mesh: jax.sharding.Mesh) -> Any:
  """Places every leaf, whole, on every device of ``mesh`` (``P()``).

  Under ``jax.distributed`` each process must pass the same values (e.g.
  parameters initialised from the same seed); the result is one global array
  per leaf.

  Args:
    tree: a pytree of arrays or scalars.
    mesh: the :class:`jax.sharding.Mesh`.

  Returns:
    The tree of global arrays with ``NamedSharding(mesh, P())``.

  Example:

  >>> import jax.numpy as jnp
  >>> from ssgd_optax import parallel
  >>> parallel.replicate_on_mesh(jnp.ones(2), parallel.data_mesh(1)).sharding.spec
  P()
  """
  sharding = NamedSharding(mesh, P())

  def put(x):
    if jax.process_count() == 1:
      # A fresh copy, so that donating the result (donate=True in the train
      # steps) cannot delete the caller's array: device_put reuses the buffer
      # already on a target device, even with may_alias=False (jax 0.10.2).
      return jax.device_put(jnp.array(x, copy=True), sharding)
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

  return jax.tree.map(put, tree)


def shard_batch(batch: Any, mesh: jax.sharding.Mesh, axis_name: AxisName = 'data') -> Any:
  """The global batch as arrays split along ``axis_name`` of ``mesh``.

  One process: ``batch`` is the global batch ``(B, ...)``, placed with
  ``NamedSharding(mesh, P(axis_name))``. Several processes
  (``jax.distributed``): each passes its own slice ``(B / P, ...)`` (the
  ``jax.process_index()``-th, in process order along the mesh axis) and gets
  the global ``(B, ...)`` array assembled by
  ``jax.make_array_from_process_local_data``; nothing is copied between hosts.

  Args:
    batch: a pytree of arrays sharing the leading batch dimension.
    mesh: the :class:`jax.sharding.Mesh`.
    axis_name: the mesh axis (or axes) to split the batch over.

  Returns:
    The tree of global, batch-sharded arrays.

  Example:

  >>> import jax.numpy as jnp
  >>> from ssgd_optax import parallel
  >>> parallel.shard_batch(jnp.ones((4, 2)), parallel.data_mesh(1)).sharding.spec
  P('data',)
  """
  if not isinstance(mesh, jax.sharding.Mesh):
    raise TypeError(f'mesh must be a jax.sharding.Mesh; got {type(mesh).__name__} {mesh!r}.')
  _check_required_axis_name('axis_name', axis_name)
  names = _axis_names(axis_name)
  missing = [n for n in names if n not in mesh.axis_names]
  if missing:
    raise ValueError(f'axis_name {axis_name!r} must name axes of the mesh; {missing} not in '
                     f'mesh.axis_names={mesh.axis_names}.')
  size = _leading_size(batch, 'batch')
  sharding = NamedSharding(mesh, P(axis_name))
  if jax.process_count() == 1:
    shards = int(np.prod([mesh.shape[n] for n in names]))
    if size % shards:
      raise ValueError(f'the batch size {size} must be divisible by the {shards} devices along '
                       f'{axis_name!r}.')
    return jax.device_put(batch, sharding)
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), batch)
