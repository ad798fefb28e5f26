# Copyright 2026 The ssgd_optax Authors. Licensed under the Apache License 2.0.
"""The threat model: what a gradient-leakage attacker observes.

As in breaching (Geiping et al.), the attacker is an honest-but-curious
server. It knows the model's apply function and parameters (it sent them), the
input shape and range, the number of examples and, optionally, their labels;
and it receives the **shared update**: the client's batch gradient *after*
the client's defence (an optax transformation such as
:func:`ssgd_optax.unit_normalize`). Nothing else leaves the client.
A *malicious* server (``Observation.threat_model == "malicious_server"``)
also chooses the parameters and the model it sends, e.g. to insert an
imprint module (:mod:`.imprint`).

* :class:`Observation` is that knowledge, minus the apply function (attacks
  take ``apply_fn`` as their first argument).
* :func:`observe` plays the client: it computes the batch gradient of the
  mean cross-entropy, applies the defence and packs the observation, so that
  "attack X against defence Y" is ``X(apply_fn, observe(..., defence=Y))``.
* :class:`AttackResult` is what every attack returns.
* :func:`as_functional` turns a Flax NNX module into the ``(apply_fn,
  params)`` pair the attacks take.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

__all__ = [
    'ApplyFn',
    'Observation',
    'as_functional',
    'AttackResult',
    'Defence',
    'cross_entropy',
    'batch_gradient',
    'shared_update',
    'observe',
    'check_update_matches',
    'THREAT_MODELS',
]

# What the server may do: only look at what it receives, or also choose the
# parameters (and architecture) it sends, as in the imprint attack.
THREAT_MODELS = ('honest_but_curious', 'malicious_server')

ApplyFn = Callable[[Any, jax.Array], jax.Array]


class Defence(NamedTuple):
  """A client-side defence: an optax transformation of the batch gradient.

  Attributes:
    transform: the optax ``GradientTransformation``; its ``update`` receives
      the batch gradient (or, if ``per_example``, per-example gradients with a
      leading batch axis) and returns what is shared.
    per_example: whether ``transform`` consumes per-example gradients (as
      :func:`ssgd_optax.privacy.dp_unit_normalize` does).
    name: a label for tables.
  """
  transform: optax.GradientTransformation
  per_example: bool = False
  name: str = 'defence'


class Observation(NamedTuple):
  """Everything the attacker knows besides the apply function.

  Attributes:
    update: the shared update, a pytree shaped like ``params``.
    params: the model parameters the client trained from.
    input_shape: the shape of one example, e.g. ``(32, 32, 3)``.
    num_examples: the batch size ``B`` behind ``update``.
    bounds: ``(low, high)``, the range of valid inputs.
    labels: ``int32[B]`` if the labels are known to the attacker, else
      ``None``.
    num_classes: number of classes (the width of the model's output).
    threat_model: ``"honest_but_curious"`` (the server sent the parameters
      of the model being trained) or ``"malicious_server"`` (the server chose
      ``params``, and the model behind ``apply_fn``, to make the update leak,
      e.g. :func:`ssgd_optax.attacks.imprint_model`).
  """
  update: Any
  params: Any
  input_shape: tuple[int, ...]
  num_examples: int
  bounds: tuple[float, float] = (0.0, 1.0)
  labels: Optional[jax.Array] = None
  num_classes: Optional[int] = None
  threat_model: str = 'honest_but_curious'


class AttackResult(NamedTuple):
  """What an attack returns.

  Attributes:
    inputs: ``[B, *input_shape]`` reconstructed inputs (within ``bounds``).
    labels: ``int32[B]`` recovered or given labels (``None`` if the attack
      does not produce labels).
    trace: ``float32[T]`` the attack objective per iteration (of the best
      restart), or an empty array for closed-form attacks.
    loss: the final objective value (of the best restart).
  """
  inputs: jax.Array
  labels: Optional[jax.Array]
  trace: jax.Array
  loss: jax.Array


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Mean softmax cross-entropy; ``labels`` are ints ``[B]`` or probabilities ``[B, C]``.

  Example:

  >>> import jax.numpy as jnp
  >>> float(cross_entropy(jnp.zeros((1, 4)), jnp.array([2])))  # log 4
  1.386...
  """
  logits = jnp.asarray(logits)
  labels = jnp.asarray(labels)
  if labels.ndim == logits.ndim - 1:
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
  return optax.softmax_cross_entropy(logits, labels).mean()


def batch_gradient(apply_fn: ApplyFn, params: Any, x: jax.Array,
                   labels: jax.Array) -> Any:
  """Gradient of the mean cross-entropy of a batch w.r.t. ``params``.

  ``g = (1/B) sum_i grad_theta CE(f_theta(x_i), y_i)``, the gradient a
  federated client computes before its defence.

  Args:
    apply_fn: ``(params, x[B, ...]) -> logits[B, C]``.
    params: the model parameters.
    x: a batch of inputs.
    labels: ``int32[B]`` or soft labels ``[B, C]``.

  Returns:
    A pytree shaped like ``params``.

  Example:

  >>> import jax.numpy as jnp
  >>> f = lambda p, x: x.reshape(x.shape[0], -1) @ p
  >>> g = batch_gradient(f, jnp.zeros((2, 3)), jnp.ones((1, 2)), jnp.array([0]))
  >>> g.shape
  (2, 3)
  """
  return jax.grad(lambda p: cross_entropy(apply_fn(p, x), labels))(params)


def _check_defence(defence: Any) -> Defence:
  if defence is None:
    return Defence(optax.identity(), False, 'none')
  if isinstance(defence, Defence):
    if not isinstance(defence.transform, optax.GradientTransformation):
      raise TypeError('Defence.transform must be an optax.GradientTransformation; '
                      f'got {type(defence.transform).__name__}.')
    return defence
  if isinstance(defence, optax.GradientTransformation):
    return Defence(defence, False, 'custom')
  raise TypeError(
      'defence must be None, an optax.GradientTransformation or an '
      f'ssgd_optax.attacks.Defence; got {type(defence).__name__} {defence!r}.')


_JITTED: dict[Any, Any] = {}
_MAX_JITTED = 128


def _client_step(apply_fn: ApplyFn, d: Defence) -> Callable[..., Any]:
  """``(params, x, labels, state) -> (update, state)``, compiled once per
  ``(apply_fn, defence)`` pair (eager dispatch of a defence's many small ops
  costs more than compiling them)."""
  key = (apply_fn, d.transform, d.per_example)
  fn = _JITTED.get(key)
  if fn is None:
    def run(params, x, labels, state):
      if d.per_example:
        grads = jax.vmap(lambda xi, yi: batch_gradient(apply_fn, params, xi[None], yi[None]))(
            x, labels)
      else:
        grads = batch_gradient(apply_fn, params, x, labels)
      return d.transform.update(grads, state, params)
    fn = jax.jit(run)
    if len(_JITTED) >= _MAX_JITTED:
      _JITTED.pop(next(iter(_JITTED)))
    _JITTED[key] = fn
  return fn


def shared_update(apply_fn: ApplyFn, params: Any, x: jax.Array,
                  labels: jax.Array, defence: Any = None, *,
                  defence_state: Any = None, return_state: bool = False) -> Any:
  """The update a client shares: its batch gradient after its defence.

  ``u = T(g)`` where ``g`` is :func:`batch_gradient` (or, for a per-example
  :class:`Defence`, the stacked per-example gradients) and ``T`` is the
  defence's ``update`` applied to ``defence_state`` (default: a fresh
  ``init(params)``).

  Args:
    apply_fn: ``(params, x) -> logits``.
    params: the model parameters.
    x: the client's batch ``[B, ...]``.
    labels: ``int32[B]``.
    defence: ``None`` (share the raw gradient), an optax transformation, or a
      :class:`Defence`.
    defence_state: the defence's state (e.g. carrying on a noise key over
      several rounds); ``None`` for ``init(params)``.
    return_state: also return the defence's next state.

  Returns:
    A pytree shaped like ``params``; with ``return_state``, ``(update,
    next_state)``.

  Example:

  >>> import jax.numpy as jnp, ssgd_optax
  >>> f = lambda p, x: x.reshape(x.shape[0], -1) @ p
  >>> u = shared_update(f, jnp.ones((2, 3)), jnp.ones((1, 2)), jnp.array([0]),
  ...                   ssgd_optax.unit_normalize())
  >>> round(float(jnp.linalg.norm(u)), 4)
  1.0
  """
  d = _check_defence(defence)
  state = d.transform.init(params) if defence_state is None else defence_state
  update, state = _client_step(apply_fn, d)(params, x, labels, state)
  return (update, state) if return_state else update


def observe(apply_fn: ApplyFn, params: Any, x: jax.Array, labels: jax.Array,
            defence: Any = None, *, bounds: tuple[float, float] = (0.0, 1.0),
            reveal_labels: bool = False, defence_state: Any = None,
            return_state: bool = False,
            threat_model: str = 'honest_but_curious') -> Any:
  """Plays the client: computes the shared update and packs the observation.

  Args:
    apply_fn: ``(params, x) -> logits``.
    params: the model parameters.
    x: the client's batch ``[B, *input_shape]``.
    labels: ``int32[B]``.
    defence: see :func:`shared_update`.
    bounds: the valid input range the attacker may assume.
    reveal_labels: whether the attacker is told the labels.
    defence_state: see :func:`shared_update`.
    return_state: also return the defence's next state (to observe several
      batches under one defence with fresh randomness each time).
    threat_model: one of :data:`THREAT_MODELS`, recorded in the observation.

  Returns:
    An :class:`Observation`, or ``(observation, next_defence_state)``.

  Example:

  >>> import jax.numpy as jnp
  >>> f = lambda p, x: x.reshape(x.shape[0], -1) @ p
  >>> obs = observe(f, jnp.ones((4, 3)), jnp.ones((2, 2, 2)), jnp.array([0, 1]))
  >>> obs.input_shape, obs.num_examples, obs.labels is None, obs.num_classes
  ((2, 2), 2, True, 3)
  """
  x = jnp.asarray(x)
  labels = jnp.asarray(labels)
  if x.ndim < 2:
    raise ValueError(f'x must be a batch [B, ...] with B >= 1; got shape {x.shape}.')
  if labels.shape != (x.shape[0],) or not jnp.issubdtype(labels.dtype, jnp.integer):
    raise ValueError(
        f'labels must be integers of shape (B,) = ({x.shape[0]},); got {labels.dtype} '
        f'{labels.shape}.')
  if threat_model not in THREAT_MODELS:
    raise ValueError(f'threat_model must be one of {", ".join(map(repr, THREAT_MODELS))}; '
                     f'got {threat_model!r}.')
  low, high = (float(b) for b in bounds)
  if not low < high:
    raise ValueError(f'bounds must be (low, high) with low < high; got {bounds!r}.')
  logits = jax.eval_shape(lambda: apply_fn(params, x))
  update, state = shared_update(apply_fn, params, x, labels, defence,
                                defence_state=defence_state, return_state=True)
  obs = Observation(update=update, params=params, input_shape=tuple(x.shape[1:]),
                    num_examples=int(x.shape[0]), bounds=(low, high),
                    labels=labels if reveal_labels else None,
                    num_classes=int(logits.shape[-1]), threat_model=threat_model)
  return (obs, state) if return_state else obs


def check_update_matches(update: Any, params: Any, who: str = 'attack') -> None:
  """Raises ``ValueError`` unless ``update`` has the tree and shapes of ``params``.

  Example:

  >>> import jax.numpy as jnp
  >>> check_update_matches({'w': jnp.ones(2)}, {'w': jnp.ones(2)})
  >>> check_update_matches({'w': jnp.ones(3)}, {'w': jnp.ones(2)})
  Traceback (most recent call last):
  ...
  ValueError: attack: the shared update does not match the parameters: ...
  """
  ut = jax.tree_util.tree_structure(update)
  pt = jax.tree_util.tree_structure(params)
  if ut != pt:
    raise ValueError(
        f'{who}: the shared update does not match the parameters: tree structure '
        f'{ut} vs {pt}.')
  for (path, u), p in zip(jax.tree_util.tree_flatten_with_path(update)[0],
                          jax.tree_util.tree_leaves(params)):
    if np.shape(u) != np.shape(p):
      raise ValueError(
          f'{who}: the shared update does not match the parameters: leaf '
          f'{jax.tree_util.keystr(path)} has shape {np.shape(u)}, the parameter '
          f'{np.shape(p)}.')


def as_functional(model: Any) -> tuple[Callable[[Any, jax.Array], jax.Array], Any]:
  """``(apply_fn, params)`` for an NNX module: ``apply_fn(params, x) == model(x)``.

  ``params`` is the module's ``nnx.Param`` state as a plain nested dict;
  other state (e.g. batch statistics) is frozen into ``apply_fn``.

  Example:

  >>> from flax import nnx
  >>> import jax.numpy as jnp
  >>> from ssgd_optax.attacks import as_functional
  >>> f, p = as_functional(nnx.Linear(3, 2, rngs=nnx.Rngs(0)))
  >>> sorted(p), f(p, jnp.ones((1, 3))).shape
  (['bias', 'kernel'], (1, 2))
  """
  from flax import nnx  # pylint: disable=g-import-not-at-top (the flax extra)

  if not isinstance(model, nnx.Module):
    raise TypeError(f'model must be a flax.nnx.Module; got {type(model).__name__}.')
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  pure = nnx.to_pure_dict(params)

  def apply_fn(p: Any, x: jax.Array) -> jax.Array:
    state = jax.tree_util.tree_map(lambda v: v, params)
    nnx.replace_by_pure_dict(state, p)
    return nnx.merge(graphdef, state, rest)(x)

  return apply_fn, pure
