# Copyright 2026 The ssgd_optax Authors. Licensed under the Apache License 2.0.
r"""Inverting Gradients (Geiping et al., NeurIPS 2020).

.. math::

  \min_{x' \in [l, h]^n} \; d_{\cos}\big(A(\nabla_\theta L(f_\theta(x'), y)),
    u\big) + \alpha\, \mathrm{TV}(x')

with the cosine distance over all parameters (``scope="global"``, the
paper's ``sim``) or per layer (``"per_layer"``, ``simlocal``), labels from
the observation or recovered from the last layer's gradient (iDLG / count
strategy), and the published optimiser: Adam on ``sign(grad)`` with the
learning rate divided by 10 at 3/8, 5/8 and 7/8 of the iterations, each step
followed by projection onto the box ``[l, h]``; several restarts, the lowest
final objective wins.

A cosine is blind to positive rescaling (of all parameters for
``"global"``, of each layer for ``"per_layer"``), so unit normalisation of
the shared update with a scope no finer than the objective's changes nothing
for this attack.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import optax

from ssgd_optax import _keys
from ssgd_optax import _validation
from ssgd_optax import _grouping as grouping_lib
from ssgd_optax.attacks import _engine
from ssgd_optax.attacks import _deep_leakage as dlg_lib
from ssgd_optax.attacks import _labels as labels_lib
from ssgd_optax.attacks import _threat as threat
__all__ = ['inverting_gradients', 'step_schedule']


def step_schedule(learning_rate: float, steps: int) -> optax.Schedule:
  """The published decay: ``lr`` times 0.1 at ``3T/8``, ``5T/8``, ``7T/8``.

  Example:

  >>> s = step_schedule(0.1, 800)
  >>> [round(float(s(t)), 6) for t in (0, 300, 500, 700)]
  [0.1, 0.01, 0.001, 0.0001]
  """
  bounds = sorted({max(1, (steps * k) // 8) for k in (3, 5, 7)})
  return optax.piecewise_constant_schedule(learning_rate, {b: 0.1 for b in bounds})


def inverting_gradients(apply_fn: threat.ApplyFn,
                        observation: threat.Observation,
                        *,
                        key: jax.Array,
                        steps: int = 4800,
                        learning_rate: float = 0.1,
                        tv: float = 1e-2,
                        scope: grouping_lib.Scope = 'global',
                        signed: bool = True,
                        boxed: bool = True,
                        restarts: int = 1,
                        labels: Optional[jax.Array] = None,
                        label_path: Optional[str] = None,
                        adapt: Optional[optax.GradientTransformation] = None,
                        loop: str = 'scan') -> threat.AttackResult:
  r"""Inverting Gradients: cosine gradient matching with a TV prior.

  Args:
    apply_fn: ``(params, x) -> logits``.
    observation: the attacker's :class:`~ssgd_optax.attacks.Observation`.
    key: a PRNG key for the initialisation (uniform in ``bounds``).
    steps: iterations ``T`` (the paper: 4800 for CIFAR LeNet, 24 000 for
      ImageNet).
    learning_rate: Adam's initial learning rate (0.1 in the paper).
    tv: ``alpha >= 0``, the total-variation weight (``~1e-2`` on LeNet;
      only for image inputs ``[H, W, C]``).
    scope: ``"global"`` (one cosine), ``"per_layer"``, ``"per_leaf"`` or a
      callable: the groups of the cosine.
    signed: Adam on ``sign(grad)`` (the paper's "signed" variant).
    boxed: project onto ``bounds`` after every step.
    restarts: independent initialisations (vmapped); best final objective.
    labels: known ``int32[B]`` labels; else ``observation.labels``; else
      recovered by :func:`~ssgd_optax.attacks.recover_labels`.
    label_path: the classifier leaf for label recovery.
    adapt: a stateless transformation applied to the dummy gradient first.
    loop: ``"scan"`` (whole loop compiled) or ``"python"`` (jitted step).

  Returns:
    An :class:`~ssgd_optax.attacks.AttackResult`.

  Example:

  >>> import jax, jax.numpy as jnp
  >>> from ssgd_optax import attacks
  >>> f = lambda p, x: jax.nn.sigmoid(x.reshape(len(x), -1) @ p['w1']) @ p['w2']
  >>> p = {'w1': jax.random.normal(jax.random.key(1), (16, 8)),
  ...      'w2': jax.random.normal(jax.random.key(2), (8, 3))}
  >>> x = jax.random.uniform(jax.random.key(3), (1, 4, 4, 1))
  >>> obs = attacks.observe(f, p, x, jnp.array([2]))
  >>> res = attacks.inverting_gradients(f, obs, key=jax.random.key(0), steps=50)
  >>> res.inputs.shape, res.labels
  ((1, 4, 4, 1), Array([2], dtype=int32))
  """
  _engine.check_observation(apply_fn, observation, 'inverting_gradients')
  _engine.check_steps(steps)
  _validation.check_positive('learning_rate', learning_rate)
  _validation.check_nonnegative('tv', tv)
  grouping_lib.check_scope(scope)
  _validation.check_int('restarts', restarts, minimum=1)
  for name, v in (('signed', signed), ('boxed', boxed)):
    if not isinstance(v, bool):
      raise TypeError(f'{name} must be a bool; got {v!r}.')
  key = _keys.check_key(key)
  obs = observation
  num_classes = _engine.num_classes_of(apply_fn, obs)
  if labels is None:
    labels = obs.labels
  if labels is None:
    labels = labels_lib.recover_labels(obs.update, num_classes, obs.num_examples,
                                       strategy='count', path=label_path)
  labels = jnp.asarray(labels)
  if labels.shape != (obs.num_examples,) or not jnp.issubdtype(labels.dtype, jnp.integer):
    raise ValueError(f'labels must be int of shape ({obs.num_examples},); got '
                     f'{labels.dtype} {labels.shape}.')
  if tv and len(obs.input_shape) != 3:
    raise ValueError(f'tv > 0 needs image inputs [H, W, C]; input_shape is '
                     f'{obs.input_shape}. Pass tv=0.')
  low, high = obs.bounds

  def make_optimizer():
    opt = optax.adam(step_schedule(learning_rate, steps))
    return _engine.signed(opt) if signed else opt

  def project(z):
    return {'x': jnp.clip(z['x'], low, high)} if boxed else z

  shape = (obs.num_examples, *obs.input_shape)
  z0 = {'x': dlg_lib.initial_inputs(key, (restarts, *shape), obs.bounds)}
  objective = _engine.make_objective(apply_fn, distance='cosine', scope=scope, tv=float(tv),
                                     adapt=adapt, soft_labels=False)
  data = _engine.observation_data(obs, labels)
  cache = _engine.cache_key_of('ig', apply_fn, scope, float(tv), adapt, float(learning_rate),
                               signed, boxed, (low, high))
  z, trace, loss = _engine.run(objective, z0, data, make_optimizer, steps, project, loop, cache)
  return threat.AttackResult(jnp.clip(z['x'], low, high), labels.astype(jnp.int32),
                             trace, loss)
