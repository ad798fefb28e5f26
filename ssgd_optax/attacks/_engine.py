# Copyright 2026 The ssgd_optax Authors. Licensed under the Apache License 2.0.
"""The optimisation loop shared by DLG and Inverting Gradients (private).

An attack is an objective ``J(z)`` over the attacker's variables ``z`` (dummy
inputs, maybe label logits), an optax optimiser and a projection. The loop is
compiled either as a whole (``loop="scan"``: one ``lax.scan``) or as a jitted
step driven from Python (``loop="python"``), and vmapped over restarts.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from ssgd_optax import _validation
from ssgd_optax.attacks import _objectives as objectives
from ssgd_optax.attacks import _threat as threat
LOOPS = ('scan', 'python')


def check_observation(apply_fn: Any, obs: Any, who: str) -> None:
  if not callable(apply_fn):
    raise TypeError(f'{who}: apply_fn must be callable (params, x) -> logits; got '
                    f'{type(apply_fn).__name__}.')
  if not isinstance(obs, threat.Observation):
    raise TypeError(f'{who}: observation must be an ssgd_optax.attacks.Observation '
                    f'(see observe()); got {type(obs).__name__}.')
  threat.check_update_matches(obs.update, obs.params, who)
  _validation.check_int('observation.num_examples', obs.num_examples, minimum=1)
  if obs.labels is not None and jnp.shape(obs.labels) != (obs.num_examples,):
    raise ValueError(f'{who}: observation.labels must have shape ({obs.num_examples},); '
                     f'got {jnp.shape(obs.labels)}.')
  if not all(isinstance(d, int) and d > 0 for d in obs.input_shape):
    raise ValueError(f'{who}: observation.input_shape must be positive ints; got '
                     f'{obs.input_shape!r}.')
  try:
    out = jax.eval_shape(lambda: apply_fn(
        obs.params, jnp.zeros((obs.num_examples, *obs.input_shape), jnp.float32)))
  except (TypeError, ValueError) as e:
    raise ValueError(f'{who}: apply_fn cannot map inputs [B, *input_shape] = '
                     f'[{obs.num_examples}, {obs.input_shape}] to logits: {e}') from e
  if len(out.shape) != 2 or out.shape[0] != obs.num_examples:
    raise ValueError(f'{who}: apply_fn must map [B, *input_shape] to logits [B, C]; got '
                     f'{out.shape} for B={obs.num_examples}, input_shape={obs.input_shape}.')


def num_classes_of(apply_fn, obs) -> int:
  out = jax.eval_shape(lambda: apply_fn(
      obs.params, jnp.zeros((1, *obs.input_shape), jnp.float32)))
  return int(out.shape[-1])


def apply_adaptation(adapt: Any, grads: Any, params: Any) -> Any:
  """The attacker's own copy of a (stateless) defence on the dummy gradient."""
  if adapt is None:
    return grads
  out, _ = adapt.update(grads, adapt.init(params), params)
  return out


def make_objective(apply_fn, *, distance: str, scope: Any, tv: float, adapt: Any,
                   soft_labels: bool) -> Callable[[Any, Any], jax.Array]:
  """``J(z, data)`` for ``z = {'x': inputs, ['y': label logits]}`` and
  ``data = (params, target update, labels)``; everything numeric is an
  argument, so one compiled solver serves every image and model state."""

  def objective(z, data):
    params, target, labels = data
    x = z['x']
    y = jax.nn.softmax(z['y'], axis=-1) if soft_labels else labels
    g = threat.batch_gradient(apply_fn, params, x, y)
    g = apply_adaptation(adapt, g, params)
    value = objectives.gradient_distance(g, target, distance, scope)
    if tv:
      value = value + tv * objectives.total_variation(x)
    return value

  return objective


def observation_data(obs: Any, labels: Any) -> tuple[Any, Any, Any]:
  target = jax.tree_util.tree_map(lambda u: jnp.asarray(u, jnp.float32), obs.update)
  return (obs.params, target, labels)


_SOLVERS: dict[Any, Any] = {}
_MAX_SOLVERS = 64


def _build(objective, make_optimizer, steps, project, loop):
  optimizer = optax.with_extra_args_support(make_optimizer())

  def step(carry, data):
    z, state = carry
    fn = lambda v: objective(v, data)
    if _stores_value(state):
      # L-BFGS keeps the value and gradient of its line search's last point.
      value, grad = optax.value_and_grad_from_state(fn)(z, state=state)
    else:
      value, grad = jax.value_and_grad(fn)(z)
    updates, state = optimizer.update(grad, state, z, value=value, grad=grad, value_fn=fn)
    z = project(optax.apply_updates(z, updates))
    return (z, state), value

  if loop == 'scan':
    @jax.jit
    def solve(z0, data):
      def one(z):
        (z, _), trace = jax.lax.scan(lambda c, _: step(c, data), (z, optimizer.init(z)),
                                     None, length=steps)
        return z, trace, objective(z, data)
      return jax.vmap(one)(z0)
    return solve

  init = jax.jit(jax.vmap(optimizer.init))
  jstep = jax.jit(jax.vmap(step, in_axes=(0, None)))
  final = jax.jit(jax.vmap(objective, in_axes=(0, None)))

  def solve(z0, data):
    carry = (z0, init(z0))
    values = []
    for _ in range(steps):
      carry, v = jstep(carry, data)
      values.append(v)
    z = carry[0]
    return z, jnp.stack(values, axis=1), final(z, data)
  return solve


def run(objective: Callable[[Any, Any], jax.Array], z0: Any, data: Any,
        make_optimizer: Callable[[], optax.GradientTransformation], steps: int,
        project: Callable[[Any], Any], loop: str,
        cache_key: Any = None) -> tuple[Any, jax.Array, jax.Array]:
  """Minimises ``objective(z, data)`` from each restart in ``z0`` (leading axis).

  ``cache_key`` (hashable, or ``None`` for no caching) must identify
  ``objective``, ``make_optimizer``, ``project`` and ``steps``; solvers are
  compiled once per key and input shapes.

  Returns ``(z_best, trace_best[steps], final_loss_best)``.
  """
  _validation.check_choice('loop', loop, LOOPS)
  key = None if cache_key is None else (cache_key, steps, loop)
  solve = _SOLVERS.get(key) if key is not None else None
  if solve is None:
    solve = _build(objective, make_optimizer, steps, project, loop)
    if key is not None:
      if len(_SOLVERS) >= _MAX_SOLVERS:
        _SOLVERS.pop(next(iter(_SOLVERS)))
      _SOLVERS[key] = solve
  z, trace, loss = solve(z0, data)
  # A diverged restart (NaN loss) must never win.
  best = jnp.argmin(jnp.where(jnp.isnan(loss), jnp.inf, loss))
  pick = lambda t: t[best]
  return jax.tree_util.tree_map(pick, z), trace[best], loss[best]


def cache_key_of(*parts: Any) -> Any:
  """A hashable key, or ``None`` when some part is not hashable."""
  try:
    hash(parts)
  except TypeError:
    return None
  return parts


def _stores_value(state: Any) -> bool:
  try:
    return optax.tree.get(state, 'value') is not None
  except (KeyError, ValueError):
    return False


def signed(optimizer: optax.GradientTransformation) -> optax.GradientTransformation:
  """``optimizer`` applied to ``sign(grad)`` (Inverting Gradients' signed Adam)."""
  sign = optax.stateless(lambda g, p: jax.tree_util.tree_map(jnp.sign, g))
  return optax.chain(sign, optimizer)


def check_steps(steps: Any) -> None:
  _validation.check_int('steps', steps, minimum=1)
